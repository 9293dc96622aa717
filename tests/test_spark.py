"""The Spark engine gives DuckDB's results row for row: ingest, cleaning, dedup, splits, row_fate.

One local Spark session (``local[2]``, tests/conftest.py's ``spark``) serves every Spark test file; the
100,000-row comparison runs once. The Spark Connect test starts a real Connect server on 127.0.0.1
(pyspark's sbin script) and runs notebooks 01, 02, 05, 06 and 11 through it with ``-p engine spark``; it
runs last in the session (conftest.py), as connecting stops the local session. Skipped only where Java
is missing.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

import workbench
from workbench import data, flows, pipeline, template_sql
from workbench import spark as wbspark
from workbench.sample import write_sample
from workbench.workspace import _config, run_sql_file, workspace_root, write_table

from conftest import needs_java, spark  # noqa: F401  (the shared local Spark; other test files import both from here)

pytestmark = [pytest.mark.spark]
COUNTS = re.compile(r"(missing columns|too many columns): [^;]*")


def attach_both(a: Path, b: Path) -> duckdb.DuckDBPyConnection:
    """One DuckDB connection with workspace ``a`` as catalog ``a`` and ``b`` as ``b`` (read only)."""
    con = duckdb.connect(config=_config())
    for alias, path in (("a", a), ("b", b)):
        con.execute(f"attach 'ducklake:sqlite:{path / 'wb.sqlite'}' as {alias} (read_only)")
    return con


def differences(con, table: str, columns: str = "*", where: str = "true") -> tuple[int, int, int]:
    """(rows in a, rows only in a, rows only in b), comparing whole rows as multisets."""
    q = "select {c} from {db}.{t} where {w}"
    a, b = (q.format(c=columns, db=db, t=table, w=where) for db in ("a", "b"))
    n = con.execute(f"select count(*) from ({a})").fetchone()[0]
    only_a = con.execute(f"select count(*) from ({a} except all {b})").fetchone()[0]
    only_b = con.execute(f"select count(*) from ({b} except all {a})").fetchone()[0]
    return n, only_a, only_b


def schema(con, db: str, table: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.execute(f"describe {db}.{table}").fetchall()]


# ---------------------------------------------------------------------------------------- no Spark needed

def test_re2_patterns_become_equivalent_java_patterns():
    j = wbspark.java_regex
    assert j(r"\s+") == "[\\t\\n\\f\\r ]+"                    # RE2's \s has no \v
    assert j(r"[^\S ]") == "[^[^\\t\\n\\f\\r ] ]"               # whitespace but a space
    assert j(r"a$") == "a\\z" and j(r"(?m)a$") == "(?m)a$"     # Java's $ also matches before a final \n
    assert j("a.b") == "a[^\\n]b" and j("[.]") == "[.]"        # Java's . also stops at \r
    assert "(?<=[0-9A-Za-z_])" in j(r"\bx")                    # Java 17's \b counts é as a word char
    assert j(r"[a[b]") == "[a\\[b]" and j(r"[]a]") == "[\\]a]"
    assert j(r"(?P<n>a)") == "(?<n>a)"
    assert wbspark.java_replacement(r"<\1>$") == "<$1>\\$"
    with pytest.raises(wbspark.SparkError, match="POSIX"):
        j("[[:alpha:]]")


def test_every_sql_file_transpiles_to_spark():
    import sqlglot

    from workbench.workspace import SQL_DIR, render_sql, sql_file_params

    for path in sorted(SQL_DIR.glob("*.sql")):
        params = {p: 1 for p in sql_file_params(path)}
        for stmt in sqlglot.parse(render_sql(path.read_text(), params), read="duckdb"):
            if stmt is not None:
                assert wbspark.to_spark_sql(stmt, source=path.name)


def test_unportable_sql_is_refused_with_the_file_named(workspace, tmp_path):
    import sqlglot

    stmt = sqlglot.parse_one("select regexp_replace(x, 'a', 'b') from t", read="duckdb")
    with pytest.raises(wbspark.SparkError, match="f.sql.*without the 'g' flag"):
        wbspark.to_spark_sql(stmt, source="f.sql")
    traps = {"select * from t qualify row_number() over (order by a) = 1": "QUALIFY over SELECT",
             "select format('{}', a) from t": "printf",
             "select * from a asof join b on a.k = b.k and a.t >= b.t": "ASOF JOIN",
             "select substr(a, 0, 3) from t": "start at 1",
             "select date_diff('day', a, b) from t": "date_diff",
             "select epoch(a) from t": "epoch",
             "select '0xff'::bigint": "hex"}
    for sql, msg in traps.items():
        with pytest.raises(wbspark.SparkError, match=f"f.sql: .*{msg}"):
            wbspark.to_spark_sql(sqlglot.parse_one(sql, read="duckdb"), source="f.sql")
    assert wbspark.to_spark_sql(sqlglot.parse_one("select substr(a, 1, 3) as b from t qualify b = 'x'", read="duckdb"))
    with pytest.raises(ValueError, match="engine 'postgres'"):
        data.clean(workbench.connect(workspace), engine="postgres")
    with pytest.raises(wbspark.SparkError, match="sc://host:15002"):
        wbspark.session(remote="http://localhost:15002")


def test_misconfigured_spark_fails_fast_naming_the_setting():
    """A typo in the master URL, or a Connect URL where nothing listens, is a SparkError naming the
    setting within seconds (not Py4J's 'Java gateway process exited', not minutes of gRPC retries)."""
    with pytest.raises(wbspark.SparkError, match="spark_master 'nonsense'.*local\\[2\\]"):
        wbspark.session(master="nonsense")
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(wbspark.SparkError, match=f"spark_remote 'sc://127.0.0.1:{port}': no Spark Connect server"):
        wbspark.session(remote=f"sc://127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 15


# ---------------------------------------------------------------------------------------- Spark

@needs_java
def test_line_numbers_are_exact_across_many_blocks(spark, tmp_path):
    lines = [f"line {i} " + "x" * (i % 97) for i in range(1, 5_001)]
    f = tmp_path / "lines.txt"
    f.write_text("\n".join(lines) + "\n")  # 290 KB: the blocks, not the lines, are the point
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(16 * 1024))  # about 18 blocks
    try:
        got = sorted(tuple(r) for r in wbspark.numbered_lines(spark, f).collect())
        assert spark.read.text(str(f)).select("_metadata.file_block_start").distinct().count() > 10
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert got == list(enumerate(lines, 1))


@needs_java
def test_dialect_traps_give_duckdbs_results(spark, tmp_path):
    """Each construct SQLGlot transpiles silently but Spark would evaluate differently, on both engines."""
    texts = ["İstanbul ΟΔΟΣ Σ", "\u00a0nbsp\u3000", "\tTab ", "é4111 1111 1111 1111", "x4111 1111 1111 1111",
             "4111-1111-1111-1111.", "a\vb  c\n", "line\n", "cr\rx", "Cafe\u0301", "ab12cd", "", None,
             "2026-01-05 10:00:00", "2026-01-05T23:59", "yesterday", "2026-01-05 24:00:00", "2026"]
    frame = pd.DataFrame({"id": range(len(texts)), "s": texts})
    sql = tmp_path / "99_traps.sql"
    sql.write_text("""-- creates: traps (one row per input string)
create or replace table traps as
select
    id,
    lower(s) as lowered,
    trim(s) as trimmed,
    ltrim(s) as ltrimmed,
    regexp_replace(s, '\\b(?:\\d[ -]?){12,18}\\d\\b', '<CARD>', 'g') as card,
    regexp_replace(s, '\\s+', '_', 'g') as ws,
    regexp_replace(s, '\\s{2,}|[^\\S ]', '_', 'g') as ws2,
    regexp_replace(s, '([a-z]+)([0-9]+)', '\\2\\1', 'g') as swapped,
    regexp_matches(s, 'e$') as ends_e,
    regexp_matches(s, '^cr.x') as dot,
    nfc_normalize(s) as nfc,
    length(nfc_normalize(s)) as n_chars,
    (strpos('0123456789abcdef', 'f') - 1) * 268435456 as big,
    case
        when regexp_matches(trim(s), '^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T]([01][0-9]|2[0-3]):[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?)?$')
            then try_cast(trim(s) as timestamp)
    end as ts
from strings
""")
    duck, spk = workbench.connect(tmp_path / "duck"), workbench.connect(tmp_path / "spark")
    for con in (duck, spk):
        write_table(con, "strings", frame)
    run_sql_file(duck, sql)
    assert wbspark.run_sql_file_spark(spk, sql) == ["traps"]
    a = duck.execute("select * from traps order by id").df()
    b = spk.execute("select * from traps order by id").df()
    assert list(a.dtypes) == list(b.dtypes)
    pd.testing.assert_frame_equal(a, b)
    assert a.loc[0, "lowered"] == "istanbul οδοσ σ"  # DuckDB's simple case mapping, on Spark too
    assert a.loc[3, "card"] == "é<CARD>" and a.loc[4, "card"] == "x4111 1111 1111 1111"


@needs_java
def test_csv_jsonl_parquet_edge_cases_parse_like_duckdb(spark, tmp_path):
    header = b"a,b,c\n"
    csv_lines = [b'1,"",x', b"2,,x", b'3,ab"c,x', b'4, "b" ,x', b'5,"b"x,y', b"6,caf\xe9,x,extra", b'9,"q""q",x',
                 b"   ", b"11,b", b'"13",b,c', b"16,\tb\t,x", b",,", b'1,"a" "b",x', b'5,"b"x,y,z', b'1,"b,c",x',
                 b'1,b,"x"  ', b'1,""""', b'1,"' + b"w, " * 5000 + b'",x']
    jsonl = [b'{"a": "x", "n": 1.50, "o": {"p": [1, 2]}, "u": "caf\\u00e9"}', b"", b"   ", b"\t", b'{"a": 1',
             b'["x"]', b'"s"', b"12", b"-3", b"true", b"null", b'{"a": "bad \xff"}', b"not json", b'{"a":1} x',
             b'{"a":"x\ty"}', b'{"k.1": "dot", "a": "z"}', b"{}"]
    (tmp_path / "e.csv").write_bytes(header + b"\n".join(csv_lines) + b"\n")
    (tmp_path / "e.jsonl").write_bytes(b"\n".join(jsonl) + b"\n")
    pd.DataFrame({"a": ["P1", None, "P3"], "n": [1, 2, 3], "f": [0.5, -1.25, None], "ok": [True, False, None],
                  "ts": pd.to_datetime(["2026-01-05 10:00:00", "2026-01-05 10:00:00.123456", None], format="ISO8601"),
                  "tags": [["x", "y"], [], None]}).to_parquet(tmp_path / "e.parquet", row_group_size=2)
    got = []
    for engine in ("duckdb", "spark"):
        con = workbench.connect(tmp_path / engine)
        report = data.ingest(con, [tmp_path / f"e.{x}" for x in ("csv", "jsonl", "parquet")], table="t",
                             engine=engine)
        got.append((report,
                    con.execute("select * exclude (source_file) from t order by source_row_id").fetchall(),
                    [(r[0], r[1], COUNTS.sub(r"\1", r[2])) for r in con.execute(
                        "select source_row_id, source_line, reason from ingest_rejects order by 1").fetchall()],
                    [r[0] for r in con.execute("describe t").fetchall()]))
    assert got[0] == got[1]
    assert len(got[0][2]) >= 10 and len(got[0][1]) >= 15  # plenty of both rows and rejects
    # a blank line is no row, and the lines after it keep their physical numbers (the id contract)
    (tmp_path / "blank.csv").write_bytes(header + b"1,2,3\n\n4,5,6\n")
    con = workbench.connect(tmp_path / "spark")
    data.ingest(con, [tmp_path / "blank.csv"], table="b", engine="spark")
    got = con.execute("select source_row_id, a from b order by 1").fetchall()
    assert got == [("blank.csv:2", "1"), ("blank.csv:4", "4")]
    with pytest.raises(data.IngestError, match="ingested before"):  # append refuses the same rows twice
        data.ingest(con, [tmp_path / "blank.csv"], table="b", engine="spark", mode="append")
    assert con.execute("select count(*) from b").fetchone()[0] == 2


@needs_java
def test_split_batches_and_groups_match_duckdb(spark, tmp_path):
    from test_splits import make_examples

    cons = [workbench.connect(tmp_path / e) for e in ("duckdb", "spark")]
    for con, engine in zip(cons, ("duckdb", "spark")):
        write_table(con, "examples", make_examples(300, customers=40))
        data.split(con, engine=engine, group_key="customer_id", split_seed=9)
        write_table(con, "examples", make_examples(90, start=300, customers=40), mode="append")
        counts = data.split(con, engine=engine, group_key="customer_id", split_seed=9)
        assert sum(counts.values()) == 390
    q = "select example_id, split, seed, batch_id from splits order by example_id"
    assert cons[0].execute(q).fetchall() == cons[1].execute(q).fetchall()
    assert dict(cons[1].execute("select batch_id, count(*) from splits group by 1").fetchall()) == {1: 300, 2: 90}
    assert (tmp_path / "spark" / "spark" / "splits").is_dir()  # the Parquet dataset Spark wrote


@needs_java
@pytest.mark.slow
def test_label_feature_and_flow_sql_files_match_duckdb(spark, con):
    """The sql/ files outside ingest/clean/split (03 labels, 07 features, 11 flow) on both engines over
    the same workspace: the same rows and the same column types (INTEGER stays INTEGER)."""
    from workbench import features as fs
    from workbench import labeling as L

    data.build_spine(con, rows=300, seed=7)
    intents = ["billing", "refund", "shipping", "technical_issue", "account_access", "cancellation"]
    L.ensure_tables(con)
    L.register_label_set(con, "intent", intents)
    L.simulate_annotators(con, "intent", intents, L.SimulationConfig(annotators=3, items=120),
                          L.QueueConfig(max_items=None))
    fs.register(con, fs.FeatureGroup(
        name="customer_profile", source="07_customer_profile.sql", entity_keys=["customer_id"], event_time="as_of",
        features=[fs.Feature("plan", "VARCHAR", "plan"), fs.Feature("tenure_months", "INTEGER", "months"),
                  fs.Feature("monthly_spend", "DOUBLE", "spend")]), validation="warn")
    fs.retrieve(con, "select example_id, customer_id, created_at from examples", "customer_profile",
                timestamp_column="created_at", out_table="example_features")
    for name, table in (("03_labels_current", "labels_current"), ("03_labels_final", "labels_final"),
                        ("07_examples_with_features", "examples_with_features"),
                        ("11_flow_support_messages", "flow_support_messages")):
        run_sql_file(con, name)
        duck = (schema(con, "wb", table), con.execute(f"select * from {table}").df())
        wbspark.run_sql_file_spark(con, name)
        spk = (schema(con, "wb", table), con.execute(f"select * from {table}").df())
        assert duck[0] == spk[0], name
        assert len(duck[1]) > 50, name
        a, b = (d.sort_values(list(d.columns)).reset_index(drop=True) for d in (duck[1], spk[1]))
        pd.testing.assert_frame_equal(a, b, obj=name)
    assert dict(schema(con, "wb", "examples_with_features"))["tenure_months"] == "INTEGER"
    assert (workspace_root(con) / "spark" / "flow_support_messages").is_dir()


# ---------------------------------------------------------------------------------------- 100k rows

@pytest.fixture(scope="module")
def messy_100k(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sample100k")
    write_sample(d, rows=100_000, seed=11)
    return d


@pytest.fixture(scope="module")
def both_engines(messy_100k, spark, tmp_path_factory):
    """The same 100,000-row messy sample prepared on DuckDB (workspace a) and on Spark (workspace b)."""
    root = tmp_path_factory.mktemp("engines")
    timings = {}
    for engine, name in (("duckdb", "a"), ("spark", "b")):
        con = workbench.connect(root / name)
        t0 = time.perf_counter()
        data.build_spine(con, messy_100k, engine=engine)
        timings[engine] = time.perf_counter() - t0
        con.close()
    print(f"\nprepare 100k rows: {timings}")
    return root / "a", root / "b"


@needs_java
@pytest.mark.slow
def test_100k_messy_rows_same_results_row_for_row(both_engines):
    con = attach_both(*both_engines)
    # ingest: every parsed row with its id, every reject with its line and reason
    for table in ("stg_messages", "stg_pool", "stg_kb_articles", "stg_customers"):
        assert schema(con, "a", table) == schema(con, "b", table), table
        n, only_a, only_b = differences(con, table)
        assert n > 0 and only_a == only_b == 0, (table, n, only_a, only_b)
    # DuckDB's "Found: N" in column-count reasons varies with its read buffers: compare the kind
    reason = "regexp_replace(reason, '(missing columns|too many columns): [^;]*', '\\1')"
    n, only_a, only_b = differences(con, "ingest_rejects", f"source_row_id, table_name, source_line, {reason}")
    assert n == 300 and only_a == only_b == 0
    # cleaning, dedup survivors, split per row, the fate of every input row
    for table in ("int_messages", "examples", "int_pool", "label_pool", "int_kb_articles", "corpus_documents",
                  "split_leakage"):
        assert schema(con, "a", table) == schema(con, "b", table), table
        n, only_a, only_b = differences(con, table)
        assert only_a == only_b == 0, (table, n, only_a, only_b)
    n, only_a, only_b = differences(con, "splits", "example_id, split, seed, batch_id")
    assert n > 50_000 and only_a == only_b == 0
    # int_messages is a view over int_messages_data on both engines: Spark writes only the table,
    # and later Spark steps run the view's query on Spark (no export of the view through DuckDB)
    for db in ("a", "b"):
        assert con.execute("select table_type from information_schema.tables where table_catalog = ? "
                           "and table_name = 'int_messages'", [db]).fetchone()[0] == "VIEW"
    spark_out = both_engines[1] / "spark"
    assert (spark_out / "int_messages_data").is_dir() and not (spark_out / "int_messages").exists()
    assert not (spark_out / "_export" / "int_messages.parquet").exists()
    n, only_a, only_b = differences(con, "row_fate", f"dataset, source_row_id, source_file, fate, {reason}")
    assert n > 100_000 and only_a == only_b == 0
    fates = dict(con.execute("select fate, count(*) from b.row_fate where dataset = 'messages' group by 1").fetchall())
    assert min(fates["kept"], fates["duplicate"], fates["filtered"], fates["rejected"]) > 0  # messy in every way
    assert con.execute("select count(*) from b.examples where text like '%<CARD>%'").fetchone()[0] > 0


# ---------------------------------------------------------------------------------------- Spark Connect

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    """A Spark Connect server on 127.0.0.1 started with pyspark's sbin script; stopped by its pid file."""
    import pyspark

    home = Path(pyspark.__file__).parent
    script = home / "sbin" / "start-connect-server.sh"
    if not script.exists():
        pytest.fail(f"pyspark at {home} ships no sbin/start-connect-server.sh")
    run_dir = tmp_path_factory.mktemp("connect")
    port = _free_port()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_PID_DIR": str(run_dir), "SPARK_LOG_DIR": str(run_dir),
           "SPARK_IDENT_STRING": f"wbtest{port}", "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_REMOTE", None)
    subprocess.run(["bash", str(script), "--master", "local[2]",
                    "--conf", f"spark.connect.grpc.binding.port={port}",
                    "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
                    "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.memory=1g",
                    "--conf", f"spark.sql.warehouse.dir={run_dir / 'warehouse'}"],
                   env=env, check=True, capture_output=True, cwd=run_dir)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        else:
            logs = "".join(p.read_text()[-3000:] for p in run_dir.glob("*.out"))
            pytest.fail(f"the Spark Connect server did not listen on {port} within 240 s:\n{logs}")
        yield f"sc://127.0.0.1:{port}"
    finally:
        wbspark.stop()
        subprocess.run(["bash", str(home / "sbin" / "stop-connect-server.sh")], env=env, capture_output=True)


@needs_java
@pytest.mark.slow
def test_pipeline_runs_on_spark_connect_with_duckdbs_results(connect_server, workspace, tmp_path):
    """``workbench run -p engine spark -p spark_remote sc://...``: notebooks 01, 02, 05, 06, 11 through a real
    Connect server (each kernel is a Connect client: no JVM of its own), compared with DuckDB; step 05
    renders templates whose Jinja parts run as Arrow UDFs on the server."""
    remote = wbspark.session(remote=connect_server)
    assert type(remote).__module__.startswith("pyspark.sql.connect"), type(remote)  # really a Connect client
    assert remote.sql("select nfc_normalize('Cafe\u0301') as s").collect()[0]["s"] == "Caf\u00e9"
    wbspark.stop()
    tasks = '["intent_classification", "contact_extraction", "reply_generation"]'  # Jinja UDF parts included
    out = pipeline.run({"engine": "spark", "spark_remote": connect_server, "sample_rows": "3000", "split_seed": "3",
                        "template_tasks": tasks, "audit_tokenizer": ""},
                       only=["01", "02", "05", "06", "11"], workspace=workspace)
    assert len(list(out.glob("*.ipynb"))) == 5
    duck = workbench.connect(tmp_path / "duck")
    data.build_spine(duck, data.sample_dir(rows=3000, seed=7), split_seed=3)
    template_sql.apply_templates(duck, json.loads(tasks), choice="random", seed=7)
    flows.run_flow(duck, "support_messages")
    duck.close()
    con = attach_both(tmp_path / "duck", workspace)
    for table in ("stg_messages", "int_messages", "examples", "label_pool", "corpus_documents", "sft_examples"):
        n, only_a, only_b = differences(con, table)
        assert n > 0 and only_a == only_b == 0, table
    n, only_a, only_b = differences(con, "splits", "example_id, split, seed, batch_id")
    assert n > 2000 and only_a == only_b == 0
    n, only_a, only_b = differences(con, "flow_support_messages")  # step 11: the bundled flow on Spark
    assert n > 2000 and only_a == only_b == 0
    n, only_a, only_b = differences(con, "flow_row_fate", "row_key, step_index, step_name, reason")
    assert n > 0 and only_a == only_b == 0
    assert (workspace / "spark" / "examples").is_dir()  # written by the Connect server, registered here


@needs_java
def test_mixed_line_ends_ingest_like_duckdb(spark, tmp_path):
    """A file mixing \\n and \\r\\n line ends: the same rows, lines and rejects on both engines."""
    header = b"a,b,c\r\n"
    (tmp_path / "m.csv").write_bytes(header + b"1,x,y\n2,x,y\r\n\r\n3,x\n4,x,y\r\n5,x,y\n")
    (tmp_path / "m.jsonl").write_bytes(b'{"a": "1"}\n{"a": "2"}\r\n\r\n{"a": 3\n{"a": "4"}\r\n')
    got = []
    for engine in ("duckdb", "spark"):
        con = workbench.connect(tmp_path / engine)
        report = data.ingest(con, [tmp_path / "m.csv", tmp_path / "m.jsonl"], table="t", engine=engine)
        got.append((report, con.execute("select source_row_id, a from t order by 1").fetchall(),
                    con.execute("select source_row_id from ingest_rejects order by 1").fetchall()))
    assert got[0] == got[1]
    assert got[0][1] == [("m.csv:2", "1"), ("m.csv:3", "2"), ("m.csv:6", "4"), ("m.csv:7", "5"),
                         ("m.jsonl:1", "1"), ("m.jsonl:2", "2"), ("m.jsonl:5", "4")]
    assert got[0][2] == [("m.csv:5",), ("m.jsonl:4",)]
