"""The cpt registry on hand-written rows: promoted model, lineage, and the watermark contract check."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench import cpt_registry as reg
from workbench.cpt_gates import stable_fraction
from workbench.workspace import WorkspaceError, transaction, write_table


def _models(con, rows):
    reg.ensure_tables(con)
    df = pd.DataFrame([dict(model_id=m, parent_id=p, created_at=pd.Timestamp("2026-01-01") + pd.Timedelta(hours=r),
                            round=r, data_snapshot=1, status=s, metrics_json="{}", path=f"/models/{m}")
                       for m, p, r, s in rows]).astype({"parent_id": "object"})
    transaction(con, lambda c: reg.insert(c, "models", df))


def test_promoted_model_current_model_and_lineage(con):
    assert reg.promoted_model(con) is None and reg.current_model(con) is None
    _models(con, [("base", None, 0, "base")])
    assert reg.promoted_model(con) is None  # the base is where rounds start, not a promotion
    assert reg.current_model(con)["model_id"] == "base"
    _models(con, [("r1", "base", 1, "promoted"), ("r2", "r1", 2, "rejected"), ("r3", "r1", 3, "promoted"),
                  ("r4", "r3", 4, "rejected")])
    assert reg.promoted_model(con) == "/models/r3"
    assert reg.current_model(con)["model_id"] == "r3"  # a rejected round never becomes the next parent
    assert reg.lineage(con, "r4")["model_id"].tolist() == ["r4", "r3", "r1", "base"]
    assert reg.lineage(con, "r2")["model_id"].tolist() == ["r2", "r1", "base"]


def _corpus(con, n=12):
    docs = pd.DataFrame({"doc_id": [f"D{i:02d}" for i in range(n)],
                         "published_at": [pd.Timestamp("2026-01-01") + pd.Timedelta(days=i) for i in range(n)],
                         "topic": "t", "title": "T", "text": [f"text {i}" for i in range(n)]})
    write_table(con, "corpus_documents", docs)
    return docs


def _round(con, round_no, status, doc_ids, docs, run_config=None):
    reg.ensure_tables(con)
    snap = con.execute("select id from wb.current_snapshot()").fetchone()[0]
    last = docs.set_index("doc_id").loc[doc_ids[-1]]
    rid = f"cpt-r{round_no}"
    rounds = pd.DataFrame([{"round": round_no, "model_id": rid, "parent_id": None, "run_id": rid, "status": status,
                            "watermark_to_at": last["published_at"], "watermark_to_doc": doc_ids[-1],
                            "data_snapshot": snap, "n_docs": len(doc_ids)}])
    rd = pd.DataFrame({"round": round_no, "model_id": rid, "ordinal": range(len(doc_ids)), "doc_id": doc_ids,
                       "source": "new"})
    runs_row = pd.DataFrame([{"run_id": rid, "kind": "cpt", "config_json": json.dumps(run_config or {}),
                              "status": "completed"}])
    transaction(con, lambda c: (reg.insert(c, "cpt_rounds", rounds), reg.insert(c, "cpt_round_documents", rd),
                                reg.insert(c, "runs", runs_row)))


def _split(docs, fraction=0.1, seed=0):
    held = [d for d in docs["doc_id"] if stable_fraction(d, seed) < fraction]
    return [d for d in docs["doc_id"] if d not in held], held


def test_check_rounds_passes_a_clean_history(con):
    docs = _corpus(con)
    train, held = _split(docs)
    _round(con, 1, "promoted", train[:5], docs)
    _round(con, 2, "rejected", train[5:], docs)
    counts = reg.check_rounds(con)
    assert counts["rounds"] == 2 and counts["trained_docs"] == len(train) and counts["pending_docs"] == 0
    states = reg.corpus_status(con).groupby("state")["n_docs"].sum().to_dict()
    assert states == {"round 1": 5, "round 2 (rejected)": len(train) - 5, **({"held out": len(held)} if held else {})}


def test_check_rounds_finds_a_document_trained_twice(con):
    docs = _corpus(con)
    train, _ = _split(docs)
    _round(con, 1, "promoted", train[:5], docs)
    _round(con, 2, "promoted", train[4:], docs)  # train[4] again
    with pytest.raises(WorkspaceError, match=rf"1 documents trained as new data by two rounds \(e.g. {train[4]}\)"):
        reg.check_rounds(con)


def test_check_rounds_finds_a_skipped_document(con):
    docs = _corpus(con)
    train, _ = _split(docs)
    _round(con, 1, "promoted", train[:3] + train[4:6], docs)  # train[3] lies below the watermark, never trained
    with pytest.raises(WorkspaceError, match=rf"1 documents skipped below the watermark \(e.g. {train[3]}\)"):
        reg.check_rounds(con)


def test_check_rounds_finds_a_held_out_document_trained(con):
    docs = _corpus(con, n=40)
    train, held = _split(docs, fraction=0.3, seed=5)
    assert held
    _round(con, 1, "promoted", sorted(train[:4] + held[:1]), docs, run_config={"heldout_fraction": 0.3, "heldout_seed": 5})
    with pytest.raises(WorkspaceError, match=r"1 held-out documents trained"):
        reg.check_rounds(con)
