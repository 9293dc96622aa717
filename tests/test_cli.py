"""The ``workbench`` command line: sql, demo-data, ingest, run (errors included)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def wb(*args, workspace, check=True, **kw):
    env = {**os.environ, "WORKBENCH_HOME": str(workspace)}
    p = subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                       env=env, cwd=kw.pop("cwd", REPO), timeout=kw.pop("timeout", 300))
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_sql_formats_and_ddl(workspace):
    wb("sql", "create table t as select range as i, 'x' || range as s from range(3)", workspace=workspace)
    out = wb("sql", "select * from t order by i", "--format", "json", workspace=workspace).stdout
    assert json.loads(out) == [{"i": 0, "s": "x0"}, {"i": 1, "s": "x1"}, {"i": 2, "s": "x2"}]
    assert wb("sql", "select i from t where i = 1", "--format", "csv", workspace=workspace).stdout == "i\n1\n"
    assert "x2" in wb("sql", "select * from t", workspace=workspace).stdout
    bad = wb("sql", "select * from nope", workspace=workspace, check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_sql_statement_list_is_atomic(workspace):
    wb("sql", "create table t (i integer)", workspace=workspace)
    p = wb("sql", "insert into t values (1); insert into t values ('not a number')", workspace=workspace, check=False)
    assert p.returncode == 1
    assert wb("sql", "select count(*) as n from t", "--format", "csv", workspace=workspace).stdout == "n\n0\n"


def test_concurrent_sql_from_several_processes(workspace):
    wb("sql", "create table hits (who varchar)", workspace=workspace)
    env = {**os.environ, "WORKBENCH_HOME": str(workspace)}
    procs = [subprocess.Popen([sys.executable, "-m", "workbench.cli", "sql", f"insert into hits values ('p{i}')"],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    out = wb("sql", "select count(distinct who) as n from hits", "--format", "csv", workspace=workspace).stdout
    assert out == "n\n4\n"


def test_demo_data_and_ingest(workspace, tmp_path):
    wb("demo-data", "--rows", "200", "--out", str(tmp_path / "s"), workspace=workspace)
    p = wb("ingest", str(tmp_path / "s" / "messages.csv"), str(tmp_path / "s" / "messages_app.jsonl"),
           "--table", "stg_messages", workspace=workspace)
    report = json.loads(p.stdout)
    assert sum(r["rows"] + r["rejected"] for r in report.values()) > 200
    bad = wb("ingest", str(tmp_path / "nothing.csv"), "--table", "x", workspace=workspace, check=False)
    assert bad.returncode == 2 and "nothing.csv: no such file" in bad.stderr


def test_run_rejects_unknown_parameter_before_running(workspace):
    p = wb("run", "-p", "no_such_param", "1", workspace=workspace, check=False)
    assert p.returncode == 1 and "unknown parameter(s) no_such_param" in p.stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


def test_run_stops_at_the_first_failing_notebook(workspace, tmp_path):
    # a sample_dir that does not exist makes 01 fail: the run names it and exits non-zero
    p = wb("run", "-p", "sample_dir", str(tmp_path / "missing"), workspace=workspace, check=False)
    assert p.returncode == 1
    assert "01_ingest_raw failed" in p.stderr and "no such folder" in p.stderr
    assert "[02_clean_dedup]" not in p.stdout


def test_run_rejects_a_wrong_parameter_type_before_running(workspace):
    # train_fraction belongs to 06: the error comes before 01..05 run and before a run folder exists
    p = wb("run", "-p", "train_fraction", "most", "--only", "01", "--only", "06", workspace=workspace, check=False)
    assert p.returncode == 1
    assert "parameter train_fraction of 06_split_examples (a float, default 0.8)" in p.stderr and "'most'" in p.stderr
    assert "[01_ingest_raw]" not in p.stdout
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


def test_sql_empty_statement_and_nested_values_in_csv(workspace):
    p = wb("sql", "  ", workspace=workspace, check=False)
    assert p.returncode == 2 and "no SQL statement given" in p.stderr
    assert wb("sql", "-- only a comment", workspace=workspace).stdout == ""
    import csv
    import io

    out = wb("sql", "select range(1500) as l, {'a': [1, 2]} as s", "--format", "csv", workspace=workspace).stdout
    row = next(csv.DictReader(io.StringIO(out)))
    assert json.loads(row["l"]) == list(range(1500))  # the whole list, not numpy's elided repr
    assert json.loads(row["s"]) == {"a": [1, 2]}


def test_sql_json_keeps_full_precision_blobs_and_times(workspace):
    out = wb("sql", "select 1::double / 3 as f, 'a\\xFFb'::blob as b, 'nan'::double as d, "
             "timestamp '2020-01-02 03:04:05.123456' as ts, date '2020-01-02' as dt, [1.5, null] as l",
             "--format", "json", workspace=workspace).stdout
    assert json.loads(out) == [{"f": 1 / 3, "b": "a\\xFFb", "d": None,
                                "ts": "2020-01-02T03:04:05.123456", "dt": "2020-01-02T00:00:00.000",
                                "l": [1.5, None]}]


def test_sql_statement_list_prints_every_query_result(workspace):
    script = "create table t as select range as i from range(3); insert into t values (9); " \
             "select count(*) as n from t; select max(i) as top from t"
    out = wb("sql", script, "--format", "csv", workspace=workspace).stdout
    assert out == "n\n4\n\ntop\n9\n"  # both queries, DDL/insert counts left out
    lines = wb("sql", "select 1 as a; select 2 as b", "--format", "json", workspace=workspace).stdout.splitlines()
    assert [json.loads(x) for x in lines] == [[{"a": 1}], [{"b": 2}]]
    table = wb("sql", "select 'x' as s; select 'y' as s", workspace=workspace).stdout
    assert table.index("x") < table.index("y")
    bad = wb("sql", "select 1; selec 2", workspace=workspace, check=False)
    assert bad.returncode == 1 and "selec" in bad.stderr
