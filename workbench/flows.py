"""Low-code data flows: a YAML file of steps that compiles to one readable SQL file and runs headless.

    workbench flow run flows/support_messages.yaml --output flow_support_messages
    workbench flow compile flows/support_messages.yaml --out sql/11_flow_support_messages.sql
    workbench flow run support_messages --engine spark --spark-master 'local[2]'

A flow file names a source (a workspace table or a CSV / JSONL / Parquet file) and an ordered list of
steps, each with its parameters::

    name: support_messages
    source: {table: stg_messages}
    output: flow_support_messages      # default: flow_<name>
    key: source_row_id                 # optional: per-row fates of removed rows in flow_row_fate
    steps:
      - step: filter
        where: "channel <> 'test'"
      - step: length_filter
        column: text
        min: 5

Every step compiles to one named CTE (near-duplicate removal adds helper CTEs prefixed with its
name), in the portable DuckDB subset that SQLGlot transpiles to Spark. ``validate`` checks a flow
against the source's columns before anything runs; an error names the file, the step and the field.
``run_flow`` executes step by step (each step's SQL into a temp table, so each step's row counts are
known), writes the output table, ``flow_step_stats`` and ``flow_row_fate`` in one transaction;
``engine="spark"`` runs the same steps on Apache Spark with the same results (``spark_flows.py``).
The step catalogue, with each step's parameters, is in ``flow_steps.py`` and docs/flows.md.
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import yaml

from .flow_steps import STEPS, BadParam, CompiledStep, FlowError, check_params, qi
from .workspace import LAKE_RESERVED, transaction

REPO = Path(__file__).resolve().parent.parent
FLOW_DIR = REPO / "flows"
SOURCE_CTE = "source"
ENGINES = ("duckdb", "spark")  # engine="spark": the same steps on Apache Spark (workbench.spark)

__all__ = ["Flow", "FlowError", "FlowRun", "StepResult", "STEPS", "compile_sql", "compile_spark_sql", "load_flow", "preview",
           "run_flow", "save_flow", "source_columns", "validate", "resolve_flow_path", "spark_sql"]


@dataclass
class Flow:
    """A flow file in memory: ``steps`` are dicts ``{"step": kind, **params}`` in run order."""

    name: str
    source: dict[str, str]                  # {"table": name} or {"file": path, "format": csv|jsonl|parquet}
    steps: list[dict[str, Any]] = field(default_factory=list)
    output: str | None = None               # output table; None: flow_<name>
    key: str | None = None                  # column identifying a row: removed rows get a flow_row_fate row
    description: str = ""
    path: Path | None = None                # where it was loaded from (named in error messages)

    @property
    def output_table(self) -> str:
        return self.output or f"flow_{self.name}"

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"flow {self.name!r}"

    @classmethod
    def from_dict(cls, d: Any, path: Path | None = None) -> "Flow":
        where = str(path) if path else "flow"
        if not isinstance(d, dict):
            raise FlowError(f"{where}: a flow file is a mapping with name, source and steps")
        unknown = sorted(set(d) - {"name", "source", "steps", "output", "key", "description"})
        if unknown:
            raise FlowError(f"{where}: unknown top-level field(s) {', '.join(unknown)}; "
                            "allowed: name, source, steps, output, key, description")
        name = d.get("name") or (path.stem if path else None)
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise FlowError(f"{where}: field 'name' must be letters, digits and underscores, not {name!r}")
        src = d.get("source")
        if isinstance(src, str):
            src = {"table": src}
        if not isinstance(src, dict) or len({"table", "file"} & set(src)) != 1:
            raise FlowError(f"{where}: field 'source' needs exactly one of 'table' or 'file', got {src!r}")
        bad = sorted(set(src) - {"table", "file", "format"})
        if bad:
            raise FlowError(f"{where}: field 'source' has unknown key(s) {', '.join(bad)}")
        steps = d.get("steps") or []
        if not isinstance(steps, list):
            raise FlowError(f"{where}: field 'steps' must be a list of steps")
        for i, s in enumerate(steps, 1):
            if not isinstance(s, dict) or "step" not in s:
                raise FlowError(f"{where}: step {i}: each step is a mapping with a 'step' field "
                                f"(one of {', '.join(STEPS)}), got {s!r}")
        return cls(name=name, source={k: str(v) for k, v in src.items()}, steps=[dict(s) for s in steps],
                   output=d.get("output"), key=d.get("key"), description=d.get("description") or "", path=path)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        d["source"] = dict(self.source)
        if self.output:
            d["output"] = self.output
        if self.key:
            d["key"] = self.key
        d["steps"] = [dict(s) for s in self.steps]
        return d

    def steps_frame(self) -> pd.DataFrame:
        """One row per step: its index, kind and parameters (as written in the file)."""
        return pd.DataFrame([{"step_index": i, "step": s["step"],
                              "parameters": ", ".join(f"{k}={v!r}" for k, v in s.items() if k != "step")}
                             for i, s in enumerate(self.steps, 1)])

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=110)


def resolve_flow_path(path: str | Path) -> Path:
    """A flow file by path, or by name inside the project's ``flows/`` folder (``'support_messages'``)."""
    p = Path(path)
    if p.exists():
        return p
    cand = FLOW_DIR / (p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml")
    if cand.exists():
        return cand
    raise FileNotFoundError(f"flow file not found: {path} (looked in {FLOW_DIR})")


def load_flow(path: str | Path) -> Flow:
    p = resolve_flow_path(path)
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise FlowError(f"{p}: not valid YAML: {exc}") from None
    return Flow.from_dict(d, path=p)


def save_flow(flow: Flow, path: str | Path | None = None) -> Path:
    p = Path(path) if path else FLOW_DIR / f"{flow.name}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    header = f"# flow {flow.name}: run with `workbench flow run {p.name}`; steps: docs/flows.md\n"
    p.write_text(header + flow.to_yaml())
    return p


# --------------------------------------------------------------------------- source

def _file_path(flow: Flow) -> Path:
    p = Path(flow.source["file"]).expanduser()
    if not p.is_absolute() and not p.exists() and flow.path is not None:
        p = flow.path.parent / p
    if not p.exists():
        raise FlowError(f"{flow.where}: field 'source.file': file not found: {flow.source['file']}")
    return p.absolute()


def source_sql(flow: Flow) -> str:
    """The relation the flow reads: a table name or a DuckDB file reader."""
    if "table" in flow.source:
        return qi(flow.source["table"])
    p = _file_path(flow)
    fmt = file_format(flow, p)
    path = str(p).replace("'", "''")
    if fmt == "csv":
        return f"read_csv('{path}', header = true, all_varchar = true)"
    if fmt == "jsonl":
        return f"read_json('{path}', format = 'newline_delimited')"
    if fmt == "parquet":
        return f"read_parquet('{path}')"
    raise AssertionError(fmt)


def file_format(flow: Flow, path: Path) -> str:
    """A file source's format: ``source.format``, else from the file name's extension."""
    fmt = flow.source.get("format") or {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl",
                                         ".parquet": "parquet"}.get(path.suffix.lower())
    if fmt not in ("csv", "jsonl", "parquet"):
        raise FlowError(f"{flow.where}: field 'source.format': unknown format {fmt!r} (csv, jsonl, parquet)")
    return fmt


def source_columns(con: duckdb.DuckDBPyConnection, flow: Flow) -> list[str]:
    """The source's column names (reads only its schema)."""
    try:
        return [r[0] for r in con.execute(f"describe select * from {source_sql(flow)}").fetchall()]
    except duckdb.Error as exc:
        what = "source.table" if "table" in flow.source else "source.file"
        raise FlowError(f"{flow.where}: field '{what}': cannot read {flow.source.get('table') or flow.source['file']}: "
                        f"{str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------- validate and compile

@dataclass
class PlannedStep:
    index: int                 # 1-based position in the flow
    kind: str
    cte: str                   # name of the CTE holding the step's output
    params: dict[str, Any]     # with defaults filled in
    columns_in: list[str]
    compiled: CompiledStep
    key_in: str | None = None  # the flow's key column as named in this step's input (renames followed)
    key_out: str | None = None  # ... and in its output


def cte_name(index: int, step: dict[str, Any]) -> str:
    return f"s{index:02d}_{step['step']}"


def validate(flow: Flow, columns: list[str] | duckdb.DuckDBPyConnection) -> list[PlannedStep]:
    """Check every step against the columns flowing into it; returns the compiled plan.

    ``columns`` is the source's column list, or a connection: then the source's schema is read and
    each step's SQL is bound by DuckDB (``describe``: types and functions are checked, no row is
    read). Raises ``FlowError`` naming the file, the step (1-based index and kind) and the field.
    """
    con = columns if isinstance(columns, duckdb.DuckDBPyConnection) else None
    cols = source_columns(con, flow) if con is not None else list(columns)
    plan: list[PlannedStep] = []
    prev = SOURCE_CTE
    if flow.key and flow.key.lower() not in {c.lower() for c in cols}:
        raise FlowError(f"{flow.where}: field 'key': column {flow.key!r} not in the source; columns: {', '.join(cols)}")
    key = next((c for c in cols if c.lower() == flow.key.lower()), None) if flow.key else None
    dropped = ""  # set when a step drops the key: a later step that removes rows is then an error
    for i, raw in enumerate(flow.steps, 1):
        kind = raw.get("step")
        where = f"{flow.where}: step {i} ({kind})"
        if kind not in STEPS:
            raise FlowError(f"{flow.where}: step {i}: unknown step {kind!r}; steps: {', '.join(STEPS)}")
        spec = STEPS[kind]
        params = check_params(spec, {k: v for k, v in raw.items() if k != "step"}, cols, where)
        name = cte_name(i, raw)
        try:
            compiled = spec.compile(prev, name, cols, params)
        except BadParam as exc:
            raise FlowError(f"{where}: field {exc.field!r}: {exc.message}") from None
        if dropped and compiled.reason:
            raise FlowError(f"{dropped}, but step {i} ({kind}) removes rows after it: flow_row_fate could not "
                            "name them; keep the key column until the last step that removes rows (a rename "
                            "is followed), or remove 'key' from the flow")
        key_out = _follow_key(key, kind, params, compiled)
        if key is not None and key_out is None:
            fld = "rename" if kind == "select" and key in params.get("rename", {}) else "columns"
            dropped = f"{where}: field {fld!r}: drops the flow's key column {key!r}"
        plan.append(PlannedStep(i, kind, name, params, cols, compiled, key, key_out))
        cols, prev, key = compiled.columns, name, key_out
    _check_reserved(flow, plan, cols)
    if con is not None:
        ctes = [(SOURCE_CTE, f"select * from {source_sql(flow)}")]
        for p in plan:
            ctes += p.compiled.ctes
            body = ",\n".join(f"{n} as (\n{s}\n)" for n, s in ctes)
            try:
                con.execute(f"describe with {body} select * from {p.cte}")
            except duckdb.Error as exc:
                raise FlowError(f"{flow.where}: step {p.index} ({p.kind}): the step's SQL does not bind: "
                                f"{str(exc).splitlines()[0]}") from None
    return plan


def _check_reserved(flow: Flow, plan: list[PlannedStep], columns: list[str]) -> None:
    """The output table cannot hold a column DuckLake reserves: name the step that makes it, up front."""
    for col in columns:
        if col.lower() not in LAKE_RESERVED:
            continue
        # the step after which the column exists under this name, up to the end
        first = next((p for p in reversed(plan) if col.lower() not in {c.lower() for c in p.columns_in}), None)
        fix = "choose another name (or rename it in a later select step)"
        if first is None:
            where = f"{flow.where}: field 'source'"
            fix = "rename it in a first select step (rename: {" + col + ": <new name>})"
        else:
            fld = next((k for k, v in first.params.items()
                        if v == col or (isinstance(v, dict) and col in v.values())), None)
            where = f"{flow.where}: step {first.index} ({first.kind})" + (f": field {fld!r}" if fld else "")
        raise FlowError(f"{where}: output column {col!r} is reserved by the workspace (DuckLake keeps "
                        f"{', '.join(LAKE_RESERVED)} for itself, in any case): {fix}")


def _follow_key(key: str | None, kind: str, params: dict[str, Any], compiled: CompiledStep) -> str | None:
    """The key column's name after a step: the same, its new name after a ``select`` rename, or None."""
    if key is None:
        return None
    if kind == "select":
        new = params.get("rename", {}).get(key, key)
        keep = params.get("columns") or []
        return new if (not keep or key in keep) and new in compiled.columns else None
    return key if key in compiled.columns else None


def _header(flow: Flow, plan: list[PlannedStep], output: str | None) -> list[str]:
    reads = flow.source.get("table") or flow.source.get("file")
    lines = [f"-- creates: {output} (one row per row of {reads} that the flow keeps)" if output
             else f"-- query:   flow {flow.name} over {reads}",
             f"-- reads:   {reads}",
             "-- params:  (none)",
             f"-- flow:    {flow.path.name if flow.path else flow.name} ({len(plan)} steps), "
             "generated by `workbench flow compile`: edit the flow file, then compile again"]
    lossy = [f"{p.index} ({p.kind})" for p in plan if not p.compiled.portable]
    if lossy or "file" in flow.source:
        what = (["file source"] if "file" in flow.source else []) + lossy
        lines.append("-- spark:   beyond plain SQLGlot (run it with `workbench flow run --engine spark`): "
                     + ", ".join(what))
    if flow.description:
        lines += ["--", *(f"-- {ln}" for ln in flow.description.strip().splitlines())]
    return lines


def compile_sql(flow: Flow, columns: list[str] | duckdb.DuckDBPyConnection, *, output: str | None = "",
                source: str | None = None) -> str:
    """One SQL file: header comment, an import CTE, one named CTE per step, ``select *`` of the last.

    ``output=""`` wraps it in ``create or replace table <flow output>``; ``output=None`` gives the
    bare query. ``source`` overrides the relation read (a file reader is put in otherwise).
    """
    return _render(flow, validate(flow, columns), output=flow.output_table if output == "" else output,
                   source=source)


def _query(flow: Flow, plan: list[PlannedStep], source: str | None = None) -> str:
    """The flow as one query: an import CTE, the steps' CTEs, ``select *`` of the last."""
    ctes = [(SOURCE_CTE, f"select * from {source or source_sql(flow)}")]
    for p in plan:
        ctes += p.compiled.ctes
    body = ",\n\n".join(f"{name} as (\n{_indent(sql)}\n)" for name, sql in ctes)
    return f"with\n\n{body}\n\nselect * from {ctes[-1][0]}"


def _render(flow: Flow, plan: list[PlannedStep], *, output: str | None, source: str | None = None) -> str:
    out = output
    query = _query(flow, plan, source)
    text = "\n".join(_header(flow, plan, out)) + "\n\n"
    text += (f"create or replace table {qi(out)} as\n{query};\n" if out else f"{query}\n")
    return text


def spark_sql(sql: str) -> str:
    """The compiled SQL in Spark's dialect: SQLGlot with ``workbench.spark``'s dialect fixes (regex
    syntax, ``lower``, ``trim``, integer widths, word-shingle list functions; comments as ``/* */``),
    so it gives DuckDB's results on a
    ``workbench.spark.session()`` (which also defines ``nfc_normalize``). A construct whose result
    would differ on Spark is a FlowError."""
    import sqlglot

    from .spark import SparkError, to_spark_sql
    from .spark_flows import _lists

    out = []
    for stmt in sqlglot.parse(sql, read="duckdb"):
        if stmt is None:
            continue
        try:
            text = to_spark_sql(_lists(stmt), source="the compiled flow")
        except SparkError as exc:
            raise FlowError(str(exc)) from None
        out.append(sqlglot.transpile(text, read="spark", write="spark", pretty=True)[0])
    return ";\n".join(out) + ";\n"


def spark_target(spark=None) -> str | None:
    """Where a Spark session runs: its Spark Connect URL (``sc://host:port``) or its master URL
    (``local[2]``, ``spark://host:7077``); ``spark`` None: the session ``workbench.spark.session()`` holds."""
    from . import spark as wbspark

    state = wbspark._STATE
    if spark is None or spark is state["session"]:
        if state["key"]:
            return state["key"][1]
        spark = spark or state["session"]
    if spark is None:
        return None
    try:
        if wbspark._is_connect(spark):
            return f"sc://{spark.client._builder.url.netloc}"  # pyspark keeps it parsed, as http://host:port
        return spark.sparkContext.master
    except Exception:  # a session of another make: the run is not to fail for its record
        return "sc://?" if wbspark._is_connect(spark) else None


def compile_spark_sql(flow: Flow, con: duckdb.DuckDBPyConnection, *, output: str | None = "") -> str:
    """``compile_sql`` in Spark's dialect (``workbench flow compile --spark``), each step's SQL transpiled
    as ``run_flow(engine="spark")`` transpiles it: with the DuckDB types of the step's input columns,
    so casts round and read numeric text ('2.5', '0x10', '1_000') as DuckDB does. Run it on a
    ``workbench.spark.session()``; a construct whose result would differ on Spark is a FlowError."""
    import sqlglot

    from .spark_flows import _spark_sql

    plan = validate(flow, con)
    out = flow.output_table if output == "" else output
    ctes = [(SOURCE_CTE, _spark_sql(f"select * from {source_sql(flow)}", f"{flow.where}: the source"))]
    for p in plan:
        types = _types_after(con, flow, plan, p.index - 1)
        where = f"{flow.where}: step {p.index} ({p.kind})"
        ctes += [(name, _spark_sql(sql, where, types)) for name, sql in p.compiled.ctes]
    body = ",\n".join(f"{name} AS (\n{sql}\n)" for name, sql in ctes)
    query = f"WITH {body}\nSELECT * FROM {ctes[-1][0]}"
    name = "`" + out.replace("`", "``") + "`" if out else None  # Spark quotes names with backticks
    stmt = f"CREATE OR REPLACE TABLE {name} AS\n{query}" if out else query
    pretty = sqlglot.transpile(stmt, read="spark", write="spark", pretty=True)[0]
    return "\n".join(_header(flow, plan, out)) + "\n\n" + pretty + ";\n"


def _types_after(con: duckdb.DuckDBPyConnection, flow: Flow, plan: list[PlannedStep], k: int) -> dict[str, str]:
    """Column → DuckDB type after the first ``k`` steps of a validated plan (0: the source)."""
    return {r[0]: r[1] for r in con.execute(f"describe {_query(flow, plan[:k])}").fetchall()}


def _indent(sql: str) -> str:
    """Four spaces before every line, except lines that continue a string literal (their text is data)."""
    out, in_string = ["    "], False
    sql = sql.strip("\n")
    for i, ch in enumerate(sql):
        if ch == "'":
            in_string = not in_string
        out.append(ch)
        if ch == "\n" and not in_string and i + 1 < len(sql) and sql[i + 1] != "\n":
            out.append("    ")
    return "".join(out)


# --------------------------------------------------------------------------- run step by step

@dataclass
class StepResult:
    index: int               # 0 = the source
    kind: str
    rows_in: int
    rows_out: int
    reason: str | None       # why rows left (None when none can)
    head: pd.DataFrame       # first rows after the step

    @property
    def removed(self) -> int:
        return max(self.rows_in - self.rows_out, 0)


@dataclass
class FlowRun:
    run_id: str
    flow: Flow
    output: str | None
    steps: list[StepResult]
    sql: str

    def stats(self) -> pd.DataFrame:
        return pd.DataFrame([{"step_index": s.index, "step_name": s.kind, "rows_in": s.rows_in,
                              "rows_out": s.rows_out, "removed": s.removed, "reason": s.reason}
                             for s in self.steps])


def _execute(con: duckdb.DuckDBPyConnection, flow: Flow, *, upto: int | None, limit: int,
             keep_last: bool = False, fates: bool = False,
             plan: list[PlannedStep] | None = None) -> tuple[list[PlannedStep], list[StepResult], str, list[tuple]]:
    """Run the source and each step into temp tables; returns plan, results, last temp table, fates."""
    plan = plan if plan is not None else validate(flow, con)
    if upto is not None:
        plan = plan[:upto]
    tag = secrets.token_hex(4)
    tmp = [f"_flow_{tag}_{i:02d}" for i in range(len(plan) + 1)]
    results: list[StepResult] = []
    fate_rows: list[tuple] = []
    try:
        con.execute(f"create temp table {tmp[0]} as select * from {source_sql(flow)}")
        n = con.execute(f"select count(*) from {tmp[0]}").fetchone()[0]
        results.append(StepResult(0, "source", n, n, None, con.execute(f"select * from {tmp[0]} limit {limit}").df()))
        for p, prev, cur in zip(plan, tmp, tmp[1:]):
            # Same step SQL as the compiled file; only the relation names differ.
            compiled = STEPS[p.kind].compile(prev, p.cte, p.columns_in, p.params)
            with_ = ",\n".join(f"{name} as (\n{sql}\n)" for name, sql in compiled.ctes)
            try:
                con.execute(f"create temp table {cur} as with {with_} select * from {p.cte}")
            except duckdb.Error as exc:
                raise FlowError(f"{flow.where}: step {p.index} ({p.kind}) failed: {str(exc).splitlines()[0]}") from None
            rows_in = results[-1].rows_out
            rows_out = con.execute(f"select count(*) from {cur}").fetchone()[0]
            if fates and p.key_in and p.key_out and compiled.reason:
                # a multiset difference: one fate per removed row, also when copies of a key
                # (oversampling) are removed by a later step
                gone = con.execute(f"select cast({qi(p.key_in)} as varchar) from {prev} except all "
                                   f"select cast({qi(p.key_out)} as varchar) from {cur}").fetchall()
                fate_rows += [(r[0], p.index, p.kind, compiled.reason) for r in gone]
            results.append(StepResult(p.index, p.kind, rows_in, rows_out, compiled.reason,
                                      con.execute(f"select * from {cur} limit {limit}").df()))
            con.execute(f"drop table {prev}")
        return plan, results, tmp[len(plan)], fate_rows
    finally:
        for t in tmp if not keep_last else tmp[:len(plan)]:
            con.execute(f"drop table if exists {t}")


def preview(con: duckdb.DuckDBPyConnection, flow: Flow, *, upto: int | None = None,
            limit: int = 5, engine: str = "duckdb", spark=None) -> list[StepResult]:
    """Row counts and first rows after the source and after each step (nothing is written).
    ``engine="spark"``: the steps run on Spark (``spark``, else ``workbench.spark.session()``)."""
    if engine not in ENGINES:
        raise FlowError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "duckdb":
        return _execute(con, flow, upto=upto, limit=limit)[1]
    from .spark_flows import execute_spark

    plan = validate(flow, con)[:upto]
    results, _, _, cleanup = execute_spark(
        con, flow, plan, run_id=f"preview-{secrets.token_hex(4)}", spark=spark, limit=limit, write=False,
        types_at=lambda k: _types_after(con, flow, plan, k))
    cleanup()
    return results


_STATS_DDL = """
create table if not exists flow_step_stats (
    flow_name varchar, run_id varchar, step_index integer, step_name varchar,
    rows_in bigint, rows_out bigint, reason varchar, created_at timestamp
);
create table if not exists flow_row_fate (
    flow_name varchar, run_id varchar, row_key varchar, step_index integer, step_name varchar, reason varchar
);
create table if not exists flow_runs (
    run_id varchar, flow_name varchar, flow_file varchar, source varchar, output_table varchar,
    rows_in bigint, rows_out bigint, started_at timestamp, finished_at timestamp, flow_yaml varchar, sql varchar,
    engine varchar, spark_target varchar
);
-- columns flow_runs gained after its first version: an older workspace's table gets them (older rows: null)
alter table flow_runs add column if not exists engine varchar;
alter table flow_runs add column if not exists spark_target varchar;
"""


def run_flow(con: duckdb.DuckDBPyConnection, flow: Flow | str | Path, *, output: str | None = None,
             run_id: str | None = None, engine: str = "duckdb", spark=None) -> FlowRun:
    """Validate, run step by step, then write the output table and the row accounting in one transaction.

    Writes ``<output>`` (default: the flow's ``output`` or ``flow_<name>``), appends to
    ``flow_step_stats`` (one row per step, index 0 = source), ``flow_row_fate`` (one row per removed
    row, when the flow names a ``key``) and ``flow_runs``. ``engine="spark"`` runs the steps on
    Apache Spark (``spark``, else ``workbench.spark.session()``) with the same results; its output
    and fates are staged as Parquet under ``<workspace>/spark/_flows/<run_id>/`` until registered.
    """
    if engine not in ENGINES:
        raise FlowError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if not isinstance(flow, Flow):
        flow = load_flow(flow)
    out = output or flow.output_table
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    run_id = run_id or f"flow-{started:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    plan = validate(flow, con)
    sql = _render(flow, plan, output=out)
    if engine == "spark":
        from .spark_flows import execute_spark

        results, staged, fates, cleanup = execute_spark(con, flow, plan, run_id=run_id, spark=spark,
                                                        types_at=lambda k: _types_after(con, flow, plan, k))
        target = spark_target(spark)
    else:
        target = None
        plan, results, staged, fates = _execute(con, flow, upto=None, limit=5, keep_last=True, fates=True, plan=plan)
        cleanup = lambda: con.execute(f"drop table if exists {staged}")  # noqa: E731
    stats = [(flow.name, run_id, r.index, r.kind, r.rows_in, r.rows_out, r.reason, started) for r in results]
    src = flow.source.get("table") or flow.source.get("file")

    def write(c: duckdb.DuckDBPyConnection) -> None:
        c.execute(_STATS_DDL)
        c.execute(f"create or replace table {qi(out)} as select * from {staged}")
        c.executemany("insert into flow_step_stats values (?, ?, ?, ?, ?, ?, ?, ?)", stats)
        if isinstance(fates, str):  # staged by Spark
            c.execute(f"insert into flow_row_fate select ?, ?, row_key, step_index, step_name, reason from {fates}",
                      [flow.name, run_id])
        elif fates:
            c.executemany("insert into flow_row_fate values (?, ?, ?, ?, ?, ?)",
                          [(flow.name, run_id, *f) for f in fates])
        c.execute("insert into flow_runs by name select ? as run_id, ? as flow_name, ? as flow_file, ? as source, "
                  "? as output_table, ? as rows_in, ? as rows_out, ? as started_at, ? as finished_at, "
                  "? as flow_yaml, ? as sql, ? as engine, ? as spark_target",
                  [run_id, flow.name, str(flow.path) if flow.path else None, src, out, results[0].rows_out,
                   results[-1].rows_out, started, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                   flow.to_yaml(), sql, engine, target])

    try:
        transaction(con, write, what=f"flow {flow.name}" + (" (Spark)" if engine == "spark" else ""))
    finally:
        cleanup()
    return FlowRun(run_id, flow, out, results, sql)
