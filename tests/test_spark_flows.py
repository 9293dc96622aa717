"""Flows on Spark give DuckDB's results row for row: the output, flow_step_stats and flow_row_fate.

One local Spark session (``local[2]``, reused per process as in tests/test_spark.py) and one 300-row
spine serve the module. Every comparison runs the same flow with ``engine="duckdb"`` and
``engine="spark"`` into two tables of one workspace. Skipped only where Java is missing.
"""
from __future__ import annotations

import json

import pytest

import workbench
from workbench import data
from workbench.cli import main
from workbench.flow_steps import STEPS
from workbench.flows import FLOW_DIR, Flow, FlowError, load_flow, run_flow
from workbench.workspace import table_exists, workspace_root

from test_spark import needs_java

pytestmark = [pytest.mark.spark, needs_java]

# Every step kind, with the options that need a dialect fix on Spark: NFC, a \b pattern with a \1
# replacement, word shingles, a template of the library, a stratified split of resampled copies
# (ties), a script filter over Cyrillic text, and a row-removing step after oversampling (several fates for one key).
EVERY_STEP = {
    "name": "every_step", "source": {"table": "stg_messages"}, "key": "source_row_id",
    "steps": [
        {"step": "select", "columns": ["source_row_id", "customer_id", "created_at", "channel", "region", "text",
                                       "intent", "reply", "source_line"],
         "rename": {"source_row_id": "rid", "reply": "answer"},
         "cast": {"created_at": "timestamp", "source_line": "integer"}},
        {"step": "filter", "where": "not (region = 'west' and channel = 'app')", "reason": "no west app traffic"},
        {"step": "drop_nulls", "columns": ["text", "intent"]},
        {"step": "normalize_text", "column": "text", "nfc": True},
        {"step": "normalize_text", "column": "intent", "lowercase": True, "output": "label"},
        {"step": "regex_replace", "column": "text", "pattern": r"\b(order|account)\b",
         "replacement": r"<\1 заказ>", "output": "tagged"},
        {"step": "mask_pii", "columns": ["text", "answer", "tagged"], "phones": False},
        {"step": "length_filter", "column": "text", "unit": "tokens", "min": 6, "max": 40},
        {"step": "script_filter", "column": "tagged", "script": "latin", "min_ratio": 0.9},  # short tagged texts
        {"step": "dedup", "columns": ["text"], "order_by": ["created_at"], "keep": "last"},
        {"step": "near_dedup", "column": "text", "unit": "words", "ngram": 2, "threshold": 0.5, "bands": 4,
         "rows_per_band": 2, "seed": 3},
        {"step": "map_labels", "column": "label", "unmapped": "drop",
         "mapping": {"billing": "payments", "refund": "payments", "shipping": "delivery",
                     "technical_issue": "tech", "account_access": "account"}},
        {"step": "resample", "label": "label", "key": "rid", "target": "max", "seed": 5, "max_copies": 3},
        {"step": "apply_template", "prompt": "Message ({{ channel | upper }}): {{ text | lower }}\nLabel:",
         "completion": " {{ label }}"},
        {"step": "apply_template", "template_id": "ic-which-category", "prompt_column": "prompt2",
         "completion_column": "completion2"},
        {"step": "split", "key": "rid", "seed": 11, "stratify": "label", "train": 0.6, "validation": 0.2},
        {"step": "filter", "where": "split <> 'test' or sample_copy = 0", "reason": "no oversampled copies in test"},
    ]}


@pytest.fixture(scope="module")
def spine(spark, tmp_path_factory):
    """A workspace holding the spine of a 300-row generated sample (stg_messages, examples, ...)."""
    con = workbench.connect(tmp_path_factory.mktemp("spark_flows"))
    data.build_spine(con, rows=300, seed=7)
    yield con
    con.close()


def rows(con, sql: str, params=()) -> list[tuple]:
    return sorted(con.execute(sql, list(params)).fetchall(), key=lambda r: tuple((v is None, str(v)) for v in r))


def both_engines(con, flow: Flow, spark) -> dict[str, list[tuple]]:
    """Run ``flow`` on DuckDB and on Spark; assert the same output (schema and rows), step stats and
    row fates; return DuckDB's stats and fates for the caller's own checks."""
    runs = {e: run_flow(con, flow, output=f"{flow.name}_{e}", engine=e, spark=spark if e == "spark" else None)
            for e in ("duckdb", "spark")}
    duck, spk = (f"{flow.name}_{e}" for e in ("duckdb", "spark"))
    assert con.execute(f"describe {duck}").fetchall() == con.execute(f"describe {spk}").fetchall()
    out = rows(con, f"select * from {duck}")
    assert out == rows(con, f"select * from {spk}") and out, flow.name
    got = {}
    for what, sql in (("stats", "select step_index, step_name, rows_in, rows_out, reason from flow_step_stats "
                                "where run_id = ?"),
                      ("fates", "select row_key, step_index, step_name, reason from flow_row_fate where run_id = ?")):
        d, s = (rows(con, sql, [runs[e].run_id]) for e in ("duckdb", "spark"))
        assert d == s, (flow.name, what)
        got[what] = d
    assert runs["spark"].stats().equals(runs["duckdb"].stats())
    assert not (workspace_root(con) / "spark" / "_flows" / runs["spark"].run_id).exists()  # staging removed
    got["output"] = out
    return got


def test_bundled_flows_match_duckdb(spine, spark):
    files = sorted(FLOW_DIR.glob("*.yaml"))
    assert files
    for path in files:
        got = both_engines(spine, load_flow(path), spark)
        removed = {r[2] for r in got["fates"]}
        assert {"drop_nulls", "dedup", "near_dedup"} <= removed, path.name


def test_every_step_kind_matches_duckdb(spine, spark):
    flow = Flow.from_dict(EVERY_STEP)
    assert {s["step"] for s in flow.steps} == set(STEPS)  # a new step kind must join this flow
    got = both_engines(spine, flow, spark)
    removed = {r[0] for r in got["stats"] if r[2] > r[3]}
    assert removed >= {2, 3, 8, 9, 10, 11, 12, 17}  # every step that can remove rows did, on this data
    keys = [r[0] for r in got["fates"] if r[2] == "filter" and r[1] == 17]
    assert len(keys) > len(set(keys))  # oversampled copies: one fate per removed copy
    tagged = "select count(*) from every_step_spark where regexp_matches(tagged, '<(order|account) заказ>')"
    assert spine.execute(tagged).fetchone()[0] > 0  # the \1 replacement on Spark


def test_file_sources_match_duckdb(spine, spark, tmp_path):
    """CSV (text values, quotes, blanks), JSONL (typed values) and Parquet (typed columns) sources."""
    (tmp_path / "m.csv").write_text(
        'id,text,label,score,seen\n'
        'r1,"Hello, world: my order 12 is late",billing,1.5,2024-01-15 10:00:00\n'
        'r2,"He said ""refund me"" twice",refund,,2024-01-16 11:00:00\n'
        'r3,,shipping,3,2024-01-17\n'
        'r4,Ünïcödé   text here ok,billing,4,bad date\n'
        'r5,"Hello, world: my order 12 is late",billing,2,2024-01-18 09:30:00\n'
        'r6,short,refund,5,2024-01-19 00:00:00\n', encoding="utf-8")
    recs = [{"id": "j1", "text": "Where is my parcel?", "n": 3, "x": 1.5, "ok": True, "seen": "2024-02-01 08:00:00"},
            {"id": "j2", "text": "Card charged twice", "n": -2, "x": 1e3, "ok": False, "seen": "2024-02-02 09:00:00"},
            {"id": "j3", "text": None, "n": None, "x": 0.25, "ok": None, "seen": None},
            {"id": "j4", "text": "Where  is my parcel?", "n": 7, "x": -3.0, "ok": True, "seen": "2024-02-03 10:00:00"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    spine.execute(f"copy (select source_row_id as id, text, intent as label, cast(source_line as integer) as score, "
                  f"try_cast(created_at as timestamp) as seen from stg_messages) to '{tmp_path / 'm.parquet'}' "
                  "(format parquet)")  # typed columns, null and duplicate texts
    for fmt, extra in (("csv", [{"step": "select", "cast": {"score": "double", "seen": "timestamp"}}]),
                       ("jsonl", []), ("parquet", [])):
        flow = Flow.from_dict({"name": f"file_{fmt}", "source": {"file": str(tmp_path / f"m.{fmt}")}, "key": "id",
                               "steps": extra + [
                                   {"step": "drop_nulls", "columns": ["text"]},
                                   {"step": "normalize_text", "column": "text", "lowercase": True},
                                   {"step": "dedup", "columns": ["text"]},
                                   {"step": "split", "key": "id", "seed": 1}]})
        got = both_engines(spine, flow, spark)
        assert {r[2] for r in got["fates"]} >= {"drop_nulls", "dedup"}, fmt
    types = dict(spine.execute("select column_name, data_type from information_schema.columns "
                               "where table_name = 'file_jsonl_spark'").fetchall())
    assert types["n"] in ("BIGINT", "HUGEINT") and (types["x"], types["ok"], types["seen"]) == (
        "DOUBLE", "BOOLEAN", "TIMESTAMP")  # DuckDB's inferred types, kept (Spark holds HUGEINT as a decimal)


def test_integer_casts_round_as_duckdb_does(spine, spark):
    """Spark truncates 2.5 and rejects the text '2.5'; DuckDB rounds (text and DECIMAL half away from
    zero, DOUBLE half to even): the select step's casts give DuckDB's integers on Spark."""
    spine.execute("create or replace table casts as select * from (values "
                  "('a', '2.5', 2.5, 2.50::decimal(6, 2)), ('b', '-1.5', -0.5, -1.50), ('c', ' 7 ', 3.5, 0.49), "
                  "('d', '1e3', -2.5, 1.5), ('e', 'oops', 1e15, null), ('f', null, 12345.5, -2.5)) "
                  "as t(id, txt, dbl, dec)")
    flow = Flow.from_dict({"name": "casts", "source": {"table": "casts"}, "steps": [
        {"step": "select", "cast": {"txt": "integer", "dbl": "bigint", "dec": "integer"}},
        {"step": "filter", "where": "cast(dbl as double) < 1e9 or txt is null"}]})
    got = both_engines(spine, flow, spark)
    assert got["output"][:4] == [("a", 3, 2, 3), ("b", -2, 0, -2), ("c", 7, 4, 0), ("d", 1000, -2, 2)]


def test_failures_name_the_step_and_write_nothing(spine, spark, tmp_path):
    before = spine.execute("select count(*) from flow_runs").fetchone()[0] if table_exists(spine, "flow_runs") else 0

    def fails(flow: dict, match: str) -> None:
        f = Flow.from_dict({"source": {"table": "stg_messages"}, **flow})
        with pytest.raises(FlowError, match=match):
            run_flow(spine, f, engine="spark", spark=spark)
        assert not table_exists(spine, f.output_table)
        assert not list((workspace_root(spine) / "spark" / "_flows").glob("*"))

    # a value Spark cannot cast (safe_cast off): the step fails at run time
    fails({"name": "bad_cast", "steps": [{"step": "filter", "where": "channel = 'chat'"},
                                         {"step": "select", "cast": {"text": "integer"}, "safe_cast": False}]},
          r"step 2 \(select\) failed on Spark: .*CAST")
    # a construct whose result differs on Spark is refused before anything runs there
    fails({"name": "trap", "steps": [{"step": "filter", "where": "date_diff('day', cast(created_at as date), "
                                                                "current_date) > 0"}]},
          r"step 1 \(filter\): date_diff")
    # a file source with a line the reader rejects
    (tmp_path / "bad.csv").write_text('id,text\nr1,fine\nr2,"never closed\nr3,ok\n')
    fails({"name": "bad_file", "source": {"file": str(tmp_path / "bad.csv")}, "steps": []},
          r"field 'source.file': .*bad.csv: line 3: unquoted value")
    # a JSON key DuckDB reads as a nested value: the Spark reader gives text only, so it is refused
    (tmp_path / "nested.jsonl").write_text('{"id": "a", "meta": {"k": 1}}\n{"id": "b", "meta": {"k": 2}}\n')
    fails({"name": "nested", "source": {"file": str(tmp_path / "nested.jsonl")}, "steps": []},
          r"nested.jsonl: column 'meta': DuckDB reads it as STRUCT")
    with pytest.raises(FlowError, match="engine 'polars'"):
        run_flow(spine, "support_messages", engine="polars")
    after = spine.execute("select count(*) from flow_runs").fetchone()[0] if table_exists(spine, "flow_runs") else 0
    assert after == before


def test_cli_flow_run_on_spark(spine, spark, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_HOME", str(workspace_root(spine)))
    path = tmp_path / "cli_flow.yaml"
    path.write_text("name: cli_flow\nsource: {table: examples}\nkey: example_id\nsteps:\n"
                    "- {step: length_filter, column: text, min: 30}\n")
    assert main(["flow", "run", str(path), "--engine", "spark", "--spark-master", "local[2]"]) == 0
    out = capsys.readouterr().out
    n = spine.execute("select count(*) from examples where length(text) >= 30").fetchone()[0]
    assert f"wrote flow_cli_flow ({n} rows)" in out and 0 < n
    assert spine.execute("select count(*) from flow_cli_flow").fetchone()[0] == n
    assert main(["flow", "run", str(path), "--engine", "spark", "--spark-master", "local[two]"]) == 2
    assert "spark_master 'local[two]'" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_flow_on_spark_gives_duckdbs_rows(spark):
    """`workbench flow compile --spark` (spark_sql: SQLGlot plus the dialect fixes) run on Spark."""
    import duckdb
    from test_flows import SAMPLE_ROWS, SAMPLE_STEPS, make

    from workbench.flows import compile_sql, spark_sql

    mem = duckdb.connect()
    make(mem, SAMPLE_ROWS, ["source_row_id", "message_id", "channel", "text", "intent"], name="stg_messages")
    # near_dedup left out: as one query Spark computes its CTEs once per reference (run_flow does not)
    steps = [dict(s) for s in SAMPLE_STEPS if s["step"] != "near_dedup"]
    sql = compile_sql(Flow.from_dict({"name": "sample", "source": "stg_messages", "steps": steps}), mem, output=None)
    spark.createDataFrame(mem.execute("select * from stg_messages").df()).createOrReplaceTempView("stg_messages")
    got = sorted(tuple(r) for r in spark.sql(spark_sql(sql).rstrip().rstrip(";")).collect())
    assert got == sorted(mem.execute(sql).fetchall()) and got
    with pytest.raises(FlowError, match="date_diff"):
        spark_sql("select date_diff('day', a, b) from t")
