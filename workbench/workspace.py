"""The workspace: one DuckLake store (SQLite catalog + Parquet files) that many processes share.

    python -c "import workbench; print(workbench.connect().sql('show tables'))"

A plain ``.duckdb`` file admits one writing process, so a second notebook kernel fails with a lock
error. A DuckLake catalog in SQLite with Parquet data files takes concurrent writers; a commit that
loses a race is retried (``transaction``). Extensions load from the ``duckdb-extension-*`` wheels,
never from the network.

Layout of a workspace folder (default ``./workspace`` or ``$WORKBENCH_HOME``)::

    wb.sqlite        DuckLake catalog (tables, snapshots); its stem names the catalog ``wb``
    data/            Parquet files of every table
    runs/            executed notebooks of ``workbench run`` (one folder per run id)
    models/          saved models and tokenizers (one folder per run id)
    .tmp/            DuckDB's spill folder for queries larger than memory
    sample/          the generated sample data set (``workbench demo-data``)
"""
from __future__ import annotations

import contextlib
import glob
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import duckdb

ALIAS = "wb"  # catalog name of the workspace inside every connection
ROW_GROUP_SIZE = 16384  # rows per Parquet row group of workspace tables (a catalog option, set at creation)
# Tables written as uncompressed Parquet: the row-for-row copies of the raw files and of their cleaned
# form, rebuilt from the files by steps 01/02. Skipping snappy saves about a tenth of the CPU of
# writing them and of reading them back (docs/benchmarks.md); their files are about 4x larger.
# Every other table keeps the workspace's codec (DuckLake's default: snappy).
UNCOMPRESSED_TABLES = ("stg_messages", "int_messages_data")
STAGING_CODECS = ("uncompressed", "snappy", "zstd", "gzip", "lz4_raw", "brotli")
T = TypeVar("T")


class WorkspaceError(RuntimeError):
    """A workspace operation failed with a cause the user can act on."""


def home(path: str | os.PathLike | None = None) -> Path:
    """The workspace folder: ``path``, else ``$WORKBENCH_HOME``, else ``./workspace``."""
    p = Path(path or os.environ.get("WORKBENCH_HOME") or "workspace").expanduser().absolute()
    return p


# --------------------------------------------------------------------------- extensions (offline)

def _wheel_extension(module: str, file_name: str) -> str:
    mod = __import__(module)
    hits = glob.glob(os.path.join(os.path.dirname(mod.__file__), "extensions", "*", file_name))
    if not hits:
        raise WorkspaceError(f"{module} ships no {file_name}; reinstall it to match duckdb {duckdb.__version__}")
    return hits[0]


def extension_directory() -> str:
    """A per-user DuckDB extension folder filled from the ``duckdb-extension-*`` wheels (no network).

    The workspace is opened as DuckDB's *default* database (``duckdb.connect('ducklake:...')``) so
    that every cursor of a connection sees it: jupysql runs each magic on a new cursor, and ``USE``
    does not carry over to cursors. Opening a DuckLake path autoloads the ducklake and sqlite
    extensions, so they must be installed in an extension folder first; ``INSTALL '<file>'`` copies
    the wheel's file. The folder is built aside and renamed into place, so concurrent first runs
    never see a half-written extension.
    """
    base = Path(os.environ.get("WORKBENCH_EXTENSION_DIR")
                or Path(tempfile.gettempdir()) / f"workbench-ext-{os.getuid()}")
    target = base / duckdb.__version__
    if (target / ".complete").exists():
        return str(target)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    con = duckdb.connect(config={"extension_directory": str(staging),
                                 "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute(f"INSTALL '{_wheel_extension('duckdb_extension_sqlite', 'sqlite.duckdb_extension')}'")
        con.execute(f"INSTALL '{_wheel_extension('duckdb_extension_ducklake', 'ducklake.duckdb_extension')}'")
    finally:
        con.close()
    (staging / ".complete").touch()
    try:
        os.rename(staging, target)
    except OSError:  # another process won the race: its copy is complete, use it
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _config(threads: int | None = None, root: Path | None = None) -> dict:
    cfg = {"extension_directory": extension_directory(),
           "autoinstall_known_extensions": False,  # never reach for the network
           "autoload_known_extensions": True}
    if root is not None:
        # where DuckDB spills when a query outgrows memory_limit; its default is derived from the
        # database path, which for a 'ducklake:sqlite:...' path is no folder at all
        cfg["temp_directory"] = str(root / ".tmp")
    if threads:
        cfg["threads"] = threads
    return cfg


# --------------------------------------------------------------------------- connections

def catalog_path(path: str | os.PathLike | None = None) -> Path:
    """The SQLite file of the workspace's DuckLake catalog (its stem names the catalog: ``wb``)."""
    return home(path) / f"{ALIAS}.sqlite"


def _ensure_created(root: Path) -> None:
    """Create the workspace's DuckLake catalog on first use, atomically.

    The catalog is built complete under a temporary name and then linked into place (``os.link``
    fails if another process won the race), so no process ever opens a half-made catalog. It is an
    SQLite database in WAL mode: in the default rollback-journal mode a reader that has not finished
    (a half-fetched result, a jupysql result cut at ``displaylimit`` in an idle notebook) blocks every
    other process's commit; in WAL mode readers never block the writer. The mode is persistent, set
    before DuckDB opens the file; Python's sqlite3 never touches a live catalog.
    """
    import sqlite3

    catalog = catalog_path(root)
    if catalog.exists():
        return
    (root / "data").mkdir(parents=True, exist_ok=True)
    tmp = catalog.with_name(f".{catalog.name}.{os.getpid()}.{random.randrange(1 << 30)}")
    try:
        c = sqlite3.connect(tmp)
        try:
            c.execute("pragma journal_mode=wal")
        finally:
            c.close()
        con = duckdb.connect(config=_config())
        try:
            con.execute(f"ATTACH 'ducklake:sqlite:{tmp}' AS {ALIAS} (DATA_PATH '{root / 'data'}/')")
            parquet_layout(con)
            con.execute(f"DETACH {ALIAS}")
        finally:
            con.close()
        try:
            os.link(tmp, catalog)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{tmp}{suffix}")


def parquet_layout(con: duckdb.DuckDBPyConnection) -> None:
    """Give the workspace ``ROW_GROUP_SIZE`` as its Parquet row group size, unless it has one set.

    DuckDB's Parquet writer spends about a fifth less CPU on 16K-row groups than on DuckLake's
    default 122,880 (docs/benchmarks.md); reads are no slower, files 0.4% larger. New workspaces get
    it when their catalog is created; ``data.ingest``, ``clean`` and ``split`` call it too, which
    upgrades a workspace made before. A workspace option (DuckLake ``set_option``): it holds for
    every later write. A connection without a DuckLake catalog is left alone."""
    try:
        opts = con.execute(f"select option_name from ducklake_options('{ALIAS}') where scope = 'GLOBAL'").fetchall()
    except duckdb.Error:
        return
    if ("parquet_row_group_size",) not in opts:
        retry(lambda: con.execute(f"call {ALIAS}.set_option('parquet_row_group_size', {ROW_GROUP_SIZE})"),
              what="setting the workspace's Parquet row group size")


def uncompressed(con: duckdb.DuckDBPyConnection, body: Callable[[], T]) -> T:
    """Run ``body()`` (inside the caller's transaction) with the workspace writing uncompressed Parquet.

    DuckLake's codec is a workspace option and a table's own option dies with ``create or replace``:
    so the workspace option is set for the body and set back to its value (default snappy) before the
    transaction commits. Both changes are part of the transaction: a rollback undoes them, and no
    other connection ever sees the uncompressed setting. A connection without a DuckLake catalog
    just runs ``body``. ``$WORKBENCH_STAGING_COMPRESSION`` (snappy, zstd, ...) compresses the staging
    tables after all: about 4.5x less disk for them (the workspace keeps every run's files for time
    travel), about 1 CPU s more per million rows."""
    codec = os.environ.get("WORKBENCH_STAGING_COMPRESSION", "uncompressed").lower()
    if codec not in STAGING_CODECS:
        raise WorkspaceError(f"WORKBENCH_STAGING_COMPRESSION={codec!r}: use one of {', '.join(STAGING_CODECS)}")
    try:
        prev = con.execute(f"select value from ducklake_options('{ALIAS}') "
                           "where option_name = 'parquet_compression' and scope = 'GLOBAL'").fetchall()
    except duckdb.Error:
        return body()
    con.execute(f"call {ALIAS}.set_option('parquet_compression', {sql_literal(codec)})")
    out = body()
    con.execute(f"call {ALIAS}.set_option('parquet_compression', {sql_literal(prev[0][0] if prev else 'snappy')})")
    return out


def connect(path: str | os.PathLike | None = None, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose default database is the workspace (catalog ``wb``).

    Every notebook and CLI command uses this; ``%sql conn --alias wb`` makes jupysql use it too.
    Safe to call from several processes at once.
    """
    root = home(path)
    _ensure_created(root)
    return retry(lambda: duckdb.connect(f"ducklake:sqlite:{catalog_path(root)}", config=_config(threads, root)),
                 what="opening the workspace")


def sqlalchemy_engine(con: duckdb.DuckDBPyConnection | None = None, path: str | os.PathLike | None = None):
    """A SQLAlchemy engine (duckdb-engine) on the same workspace, sharing ``con``'s database.

    jupysql's ``%sqlcmd tables/columns/profile`` and ``%sqlplot`` work only on SQLAlchemy
    connections; ``%sql engine --alias wbsa`` gives them one. Each pooled connection is a cursor of
    ``con`` (one DuckDB instance per process: DuckDB refuses a second instance of the same catalog
    with other settings).
    """
    import sqlalchemy
    from duckdb_engine import ConnectionWrapper

    con = con or connect(path)
    return sqlalchemy.create_engine("duckdb:///:memory:", creator=lambda: ConnectionWrapper(con.cursor()))


# --------------------------------------------------------------------------- retries on commit races

_RETRYABLE = re.compile(r"conflict|database is locked|Failed to commit|could not (?:set|obtain) lock|busy",
                        re.IGNORECASE)


def is_retryable(exc: BaseException) -> bool:
    """True for errors that a concurrent writer caused and that a retry resolves."""
    return isinstance(exc, duckdb.Error) and bool(_RETRYABLE.search(str(exc)))


def retry(fn: Callable[[], T], *, attempts: int = 60, what: str = "workspace write") -> T:
    """Run ``fn``; when a concurrent commit won the race, back off (jittered) and run it again."""
    delay = 0.01
    for attempt in range(attempts):
        try:
            return fn()
        except duckdb.Error as exc:
            if not is_retryable(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 1.6, 1.0)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _txn(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def transaction(con: duckdb.DuckDBPyConnection, body: Callable[[duckdb.DuckDBPyConnection], T],
                *, what: str = "workspace write") -> T:
    """Run ``body(con)`` in one transaction: all of it lands, or none (retried on commit races)."""

    def once() -> T:
        with _txn(con):
            return body(con)

    return retry(once, what=what)


# --------------------------------------------------------------------------- SQL files

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_PARAM = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}")


def sql_path(name: str | os.PathLike) -> Path:
    """A SQL file by path, or by name inside the project's ``sql/`` folder (``'02_int_messages'``)."""
    p = Path(name)
    if p.exists():
        return p
    cand = SQL_DIR / (p.name if p.suffix == ".sql" else p.name + ".sql")
    if cand.exists():
        return cand
    raise WorkspaceError(f"SQL file not found: {name} (looked in {SQL_DIR})")


def sql_literal(value: Any) -> str:
    """A Python value as a SQL literal (for ``{{param}}`` substitution)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"


def render_sql(text: str, params: Mapping[str, Any] | None = None, *, source: str = "<sql>") -> str:
    """Substitute ``{{name}}`` with SQL literals; an unknown or missing parameter is an error."""
    params = dict(params or {})
    missing = sorted({m.group(1) for m in _PARAM.finditer(text)} - set(params))
    if missing:
        raise WorkspaceError(f"{source}: missing parameter(s) {', '.join(missing)}")
    return _PARAM.sub(lambda m: sql_literal(params[m.group(1)]), text)


def sql_file_params(name: str | os.PathLike) -> list[str]:
    """The ``{{params}}`` a SQL file takes, in order of first use."""
    seen: dict[str, None] = {}
    for m in _PARAM.finditer(sql_path(name).read_text()):
        seen.setdefault(m.group(1))
    return list(seen)


_CREATE_TABLE = re.compile(r'^\s*create\s+(?:or\s+replace\s+)?table\s+"?(\w+)"?', re.IGNORECASE | re.MULTILINE)
_CREATE_VIEW = re.compile(r'^\s*create\s+or\s+replace\s+view\s+"?(\w+)"?', re.IGNORECASE | re.MULTILINE)


def drop_tables_becoming_views(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Drop each table that ``sql`` replaces by a view (``create or replace view`` refuses to replace
    a table): a workspace written before ``int_messages`` became a view holds it as a table."""
    for name in _CREATE_VIEW.findall(sql):
        kind = con.execute("select table_type from information_schema.tables "
                           "where table_catalog = current_database() and table_name = ?", [name]).fetchall()
        if kind and kind[0][0] == "BASE TABLE":
            con.execute(f'drop table "{name}"')


def run_sql_file(con: duckdb.DuckDBPyConnection, name: str | os.PathLike,
                 params: Mapping[str, Any] | None = None) -> None:
    """Run one SQL file (all its statements) in one transaction, retried on commit races."""
    path = sql_path(name)
    text = render_sql(path.read_text(), params, source=str(path))

    plain = any(t.lower() in UNCOMPRESSED_TABLES for t in _CREATE_TABLE.findall(text))

    def body(c: duckdb.DuckDBPyConnection) -> None:
        drop_tables_becoming_views(c, text)
        if plain:
            uncompressed(c, lambda: c.execute(text))
        else:
            c.execute(text)

    try:
        transaction(con, body, what=path.name)
    except duckdb.Error as exc:
        raise WorkspaceError(f"{path.name}: {exc}") from exc


# --------------------------------------------------------------------------- small helpers

def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    # fetchall, not fetchone: a result left half-read keeps a catalog read transaction open
    return bool(con.execute(
        "select (select count(*) from duckdb_tables() where database_name = $db and table_name = $t)"
        " + (select count(*) from duckdb_views() where database_name = $db and view_name = $t)",
        {"db": ALIAS, "t": name}).fetchall()[0][0])


def workspace_root(con: duckdb.DuckDBPyConnection) -> Path:
    """The workspace folder of a ``workbench.connect()`` connection: where its catalog ``wb.sqlite``
    lies, and so where models (``models/<run_id>``), reports and sweep journals go beside its tables.

    Raises ``WorkspaceError`` when ``con`` has no workspace catalog attached (a plain DuckDB connection).
    """
    row = con.execute("select path from duckdb_databases() where database_name = ?", [ALIAS]).fetchall()
    if not row or not row[0][0]:
        raise WorkspaceError(f"this connection has no workspace attached (no catalog {ALIAS!r}):"
                             " use workbench.connect()")
    path = str(row[0][0])
    for prefix in ("ducklake:", "sqlite:"):  # 'sqlite:/ws/wb.sqlite' (DuckLake's metadata path)
        path = path.removeprefix(prefix)
    return Path(path).parent


def snapshot_id(con: duckdb.DuckDBPyConnection) -> int:
    """The workspace's current DuckLake snapshot id: record it to know exactly which data a run saw.

    ``select * from t at (version => N)`` reads a table as it was at that snapshot.
    """
    return int(con.execute(f"select id from {ALIAS}.current_snapshot()").fetchall()[0][0])


def expire_snapshots(con: duckdb.DuckDBPyConnection, *, older_than_days: float = 30.0,
                     dry_run: bool = False) -> dict[str, Any]:
    """Forget old snapshots and delete the data files only they held (``workbench gc``).

    The workspace keeps every snapshot (time travel), so each rebuild of a table keeps its old files.
    Expired: snapshots older than ``older_than_days``, except the current one and every snapshot a
    workspace table refers to (any integer column named ``*snapshot*``: ``runs.data_snapshot``, the
    model registry, feature versions, ...), so a recorded run can still read its data as it was.
    Returns the snapshots expired and kept and the files and bytes deleted (``dry_run``: the snapshots
    that would be expired; nothing changes).
    """
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be 0 or more, not {older_than_days}")
    current = snapshot_id(con)
    refs = con.execute("select table_name, column_name from information_schema.columns where table_catalog = ? "
                       "and lower(column_name) like '%snapshot%' and data_type in ('BIGINT', 'INTEGER', 'UBIGINT')",
                       [ALIAS]).fetchall()
    kept = {current}
    for table, column in refs:
        kept |= {int(r[0]) for r in con.execute(f'select distinct "{column}" from "{table}" '
                                                f'where "{column}" is not null').fetchall()}
    old = [int(r[0]) for r in con.execute(
        f"select snapshot_id from ducklake_snapshots('{ALIAS}') "
        "where snapshot_time < now() - to_microseconds(cast(? * 86400e6 as bigint)) order by 1",
        [older_than_days]).fetchall()]
    expire = [v for v in old if v not in kept]
    report: dict[str, Any] = {"expired": expire, "kept_referenced": sorted(v for v in old if v in kept),
                              "files_deleted": 0, "bytes_deleted": 0, "dry_run": dry_run}
    if expire:
        con.execute(f"call ducklake_expire_snapshots('{ALIAS}', dry_run => ?, versions => ?)", [dry_run, expire])
    if dry_run:  # which files go is known only once the snapshots are expired
        report["files_deleted"] = report["bytes_deleted"] = None
        return report
    files = [r[0] for r in con.execute(f"call ducklake_cleanup_old_files('{ALIAS}', dry_run => true, "
                                       "cleanup_all => true)").fetchall()]
    report["files_deleted"] = len(files)
    report["bytes_deleted"] = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    if files:
        con.execute(f"call ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)")
    return report


# Column names DuckLake keeps for itself while data inlining is on (any case): a table cannot have them.
LAKE_RESERVED = ("row_id", "begin_snapshot", "end_snapshot")


def unique_names(names: Sequence[str]) -> list[str]:
    """DuckDB's names for a select list: a name already taken (case-insensitive) becomes ``<name>_<n>``
    (the smallest n not taken), left to right: a source column ``source_line`` is ``source_line_1``."""
    taken, out = set(), []
    for name in names:
        new, n = name, 0
        while new.lower() in taken:
            n, new = n + 1, f"{name}_{n + 1}"
        taken.add(new.lower())
        out.append(new)
    return out


def lake_names(names: Sequence[str]) -> list[str]:
    """``names`` with DuckLake's reserved names renamed (``row_id`` -> ``row_id_1``, as ``unique_names``)."""
    return unique_names([*LAKE_RESERVED, *names])[len(LAKE_RESERVED):]


def check_lake_names(names: Sequence[str], what: str) -> None:
    """A clear error for a column DuckLake reserves (DuckDB's binder error says only how to turn inlining off)."""
    bad = [n for n in names if n.lower() in LAKE_RESERVED]
    if bad:
        raise WorkspaceError(f"{what}: column {bad[0]!r} is a name DuckLake reserves ({', '.join(LAKE_RESERVED)}, "
                             f"any case); rename it, e.g. to {lake_names(list(names))[list(names).index(bad[0])]!r}")


def write_table(con: duckdb.DuckDBPyConnection, name: str, data: Any, *, mode: str = "replace") -> int:
    """Write a pandas/Arrow/Polars frame to a workspace table (``replace`` or ``append``); returns rows."""
    if mode not in ("replace", "append"):
        raise ValueError(f"mode must be 'replace' or 'append', not {mode!r}")
    view = f"_wb_write_{os.getpid()}_{random.randrange(1 << 30)}"
    con.register(view, data)
    try:
        check_lake_names([d[0] for d in con.execute(f'select * from "{view}" limit 0').description],
                         f"writing {name}")

        def body(c):
            if mode == "replace" or not table_exists(c, name):
                c.execute(f'create or replace table "{name}" as select * from "{view}"')
            else:
                c.execute(f'insert into "{name}" by name select * from "{view}"')
        transaction(con, body, what=f"writing {name}")
        return int(con.execute(f'select count(*) from "{view}"').fetchall()[0][0])
    finally:
        con.unregister(view)
