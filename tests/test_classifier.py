"""Sequence-classification fine-tuning: tables written, keep-best, resume, determinism, bad input.

Most tests train a tiny randomly initialised BERT (2 layers, hidden 32) with the MiniLM tokenizer
on a small synthetic intent data set: seconds per run. One slow test fine-tunes the real pretrained
MiniLM on the sample data.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import workbench
from workbench import classifier as C
from workbench.evaluate import majority_baseline

REPO = Path(__file__).resolve().parent.parent

# Keyword-heavy texts: a tiny model learns them in a few epochs.
PHRASES = {
    "billing": ["charged twice on my invoice", "extra fee on my bill", "wrong amount on the statement"],
    "refund": ["I want my money back", "please refund the broken item", "refund still not received"],
    "shipping": ["where is my package", "delivery is late", "tracking shows no movement"],
    "technical_issue": ["the app crashes on start", "device will not turn on", "error code during setup"],
    "account_access": ["cannot log in to my account", "password reset email missing", "account is locked"],
    "cancellation": ["cancel my subscription", "close my plan now", "stop my membership"],
}
REGIONS = ["north", "south", "east", "west"]
AGE_BANDS = ["18-29", "30-44", "45-64", "65+"]


def make_examples(n: int = 150, seed: int = 0, intents: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``examples`` and ``splits`` frames in the workspace contract (3 train : 1 validation : 1 test)."""
    rng = random.Random(seed)
    intents = intents or list(PHRASES)
    rows = []
    for i in range(n):
        intent = intents[i % len(intents)]
        rows.append({"example_id": f"ex{i:04d}", "message_id": f"m{i}", "customer_id": f"c{i % 17}",
                     "created_at": pd.Timestamp("2024-01-01") + pd.Timedelta(hours=i), "channel": "email",
                     "region": rng.choice(REGIONS), "age_band": rng.choice(AGE_BANDS),
                     "text": f"{rng.choice(['hi', 'hello', 'hey'])} {rng.choice(PHRASES[intent])} {rng.randint(1, 999)}",
                     "intent": intent, "reply": "ok"})
    ex = pd.DataFrame(rows)
    ex["text_norm"] = ex["text"].str.lower()
    # round-robin over intents, split cycle of 5 coprime with 6: every intent lands in every split
    kinds = ["train", "train", "train", "validation", "test"]
    sp = pd.DataFrame({"example_id": ex["example_id"], "split": [kinds[i % 5] for i in range(n)],
                       "seed": 42, "batch_id": 1, "assigned_at": pd.Timestamp("2024-02-01")})
    return ex, sp


def write_examples(con, n: int = 150, seed: int = 0, **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    ex, sp = make_examples(n, seed, **kw)
    workbench.write_table(con, "examples", ex)
    workbench.write_table(con, "splits", sp)
    return ex, sp


def build_tiny_model(path: Path) -> Path:
    """A randomly initialised 2-layer BERT saved with the offline MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(C.default_model())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-bert")))


def tiny_config(model: str, **kw) -> C.ClassifierConfig:
    base = dict(model=model, epochs=6, batch_size=16, learning_rate=1e-2, warmup_ratio=0.1, patience=0, threads=1,
                log_every=2, seed=0)
    return C.ClassifierConfig(**{**base, **kw})


def metrics(con, run_id: str) -> pd.DataFrame:
    return con.execute("select step, epoch, split, metric, value from run_metrics where run_id = ?"
                       " and metric <> 'examples_per_s' order by split, metric, step", [run_id]).df()


def run_count(con) -> int:
    return con.execute("select count(*) from runs").fetchone()[0] if workbench.table_exists(con, "runs") else 0


# --------------------------------------------------------------------------- training records

def test_trains_validates_per_epoch_and_tests_once_with_the_kept_weights(con, tiny_model):
    ex, sp = write_examples(con)
    cfg = tiny_config(tiny_model)
    res = C.train_classifier(con, cfg, progress=False)

    run = con.execute("select status, kind, task, model_path, data_snapshot from runs where run_id = ?",
                      [res.run_id]).fetchone()
    assert run[:3] == ("completed", "classifier", "intent_classification")
    assert run[4] is not None
    path = Path(res.model_path)
    assert run[3] == str(path) and path.parent.name == "models"
    assert (path / "config.json").exists() and (path / "tokenizer_config.json").exists()
    assert json.loads((path / C.META_FILE).read_text())["labels"] == sorted(PHRASES)
    assert not (path / C.CHECKPOINT).exists()  # removed after completion by default

    m = metrics(con, res.run_id)
    val_acc = m[(m.split == "validation") & (m.metric == "accuracy")]
    # step 0 (untrained) and every epoch end, with whole epochs there
    steps_per_epoch = -(-int((sp.split == "train").sum()) // cfg.batch_size)
    assert val_acc["step"].tolist() == [0] + [steps_per_epoch * e for e in range(1, cfg.epochs + 1)]
    assert val_acc["epoch"].tolist() == [float(e) for e in range(cfg.epochs + 1)]
    assert len(m[(m.split == "validation") & (m.metric == "loss")]) == cfg.epochs + 1
    train_loss = m[(m.split == "train") & (m.metric == "loss")]["value"].tolist()
    assert len(train_loss) >= cfg.epochs and train_loss[-1] < train_loss[0]

    # keep-best: the first step with the highest validation accuracy; test evaluated once, there
    best = val_acc.loc[val_acc["value"].idxmax()]
    assert res.best_step == int(best["step"]) and res.validation_accuracy == pytest.approx(best["value"])
    test_rows = m[(m.split == "test") & m.metric.isin(["accuracy", "loss", "majority_baseline"])]
    assert sorted(test_rows["metric"]) == ["accuracy", "loss", "majority_baseline"]  # once each
    assert (test_rows["step"] == res.best_step).all()

    # predictions: one per validation/test example, consistent with the reported accuracy
    preds = con.execute("select * from predictions where run_id = ?", [res.run_id]).df()
    assert preds.groupby("split").size().to_dict() == {"test": 30, "validation": 30}
    test = preds[preds.split == "test"].sort_values("example_id")
    assert test["correct"].mean() == pytest.approx(res.test_accuracy)
    assert set(test["prompt"]) == set(ex.loc[sp.split == "test", "text"])
    assert res.test_accuracy > res.majority_baseline + 0.3
    train_labels = ex.loc[sp.split == "train", "intent"]
    assert res.majority_baseline == pytest.approx(majority_baseline(train_labels, test["label"]))

    # the saved model is the kept one: it reproduces the stored predictions
    assert C.predict(res.model_path, test["prompt"].tolist()) == test["prediction"].tolist()
    assert C.predict(res.run_id, test["prompt"].tolist()[:3], con=con) == test["prediction"].tolist()[:3]


def test_keep_best_tests_the_best_checkpoint_not_the_last(con, tiny_model):
    write_examples(con)
    # evaluate every step and stop at the first that does not improve: the last is never the best
    res = C.train_classifier(con, tiny_config(tiny_model, keep_best="loss", eval_every=1, patience=1, epochs=6),
                             progress=False)
    assert res.stopped_early
    m = metrics(con, res.run_id)
    val_loss = m[(m.split == "validation") & (m.metric == "loss")].set_index("step")["value"]
    last = int(val_loss.index.max())
    assert res.best_step == int(val_loss.idxmin()) and res.best_step < last
    assert val_loss[last] >= val_loss[res.best_step]
    # re-evaluate the saved model on validation: the best step's loss, not the last step's
    model, tok, labels, max_length = C.load_classifier(res.model_path, device="cpu")
    data = C._read_splits(con, C.ClassifierConfig(), workbench.snapshot_id(con))
    C._tokenize(tok, data["validation"], max_length)
    loss, acc, _ = C._evaluate(model, tok, data["validation"], next(model.parameters()).device, 64)
    assert loss == pytest.approx(val_loss[res.best_step], abs=1e-5)
    assert loss != pytest.approx(val_loss[last], abs=1e-6)
    assert m.loc[(m.split == "test") & (m.metric == "accuracy"), "step"].tolist() == [res.best_step]


def test_untrained_predictions_come_from_the_same_initial_head(con, tiny_model):
    write_examples(con)
    cfg = tiny_config(tiny_model, epochs=1)
    before = C.untrained_predictions(con, cfg, n=1000)
    assert len(before) == 30 and set(before.columns) == {"example_id", "text", "label", "prediction"}
    res = C.train_classifier(con, cfg, progress=False)
    step0 = con.execute("select value from run_metrics where run_id = ? and split = 'validation'"
                        " and metric = 'accuracy' and step = 0", [res.run_id]).fetchone()[0]
    assert (before["label"] == before["prediction"]).mean() == pytest.approx(step0)


def test_decoder_model_without_pad_token_trains(con, tmp_path):
    """Any HF architecture: a tiny GPT-2 whose tokenizer has EOS but no pad token."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    ex, _ = write_examples(con, n=90)
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(ex["text"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    assert tok.pad_token is None
    torch.manual_seed(0)
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2,
                                             n_positions=64)).save_pretrained(tmp_path / "gpt")
    tok.save_pretrained(tmp_path / "gpt")
    res = C.train_classifier(con, tiny_config(str(tmp_path / "gpt"), epochs=2, eval_at_start=False),
                             progress=False)
    assert 0.0 <= res.test_accuracy <= 1.0
    assert C.predict(res.model_path, ["where is my package"])[0] in res.labels


# --------------------------------------------------------------------------- determinism and resume

def _assert_same_run(con, a: str, b: str, tol: float = 1e-4) -> None:
    ma, mb = metrics(con, a), metrics(con, b)
    assert ma[["step", "split", "metric"]].values.tolist() == mb[["step", "split", "metric"]].values.tolist()
    assert (ma["value"] - mb["value"]).abs().max() <= tol
    pa, pb = (con.execute("select split, example_id, prediction from predictions where run_id = ?"
                          " order by split, example_id", [r]).fetchall() for r in (a, b))
    assert pa == pb and len(pa) == 60


def test_same_seed_same_metrics_other_seed_differs(con, tiny_model):
    write_examples(con)
    cfg = tiny_config(tiny_model, epochs=2)
    a = C.train_classifier(con, cfg, progress=False)
    b = C.train_classifier(con, cfg, progress=False)
    _assert_same_run(con, a.run_id, b.run_id, tol=0.0)
    c = C.train_classifier(con, dataclasses.replace(cfg, seed=1), progress=False)
    mc, ma = metrics(con, c.run_id), metrics(con, a.run_id)
    assert not ma["value"].equals(mc["value"])


def test_interrupted_run_resumes_to_the_same_result(con, tiny_model):
    write_examples(con)
    cfg = tiny_config(tiny_model, epochs=3, eval_every=3)  # 6 steps per epoch: checkpoints at steps 3, 6, 9, ...
    full = C.train_classifier(con, cfg, progress=False)

    def stop_at_7(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        C.train_classifier(con, cfg, progress=False, on_step=stop_at_7)
    run_id, status = con.execute("select run_id, status from runs where run_id <> ? order by started_at desc",
                                 [full.run_id]).fetchone()
    assert status == "interrupted"
    assert (C.workspace_root(con) / "models" / run_id / C.CHECKPOINT).exists()
    assert con.execute("select max(step) from run_metrics where run_id = ?", [run_id]).fetchone()[0] == 6

    resumed = C.train_classifier(con, None, resume_from=run_id, progress=False)
    assert resumed.run_id == run_id
    assert con.execute("select status from runs where run_id = ?", [run_id]).fetchone()[0] == "completed"
    _assert_same_run(con, full.run_id, run_id)
    assert (resumed.best_step, resumed.test_accuracy) == (full.best_step, full.test_accuracy)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_result(con, workspace, tiny_model):
    """SIGKILL mid-run (no cleanup at all), between two checkpoints; resume in another process."""
    write_examples(con)
    cfg = tiny_config(tiny_model, epochs=3, eval_every=4, log_every=1, flush_every_s=0)
    full = C.train_classifier(con, cfg, progress=False)
    con.close()
    script = textwrap.dedent(f"""
        import os, signal, workbench
        from workbench.classifier import ClassifierConfig, train_classifier
        def kill(step):
            if step == 10:
                os.kill(os.getpid(), signal.SIGKILL)
        train_classifier(workbench.connect({str(workspace)!r}), ClassifierConfig(**{dataclasses.asdict(cfg)!r}),
                         progress=False, on_step=kill)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    con = workbench.connect(workspace)
    try:
        run_id, status = con.execute("select run_id, status from runs where run_id <> ?", [full.run_id]).fetchone()
        assert status == "running"  # killed: nobody marked it
        assert con.execute("select max(step) from run_metrics where run_id = ?", [run_id]).fetchone()[0] == 10
        C.train_classifier(con, cfg, resume_from=run_id, progress=False)
        _assert_same_run(con, full.run_id, run_id)
    finally:
        con.close()


# --------------------------------------------------------------------------- bad input, before any write

def _fails_before_writing(con, cfg, match, **kw):
    with pytest.raises(C.ClassifierError, match=match):
        C.train_classifier(con, cfg, progress=False, **kw)
    assert run_count(con) == 0


def test_empty_train_or_validation_split(con, tiny_model):
    ex, sp = make_examples()
    workbench.write_table(con, "examples", ex)
    workbench.write_table(con, "splits", sp[sp.split != "validation"])
    _fails_before_writing(con, tiny_config(tiny_model), r"validation split is empty")
    workbench.write_table(con, "splits", sp[sp.split != "train"])
    _fails_before_writing(con, tiny_config(tiny_model), r"train split is empty")


def test_labels_never_seen_in_train(con, tiny_model):
    ex, sp = make_examples()
    ex.loc[ex.example_id.isin(sp.loc[sp.split == "validation", "example_id"][:2]), "intent"] = "complaint"
    ex.loc[ex.example_id.isin(sp.loc[sp.split == "test", "example_id"][:1]), "intent"] = "praise"
    workbench.write_table(con, "examples", ex)
    workbench.write_table(con, "splits", sp)
    _fails_before_writing(con, tiny_config(tiny_model), r"validation split never seen in train: 'complaint' \(2 rows\)")
    ex.loc[ex.intent == "complaint", "intent"] = "billing"
    workbench.write_table(con, "examples", ex)
    _fails_before_writing(con, tiny_config(tiny_model), r"test split never seen in train: 'praise' \(1 rows\)")


def test_missing_model_path_and_unreachable_hub_id(con, tmp_path, monkeypatch):
    import huggingface_hub.constants

    write_examples(con)
    _fails_before_writing(con, tiny_config(str(tmp_path / "no-such-model")), r"folder .*no-such-model.* does not exist")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    _fails_before_writing(con, tiny_config("someone/not-a-model"), r"cannot load 'someone/not-a-model'")


def test_texts_longer_than_max_length_are_counted(con, tiny_model):
    ex, sp = make_examples()
    long_ids = sp.loc[sp.split == "train", "example_id"][:3]
    ex.loc[ex.example_id.isin(long_ids), "text"] += " and also" * 40
    workbench.write_table(con, "examples", ex)
    workbench.write_table(con, "splits", sp)
    _fails_before_writing(con, tiny_config(tiny_model, on_truncation="error", max_length=32),
                          r"3 of 90 train text\(s\) are longer than max_length=32")
    with pytest.warns(UserWarning, match=r"3 of 90 train text\(s\) are longer than max_length=32.*truncated"):
        res = C.train_classifier(con, tiny_config(tiny_model, max_length=32, epochs=1), progress=False)
    truncated = con.execute("select split, value from run_metrics where run_id = ? and metric = 'truncated'",
                            [res.run_id]).fetchall()
    assert dict(truncated) == {"train": 3.0, "validation": 0.0, "test": 0.0}


def test_other_bad_input(con, tiny_model):
    _fails_before_writing(con, tiny_config(tiny_model), r"no table 'examples'")
    ex, sp = write_examples(con)
    _fails_before_writing(con, tiny_config(tiny_model, label_column="label"), r"no column 'label'.*label_column")
    _fails_before_writing(con, tiny_config(tiny_model, keep_best="f1"), r"keep_best")
    _fails_before_writing(con, tiny_config(tiny_model, batch_size=0), r"batch_size must be > 0")
    ex.loc[3, "intent"] = None
    workbench.write_table(con, "examples", ex)
    _fails_before_writing(con, tiny_config(tiny_model), r"1 row\(s\) of 'examples' have a null 'intent'")
    write_examples(con, intents=["billing"])
    _fails_before_writing(con, tiny_config(tiny_model), r"1 distinct 'intent' value")


def test_resume_refuses_unknown_completed_or_changed_runs(con, tiny_model):
    write_examples(con)
    with pytest.raises(C.ClassifierError, match="no such run"):
        C.train_classifier(con, None, resume_from="classifier-nope", progress=False)
    cfg = tiny_config(tiny_model, epochs=1)
    done = C.train_classifier(con, cfg, progress=False)
    with pytest.raises(C.ClassifierError, match="already completed"):
        C.train_classifier(con, None, resume_from=done.run_id, progress=False)
    with pytest.raises(KeyboardInterrupt):
        C.train_classifier(con, cfg, progress=False, on_step=lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    run_id = con.execute("select run_id from runs where status = 'interrupted'").fetchone()[0]
    with pytest.raises(C.ClassifierError, match="differs from the run's in learning_rate"):
        C.train_classifier(con, dataclasses.replace(cfg, learning_rate=1e-4), resume_from=run_id, progress=False)


# --------------------------------------------------------------------------- the real model

@pytest.mark.slow
def test_pretrained_minilm_beats_the_majority_baseline(con):
    """The offline pretrained MiniLM on 200 sample-data examples, two epochs (about a minute)."""
    from workbench.data import build_spine

    build_spine(con, rows=320, seed=7)
    res = C.train_classifier(con, C.ClassifierConfig(epochs=2, learning_rate=2e-4, max_train_examples=200,
                                                     batch_size=16, eval_at_start=False, threads=1),
                             progress=False)
    n_train = con.execute("select value from run_metrics where run_id = ? and split = 'train'"
                          " and metric = 'examples'", [res.run_id]).fetchone()[0]
    assert n_train == 200
    assert res.test_accuracy >= res.majority_baseline + 0.35, res.summary()  # 0.73 vs 0.27 at seed 0


# --------------------------------------------------------------------------- command line

def test_cli_train_classifier_and_evaluate(con, workspace, tiny_model, capsys):
    from workbench.cli import main

    write_examples(con)
    rc = main(["--workspace", str(workspace), "train-classifier", "--model", tiny_model, "--epochs", "2",
               "--learning-rate", "0.01", "--batch-size", "16", "--threads", "1", "--no-eval-at-start", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "vs majority baseline" in out
    run_id, cfg = con.execute("select run_id, config_json from runs").fetchone()
    assert json.loads(cfg)["eval_at_start"] is False and json.loads(cfg)["epochs"] == 2
    assert main(["--workspace", str(workspace), "evaluate"]) == 0
    out = capsys.readouterr().out
    assert f"classifier run {run_id}" in out and "precision" in out
    assert main(["--workspace", str(workspace), "train-classifier", "--model", tiny_model, "--keep-best", "f1"]) == 2
    assert "keep_best must be 'accuracy' or 'loss'" in capsys.readouterr().err
