"""Run tables: runs, run_metrics, predictions; a run's sweep and trial; old workspaces migrate."""
from __future__ import annotations

import pytest

from workbench import runs


def columns(con, table: str) -> list[str]:
    return [r[0] for r in con.execute("select column_name from duckdb_columns() where database_name = 'wb'"
                                      " and table_name = ? order by column_index", [table]).fetchall()]


def test_start_run_records_sweep_and_trial(con):
    plain = runs.start_run(con, model="m", task="intent", kind="classifier", config={"lr": 1e-3})
    trial = runs.start_run(con, model="m", task="intent", kind="classifier", config={"lr": 1e-3},
                           sweep_id="sweep-1", sweep_trial=4)
    got = dict((r[0], r[1:]) for r in con.execute("select run_id, sweep_id, sweep_trial, status, config_json"
                                                  " from runs").fetchall())
    assert got[plain] == (None, None, "running", '{"lr": 0.001}')
    assert got[trial] == ("sweep-1", 4, "running", '{"lr": 0.001}')
    assert con.execute("select run_id from runs where sweep_id = ? and sweep_trial = ?",
                       ["sweep-1", 4]).fetchall() == [(trial,)]
    with pytest.raises(ValueError, match="sweep_trial=2 needs a sweep_id"):
        runs.start_run(con, model="m", task="intent", kind="classifier", config={}, sweep_trial=2)
    assert con.execute("select count(*) from runs").fetchone()[0] == 2


def test_a_runs_table_from_before_sweep_trial_gets_the_column(con):
    con.execute("""create table runs (run_id varchar, started_at timestamp, finished_at timestamp, model varchar,
        task varchar, kind varchar, config_json varchar, data_snapshot bigint, status varchar, sweep_id varchar,
        model_path varchar, error varchar)""")
    con.execute("insert into runs (run_id, status) values ('old-run', 'completed')")
    runs.ensure_tables(con)
    assert "sweep_trial" in columns(con, "runs")
    new = runs.start_run(con, model="m", task="t", kind="sft", config={}, sweep_id="s", sweep_trial=0)
    assert dict(con.execute("select run_id, sweep_trial from runs").fetchall()) == {new: 0, "old-run": None}
    snap = con.execute("select id from wb.current_snapshot()").fetchone()[0]
    runs.ensure_tables(con)  # a no-op once migrated: no new snapshot
    assert con.execute("select id from wb.current_snapshot()").fetchone()[0] == snap


def test_write_predictions_counts_correct_as_the_trainers_do(con):
    import pandas as pd

    frame = pd.DataFrame({"example_id": ["a", "b", "c", "d"], "prompt": "p",
                          "prediction": ["Technical _ issue", " REFUND ", "billing.", "refund"],
                          "label": ["technical_issue", "refund", "billing", "billing"]})
    runs.write_predictions(con, "r1", "test", frame)
    got = dict(con.execute("select example_id, correct from predictions where run_id = 'r1'").fetchall())
    assert got == {"a": True, "b": True, "c": True, "d": False}
