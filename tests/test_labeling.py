"""The label log, sessions (submit, skip, undo, resume, crash, concurrency), assignment, final labels, import."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import workbench
from workbench import labeling as L
from workbench.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
INTENTS = L.INTENTS


def make_pool(con, n: int = 12) -> pd.DataFrame:
    pool = pd.DataFrame({
        "item_id": [f"pool:{i}" for i in range(n)],
        "message_id": [f"m{i}" for i in range(n)],
        "text": [f"message number {i}" for i in range(n)],
        "region": [["north", "south", "east", "west"][i % 4] for i in range(n)],
        "age_band": [["18-29", "65+"][i % 2] for i in range(n)],
    })
    workbench.write_table(con, "label_pool", pool)
    return pool


def one(con, sql: str):
    """The single value of a query, read to the end (a half-read result blocks other writers)."""
    return con.execute(sql).fetchall()[0][0]


def log(con, annotator: str | None = None) -> pd.DataFrame:
    q = "select * from labels" + (" where annotator = ?" if annotator else "") + " order by created_at, label_id"
    return con.execute(q, [annotator] if annotator else []).df()


def _env(workspace: Path) -> dict:
    return dict(os.environ, WORKBENCH_HOME=str(workspace), PYTHONPATH=str(REPO))


# --------------------------------------------------------------------------- one annotator

def test_submit_skip_undo_and_resume_after_restart(workspace, con):
    make_pool(con, 6)
    s = L.LabelingSession(con, "ana", "intent", INTENTS, queue=L.QueueConfig(max_items=None))
    order = list(s.items.index)
    assert sorted(order) == [f"pool:{i}" for i in range(6)] and s.current["item_id"] == order[0]
    assert s.current["text"] and "region" in s.context_columns

    s.submit("billing")
    s.skip()                                  # order[1] skipped
    s.submit("refund")                        # order[2]
    undone = s.undo()                         # retracts 'refund' on order[2], which comes back
    assert undone["item_id"] == order[2] and undone["value"] == "refund"
    assert s.current["item_id"] == order[2]
    s.submit("shipping")                      # order[2] again, now shipping
    p = s.progress()
    assert (p["done"], p["skipped"], p["total"], p["remaining"]) == (2, 1, 6, 4)

    rows = log(con, "ana")
    assert rows["kind"].tolist() == ["label", "skip", "label", "retraction", "label"]
    retraction = rows[rows["kind"] == "retraction"].iloc[0]
    assert retraction["retracts"] == rows.iloc[2]["label_id"] and retraction["item_id"] == order[2]
    assert rows["session_id"].nunique() == 1 and rows["created_at"].is_monotonic_increasing
    with pytest.raises(ValueError, match="not a choice"):
        s.submit("nonsense")

    # "restart": a new connection and session resume at the next unlabeled item; skipped ones come last
    con2 = workbench.connect(workspace)
    s2 = L.LabelingSession(con2, "ana", "intent")
    assert s2.session_id != s.session_id and s2.choices == INTENTS
    assert s2.current["item_id"] == order[3]
    assert s2.answer(order[2]) == ("label", "shipping") and s2.answer(order[1]) == ("skip", None)
    for _ in range(3):
        s2.submit("billing")
    assert s2.current["item_id"] == order[1]  # only the skipped item is left
    s2.submit("cancellation")
    assert s2.current is None and s2.progress()["remaining"] == 0
    cur = con2.execute("select item_id, value from labels_current where annotator = 'ana' and kind = 'label' "
                       "order by item_id").df()
    assert dict(zip(cur["item_id"], cur["value"]))[order[2]] == "shipping" and len(cur) == 6


def test_undo_walks_back_and_never_deletes(con):
    make_pool(con, 4)
    s = L.LabelingSession(con, "ana", "intent", INTENTS)
    first = s.current["item_id"]
    s.submit("billing")
    s.skip()
    assert s.undo()["kind"] == "skip"
    assert s.undo()["value"] == "billing"
    assert s.undo() is None                   # nothing left to undo
    assert s.current["item_id"] == first and s.progress()["done"] == 0
    assert log(con)["kind"].tolist() == ["label", "skip", "retraction", "retraction"]


def test_skipped_items_rotate(con):
    make_pool(con, 2)
    s = L.LabelingSession(con, "ana", "intent", INTENTS)
    a = s.current["item_id"]
    s.skip()
    b = s.current["item_id"]
    s.skip()
    assert a != b and s.current["item_id"] == a  # longest-skipped first, not stuck on one item
    s.skip()
    assert s.current["item_id"] == b


def test_killed_process_loses_nothing_submitted(workspace, con):
    make_pool(con, 8)
    script = textwrap.dedent("""
        import os, signal, workbench
        from workbench import labeling as L
        s = L.LabelingSession(workbench.connect(), "kim", "intent", L.INTENTS)
        for v in ["billing", "refund", "shipping"]:
            s.submit(v)
        print(s.current["item_id"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)   # the kernel dies without any cleanup
    """)
    p = subprocess.run([sys.executable, "-c", script], env=_env(workspace), capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    next_item = p.stdout.split()[-1]
    s = L.LabelingSession(workbench.connect(workspace), "kim", "intent")
    assert s.progress()["done"] == 3 and s.current["item_id"] == next_item
    assert log(con, "kim")["value"].tolist() == ["billing", "refund", "shipping"]


@pytest.mark.slow
def test_two_annotators_in_two_processes_lose_nothing(workspace, con):
    n = 15
    make_pool(con, n)
    L.ensure_tables(con)
    barrier = workspace.parent / "ready"
    barrier.mkdir()
    script = textwrap.dedent(f"""
        import pathlib, sys, time, workbench
        from workbench import labeling as L
        s = L.LabelingSession(workbench.connect(), sys.argv[1], "intent", L.INTENTS)
        ready = pathlib.Path({str(barrier)!r})
        (ready / sys.argv[1]).touch()
        while len(list(ready.iterdir())) < 2:   # both start writing at the same moment
            time.sleep(0.01)
        while s.current is not None:
            s.submit(L.INTENTS[len(s.events) % 6])
        print("done", s.progress()["done"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, who], env=_env(workspace), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for who in ("ana", "ben")]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == f"done {n}", err[-2000:]
    rows = log(con)
    assert len(rows) == 2 * n and rows["label_id"].is_unique
    assert rows.groupby("annotator")["item_id"].nunique().to_dict() == {"ana": n, "ben": n}
    span = rows.groupby("annotator")["created_at"].agg(["min", "max"])
    assert span["min"].max() < span["max"].min()  # the two really wrote at the same time
    assert L.overall_progress(con, "intent", L.QueueConfig(max_items=None))["items_complete"] == n


# --------------------------------------------------------------------------- assignment

def test_k_way_overlap_is_deterministic_and_stable(con):
    make_pool(con, 40)
    roster = ["ana", "ben", "chen", "dee", "eli"]
    a1 = L.assign(con, "intent", roster, 3, L.QueueConfig(max_items=30))
    per_item = a1.groupby("item_id")["annotator"].agg(list)
    assert len(per_item) == 30 and all(len(set(v)) == 3 for v in per_item)
    assert a1.groupby("annotator").size().between(10, 26).all()  # every annotator gets a share
    snap = workbench.snapshot_id(con)
    a2 = L.assign(con, "intent", list(reversed(roster)), 3, L.QueueConfig(max_items=30))
    assert a2.sort_values(["item_id", "rank"]).values.tolist() == a1.sort_values(["item_id", "rank"]).values.tolist()
    assert workbench.snapshot_id(con) == snap  # unchanged assignment: nothing rewritten

    # each annotator's session queue is exactly their assigned items
    for who in roster:
        s = L.LabelingSession(con, who, "intent", INTENTS)
        assert set(s.items.index) == set(a1.loc[a1.annotator == who, "item_id"])
    assert len(L.LabelingSession(con, "outsider", "intent").items) == 0

    # adding an annotator only moves items to the newcomer
    a3 = L.assign(con, "intent", roster + ["fay"], 3, L.QueueConfig(max_items=30))
    old = set(map(tuple, a1[["item_id", "annotator"]].values))
    new = set(map(tuple, a3[["item_id", "annotator"]].values))
    assert all(who == "fay" for _, who in new - old)
    assert one(con, "select count(*) from label_assignments") == 90
    with pytest.raises(ValueError, match="between 1 and the roster size"):
        L.assign(con, "intent", roster, 6)


def test_progress_and_queue_status_with_assignments(con):
    make_pool(con, 10)
    L.assign(con, "intent", ["ana", "ben"], 2, L.QueueConfig(max_items=10))
    a, b = (L.LabelingSession(con, w, "intent", INTENTS) for w in ("ana", "ben"))
    for _ in range(4):
        a.submit("billing")
    b.submit("refund")
    b.skip()
    p = b.progress()
    assert (p["ratings_done"], p["ratings_total"], p["items_complete"], p["items_total"]) == (5, 20, 1, 10)
    st = L.queue_status(con, "intent").set_index("annotator")
    assert st.loc["ana"].tolist() == [10, 4, 0, 6] and st.loc["ben"].tolist() == [10, 1, 1, 9]


# --------------------------------------------------------------------------- labels_final

def _label(s: L.LabelingSession, item: str, value: str):
    return s.submit(value, item)


def test_labels_final_majority_ties_single_and_adjudication(con):
    make_pool(con, 8)
    ss = {w: L.LabelingSession(con, w, "intent", INTENTS, queue=L.QueueConfig(max_items=None)) for w in "abc"}
    votes = {
        "pool:0": {"a": "billing", "b": "billing", "c": "billing"},    # unanimous
        "pool:1": {"a": "billing", "b": "billing", "c": "refund"},     # majority
        "pool:2": {"a": "billing", "b": "refund"},                     # tie: left out
        "pool:3": {"a": "shipping"},                                   # single
        "pool:4": {"a": "billing", "b": "refund"},                     # tie, then adjudicated
        "pool:5": {"a": "billing", "b": "billing", "c": "refund"},     # majority overridden by adjudication
        "pool:6": {"a": "refund", "b": "refund", "c": "billing"},      # c changes to refund (relabel)
    }
    for item, vs in votes.items():
        for who, v in vs.items():
            _label(ss[who], item, v)
    _label(ss["c"], "pool:6", "refund")
    L.adjudicate(con, "intent", "pool:4", "refund", "lead")
    L.adjudicate(con, "intent", "pool:5", "shipping", "lead")
    L.adjudicate(con, "intent", "pool:1", "cancellation", "lead")
    # an adjudication can be retracted like any answer
    adj = one(con, "select label_id from labels where kind = 'adjudication' and item_id = 'pool:1'")
    workbench.transaction(con, lambda c: L._append(c, [dict(label_id="r1", item_id="pool:1", annotator="lead",
                                                            created_at=L._now(), label_set="intent",
                                                            kind="retraction", retracts=adj)]))
    text = L.LabelingSession(con, "a", "reference_completion", None, queue=L.QueueConfig(max_items=None))
    text.submit("first draft", "pool:0")
    L.LabelingSession(con, "b", "reference_completion").submit("better answer", "pool:0")
    with pytest.raises(ValueError, match="empty"):
        text.submit("   ", "pool:1")

    summary = L.build_labels_final(con)
    final = con.execute("select * from labels_final").df().set_index(["label_set", "item_id"])
    got = {i: (r.value, r.method, r.n_labels, r.n_votes) for (ls, i), r in final.iterrows() if ls == "intent"}
    assert got == {
        "pool:0": ("billing", "unanimous", 3, 3),
        "pool:1": ("billing", "majority", 3, 2),
        "pool:3": ("shipping", "single", 1, 1),
        "pool:4": ("refund", "adjudicated", 2, 1),
        "pool:5": ("shipping", "adjudicated", 3, 0),
        "pool:6": ("refund", "unanimous", 3, 3),
    }
    assert final.loc[("reference_completion", "pool:0"), "value"] == "better answer"
    assert final.loc[("reference_completion", "pool:0"), "method"] == "latest"
    assert summary.set_index(["label_set", "method"])["items"].sum() == 7

    dis = L.disagreements(con, "intent").set_index("item_id")
    assert sorted(dis.index) == ["pool:1", "pool:2"]  # pool:4 and pool:5 are adjudicated
    assert dis.loc["pool:2", "votes"] == {"billing": ["a"], "refund": ["b"]} and pd.isna(dis.loc["pool:2", "top_value"])
    assert dis.loc["pool:1", "top_value"] == "billing"
    assert len(L.disagreements(con, "intent", include_adjudicated=True)) == 4
    with pytest.raises(ValueError, match="not a choice"):
        L.adjudicate(con, "intent", "pool:2", "bogus", "lead")


# --------------------------------------------------------------------------- simulation

def test_simulated_annotators_have_the_noise_they_claim_and_resume(con):
    n = 60
    pool = make_pool(con, n)
    truth = {t: INTENTS[i % 6] for i, t in enumerate(pool["text"])}
    cfg = L.SimulationConfig(annotators=3, noise=0.3, truth=truth.get)
    L.assign(con, "intent", ["sim-1", "sim-2", "sim-3"], 3, L.QueueConfig(max_items=None))
    out = L.simulate_annotators(con, "intent", INTENTS, cfg, L.QueueConfig(max_items=None))
    assert out["labeled_now"].tolist() == [n, n, n] and out["noise"].tolist() == [0.15, 0.3, 0.45]
    v = L.votes(con, "intent").merge(pool[["item_id", "text"]], on="item_id")
    wrong = (v["value"] != v["text"].map(truth)).groupby(v["annotator"]).mean()
    assert abs(wrong.mean() - 0.3) < 0.1 and wrong["sim-1"] < wrong["sim-3"]
    assert (log(con)["source"] == "simulated").all()
    again = L.simulate_annotators(con, "intent", INTENTS, cfg, L.QueueConfig(max_items=None))
    assert again["labeled_now"].tolist() == [0, 0, 0] and len(log(con)) == 3 * n


def test_keyword_intent():
    assert L.keyword_intent("Please refund my money back") == "refund"
    assert L.keyword_intent("I forgot my password and cannot log in") == "account_access"
    assert L.keyword_intent("I want to cancel my subscription") == "cancellation"
    assert L.keyword_intent("hello there") is None


# --------------------------------------------------------------------------- import

def test_import_csv_and_jsonl(tmp_path, con):
    make_pool(con, 6)
    L.register_label_set(con, "intent", INTENTS)
    csv_file = tmp_path / "export.csv"
    csv_file.write_text('item_id,labeler,label,ts\npool:0,ana,billing,2026-01-02T03:04:05Z\n'
                        'pool:1,ana,"refund",2026-01-02 03:05:00\npool:1,ben,refund,2026-01-03\n')
    r = L.import_labels(con, csv_file, label_set="intent", annotator_column="labeler", value_column="label",
                        created_at_column="ts")
    assert r["rows"] == 3 and r["annotators"] == ["ana", "ben"]
    rows = log(con)
    assert rows["source"].unique().tolist() == ["import:export.csv"] and (rows["kind"] == "label").all()
    assert str(rows["created_at"].iloc[0]) == "2026-01-02 03:04:05"

    jsonl = tmp_path / "export.jsonl"
    jsonl.write_text('{"item_id": "pool:2", "value": "shipping"}\n\n{"item_id": "pool:3", "value": "billing"}\n')
    r = L.import_labels(con, jsonl, label_set="intent", annotator="tool-x", annotator_column=None)
    assert r["rows"] == 2 and r["annotators"] == ["tool-x"]
    with pytest.raises(L.LabelImportError, match="already imported"):
        L.import_labels(con, jsonl, label_set="intent", annotator="tool-x")
    assert len(log(con)) == 5
    L.build_labels_final(con)
    assert one(con, "select count(*) from labels_final") == 4


def test_import_bad_rows_reports_each_and_writes_nothing(tmp_path, con, capsys):
    make_pool(con, 6)
    L.register_label_set(con, "intent", INTENTS)
    before = one(con, "select count(*) from labels")
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,annotator,value\n"
                   "pool:0,ana,billing\n"          # line 2: fine
                   "pool:99,ana,billing\n"         # line 3: unknown item
                   "pool:1,,refund\n"              # line 4: no annotator
                   "pool:2,ana,refnd\n"            # line 5: not a choice
                   '"pool:3",ana,"multi\nline"\n'  # line 6-7: not a choice (a quoted newline)
                   "pool:4,ana,billing,extra\n"    # line 8: too many fields
                   "pool:5,ana,\n")                # line 9: empty value
    with pytest.raises(L.LabelImportError) as e:
        L.import_labels(con, bad, label_set="intent")
    errs = e.value.errors
    assert errs == [
        f"{bad}:3: column 'item_id': item 'pool:99' is not in label_pool",
        f"{bad}:4: column 'annotator': empty",
        f"{bad}:5: column 'value': 'refnd' is not a choice of 'intent' ({', '.join(INTENTS)})",
        f"{bad}:6: column 'value': 'multi\\nline' is not a choice of 'intent' ({', '.join(INTENTS)})",
        f"{bad}:8: 4 fields, header has 3",
        f"{bad}:9: column 'value': empty",
    ]
    assert one(con, "select count(*) from labels") == before

    badj = tmp_path / "bad.jsonl"
    badj.write_text('{"item_id": "pool:0", "annotator": "a", "value": "billing"}\n{oops\n[1]\n'
                    '{"item_id": "pool:1", "annotator": "a", "value": "refund", "created_at": "yesterday"}\n')
    with pytest.raises(L.LabelImportError) as e:
        L.import_labels(con, badj, label_set="intent", created_at_column="created_at")
    assert [x.split(": ", 1)[0] for x in e.value.errors] == [f"{badj}:1", f"{badj}:2", f"{badj}:3", f"{badj}:4"]
    assert "column 'created_at': 'yesterday' is not a timestamp" in e.value.errors[-1]

    missing = tmp_path / "cols.csv"
    missing.write_text("id,who,label\npool:0,ana,billing\n")
    with pytest.raises(L.LabelImportError, match=r"cols.csv:1: column 'item_id': missing"):
        L.import_labels(con, missing, label_set="intent")

    # choices given with a file of bad rows: the label set is not redefined either
    sets_before = con.execute("select label_set, kind, choices from label_sets order by label_set").fetchall()
    with pytest.raises(L.LabelImportError):
        L.import_labels(con, bad, label_set="intent", choices=["billing", "refnd"])
    with pytest.raises(L.LabelImportError):
        L.import_labels(con, bad, label_set="fresh_set", choices=["billing", "refund"])
    assert con.execute("select label_set, kind, choices from label_sets order by label_set").fetchall() == sets_before

    # the CLI: one line per bad row on stderr, exit status 2, nothing written
    rc = cli_main(["label", "import", str(bad), "--label-set", "intent"])
    err = capsys.readouterr().err
    assert rc == 2 and "6 bad row(s), nothing imported" in err and f"{bad}:5: column 'value'" in err
    assert one(con, "select count(*) from labels") == before


def test_cli_label_import_status_and_final(tmp_path, workspace, con, capsys):
    make_pool(con, 4)
    f = tmp_path / "other_tool.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"pool:{i}", "who": w, "answer": v})
                           for i, (w, v) in enumerate([("x", "billing"), ("y", "billing"), ("x", "refund")])) + "\n")
    assert cli_main(["label", "import", str(f), "--label-set", "intent", "--item-column", "id",
                     "--annotator-column", "who", "--value-column", "answer",
                     "--choices", ",".join(INTENTS)]) == 0
    assert '"rows": 3' in capsys.readouterr().out
    assert cli_main(["label", "status", "--label-set", "intent"]) == 0
    out = capsys.readouterr().out
    assert "annotator" in out and "x" in out
    assert cli_main(["label", "final"]) == 0
    assert "single" in capsys.readouterr().out
    assert one(con, "select count(*) from labels_final") == 3
