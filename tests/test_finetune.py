"""Causal-LM SFT: tables written, determinism, gradient accumulation, exact resume, bad input."""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench import runs
from workbench.finetune import SFTConfig, SFTDataError, generate, load_model, normalize_answer, train_sft
from workbench.workspace import write_table

pytestmark = pytest.mark.usefixtures("one_thread")

INTENTS = {
    "billing": ["I was charged twice this month", "why is my invoice higher than usual", "a fee on my bill I do not know"],
    "refund": ["I want my money back for the order", "please refund the broken item", "when will my refund arrive"],
    "shipping": ["my package has not arrived yet", "tracking for my delivery is stuck", "parcel sent to the wrong address"],
    "technical_issue": ["the app crashes when I open it", "I get an error on the checkout page", "the website will not load"],
    "account_access": ["I cannot log in to my account", "password reset email never comes", "my account is locked"],
    "cancellation": ["please cancel my subscription", "I want to end my plan", "how do I close my membership"],
}
OPENERS, CLOSERS = ["hello,", "hi team,", "", "urgent:", "good morning,"], ["thanks", "please help", "", "asap"]


def make_intent_tables(con, n: int = 72, seed: int = 0, split_of=None) -> pd.DataFrame:
    """Small ``sft_examples`` (intent_classification, 6 choices) and ``splits`` tables, per docs/schema.md."""
    rng = random.Random(seed)
    names = list(INTENTS)
    rows, splits = [], []
    for i in range(n):
        intent = names[i % len(names)]
        text = " ".join(x for x in (rng.choice(OPENERS), rng.choice(INTENTS[intent]), rng.choice(CLOSERS)) if x)
        src = f"messages.csv:{i + 2}"
        rows.append({"example_id": f"intent_v1:{src}", "source_row_id": src, "task": "intent_classification",
                     "template_id": "intent_v1", "prompt": f"Message: {text}\nIntent:", "completion": intent,
                     "choices": names})
        k = i * 7 % 10  # 60% train, 20% validation, 20% test, every intent in each
        split = split_of(i) if split_of else "train" if k < 6 else "validation" if k < 8 else "test"
        splits.append({"example_id": src, "split": split, "seed": seed, "batch_id": "b0",
                       "assigned_at": pd.Timestamp("2026-01-01")})
    df = pd.DataFrame(rows)
    write_table(con, "sft_examples", df)
    write_table(con, "splits", pd.DataFrame(splits))
    return df


def small(**kw) -> SFTConfig:
    base = dict(epochs=2, token_budget=128, micro_batch_size=2, max_length=48, eval_at_start=False,
                max_eval_examples=6, max_new_tokens=5, warmup_steps=2, checkpoint_every=2, lr=3e-3, patience=0)
    base.update(kw)
    return SFTConfig(**base)


def train_losses(con, run_id: str) -> list[float]:
    return [v for (v,) in con.execute("select value from run_metrics where run_id = ? and split = 'train' and "
                                      "metric = 'loss' order by step", [run_id]).fetchall()]


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_train_sft_records_run_metrics_predictions_and_model(con):
    data = make_intent_tables(con)
    res = train_sft(con, small(eval_at_start=True), progress=False)
    run = con.execute("select status, kind, task, model_path, data_snapshot, config_json from runs where run_id = ?",
                      [res.run_id]).fetchone()
    assert run[:3] == ("completed", "sft", "intent_classification")
    assert run[3] == res.model_path and Path(res.model_path, "config.json").exists()
    assert run[4] is not None and '"token_budget": 128' in run[5]
    assert '"layout": "auto"' in run[5] and '"layout_resolved": "bare"' in run[5]  # the offline tokenizer has no chat template
    m = con.execute("select split, metric, count(*) n from run_metrics where run_id = ? group by all",
                    [res.run_id]).df().set_index(["split", "metric"])["n"]
    assert m["train", "loss"] == res.steps and m["train", "lr"] == res.steps
    assert m["validation", "accuracy"] == 3  # before training + 2 epoch ends
    assert m["validation", "choice_accuracy"] == 3
    for k in ("real_tokens_per_s", "trained_tokens_per_s", "padding_fraction", "peak_memory_gb"):
        assert m["train", k] == 2
    assert m["test", "accuracy"] == 1 and m["test", "majority_baseline"] == 1
    losses = train_losses(con, res.run_id)
    assert losses[-1] < losses[0]  # it learned something
    pred = con.execute("select split, count(*), sum(correct::int) from predictions where run_id = ? group by 1",
                       [res.run_id]).df().set_index("split")
    splits = con.execute("select split, count(*) from splits group by 1").df().set_index("split").iloc[:, 0]
    assert pred.loc["validation"].iloc[0] == splits["validation"] and pred.loc["test"].iloc[0] == splits["test"]
    assert pred.loc["test"].iloc[1] / splits["test"] == pytest.approx(res.test_accuracy)
    assert 0 <= res.majority_baseline <= 1 and res.best_step is not None
    assert not list(Path(res.model_path).glob("checkpoints/*.pt"))  # completed: checkpoints cleaned up
    # the saved model loads and generates like the in-training evaluation did
    prompts = list(data["prompt"][:3])
    assert generate(res.run_id, prompts, max_new_tokens=5) == generate(res.model_path, prompts, max_new_tokens=5)
    model, tok = load_model(res.run_id)
    assert tok.eos_token is not None and model.config.vocab_size == len(tok)
    untrained = generate("offline:tiny-llama", prompts[:1], max_new_tokens=3)
    assert len(untrained) == 1 and isinstance(untrained[0], str)


def test_generation_is_the_same_left_padded_in_a_batch_or_alone(con):
    model, tok = load_model("offline:tiny-llama")
    prompts = ["Message: hi\nIntent:", "Message: my package has not arrived yet and it is late again\nIntent:"]
    batched = generate((model, tok), prompts, max_new_tokens=4)
    alone = [generate((model, tok), [p], max_new_tokens=4)[0] for p in prompts]
    assert batched == alone


def test_normalize_answer_matches_wordpiece_decoding():
    assert normalize_answer("technical _ issue") == normalize_answer(" Technical_issue.") == "technical issue"
    assert normalize_answer("Technical  issue") == "technical issue"  # a plain-words template's label
    assert normalize_answer("account _ access") != normalize_answer("account")


# --------------------------------------------------------------------------- determinism and equivalences

@pytest.mark.slow
def test_same_seed_data_and_config_give_the_same_metrics(con):
    make_intent_tables(con)
    cfg = small(epochs=1)
    a, b = train_sft(con, cfg, progress=False), train_sft(con, cfg, progress=False)
    q = "select step, split, metric, value from run_metrics where run_id = ? and metric not in " \
        "('real_tokens_per_s', 'trained_tokens_per_s', 'model_tflops_per_s', 'peak_memory_gb', 'first_step_seconds') " \
        "order by all"
    ma, mb = con.execute(q, [a.run_id]).df(), con.execute(q, [b.run_id]).df()
    assert len(ma) > 10
    pd.testing.assert_frame_equal(ma, mb)
    c = train_sft(con, dataclasses.replace(cfg, seed=1), progress=False)
    assert train_losses(con, c.run_id) != train_losses(con, a.run_id)


@pytest.mark.slow
def test_gradient_accumulation_matches_a_bigger_micro_batch(con):
    make_intent_tables(con)
    a = train_sft(con, small(epochs=1, micro_batch_size=2, grad_accum=1), progress=False)
    b = train_sft(con, small(epochs=1, micro_batch_size=1, grad_accum=2), progress=False)
    la, lb = train_losses(con, a.run_id), train_losses(con, b.run_id)
    assert len(la) == len(lb) > 2
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-5, (la, lb)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_resume_gives_the_same_final_loss_as_an_uninterrupted_run(con, lora):
    make_intent_tables(con)
    cfg = small(epochs=2, lora=lora, lr=3e-3 if not lora else 1e-2, checkpoint_every=3, eval_every=4)
    full = train_sft(con, cfg, progress=False)
    part = train_sft(con, dataclasses.replace(cfg, stop_at_step=5), progress=False)
    assert part.status == "interrupted" and part.steps == 5
    assert con.execute("select status from runs where run_id = ?", [part.run_id]).fetchone()[0] == "interrupted"
    resumed = train_sft(con, cfg, resume_from=part.run_id, progress=False)
    assert resumed.run_id == part.run_id and resumed.steps == full.steps
    lf, lr_ = train_losses(con, full.run_id), train_losses(con, part.run_id)
    assert len(lr_) == len(lf)  # no step logged twice
    assert abs(lf[-1] - lr_[-1]) < 1e-4
    assert resumed.test_accuracy == full.test_accuracy and resumed.best_step == full.best_step
    with pytest.raises(ValueError, match="already completed"):
        train_sft(con, cfg, resume_from=part.run_id, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_resume_after_the_process_is_killed(con, workspace, tmp_path, lora):
    """A real crash: SIGKILL the training process mid-run, resume, end exactly where a clean run ends."""
    make_intent_tables(con)
    cfg = small(epochs=2, checkpoint_every=2, lora=lora, lr=1e-2 if lora else 3e-3)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import workbench
        from workbench.finetune import SFTConfig, train_sft
        train_sft(workbench.connect(), SFTConfig(**{dataclasses.asdict(cfg)!r}), progress=False)
    """))
    env = {**os.environ, "WORKBENCH_HOME": str(workspace), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = sorted(Path(workspace, "models").glob("sft-*/checkpoints/step-0000002.pt"))
        if found:
            ckpt = found[0]
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert ckpt is not None, "the training process ended before it could be killed"
    run_id = ckpt.parent.parent.name
    assert con.execute("select status from runs where run_id = ?", [run_id]).fetchone()[0] == "running"
    resumed = train_sft(con, cfg, resume_from=run_id, progress=False)
    full = train_sft(con, cfg, progress=False)
    lk, lf = train_losses(con, run_id), train_losses(con, full.run_id)
    assert len(lk) == len(lf) == resumed.steps
    assert abs(lk[-1] - lf[-1]) < 1e-4


@pytest.mark.slow
def test_early_stopping_ends_after_patience_evaluations_without_improvement(con):
    make_intent_tables(con)
    # lr so small that no weight changes: validation metrics stay exactly equal (no improvement)
    res = train_sft(con, small(epochs=3, lr=1e-30, eval_every=1, eval_at_start=True, patience=2), progress=False)
    assert res.stopped_early and res.steps == 2 and res.best_step == 0


# --------------------------------------------------------------------------- bad input, before anything is written

def _no_runs(con):
    return not con.execute("select count(*) from runs").fetchone()[0]


def test_empty_train_or_validation_split_is_an_error(con):
    make_intent_tables(con, split_of=lambda i: "validation" if i % 2 else "test")
    with pytest.raises(SFTDataError, match="train split is empty"):
        train_sft(con, small(), progress=False)
    make_intent_tables(con, split_of=lambda i: "train" if i % 2 else "test")
    with pytest.raises(SFTDataError, match="validation split is empty"):
        train_sft(con, small(), progress=False)
    assert _no_runs(con)


def test_missing_tables_or_task_is_an_error(con):
    with pytest.raises(SFTDataError, match="sft_examples"):
        train_sft(con, small(), progress=False)
    make_intent_tables(con)
    with pytest.raises(SFTDataError, match="reply_generation.*intent_classification"):
        train_sft(con, small(task="reply_generation"), progress=False)


def test_labels_missing_from_train_are_an_error(con):
    df = make_intent_tables(con)
    splits = con.execute("select * from splits").df()
    refund_rows = set(df.loc[df["completion"] == "refund", "source_row_id"])
    splits.loc[splits["example_id"].isin(refund_rows), "split"] = "test"
    write_table(con, "splits", splits)
    with pytest.raises(SFTDataError, match=r"labels in test never appear in train: \{'refund': 12\}"):
        train_sft(con, small(), progress=False)
    assert _no_runs(con)


def test_completions_longer_than_max_length(con):
    df = make_intent_tables(con)
    train = set(con.execute("select example_id from splits where split = 'train'").df()["example_id"])
    long = df.index[df["source_row_id"].isin(train)][:5]
    df.loc[long, "completion"] = " ".join(["refund"] * 60)  # 5 train examples, 120 tokens each
    df["choices"] = None  # a generation task: free-text answers
    write_table(con, "sft_examples", df)
    with pytest.raises(SFTDataError, match=r"5 of \d+ train examples have a completion longer than max_length=48 .*"
                                           r"lose their EOS.*overlength"):
        train_sft(con, small(), progress=False)
    assert _no_runs(con)
    res = train_sft(con, small(epochs=1, overlength="drop", max_new_tokens=3), progress=False)
    cfg = con.execute("select config_json from runs where run_id = ?", [res.run_id]).fetchone()[0]
    assert '"overlength": "drop"' in cfg and res.majority_baseline is None
    res = train_sft(con, small(epochs=1, overlength="truncate", max_new_tokens=3), progress=False)
    assert res.status == "completed"


def test_missing_model_path_and_bad_config_are_errors(con, tmp_path):
    make_intent_tables(con)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        train_sft(con, small(model=str(tmp_path / "no-such-model")), progress=False)
    with pytest.raises(ValueError, match="unknown offline model"):
        train_sft(con, small(model="offline:gpt-17"), progress=False)
    with pytest.raises(ValueError, match="token_budget"):
        train_sft(con, small(token_budget=16), progress=False)
    with pytest.raises(ValueError, match="no run 'sft-nope'"):
        train_sft(con, small(), resume_from="sft-nope", progress=False)
    assert _no_runs(con)


@pytest.mark.slow
def test_a_tokenizer_without_pad_or_eos_gets_them(con, tmp_path):
    """A local model folder whose tokenizer has neither pad nor EOS: both are added, embeddings resized."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    data = make_intent_tables(con)
    words = sorted({w for t in list(data["prompt"]) + list(data["completion"]) for w in t.replace("\n", " ").split()})
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>"] + words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    assert tok.pad_token is None and tok.eos_token is None
    folder = tmp_path / "wordlevel-llama"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    res = train_sft(con, small(model=str(folder), epochs=1), progress=False)
    model, saved = load_model(res.model_path)
    assert saved.eos_token is not None and saved.pad_token is not None and saved.pad_token != saved.eos_token
    assert model.get_input_embeddings().weight.shape[0] == len(saved) == len(tok) + 2


def test_mask_audit_runs_before_training_and_stops_a_doubled_bos(con, tmp_path):
    """Training audits its own tokenized examples first: prompts that already start with the BOS text get a
    second BOS from the layout; the run stops with MaskAuditError before a run row is written. Clean data
    passes and the audit's counts are logged at step 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from workbench.template_tokens import MaskAuditError

    data = make_intent_tables(con)
    words = sorted({w for t in list(data["prompt"]) + list(data["completion"]) for w in t.replace("\n", " ").split()})
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + words)},
                                     unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    folder = tmp_path / "bos-llama"
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=2,
                                                 num_key_value_heads=1)).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_table(con, "sft_examples", data.assign(prompt="<s> " + data["prompt"]))
    with pytest.raises(MaskAuditError, match="doubled_bos"):
        train_sft(con, small(model=str(folder), epochs=1), progress=False)
    assert con.execute("select count(*) from runs").fetchone()[0] == 0

    write_table(con, "sft_examples", data)
    res = train_sft(con, small(model=str(folder), epochs=1), progress=False)
    audit = dict(con.execute("select metric, value from run_metrics where run_id = ? and step = 0 and split = 'train'"
                             " and metric like 'mask_audit%'", [res.run_id]).fetchall())
    n_train = int((con.execute("select count(*) from splits where split = 'train'").fetchone()[0]))
    assert audit["mask_audit_examples"] == n_train  # fewer than the 256-example sample: all of them
    assert audit["mask_audit_min_trained_tokens"] == 2  # one label word + EOS


def test_validation_subset_is_a_seeded_sample_across_templates():
    """Evaluations during training score max_eval_examples validation rows drawn across every template,
    not the first rows (ids start with the template id: those would be one template's)."""
    from workbench.finetune import validation_subset

    frame = pd.DataFrame({"example_id": [f"{t}|messages.csv:{i}" for t in ("ic-a", "ic-b", "ic-c") for i in range(100)]})
    sub = validation_subset(frame, SFTConfig(max_eval_examples=60, seed=3))
    per_template = sub["example_id"].str.split("|").str[0].value_counts()
    assert len(sub) == 60 and set(per_template.index) == {"ic-a", "ic-b", "ic-c"} and per_template.min() >= 10
    assert sub.equals(validation_subset(frame, SFTConfig(max_eval_examples=60, seed=3)))  # same seed, same rows
    assert sub["example_id"].is_monotonic_increasing
    assert validation_subset(frame, SFTConfig(max_eval_examples=None)) is frame


def test_evaluation_of_a_flex_attention_model_runs_on_sdpa_and_switches_back():
    """The CUDA training path uses flex attention; evaluation (generation) switches to SDPA and back."""
    from workbench.finetune import evaluate, load_tokenizer_and_model

    frame = pd.DataFrame({"example_id": ["a", "b"], "prompt": ["Message: my account is locked\nIntent:",
                                                              "Message: refund please\nIntent:"],
                          "completion": ["account_access", "refund"], "choices": [list(INTENTS)] * 2})
    cfg = SFTConfig(max_new_tokens=3)
    tok, flex, _ = load_tokenizer_and_model("offline:tiny-llama", attn_implementation="flex_attention")
    _, sdpa, _ = load_tokenizer_and_model("offline:tiny-llama", attn_implementation="sdpa")
    m_flex, p_flex = evaluate(flex, tok, frame, cfg)
    m_sdpa, p_sdpa = evaluate(sdpa, tok, frame, cfg)
    assert flex.config._attn_implementation == "flex_attention"
    assert m_flex == pytest.approx(m_sdpa) and list(p_flex["prediction"]) == list(p_sdpa["prediction"])


def test_config_from_strings_types_values_and_rejects_unknown_fields():
    from workbench.finetune import config_from_strings

    cfg = config_from_strings(["epochs=3", "lora=true", "lr=1e-4", "max_eval_examples=none", "model=/m"])
    assert (cfg.epochs, cfg.lora, cfg.lr, cfg.max_eval_examples, cfg.model) == (3, True, 1e-4, None, "/m")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        config_from_strings(["epoch=3"])
    with pytest.raises(ValueError, match="true or false"):
        config_from_strings(["lora=maybe"])


@pytest.mark.slow
def test_cli_sft_trains_and_resumes(con, workspace, capsys):
    import json

    from workbench.cli import main

    make_intent_tables(con)
    opts = ["--set", "epochs=1", "--set", "token_budget=128", "--set", "max_length=48", "--set", "eval_at_start=false",
            "--set", "max_eval_examples=4", "--set", "max_new_tokens=4", "--no-progress"]
    assert main(["--workspace", str(workspace), "sft", *opts, "--set", "stop_at_step=2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "interrupted"
    assert main(["--workspace", str(workspace), "sft", "--resume", first["run_id"], "--no-progress"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["run_id"] == first["run_id"] and done["status"] == "completed" and done["test_accuracy"] is not None


def test_template_id_selects_one_templates_examples(con):
    """SFTConfig.template_id trains on one template's rendering only (the sweep's template dimension)."""
    from workbench.finetune import load_sft_frame

    make_intent_tables(con, n=24)
    con.execute("insert into sft_examples select example_id || ':v2', source_row_id, task, 'intent_v2', "
                "'Classify: ' || prompt, completion, choices from sft_examples")
    assert set(load_sft_frame(con, "intent_classification")["example_id"].str.endswith(":v2")) == {True, False}
    only = load_sft_frame(con, "intent_classification", template_id="intent_v2")
    assert len(only) == 24 and only["prompt"].str.startswith("Classify: ").all()
    with pytest.raises(SFTDataError, match="template_id 'nope'.*intent_v1"):
        load_sft_frame(con, "intent_classification", template_id="nope")
    from workbench.sweep import normalize_space

    assert "template_id" in normalize_space({"template": ["intent_v1", "intent_v2"]}, trainer="sft")


def test_train_sft_with_the_cuda_configuration_on_cpu(con):
    """train_sft as it runs on CUDA (flex attention + document BlockMask, compiled decoder with static shapes,
    bf16-mixed autocast, fused AdamW, batches prefetched in a thread, host sync every 2 steps), on CPU:
    flex trains through its math reference and the decoder compiles with aot_eager. Every step's loss and
    the throughput figures the issue asks for land in run_metrics."""
    import json

    from workbench.packing import flex_reference_backward

    make_intent_tables(con, n=36)
    cfg = small(epochs=1, token_budget=64, attn_implementation="flex_attention", compile="on", compile_backend="aot_eager",
                precision="bf16-mixed", fused_optimizer="on", compile_loss="on", prefetch=2, sync_every=2, peak_tflops=1.0,
                evaluate_test=False, keep_best=False, max_eval_examples=3, max_new_tokens=3,
                flex_kernel_options={"fwd_BLOCK_M": 64, "bwd_num_warps": 4},  # CPU's math reference ignores tiles
                flex_block_size=64)  # 64-token BlockMask blocks (the default 128 runs in the train_sft_gpu test)
    with flex_reference_backward():
        res = train_sft(con, cfg, progress=False)
    stored = json.loads(con.execute("select config_json from runs where run_id = ?", [res.run_id]).fetchone()[0])
    assert stored["flex_kernel_options_resolved"] == {"fwd_BLOCK_M": 64, "bwd_num_warps": 4}  # what the kernels got
    m = con.execute("select metric, step, value from run_metrics where run_id = ? and split = 'train'",
                    [res.run_id]).df()
    losses = m[m.metric == "loss"].sort_values("step")
    assert losses["step"].tolist() == list(range(1, res.steps + 1)) and res.steps >= 3
    assert losses["value"].between(0, 20).all()
    last = m[m.step == res.steps].set_index("metric")["value"]
    for k in ("real_tokens_per_s", "trained_tokens_per_s", "padding_fraction", "model_tflops_per_s", "mfu",
              "peak_memory_gb", "grad_norm", "lr"):
        assert k in last.index, k
    assert 0 < last["trained_tokens_per_s"] < last["real_tokens_per_s"]
    assert 0 <= last["padding_fraction"] < 1 and last["mfu"] == pytest.approx(last["model_tflops_per_s"])
    # the compiled first step is timed on its own and left out of the throughput window
    first = m[m.metric == "first_step_seconds"]
    assert first["step"].tolist() == [1] and first["value"].iloc[0] > 0
    with pytest.raises(ValueError, match="compile_backend"):
        SFTConfig(compile_backend="tvm").validate()


def _benchmark(name: str = "train_throughput"):
    """A fresh module of ``benchmarks/<name>.py`` (monkeypatching it leaks into no other test)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_throughput_benchmark_gpu_config_smoke_runs_every_phase_on_cpu(tmp_path):
    """benchmarks/train_throughput.py --gpu-config-smoke: the CUDA configuration end to end, tiny, on CPU;
    the JSON holds every figure the GPU session must report, and a spent budget skips phases cleanly."""
    import json

    bench = _benchmark()
    out = tmp_path / "smoke.json"
    res = bench.main(["--device", "cpu", "--gpu-config-smoke", "--profile", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["workbench_config"] == res["workbench_config"] and saved["host_cpu"]
    assert res["workbench_config"] | {"attn": "flex_attention", "dtype": "bf16", "compile": True,
                                      "compile_backend": "aot_eager", "compile_loss": True} == res["workbench_config"]
    for side in ("trainer", "workbench"):
        assert saved[side]["real_tok_s"] > 0 and saved[side]["steps_done"] == saved["workload"]["steps"], side
    assert saved["workbench"]["graphs_after_first_step"] == 0 and saved["workbench"]["padding_fraction"] < 0.1
    assert saved["trainer"]["padding_fraction"] > 0.3 and saved["ratio"] > 0
    assert saved["workbench"]["isolation"]["isolated"], saved["workbench"]["isolation"]  # packed == alone
    prof = saved["workbench"]["profile"]  # 2 more steps under torch.profiler, after (and not in) the timed ones
    assert prof["steps"] == 2 and prof["wall_ms_per_step"] > 0 and 0 < prof["busy_share_of_wall"] and prof["graphs_compiled"] == 0
    assert prof["top"] and all(r["ms_per_step"] > 0 and r["calls_per_step"] > 0 for r in prof["top"])
    assert any("mm" in r["name"] for r in prof["top"]), prof["top"]  # the matmuls show up among the top operators
    check = saved["losscheck"]
    assert check["steps"] == saved["workload"]["check_steps"] and check["within_1pct"], check
    assert check["trainer"][-1] < check["trainer"][0] - 0.2, check  # Zipf ids: a curve that falls, not a flat line
    bench.main(["--device", "cpu", "--gpu-config-smoke", "--only", "trainer", "--max-seconds", "1e-6",
                "--out", str(out)])
    assert json.loads(out.read_text())["trainer"] == {"skipped": "out of time budget"}
    # a failing phase is recorded with its error and does not stop the run (rows shorter than the examples)
    bench.main(["--device", "cpu", "--gpu-config-smoke", "--only", "workbench", "--only", "losscheck",
                "--token-budget", "16", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert "token_budget=16" in saved["workbench"]["error"] and "Traceback" in saved["workbench"]["traceback"]
    assert "skipped" in saved["losscheck"] and saved["wall_s"] > 0
    # tuned flex tiles whose kernel fails (on a GPU: out of shared memory) -> measured with torch's defaults
    real_prepare = bench.prepare

    def prepare(*a, kernel_options=None, **kw):
        if kernel_options:
            raise RuntimeError("out of resource: shared memory")
        return real_prepare(*a, kernel_options=kernel_options, **kw)

    bench.prepare = prepare
    bench.main(["--device", "cpu", "--gpu-config-smoke", "--only", "workbench", "--steps", "3",
                "--flex-kernel-options", '{"fwd_BLOCK_M": 64}', "--out", str(out)])
    saved = json.loads(out.read_text())
    assert "shared memory" in saved["workbench_failed_with_kernel_options"]["error"]
    assert saved["workbench_config"]["flex_kernel_options"] is None and saved["workbench"]["real_tok_s"] > 0


def test_flex_configs_benchmark_smoke_on_cpu(tmp_path):
    """benchmarks/flex_configs.py --smoke: times torch's default flex kernels and candidates on the workload's
    packed document masks, checks each candidate's output and gradients against the default, and writes the
    winner as kernel options that train_throughput.py (and SFTConfig) take."""
    import json

    bench = _benchmark("flex_configs")
    out = tmp_path / "flex.json"
    res = bench.main(["--device", "cpu", "--smoke", "--reps", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["default"]["fwd_ms"] > 0 and res["default"]["bwd_ms"] > 0
    assert {c["kind"] for c in res["candidates"]} == {"fwd", "bwd"}
    assert all(c["ok"] and c["max_rel_diff"] < 1e-4 for c in res["candidates"])  # same math, other tiles
    assert all(k.startswith(("fwd_", "bwd_")) for k in res["best_kernel_options"])
    assert res["best_ms"]["best_total"] <= res["best_ms"]["default_total"]
    assert [(x["flex_block"], x["ok"]) for x in res["setups"]] == [(64, True)]  # 64-token blocks, same results
    assert res["setups"][0]["compile_options"]["max_autotune"] is True
    tt = _benchmark()
    opts = tt.flex_kernel_options(str(out), {}, torch.device("cpu"), torch.bfloat16)
    assert opts == (res["best_kernel_options"] or None)
    assert tt.flex_kernel_options("auto", tt.WORKLOADS["cuda"], torch.device("cpu"), torch.bfloat16) is None  # not sm90


def test_flex_kernel_options_config_field():
    """SFTConfig.flex_kernel_options: "auto" by default; None or a dict of fwd_/bwd_ integer options; --set takes JSON."""
    from workbench.finetune import config_from_strings

    assert SFTConfig().flex_kernel_options == "auto"
    SFTConfig(flex_kernel_options=None).validate()
    SFTConfig(flex_block_size=64, compile_options={"max_autotune": True}).validate()
    for bad in (dict(flex_block_size=100), dict(compile_options={"max_autotune": True}, compile_mode="max-autotune"),
                dict(compile_options="fast")):
        with pytest.raises(ValueError, match="flex_block_size|compile_options"):
            SFTConfig(**bad).validate()
    assert config_from_strings(['compile_options={"max_autotune": true}']).compile_options == {"max_autotune": True}
    SFTConfig(flex_kernel_options={"fwd_BLOCK_M": 64, "bwd_num_warps": 4}).validate()
    for bad in ({"BLOCK_M": 64}, {"fwd_BLOCK_M": "64"}, "fast", ["fwd_BLOCK_M"]):
        with pytest.raises(ValueError, match="flex_kernel_options"):
            SFTConfig(flex_kernel_options=bad).validate()
    cfg = config_from_strings(['flex_kernel_options={"fwd_BLOCK_M": 64}'])
    assert cfg.flex_kernel_options == {"fwd_BLOCK_M": 64}
    assert config_from_strings(["flex_kernel_options=none"]).flex_kernel_options is None
    with pytest.raises(ValueError, match="JSON"):
        config_from_strings(['flex_kernel_options={"fwd_BLOCK_M": }'])


def test_train_sft_gpu_benchmark_runs_the_routine_end_to_end_tiny_on_cpu(tmp_path):
    """benchmarks/train_sft_gpu.py --tiny: train_sft itself with the CUDA configuration (flex + document mask,
    compiled decoder, bf16 autocast, fused AdamW), evaluations between throughput windows, test split and
    saved model; nothing recompiles after an evaluation (2 graphs: the decoder and the loss chunk)."""
    import json

    bench = _benchmark("train_sft_gpu")
    out = tmp_path / "sft.json"
    res = bench.main(["--device", "cpu", "--tiny", "--set", "warmup_steps=3", "--workdir", str(tmp_path / "work"),
                      "--out", str(out)])
    assert res["config"]["warmup_steps"] == 3  # --set reaches the SFTConfig
    assert json.loads(out.read_text())["run_id"] == res["run_id"]
    assert res["status"] == "completed" and res["graphs_compiled"] == 2, res
    assert len(res["windows"]) >= 2 and all(w["real_tokens_per_s"] > w["trained_tokens_per_s"] > 0
                                            for w in res["windows"])
    assert res["first_step_s"] > 0 and "loss" in res["test"] and Path(res["model_path"]).is_dir()
    assert res["validation_loss"][-1][1] < res["validation_loss"][0][1]  # it learns the lexicon's statistics
    assert res["model"]["model_vocab"] > res["model"]["tokenizer_vocab"]  # unused embedding rows, as Qwen's


# --------------------------------------------------------------------------- chat layout

SYSTEM = "Answer with one intent label."


def make_chat_model(tmp_path, data: pd.DataFrame, hidden: int = 128) -> Path:
    """A tiny Llama saved with the offline ChatML tokenizer (``train_chat_tokenizer``): a model folder whose
    tokenizer has a chat template, like a Hugging Face instruct model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from workbench.template_tokens import train_chat_tokenizer

    tok = train_chat_tokenizer(list(data["prompt"]) + list(data["completion"]) + [SYSTEM], vocab_size=400)
    folder = tmp_path / "chatml-llama"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_chat_tables(con, n: int = 72) -> pd.DataFrame:
    """The intent tables with a system message on every other example (null on the rest)."""
    data = make_intent_tables(con, n=n)
    data["system"] = [SYSTEM if i % 2 == 0 else None for i in range(len(data))]
    write_table(con, "sft_examples", data)
    return data


def chat_messages(row) -> list[dict]:
    """The conversation of one example, written out here independently of the library."""
    msgs = [{"role": "system", "content": row["system"]}] if isinstance(row["system"], str) else []
    return msgs + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


@pytest.mark.slow
def test_a_tiny_chat_model_learns_the_task_through_the_chat_layout(con, tmp_path):
    """End to end in the chat layout: the run records layout_resolved = "chat" (the offline default: "bare"),
    the train loss falls, test accuracy beats the majority baseline by far, and generation (in training's
    evaluation, from the saved run, and by hand from the chat-rendered prompt with the generation prompt,
    stopping at <|im_end|>) gives the same answers."""
    import json

    data = make_chat_tables(con)
    folder = make_chat_model(tmp_path, data)
    res = train_sft(con, small(model=str(folder), epochs=15, max_length=96, token_budget=192, max_new_tokens=8,
                               warmup_steps=5), progress=False)
    stored = json.loads(con.execute("select config_json from runs where run_id = ?", [res.run_id]).fetchone()[0])
    assert stored["layout"] == "auto" and stored["layout_resolved"] == "chat"
    assert json.loads(Path(res.model_path, "workbench_sft.json").read_text()) == {"layout": "chat"}
    losses = train_losses(con, res.run_id)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert res.test_accuracy >= res.majority_baseline + 0.4 and res.test_choice_accuracy >= res.majority_baseline + 0.4
    audit = dict(con.execute("select metric, value from run_metrics where run_id = ? and step = 0 and split = 'train'"
                             " and metric like 'mask_audit%'", [res.run_id]).fetchall())
    assert audit["mask_audit_min_trained_tokens"] >= 3  # >= 1 label token, <|im_end|> and the newline after it

    pred = con.execute("select example_id, prompt, prediction from predictions where run_id = ? and split = 'test' "
                       "order by example_id", [res.run_id]).df()
    rows = data.set_index("example_id").loc[pred["example_id"]].reset_index()
    with_sys, no_sys = rows[rows["system"].notna()].head(3), rows[rows["system"].isna()].head(3)
    assert (pred.set_index("example_id").loc[with_sys["example_id"], "prompt"]
            == (SYSTEM + "\n\n" + with_sys["prompt"]).values).all()  # predictions show the system message
    model, tok = load_model(res.run_id)
    ends = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    for part, system in ((with_sys, SYSTEM), (no_sys, None)):
        saved = generate(res.run_id, list(part["prompt"]), max_new_tokens=8, system=system)
        by_hand = []
        for _, row in part.iterrows():
            ids = tok.apply_chat_template(chat_messages(row)[:-1], tokenize=True, add_generation_prompt=True,
                                          return_dict=False)
            out = model.generate(torch.tensor([list(ids)]), max_new_tokens=8, do_sample=False, eos_token_id=ends,
                                 pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
            out = out[:next((i for i, t in enumerate(out) if t in ends), len(out))]
            by_hand.append(tok.decode(out, skip_special_tokens=True).strip())
        assert saved == by_hand == pred.set_index("example_id").loc[part["example_id"], "prediction"].tolist()
    assert sum(normalize_answer(p) == normalize_answer(c) for p, c in zip(by_hand, no_sys["completion"])) >= 2
