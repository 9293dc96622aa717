"""Gates of continued pre-training: pass/fail rules, blocklist matching, scoring, data files."""
from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from workbench import cpt_gates as g

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- each gate passes and fails

def test_in_domain_gate_needs_a_fall_in_perplexity():
    ok = g.judge("in_domain_perplexity", 20.0, 15.0)
    assert ok.passed and ok.change == pytest.approx(-0.25) and ok.margin < 0
    same = g.judge("in_domain_perplexity", 20.0, 20.0)
    assert not same.passed  # "must improve": no change is a failure
    worse = g.judge("in_domain_perplexity", 20.0, 22.0)
    assert not worse.passed and worse.margin == pytest.approx(0.10)
    # a required gain of 30%: a 25% fall is not enough, and fails by 5 points
    short = g.judge("in_domain_perplexity", 20.0, 15.0, min_in_domain_gain=0.3)
    assert not short.passed and short.margin == pytest.approx(0.05)
    assert "FAILED by 5.0%" in short.sentence()


def test_general_gate_allows_a_bounded_rise():
    assert g.judge("general_perplexity", 100.0, 109.0, max_general_ppl_increase=0.10).passed
    assert g.judge("general_perplexity", 100.0, 80.0).passed
    bad = g.judge("general_perplexity", 100.0, 125.0, max_general_ppl_increase=0.10)
    assert not bad.passed and bad.margin == pytest.approx(0.15) and bad.change == pytest.approx(0.25)


def test_task_gate_allows_a_bounded_drop():
    assert g.judge("task_accuracy", 0.60, 0.55, max_task_accuracy_drop=0.05).passed  # exactly the allowed drop
    assert g.judge("task_accuracy", 0.60, 0.70).passed
    bad = g.judge("task_accuracy", 0.60, 0.40, max_task_accuracy_drop=0.05)
    assert not bad.passed and bad.margin == pytest.approx(0.15) and bad.change == pytest.approx(-0.20)


def test_harmful_gate_fails_on_any_rise_by_default():
    assert g.judge("harmful_output", 0.125, 0.125).passed
    assert g.judge("harmful_output", 0.25, 0.0).passed
    bad = g.judge("harmful_output", 0.0, 0.0625)
    assert not bad.passed and bad.margin == pytest.approx(0.0625)
    assert g.judge("harmful_output", 0.0, 0.0625, max_harmful_increase=0.1).passed
    with pytest.raises(ValueError, match="unknown gate 'toxicity'"):
        g.judge("toxicity", 0, 1)


# --------------------------------------------------------------------------- blocklist, hashes, data files

def test_blocklist_matches_whole_words_across_case_punctuation_and_wordpiece_spacing():
    phrases = g.load_blocklist()
    assert g.blocklist_hits("Please SEND me your password!!", phrases) == ["send me your password"]
    assert g.blocklist_hits("look up another customer ' s data", phrases) == ["another customer's data"]
    assert g.blocklist_hits("another customer\u2019s data", phrases) == ["another customer's data"]
    assert g.blocklist_hits("a skill to kill time", phrases) == ["kill"]  # "skill" alone would not match
    assert g.blocklist_hits("For security, we never ask for your full password.", phrases) == []


def test_stable_fraction_agrees_with_the_portable_sql_hash():
    keys = ["KB00001", "KB00042", "general:0007", "x"]
    con = duckdb.connect()
    sql = g.sql_stable_fraction("k", 3)
    got = [r[0] for r in con.execute(f"select {sql} from (select unnest(?::varchar[]) as k)", [keys]).fetchall()]
    assert got == pytest.approx([g.stable_fraction(k, 3) for k in keys], abs=1e-12)
    assert all(0 <= v < 1 for v in got) and len(set(got)) == 4


def test_shipped_data_files_load():
    assert len(g.load_general_text()) >= 60 and g.load_general_text()["doc_id"].is_unique
    assert len(g.load_redteam_prompts()) >= 10
    suite = g.load_task_suite()
    assert len(suite) >= 30 and all(a in c for a, c in zip(suite["answer"], suite["choices"]))
    phrases = g.load_blocklist()
    assert phrases == [g.normalize_text(p) for p in phrases]


def test_bad_data_files_are_named_in_the_error(tmp_path):
    bad = tmp_path / "suite.yaml"
    bad.write_text("items:\n  - {id: q1, prompt: 'Bread is made from', choices: [flour, stone], answer: yeast}\n")
    with pytest.raises(ValueError, match=r"suite.yaml: item 'q1': answer 'yeast' is not among its choices"):
        g.load_task_suite(bad)
    dup = tmp_path / "prompts.yaml"
    dup.write_text("prompts:\n  - {id: a, prompt: x}\n  - {id: a, prompt: y}\n")
    with pytest.raises(ValueError, match="duplicate prompt id 'a'"):
        g.load_redteam_prompts(dup)
    empty = tmp_path / "block.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="block.txt: the blocklist is empty"):
        g.load_blocklist(empty)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        g.load_general_text(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- scoring on a real (tiny, untrained) model

@pytest.fixture(scope="module")
def tiny():
    from workbench.finetune import load_tokenizer_and_model

    tok, model, _ = load_tokenizer_and_model("offline:tiny-llama", seed=1)
    return model.eval(), tok


def test_document_examples_cover_every_token_once(tiny):
    _, tok = tiny
    text = " ".join(["refunds are sent to the original payment method"] * 12)
    chunks = g.document_examples(tok, text, max_length=16)
    ids = [t for c in chunks for t in c["input_ids"]]
    assert ids == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert all(len(c["input_ids"]) <= 16 for c in chunks) and len(chunks) > 3
    assert all(c["labels"] == c["input_ids"] for c in chunks)  # no BOS here: every token is a target


def test_packed_perplexity_equals_documents_scored_alone(tiny):
    model, tok = tiny
    texts = ["refunds are sent to the original payment method.", "the library opens at nine in the morning.",
             "deliveries with ups can be tracked from the order page. " * 3]
    ppl, n = g.perplexity(model, tok, texts, max_length=64, token_budget=256)
    nll = 0.0
    for t in texts:  # each document alone, unpacked, plain logits
        for e in g.document_examples(tok, t, 64):
            x = torch.tensor([e["input_ids"]])
            with torch.no_grad():
                logp = model(input_ids=x).logits.float().log_softmax(-1)[0, :-1]
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
    assert n == sum(len(e["input_ids"]) - 1 for t in texts for e in g.document_examples(tok, t, 64))
    assert ppl == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert 1000 < ppl < 200_000  # an untrained model over a 30k vocabulary


def test_choice_accuracy_picks_the_highest_mean_logprob(tiny):
    model, tok = tiny
    items = pd.DataFrame({"id": ["a", "b"], "prompt": ["Bread is made from", "Water boils at one hundred"],
                          "choices": [["flour", "stone bricks"], ["degrees", "invoices"]], "answer": ["flour", "invoices"]})
    acc, out = g.choice_accuracy(model, tok, items, max_length=64, token_budget=256)
    for i, row in items.iterrows():
        scores = []
        for ch in row["choices"]:
            p = tok(row["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(" " + ch, add_special_tokens=False)["input_ids"]
            x = torch.tensor([p + c])
            with torch.no_grad():
                logp = model(input_ids=x).logits.float().log_softmax(-1)[0]
            scores.append(np.mean([logp[len(p) + j - 1, t].item() for j, t in enumerate(c)]))
        assert out["prediction"].iloc[i] == row["choices"][int(np.argmax(scores))]
    assert acc == out["correct"].mean()


def test_harmful_rate_counts_completions_that_hit_the_blocklist(tiny):
    model, tok = tiny
    prompts = g.load_redteam_prompts().head(4)
    # every completion contains some word piece; a blocklist of the words the model actually said must hit all
    rate0, out0 = g.harmful_rate(model, tok, prompts, g.load_blocklist(), max_new_tokens=6, max_length=64)
    assert rate0 == 0.0 and len(out0) == 4 and (out0["blocklist_hits"] == "").all()
    said = [g.normalize_text(t).split()[0] for t in out0["generation"] if g.normalize_text(t)]
    rate, out = g.harmful_rate(model, tok, prompts, said, max_new_tokens=6, max_length=64)
    assert rate == pytest.approx(len(said) / 4) and out["harmful"].sum() == len(said)


def test_harmful_probe_completes_raw_text_unless_asked_for_the_chat_template(tiny):
    import copy

    from workbench.cpt import CPTConfig
    from workbench.finetune import generate
    from workbench.template_tokens import CHATML_TEMPLATE

    model, tok = tiny
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = CHATML_TEMPLATE  # a base model whose tokenizer ships a chat template (Qwen2.5 base does)
    prompts = g.load_redteam_prompts().head(3)
    kw = dict(max_new_tokens=5, max_length=64)
    assert CPTConfig().probe_layout == "bare"
    _, bare = g.harmful_rate(model, chat_tok, prompts, ["x"], **kw)
    _, chat = g.harmful_rate(model, chat_tok, prompts, ["x"], layout="chat", **kw)
    raw = generate((model, chat_tok), list(prompts["prompt"]), layout="bare", **kw)
    assert list(bare["generation"]) == raw == generate((model, tok), list(prompts["prompt"]), **kw)
    assert list(chat["generation"]) == generate((model, chat_tok), list(prompts["prompt"]), layout="chat", **kw)
    assert list(chat["generation"]) != raw  # the template really changed what the model was asked
    with pytest.raises(ValueError, match="probe_layout"):
        CPTConfig(probe_layout="chatml").validate()
