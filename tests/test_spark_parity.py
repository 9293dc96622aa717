"""Spark gives DuckDB's results where the two used to part: the engine recorded in flow_runs, the
flow builder on Spark, CSV files whose lines end with a lone CR, integer casts of numeric text.

Tiny tables and files on the shared session-scoped ``local[2]`` session; skipped only where Java is missing.
"""
from __future__ import annotations

import re

import pytest

import workbench
from workbench import data
from workbench.flow_widget import FlowBuilder
from workbench.flows import Flow, run_flow
from workbench.workspace import table_exists

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


def test_flow_builder_previews_and_runs_on_spark(con, spark, tmp_path):
    """The builder's buttons with engine="spark": Preview and Run on the local session, with the step
    counts and output DuckDB gives (the same builder switched to DuckDB); flow_runs records each run's
    engine and Spark target (the master URL; null on DuckDB)."""
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


# ---------------------------------------------------------------------------------------- lone CR line ends

CR_FILES = {  # lines ending with \r alone (old Mac): each engine reads them with the same rows and ids
    "cr_plain.csv": b'id,text\r1,hello\r2,"a, ""b"""\r3,x',  # no line end after the last line
    # blank lines and \r in quoted fields (data) are not counted by DuckDB's line numbers: 3,... is line 3
    "cr_multi_line.csv": b'id,text\r1,"multi\rline"\r\r3," two\r\rbreaks"\r4,y\r\r',
}
CR_REFUSED = {  # refused by both engines, naming the file
    "cr_reject.csv": b'id,text\r1,hello\r3\r4,ok\r',  # a record with too few fields: cannot be numbered
    "cr_then_lf.csv": b'id,text\r1,hello\n2,x\r',  # mixed lone \r and \n line ends
}


def _ingested(con, report) -> tuple:
    return (report, con.execute("select * from t order by source_file, source_line").fetchall(),
            con.execute("select source_row_id, source_line, reason, raw_line from ingest_rejects").fetchall())


def test_lone_cr_csv_ingests_as_on_duckdb(spark, tmp_path):
    for name, body in CR_FILES.items():
        (tmp_path / name).write_bytes(body)
    files = [tmp_path / n for n in CR_FILES]
    got = {}
    for engine in ("duckdb", "spark"):
        con = workbench.connect(tmp_path / engine)
        got[engine] = _ingested(con, data.ingest(con, files, table="t", engine=engine, fmt="csv"))
        con.close()
    assert got["spark"] == got["duckdb"]
    report, rows, rejects = got["duckdb"]
    assert [r["rows"] for r in report.values()] == [3, 3] and not rejects
    ids = {r[0]: r[3:] for r in rows}
    assert ids["cr_plain.csv:3"] == ("2", 'a, "b"') and ids["cr_plain.csv:4"] == ("3", "x")
    assert ids["cr_multi_line.csv:2"] == ("1", "multi\rline") and ids["cr_multi_line.csv:3"] == ("3", " two\r\rbreaks")


@pytest.mark.parametrize("name", sorted(CR_REFUSED))
def test_lone_cr_csv_that_cannot_be_read_alike_is_refused_on_both(spark, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(CR_REFUSED[name])
    said = {}
    for engine in ("duckdb", "spark"):
        con = workbench.connect(tmp_path / engine)
        with pytest.raises(data.IngestError, match=re.escape(f"{path}: ")) as err:
            data.ingest(con, [path], table="t", engine=engine, fmt="csv")
        said[engine] = str(err.value)
        assert not table_exists(con, "t")
        con.close()
    if name == "cr_reject.csv":  # the same words on both engines, naming the record's line and reason
        assert said["duckdb"] == said["spark"]
        assert f"{path}: line 3: missing columns" in said["duckdb"] and "lines end with \\r alone" in said["duckdb"]


def test_lone_cr_csv_as_a_flow_source(con, spark, tmp_path):
    path = tmp_path / "cr_source.csv"
    path.write_bytes(CR_FILES["cr_multi_line.csv"] + b"5,Hello\r6,hello\r")
    flow = Flow.from_dict({"name": "cr", "source": {"file": str(path)}, "key": "id", "steps": [
        {"step": "normalize_text", "column": "text", "lowercase": True},
        {"step": "dedup", "columns": ["text"]}]})
    for e in ("duckdb", "spark"):
        run_flow(con, flow, output=f"cr_{e}", engine=e, spark=spark if e == "spark" else None)
    assert rows(con, "select * from cr_spark") == rows(con, "select * from cr_duckdb")
    assert rows(con, "select id, text from cr_duckdb") == [
        ("1", "multi line"), ("3", "two breaks"), ("4", "y"), ("5", "hello")]  # whitespace collapsed


# ---------------------------------------------------------------------------------------- numeric text casts

N = None
# text -> DuckDB's try_cast as integer, bigint, double: the reference the Spark flow path must give
NUMERIC_TEXT = [
    ("0x10", 16, 16, N), ("0X1F", 31, 31, N), ("0x1_0", 16, 16, N), ("0x0000000000000000010", 16, 16, N),
    ("0xFFFFFFFF", N, 4294967295, N), ("0x7FFFFFFFFFFFFFFF", N, 9223372036854775807, N),
    ("0x8000000000000000", N, N, N), ("0x1FFFFFFFFFFFFFFFF", N, N, N), ("0x0", 0, 0, N),
    ("-0x10", N, N, N), ("+0x10", N, N, N), (" 0x10 ", N, N, N), ("0x", N, N, N), ("0xg", N, N, N),
    ("0x10.5", N, N, N), ("0b101", 5, 5, N), ("0B11", 3, 3, N), ("0o17", N, N, N),
    ("+5", 5, 5, 5.0), (" 7 ", 7, 7, 7.0), ("\t8\n", 8, 8, 8.0), ("\xa05", N, N, N),
    ("1e3", 1000, 1000, 1000.0), ("1.5e1", 15, 15, 15.0), ("1e-1", 0, 0, 0.1), ("4.5e-1", 0, 0, 0.45),
    ("1.25e1", 13, 13, 12.5), ("1e10", N, 10000000000, 1e10),
    ("1_000", 1000, 1000, 1000.0), ("1_000.5", 1001, 1001, 1000.5), ("1e1_0", N, 10000000000, 1e10),
    ("1__0", N, N, N), ("_1", N, N, N), ("1_", N, N, N),
    (".5", 1, 1, 0.5), ("-.5", -1, -1, -0.5), ("5.", 5, 5, 5.0), (".", N, N, N), ("", N, N, N), ("  ", N, N, N),
    ("2.5", 3, 3, 2.5), ("-2.5", -3, -3, -2.5), ("1.4999999999", 1, 1, 1.4999999999),
    ("4.9999999999e-1", 0, 0, 0.49999999999), ("-9223372036854775808", N, -9223372036854775808, -2.0 ** 63),
    ("2147483647.5", N, 2147483648, 2147483647.5), ("1,000", N, N, N), ("00012", 12, 12, 12.0),
    ("inf", N, N, float("inf")), ("1d", N, N, N), ("1f", N, N, N), ("١٢", N, N, N),
]


def test_numeric_text_casts_match_duckdb(con, spark):
    """The select step's casts (try_cast) and a filter's cast of text: the table above on both engines;
    then cast (safe_cast: false) of the values both read."""
    con.execute("create table nums (id integer, i varchar, b varchar, d varchar)")
    con.executemany("insert into nums values (?, ?, ?, ?)", [(k, t, t, t) for k, (t, *_) in enumerate(NUMERIC_TEXT)])
    flow = Flow.from_dict({"name": "nums", "source": {"table": "nums"}, "steps": [
        {"step": "filter", "where": "try_cast(i as bigint) is distinct from 16", "reason": "hex 16"},
        {"step": "select", "cast": {"i": "integer", "b": "bigint", "d": "double"}}]})
    got = {}
    for e in ("duckdb", "spark"):
        run_flow(con, flow, output=f"nums_{e}", engine=e, spark=spark if e == "spark" else None)
        got[e] = {r[0]: r[1:] for r in con.execute(f"select * from nums_{e}").fetchall()}
    kept = {k: want for k, (t, *want) in enumerate(NUMERIC_TEXT) if want[1] != 16}
    assert {k: list(v) for k, v in got["duckdb"].items()} == kept  # the table is DuckDB's
    assert got["spark"] == got["duckdb"]

    readable = ", ".join(str(k) for k, r in enumerate(NUMERIC_TEXT) if r[2] is not None)
    flow = Flow.from_dict({"name": "strict", "source": {"table": "nums"}, "steps": [
        {"step": "filter", "where": f"id in ({readable})"},
        {"step": "select", "columns": ["id", "b"], "cast": {"b": "bigint"}, "safe_cast": False}]})
    for e in ("duckdb", "spark"):
        run_flow(con, flow, output=f"strict_{e}", engine=e, spark=spark if e == "spark" else None)
    assert rows(con, "select * from strict_spark") == rows(con, "select * from strict_duckdb")
    assert len(rows(con, "select * from strict_duckdb")) == sum(r[2] is not None for r in NUMERIC_TEXT)


def test_compiled_spark_sql_casts_as_duckdb(con, spark):
    """`workbench flow compile --spark` transpiles each step with its input types, as run_flow on Spark
    does: the compiled query's casts of numeric text give DuckDB's values (plain SQLGlot did not)."""
    from workbench.flows import compile_spark_sql, compile_sql, spark_sql

    con.execute("create table nums2 (id integer, i varchar, d varchar, x double)")
    con.executemany("insert into nums2 values (?, ?, ?, ?)",
                    [(k, t, t, 2.5 + k) for k, (t, *_) in enumerate(NUMERIC_TEXT)])
    flow = Flow.from_dict({"name": "nums2", "source": {"table": "nums2"}, "steps": [
        {"step": "filter", "where": "try_cast(i as bigint) is distinct from 16", "reason": "hex 16"},
        {"step": "select", "cast": {"i": "integer", "d": "double", "x": "bigint"}}]})
    want = rows(con, compile_sql(flow, con, output=None))
    spark.createDataFrame(con.execute("select * from nums2").df()).createOrReplaceTempView("nums2")
    sql = compile_spark_sql(flow, con, output=None)
    assert sql.startswith("-- query:   flow nums2") and "CREATE" not in sql
    got = sorted((tuple(r) for r in spark.sql(sql.rstrip().rstrip(";")).collect()),
                 key=lambda r: tuple((v is None, str(v)) for v in r))
    assert got == want and len(want) == sum(r[2] != 16 for r in NUMERIC_TEXT)
    plain = spark_sql(compile_sql(flow, con, output=None)).rstrip().rstrip(";")  # SQLGlot and the fixes only
    assert sorted((tuple(r) for r in spark.sql(plain).collect()), key=lambda r: tuple((v is None, str(v)) for v in r)) != want
    assert "CREATE OR REPLACE TABLE `nums2_out`" in compile_spark_sql(flow, con, output="nums2_out")
