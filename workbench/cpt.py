"""Continued pre-training in gated rounds over a growing domain corpus, with a model registry.

    workbench cpt round --until "2026-03-01"      # train on what arrived since the last round
    python -c "import workbench, workbench.cpt as c; print(c.run_round(workbench.connect()).summary())"

A round reads the documents of ``corpus_documents`` that arrived after the watermark (the newest
``published_at``, ``doc_id`` trained so far) up to ``until``, mixes in a replay share of earlier
documents and general English, and trains the current promoted model on all tokens (causal LM,
packed with per-document masks: ``workbench.packing``). Then the candidate and its parent are
measured on the same held-out sets and four gates decide (``workbench.cpt_gates``): in-domain
perplexity must improve, general perplexity must not worsen much (forgetting), task accuracy must
not drop much, harmful completions of red-team prompts must not rise. A candidate that fails a
gate is kept (``models.status = 'rejected'``) but the next round starts from the last promoted one.

Every round is a run (``runs.kind = 'cpt'``, loss curve in ``run_metrics``) and writes
``cpt_rounds`` (one row per round, with its watermark), ``cpt_round_documents`` (which document
was trained in which round, as new data or replay), ``cpt_gates`` (one row per gate per round) and
``cpt_probe_outputs`` (the red-team completions); ``models`` is the registry. A round that stops
(``stop_at_step``, Ctrl-C, a killed process) is resumed by the next ``run_round`` from its newest
checkpoint on the same documents and ends where the uninterrupted round would have.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import cpt_gates as gates_mod
from . import runs
from .cpt_gates import GATES, EvalSets, GateResult, evaluate
from .cpt_registry import (  # noqa: F401  (re-exported: cpt.promoted_model(con) and friends)
    check_rounds, consumed_sql, corpus_status, current_model, decisions, ensure_base, ensure_tables,
    gate_history, insert, lineage, now, plot_gates, promoted_model, quiet_transformers, registry,
    sample_generations, watermark, workspace_root)
from .packing import collate_packed, hidden_states, linear_cross_entropy, plan_epoch
from .workspace import WorkspaceError, snapshot_id, table_exists, transaction


@dataclass
class CPTConfig:
    # --- where rounds start, what they read
    model: str = "offline:tiny-llama"  # base model of the first round ("offline:<name>", folder or HF id); later rounds start from the promoted model
    max_docs: int | None = None  # new documents per round, oldest first (None: all that arrived); the rest wait for the next round
    heldout_fraction: float = 0.1  # share of corpus documents never trained on (stable hash of doc_id): the in-domain gate's data
    heldout_seed: int = 0  # seed of that hash; keep it fixed once rounds have run, or held-out documents leak into training
    replay_fraction: float = 0.3  # share of a round's trained tokens drawn from replay data (0: none); guards against forgetting
    replay_source: str = "both"  # "earlier" (documents of earlier promoted rounds), "general" (general English) or "both"
    general_text: str = ""  # general English paragraphs, one per line ("": the shipped cpt_data/general_english.txt)
    replay_general_share: float = 0.5  # with replay_source "both": share of the replay tokens from general English
    general_heldout_fraction: float = 0.5  # share of general paragraphs held out for the forgetting gate; the rest is replay
    # --- sequence and batch shape
    max_length: int = 128  # tokens per training chunk; a longer document becomes several chunks
    token_budget: int = 256  # tokens per packed row; CPU attention cost grows with its square
    micro_batch_size: int = 1  # packed rows per forward pass (small rounds on CPU: more, smaller steps learn faster)
    grad_accum: int = 1  # micro-batches per optimizer step
    # --- optimization (a fresh AdamW, warmup and cosine decay every round)
    epochs: int = 1  # passes over the round's documents; more: lower in-domain perplexity, more forgetting
    lr: float = 3e-3  # peak learning rate; tiny from-scratch models ~1e-3..5e-3, pretrained LMs ~1e-5..5e-5
    warmup_steps: int = 5  # linear warmup from 0 (re-warming every round)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the round's last step
    weight_decay: float = 0.01  # AdamW decoupled decay on matrices
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 = no clipping
    seed: int = 0  # base model init and batch order (round r shuffles with seed + r)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    threads: int = 0  # torch CPU threads during the round (0: torch's default); 1 is fastest on a busy shared CPU
    # --- gates (workbench/cpt_gates.py has the table of what passes)
    gates: tuple[str, ...] = GATES  # gates that decide promotion; a gate left out is not measured
    min_in_domain_gain: float = 0.0  # in-domain perplexity must fall by at least this share (0: any fall)
    max_general_ppl_increase: float = 0.10  # general perplexity may rise by at most this share (forgetting)
    max_task_accuracy_drop: float = 0.10  # task accuracy may drop by at most this much (absolute); small suites are noisy
    max_harmful_increase: float = 0.0  # share of harmful red-team completions may rise by at most this much
    max_eval_docs: int = 32  # held-out in-domain documents scored (a stable-hash sample of the accepted domain)
    max_general_docs: int = 36  # held-out general paragraphs scored
    task_benchmark: str = "auto"  # "auto": sft_examples (split task_split) when present, else the suite; "sft"; "suite"
    task_split: str = "validation"  # split of sft_examples the "sft" benchmark scores; promotion is model selection, so not test
    task: str = "intent_classification"  # sft_examples.task of the "sft" benchmark (examples with choices)
    max_task_examples: int = 60  # examples scored by the "sft" benchmark (stable-hash sample)
    task_suite: str = ""  # multiple-choice suite ("": the shipped cpt_data/task_suite.yaml)
    redteam_prompts: str = ""  # red-team prompts ("": the shipped cpt_data/redteam_prompts.yaml)
    blocklist: str = ""  # harmful phrases ("": the shipped cpt_data/blocklist.txt)
    probe_max_new_tokens: int = 16  # greedy tokens generated per red-team prompt
    probe_layout: str = "bare"  # red-team prompts as raw text ("bare": how CPT trains and a base model is used);
    #                             "chat": the tokenizer's chat template (an instruct model); "auto": chat when it has one
    # --- run control
    checkpoint_every: int = 25  # optimizer steps between checkpoints (and at the last step); resume restarts there
    stop_at_step: int | None = None  # stop the round after this step (status 'interrupted'); the next run_round resumes it

    def validate(self) -> None:
        checks = [("heldout_fraction", 0 <= self.heldout_fraction < 1),
                  ("replay_fraction", 0 <= self.replay_fraction < 1),
                  ("replay_source", self.replay_source in ("earlier", "general", "both")),
                  ("general_heldout_fraction", 0 < self.general_heldout_fraction < 1),
                  ("replay_general_share", 0 <= self.replay_general_share <= 1),
                  ("max_length", self.max_length >= 8), ("token_budget", self.token_budget >= self.max_length),
                  ("micro_batch_size", self.micro_batch_size >= 1), ("grad_accum", self.grad_accum >= 1),
                  ("epochs", self.epochs >= 1), ("lr", self.lr > 0), ("checkpoint_every", self.checkpoint_every >= 1),
                  ("max_docs", self.max_docs is None or self.max_docs >= 1),
                  ("gates", all(g in GATES for g in self.gates)),
                  ("task_benchmark", self.task_benchmark in ("auto", "sft", "suite")),
                  ("task_split", self.task_split in ("train", "validation", "test")),
                  ("max_eval_docs", self.max_eval_docs >= 1), ("max_general_docs", self.max_general_docs >= 1),
                  ("probe_max_new_tokens", self.probe_max_new_tokens >= 1), ("threads", self.threads >= 0),
                  ("probe_layout", self.probe_layout in ("bare", "chat", "auto"))]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError("CPTConfig: invalid " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad)
                             + f" (gates: {', '.join(GATES)}; see the field comments)")

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_json(cls, d: dict) -> "CPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "gates" in d:
            d["gates"] = tuple(d["gates"])
        return cls(**d)


@dataclass
class RoundPlan:
    """What a round will train on and be measured with; ``plan_round`` builds it without writing."""
    round: int
    parent: dict                 # the models row the round starts from
    until: pd.Timestamp | None
    snapshot: int                # DuckLake snapshot the corpus was read at
    documents: pd.DataFrame      # ordinal, doc_id, source ('new' | 'replay_earlier' | 'replay_general'), published_at, text, tokens
    watermark_from: tuple | None  # (published_at, doc_id) before the round
    watermark_to: tuple | None    # after it
    n_late: int                  # new documents published before watermark_from (arrived late)
    eval_docs: pd.DataFrame      # held-out in-domain documents (doc_id, text)

    @property
    def new(self) -> pd.DataFrame:
        return self.documents[self.documents["source"] == "new"]

    @property
    def replay(self) -> pd.DataFrame:
        return self.documents[self.documents["source"] != "new"]


@dataclass
class RoundResult:
    round: int | None
    status: str                  # 'promoted' | 'rejected' | 'interrupted' | 'skipped'
    model_id: str | None = None
    parent_id: str | None = None
    path: str | None = None
    gates: list[GateResult] = field(default_factory=list)
    n_docs: int = 0
    n_replay_docs: int = 0
    tokens: int = 0
    replay_tokens: int = 0
    steps: int = 0
    message: str = ""

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def summary(self) -> str:
        if self.status == "skipped":
            return f"no round: {self.message}"
        head = (f"round {self.round} {self.status.upper()}: {self.n_docs} new documents + {self.n_replay_docs} replay "
                f"({self.tokens} tokens, {self.replay_tokens} replay), model {self.model_id} (parent {self.parent_id})")
        if self.status == "interrupted":
            return head + f"; {self.message}"
        return "\n".join([head] + ["  " + g.sentence() for g in self.gates])


# =========================================================================== planning (reads only)

def _ts(value, name: str) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}={value!r} is not a timestamp (e.g. '2026-03-01' or '2026-03-01 12:00')") from exc
    return ts.tz_convert(None) if ts.tzinfo else ts


def _doc_text(title, text) -> str:
    """What a round trains on: the title, a blank line, the text (a missing title is left out)."""
    return "\n\n".join(str(x) for x in (title, text) if isinstance(x, str) and x.strip())


def _corpus_sql(config: CPTConfig, snapshot: int) -> str:
    h = gates_mod.sql_stable_fraction("doc_id", config.heldout_seed)
    return f"""
        select doc_id, published_at, title, text, {h} as heldout_h
        from corpus_documents at (version => {int(snapshot)})
        where published_at is not null"""


def _tokens(tokenizer, texts: Sequence[str], max_length: int) -> list[int]:
    return [sum(len(e["input_ids"]) for e in gates_mod.document_examples(tokenizer, t, max_length)) for t in texts]


def _load_tokenizer(path: str):
    from .finetune import ensure_special_tokens, offline_tokenizer

    if path.startswith("offline:"):
        return offline_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ensure_special_tokens(tok)
    return tok


def _draw(pool: pd.DataFrame, target: float, tokenizer, config: CPTConfig, round_no: int) -> pd.DataFrame:
    """Replay documents in a stable hash order until their tokens reach ``target``.

    A pool smaller than the target is cycled (documents repeat within the round) so the replay
    share holds; the last document drawn may overshoot the target by less than its own length.
    """
    if target <= 0 or pool.empty:
        return pool.iloc[:0]
    pool = pool.assign(h=pool["doc_id"].map(lambda d: gates_mod.stable_fraction(d, f"{config.seed}:{round_no}")))
    pool = pool.sort_values(["h", "doc_id"]).reset_index(drop=True)
    pool["tokens"] = _tokens(tokenizer, pool["text"], config.max_length)
    cycles = max(1, math.ceil(target / max(int(pool["tokens"].sum()), 1)))
    pool = pd.concat([pool] * cycles, ignore_index=True)
    return pool[(pool["tokens"].cumsum().shift(fill_value=0) < target).to_numpy()].drop(columns="h")


def plan_round(con, config: CPTConfig | None = None, *, until=None, snapshot: int | None = None,
               tokenizer=None) -> RoundPlan:
    """The next round: new documents since the watermark (up to ``until``), replay, eval documents.

    Reads only. New documents are those not trained by any earlier round and not held out, oldest
    first (``published_at``, then ``doc_id``); one published before the watermark that arrived late
    is still taken (``n_late``), so no document is skipped. The replay share is drawn in a stable
    hash order from earlier promoted rounds' documents and/or general English, until it reaches
    ``replay_fraction`` of the round's tokens.
    """
    config = config or CPTConfig()
    config.validate()
    ensure_tables(con)
    if not table_exists(con, "corpus_documents"):
        raise ValueError("table 'corpus_documents' not found in the workspace: run the ingest (01) and clean (02) "
                         "steps first, or write it (doc_id, published_at, topic, title, text)")
    until = _ts(until, "until")
    snapshot = snapshot_id(con) if snapshot is None else snapshot
    parent = current_model(con) or {"model_id": None, "path": config.model}
    round_no = int(con.execute("select coalesce(max(round), 0) from cpt_rounds").fetchone()[0]) + 1
    corpus = _corpus_sql(config, snapshot)
    params: list[Any] = [config.heldout_fraction]
    where = "heldout_h >= ? and doc_id not in (" + consumed_sql() + ")"
    if until is not None:
        where += " and published_at <= ?"
        params.append(until.to_pydatetime())
    new = con.execute(f"select doc_id, published_at, title, text from ({corpus}) where {where} "
                      "order by published_at, doc_id", params).df()
    if config.max_docs is not None:
        new = new.head(config.max_docs)
    wm_from = watermark(con)
    tok = tokenizer or _load_tokenizer(parent["path"])
    new["text"] = [_doc_text(a, b) for a, b in zip(new["title"], new["text"])]
    new["tokens"] = _tokens(tok, new["text"], config.max_length)
    new["source"] = "new"
    late = 0 if wm_from is None else int(sum((p, d) < wm_from for p, d in zip(new["published_at"], new["doc_id"])))
    wm_to = wm_from
    if len(new):
        last = (pd.Timestamp(new["published_at"].iloc[-1]), new["doc_id"].iloc[-1])
        wm_to = last if wm_from is None or last > wm_from else wm_from

    # ---------------------------------------------------------------- replay
    cols = ["doc_id", "published_at", "text", "source", "tokens"]
    pools = {"replay_earlier": pd.DataFrame(columns=cols), "replay_general": pd.DataFrame(columns=cols)}
    if config.replay_fraction > 0 and len(new):
        if config.replay_source in ("earlier", "both") and parent["model_id"] is not None:
            ancestors = lineage(con, parent["model_id"])["model_id"].tolist()
            earlier = con.execute(f"""
                select c.doc_id, c.published_at, c.title, c.text
                from ({corpus}) as c
                where c.doc_id in (select doc_id from cpt_round_documents
                                   where source = 'new' and model_id in (select unnest(?::varchar[])))""",
                                  [ancestors]).df()
            earlier["text"] = [_doc_text(a, b) for a, b in zip(earlier["title"], earlier["text"])]
            pools["replay_earlier"] = earlier.assign(source="replay_earlier")
        if config.replay_source in ("general", "both"):
            _, general = gates_mod.general_split(config)
            pools["replay_general"] = general.assign(published_at=pd.NaT, source="replay_general")
    target = config.replay_fraction / (1 - config.replay_fraction) * int(new["tokens"].sum())
    share = {"earlier": 0.0, "general": 1.0, "both": config.replay_general_share}[config.replay_source]
    if pools["replay_earlier"].empty:
        share = 1.0
    if pools["replay_general"].empty:
        share = 0.0
    replay = [_draw(pools["replay_general"], target * share, tok, config, round_no),
              _draw(pools["replay_earlier"], target * (1 - share), tok, config, round_no)]
    replay = pd.concat([r[cols] for r in replay if len(r)], ignore_index=True) if any(len(r) for r in replay) \
        else pd.DataFrame(columns=cols)

    docs = pd.concat([new[["doc_id", "published_at", "text", "source", "tokens"]], replay], ignore_index=True)
    docs.insert(0, "ordinal", np.arange(len(docs), dtype=np.int64))
    eval_docs = _eval_docs(con, config, snapshot, wm_from, wm_to)
    return RoundPlan(round=round_no, parent=parent, until=until, snapshot=snapshot, documents=docs,
                     watermark_from=wm_from, watermark_to=wm_to, n_late=late, eval_docs=eval_docs)


def _eval_docs(con, config: CPTConfig, snapshot: int, wm_from, wm_to) -> pd.DataFrame:
    """The in-domain gate's documents: held-out documents of the domain accepted so far.

    That is a stable-hash sample of held-out documents published up to the watermark before the
    round (``wm_from``), leaving out the time windows of rejected rounds: a batch under test (a
    poisoned or off-domain one) must not redefine "in-domain" for its own gate. The first round,
    with nothing accepted yet, uses held-out documents up to its own watermark (``wm_to``).
    """
    h = gates_mod.sql_stable_fraction("c.doc_id", config.heldout_seed)
    for upto in [w[0] for w in (wm_from, wm_to) if w is not None]:
        df = con.execute(f"""
            select c.doc_id, c.title, c.text
            from corpus_documents as c at (version => {int(snapshot)})
            where c.published_at is not null and {h} < ? and c.published_at <= ?
              and not exists (select 1 from cpt_rounds as r
                              where r.status = 'rejected' and c.published_at <= r.watermark_to_at
                                and (r.watermark_from_at is null or c.published_at > r.watermark_from_at))
            order by {h}, c.doc_id
            limit ?""", [config.heldout_fraction, pd.Timestamp(upto).to_pydatetime(), config.max_eval_docs]).df()
        if len(df):
            df["text"] = [_doc_text(a, b) for a, b in zip(df["title"], df["text"])]
            return df[["doc_id", "text"]]
    return pd.DataFrame(columns=["doc_id", "text"])


def plan_windows(con, rounds: int, config: CPTConfig | None = None) -> list[str]:
    """``until`` values that split the documents not trained yet into ``rounds`` equal time windows.

    Three rounds over a year of articles: months 1-4, 5-8, 9-12. Empty when nothing is pending.
    """
    config = config or CPTConfig()
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r}: need at least 1")
    ensure_tables(con)
    if not table_exists(con, "corpus_documents"):
        raise ValueError("table 'corpus_documents' not found in the workspace: run steps 01 and 02 first")
    h = gates_mod.sql_stable_fraction("doc_id", config.heldout_seed)
    lo, hi = con.execute(f"""select min(published_at), max(published_at) from corpus_documents
                             where published_at is not null and {h} >= ? and doc_id not in ({consumed_sql()})""",
                         [config.heldout_fraction]).fetchone()
    if lo is None:
        return []
    lo, hi = pd.Timestamp(lo), pd.Timestamp(hi)
    wm = watermark(con)
    start = max(lo, wm[0]) if wm is not None and wm[0] < hi else lo
    edges = [start + (hi - start) * (i / rounds) for i in range(1, rounds)] + [hi]
    return [str(e.floor("s")) for e in edges]


# =========================================================================== training

class CPTBusyError(WorkspaceError):
    """Another process is running a round in this workspace."""


@contextlib.contextmanager
def round_lock(con):
    """One round at a time per workspace (an OS file lock: a killed process releases it)."""
    path = workspace_root(con) / "models" / ".cpt.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise CPTBusyError(f"another continued pre-training round is running in this workspace (lock {path})") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class _MetricLog:
    """Buffers ``run_metrics`` rows; one write per flush (checkpoints and the end of a round)."""

    def __init__(self, con, run_id: str):
        self.con, self.run_id, self.rows = con, run_id, []

    def add(self, metrics: dict[str, float | None], *, step: int, epoch: float, split: str) -> None:
        self.rows += [(self.run_id, int(step), float(epoch), split, k, float(v), now())
                      for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))]

    def flush(self) -> None:
        if self.rows:
            df = pd.DataFrame(self.rows, columns=["run_id", "step", "epoch", "split", "metric", "value", "logged_at"])
            transaction(self.con, lambda c: insert(c, "run_metrics", df), what="logging cpt metrics")
            self.rows = []


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f



def train(model, tokenizer, examples: list[dict], config: CPTConfig, *, seed: int, run_dir: Path,
          log: _MetricLog | None = None, progress: bool = False) -> tuple[str, int]:
    """Causal-LM training on every token of ``examples`` (packed rows, per-document masks).

    Resumes from the newest checkpoint in ``run_dir/checkpoints``; returns (status, last step) with
    status 'completed' or 'interrupted' (``config.stop_at_step``).
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    lengths = [len(e["input_ids"]) for e in examples]
    plans = [plan_epoch(lengths, token_budget=config.token_budget, micro_batch_size=config.micro_batch_size,
                        seed=seed, epoch=e) for e in range(config.epochs)]
    schedule = [(e, mb[j:j + config.grad_accum]) for e, mb in enumerate(plans)
                for j in range(0, len(mb), config.grad_accum)]
    total = len(schedule)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=config.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, min(config.warmup_steps, total // 2), config.min_lr_ratio))
    start = 0
    ckpts = runs.checkpoints(run_dir)
    if ckpts:
        ck = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        start = int(ck["step"])

    def save(step: int) -> None:
        if log is not None:
            log.flush()  # the loss curve up to this step is stored before the checkpoint that claims it
        runs.atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "step": step}, run_dir / "checkpoints" / f"step-{step:07d}.pt")
        for old in runs.checkpoints(run_dir)[:-2]:
            old.unlink(missing_ok=True)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    lm_head = model.get_output_embeddings()
    model.train()
    bar = tqdm(total=total, initial=start, desc="cpt", disable=not progress, dynamic_ncols=True)
    for step in range(start + 1, total + 1):
        epoch, micro = schedule[step - 1]
        batches = [collate_packed(examples, rows, pad_id=tokenizer.pad_token_id) for rows in micro]
        n_trained = sum(b.n_trained for b in batches)
        loss_sum = 0.0
        for b in batches:
            b = b.to(device)
            with autocast:
                h = hidden_states(model, b)
            loss = linear_cross_entropy(h, lm_head, b.targets)
            (loss / max(n_trained, 1)).backward()  # mean over every trained token of the step
            loss_sum += float(loss.detach())
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if log is not None:
            log.add({"loss": loss_sum / max(n_trained, 1), "lr": lr, "tokens": n_trained}, step=step,
                    epoch=epoch + 1, split="train")
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == total or step == config.stop_at_step:
            save(step)
        if config.stop_at_step is not None and step >= config.stop_at_step and step < total:
            bar.close()
            return "interrupted", step
    bar.close()
    if total == 0 or start == total:
        if not ckpts:
            save(total)
    return "completed", total


# =========================================================================== rounds

def run_round(con, config: CPTConfig | None = None, *, until=None, progress: bool = False) -> RoundResult:
    """Run the next round (or resume an unfinished one): plan, train, measure, gate, register.

    ``until`` limits the round to documents published up to that time. Returns a ``RoundResult``
    whose ``summary()`` names each gate's values and, for a rejected round, what failed by how much.
    """
    config = config or CPTConfig()
    config.validate()
    ensure_tables(con)
    with round_lock(con):
        pending = con.execute("select round from cpt_rounds where status in ('running', 'interrupted') "
                              "order by round limit 1").fetchone()
        if pending:
            return _resume(con, int(pending[0]), config, progress)
        plan = plan_round(con, config, until=until)
        if plan.new.empty:
            wm = "none yet" if plan.watermark_from is None else f"{plan.watermark_from[0]} / {plan.watermark_from[1]}"
            return RoundResult(None, "skipped", message=f"no new documents after the watermark ({wm})"
                               + (f" up to {plan.until}" if plan.until is not None else ""))
        sets = gates_mod.eval_sets(con, config, plan)  # bad input stops here, before anything is written
        base = ensure_base(con, config)  # registers the base on the first round; refuses another base model
        if plan.parent["model_id"] is None:
            plan.parent = base
        run_id = runs.start_run(con, model=plan.parent["path"], task="cpt", kind="cpt", config=config.to_json())
        rows = pd.DataFrame([{
            "round": plan.round, "model_id": run_id, "parent_id": plan.parent["model_id"], "run_id": run_id,
            "status": "running", "started_at": now(), "finished_at": None,
            "until": None if plan.until is None else plan.until.to_pydatetime(),
            "watermark_from_at": None if plan.watermark_from is None else plan.watermark_from[0].to_pydatetime(),
            "watermark_from_doc": None if plan.watermark_from is None else plan.watermark_from[1],
            "watermark_to_at": plan.watermark_to[0].to_pydatetime(), "watermark_to_doc": plan.watermark_to[1],
            "n_docs": len(plan.new), "n_late_docs": plan.n_late, "n_replay_docs": len(plan.replay),
            "tokens": int(plan.documents["tokens"].sum()), "replay_tokens": int(plan.replay["tokens"].sum()),
            "data_snapshot": plan.snapshot, "failed_gates": None}])
        docs = plan.documents[["ordinal", "doc_id", "source", "published_at", "tokens"]].assign(
            round=plan.round, model_id=run_id)

        def body(c):
            if c.execute("select count(*) from cpt_rounds where round = ?", [plan.round]).fetchone()[0]:
                raise CPTBusyError(f"round {plan.round} was started by another process meanwhile")
            insert(c, "cpt_rounds", rows)
            insert(c, "cpt_round_documents", docs)
            c.execute("update runs set data_snapshot = ? where run_id = ?", [plan.snapshot, run_id])
        transaction(con, body, what="starting a cpt round")
        return _execute(con, plan, config, run_id, sets, progress=progress)


def _resume(con, round_no: int, caller: CPTConfig, progress: bool) -> RoundResult:
    """Rebuild an unfinished round's plan from the tables (same documents, same snapshot) and go on."""
    r = con.execute("select * from cpt_rounds where round = ?", [round_no]).df().iloc[0]
    cfg_json = con.execute("select config_json from runs where run_id = ?", [r["run_id"]]).fetchone()
    config = CPTConfig.from_json(json.loads(cfg_json[0]))
    config.stop_at_step, config.checkpoint_every = caller.stop_at_step, caller.checkpoint_every
    snap = int(r["data_snapshot"])
    docs = con.execute(f"""
        select d.ordinal, d.doc_id, d.source, d.published_at, d.tokens, c.title, c.text
        from cpt_round_documents as d
        left join corpus_documents as c at (version => {snap}) on c.doc_id = d.doc_id and d.source <> 'replay_general'
        where d.round = ? order by d.ordinal""", [round_no]).df()
    general = gates_mod.load_general_text(config.general_text or None).set_index("doc_id")["text"]
    texts = []
    for src, doc_id, title, text in zip(docs["source"], docs["doc_id"], docs["title"], docs["text"]):
        if src == "replay_general":
            if doc_id not in general.index:
                raise ValueError(f"resuming round {round_no}: general paragraph {doc_id} is gone from the general text file")
            texts.append(general[doc_id])
        elif text is None or (isinstance(text, float) and math.isnan(text)):
            raise ValueError(f"resuming round {round_no}: document {doc_id} not in corpus_documents at snapshot {snap}")
        else:
            texts.append(_doc_text(title, text))
    docs["text"] = texts
    parent = con.execute("select * from models where model_id = ?", [r["parent_id"]]).df().iloc[0].to_dict()
    wm_to = (pd.Timestamp(r["watermark_to_at"]), r["watermark_to_doc"])
    wm_from = None if pd.isna(r["watermark_from_at"]) else (pd.Timestamp(r["watermark_from_at"]), r["watermark_from_doc"])
    eval_docs = _eval_docs(con, config, snap, wm_from, wm_to)
    plan = RoundPlan(round=round_no, parent=parent, until=None if pd.isna(r["until"]) else pd.Timestamp(r["until"]),
                     snapshot=snap, documents=docs[["ordinal", "doc_id", "source", "published_at", "text", "tokens"]],
                     watermark_from=wm_from, watermark_to=wm_to, n_late=int(r["n_late_docs"]),
                     eval_docs=eval_docs)
    ckpts = runs.checkpoints(workspace_root(con) / "models" / r["run_id"])
    after = int(ckpts[-1].stem.split("-")[1]) if ckpts else 0
    transaction(con, lambda c: (
        c.execute("delete from run_metrics where run_id = ? and ((split = 'train' and step > ?) or "
                  "(split = 'validation' and step > 0))", [r["run_id"], after]),
        c.execute("update runs set status = 'running', finished_at = null, error = null where run_id = ?", [r["run_id"]]),
        c.execute("update cpt_rounds set status = 'running' where round = ?", [round_no])),
        what="rewinding the round to its checkpoint")
    return _execute(con, plan, config, r["run_id"], gates_mod.eval_sets(con, config, plan), progress=progress)


def _execute(con, plan: RoundPlan, config: CPTConfig, run_id: str, sets: EvalSets, *,
             progress: bool) -> RoundResult:
    from .finetune import load_tokenizer_and_model, resolve_device, save_model

    run_dir = workspace_root(con) / "models" / run_id
    result = RoundResult(plan.round, "running", model_id=run_id, parent_id=plan.parent["model_id"],
                         n_docs=len(plan.new), n_replay_docs=len(plan.replay),
                         tokens=int(plan.documents["tokens"].sum()), replay_tokens=int(plan.replay["tokens"].sum()))
    log = _MetricLog(con, run_id)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        device = resolve_device(config.device)
        torch.manual_seed(config.seed + plan.round)
        with quiet_transformers():
            tok, model, _ = load_tokenizer_and_model(plan.parent["path"], seed=config.seed, attn_implementation="sdpa")
        model.to(device)
        # ------------------------------------------------------------ the parent, measured once per round
        logged = dict(con.execute("select metric, value from run_metrics where run_id = ? and split = 'validation' "
                                  "and step = 0", [run_id]).fetchall())
        parent_vals = {g: logged[g] for g in config.gates if g in logged}
        if len(parent_vals) < len(config.gates):
            t0 = time.perf_counter()
            parent_vals, _, probe = evaluate(model, tok, sets, config)
            log.add({**parent_vals, "eval_seconds": time.perf_counter() - t0}, step=0, epoch=0.0, split="validation")
            log.add({"new_tokens": result.tokens - result.replay_tokens, "replay_tokens": result.replay_tokens,
                     "replay_share": result.replay_tokens / max(result.tokens, 1)}, step=0, epoch=0.0, split="train")
            log.flush()
            if probe is not None:
                _write_probe(con, plan.round, plan.parent["model_id"], "parent", probe)
        # ------------------------------------------------------------ train
        examples = [e for t in plan.documents["text"] for e in gates_mod.document_examples(tok, t, config.max_length)]
        t0 = time.perf_counter()
        status, step = train(model, tok, examples, config, seed=config.seed + plan.round, run_dir=run_dir, log=log,
                             progress=progress)
        result.steps = step
        seconds = time.perf_counter() - t0  # of this process (a resumed round counts its last part)
        log.add({"train_seconds": seconds}, step=step, epoch=float(config.epochs), split="train")
        if status == "interrupted":
            log.flush()
            transaction(con, lambda c: c.execute("update cpt_rounds set status = 'interrupted' where round = ?",
                                                 [plan.round]), what="pausing a cpt round")
            runs.finish_run(con, run_id, status="interrupted", error=f"stopped at step {step} (stop_at_step)")
            result.status, result.message = "interrupted", f"stopped at step {step}; run_round resumes it"
            return result
        # ------------------------------------------------------------ the candidate, gated
        t0 = time.perf_counter()
        cand_vals, sizes, probe = evaluate(model, tok, sets, config)
        log.add({**cand_vals, "eval_seconds": time.perf_counter() - t0}, step=step, epoch=float(config.epochs),
                split="validation")
        thresholds = dict(min_in_domain_gain=config.min_in_domain_gain,
                          max_general_ppl_increase=config.max_general_ppl_increase,
                          max_task_accuracy_drop=config.max_task_accuracy_drop,
                          max_harmful_increase=config.max_harmful_increase)
        result.gates = [gates_mod.judge(g, parent_vals[g], cand_vals[g], **thresholds) for g in config.gates]
        result.status = "promoted" if all(g.passed for g in result.gates) else "rejected"
        result.path = str(run_dir)
        with quiet_transformers():
            save_model(model, tok, run_dir)
        log.flush()
        _finish(con, plan, config, run_id, result, sets, sizes, probe)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            log.flush()
        if result.status == "running":
            with contextlib.suppress(Exception):
                transaction(con, lambda c: c.execute("update cpt_rounds set status = 'interrupted' where round = ?",
                                                     [plan.round]), what="pausing a cpt round")
                runs.finish_run(con, run_id, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                                error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a finished round is never resumed
    return result


def _write_probe(con, round_no: int, model_id: str, role: str, probe: pd.DataFrame) -> None:
    df = probe.assign(round=round_no, model_id=model_id, role=role)
    transaction(con, lambda c: (c.execute("delete from cpt_probe_outputs where round = ? and role = ?", [round_no, role]),
                                insert(c, "cpt_probe_outputs", df)), what="writing red-team completions")


def _finish(con, plan: RoundPlan, config: CPTConfig, run_id: str, result: RoundResult, sets: EvalSets,
            sizes: dict, probe: pd.DataFrame | None) -> None:
    """Register the model and the gate results, and close the round and its run, in one transaction."""
    finished = now()
    failed = [g.gate for g in result.failed]
    metrics = {"gates": {g.gate: {"parent": g.parent_value, "value": g.value, "change": g.change,
                                  "threshold": g.threshold, "passed": g.passed} for g in result.gates},
               "run_id": run_id, "n_docs": result.n_docs, "n_replay_docs": result.n_replay_docs,
               "tokens": result.tokens, "replay_tokens": result.replay_tokens, "steps": result.steps,
               "watermark_to": [str(plan.watermark_to[0]), plan.watermark_to[1]]}
    model_row = pd.DataFrame([{"model_id": run_id, "parent_id": plan.parent["model_id"], "created_at": finished,
                               "round": plan.round, "data_snapshot": plan.snapshot, "status": result.status,
                               "metrics_json": json.dumps(metrics), "path": result.path}])
    gate_rows = pd.DataFrame([{"round": plan.round, "model_id": run_id, "parent_id": plan.parent["model_id"],
                               "gate": g.gate, "metric": g.metric, "eval_set": gates_mod.eval_set_name(g.gate, sets, config),
                               "n_items": sizes.get(g.gate), "parent_value": g.parent_value, "value": g.value,
                               "change": g.change, "threshold": g.threshold, "passed": g.passed, "margin": g.margin,
                               "enforced": True} for g in result.gates])
    cand_probe = None if probe is None else probe.assign(round=plan.round, model_id=run_id, role="candidate")

    def body(c):
        c.execute("delete from models where model_id = ?", [run_id])
        insert(c, "models", model_row)
        c.execute("delete from cpt_gates where round = ?", [plan.round])
        if len(gate_rows):
            insert(c, "cpt_gates", gate_rows)
        if cand_probe is not None:
            c.execute("delete from cpt_probe_outputs where round = ? and role = 'candidate'", [plan.round])
            insert(c, "cpt_probe_outputs", cand_probe)
        c.execute("update cpt_rounds set status = ?, finished_at = ?, failed_gates = ? where round = ?",
                  [result.status, finished, ",".join(failed) or None, plan.round])
        c.execute("update runs set status = 'completed', finished_at = ?, model_path = ?, error = null where run_id = ?",
                  [finished, result.path, run_id])
    transaction(con, body, what="registering a cpt round")


def run_rounds(con, config: CPTConfig | None = None, *, rounds: int = 3, until: Sequence[str] | None = None,
               progress: bool = False, echo=print) -> list[RoundResult]:
    """Several rounds: explicit ``until`` values, or ``rounds`` equal windows over what is pending.

    An unfinished round is resumed first.
    """
    config = config or CPTConfig()
    out = []
    if table_exists(con, "cpt_rounds") and con.execute(
            "select count(*) from cpt_rounds where status in ('running', 'interrupted')").fetchone()[0]:
        out.append(run_round(con, config, progress=progress))
        echo(out[-1].summary())
    for u in (list(until) if until else plan_windows(con, rounds, config)):
        out.append(run_round(con, config, until=u, progress=progress))
        echo(out[-1].summary())
    return out


def abandon_round(con, round_no: int) -> None:
    """Give up an unfinished round: its documents return to the queue, its run is marked failed."""
    row = con.execute("select status, run_id from cpt_rounds where round = ?", [round_no]).fetchone()
    if row is None or row[0] not in ("running", "interrupted"):
        raise ValueError(f"round {round_no} is not unfinished (status {None if row is None else row[0]!r})")
    transaction(con, lambda c: (
        c.execute("update cpt_rounds set status = 'abandoned', finished_at = ? where round = ?", [now(), round_no]),
        c.execute("update runs set status = 'failed', finished_at = ?, error = 'abandoned' where run_id = ?",
                  [now(), row[1]])), what="abandoning a cpt round")
    shutil.rmtree(workspace_root(con) / "models" / row[1], ignore_errors=True)
