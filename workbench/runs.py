"""Training runs as workspace tables: ``runs``, ``run_metrics``, ``predictions``.

    workbench sql "select run_id, task, status from runs order by started_at desc"

Every training routine (classifier, causal SFT, continued pre-training, sweep trials) records
itself here, so runs can be compared, plotted and joined in SQL. A run records the DuckLake
snapshot id of the data it saw (``data_snapshot``): ``select * from splits at (version => N)``
reads the splits exactly as that run did.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Mapping

import duckdb
import pandas as pd

from .workspace import home, snapshot_id, transaction, write_table

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
PIPELINE_RUN_ENV = "WORKBENCH_PIPELINE_RUN_ID"  # set by `workbench run` for its kernels (pipeline.RUN_ENV)

_DDL = """
create table if not exists runs (
    run_id varchar,          -- '<kind>-<UTC yyyymmddThhmmss>-<6 hex>'
    started_at timestamp,
    finished_at timestamp,
    model varchar,           -- model id or folder the run started from
    task varchar,            -- e.g. 'intent', 'reply'
    kind varchar,            -- 'classifier' | 'sft' | 'cpt' | ...
    config_json varchar,     -- full config as JSON
    data_snapshot bigint,    -- DuckLake snapshot id of the data it trained on
    status varchar,          -- running | completed | failed | interrupted
    sweep_id varchar,        -- set when the run is a trial of a sweep
    sweep_trial integer,     -- the trial number within that sweep (null otherwise)
    model_path varchar,      -- saved model + tokenizer (under <workspace>/models/<run_id>)
    error varchar,
    pipeline_run_id varchar  -- the workbench run (pipeline_runs) whose notebook started it, else null
);
create table if not exists run_metrics (
    run_id varchar,
    step bigint,             -- optimizer step (0 = before training)
    epoch double,            -- fractional epoch
    split varchar,           -- 'train' | 'validation' | 'test'
    metric varchar,          -- 'loss', 'accuracy', 'tokens_per_s', ...
    value double,
    logged_at timestamp
);
create table if not exists predictions (
    run_id varchar,
    example_id varchar,
    split varchar,
    prompt varchar,
    prediction varchar,
    label varchar,
    correct boolean
);
-- workspaces made before runs.sweep_trial existed get the column (a no-op once it is there)
alter table runs add column if not exists sweep_trial integer;
alter table runs add column if not exists pipeline_run_id varchar;
"""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    transaction(con, lambda c: c.execute(_DDL), what="creating run tables")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_run_id(kind: str) -> str:
    return f"{kind}-{_now():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def model_dir(run_id: str, path: str | os.PathLike | None = None) -> Path:
    """Where a run saves its model and tokenizer: ``<workspace>/models/<run_id>``."""
    return home(path) / "models" / run_id


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, then rename: a kill mid-write leaves the previous file intact."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoints(run_dir: Path) -> list[Path]:
    """A run folder's training checkpoints (``checkpoints/step-NNNNNNN.pt``), oldest first."""
    return sorted((run_dir / "checkpoints").glob("step-*.pt"))


def start_run(con: duckdb.DuckDBPyConnection, *, model: str, task: str, kind: str,
              config: Mapping[str, Any], sweep_id: str | None = None, sweep_trial: int | None = None,
              run_id: str | None = None) -> str:
    """Insert a ``running`` row in ``runs`` (with the current data snapshot) and return its id.

    ``sweep_id`` / ``sweep_trial``: the sweep and trial number the run belongs to (a sweep finds its
    trial's run by them: ``select run_id from runs where sweep_id = ? and sweep_trial = ?``)."""
    if sweep_trial is not None and sweep_id is None:
        raise ValueError(f"sweep_trial={sweep_trial!r} needs a sweep_id")
    ensure_tables(con)
    run_id = run_id or new_run_id(kind)
    snap = snapshot_id(con)
    cfg = json.dumps(dict(config), default=str, sort_keys=True)
    transaction(con, lambda c: c.execute(
        "insert into runs (run_id, started_at, model, task, kind, config_json, data_snapshot, status, sweep_id,"
        " sweep_trial, pipeline_run_id) values (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
        [run_id, _now(), str(model), task, kind, cfg, snap, sweep_id,
         None if sweep_trial is None else int(sweep_trial), os.environ.get(PIPELINE_RUN_ENV) or None]),
        what="starting a run")
    return run_id


def finish_run(con: duckdb.DuckDBPyConnection, run_id: str, *, status: str = "completed",
               model_path: str | os.PathLike | None = None, error: str | None = None) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, not {status!r}")
    transaction(con, lambda c: c.execute(
        "update runs set status = ?, finished_at = ?, model_path = coalesce(?, model_path), error = ?"
        " where run_id = ?", [status, _now(), None if model_path is None else str(model_path), error, run_id]),
        what="finishing a run")


def log_metrics(con: duckdb.DuckDBPyConnection, run_id: str, metrics: Mapping[str, float], *,
                step: int, epoch: float | None = None, split: str = "train") -> None:
    """Append one row per metric to ``run_metrics``."""
    rows = [(run_id, int(step), None if epoch is None else float(epoch), split, k, float(v), _now())
            for k, v in metrics.items() if v is not None]
    if rows:
        transaction(con, lambda c: c.executemany(
            "insert into run_metrics values (?, ?, ?, ?, ?, ?, ?)", rows), what="logging metrics")


def write_predictions(con: duckdb.DuckDBPyConnection, run_id: str, split: str,
                      rows: pd.DataFrame | Iterable[Mapping[str, Any]]) -> int:
    """Append predictions (columns example_id, prompt, prediction, label[, correct]) for one split."""
    df = pd.DataFrame(rows).copy()
    for col in ("example_id", "prompt", "prediction", "label"):
        if col not in df:
            raise ValueError(f"predictions need a {col!r} column")
    if "correct" not in df:  # the exact match the trainers count (evaluate.normalize_answer)
        from .evaluate import normalize_answer

        df["correct"] = [normalize_answer(p) == normalize_answer(lab)
                         for p, lab in zip(df["prediction"].astype(str), df["label"].astype(str))]
    df.insert(0, "run_id", run_id)
    df["split"] = split
    df = df[["run_id", "example_id", "split", "prompt", "prediction", "label", "correct"]]
    df["example_id"] = df["example_id"].astype(str)
    ensure_tables(con)
    return write_table(con, "predictions", df, mode="append")


def metrics_frame(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    return con.execute("select * from run_metrics where run_id = ? order by step, metric", [run_id]).df()
