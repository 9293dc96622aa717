"""The registry of continued pre-training: models, rounds, gate results, and the watermark contract.

    python -c "import workbench, workbench.cpt_registry as r; print(r.registry(workbench.connect()))"

``models`` is the registry (one row per model: the base, then one per round, ``promoted`` or
``rejected``, with ``parent_id`` lineage and the DuckLake ``data_snapshot`` each round read).
``promoted_model(con)`` is where fine-tuning starts. ``check_rounds`` verifies the watermark
contract (no document trained twice, none skipped, no held-out document trained); ``decisions``
and ``plot_gates`` report the promotion decisions. Rounds themselves run in ``workbench.cpt``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import runs
from .cpt_gates import GATES, GateResult, plot_gate_history, sql_stable_fraction
from .workspace import snapshot_id, table_exists, transaction, workspace_root


# =========================================================================== registry tables

_DDL = """
create table if not exists models (
    model_id varchar, parent_id varchar, created_at timestamp, round integer, data_snapshot bigint,
    status varchar, metrics_json varchar, path varchar
);
create table if not exists cpt_rounds (
    round integer, model_id varchar, parent_id varchar, run_id varchar, status varchar,
    started_at timestamp, finished_at timestamp, until timestamp,
    watermark_from_at timestamp, watermark_from_doc varchar, watermark_to_at timestamp, watermark_to_doc varchar,
    n_docs integer, n_late_docs integer, n_replay_docs integer, tokens bigint, replay_tokens bigint,
    data_snapshot bigint, failed_gates varchar
);
create table if not exists cpt_round_documents (
    round integer, model_id varchar, ordinal integer, doc_id varchar, source varchar,
    published_at timestamp, tokens integer
);
create table if not exists cpt_gates (
    round integer, model_id varchar, parent_id varchar, gate varchar, metric varchar, eval_set varchar,
    n_items integer, parent_value double, value double, change double, threshold double, passed boolean,
    margin double, enforced boolean
);
create table if not exists cpt_probe_outputs (
    round integer, model_id varchar, role varchar, prompt_id varchar, prompt varchar, generation varchar,
    blocklist_hits varchar, harmful boolean
);
"""


@contextlib.contextmanager
def quiet_transformers():
    """No per-call "Loading weights" / "Writing model shards" bars from transformers inside a round."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def ensure_tables(con) -> None:
    runs.ensure_tables(con)
    transaction(con, lambda c: c.execute(_DDL), what="creating the cpt tables")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def insert(c, table: str, df: pd.DataFrame) -> None:
    name = f"_wb_cpt_{os.getpid()}_{secrets.token_hex(4)}"
    c.register(name, df)
    try:
        c.execute(f'insert into "{table}" by name select * from "{name}"')
    finally:
        c.unregister(name)


def registry(con) -> pd.DataFrame:
    """The model registry, oldest first."""
    ensure_tables(con)
    return con.execute("select * from models order by round, created_at").df()


def promoted_model(con) -> str | None:
    """Path (or id) of the latest promoted continued-pre-training model; None before any promotion.

    Fine-tuning starts from it: ``SFTConfig(model=promoted_model(con) or "offline:tiny-llama")``.
    """
    if not table_exists(con, "models"):
        return None
    row = con.execute("select path from models where status = 'promoted' order by round desc, created_at desc "
                      "limit 1").fetchone()
    return row[0] if row else None


def current_model(con) -> dict | None:
    """The models row a new round starts from: the latest promoted model, else the base."""
    if not table_exists(con, "models"):
        return None
    df = con.execute("select * from models where status in ('promoted', 'base') "
                     "order by status = 'promoted' desc, round desc, created_at desc limit 1").df()
    return None if df.empty else df.iloc[0].to_dict()


def lineage(con, model_id: str) -> pd.DataFrame:
    """The chain of models from ``model_id`` back to its base (child first)."""
    df = con.execute("select * from models").df().set_index("model_id", drop=False)
    out, seen = [], set()
    while model_id is not None and model_id in df.index and model_id not in seen:
        seen.add(model_id)
        out.append(df.loc[model_id])
        model_id = df.loc[model_id, "parent_id"]
        model_id = None if pd.isna(model_id) else model_id
    return pd.DataFrame(out).reset_index(drop=True)


def ensure_base(con, config) -> dict:
    """Register the base model (round 0) on first use; an ``offline:`` model is built and saved once."""
    ensure_tables(con)
    df = con.execute("select * from models where status = 'base' order by created_at").df()
    if len(df):
        base = df.iloc[0].to_dict()
        source = json.loads(base["metrics_json"] or "{}").get("source")
        if source != config.model:
            raise ValueError(f"CPTConfig.model={config.model!r}, but this workspace's registry grew from base "
                             f"{source!r} (model {base['model_id']}); rounds continue from its promoted model. "
                             "Use a fresh workspace for another base model.")
        return base
    model_id = runs.new_run_id("base")
    path = config.model
    if config.model.startswith("offline:") or Path(config.model).expanduser().exists():
        from .finetune import load_tokenizer_and_model, save_model

        if config.model.startswith("offline:"):
            with quiet_transformers():
                tok, model, _ = load_tokenizer_and_model(config.model, seed=config.seed)
                path = str(workspace_root(con) / "models" / model_id)
                save_model(model, tok, Path(path))
        else:
            path = str(Path(config.model).expanduser().absolute())
    row = {"model_id": model_id, "parent_id": None, "created_at": now(), "round": 0,
           "data_snapshot": snapshot_id(con), "status": "base",
           "metrics_json": json.dumps({"source": config.model}), "path": path}
    frame = pd.DataFrame([row]).astype({"parent_id": "object"})

    def body(c):  # a concurrent first round may have registered one meanwhile
        if c.execute("select count(*) from models where status = 'base'").fetchone()[0] == 0:
            insert(c, "models", frame)
    transaction(con, body, what="registering the base model")
    return ensure_base(con, config)


# =========================================================================== watermark

def watermark(con) -> tuple[pd.Timestamp, str] | None:
    """(published_at, doc_id) of the newest document trained by a finished round; None before the first."""
    if not table_exists(con, "cpt_rounds"):
        return None
    row = con.execute("select watermark_to_at, watermark_to_doc from cpt_rounds "
                      "where status in ('promoted', 'rejected') and watermark_to_at is not null "
                      "order by watermark_to_at desc, watermark_to_doc desc limit 1").fetchone()
    return None if row is None else (pd.Timestamp(row[0]), row[1])


def consumed_sql() -> str:
    """Documents some round already trained as new data (abandoned rounds give theirs back)."""
    return """select d.doc_id from cpt_round_documents as d join cpt_rounds as r on r.round = d.round
              where d.source = 'new' and r.status <> 'abandoned'"""


# =========================================================================== reports and checks

def gate_history(con) -> pd.DataFrame:
    """One row per round and gate, with the round's status and time window (for curves)."""
    ensure_tables(con)
    return con.execute("""
        select g.round, r.status, r.watermark_to_at, g.gate, g.parent_value, g.value, g.change, g.threshold,
               g.passed, g.margin
        from cpt_gates as g join cpt_rounds as r on r.round = g.round
        order by g.round, g.gate""").df()


def plot_gates(con):
    """Per-gate curves over rounds (``cpt_gates.plot_gate_history``)."""
    return plot_gate_history(gate_history(con))


def decisions(con) -> list[str]:
    """The promotion decision of every finished round in words: which gate failed, by how much."""
    ensure_tables(con)
    rounds = con.execute("select * from cpt_rounds where status in ('promoted', 'rejected') order by round").df()
    gates = con.execute("select * from cpt_gates order by round, gate").df()
    out = []
    order = {g: i for i, g in enumerate(GATES)}
    for r in rounds.itertuples():
        g = gates[gates["round"] == r.round].sort_values("gate", key=lambda s: s.map(order))
        results = [GateResult(x.gate, x.metric, x.parent_value, x.value, x.change, x.threshold, bool(x.passed), x.margin)
                   for x in g.itertuples()]
        why = "every gate passed" if r.status == "promoted" else "failed " + ", ".join(
            x.gate for x in results if not x.passed)
        out.append(f"round {r.round} ({r.n_docs} new document{'s' * (r.n_docs != 1)}, watermark {r.watermark_to_at:%Y-%m-%d}): "
                   f"{r.status.upper()}, {why}\n" + "\n".join("  " + x.sentence() for x in results))
    return out


def corpus_status(con, config=None) -> pd.DataFrame:
    """Documents per month of ``published_at`` and state: 'round N' (trained by it, '(rejected)'
    when the round was), 'held out' (never trained) or 'waiting' (not trained yet)."""
    ensure_tables(con)
    fraction, seed = (0.1, 0) if config is None else (config.heldout_fraction, config.heldout_seed)
    h = sql_stable_fraction("c.doc_id", seed)
    return con.execute(f"""
        with trained as (
            select d.doc_id, r.round, r.status
            from cpt_round_documents as d
            join cpt_rounds as r on r.round = d.round
            where d.source = 'new' and r.status <> 'abandoned'
        )
        select strftime(c.published_at, '%Y-%m') as month,
               case when {h} < ? then 'held out'
                    when t.round is null then 'waiting'
                    when t.status = 'rejected' then printf('round %d (rejected)', t.round)
                    else printf('round %d', t.round) end as state,
               count(*) as n_docs
        from corpus_documents as c
        left join trained as t on t.doc_id = c.doc_id
        where c.published_at is not null
        group by all
        order by month, state""", [fraction]).df()


def check_rounds(con) -> dict[str, int]:
    """Check the watermark contract; raise ``WorkspaceError`` naming the documents that break it.

    No document trained as new data by two rounds, no held-out document trained at all, and none
    skipped: every document that was in the corpus when the last round read it and is not newer
    than its watermark was trained. Returns the counts.
    """
    from .workspace import WorkspaceError

    ensure_tables(con)
    if not table_exists(con, "corpus_documents"):
        return {"rounds": 0}
    live = "(select round from cpt_rounds where status <> 'abandoned')"
    twice = con.execute(f"""select doc_id, count(*) from cpt_round_documents
                            where source = 'new' and round in {live} group by doc_id having count(*) > 1""").fetchall()
    last = con.execute("select round, data_snapshot, watermark_to_at, watermark_to_doc, run_id from cpt_rounds "
                       "where status in ('promoted', 'rejected') order by round desc limit 1").fetchone()
    cfg = {"heldout_fraction": 0.1, "heldout_seed": 0}  # CPTConfig's defaults, before any round
    if last is not None:
        row = con.execute("select config_json from runs where run_id = ?", [last[4]]).fetchone()
        cfg.update({k: v for k, v in json.loads(row[0]).items() if k in cfg} if row else {})
    h = sql_stable_fraction("doc_id", cfg["heldout_seed"])
    held_trained = con.execute(f"""select distinct d.doc_id from cpt_round_documents as d
                                   join corpus_documents as c using (doc_id)
                                   where d.round in {live} and d.source <> 'replay_general' and {h.replace('doc_id', 'c.doc_id')} < ?""",
                               [cfg["heldout_fraction"]]).fetchall()
    skipped = []
    if last is not None:
        skipped = con.execute(f"""
            select doc_id from corpus_documents at (version => {int(last[1])})
            where published_at is not null and {h} >= ?
              and (published_at < ? or (published_at = ? and doc_id <= ?))
              and doc_id not in (select doc_id from cpt_round_documents where source = 'new' and round in {live})""",
                              [cfg["heldout_fraction"], last[2], last[2], last[3]]).fetchall()
    problems = [(f"{len(twice)} documents trained as new data by two rounds", twice),
                (f"{len(held_trained)} held-out documents trained", held_trained),
                (f"{len(skipped)} documents skipped below the watermark", skipped)]
    bad = [f"{msg} (e.g. {rows[0][0]})" for msg, rows in problems if rows]
    if bad:
        raise WorkspaceError("cpt watermark check failed: " + "; ".join(bad))
    trained = con.execute(f"select count(distinct doc_id) from cpt_round_documents where source = 'new' "
                          f"and round in {live}").fetchone()[0]
    pending = con.execute(f"""select count(*) from corpus_documents where published_at is not null and {h} >= ?
                              and doc_id not in (select doc_id from cpt_round_documents where source = 'new'
                                                 and round in {live})""", [cfg["heldout_fraction"]]).fetchone()[0]
    return {"rounds": int(con.execute(f"select count(*) from {live}").fetchone()[0]), "trained_docs": int(trained),
            "pending_docs": int(pending), "duplicates": 0, "heldout_trained": 0, "skipped": 0}


def sample_generations(con, prompts: Sequence[str], *, max_new_tokens: int = 20, layout: str = "bare") -> pd.DataFrame:
    """Greedy completions of ``prompts`` by the base model and the latest promoted model, side by side.

    ``layout``: "bare" continues each prompt as raw text (what CPT trains); "chat"/"auto" for an instruct model."""
    from .finetune import generate

    reg = registry(con)
    out = pd.DataFrame({"prompt": list(prompts)})
    chosen = [("base", reg[reg["status"] == "base"])]
    promoted = reg[reg["status"] == "promoted"]
    if len(promoted):
        chosen.append((f"promoted (round {int(promoted['round'].iloc[-1])})", promoted.tail(1)))
    for label, rows in chosen:
        if len(rows):
            with quiet_transformers():
                out[label] = generate(rows["path"].iloc[0], list(prompts), max_new_tokens=max_new_tokens, layout=layout)
    return out
