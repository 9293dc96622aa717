"""Spark gives DuckDB's results where the two used to part: the engine recorded in flow_runs, the
flow builder on Spark, CSV files whose lines end with a lone CR, integer casts of numeric text.

Tiny tables and files on the shared session-scoped ``local[2]`` session; skipped only where Java is missing.
"""
from __future__ import annotations

import pytest

from workbench import data
from workbench.flow_widget import FlowBuilder
from workbench.flows import Flow, run_flow

from test_flow_widget import make_stg_messages
from test_spark import needs_java, spark  # noqa: F401  (the session-scoped local[2] Spark fixture)

pytestmark = [pytest.mark.spark, needs_java]

SMALL_FLOW = {
    "name": "small", "source": {"table": "stg_messages"}, "key": "source_row_id", "output": "flow_small",
    "steps": [
        {"step": "filter", "where": "channel <> 'app'", "reason": "no app traffic"},
        {"step": "drop_nulls", "columns": ["text"]},
        {"step": "normalize_text", "column": "text", "lowercase": True},
        {"step": "dedup", "columns": ["text"]},
        {"step": "mask_pii", "columns": ["text"]},
    ]}


def rows(con, sql: str, params=()) -> list[tuple]:
    return sorted(con.execute(sql, list(params)).fetchall(), key=lambda r: tuple((v is None, str(v)) for v in r))


def test_flow_runs_record_the_engine_and_spark_target(con, spark):
    make_stg_messages(con)
    flow = Flow.from_dict(SMALL_FLOW)
    runs = [run_flow(con, flow, output=f"small_{e}", engine=e, spark=spark if e == "spark" else None)
            for e in ("duckdb", "spark")]
    got = con.execute("select run_id, engine, spark_target from flow_runs order by started_at").fetchall()
    assert got == [(runs[0].run_id, "duckdb", None), (runs[1].run_id, "spark", "local[2]")]
    assert rows(con, "select * from small_duckdb") == rows(con, "select * from small_spark")


def test_flow_builder_previews_and_runs_on_spark(con, spark, tmp_path):
    """The builder's buttons with engine="spark": Preview and Run on the local session, with the step
    counts and output DuckDB gives (the same builder switched to DuckDB), and flow_runs says Spark."""
    make_stg_messages(con)
    b = FlowBuilder(con, Flow.from_dict(SMALL_FLOW), flow_dir=tmp_path, engine="spark", spark_master="local[2]")
    assert "Preview and Run use <b>Spark local[2]</b>" in b.engine_info.value
    b.preview_button.click()
    assert "preview on Spark local[2]: 14 rows in" in b.status.value, b.status.value
    on_spark = [(r.kind, r.rows_in, r.rows_out, r.reason) for r in b.last_preview]
    assert not con.execute("select count(*) from duckdb_tables() where table_name = 'flow_small'").fetchone()[0]
    b.run_button.click()
    assert "on Spark local[2]: wrote flow_small" in b.status.value, b.status.value
    assert [(r.kind, r.rows_in, r.rows_out, r.reason) for r in b.last_preview] == on_spark
    spark_rows = rows(con, "select * from flow_small")

    b.engine.value = "duckdb"
    b.preview_button.click()
    assert [(r.kind, r.rows_in, r.rows_out, r.reason) for r in b.last_preview] == on_spark
    assert on_spark[1][2] < 14 and on_spark[-1][2] < on_spark[1][2]  # rows did leave
    b.run_button.click()
    assert rows(con, "select * from flow_small") == spark_rows
    assert con.execute("select engine, spark_target from flow_runs order by started_at").fetchall() == [
        ("spark", "local[2]"), ("duckdb", None)]
