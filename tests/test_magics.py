"""The jupysql magics our notebooks use, on the workspace connection (native DuckDB and SQLAlchemy)."""
from __future__ import annotations

import pytest

import workbench


@pytest.fixture
def ip(workspace):
    from IPython.testing.globalipapp import get_ipython, start_ipython

    shell = start_ipython() or get_ipython()  # one shell per test process
    shell.run_line_magic("load_ext", "sql")
    conn = workbench.connect(workspace)
    shell.user_ns.update(conn=conn, engine=workbench.sqlalchemy_engine(conn))
    shell.run_line_magic("sql", "conn --alias wb")
    yield shell
    from sql.connection import ConnectionManager

    for alias in ("wbsa", "wb"):
        if alias in ConnectionManager.connections:
            shell.run_line_magic("sql", f"--close {alias}")
    shell.user_ns["engine"].dispose()
    shell.user_ns.clear()


def test_sql_magic_writes_to_the_workspace(ip, workspace):
    ip.run_line_magic("sql", "create or replace table t as select range as i from range(10)")
    # another connection (another process in real life) sees the table: it landed in the lake
    assert workbench.connect(workspace).execute("select count(*) from t").fetchone()[0] == 10


def test_cell_magic_with_variable_expansion(ip):
    ip.run_line_magic("sql", "create or replace table t as select range as i from range(10)")
    ip.user_ns["n"] = 3
    res = ip.run_cell_magic("sql", "", "select count(*) as c from t where i < {{n}}")
    assert list(res.dict()["c"]) == [3]


def test_dataframe_by_name(ip):
    import pandas as pd

    ip.user_ns["df"] = pd.DataFrame({"a": [1, 2, 3]})
    # as in a notebook cell: the data frame lives in the cell's namespace
    result = ip.run_cell("res = %sql select sum(a) as s from df")
    assert result.error_in_exec is None, result.error_in_exec
    assert list(ip.user_ns["res"].dict()["s"]) == [6]


def test_error_does_not_poison_the_session(ip):
    ip.run_line_magic("sql", "create or replace table t as select 1 as a")
    with pytest.raises(Exception):
        ip.run_line_magic("sql", "select * from no_such_table")
    assert list(ip.run_line_magic("sql", "select a from t").dict()["a"]) == [1]


def test_sqlcmd_and_sqlplot_on_the_sqlalchemy_connection(ip):
    ip.run_line_magic("sql", "create or replace table t as select range as i, range % 3 as k from range(50)")
    ip.run_line_magic("sql", "engine --alias wbsa")
    tables = ip.run_line_magic("sqlcmd", "tables")
    assert "t" in str(tables)
    cols = ip.run_line_magic("sqlcmd", "columns --table t")
    assert "BIGINT" in str(cols)
    profile = ip.run_line_magic("sqlcmd", "profile --table t")
    assert "mean" in str(profile)
    ax = ip.run_line_magic("sqlplot", "histogram --table t --column i")
    assert ax is not None
    with pytest.raises(Exception):
        ip.run_line_magic("sql", "select * from missing_again")
    assert list(ip.run_line_magic("sql", "select count(*) as c from t").dict()["c"]) == [50]
