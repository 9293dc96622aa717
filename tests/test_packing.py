"""Packing correctness: loss masking, isolation of packed examples, equivalence with unpacked training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.finetune import train_step
from workbench.packing import (FLEX_KERNEL_OPTIONS_SM90_D64, IGNORE, Prefetcher, collate_packed, document_logprobs,
                               document_mask, flex_document_mask, flex_kernel_options, flex_reference_backward,
                               hidden_states, linear_cross_entropy, pack_rows, plan_epoch, shift_targets,
                               tokenize_example)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    from workbench.finetune import offline_tokenizer

    return offline_tokenizer()


def tiny_model(attn="sdpa", vocab=64, seed=0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)


def tiny_qwen(attn="flex_attention", dtype=torch.float32, seed=0):
    """The CUDA workload's architecture (Qwen2: q/k/v biases, 14 heads over 2 KV heads, tied embeddings), tiny."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=64, hidden_size=56, intermediate_size=96, num_hidden_layers=2, num_attention_heads=14,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)


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
    assert b.trained_index.tolist() == [0, 1, 3]
    assert shift_targets([IGNORE, 1, 2]) == [1, 2, IGNORE]
    # rows_to: an empty row keeps a short micro-batch at the compiled shape; it carries no loss
    b2 = collate_packed(ex, [[0, 1]], pad_id=0, pad_to=7, rows_to=3)
    assert b2.input_ids.shape == (3, 7) and b2.example_index == [[0, 1], [], []]
    assert (b2.n_real, b2.n_pad, b2.n_trained) == (5, 16, 3) and (b2.targets[1:] == IGNORE).all()


def test_prefetcher_builds_ahead_in_order_and_checks_the_order():
    made = []

    def make(k):
        made.append(k)
        return k * 10

    with Prefetcher(make, range(5), ahead=2) as pf:
        assert pf.get(0) == 0
        assert pf.get(1) == 10
        with pytest.raises(KeyError, match="expected 2"):
            pf.get(3)
    assert made[:2] == [0, 1] and len(made) <= 5
    inline = Prefetcher(make, range(3), ahead=0)
    assert inline.get(7) == 70  # ahead=0: built when asked, any key


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


def random_doc_ids(rows, T, seed):
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(rows, T, dtype=torch.long)
    for r in range(rows - 1):  # the last row stays one document (an empty padding row)
        t, d = 0, 0
        while t < T:
            n = int(torch.randint(1, 300, (), generator=g))
            out[r, t:t + n] = d
            t, d = t + n, d + 1
    return out


@pytest.mark.parametrize("T,block", [(77, 128), (256, 128), (300, 128), (1024, 128), (300, 64), (1024, 64)])
def test_flex_block_tables_equal_create_block_mask(T, block):
    """The per-block builder gives torch's block tables exactly: same partial and same full blocks."""
    doc = random_doc_ids(3, T, seed=T)
    a = flex_document_mask(doc, block_size=block)
    b = flex_document_mask(doc, builder="create_block_mask", block_size=block)
    assert a.BLOCK_SIZE == b.BLOCK_SIZE == (block, block)
    assert a.shape == b.shape
    assert torch.equal(a.to_dense(), b.to_dense())  # every block that needs computing

    def full(m):
        out = torch.zeros(m.full_kv_num_blocks.shape + (m.full_kv_indices.shape[-1],), dtype=torch.bool)
        for r in range(out.shape[0]):
            for q in range(out.shape[2]):
                n = int(m.full_kv_num_blocks[r, 0, q])
                out[r, 0, q, m.full_kv_indices[r, 0, q, :n].long()] = True
        return out

    assert torch.equal(full(a), full(b))  # blocks computed without evaluating the mask
    with pytest.raises(ValueError, match="builder"):
        flex_document_mask(doc, builder="dense")


def test_flex_kernel_options_resolve_and_reach_flex_attention(monkeypatch):
    """``SFTConfig.flex_kernel_options``: "auto" means torch's defaults off Hopper (here: CPU), a dict is used as
    given, and whatever is resolved reaches ``flex_attention(kernel_options=...)`` in every layer."""
    import torch.nn.attention.flex_attention as fa

    assert flex_kernel_options("auto", device="cpu", head_dim=64, half_precision=True) is None
    assert flex_kernel_options(None, device="cpu", head_dim=64, half_precision=True) is None
    given = {"fwd_BLOCK_M": 64}
    got = flex_kernel_options(given, device="cpu", head_dim=8, half_precision=False)
    assert got == given and got is not given
    with pytest.raises(ValueError, match="flex_kernel_options"):
        flex_kernel_options("fast", device="cpu", head_dim=64, half_precision=True)
    # "auto" on CUDA: the measured tiles only where they were measured (sm90, head dim 64, bf16/fp16)
    for cap, head_dim, half, want in [((9, 0), 64, True, FLEX_KERNEL_OPTIONS_SM90_D64), ((8, 0), 64, True, None),
                                      ((10, 0), 64, True, None), ((9, 0), 128, True, None), ((9, 0), 64, False, None)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        assert flex_kernel_options("auto", device="cuda", head_dim=head_dim, half_precision=half) == want, cap
        assert flex_kernel_options("auto", device="cuda", head_dim=head_dim, half_precision=half,
                                   mean_length=334) == want, cap
        # long examples fill torch's large tiles: the measured small ones are not applied there
        assert flex_kernel_options("auto", device="cuda", head_dim=head_dim, half_precision=half,
                                   mean_length=2000) is None
    monkeypatch.undo()
    # the measured Hopper tiles divide flex's 128-token sparse blocks (torch requires it) and name both kernels
    assert all(128 % v == 0 for k, v in FLEX_KERNEL_OPTIONS_SM90_D64.items() if "BLOCK" in k)
    assert {k[:4] for k in FLEX_KERNEL_OPTIONS_SM90_D64} == {"fwd_", "bwd_"}

    model = tiny_model("flex_attention").eval()
    model._wb_flex_kernel_options = dict(FLEX_KERNEL_OPTIONS_SM90_D64)
    seen, real = [], fa.flex_attention
    monkeypatch.setattr(fa, "flex_attention", lambda *a, **kw: seen.append(kw.get("kernel_options")) or real(*a, **kw))
    b = collate_packed(random_examples(2, seed=3), [[0, 1]], pad_id=0)
    with flex_reference_backward(), torch.no_grad():
        hidden_states(model, b)
    assert seen == [FLEX_KERNEL_OPTIONS_SM90_D64] * model.config.num_hidden_layers


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


# --------------------------------------------------------------------------- the CUDA path, run on CPU

def _token_losses_alone(model, ex):
    """Per example: (sum of token losses, trained tokens), the example run alone through SDPA."""
    out = []
    for e in ex:
        b = collate_packed([e], [[0]], pad_id=0)
        lp, n = document_logprobs(hidden_states(model, b), model.get_output_embeddings(), b)
        out.append((-lp[0, 0].item(), n[0, 0].item()))
    return out


@pytest.mark.parametrize("block", [128, 64])
def test_flex_packed_training_gives_the_losses_and_gradients_of_unpacked_sdpa(block):
    """Flex attention with the document BlockMask, trained packed (CPU: the operator's math reference),
    equals each example trained alone with SDPA: per-example losses and the accumulated gradients, at
    torch's 128-token blocks and at 64 (``SFTConfig.flex_block_size``, where some block pairs are full:
    computed without the mask)."""
    ex = random_examples(6, seed=13, lo=20, hi=150)  # 44-136 tokens: documents span and straddle blocks
    flex, ref = tiny_qwen("flex_attention"), tiny_qwen("sdpa")
    flex._wb_flex_block = block
    packed = collate_packed(ex, [[0, 1, 2], [3, 4, 5]], pad_id=0, pad_to=384)  # padded like the compiled path
    m = flex_document_mask(packed.doc_ids, block_size=block)
    assert m.kv_num_blocks.sum() > 2 * 2 and (block == 128 or m.full_kv_num_blocks.sum() > 0)
    with flex_reference_backward():
        lp, n = document_logprobs(hidden_states(flex, packed), flex.get_output_embeddings(), packed)
        alone = _token_losses_alone(ref, ex)
        for r, row in enumerate(packed.example_index):
            for d, i in enumerate(row):
                assert n[r, d].item() == alone[i][1]
                assert abs(-lp[r, d].item() - alone[i][0]) < 1e-4
        loss = linear_cross_entropy(hidden_states(flex, packed), flex.get_output_embeddings(), packed.targets,
                                    index=packed.trained_index)
        (loss / packed.n_trained).backward()
    for i in range(len(ex)):
        b = collate_packed(ex, [[i]], pad_id=0)
        (linear_cross_entropy(hidden_states(ref, b), ref.get_output_embeddings(), b.targets) / packed.n_trained).backward()
    grads = dict(ref.named_parameters())
    for k, p in flex.named_parameters():
        torch.testing.assert_close(p.grad, grads[k].grad, atol=1e-5, rtol=1e-4, msg=k)


def test_compiled_flex_bf16_fused_train_step_compiles_once_and_matches_eager():
    """The CUDA step on CPU: Qwen2 architecture, bf16 weights, flex BlockMask, decoder compiled with static
    shapes (aot_eager: traced like inductor, eager kernels), fused AdamW. New batches (new BlockMasks, a short
    micro-batch padded by rows_to) must not recompile; losses and updated weights match an eager SDPA twin."""
    from torch._dynamo.utils import counters

    ex = random_examples(12, seed=3, hi=60)
    plan = [[[0, 1, 2], [3, 4]], [[5, 6, 7], [8, 9]], [[10, 11]]]
    fast, twin = tiny_qwen("flex_attention", torch.bfloat16), tiny_qwen("sdpa", torch.bfloat16)
    fast.get_decoder().compile(dynamic=False, backend="aot_eager")
    opt_fast = torch.optim.AdamW(fast.parameters(), lr=1e-3, fused=True)
    opt_twin = torch.optim.AdamW(twin.parameters(), lr=1e-3, fused=True)
    graphs = counters["stats"]["unique_graphs"]
    with flex_reference_backward():
        for rows in plan:
            fb = collate_packed(ex, rows, pad_id=0, pad_to=160, rows_to=2)
            loss_fast, gn_fast = train_step(fast, [fb], opt_fast)
            loss_twin, gn_twin = train_step(twin, [collate_packed(ex, rows, pad_id=0)], opt_twin)
            assert torch.isfinite(loss_fast) and abs(loss_fast.item() - loss_twin.item()) < 0.02 * loss_twin.item()
            assert abs(gn_fast.item() - gn_twin.item()) < 0.05 * gn_twin.item()
    assert counters["stats"]["unique_graphs"] - graphs == 1  # one graph for every step
    for (k, a), b in zip(fast.named_parameters(), twin.parameters()):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2, msg=k)


@pytest.mark.slow
def test_inductor_compiled_flex_decoder_isolates_examples_without_recompiling():
    """Inductor's own lowering of flex attention (the CUDA path's kernels are generated the same way;
    CPU can only run it forward): packed logits equal each example alone, one graph for three batches."""
    from torch._dynamo.utils import counters

    model = tiny_qwen("flex_attention").eval()
    ref = tiny_qwen("sdpa").eval()
    model.get_decoder().compile(dynamic=False)
    ex = random_examples(9, seed=5, hi=40)
    graphs = counters["stats"]["unique_graphs"]
    for rows in ([[0, 1, 2], [3]], [[4, 5], [6, 7, 8]], [[8, 7, 6, 5]]):
        b = collate_packed(ex, rows, pad_id=0, pad_to=128, rows_to=2)
        with torch.no_grad():
            logits = model.get_output_embeddings()(hidden_states(model, b))
        for r, row in enumerate(rows):
            t = 0
            for i in row:
                n = len(ex[i]["input_ids"])
                torch.testing.assert_close(logits[r, t:t + n], _logits_alone(ref, ex[i]), atol=1e-4, rtol=1e-4)
                t += n
    assert counters["stats"]["unique_graphs"] - graphs == 1


@pytest.mark.parametrize("compiled", [False, True])
def test_linear_cross_entropy_in_bf16_matches_fp32_logits(compiled):
    """bf16 chunks against fp32 full logits; ``compiled``: the inductor-fused softmax + gradient (the CUDA
    default), with chunk lengths 7 and 2 through one dynamic-shape graph."""
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 300, bias=False).to(torch.bfloat16)
    h = torch.randn(40, 32, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, 300, (40,))
    y[:10] = IGNORE
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    loss = linear_cross_entropy(h, head, y, chunk=7, index=torch.arange(10, 40), compiled=compiled)
    loss.backward()
    assert counters["stats"]["unique_graphs"] - graphs <= int(compiled)  # chunks of 7 and 2 rows: one graph
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.bfloat16 and head.weight.grad.dtype == torch.bfloat16
    hf, wf = h.detach().float().requires_grad_(), head.weight.detach().float().requires_grad_()
    ref = F.cross_entropy(hf @ wf.T, y, ignore_index=IGNORE, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=0.05, rtol=2e-3)
    torch.testing.assert_close(h.grad.float(), hf.grad, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(head.weight.grad.float(), wf.grad, atol=2e-2, rtol=2e-2)
