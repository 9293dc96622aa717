"""Packing correctness: loss masking, isolation of packed examples, equivalence with unpacked training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.packing import (IGNORE, collate_packed, document_logprobs, document_mask, hidden_states,
                               linear_cross_entropy, pack_rows, plan_epoch, shift_targets, tokenize_example)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on this shared 2-core machine two threads contend badly (10x slower steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture(scope="module")
def tokenizer():
    from workbench.finetune import offline_tokenizer

    return offline_tokenizer()


def tiny_model(attn="sdpa", vocab=64, seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def random_examples(n=5, vocab=64, seed=0, lo=3, hi=14):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        L = int(rng.integers(lo, hi))
        ids = rng.integers(2, vocab, L).tolist()
        p = int(rng.integers(1, L - 1))
        out.append({"input_ids": ids, "labels": [IGNORE] * p + ids[p:]})
    return out


# --------------------------------------------------------------------------- tokenization and loss masking

def test_tokenize_example_masks_prompt_and_trains_eos(tokenizer):
    ex = tokenize_example(tokenizer, "Message: I was charged twice\nIntent:", "billing", max_length=64)
    prompt = tokenizer("Message: I was charged twice\nIntent:", add_special_tokens=False)["input_ids"]
    answer = tokenizer("billing", add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == prompt + answer + [tokenizer.eos_token_id]
    assert ex["labels"] == [IGNORE] * len(prompt) + answer + [tokenizer.eos_token_id]
    no_eos = tokenize_example(tokenizer, "Message: hi\nIntent:", "billing", max_length=64, add_eos=False)
    assert no_eos["input_ids"][-1] != tokenizer.eos_token_id


def test_tokenize_example_truncates_the_prompt_start_first(tokenizer):
    long_prompt = " ".join(["word"] * 100) + " Intent:"
    ex = tokenize_example(tokenizer, long_prompt, "refund", max_length=16)
    answer = tokenizer("refund", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(ex["input_ids"]) == 16
    assert ex["labels"][-len(answer):] == answer and ex["labels"][:-len(answer)] == [IGNORE] * (16 - len(answer))
    assert tokenizer.decode(ex["input_ids"][:-len(answer)]).endswith("intent :")  # the prompt's end survives
    cut = tokenize_example(tokenizer, "p", " ".join(["refund"] * 40), max_length=8)
    assert len(cut["input_ids"]) == 8 and tokenizer.eos_token_id not in cut["input_ids"]


def test_packed_targets_shift_inside_each_example():
    ex = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    b = collate_packed(ex, [[0, 1]], pad_id=0, pad_to=7)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    # token 7 (end of example 0) must not predict token 8 (start of example 1)
    assert b.targets.tolist() == [[6, 7, IGNORE, 9, IGNORE, IGNORE, IGNORE]]
    assert b.doc_ids.tolist() == [[0, 0, 0, 1, 1, 2, 2]]
    assert (b.n_real, b.n_pad, b.n_trained) == (5, 2, 3)
    assert shift_targets([IGNORE, 1, 2]) == [1, 2, IGNORE]


# --------------------------------------------------------------------------- planning

def test_pack_rows_respects_budget_and_keeps_every_example_once():
    lengths = np.random.default_rng(1).integers(5, 60, 300)
    rows = pack_rows(lengths, 128)
    flat = [i for r in rows for i in r]
    assert sorted(flat) == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    fill = lengths.sum() / (len(rows) * 128)
    assert fill > 0.9, fill  # first fit over open rows packs tightly
    with pytest.raises(ValueError, match="token_budget"):
        pack_rows([10, 200], 128)


def test_plan_epoch_is_a_function_of_seed_and_epoch():
    lengths = list(np.random.default_rng(2).integers(5, 60, 100))
    a = plan_epoch(lengths, token_budget=128, micro_batch_size=2, seed=3, epoch=1)
    assert a == plan_epoch(lengths, token_budget=128, micro_batch_size=2, seed=3, epoch=1)
    assert a != plan_epoch(lengths, token_budget=128, micro_batch_size=2, seed=3, epoch=2)
    assert a != plan_epoch(lengths, token_budget=128, micro_batch_size=2, seed=4, epoch=1)
    assert all(len(mb) <= 2 for mb in a)


# --------------------------------------------------------------------------- isolation

def _logits_alone(model, ex):
    ids = torch.tensor([ex["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_each_packed_example_gives_the_same_logits_as_alone(attn):
    model = tiny_model(attn).eval()
    ex = random_examples(7)
    rows = [[0, 1, 2], [3, 4, 5, 6]]
    b = collate_packed(ex, rows, pad_id=0)
    with torch.no_grad():
        logits = model.get_output_embeddings()(hidden_states(model, b))
    for r, row in enumerate(rows):
        t = 0
        for i in row:
            n = len(ex[i]["input_ids"])
            torch.testing.assert_close(logits[r, t:t + n], _logits_alone(model, ex[i]), atol=1e-5, rtol=1e-5)
            t += n


def test_position_ids_alone_do_not_isolate_examples():
    """The trap from the reference measurements: restarting position ids without a mask leaks attention."""
    model = tiny_model("sdpa").eval()
    ex = random_examples(2, seed=5)
    b = collate_packed(ex, [[0, 1]], pad_id=0)
    with torch.no_grad():
        leaky = model(input_ids=b.input_ids, position_ids=b.position_ids).logits[0]
    n0 = len(ex[0]["input_ids"])
    diff = (leaky[n0:] - _logits_alone(model, ex[1])).abs().max().item()
    assert diff > 1e-3, "position_ids alone isolated the examples: transformers changed; the mask is still required"


def test_document_mask_forms():
    doc = torch.tensor([[0, 0, 1, 1, 2]])
    m = document_mask(doc, "sdpa")
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.bool
    assert m[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0],
                                      [0, 0, 0, 0, 1]]
    add = document_mask(doc, "eager")
    assert torch.equal(add == 0, m)
    with pytest.raises(ValueError, match="attn_implementation"):
        document_mask(doc, "flash_attention_2")


@pytest.mark.slow
def test_flex_attention_block_mask_isolates_examples():
    """The CUDA path's mask (flex BlockMask from document ids), checked on CPU in inference (compiles ~20 s)."""
    model = tiny_model("flex_attention").eval()
    ex = random_examples(3, seed=7)
    b = collate_packed(ex, [[0, 1, 2]], pad_id=0, pad_to=48)
    reference = tiny_model("sdpa").eval()
    with torch.no_grad():
        logits = model.get_output_embeddings()(hidden_states(model, b))[0]
    t = 0
    for e in ex:
        n = len(e["input_ids"])
        torch.testing.assert_close(logits[t:t + n], _logits_alone(reference, e), atol=1e-4, rtol=1e-4)
        t += n


# --------------------------------------------------------------------------- loss and equivalence

@pytest.mark.parametrize("chunk", [3, 4096])
def test_linear_cross_entropy_matches_full_logits(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(2, 9, 16, requires_grad=True)
    y = torch.randint(0, 50, (2, 9))
    y[0, :4] = IGNORE
    loss = linear_cross_entropy(h, head, y, chunk=chunk)
    loss.backward()
    gh, gw = h.grad.clone(), head.weight.grad.clone()
    h.grad = None
    head.weight.grad = None
    ref = F.cross_entropy(head(h).reshape(-1, 50), y.reshape(-1), ignore_index=IGNORE, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh, h.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, head.weight.grad, atol=1e-5, rtol=1e-5)
    head.weight.requires_grad_(False)  # LoRA: frozen lm_head still gives input gradients
    h.grad = None
    linear_cross_entropy(h, head, y, chunk=chunk).backward()
    torch.testing.assert_close(h.grad, gh, atol=1e-5, rtol=1e-5)


def test_packed_and_unpacked_training_give_the_same_losses_and_gradients():
    model = tiny_model("sdpa")
    model.train()
    head = model.get_output_embeddings()
    ex = random_examples(6, seed=11)
    packed = collate_packed(ex, [[0, 1, 2], [3, 4, 5]], pad_id=0)
    # per-example loss (sum of token losses): packed vs each example alone
    lp, n = document_logprobs(hidden_states(model, packed), head, packed)
    for r, row in enumerate(packed.example_index):
        for d, i in enumerate(row):
            alone = collate_packed(ex, [[i]], pad_id=0)
            lp1, n1 = document_logprobs(hidden_states(model, alone), head, alone)
            assert n[r, d] == n1[0, 0]
            assert abs(lp[r, d].item() - lp1[0, 0].item()) < 1e-5
    # gradients of the mean token loss: one packed batch vs unpacked examples accumulated
    total = packed.n_trained
    model.zero_grad()
    (linear_cross_entropy(hidden_states(model, packed), head, packed.targets) / total).backward()
    g_packed = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    for i in range(len(ex)):
        b = collate_packed(ex, [[i]], pad_id=0)
        (linear_cross_entropy(hidden_states(model, b), head, b.targets) / total).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(g_packed[k], p.grad, atol=1e-5, rtol=1e-4, msg=k)


def test_document_logprobs_equal_the_reference_from_full_logits():
    model = tiny_model("sdpa").eval()
    ex = random_examples(4, seed=3)
    b = collate_packed(ex, [[0, 1], [2, 3]], pad_id=0)
    lp, n = document_logprobs(hidden_states(model, b), model.get_output_embeddings(), b)
    for r, row in enumerate(b.example_index):
        for d, i in enumerate(row):
            logits = _logits_alone(model, ex[i]).log_softmax(-1)
            y = torch.tensor(shift_targets(ex[i]["labels"]))
            keep = y != IGNORE
            ref = logits[keep].gather(1, y[keep][:, None]).sum()
            assert n[r, d] == keep.sum()
            assert abs(lp[r, d].item() - ref.item()) < 1e-4
