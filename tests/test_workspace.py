"""The workspace: DuckLake store shared by processes, SQL files, retries, snapshots."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import duckdb
import pytest

import workbench
from workbench import workspace as ws


def test_connect_creates_lake_and_default_catalog(workspace):
    con = workbench.connect(workspace)
    assert (workspace / "wb.sqlite").exists()
    assert con.execute("select current_database()").fetchone()[0] == "wb"
    con.execute("create table t as select 1 as a")
    con.execute("create table big as select range as i from range(20000)")  # small writes may be inlined
    # a cursor (what jupysql uses per magic) sees the same default catalog
    assert con.cursor().execute("select a from t").fetchone() == (1,)
    con.close()
    # reopening finds the data again (Parquet under data/)
    assert workbench.connect(workspace).execute("select a from t").fetchone() == (1,)
    assert any((workspace / "data").rglob("*.parquet"))


def test_extensions_come_from_wheels_not_network(workspace):
    con = workbench.connect(workspace)
    rows = dict(con.execute(
        "select extension_name, install_mode from duckdb_extensions() where loaded").fetchall())
    assert rows["ducklake"] in ("CUSTOM_PATH", "REPOSITORY") and "sqlite_scanner" in rows
    assert con.execute("select current_setting('autoinstall_known_extensions')").fetchone()[0] is False


def test_render_sql_params_and_missing():
    assert ws.render_sql("select {{a}}, {{ b }}", {"a": 1, "b": "x'y"}) == "select 1, 'x''y'"
    assert ws.render_sql("select {{flag}}", {"flag": True}) == "select true"
    with pytest.raises(ws.WorkspaceError, match="missing parameter.*b"):
        ws.render_sql("select {{a}}, {{b}}", {"a": 1}, source="f.sql")


def test_run_sql_file_is_one_transaction(con, tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text("create table half as select 1 as a;\nselect * from no_such_table;")
    with pytest.raises(ws.WorkspaceError, match="bad.sql"):
        ws.run_sql_file(con, bad)
    assert not ws.table_exists(con, "half")  # nothing half-written


def test_sql_file_lookup_by_name():
    assert ws.sql_path("02_examples").name == "02_examples.sql"
    assert ws.sql_file_params("06_splits") == ["train_fraction", "validation_fraction", "split_seed",
                                               "group_key", "stratify"]
    with pytest.raises(ws.WorkspaceError, match="not found"):
        ws.sql_path("99_nothing")


def test_write_table_replace_and_append(con):
    import pandas as pd

    assert ws.write_table(con, "t", pd.DataFrame({"a": [1, 2]})) == 2
    ws.write_table(con, "t", pd.DataFrame({"a": [3]}), mode="append")
    assert con.execute("select sum(a) from t").fetchone()[0] == 6
    with pytest.raises(ValueError, match="mode"):
        ws.write_table(con, "t", pd.DataFrame({"a": [1]}), mode="upsert")


def test_snapshot_time_travel(con):
    con.execute("create table t as select 1 as a")
    snap = ws.snapshot_id(con)
    con.execute("insert into t values (2)")
    assert ws.snapshot_id(con) > snap
    assert con.execute(f"select count(*) from t at (version => {snap})").fetchone()[0] == 1


def test_retry_only_on_races():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise duckdb.TransactionException("Failed to commit: database is locked")
        return "ok"

    assert ws.retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(duckdb.CatalogException):
        ws.retry(lambda: (_ for _ in ()).throw(duckdb.CatalogException("no table")))


WRITER = textwrap.dedent("""
    import sys, workbench
    from workbench.workspace import transaction
    con = workbench.connect(sys.argv[1])
    who, n = sys.argv[2], int(sys.argv[3])
    for i in range(n):
        transaction(con, lambda c: c.execute("insert into events values (?, ?)", [who, i]))
    print("done", who)
""")


def test_two_processes_write_at_once_without_loss(workspace):
    con = workbench.connect(workspace)
    con.execute("create table events (who varchar, i integer)")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(workspace), who, "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who in ("a", "b")]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    got = con.execute("select who, count(*), count(distinct i) from events group by who order by who").fetchall()
    assert got == [("a", 60, 60), ("b", 60, 60)]


def test_sqlalchemy_engine_shares_the_workspace(con):
    import sqlalchemy

    con.execute("create table t as select 42 as answer")
    eng = ws.sqlalchemy_engine(con)
    assert sqlalchemy.inspect(eng).get_table_names() == ["t"]
    with eng.connect() as c:
        assert c.exec_driver_sql("select answer from t").fetchone()[0] == 42


def test_catalog_in_wal_mode_so_an_open_reader_never_blocks_writers(workspace):
    import sqlite3

    con = workbench.connect(workspace)
    mode = sqlite3.connect(workspace / "wb.sqlite").execute("pragma journal_mode").fetchone()[0]
    assert mode == "wal"
    con.execute("create table t as select range as i from range(100000)")
    con.execute("create table events (who varchar, i integer)")
    pending = con.execute("select * from t")  # a half-read result, as an idle notebook leaves one
    pending.fetchmany(10)
    p = subprocess.run([sys.executable, "-c", WRITER, str(workspace), "other", "3"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert workbench.connect(workspace).execute("select count(*) from events").fetchall()[0][0] == 3


def test_workspace_root_is_the_folder_of_the_catalog(workspace, tmp_path):
    con = workbench.connect(workspace)
    assert ws.workspace_root(con) == workspace.absolute()
    assert ws.workspace_root(con.cursor()) == workspace.absolute()   # jupysql's cursors too
    other = tmp_path / "elsewhere"
    assert workbench.workspace_root(workbench.connect(other)) == other.absolute()
    with pytest.raises(ws.WorkspaceError, match="no workspace attached.*workbench.connect"):
        ws.workspace_root(duckdb.connect())
    # the modules that put files beside the tables all use this one helper
    from workbench import bias_report, classifier, cpt, cpt_registry, spark, sweep
    for mod in (bias_report, classifier, cpt, cpt_registry, spark, sweep):
        assert mod.workspace_root is ws.workspace_root, mod.__name__
    assert spark.spark_dir(con) == workspace.absolute() / spark.SPARK_DIR


def test_gc_expires_old_snapshots_but_keeps_the_ones_runs_refer_to(con, workspace):
    import subprocess
    import sys

    import pandas as pd

    from workbench.workspace import expire_snapshots, snapshot_id, write_table

    sizes = []
    for i in range(4):  # four versions of t, each over the inlining limit: a file each
        write_table(con, "t", pd.DataFrame({"x": range(1000 * (i + 1))}))
        sizes.append(snapshot_id(con))
    referenced = sizes[1]
    write_table(con, "my_runs", pd.DataFrame({"run": ["r1"], "data_snapshot": [referenced]}))

    def files():
        return sorted(p.name for p in (workspace / "data").rglob("*.parquet"))

    before = files()
    dry = expire_snapshots(con, older_than_days=0, dry_run=True)
    assert referenced in dry["kept_referenced"] and referenced not in dry["expired"] and sizes[0] in dry["expired"]
    assert files() == before and con.execute(f"select count(*) from t at (version => {sizes[0]})").fetchone() == (1000,)
    env = {**os.environ, "WORKBENCH_HOME": str(workspace)}
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "gc", "--older-than-days", "0"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "expired" in out.stdout and "deleted 2 data file(s)" in out.stdout  # versions 1 and 3 of t
    assert len(files()) == len(before) - 2
    assert con.execute(f"select count(*) from t at (version => {referenced})").fetchone() == (2000,)  # kept
    assert con.execute("select count(*) from t").fetchone() == (4000,)
    with pytest.raises(duckdb.Error, match="No snapshot found"):
        con.execute(f"select count(*) from t at (version => {sizes[0]})").fetchall()
    assert expire_snapshots(con, older_than_days=30)["expired"] == []  # nothing is 30 days old
