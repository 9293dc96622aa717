"""The data side of SFT (``workbench/sft_data.py``): the chat layout's tokens, masks and checks, with a
tiny Llama saved beside the offline ChatML tokenizer (``train_chat_tokenizer``). Reading, checking and
the bare layout are also covered end to end in tests/test_finetune.py."""
from __future__ import annotations

import dataclasses

import pytest

from test_finetune import SYSTEM, _no_runs, chat_messages, make_chat_model, make_chat_tables, small
from workbench.finetune import SFTDataError, train_sft

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chat_layout_tokens_are_the_chat_template_and_only_the_answer_is_trained(con, tmp_path):
    """layout="auto" with a tokenizer that has a chat template: every training example's ids are exactly
    apply_chat_template(messages) (system message included), labels are -100 exactly on the prompt rendered
    with the generation prompt, and the answer plus the end-of-turn token are trained. The evaluation
    scores (loss, choices) tokenize the same way. Bad layouts are errors naming the parameter / model."""
    from transformers import AutoTokenizer

    from workbench import finetune as ft

    data = make_chat_tables(con, n=24)
    folder = make_chat_model(tmp_path, data, hidden=32)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = small(model=str(folder), max_length=96, token_budget=192)
    assert ft.sft_layout(tok, cfg) == "chat" and ft.sft_layout(tok, small(layout="bare")) == "bare"
    frame = ft.load_sft_frame(con, "intent_classification")
    examples, _ = ft.tokenize_split(tok, frame, cfg, "train")
    by_id = data.set_index("example_id")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for ex, eid in zip(examples, frame["example_id"]):
        msgs = chat_messages(by_id.loc[eid])
        full = list(tok.apply_chat_template(msgs, tokenize=True, return_dict=False))
        prompt = list(tok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True, return_dict=False))
        assert ex["input_ids"] == full and full[:len(prompt)] == prompt
        assert ex["labels"] == [-100] * len(prompt) + full[len(prompt):]
        trained = full[len(prompt):]
        assert im_end in trained and tok.decode(trained).startswith(by_id.loc[eid, "completion"] + "<|im_end|>")
        assert full.count(tok.bos_token_id) == 1
    assert any(s == SYSTEM for s in frame["system"]) and frame["system"].isna().any()
    # the mask audit sees the end-of-turn token as the trained end of the answer
    audit = ft.audit_training_masks(tok, examples, frame, cfg)
    assert audit.ok and audit.table["eos_trained"].all()
    # the bare layout on the same tokenizer: [BOS] system + blank line + prompt, answer, EOS (no template)
    bare = ft.tokenize_split(tok, frame, dataclasses.replace(cfg, layout="bare"), "train")[0][0]
    head = f"{frame['system'][0]}\n\n" if frame["system"][0] else ""
    assert bare["input_ids"] == ([tok.bos_token_id] + tok(head + frame["prompt"][0], add_special_tokens=False)["input_ids"]
                                 + tok(frame["completion"][0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    # an answer that cannot fit with the template's headers is caught before training, as in the bare layout
    with pytest.raises(SFTDataError, match="longer than max_length=20"):
        ft.tokenize_split(tok, frame, dataclasses.replace(cfg, max_length=20), "train")
    with pytest.raises(ValueError, match=r"layout='chat'.*offline:tiny-llama.*no chat template"):
        train_sft(con, small(layout="chat"), progress=False)
    with pytest.raises(ValueError, match="layout='chatml'"):
        train_sft(con, small(layout="chatml"), progress=False)
    assert _no_runs(con)
