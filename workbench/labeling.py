"""Labeling: an append-only label log, k-way assignment, agreement, ``labels_final``, imports.

    workbench label status --label-set intent
    workbench label import export.csv --label-set intent --annotator-column annotator

Every answer is one row appended to ``labels`` the moment it is given (a skip or an undo too: undo
appends a ``retraction`` and never deletes), so a killed kernel loses nothing already submitted and
a new session resumes at the next unlabeled item. Writes are single DuckLake transactions, retried
when another annotator's kernel committed first. ``labels_current`` (a view) is each annotator's
current answer per item; ``labels_final`` is built from it by majority vote or adjudication.
The ipywidgets UI over this API lives in ``workbench.labeling_widget``; agreement statistics in
``workbench.agreement``.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb
import pandas as pd

from .workspace import ALIAS, WorkspaceError, run_sql_file, transaction

INTENTS = ["billing", "refund", "shipping", "technical_issue", "account_access", "cancellation"]
KINDS = ("label", "skip", "retraction", "adjudication")  # values of labels.kind


@dataclass
class QueueConfig:
    pool: str = "label_pool"        # workspace table of items: item_id, text, any context columns
    max_items: int | None = 60      # queue = the first N pool items in stable-hash order (None: all)
    seed: int = 7                   # orders the queue and breaks assignment ties; same seed, same queue


@dataclass
class SimulationConfig:
    annotators: int = 3             # simulated annotators sim-1..sim-N; 0 turns simulation off
    noise: float = 0.15             # mean chance that a simulated annotator picks a wrong label
    items: int | None = None        # items each one labels (None: all items assigned to it)
    truth: Callable[[str], str | None] = field(default=None)  # text -> label; default keyword_intent


_DDL = """
create table if not exists labels (
    label_id varchar,      -- unique id of this event
    item_id varchar,       -- the pool item
    annotator varchar,
    value varchar,         -- the label or the text; null for skips and retractions
    created_at timestamp,  -- UTC
    session_id varchar,    -- one per widget / API session / import
    label_set varchar,     -- e.g. 'intent', 'reference_completion'
    kind varchar,          -- 'label' | 'skip' | 'retraction' | 'adjudication'
    retracts varchar,      -- label_id a retraction cancels (null otherwise)
    source varchar         -- 'widget' | 'api' | 'simulated' | 'import:<file name>'
);
create table if not exists label_sets (
    label_set varchar,
    kind varchar,          -- 'choice' (buttons) | 'text' (free text)
    choices varchar[],     -- the buttons, in shortcut order; null for text sets
    registered_at timestamp
);
create table if not exists label_assignments (
    label_set varchar,
    item_id varchar,
    annotator varchar,
    rank integer,          -- 1..k: this annotator's place in the item's rendezvous order
    seed integer,
    assigned_at timestamp
);
"""
_LABEL_COLUMNS = ["label_id", "item_id", "annotator", "value", "created_at", "session_id",
                  "label_set", "kind", "retracts", "source"]
_ready: set[int] = set()


class LabelImportError(WorkspaceError):
    """An import file has bad rows; ``errors`` lists each as 'file:line: column 'c': problem'."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = "\n  ".join(errors[:25])
        more = f"\n  ... and {len(errors) - 25} more" if len(errors) > 25 else ""
        super().__init__(f"{len(errors)} bad row(s), nothing imported:\n  {shown}{more}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_session_id(prefix: str = "s") -> str:
    return f"{prefix}-{_now():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def default_annotator() -> str:
    """``$WORKBENCH_ANNOTATOR``, else ``$USER``, else 'annotator'."""
    return os.environ.get("WORKBENCH_ANNOTATOR") or os.environ.get("USER") or "annotator"


def table_exists(con, name: str) -> bool:
    """Whether a workspace table or view exists. Every query here reads its result to the end: a
    half-read result (``fetchone``) keeps a read transaction open on the SQLite catalog, and in
    SQLite's default journal mode that blocks every other process's commits until it is closed."""
    return bool(con.execute(
        "select (select count(*) from duckdb_tables() where database_name = ? and table_name = ?)"
        " + (select count(*) from duckdb_views() where database_name = ? and view_name = ?)",
        [ALIAS, name, ALIAS, name]).fetchall()[0][0])


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``labels``, ``label_sets``, ``label_assignments`` and the ``labels_current`` view."""
    if id(con) in _ready and table_exists(con, "labels_current"):
        return
    if not all(table_exists(con, t) for t in ("labels", "label_sets", "label_assignments")):
        transaction(con, lambda c: c.execute(_DDL), what="creating the label tables")
    if not table_exists(con, "labels_current"):  # (re)defining it on every connect would add a snapshot each time
        run_sql_file(con, "03_labels_current")
    _ready.add(id(con))


def register_label_set(con, label_set: str, choices: Sequence[str] | None) -> None:
    """Record a label set's kind and choices (rewritten only when they changed)."""
    choices = _checked_choices(label_set, choices)
    kind = "text" if choices is None else "choice"
    ensure_tables(con)
    transaction(con, lambda c: _register_in(c, label_set, kind, choices), what=f"registering label set {label_set}")


def _checked_choices(label_set: str, choices: Sequence[str] | None) -> list[str] | None:
    if not label_set or not str(label_set).strip():
        raise ValueError("label_set must be a non-empty name")
    if choices is None:
        return None
    choices = [str(c) for c in choices]
    if not choices or len(set(choices)) != len(choices) or any(not c.strip() for c in choices):
        raise ValueError(f"label set {label_set!r}: choices must be distinct non-empty strings: {choices}")
    return choices


def _register_in(c, label_set: str, kind: str, choices: list[str] | None) -> None:
    """Write a label set's row in the caller's transaction (only when it changed)."""
    row = c.execute("select kind, choices from label_sets where label_set = ?", [label_set]).fetchall()
    if row == [(kind, choices)]:
        return
    c.execute("delete from label_sets where label_set = ?", [label_set])
    c.execute("insert into label_sets values (?, ?, ?, ?)", [label_set, kind, choices, _now()])


def label_set_choices(con, label_set: str) -> list[str] | None:
    ensure_tables(con)
    rows = con.execute("select choices from label_sets where label_set = ?", [label_set]).fetchall()
    return list(rows[0][0]) if rows and rows[0][0] is not None else None


# --------------------------------------------------------------------------- queue and assignment

def _check_pool(con, pool: str) -> list[str]:
    if not table_exists(con, pool):
        raise WorkspaceError(f"no table {pool!r} in the workspace: run steps 01-02 (workbench run --only 01 "
                             f"--only 02) or write a table with item_id and text columns")
    cols = [r[0] for r in con.execute(f'select * from "{pool}" limit 0').description]
    missing = {"item_id", "text"} - set(cols)
    if missing:
        raise WorkspaceError(f"table {pool!r} lacks column(s) {', '.join(sorted(missing))} (has: {', '.join(cols)})")
    return cols


def queue_items(con, cfg: QueueConfig = QueueConfig()) -> pd.DataFrame:
    """The queue: pool items in stable-hash order (md5 of seed and item id), the first ``max_items``."""
    _check_pool(con, cfg.pool)
    limit = "" if cfg.max_items is None else f"limit {int(cfg.max_items)}"
    return con.execute(f'select * from "{cfg.pool}" order by md5(? || \'|\' || item_id), item_id {limit}',
                       [str(cfg.seed)]).df()


def rendezvous(item_id: str, roster: Sequence[str], k: int, seed: int) -> list[str]:
    """The k annotators of ``roster`` an item goes to: highest md5(seed|item|annotator) first.

    Deterministic, and stable when the roster changes: adding an annotator moves only the items
    that now rank them among their top k (about k/n of them).
    """
    key = lambda a: hashlib.md5(f"{seed}|{item_id}|{a}".encode()).hexdigest()  # noqa: E731
    return sorted(roster, key=key, reverse=True)[:k]


def assign(con, label_set: str, roster: Sequence[str], k: int, cfg: QueueConfig = QueueConfig()) -> pd.DataFrame:
    """Assign each queue item to ``k`` annotators of ``roster`` (k-way overlap) in ``label_assignments``.

    Replaces that label set's assignments in one transaction, only when they changed (several
    annotators' notebooks may run this at once and all compute the same rows). Labels already
    given are kept whatever the new assignment.
    """
    roster = list(dict.fromkeys(str(a).strip() for a in roster if str(a).strip()))
    if not roster:
        raise ValueError("assign: the roster of annotators is empty")
    if not 1 <= int(k) <= len(roster):
        raise ValueError(f"assign: k={k} must be between 1 and the roster size {len(roster)}")
    ensure_tables(con)
    items = queue_items(con, cfg)
    rows = [(label_set, item, a, rank + 1, cfg.seed)
            for item in items["item_id"] for rank, a in enumerate(rendezvous(item, roster, int(k), cfg.seed))]
    new = pd.DataFrame(rows, columns=["label_set", "item_id", "annotator", "rank", "seed"])

    def body(c):
        old = c.execute("select label_set, item_id, annotator, rank, seed from label_assignments "
                        "where label_set = ? order by item_id, rank", [label_set]).fetchall()
        if sorted(old) == sorted(rows):
            return
        c.execute("delete from label_assignments where label_set = ?", [label_set])
        c.register("_wb_assign", new.assign(assigned_at=_now()))
        try:
            c.execute("insert into label_assignments by name select * from _wb_assign")
        finally:
            c.unregister("_wb_assign")
    transaction(con, body, what="writing label_assignments")
    return new


def has_assignments(con, label_set: str) -> bool:
    ensure_tables(con)
    return bool(con.execute("select count(*) from label_assignments where label_set = ?", [label_set]).fetchall()[0][0])


# --------------------------------------------------------------------------- the log

def _append(con, rows: list[dict]) -> None:
    """Append label events in the caller's transaction."""
    df = pd.DataFrame(rows).reindex(columns=_LABEL_COLUMNS)
    view = f"_wb_labels_{secrets.token_hex(4)}"
    con.register(view, df)
    try:
        con.execute(f"insert into labels by name select {', '.join(_LABEL_COLUMNS)} from {view}")
    finally:
        con.unregister(view)


def active_events(events: pd.DataFrame) -> pd.DataFrame:
    """Label, skip and adjudication events no retraction cancels, oldest first."""
    retracted = set(events.loc[events["kind"] == "retraction", "retracts"].dropna())
    keep = events[(events["kind"] != "retraction") & ~events["label_id"].isin(retracted)]
    return keep.sort_values(["created_at", "label_id"])


class LabelingSession:
    """One annotator working through one label set: the API under the widget (and the simulator).

    ``current`` is the item to label next: the first one in queue order with no answer yet, then
    the skipped ones (longest skipped first). ``submit``/``skip``/``undo`` append to ``labels`` at
    once. In a label set with assignments the queue is this annotator's assigned items, otherwise
    every queue item (open queue).
    """

    def __init__(self, con, annotator: str, label_set: str, choices: Sequence[str] | None = None, *,
                 queue: QueueConfig = QueueConfig(), source: str = "api", session_id: str | None = None):
        if not annotator or not str(annotator).strip():
            raise ValueError("annotator must be a non-empty name")
        self.con, self.annotator, self.label_set = con, str(annotator).strip(), label_set
        self.queue, self.source = queue, source
        self.session_id = session_id or new_session_id()
        ensure_tables(con)
        if choices is not None or label_set_choices(con, label_set) is None:
            register_label_set(con, label_set, choices)
        self.choices = label_set_choices(con, label_set)
        self._focus: str | None = None
        self._last_ts = dt.datetime.min
        self.reload()

    # ---- reading
    def reload(self) -> None:
        """Re-read the queue (assignments may have changed) and this annotator's events."""
        cols = _check_pool(self.con, self.queue.pool)
        self.context_columns = [c for c in cols if c not in ("item_id", "text")]
        self.assigned = has_assignments(self.con, self.label_set)
        if self.assigned:
            self.items = self.con.execute(
                f'select p.* from "{self.queue.pool}" as p join label_assignments as a '
                f"on a.item_id = p.item_id and a.label_set = ? and a.annotator = ? "
                f"order by md5(? || '|' || p.item_id), p.item_id",
                [self.label_set, self.annotator, str(self.queue.seed)]).df()
        else:
            self.items = queue_items(self.con, self.queue)
        self.items = self.items.drop_duplicates("item_id").set_index("item_id", drop=False)
        self._assignments = self.con.execute("select item_id, annotator from label_assignments where label_set = ?",
                                             [self.label_set]).df()
        self._refresh()

    def _refresh(self, events: pd.DataFrame | None = None) -> None:
        """Re-read this annotator's events (or take ``events``) and recompute each item's status."""
        if events is None:
            events = self.con.execute(
                f"select {', '.join(_LABEL_COLUMNS)} from labels where label_set = ? and annotator = ? "
                "and kind <> 'adjudication'", [self.label_set, self.annotator]).df()
        self.events = events
        act = active_events(events)
        self.status = act.groupby("item_id").tail(1).set_index("item_id")[["kind", "value", "created_at"]]

    def _record(self, rows: list[dict]) -> None:
        """Our own committed rows join the in-memory log (no re-read: one query less per click)."""
        new = pd.DataFrame(rows).reindex(columns=_LABEL_COLUMNS)
        self._refresh(pd.concat([self.events, new], ignore_index=True) if len(self.events) else new)

    def answer(self, item_id: str) -> tuple[str, str | None] | None:
        """This annotator's current answer for an item: ('label', value), ('skip', None) or None."""
        if item_id not in self.status.index:
            return None
        row = self.status.loc[item_id]
        return row["kind"], (None if pd.isna(row["value"]) else row["value"])

    @property
    def current(self) -> dict | None:
        """The item to show now (a dict of its pool columns), or None when the queue is done."""
        if self._focus is not None and self._focus in self.items.index and self._kind(self._focus) != "label":
            return self.items.loc[self._focus].to_dict()
        todo = [i for i in self.items.index if self._kind(i) is None]
        if todo:
            return self.items.loc[todo[0]].to_dict()
        skipped = self.status[(self.status["kind"] == "skip") & self.status.index.isin(self.items.index)]
        if len(skipped):
            return self.items.loc[skipped.sort_values("created_at").index[0]].to_dict()
        return None

    def _kind(self, item_id: str) -> str | None:
        return self.status.at[item_id, "kind"] if item_id in self.status.index else None

    def progress(self) -> dict:
        """Done / skipped / remaining for this annotator, and ratings and items for everyone."""
        in_queue = self.status[self.status.index.isin(self.items.index)]
        done = int((in_queue["kind"] == "label").sum())
        skipped = int((in_queue["kind"] == "skip").sum())
        out = {"annotator": self.annotator, "label_set": self.label_set, "done": done, "skipped": skipped,
               "total": len(self.items), "remaining": len(self.items) - done}
        out.update(overall_progress(self.con, self.label_set, self.queue, assignments=self._assignments,
                                    queue_ids=None if self.assigned else set(self.items.index)))
        return out

    # ---- writing
    def _event(self, item_id: str, kind: str, value: str | None = None, retracts: str | None = None) -> dict:
        ts = max(_now(), self._last_ts + dt.timedelta(microseconds=1))  # strictly increasing per session
        self._last_ts = ts
        return {"label_id": f"{ts:%Y%m%d%H%M%S%f}-{secrets.token_hex(6)}", "item_id": item_id,
                "annotator": self.annotator, "value": value, "created_at": ts, "session_id": self.session_id,
                "label_set": self.label_set, "kind": kind, "retracts": retracts, "source": self.source}

    def _item(self, item_id: str | None) -> str:
        if item_id is None:
            cur = self.current
            if cur is None:
                raise WorkspaceError(f"{self.annotator}: nothing left to label in {self.label_set!r}")
            return cur["item_id"]
        if item_id not in self.items.index:
            raise WorkspaceError(f"item {item_id!r} is not in {self.annotator}'s queue for {self.label_set!r}")
        return item_id

    def _check_value(self, value) -> str:
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not a choice of label set {self.label_set!r}: {', '.join(self.choices)}")
        if self.choices is None and (value is None or not str(value).strip()):
            raise ValueError("free text is empty: write the text before submitting")
        return str(value)

    def _write(self, rows: list[dict], what: str) -> None:
        transaction(self.con, lambda c: _append(c, rows), what=what)
        self._focus = None
        self._record(rows)

    def submit(self, value: str, item_id: str | None = None) -> dict:
        """Label the current item (or ``item_id``); the row is committed before this returns."""
        item_id = self._item(item_id)
        row = self._event(item_id, "label", self._check_value(value))
        self._write([row], "saving a label")
        return row

    def submit_many(self, answers: Sequence[tuple[str, str]]) -> list[dict]:
        """Label several items at once, ``[(item_id, value), ...]``, in one transaction (all or none)."""
        rows = [self._event(self._item(i), "label", self._check_value(v)) for i, v in answers]
        if rows:
            self._write(rows, f"saving {len(rows)} labels")
        return rows

    def skip(self, item_id: str | None = None) -> dict:
        item_id = self._item(item_id)
        row = self._event(item_id, "skip")
        self._write([row], "saving a skip")
        return row

    def undo(self) -> dict | None:
        """Retract this annotator's latest answer or skip in this label set (read and written in one
        transaction, so two kernels of one annotator never retract the same event twice)."""

        def body(c):
            ev = c.execute(f"select {', '.join(_LABEL_COLUMNS)} from labels where label_set = ? and annotator = ? "
                           "and kind <> 'adjudication'", [self.label_set, self.annotator]).df()
            act = active_events(ev)
            if not len(act):
                return ev, None
            last = act.iloc[-1].to_dict()
            row = self._event(last["item_id"], "retraction", retracts=last["label_id"])
            _append(c, [row])
            return pd.concat([ev, pd.DataFrame([row]).reindex(columns=_LABEL_COLUMNS)], ignore_index=True), last
        events, last = transaction(self.con, body, what="saving an undo")
        self._refresh(events)
        if last is not None:
            self._focus = last["item_id"]
        return last


def overall_progress(con, label_set: str, queue: QueueConfig = QueueConfig(), *,
                     assignments: pd.DataFrame | None = None, queue_ids: set | None = None) -> dict:
    """Everyone's progress: ratings given of those assigned, and items with all (or any) ratings."""
    cur = con.execute("select item_id, annotator from labels_current where label_set = ? and kind = 'label'",
                      [label_set]).df()
    asg = assignments if assignments is not None else con.execute(
        "select item_id, annotator from label_assignments where label_set = ?", [label_set]).df()
    if len(asg):
        hit = asg.merge(cur, on=["item_id", "annotator"], how="left", indicator=True)
        hit["ok"] = hit["_merge"] == "both"
        per_item = hit.groupby("item_id")["ok"].all()
        return {"ratings_done": int(hit["ok"].sum()), "ratings_total": len(asg),
                "items_complete": int(per_item.sum()), "items_total": len(per_item)}
    items = queue_ids if queue_ids is not None else set(queue_items(con, queue)["item_id"])
    labeled = set(cur["item_id"]) & items
    return {"ratings_done": int(cur["item_id"].isin(items).sum()), "ratings_total": None,
            "items_complete": len(labeled), "items_total": len(items)}


def queue_status(con, label_set: str, queue: QueueConfig = QueueConfig()) -> pd.DataFrame:
    """One row per annotator: assigned (or queue size), done, skipped, remaining."""
    ensure_tables(con)
    cur = con.execute("select item_id, annotator, kind from labels_current where label_set = ?", [label_set]).df()
    asg = con.execute("select item_id, annotator from label_assignments where label_set = ?", [label_set]).df()
    if len(asg):
        m = asg.merge(cur, on=["item_id", "annotator"], how="left")
        g = m.groupby("annotator")
        out = pd.DataFrame({"assigned": g.size(), "done": g["kind"].apply(lambda s: (s == "label").sum()),
                            "skipped": g["kind"].apply(lambda s: (s == "skip").sum())})
    else:
        items = set(queue_items(con, queue)["item_id"])
        m = cur[cur["item_id"].isin(items)]
        g = m.groupby("annotator")
        out = pd.DataFrame({"assigned": len(items), "done": g["kind"].apply(lambda s: (s == "label").sum()),
                            "skipped": g["kind"].apply(lambda s: (s == "skip").sum())})
    out = out.astype(int)
    out["remaining"] = out["assigned"] - out["done"]
    return out.reset_index().rename(columns={"index": "annotator"})


# --------------------------------------------------------------------------- disagreements, adjudication, final

def votes(con, label_set: str) -> pd.DataFrame:
    """Current labels of a label set: item_id, annotator, value (one row per item and annotator)."""
    ensure_tables(con)
    return con.execute("select item_id, annotator, value from labels_current "
                       "where label_set = ? and kind = 'label' order by item_id, annotator", [label_set]).df()


def disagreements(con, label_set: str, *, include_adjudicated: bool = False) -> pd.DataFrame:
    """Items whose annotators gave different labels: item_id, n_labels, votes ({value: [annotators]}),
    top_value (None on a tie), adjudicated (the adjudicated value or None)."""
    v = votes(con, label_set)
    adj = adjudications(con, label_set)
    rows = []
    for item_id, g in v.groupby("item_id", sort=True):
        if g["value"].nunique() < 2:
            continue
        by_value = {val: sorted(gg["annotator"]) for val, gg in g.groupby("value")}
        counts = g["value"].value_counts()
        top = counts.index[0] if (counts == counts.iloc[0]).sum() == 1 else None
        decided = adj.get(item_id)
        if decided is not None and not include_adjudicated:
            continue
        rows.append({"item_id": item_id, "n_labels": len(g), "votes": by_value, "top_value": top,
                     "adjudicated": decided})
    return pd.DataFrame(rows, columns=["item_id", "n_labels", "votes", "top_value", "adjudicated"])


def adjudications(con, label_set: str) -> dict[str, str]:
    """The latest non-retracted adjudication per item: {item_id: value}."""
    ensure_tables(con)
    ev = con.execute(f"select {', '.join(_LABEL_COLUMNS)} from labels where label_set = ? "
                     "and kind in ('adjudication', 'retraction')", [label_set]).df()
    act = active_events(ev)
    return dict(zip(act["item_id"], act["value"]))  # sorted oldest first: the latest wins


def adjudicate(con, label_set: str, item_id: str, value: str, adjudicator: str, *,
               session_id: str | None = None) -> dict:
    """Record an adjudicator's decision (appended to ``labels`` with kind 'adjudication')."""
    choices = label_set_choices(con, label_set)
    if choices is not None and value not in choices:
        raise ValueError(f"{value!r} is not a choice of label set {label_set!r}: {', '.join(choices)}")
    if not adjudicator or not str(adjudicator).strip():
        raise ValueError("adjudicator must be a non-empty name")
    ts = _now()
    row = {"label_id": f"{ts:%Y%m%d%H%M%S%f}-{secrets.token_hex(6)}", "item_id": item_id, "annotator": adjudicator,
           "value": value, "created_at": ts, "session_id": session_id or new_session_id("adj"),
           "label_set": label_set, "kind": "adjudication", "retracts": None, "source": "adjudication"}
    transaction(con, lambda c: _append(c, [row]), what="saving an adjudication")
    return row


def build_labels_final(con) -> pd.DataFrame:
    """(Re)build ``labels_final`` from everything in ``labels``; returns the count per label set and method."""
    ensure_tables(con)
    run_sql_file(con, "03_labels_final")
    return con.execute("select label_set, method, count(*) as items from labels_final "
                       "group by label_set, method order by label_set, method").df()


# --------------------------------------------------------------------------- simulated annotators

_KEYWORDS = {  # cue -> weight; a message goes to the intent with the highest total
    "refund": {"refund": 3, "money back": 3, "returned": 2, "sent back": 2, "reimburs": 3},
    "billing": {"invoice": 2, "charged": 2, "charge": 1, " fee": 2, "bill ": 2, "billed": 2, "statement": 2,
                "payment": 1, "overcharg": 2},
    "shipping": {"package": 2, "parcel": 2, "tracking": 2, "deliver": 2, "ship to": 2, "customs": 2,
                 "arrive": 1, "depot": 1, "courier": 2},
    "technical_issue": {"error": 2, "crash": 2, "wifi": 2, "update": 1, "turn on": 2, "bluetooth": 2,
                        "pairing": 2, "screen": 1, "noise": 1, "firmware": 2, "disconnect": 2, "not work": 1},
    "account_access": {"log in": 2, "login": 2, "password": 2, "locked": 2, "sign in": 2, "two-factor": 2,
                       "username": 2, "email address": 2, "accessed my account": 2, "account": 1},
    "cancellation": {"cancel": 2, "close my account": 3, "membership": 2, "contract": 2, "stop my": 2,
                     "plan": 1},
}


def keyword_intent(text: str) -> str | None:
    """A keyword guess at a support message's intent (the best-scoring intent; None when nothing matches)."""
    t = f" {str(text).lower()} "
    scores = {k: sum(w * t.count(cue) for cue, w in cues.items()) for k, cues in _KEYWORDS.items()}
    best = max(scores.values())
    if best == 0:
        return None
    tops = [k for k, s in scores.items() if s == best]
    return tops[0] if len(tops) == 1 else None


def simulate_annotators(con, label_set: str, choices: Sequence[str], sim: SimulationConfig = SimulationConfig(),
                        queue: QueueConfig = QueueConfig(), seed: int = 7) -> pd.DataFrame:
    """SIMULATION: annotators ``sim-1..sim-N`` label their queue through ``LabelingSession``.

    Each answers with the keyword guess (``sim.truth``) except with probability noise_i (rising
    from noise/2 for sim-1 to 3*noise/2 for sim-N, mean ``noise``), or when the guess is None, where
    it picks uniformly among the other choices. Deterministic given the seed; resumable (re-running
    labels only what each has not labeled yet). Returns one row per simulated annotator.
    """
    truth = sim.truth or keyword_intent
    n = int(sim.annotators)
    out = []
    for i in range(n):
        name = f"sim-{i + 1}"
        noise = sim.noise * (0.5 + i / max(n - 1, 1)) if n > 1 else sim.noise
        s = LabelingSession(con, name, label_set, list(choices), queue=queue, source="simulated",
                            session_id=new_session_id("sim"))
        todo = [i for i in s.items.index if s.answer(i) is None]
        if sim.items is not None:
            todo = todo[: max(0, int(sim.items) - s.progress()["done"])]
        answers = []
        for item_id in todo:
            rng = random.Random(f"{seed}|{name}|{item_id}")
            guess = truth(s.items.at[item_id, "text"])
            if guess not in choices or rng.random() < noise:
                value = rng.choice([c for c in choices if c != guess])
            else:
                value = guess
            answers.append((item_id, value))
        s.submit_many(answers)
        out.append({"annotator": name, "noise": round(noise, 4), "labeled_now": len(todo),
                    "done": s.progress()["done"]})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- import

def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict | None, str | None]]]:
    """(columns, [(line, row or None, parse error or None)]) of a CSV or JSONL file."""
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict | None, str | None]] = []
    if suffix in (".jsonl", ".ndjson", ".json"):
        cols: dict[str, None] = {}
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    rows.append((n, None, f"not valid JSON ({exc.msg})"))
                    continue
                if not isinstance(obj, dict):
                    rows.append((n, None, "not a JSON object"))
                    continue
                cols.update(dict.fromkeys(obj))
                rows.append((n, obj, None))
        return list(cols), rows
    if suffix in (".csv", ".tsv", ".txt"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            cols_list = list(reader.fieldnames or [])
            start = reader.line_num + 1
            for rec in reader:
                if None in rec:
                    rows.append((start, None, f"{len(cols_list) + len(rec[None])} fields, header has {len(cols_list)}"))
                elif any(v is None for v in rec.values()):
                    rows.append((start, None, f"fewer fields than the header's {len(cols_list)}"))
                else:
                    rows.append((start, rec, None))
                start = reader.line_num + 1
        return cols_list, rows
    raise LabelImportError([f"{path}: unknown file type {suffix!r} (use .csv, .tsv or .jsonl)"])


def import_labels(con, path: str | os.PathLike, *, label_set: str, item_column: str = "item_id",
                  value_column: str = "value", annotator_column: str | None = "annotator",
                  annotator: str | None = None, created_at_column: str | None = None,
                  choices: Sequence[str] | None = None, pool: str = "label_pool") -> dict:
    """Load labels exported by another tool: validate every row first, then append all in one transaction.

    Each bad row is reported as ``file:line: column 'c': problem``; one bad row means nothing is
    written. ``annotator`` names one annotator for the whole file instead of ``annotator_column``.
    Values must be among the label set's choices (registered, or ``choices``); item ids must be in
    ``pool`` when that table exists. Importing the same file twice is refused.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    ensure_tables(con)
    choices = _checked_choices(label_set, choices)  # written with the rows: bad rows change nothing
    known_choices = choices if choices is not None else label_set_choices(con, label_set)
    cols, rows = _read_rows(path)
    need = [c for c in (item_column, value_column, None if annotator else annotator_column, created_at_column) if c]
    if annotator is None and not annotator_column:
        raise LabelImportError([f"{path}: give --annotator-column or --annotator"])
    missing = [c for c in need if c not in cols]
    if missing and rows:
        raise LabelImportError([f"{path}:1: column '{c}': missing (columns: {', '.join(cols)})" for c in missing])
    pool_ids = set(r[0] for r in con.execute(f'select item_id from "{pool}"').fetchall()) \
        if table_exists(con, pool) else None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    session = f"import-{digest}"
    if con.execute("select count(*) from labels where session_id = ?", [session]).fetchall()[0][0]:
        raise LabelImportError([f"{path}: already imported (labels.session_id = '{session}')"])

    errors: list[str] = []
    good: list[dict] = []
    base = _now()
    for line, rec, problem in rows:
        if problem:
            errors.append(f"{path}:{line}: {problem}")
            continue
        bad = []

        def text(col):
            v = rec.get(col)
            return None if v is None or (isinstance(v, str) and not v.strip()) else str(v).strip()

        item, value = text(item_column), text(value_column)
        who = annotator or text(annotator_column)
        if item is None:
            bad.append(f"column '{item_column}': empty")
        elif pool_ids is not None and item not in pool_ids:
            bad.append(f"column '{item_column}': item {item!r} is not in {pool}")
        if who is None:
            bad.append(f"column '{annotator_column}': empty")
        if value is None:
            bad.append(f"column '{value_column}': empty")
        elif known_choices is not None and value not in known_choices:
            bad.append(f"column '{value_column}': {value!r} is not a choice of {label_set!r} "
                       f"({', '.join(known_choices)})")
        created = base + dt.timedelta(microseconds=len(good))
        if created_at_column:
            raw = text(created_at_column)
            try:
                ts = pd.Timestamp(raw)
                if pd.isna(ts):
                    raise ValueError(raw)
                created = (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).to_pydatetime()
            except (ValueError, TypeError):
                bad.append(f"column '{created_at_column}': {raw!r} is not a timestamp")
        errors.extend(f"{path}:{line}: {b}" for b in bad)
        if not bad:
            good.append({"label_id": f"{session}-{line}", "item_id": item, "annotator": who, "value": value,
                         "created_at": created, "session_id": session, "label_set": label_set, "kind": "label",
                         "retracts": None, "source": f"import:{path.name}"})
    if errors:
        raise LabelImportError(errors)
    if good:
        def body(c):
            if choices is not None:
                _register_in(c, label_set, "choice", choices)
            _append(c, good)
        transaction(con, body, what=f"importing {path.name}")
    return {"file": str(path), "label_set": label_set, "rows": len(good), "session_id": session,
            "annotators": sorted({g["annotator"] for g in good})}
