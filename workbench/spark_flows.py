"""Data flows on Apache Spark: the steps of ``workbench.flows`` run on Spark with DuckDB's results.

    workbench flow run support_messages --engine spark                   # local Spark (local[*])
    workbench flow run support_messages --engine spark --spark-remote sc://localhost:15002

``flows.run_flow(con, flow, engine="spark")`` calls ``execute_spark``: the flow is validated on DuckDB
(the source's schema, every step's SQL bound), then Spark reads the source (a workspace table from its
Parquet files, or a CSV / JSONL / Parquet file with the Spark ingest readers, typed as DuckDB's file
readers type it) and runs each step's SQL, the same per-step SQL as the DuckDB run transpiled by
``workbench.spark.to_spark_sql`` (SQLGlot plus the dialect fixes), one step at a time: each step is
persisted and counted, so ``flow_step_stats`` holds exact counts, and the rows a step removes are
written to a Parquet dataset as they are found (``except all`` on the key, as on DuckDB). The output
and the fates are staged under ``<workspace>/spark/_flows/<run_id>/``; ``run_flow`` registers them
with the step counts in one workspace transaction, then removes the staging folder.
"""
from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import duckdb
import pandas as pd

from .flow_steps import STEPS, FlowError, lit, qi
from .flows import Flow, PlannedStep, StepResult, _file_path, file_format, source_sql
from .workspace import sql_literal


def execute_spark(con: duckdb.DuckDBPyConnection, flow: Flow, plan: list[PlannedStep], *, run_id: str,
                  types_at: Callable[[int], dict[str, str]], spark=None, limit: int = 5,
                  write: bool = True) -> tuple[list[StepResult], str | None, str | None, Callable]:
    """Run a validated flow on Spark; returns the step results, the staged output and fates (DuckDB
    relations over their Parquet files; fates None when no step names removed rows) and a cleanup
    function (unpersist, drop the temp views, remove the staging folder) to call after registering.
    ``types_at(k)``: column → DuckDB type after the first ``k`` steps (0: the source). ``write=False``
    (a preview): only the step results; nothing is staged (output and fates None)."""
    from . import spark as wbspark

    spark = spark or wbspark.session()
    stage = wbspark.spark_dir(con) / "_flows" / run_id
    views = [f"_flow_{secrets.token_hex(4)}_{i:02d}" for i in range(len(plan) + 1)]
    helpers: list[str] = []  # views of helper CTEs (near_dedup, resample)
    cached: list = []  # the file reader's parse, unpersisted once the source is checkpointed

    def cleanup() -> None:
        for df in cached:
            df.unpersist()
        for v in views + helpers:
            spark.catalog.dropTempView(v)
        shutil.rmtree(stage, ignore_errors=True)

    def materialize(df, view: str, where: str, count: bool = True) -> tuple[Any, int, Any]:
        """Compute a query (Spark SQL text) or DataFrame once (a local checkpoint: its rows kept, its
        plan cut, so a later step's plan does not grow with the steps before it), count it, then a
        view for the next step."""
        try:
            # lazy for a step: its count (the first job over it) computes and keeps it
            df = (spark.sql(df) if isinstance(df, str) else df).localCheckpoint(eager=not count)
            df.createOrReplaceTempView(view)
            return (df, df.count(), _head(df, limit)) if count else (df, 0, None)
        except Exception as exc:
            raise FlowError(f"{where} failed on Spark: {wbspark._short(exc)}") from None

    try:
        src, cached[:] = _source(spark, con, flow)
        df, n, head = materialize(src, views[0], f"{flow.where}: the source")
        for c in cached:
            c.unpersist()
        results = [StepResult(0, "source", n, n, None, head)]
        gone: list[str] = []  # per step that removes rows: a query of the keys it removed
        for p, prev, cur in zip(plan, views, views[1:]):
            where = f"{flow.where}: step {p.index} ({p.kind})"
            # the same step SQL as the DuckDB run; only the relation names differ (helper CTEs are
            # prefixed with the step's name: here the view's, unique to this run)
            compiled = STEPS[p.kind].compile(prev, cur, p.columns_in, p.params)
            df, rows_out, head = _run_step(compiled.ctes, materialize, where, helpers, types_at(p.index - 1))
            if p.key_in and p.key_out and compiled.reason:  # the rows it removed (a multiset difference)
                gone.append(f"select row_key, cast({p.index} as integer) as step_index, {lit(p.kind)} as step_name, "
                            f"{lit(compiled.reason)} as reason from (select cast({qi(p.key_in)} as varchar) as row_key "
                            f"from {prev} except all select cast({qi(p.key_out)} as varchar) from {cur}) as gone")
            results.append(StepResult(p.index, p.kind, results[-1].rows_out, rows_out, compiled.reason, head))
        if not write:
            return results, None, None, cleanup
        types = types_at(len(plan))
        try:
            wbspark.write_dataset(df, stage / "output", types)
            if gone:  # every step's checkpoint is still held by its view
                spark.sql(_spark_sql("\nunion all\n".join(gone), flow.where)).write.parquet(str(stage / "row_fate"))
        except Exception as exc:
            raise FlowError(f"{flow.where}: writing the output on Spark failed: {wbspark._short(exc)}") from None
    except BaseException:
        cleanup()
        raise
    # registered in DuckDB's own types (Spark has no HUGEINT or unsigned integers, for instance)
    typed = ", ".join(f"cast({qi(c)} as {t}) as {qi(c)}" for c, t in types.items())
    return (results, f"(select {typed} from {_parquet(stage / 'output')})",
            _parquet(stage / "row_fate") if gone else None, cleanup)


def _parquet(path) -> str:
    return f"read_parquet({sql_literal(str(path / '*.parquet'))})"


def _run_step(ctes: list[tuple[str, str]], materialize: Callable, where: str, helpers: list[str],
              types: dict[str, str]):
    """A step's CTEs on Spark: each helper CTE that later CTEs read more than once is computed once
    (checkpointed as a view; Spark would otherwise inline it and compute it once per reference, e.g.
    near_dedup's signatures, once per LSH band); the others stay CTEs of the next query."""
    pending: list[tuple[str, str]] = []
    for i, (name, sql) in enumerate(ctes[:-1]):
        pending.append((name, sql))
        uses = sum(len(re.findall(rf"\b{re.escape(name)}\b", later)) for _, later in ctes[i + 1:])
        if uses > 1:
            helpers.append(name)
            materialize(_spark_sql(_with(pending, name), where, types), name, where, count=False)
            pending.pop()  # the others stay CTEs (Spark skips those a query does not read)
    name, sql = ctes[-1]
    return materialize(_spark_sql(_with(pending + [(name, sql)], name), where, types), name, where)


def _head(df, limit: int) -> pd.DataFrame:
    """The first rows as pandas (collected as Rows: pyspark's Arrow path warns about pandas 3)."""
    return pd.DataFrame.from_records([tuple(r) for r in df.limit(limit).collect()], columns=df.columns)


def _with(ctes: list[tuple[str, str]], last: str) -> str:
    body = ",\n".join(f"{name} as (\n{sql}\n)" for name, sql in ctes)
    return f"with {body}\nselect * from {last}"


def _spark_sql(sql: str, where: str, types: dict[str, str] | None = None) -> str:
    """DuckDB SQL as Spark SQL with the dialect fixes; an unportable construct is a FlowError.
    ``types``: the DuckDB types of the step's input columns (for ``_int_casts``)."""
    import sqlglot

    from .spark import SparkError, to_spark_sql

    try:
        return to_spark_sql(_int_casts(_lists(sqlglot.parse_one(sql, read="duckdb")), types or {}), source=where)
    except SparkError as exc:
        raise FlowError(str(exc)) from None


# Numeric text as DuckDB's casts read it, in DuckDB SQL over the column ``__c`` (to_spark_sql turns the
# regexes into Java's): hexadecimal '0x1F' and binary '0b101' (no sign, no spaces, '_' between digits;
# over 64 bits: a value no integer type holds), '_' between two digits ('1_000'), the written fraction
# cut after 9 digits (the decimal(38, 18) cast would round 1.4999999999999999999 up to 1.5; an
# exponent down to e-9 then still leaves at most 18 fraction digits, so the value is exact). A text DuckDB refuses
# but Spark's parser takes (non-ASCII digits '١٢', a misplaced '_') is passed on as is or made
# unparsable, so a cast fails (or try_cast gives null) on both engines.
_INT_TEXT = r"""case
    when regexp_matches(__c, '^0[xX][0-9a-fA-F]+(_[0-9a-fA-F]+)*$') then
        case when length(regexp_replace(replace(substr(__c, 3), '_', ''), '^0+([0-9a-fA-F])', '\1', 'g')) > 16
             then '1e30'
             else conv(regexp_replace(replace(substr(__c, 3), '_', ''), '^0+([0-9a-fA-F])', '\1', 'g'), 16, 10) end
    when regexp_matches(__c, '^0[bB][01]+(_[01]+)*$') then
        case when length(regexp_replace(replace(substr(__c, 3), '_', ''), '^0+([01])', '\1', 'g')) > 64
             then '1e30'
             else conv(regexp_replace(replace(substr(__c, 3), '_', ''), '^0+([01])', '\1', 'g'), 2, 10) end
    when octet_length(__c) <> length(__c) then '_' || __c
    when regexp_matches(__c, '(^|[^0-9])_|_([^0-9]|$)') then __c
    else regexp_replace(replace(__c, '_', ''), '(\.[0-9]{9})[0-9]+', '\1', 'g')
end"""
# ... and for a cast to DOUBLE: '_' between digits; Java's '1d' / '1f' suffixes (Spark reads 1.0) refused
_DOUBLE_TEXT = r"""case
    when octet_length(__c) <> length(__c) then '_' || __c
    when regexp_matches(__c, '(^|[^0-9])_|_([^0-9]|$)|[0-9.][dDfF]\s*$') then '_' || __c
    else replace(__c, '_', '')
end"""


def _text_expr(template: str, column):
    """``template`` (DuckDB SQL over ``__c``) as a SQLGlot tree over ``column``."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(template, read="duckdb")
    for c in list(tree.find_all(exp.Column)):
        if c.name == "__c":
            c.replace(column.copy())
    return tree


def _int_casts(tree, types: dict[str, str]):
    """``cast(x as integer)`` (and bigint, try_cast) of a text or fractional column as DuckDB computes
    it: DuckDB rounds (text '2.5' and DECIMAL half away from zero to 3, DOUBLE half to even to 2);
    Spark rejects the text '2.5' and truncates 2.5 to 2. On Spark the value is rounded first: text
    through decimal(38, 18) (exact) with ``round``, DOUBLE / FLOAT with ``bround`` (half to even).
    Text is read as DuckDB reads it (``_INT_TEXT``): hexadecimal '0x10' is 16, binary '0b101' 5,
    '1_000' 1000 (Spark: null); a cast of text to DOUBLE likewise (``_DOUBLE_TEXT``). The table of
    cases both engines agree on is in tests/test_spark_parity.py."""
    from sqlglot import exp

    ints = {exp.DataType.Type.INT, exp.DataType.Type.BIGINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.TINYINT}
    floats = {exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT}
    for n in list(tree.find_all(exp.Cast)):  # TryCast included
        if not isinstance(n.this, exp.Column):
            continue
        t = types.get(n.this.name, "")
        if n.to.this in floats:
            if t == "VARCHAR":
                n.set("this", _text_expr(_DOUBLE_TEXT, n.this))
            continue
        if n.to.this not in ints:
            continue
        if t == "VARCHAR":
            inner = n.copy()  # the same kind of cast (try_cast stays try_cast)
            inner.set("this", _text_expr(_INT_TEXT, n.this))
            inner.set("to", exp.DataType.build("decimal(38, 18)"))  # 20 integer digits: any 64-bit value
            n.set("this", exp.Round(this=inner))
        elif t in ("DOUBLE", "FLOAT"):  # DuckDB rounds these half to even (2.5 gives 2)
            n.set("this", exp.Anonymous(this="bround", expressions=[n.this.copy()]))
        elif t.startswith("DECIMAL"):
            n.set("this", exp.Round(this=n.this.copy()))
    return tree


def _lists(tree):
    """The DuckDB list functions of near_dedup's word shingles, which SQLGlot leaves as they are:
    ``list_slice(l, a, b)`` (1-based, inclusive) is Spark's ``slice(l, a, b - a + 1)``, and
    ``len(x)`` of a column made by ``string_split`` is ``size(x)`` (Spark's ``length`` takes text)."""
    from sqlglot import exp

    arrays = {a.alias for a in tree.find_all(exp.Alias) if isinstance(a.this, exp.Split)}
    for n in list(tree.find_all(exp.Anonymous, exp.Length)):
        if isinstance(n, exp.Anonymous) and n.name.lower() == "list_slice" and len(n.expressions) == 3:
            lst, a, b = n.expressions
            n.replace(exp.Anonymous(this="slice", expressions=[
                lst, a, exp.Add(this=exp.Sub(this=exp.paren(b.copy()), expression=exp.paren(a.copy())),
                                expression=exp.Literal.number(1))]))
        elif isinstance(n, exp.Length) and isinstance(n.this, exp.Column) and n.this.name in arrays:
            n.replace(exp.ArraySize(this=n.this))
    return tree


def _source(spark, con: duckdb.DuckDBPyConnection, flow: Flow) -> tuple[Any, list]:
    """The flow's source as a Spark DataFrame (and DataFrames the reader cached, to unpersist)."""
    from . import spark as wbspark

    if "table" in flow.source:
        try:
            return wbspark.read_workspace_table(spark, con, flow.source["table"]), []
        except wbspark.SparkError as exc:
            raise FlowError(f"{flow.where}: field 'source.table': {exc}") from None
    path = _file_path(flow)
    types = {r[0]: r[1] for r in con.execute(f"describe select * from {source_sql(flow)}").fetchall()}
    try:
        return read_file(spark, path, file_format(flow, path), types)
    except Exception as exc:
        raise FlowError(f"{flow.where}: field 'source.file': cannot read it on Spark: {wbspark._short(exc)}") from None


# --------------------------------------------------------------------------- file sources

SPARK_TYPES = {"VARCHAR": "string", "BIGINT": "bigint", "INTEGER": "int", "SMALLINT": "smallint",
               "TINYINT": "tinyint", "DOUBLE": "double", "FLOAT": "float", "BOOLEAN": "boolean", "DATE": "date",
               "TIMESTAMP": "timestamp_ntz", "HUGEINT": "decimal(38,0)", "UBIGINT": "decimal(20,0)",
               "UINTEGER": "bigint", "USMALLINT": "int", "UTINYINT": "smallint"}  # DuckDB type -> Spark type


def spark_type(duckdb_type: str) -> str | None:
    """The Spark type holding a scalar DuckDB type's values (DECIMAL(p,s) as is), else None."""
    if re.fullmatch(r"DECIMAL\([0-9]+,[0-9]+\)", duckdb_type):
        return duckdb_type.lower()
    return SPARK_TYPES.get(duckdb_type)


def read_file(spark, path: Path | str, fmt: str, types: Mapping[str, str]):
    """A CSV / JSONL / Parquet file as DuckDB's ``read_csv(all_varchar = true)``, ``read_json`` and
    ``read_parquet`` give it: ``types`` (column → DuckDB type, from ``describe``; its order is the
    column order). CSV and JSONL are parsed by the ingest readers (``READERS_SPARK``, text values
    cast to ``spark_type``: the caller casts back to DuckDB's exact types, e.g. a HUGEINT held as
    decimal(38,0)); a line they reject is an error naming the file, line and reason, and so is a
    column DuckDB reads as a nested or mixed JSON value. Returns ``(df, cached)``: unpersist the
    ``cached`` DataFrames once ``df`` is materialized.
    """
    from pyspark.sql import functions as F

    from .spark import SparkError
    from .spark_ingest import READERS_SPARK

    path = Path(path)
    cached: list = []
    if fmt == "parquet":
        df = spark.read.parquet(str(path))
    else:
        df, rejects = READERS_SPARK[fmt](spark, path, cached)
        bad = rejects.orderBy("source_line").limit(1).collect()
        if bad:
            for c in cached:
                c.unpersist()
            raise SparkError(f"{path}: line {bad[0]['source_line']}: {bad[0]['reason']}")
    missing = [c for c in types if c not in df.columns]
    cols = []
    for c, t in types.items():
        if fmt == "parquet" or c in missing:
            cols.append(F.col(f"`{c}`"))
        elif spark_type(t):
            cols.append(F.col(f"`{c}`").cast(spark_type(t)).alias(c))
        else:
            missing.append(c)
    if missing:
        for c in cached:
            c.unpersist()
        c = missing[0]
        raise SparkError(f"{path}: column {c!r}: DuckDB reads it as {types[c]}, the Spark {fmt} reader "
                         f"{'gives ' + ', '.join(df.columns) if c not in df.columns else 'reads text values only'}")
    return df.select(*cols), cached
