"""The data preparation on Apache Spark: the same ``sql/`` files, transpiled with SQLGlot.

    workbench run -p engine spark --only 01 --only 02 --only 06       # local Spark (local[*])
    SPARK_REMOTE=sc://localhost:15002 workbench run -p engine spark   # through a Spark Connect server
    python -c "import workbench, workbench.data as d; d.build_spine(workbench.connect(), engine='spark')"

The workspace stays DuckDB's (the DuckLake catalog). For a SQL file, Spark reads each workspace table
the file reads straight from the table's Parquet data files, runs each statement (DuckDB SQL transpiled
to Spark SQL, with the fixes below), writes each table it creates as a Parquet dataset
``<workspace>/spark/<table>/``, and then registers those tables in the workspace in one transaction, so
later steps, ``%%sql`` cells and notebooks read them unchanged. Ingest on Spark is in
``workbench.spark_ingest``; flows in ``workbench.spark_flows``; templates in ``workbench.template_sql``.

SQLGlot transpiles these silently, yet Spark's results would differ; the transpiler here fixes them
(each one measured, see docs/spark.md): RE2 vs java.util.regex (``\\b``, ``\\s``, ``$``, ``.``, and
``\\1`` in replacements); ``lower()`` (Spark: full case mapping, İ→i̇ and final Σ→ς); ``trim()``
(DuckDB strips every Unicode space separator, Spark only U+0020); ``strpos()``/``length()`` (INT on
Spark, BIGINT on DuckDB: arithmetic on them overflows on Spark); ``nfc_normalize()`` (no Spark
builtin: a session function over the ICU normalizer that ships with Spark); ``regexp_full_match``.
``regexp_replace`` without the ``'g'`` flag is refused (Spark replaces every match).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .workspace import (ALIAS, WorkspaceError, render_sql, sql_literal, sql_path, table_exists,
                        transaction, workspace_root)


@dataclass
class SparkConfig:
    """Where Spark runs and how a session is set up (``session()`` arguments override these)."""
    master: str = ""             # local[*], local[2], spark://host:7077, yarn; "": $WORKBENCH_SPARK_MASTER or local[*]
    remote: str = ""             # Spark Connect URL sc://host:15002; "": $SPARK_REMOTE; when set, master is unused
    shuffle_partitions: int = 8  # partitions after a shuffle: 2-4x the cores (Spark's 200 is slow on a laptop)
    driver_memory: str = "2g"    # JVM heap of a local/classic driver (local mode: the executors too)
    app_name: str = "workbench"
    extra_conf: dict[str, str] = field(default_factory=dict)  # any other spark.* settings


# Session settings the results depend on (runtime SQL settings: they also apply through Spark Connect).
RUNTIME_CONF = {
    "spark.sql.session.timeZone": "UTC",                 # DuckDB TIMESTAMP has no zone: read/write wall time
    "spark.sql.timestampType": "TIMESTAMP_NTZ",          # ... and TIMESTAMP_NTZ is Spark's zone-less timestamp
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # not INT96: DuckDB reads micros exactly
    "spark.sql.variant.allowDuplicateKeys": "true",      # DuckDB's JSON accepts {"a": 1, "a": 2}
}
# nfc_normalize: ICU (a Spark dependency) through reflect, as a SQL function so it needs no Python on the
# server. ICU's Normalizer.compose(s, false) is NFC; reflect throws on null, hence the case.
FUNCTIONS = [
    "create or replace temporary function nfc_normalize(s string) returns string return "
    "case when s is null then null else reflect('com.ibm.icu.text.Normalizer', 'compose', s, false) end",
]
# DuckDB's trim() strips every Unicode space separator (category Zs); Spark's strips U+0020 only.
ZS_SPACES = ("\u0020\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
             "\u202f\u205f\u3000")
INVALID_ENCODING = ("invalid encoding: Invalid unicode (byte sequence mismatch) detected. "
                    "This file is not utf-8 encoded.")  # DuckDB's wording, so rejects read the same
SPARK_DIR = "spark"  # <workspace>/spark/<table>/: the Parquet datasets Spark writes

# the master URLs spark-submit takes (a typo would otherwise end in Py4J's "Java gateway process exited")
MASTER_URL = re.compile(r"^(local(\[(\*|[0-9]+)(, *[0-9]+)?\])?|local-cluster\[[0-9, ]+\]|"
                        r"(spark|k8s|mesos)://.+|yarn)$")

_STATE: dict[str, Any] = {"session": None, "key": None}


class SparkError(WorkspaceError):
    """Spark cannot run this (no Java, no Connect client, an unsupported SQL construct): says why."""


# ---------------------------------------------------------------------------------------- sessions

def session(master: str | None = None, remote: str | None = None, *, config: SparkConfig | None = None):
    """The Spark session the ``engine="spark"`` functions use; started on first call, then reused.

    ``remote`` (``sc://host:port``, else ``$SPARK_REMOTE``) connects to a Spark Connect server;
    otherwise ``master`` (else ``$WORKBENCH_SPARK_MASTER``, else ``local[*]``) starts a classic session
    (local, or a cluster master such as ``spark://host:7077``). Without arguments it returns the running
    session, if any; asking for another master or remote stops the running one first.
    """
    current = _STATE["session"]
    if current is not None and not (master or remote or config) and _alive(current):
        return current
    cfg = config or SparkConfig()
    remote = remote or cfg.remote or ("" if master else os.environ.get("SPARK_REMOTE", ""))
    master = master or cfg.master or os.environ.get("WORKBENCH_SPARK_MASTER", "") or "local[*]"
    if remote and not re.match(r"^sc://[^/]+", remote):
        raise SparkError(f"spark_remote {remote!r}: a Spark Connect URL looks like sc://host:15002")
    if not remote and not MASTER_URL.match(master):
        raise SparkError(f"spark_master {master!r}: a Spark master URL looks like local[*], local[2], "
                         "spark://host:7077, yarn or k8s://https://host:443")
    key = ("remote", remote) if remote else ("master", master)
    if current is not None and _STATE["key"] == key and _alive(current):
        return current
    if remote:
        _check_reachable(remote)  # before stopping the running session
    stop()
    if remote:
        spark = _connect(remote)
    else:
        spark = _classic(master, cfg)
    for k, v in {**RUNTIME_CONF, "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions)}.items():
        spark.conf.set(k, v)
    for k, v in cfg.extra_conf.items():
        spark.conf.set(k, v)
    for stmt in FUNCTIONS:
        spark.sql(stmt)
    _STATE.update(session=spark, key=key)
    return spark


def _connect(remote: str):
    try:
        from pyspark.sql.connect.utils import check_dependencies
        check_dependencies()
    except Exception as exc:  # ImportError, or pyspark's own error naming the missing package
        raise SparkError(f"Spark Connect needs the client packages: pip install -e '.[spark]' "
                         f"(pyspark[connect]==4.3.0) ({exc})") from exc
    from pyspark.sql import SparkSession
    return SparkSession.builder.remote(remote).getOrCreate()


def _check_reachable(remote: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at the Connect URL (the gRPC client would retry for minutes)."""
    import socket

    hostport = remote[len("sc://"):].split("/", 1)[0]
    host, _, port = hostport.rpartition(":") if re.search(r":[0-9]+$", hostport) else (hostport, "", "15002")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SparkError(f"spark_remote {remote!r}: no Spark Connect server answers at {host}:{port} ({exc}); "
                         "start one (docs/spark.md) or fix spark_remote / $SPARK_REMOTE") from exc


def _classic(master: str, cfg: SparkConfig):
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise SparkError("a local or cluster Spark session needs Java 17+ here (apt-get install "
                         "openjdk-17-jre-headless), or use a Spark Connect server: spark_remote=sc://host:15002")
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkError(f"engine='spark' needs pyspark: pip install -e '.[spark]' (pyspark[connect]==4.3.0) ({exc})") from exc
    # pyspark would turn the builder into a Connect client; and its functions follow this mode flag
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
    saved = os.environ.pop("SPARK_REMOTE", None)
    try:
        builder = (SparkSession.builder.master(master).appName(cfg.app_name)
                   .config("spark.driver.memory", cfg.driver_memory)
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.sql.warehouse.dir", str(Path(tempfile.gettempdir()) / "workbench-spark-warehouse")))
        if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
            # Python UDFs (templates rendered by Jinja) run in this Python, with workbench importable; pyspark's
            # default is the first python3 on PATH, which outside an activated venv lacks them
            os.environ["PYSPARK_PYTHON"] = sys.executable
        try:
            spark = builder.getOrCreate()
        except Exception as exc:  # the JVM would not start: Py4J's 'Java gateway process exited'
            raise SparkError(f"spark_master {master!r}: Spark did not start ({_short(exc)}); check the master URL, "
                             "Java 17+ (JAVA_HOME) and the Java error printed above") from exc
    finally:
        if saved is not None:
            os.environ["SPARK_REMOTE"] = saved
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _alive(spark) -> bool:
    try:
        if _is_connect(spark):
            return not spark.is_stopped
        return spark.sparkContext._jsc is not None
    except Exception:
        return False


def _is_connect(spark) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def stop() -> None:
    """Stop the session ``session()`` started (a Connect server keeps running; only the client stops)."""
    spark = _STATE["session"]
    _STATE.update(session=None, key=None)
    if spark is not None:
        try:
            spark.stop()
        except Exception:
            pass
        if _is_connect(spark):  # pyspark.sql.functions build Connect columns while this is set
            os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)


# ---------------------------------------------------------------------------------------- transpiling

WORD = "[0-9A-Za-z_]"  # RE2's \w (ASCII); Java 17's \b also treats non-ASCII letters as word characters
_RE2_TO_JAVA = {
    "b": f"(?:(?<={WORD})(?!{WORD})|(?<!{WORD})(?={WORD}))",
    "B": f"(?:(?<={WORD})(?={WORD})|(?<!{WORD})(?!{WORD}))",
    "s": "[\\t\\n\\f\\r ]",   # RE2's \s has no \v (Java's has)
    "S": "[^\\t\\n\\f\\r ]",
    "z": "\\z", "A": "\\A",
}


def java_regex(pattern: str) -> str:
    """An RE2 pattern (DuckDB) as a java.util.regex pattern (Spark) that matches the same strings.

    Translated: ``\\b \\B \\s \\S`` (ASCII, as in RE2), ``$`` (RE2: end of text; Java: also before a
    final newline), ``.`` (Java also stops at ``\\r``, U+0085, U+2028/9), ``[`` inside a class (Java:
    nested class), ``(?P<name>``. Refused: POSIX classes ``[[:alpha:]]``, ``\\C``.
    """
    flags = re.match(r"^\(\?([a-zA-Z]+)\)", pattern)
    multiline = bool(flags and "m" in flags.group(1))
    dotall = bool(flags and "s" in flags.group(1))
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            n = pattern[i + 1]
            if n == "C":
                raise SparkError(f"regex {pattern!r}: \\C has no java.util.regex equivalent")
            if in_class and n == "s":
                out.append("\\t\\n\\f\\r ")
            elif in_class and n == "S":
                out.append("[^\\t\\n\\f\\r ]")  # a nested class: Java's class union
            elif not in_class and n in _RE2_TO_JAVA:
                out.append(_RE2_TO_JAVA[n])
            else:
                out.append(c + n)
            i += 2
            continue
        if in_class:
            if c == "[":
                if pattern.startswith("[:", i):
                    raise SparkError(f"regex {pattern!r}: POSIX classes like [[:alpha:]] differ on Spark; "
                                     "write the characters out ([A-Za-z])")
                out.append("\\[")
            elif c == "&" and pattern.startswith("&&", i):
                out.append("&\\&")
                i += 1
            else:
                out.append(c)
                if c == "]" and not _class_start(out):
                    in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            # a ']' right after '[' or '[^' is a literal in both engines
            j = i + 1
            if pattern.startswith("^", j):
                out.append("^")
                j += 1
            if pattern.startswith("]", j):
                out.append("\\]")
                j += 1
            out.append("\x00")  # marks the start of the class body (removed below)
            i = j
            continue
        if c == "$" and not multiline:
            out.append("\\z")
        elif c == "." and not dotall:
            out.append("[^\\n]")
        elif c == "(" and pattern.startswith("(?P<", i):
            out.append("(?<")
            i += 3
        else:
            out.append(c)
        i += 1
    return "".join(out).replace("\x00", "")


def _class_start(out: list[str]) -> bool:
    """True when the ']' just appended closes nothing (it directly follows the class start marker)."""
    return len(out) >= 2 and out[-2] == "\x00"


def java_replacement(replacement: str) -> str:
    """An RE2 rewrite string (``\\1`` groups) as a Java replacement (``$1``; ``$`` is literal)."""
    out, i = [], 0
    while i < len(replacement):
        c = replacement[i]
        if c == "\\" and i + 1 < len(replacement):
            n = replacement[i + 1]
            out.append("$" + n if n.isdigit() else "\\\\" if n == "\\" else n)
            i += 2
            continue
        out.append("\\$" if c == "$" else c)
        i += 1
    return "".join(out)


def _regex_classes():
    from sqlglot import exp

    names = ("RegexpReplace", "RegexpLike", "RegexpILike", "RegexpExtract", "RegexpExtractAll",
             "RegexpSplit", "RegexpFullMatch", "RegexpCount", "RegexpInstr")
    return tuple(getattr(exp, n) for n in names if hasattr(exp, n))


def _refuse_traps(tree, source: str) -> None:
    """Constructs SQLGlot transpiles (or passes on) silently although Spark's result differs or Spark
    cannot parse them (ARCHITECTURE.md): a SparkError naming the file and the portable rewrite."""
    from sqlglot import exp

    for n in tree.walk():
        why = None
        if isinstance(n, exp.Select) and n.args.get("qualify") and any(isinstance(e, exp.Star) for e in n.expressions):
            why = "QUALIFY over SELECT * (Spark adds the window column): list the columns"
        elif isinstance(n, exp.Format):
            why = "format('{}', ...) (Spark leaves the literal): use printf('%s', ...)"
        elif isinstance(n, exp.Join) and str(n.args.get("method") or "").upper() == "ASOF":
            why = "ASOF JOIN (Spark cannot parse it): a window over a union"
        elif (isinstance(n, exp.Substring) and isinstance(n.args.get("start"), exp.Literal)
              and n.args["start"].name == "0"):
            why = "substr(x, 0, n) (DuckDB: n-1 characters, Spark: n): start at 1"
        elif isinstance(n, exp.DateDiff):
            why = "date_diff (its unit and boundary rules differ on Spark)"
        elif isinstance(n, exp.TimeToUnix):
            why = "epoch() (its type and fraction differ on Spark)"
        elif (isinstance(n, exp.Cast) and isinstance(n.this, exp.Literal) and n.this.is_string
              and n.this.name.lower().startswith("0x")):
            why = "'0x...'::BIGINT (Spark does not parse hex): sum the hex digits with strpos (06_splits.sql)"
        if why:
            raise SparkError(f"{source}: {why}; the SQL must stay in the portable subset to run on Spark")


def to_spark_sql(node, *, source: str = "<sql>") -> str:
    """One DuckDB SQL expression/query (a SQLGlot tree) as Spark SQL, with the dialect fixes applied."""
    from sqlglot import exp

    tree = node.copy()
    _refuse_traps(tree, source)
    regex_nodes = _regex_classes()
    # deepest nodes first, so a fixed node's children are already fixed
    for n in reversed(list(tree.dfs())):
        if isinstance(n, exp.Lower):
            # Spark lower-cases with full case mapping (İ→i̇, final Σ→ς); DuckDB maps code points simply
            inner = exp.Anonymous(this="replace", expressions=[
                exp.Anonymous(this="replace", expressions=[n.this, exp.Literal.string("İ"), exp.Literal.string("i")]),
                exp.Literal.string("Σ"), exp.Literal.string("σ")])
            n.replace(exp.Lower(this=inner))
        elif isinstance(n, exp.Trim) and n.args.get("expression") is None:
            n.set("expression", exp.Literal.string(ZS_SPACES))
        elif isinstance(n, (exp.StrPosition, exp.Length)) and not isinstance(n.parent, exp.Cast):
            # DuckDB returns BIGINT, Spark INT: (strpos(..) - 1) * 268435456 overflows on Spark (ANSI)
            n.replace(exp.Cast(this=n.copy(), to=exp.DataType.build("bigint")))
        elif isinstance(n, regex_nodes):
            _fix_regex(n, source)
    return tree.sql(dialect="spark")


def _fix_regex(n, source: str) -> None:
    from sqlglot import exp

    pattern = n.args.get("expression")
    if not (isinstance(pattern, exp.Literal) and pattern.is_string):
        raise SparkError(f"{source}: {n.key}: the pattern must be a string literal to run on Spark")
    flags = ""
    if isinstance(n, exp.RegexpReplace):
        mods = n.args.get("modifiers")
        mods = mods.name if isinstance(mods, exp.Literal) else ""
        if "g" not in mods:
            raise SparkError(f"{source}: regexp_replace(..., {pattern.name!r}, ...) without the 'g' flag replaces "
                             "the first match on DuckDB but every match on Spark; add 'g' (or rewrite)")
        unknown = set(mods) - set("gic")
        if unknown:
            raise SparkError(f"{source}: regexp_replace flags {''.join(sorted(unknown))!r} are not portable")
        flags = "(?iu)" if "i" in mods else ""
        n.set("modifiers", None)
        repl = n.args.get("replacement")
        if isinstance(repl, exp.Literal) and repl.is_string:
            n.set("replacement", exp.Literal.string(java_replacement(repl.name)))
        elif repl is not None:
            raise SparkError(f"{source}: regexp_replace: the replacement must be a string literal to run on Spark")
    elif isinstance(n, exp.RegexpILike):
        flags = "(?iu)"
    java = flags + java_regex(pattern.name)
    if type(n).__name__ == "RegexpFullMatch":  # no Spark function: an anchored rlike
        n.replace(exp.RegexpLike(this=n.this, expression=exp.Literal.string(f"\\A(?:{java})\\z")))
        return
    n.set("expression", exp.Literal.string(java))


# ---------------------------------------------------------------------------------------- workspace tables

def spark_dir(con) -> Path:
    """``<workspace>/spark``: the Parquet datasets Spark writes, one folder per table."""
    return workspace_root(con) / SPARK_DIR


def read_workspace_table(spark, con, table: str):
    """A workspace table as a Spark DataFrame, read from the table's own Parquet files when they hold
    all of it (no deletes, no inlined rows, no renamed columns), else from a snapshot exported to
    ``<workspace>/spark/_export/<table>.parquet``."""
    if not table_exists(con, table):
        raise SparkError(f"table {table!r} is not in the workspace (run the step that writes it first)")
    view = con.execute("select sql from duckdb_views() where database_name = ? and view_name = ?",
                       [ALIAS, table]).fetchall()
    if view and (df := _view_on_spark(spark, con, view[0][0])) is not None:
        return df
    columns = [r[0] for r in con.execute(f'describe "{table}"').fetchall()]
    files = _table_files(con, table)
    if files:
        df = spark.read.parquet(*files)
        if sorted(df.columns) == sorted(columns):
            return df.select(*[f"`{c}`" for c in columns])
    path = spark_dir(con) / "_export" / f"{table}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f'copy (select * from "{table}") to {sql_literal(str(path))} (format parquet)')
    return spark.read.parquet(str(path))


def _view_on_spark(spark, con, ddl: str):
    """A workspace view as a Spark DataFrame: its query on Spark over its own inputs (read like any
    workspace table), or None when SQLGlot cannot carry it over (the caller exports it instead)."""
    import sqlglot
    from sqlglot import exp

    try:
        stmt = sqlglot.parse_one(ddl, read="duckdb")
        query = stmt.expression
        ctes = {c.alias_or_name for c in query.find_all(exp.CTE)}
        tables = [t for t in query.find_all(exp.Table) if t.name not in ctes]
        if not isinstance(query, exp.Query) or any(not isinstance(t.this, exp.Identifier) for t in tables):
            return None
        for name in sorted({t.name for t in tables}):
            read_workspace_table(spark, con, name).createOrReplaceTempView(name)
        return spark.sql(to_spark_sql(query, source=f"view {stmt.this.name}"))
    except Exception:
        return None


def _table_files(con, table: str) -> list[str]:
    """The Parquet files holding every row of ``table``, or [] when some rows live elsewhere."""
    try:
        rows = con.execute("select data_file, delete_file, data_file_encryption_key "
                           "from ducklake_list_files(?, ?)", [ALIAS, table]).fetchall()
    except Exception:  # a view, or not a DuckLake table
        return []
    if not rows or any(r[1] is not None or r[2] is not None for r in rows):
        return []
    files = [r[0] for r in rows]
    in_files = con.execute("select sum(num_rows) from parquet_file_metadata(?)", [files]).fetchone()[0]
    total = con.execute(f'select count(*) from "{table}"').fetchone()[0]
    return files if in_files == total else []  # small inserts are inlined in the catalog, not in files


SMALL_INTS = {"INTEGER": "int", "SMALLINT": "smallint", "TINYINT": "tinyint"}  # DuckDB type -> Spark cast


def _normalized(df, types: Mapping[str, str] | None = None):
    """Output types as DuckDB would give them: TIMESTAMP → NTZ; 32-bit and smaller integers → BIGINT
    (DuckDB's ``row_number()``, ``length()`` ...), unless ``types`` (column → DuckDB type of the same
    query) says DuckDB keeps the column INTEGER / SMALLINT / TINYINT (``try_cast(x as integer)``)."""
    from pyspark.sql import types as T

    types = types or {}
    cols = []
    for f in df.schema.fields:
        c = df[f"`{f.name}`"]
        if isinstance(f.dataType, (T.IntegerType, T.ShortType, T.ByteType)):
            c = c.cast(SMALL_INTS.get(types.get(f.name, ""), "bigint"))
        elif isinstance(f.dataType, T.TimestampType):
            c = c.cast("timestamp_ntz")
        cols.append(c.alias(f.name))
    return df.select(*cols)


def write_dataset(df, path: Path | str, types: Mapping[str, str] | None = None) -> str:
    """Write a DataFrame as a Parquet dataset folder (replacing it); returns its path. ``types``:
    column → DuckDB type, for the integer widths (see ``_normalized``)."""
    _normalized(df, types).write.mode("overwrite").parquet(str(path))
    return str(path)


def register(con, datasets: Mapping[str, Path | str], *, what: str = "registering Spark output",
             views: Sequence[str] = ()) -> None:
    """Make Parquet dataset folders workspace tables (``create or replace``), then run ``views``
    (``create or replace view`` statements in DuckDB SQL), all in one transaction."""
    from .workspace import drop_tables_becoming_views

    def body(c):
        for table, path in datasets.items():
            c.execute(f'create or replace table "{table}" as select * from read_parquet('
                      f'{sql_literal(str(Path(path) / "*.parquet"))})')
        for ddl in views:
            drop_tables_becoming_views(c, ddl)
            c.execute(ddl)
    transaction(con, body, what=what)


# ---------------------------------------------------------------------------------------- SQL files

def run_sql_file_spark(con, name: str | os.PathLike, params: Mapping[str, Any] | None = None, *,
                       spark=None) -> list[str]:
    """Run one SQL file on Spark; its tables land in ``<workspace>/spark/<table>/`` and in the
    workspace (one transaction). Returns the tables written.

    Statements: ``create [or replace] table T as <query>``, ``insert into T [(cols)] <query>`` and
    ``create or replace view V as <query>`` (a view over the file's tables: in the workspace it is
    the same DuckDB view, which later Spark runs read by running its query on Spark).
    """
    import sqlglot
    from sqlglot import exp

    spark = spark or session()
    path = sql_path(name)
    text = render_sql(path.read_text(), params, source=str(path))
    try:
        statements = [s for s in sqlglot.parse(text, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise SparkError(f"{path.name}: SQLGlot cannot parse it: {exc}") from exc
    out = spark_dir(con)
    views: dict[str, str] = {}  # table -> where its view reads from in this run
    written: dict[str, str] = {}
    view_ddl: list[str] = []  # views land in the workspace as DuckDB views over the tables written
    for k, stmt in enumerate(statements, 1):
        where = f"{path.name} statement {k}"
        is_view = isinstance(stmt, exp.Create) and stmt.kind == "VIEW"
        if is_view and isinstance(stmt.expression, exp.Query):
            target, query, columns = _table_name(stmt.this), stmt.expression, None
        elif isinstance(stmt, exp.Create) and stmt.kind == "TABLE" and isinstance(stmt.expression, exp.Query):
            target, query, columns = _table_name(stmt.this), stmt.expression, None
        elif isinstance(stmt, exp.Insert) and isinstance(stmt.expression, exp.Query):
            target = _table_name(stmt.this)
            columns = [c.name for c in stmt.this.expressions] if isinstance(stmt.this, exp.Schema) else []
            query = stmt.expression.copy()
            if stmt.args.get("with"):  # SQLGlot hangs 'insert into ... with ...' CTEs on the insert
                query.set("with", stmt.args["with"].copy())
        else:
            raise SparkError(f"{where}: only 'create table ... as <query>', 'create view ... as <query>' and "
                             f"'insert into ... <query>' run on Spark, not {stmt.key.upper()}")
        ctes = {c.alias_or_name for c in query.find_all(exp.CTE)}
        tables = list(query.find_all(exp.Table))
        for t in tables:
            if not isinstance(t.this, exp.Identifier):  # read_parquet(...), range(...): DuckDB's
                raise SparkError(f"{where}: the table function {t.this.sql()} runs on DuckDB only")
        inputs = {t.name for t in tables if t.name not in ctes}
        if columns is not None:
            inputs.add(target)
        for table in sorted(inputs):
            if table not in views:
                read_workspace_table(spark, con, table).createOrReplaceTempView(table)
                views[table] = "workspace"
        if is_view:  # a Spark temp view for the statements after it; a DuckDB view in the workspace
            try:
                spark.sql(to_spark_sql(query, source=where)).createOrReplaceTempView(target)
            except SparkError:
                raise
            except Exception as exc:
                raise SparkError(f"{where} ({target}): Spark failed: {_short(exc)}") from exc
            views[target] = "view"
            view_ddl.append(stmt.sql(dialect="duckdb"))
            continue
        try:
            df = spark.sql(to_spark_sql(query, source=where))
            if columns is not None:  # insert: the table's old rows, then the new ones in its types
                df = _appended(spark.table(target), df, columns, where)
            dest = out / target
            if views.get(target) == str(dest):  # reads what it overwrites: materialize first
                df = df.localCheckpoint()
            write_dataset(df, dest, _duckdb_types(con, target if columns is not None else query))
        except SparkError:
            raise
        except Exception as exc:
            raise SparkError(f"{where} ({target}): Spark failed: {_short(exc)}") from exc
        spark.read.parquet(str(dest)).createOrReplaceTempView(target)
        views[target] = written[target] = str(dest)
    register(con, written, what=path.name, views=view_ddl)
    return list(written)


def _duckdb_types(con, query) -> dict[str, str]:
    """Column → type DuckDB gives ``query`` (a SQLGlot query; a str: that table's columns), planned on
    the workspace without running it; {} when DuckDB cannot plan it here (an input this file writes
    first is not registered yet): then Spark's small integers become BIGINT."""
    sql = f'select * from "{query}"' if isinstance(query, str) else query.sql(dialect="duckdb")
    try:
        return {r[0]: r[1] for r in con.execute(f"describe {sql}").fetchall()}
    except Exception:
        return {}


def _table_name(node) -> str:
    from sqlglot import exp

    table = node.this if isinstance(node, exp.Schema) else node
    return table.name


def _appended(old, new, columns: list[str], where: str):
    """``old`` with the rows of ``new`` appended (``columns``: the insert's column list, [] = all)."""
    from pyspark.sql import functions as F

    names = columns or old.columns
    if len(new.columns) != len(names):
        raise SparkError(f"{where}: insert of {len(new.columns)} columns into {len(names)} columns")
    unknown = set(names) - set(old.columns)
    if unknown:
        raise SparkError(f"{where}: insert into unknown column(s) {sorted(unknown)}")
    new = new.toDF(*names)
    cast = [(new[f"`{c}`"] if c in names else F.lit(None)).cast(t).alias(c) for c, t in old.dtypes]
    return old.unionByName(new.select(*cast))


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0][:500] if msg else type(exc).__name__


# ---------------------------------------------------------------------------------------- queries

def register_inputs(spark, con, query, *, source: str = "<sql>") -> list[str]:
    """Make every workspace table a DuckDB query reads (SQL text or a SQLGlot tree; CTEs aside) a Spark
    temp view of the same name (``read_workspace_table``), so its Spark SQL runs. Returns the tables."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(query, read="duckdb") if isinstance(query, str) else query
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    tables = [t for t in tree.find_all(exp.Table) if t.name not in ctes]
    for t in tables:
        if not isinstance(t.this, exp.Identifier):
            raise SparkError(f"{source}: the table function {t.this.sql()} runs on DuckDB only")
    names = sorted({t.name for t in tables})
    for name in names:
        read_workspace_table(spark, con, name).createOrReplaceTempView(name)
    return names


# Ingest lives in workbench.spark_ingest (its own module: spark.py stays under 1,000 lines); the names are
# kept here for callers of workbench.spark.
from .spark_ingest import READERS_SPARK, ingest_spark, numbered_lines  # noqa: E402,F401
