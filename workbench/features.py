"""Feature store: versioned, validated feature groups in the workspace, searchable, joined point-in-time.

    workbench features search "plan tenure"          # ranked search over groups and features
    workbench features show customer_profile         # definition, statistics, checks, lineage

A *feature group* is a SQL query (or a table) with entity key column(s), an event-time column (when
the values became true) and feature columns. ``register`` validates it, writes its rows to the
workspace table ``fs_<group>__v<N>`` (Parquet under the DuckLake catalog: the one central, standard
format), points the view ``fs_<group>`` at the newest version and records the metadata in plain
tables (``feature_groups``, ``features``, ``feature_stats``, ``feature_checks``,
``feature_violations``), so ``%%sql`` sees everything Python sees. A changed definition becomes a
new version; an unchanged one is a no-op; old versions stay readable.

``retrieve`` joins, for each row of an entity table (keys + event timestamp), the latest feature
values at or before that timestamp (``ASOF JOIN``), optionally only when younger than a time-to-live:
no value from the future can leak into training data. The ASOF query is built in one function,
``asof_join_sql``, the place for an engine-specific variant (Spark has no ASOF JOIN).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import duckdb
import pandas as pd

from .workspace import sql_literal, sql_path, snapshot_id, table_exists, transaction

# Search: weight of a query term found in each field (exact token match; a prefix match counts half).
SEARCH_WEIGHTS = {
    "name": 3.0,         # the group's or the feature's own name
    "tags": 2.0,         # the group's tags (features inherit them)
    "description": 1.0,  # the group's or the feature's description
    "features": 1.0,     # a group: the names of its features
    "group": 0.5,        # a feature: the name and description of its group
}
MAX_REPORTED_ROWS = 100  # failing rows kept per rule in feature_violations (all are counted)
VALIDATION_MODES = ("strict", "warn")
TEMPORAL_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS",
                  "TIMESTAMP_S")
NUMERIC_TYPES = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|"
                           r"UBIGINT|UHUGEINT|FLOAT|DOUBLE|DECIMAL.*)$")
_GROUP_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")  # no '__': it separates the version
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?$")
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_ ,()\[\]]*$")


class FeatureError(ValueError):
    """A feature group definition, or a request against the registry, is wrong (the message says where)."""


class FeatureValidationError(FeatureError):
    """Strict validation refused a write; ``violations`` holds the failing rows, ``checks`` every rule."""

    def __init__(self, message: str, violations: pd.DataFrame, checks: pd.DataFrame):
        super().__init__(message)
        self.violations = violations
        self.checks = checks


@dataclass
class Feature:
    name: str                      # column of the source query
    dtype: str | None = None       # DuckDB type values are cast to ('INTEGER'); None: keep the source type
    description: str = ""
    not_null: bool = False         # a null (or an uncastable value) fails
    min: Any = None                # inclusive lower bound (number, or 'YYYY-MM-DD' for dates); None: none
    max: Any = None                # inclusive upper bound
    accepted_values: Sequence[Any] | None = None  # the only values allowed (a null passes unless not_null)


@dataclass
class FeatureGroup:
    name: str                      # lowercase identifier: tables fs_<name>__v<N>, view fs_<name>
    source: str                    # a SELECT query, a workspace table name, or a sql/ file ('07_x.sql')
    entity_keys: Sequence[str]     # column(s) naming the entity, e.g. ['customer_id']
    event_time: str                # DATE/TIMESTAMP column: when the values became true
    features: Sequence[Feature | Mapping[str, Any]] = ()  # empty: every other source column, as typed
    description: str = ""
    owner: str = ""
    tags: Sequence[str] = ()


@dataclass
class RegisterResult:
    group: str
    version: int                   # the version now current (the existing one when nothing changed)
    table: str                     # fs_<group>__v<version>
    created: bool                  # False: the definition (and data, with refresh) was unchanged
    row_count: int
    checks: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)      # one row per rule
    violations: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # failing rows (sample)

    @property
    def failed_checks(self) -> int:
        return 0 if self.checks.empty else int((~self.checks["passed"]).sum())


# --------------------------------------------------------------------------- registry tables

_DDL = """
create table if not exists feature_groups (
    group_name varchar, version integer, table_name varchar,
    description varchar, owner varchar, tags varchar[],
    entity_keys varchar[], event_time_column varchar,
    source_kind varchar,         -- 'sql' | 'table' | 'file'
    source_file varchar,         -- the sql/ file, when the source was one
    source_sql varchar,          -- lineage: the query that produced the rows
    source_tables varchar[],     -- lineage: tables that query reads
    data_snapshot bigint,        -- DuckLake snapshot the source was read at
    definition_json varchar, definition_hash varchar, data_hash varchar,
    validation_mode varchar, failed_checks integer, row_count bigint, created_at timestamp
);
create table if not exists features (
    group_name varchar, version integer, feature_name varchar, position integer,
    dtype varchar, source_dtype varchar, description varchar,
    not_null boolean, min_value varchar, max_value varchar, accepted_values varchar[]
);
create table if not exists feature_stats (
    group_name varchar, version integer, feature_name varchar,
    role varchar,                -- 'entity_key' | 'event_time' | 'feature'
    dtype varchar, n_rows bigint, n_values bigint, n_nulls bigint, n_distinct bigint,
    min_value varchar, max_value varchar, mean_value double, computed_at timestamp
);
create table if not exists feature_checks (
    group_name varchar, version integer, feature_name varchar, rule varchar, rule_detail varchar,
    failed_rows bigint, passed boolean, mode varchar, checked_at timestamp
);
create table if not exists feature_violations (
    group_name varchar, version integer, feature_name varchar, rule varchar,
    entity_key varchar, event_time varchar, value varchar
);
"""
REGISTRY_TABLES = ("feature_groups", "features", "feature_stats", "feature_checks", "feature_violations")


def ensure_registry(con: duckdb.DuckDBPyConnection) -> None:
    """Create the registry tables when missing (registration does it too)."""
    if not all(table_exists(con, t) for t in REGISTRY_TABLES):
        transaction(con, lambda c: c.execute(_DDL), what="creating the feature registry")


def table_name(group: str, version: int) -> str:
    return f"fs_{group}__v{int(version)}"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- definitions

def _as_feature(f: Feature | Mapping[str, Any], group: str) -> Feature:
    if isinstance(f, Feature):
        return f
    try:
        return Feature(**dict(f))
    except TypeError as exc:
        raise FeatureError(f"{group}: bad feature definition {dict(f)!r}: {exc}") from None


def _check_definition(g: FeatureGroup) -> tuple[list[str], list[Feature]]:
    if not _GROUP_NAME.match(g.name or "") or len(g.name) > 60:
        raise FeatureError(f"feature group name {g.name!r}: use lowercase letters, digits and single "
                           "underscores, starting with a letter (it names tables fs_<name>__v<N>)")
    keys = [g.entity_keys] if isinstance(g.entity_keys, str) else list(g.entity_keys)
    if not keys:
        raise FeatureError(f"{g.name}: entity_keys is empty; name the column(s) that identify the entity")
    feats = [_as_feature(f, g.name) for f in g.features]
    names = keys + [g.event_time] + [f.name for f in feats]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FeatureError(f"{g.name}: column(s) {dupes} named more than once among entity_keys, "
                           "event_time and features")
    for f in feats:
        if f.dtype is not None and not _TYPE.match(f.dtype):
            raise FeatureError(f"{g.name}.{f.name}: dtype {f.dtype!r} is not a type name")
        if f.accepted_values is not None and isinstance(f.accepted_values, (str, bytes)):
            raise FeatureError(f"{g.name}.{f.name}: accepted_values must be a list, not a string")
    return keys, feats


def _source(g: FeatureGroup) -> tuple[str, str, str | None]:
    """(kind, sql, file) for a group's source: a query, a table name, or a file in sql/."""
    src = (g.source or "").strip()
    if not src:
        raise FeatureError(f"{g.name}: source is empty; give a SELECT query, a table name or a .sql file")
    if src.endswith(".sql") and "\n" not in src:
        path = sql_path(src)
        return "file", path.read_text().strip().rstrip(";").strip(), path.name
    if _IDENT.match(src):
        return "table", f"select * from {'.'.join(_q(p) for p in src.split('.'))}", None
    return "sql", src.rstrip(";").strip(), None


def source_tables(sql: str) -> list[str]:
    """The tables a query reads (CTEs resolved by SQLGlot's scopes); [] when it does not parse."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.optimizer.scope import traverse_scope

    try:
        scopes = traverse_scope(sqlglot.parse_one(sql, read="duckdb"))
    except Exception:  # noqa: BLE001 - lineage is best effort; DuckDB itself ran the query
        return []
    return sorted({src.name for sc in scopes for src in sc.sources.values()
                   if isinstance(src, exp.Table) and src.name})


def definition_hash(g: FeatureGroup) -> str:
    """A hash of everything declared: source (whitespace-normalized), keys, time, features, docs, tags."""
    keys, feats = _check_definition(g)
    kind, sql, file = _source(g)
    doc = {"source": " ".join(sql.split()), "entity_keys": keys, "event_time": g.event_time,
           "features": [asdict(f) | {"accepted_values": None if f.accepted_values is None
                                     else [str(v) for v in f.accepted_values],
                                     "min": None if f.min is None else str(f.min),
                                     "max": None if f.max is None else str(f.max)} for f in feats],
           "description": g.description, "owner": g.owner, "tags": sorted(g.tags)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- validation

@dataclass
class _Rule:
    column: str
    rule: str          # not_null | type | min | max | accepted_values | unique
    detail: str        # human-readable rule, e.g. 'min 0'
    fails: str         # SQL condition true for a failing row
    value: str         # SQL expression shown for a failing row


def _rules(keys: list[str], event_time: str, feats: list[Feature], raw_types: dict[str, str],
           typed: dict[str, str]) -> list[_Rule]:
    rules = [_Rule(k, "not_null", "entity key not null", f"{_q(k)} is null", "null") for k in keys]
    rules.append(_Rule(event_time, "not_null", "event time not null", f"{_q(event_time)} is null", "null"))
    for f in feats:
        raw, val = _q(f.name), typed[f.name]
        if f.dtype is not None and val != raw:
            rules.append(_Rule(f.name, "type", f"castable {raw_types[f.name]} -> {f.dtype}",
                               f"{raw} is not null and {val} is null", f"cast({raw} as varchar)"))
        if f.not_null:
            rules.append(_Rule(f.name, "not_null", "not null", f"{val} is null", "null"))
        if f.min is not None:
            rules.append(_Rule(f.name, "min", f"min {f.min}", f"{val} < {sql_literal(f.min)}",
                               f"cast({val} as varchar)"))
        if f.max is not None:
            rules.append(_Rule(f.name, "max", f"max {f.max}", f"{val} > {sql_literal(f.max)}",
                               f"cast({val} as varchar)"))
        if f.accepted_values is not None:
            allowed = ", ".join(sql_literal(v) for v in f.accepted_values) or "null"
            rules.append(_Rule(f.name, "accepted_values", f"in ({allowed})",
                               f"{val} not in ({allowed})", f"cast({val} as varchar)"))
    return rules


def _entity_key_sql(keys: list[str], alias: str = "") -> str:
    if len(keys) == 1:
        return f"cast({alias}{_q(keys[0])} as varchar)"
    parts = [f"'{k}=' || coalesce(cast({alias}{_q(k)} as varchar), 'NULL')" for k in keys]
    return "concat_ws(', ', " + ", ".join(parts) + ")"


def _validate(con, stage: str, keys: list[str], event_time: str, rules: list[_Rule],
              max_rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(checks: one row per rule with its failing row count, violations: up to max_rows per rule)."""
    key_cols = ", ".join(_q(k) for k in [*keys, event_time])
    unique_sql = (f"select coalesce(sum(n), 0) from (select count(*) as n from {stage} group by {key_cols} "
                  f"having count(*) > 1)")  # duplicated (keys, event time): an ASOF join would pick one
    counts_sql = ", ".join([f"count(*) filter (where {r.fails})" for r in rules] + [f"({unique_sql})"])
    counts = con.execute(f"select {counts_sql} from {stage}").fetchone()
    rules = [*rules, _Rule(", ".join([*keys, event_time]), "unique", "one row per entity key and event time",
                           "", "")]
    checks = pd.DataFrame({"feature_name": [r.column for r in rules], "rule": [r.rule for r in rules],
                           "rule_detail": [r.detail for r in rules],
                           "failed_rows": [int(n) for n in counts]})
    checks["passed"] = checks["failed_rows"] == 0
    ek, et = _entity_key_sql(keys), f"cast({_q(event_time)} as varchar)"
    parts = []
    for r, n in zip(rules[:-1], counts[:-1]):
        if n:
            parts.append(f"(select {sql_literal(r.column)} as feature_name, {sql_literal(r.rule)} as rule, "
                         f"{ek} as entity_key, {et} as event_time, {r.value} as value from {stage} "
                         f"where {r.fails} order by entity_key, event_time limit {int(max_rows)})")
    if counts[-1]:
        parts.append(f"(select {sql_literal(rules[-1].column)} as feature_name, 'unique' as rule, "
                     f"{ek} as entity_key, {et} as event_time, "
                     f"cast(count(*) as varchar) || ' rows' as value from {stage} "
                     f"group by {key_cols} having count(*) > 1 order by entity_key, event_time "
                     f"limit {int(max_rows)})")
    if parts:
        violations = con.execute(" union all ".join(parts)).df()
    else:
        violations = pd.DataFrame(columns=["feature_name", "rule", "entity_key", "event_time", "value"])
    return checks, violations


def _violation_message(group: str, checks: pd.DataFrame, violations: pd.DataFrame, shown: int = 10) -> str:
    failed = checks[~checks["passed"]]
    lines = [f"feature group {group}: {len(failed)} validation rule(s) failed (strict mode: nothing written)"]
    for r in failed.itertuples():
        lines.append(f"  {r.feature_name}: {r.rule_detail}: {r.failed_rows} row(s)")
    lines.append("failing rows (entity key, event time: column = value, rule):")

    def fmt(v: Any) -> str:
        return "NULL" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)

    for r in violations.head(shown).itertuples():
        lines.append(f"  {fmt(r.entity_key)} @ {fmt(r.event_time)}: {r.feature_name} = {fmt(r.value)}"
                     f"  [{r.rule}]")
    if len(violations) > shown:
        lines.append(f"  ... see the exception's .violations ({len(violations)} rows) for the rest")
    return "\n".join(lines)


# --------------------------------------------------------------------------- registration

def _latest(con, group: str) -> dict | None:
    if not table_exists(con, "feature_groups"):
        return None
    df = con.execute("select * from feature_groups where group_name = ? order by version desc limit 1",
                     [group]).df()
    return None if df.empty else df.iloc[0].to_dict()


def _stats(con, stage_sql: str, columns: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Per column (name, role, dtype): counts, nulls, distinct, min/max (as text), mean (numbers)."""
    sel = ["count(*)"]
    for name, _, dtype in columns:
        c = _q(name)
        mean = f"avg({c})::double" if NUMERIC_TYPES.match(dtype) else "null::double"
        sel += [f"count({c})", f"count(distinct {c})", f"cast(min({c}) as varchar)",
                f"cast(max({c}) as varchar)", mean]
    row = con.execute(f"select {', '.join(sel)} from ({stage_sql})").fetchone()
    n, out = int(row[0]), []
    for i, (name, role, dtype) in enumerate(columns):
        v = row[1 + 5 * i: 6 + 5 * i]
        out.append({"feature_name": name, "role": role, "dtype": dtype, "n_rows": n, "n_values": int(v[0]),
                    "n_nulls": n - int(v[0]), "n_distinct": int(v[1]), "min_value": v[2], "max_value": v[3],
                    "mean_value": v[4]})
    return pd.DataFrame(out)


def register(con: duckdb.DuckDBPyConnection, group: FeatureGroup, *, validation: str = "strict",
             refresh: bool = False, max_reported_rows: int = MAX_REPORTED_ROWS) -> RegisterResult:
    """Validate a feature group's rows and write them as a new version, or do nothing if unchanged.

    ``validation='strict'`` raises ``FeatureValidationError`` (nothing written) when any rule fails;
    ``'warn'`` writes anyway (a value that fails its type cast becomes null) and records the failures
    in ``feature_checks`` / ``feature_violations``. An unchanged definition is a no-op without running
    the source; ``refresh=True`` runs it and writes a new version only if the rows changed.
    """
    if validation not in VALIDATION_MODES:
        raise FeatureError(f"validation must be one of {VALIDATION_MODES}, not {validation!r}")
    keys, feats = _check_definition(group)
    kind, sql, file = _source(group)
    dhash = definition_hash(group)
    latest = _latest(con, group.name)
    if latest is not None and latest["definition_hash"] == dhash and not refresh:
        return RegisterResult(group.name, int(latest["version"]), latest["table_name"], False,
                              int(latest["row_count"]))

    stage = f"_fs_stage_{group.name}"
    snap = snapshot_id(con)
    try:
        con.execute(f"create or replace temp table {stage} as {sql}")
    except duckdb.Error as exc:
        where = f" ({file})" if file else ""
        hint = (" (a table it reads is missing: stg_* tables come from step 01, examples from step 02)"
                if isinstance(exc, duckdb.CatalogException) else "")
        raise FeatureError(f"feature group {group.name}: its source{where} failed{hint}: {exc}") from exc
    try:
        raw_types = dict(con.execute(f"select column_name, column_type from (describe {stage})").fetchall())
        missing = [c for c in [*keys, group.event_time, *(f.name for f in feats)] if c not in raw_types]
        if missing:
            raise FeatureError(f"feature group {group.name}: column(s) {missing} not in its source "
                               f"(it has {list(raw_types)})")
        if raw_types[group.event_time] not in TEMPORAL_TYPES:
            raise FeatureError(f"feature group {group.name}: event_time column {group.event_time!r} is "
                               f"{raw_types[group.event_time]}; cast it to DATE or TIMESTAMP in the source")
        if not feats:
            feats = [Feature(c) for c in raw_types if c not in keys and c != group.event_time]
        typed = {}
        for f in feats:
            if f.dtype is None:
                typed[f.name] = _q(f.name)
                continue
            try:
                declared = con.execute(f"select typeof(try_cast(null as {f.dtype}))").fetchone()[0]
            except duckdb.Error:
                raise FeatureError(f"feature group {group.name}.{f.name}: unknown dtype {f.dtype!r}") from None
            same = declared == raw_types[f.name]  # already typed in the source: no cast, no type rule
            typed[f.name] = _q(f.name) if same else f"try_cast({_q(f.name)} as {f.dtype})"
        checks, violations = _validate(con, stage, keys, group.event_time,
                                       _rules(keys, group.event_time, feats, raw_types, typed),
                                       max_reported_rows)
        if validation == "strict" and not checks["passed"].all():
            raise FeatureValidationError(_violation_message(group.name, checks, violations),
                                         violations, checks)

        select = ", ".join([_q(k) for k in [*keys, group.event_time]]
                           + [f"{typed[f.name]} as {_q(f.name)}" for f in feats])
        typed_sql = f"select {select} from {stage}"
        out_types = dict(con.execute(f"select column_name, column_type from (describe {typed_sql})").fetchall())
        roles = [(k, "entity_key") for k in keys] + [(group.event_time, "event_time")] + \
                [(f.name, "feature") for f in feats]
        stats = _stats(con, typed_sql, [(n, r, out_types[n]) for n, r in roles])
        cols = ", ".join(_q(n) for n, _ in roles)
        data_hash = str(con.execute(f"select coalesce(sum(hash({cols})), 0) from ({typed_sql})").fetchone()[0])
        if latest is not None and latest["definition_hash"] == dhash and latest["data_hash"] == data_hash:
            return RegisterResult(group.name, int(latest["version"]), latest["table_name"], False,
                                  int(latest["row_count"]), checks, violations)
        row_count = int(stats["n_rows"].iloc[0]) if len(stats) else 0
        definition = {"source": group.source, "entity_keys": keys, "event_time": group.event_time,
                      "features": [asdict(f) for f in feats], "description": group.description,
                      "owner": group.owner, "tags": list(group.tags)}

        def write(c) -> tuple[int, bool]:
            c.execute(_DDL)
            version, def_hash, dat_hash = c.execute(
                "select coalesce(max(version), 0) + 1, arg_max(definition_hash, version), "
                "arg_max(data_hash, version) from feature_groups where group_name = ?", [group.name]).fetchone()
            if (def_hash, dat_hash) == (dhash, data_hash):  # another process just wrote the same version
                return version - 1, False
            version = int(version)
            tbl = table_name(group.name, version)
            c.execute(f"create table {_q(tbl)} as {typed_sql}")
            c.execute(f"create or replace view {_q('fs_' + group.name)} as select * from {_q(tbl)}")
            now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            c.execute("insert into feature_groups values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                      "?, ?, ?)",
                      [group.name, version, tbl, group.description, group.owner, list(group.tags), keys,
                       group.event_time, kind, file, sql, source_tables(sql), snap,
                       json.dumps(definition, default=str), dhash, data_hash, validation,
                       int((~checks["passed"]).sum()), row_count, now])
            c.executemany("insert into features values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                [group.name, version, f.name, i, out_types[f.name], raw_types[f.name], f.description,
                 f.not_null, None if f.min is None else str(f.min), None if f.max is None else str(f.max),
                 None if f.accepted_values is None else [str(v) for v in f.accepted_values]]
                for i, f in enumerate(feats)])
            c.executemany("insert into feature_stats values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                [group.name, version, *[None if pd.isna(v) else v for v in r], now]
                for r in stats[["feature_name", "role", "dtype", "n_rows", "n_values", "n_nulls",
                                "n_distinct", "min_value", "max_value", "mean_value"]].itertuples(index=False)])
            c.executemany("insert into feature_checks values (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                [group.name, version, r.feature_name, r.rule, r.rule_detail, int(r.failed_rows), bool(r.passed),
                 validation, now] for r in checks.itertuples()])
            if len(violations):
                c.executemany("insert into feature_violations values (?, ?, ?, ?, ?, ?, ?)", [
                    [group.name, version, r.feature_name, r.rule, r.entity_key, r.event_time, r.value]
                    for r in violations.itertuples()])
            return version, True

        version, created = transaction(con, write, what=f"registering feature group {group.name}")
        return RegisterResult(group.name, version, table_name(group.name, version), created, row_count,
                              checks, violations)
    finally:
        con.execute(f"drop table if exists temp.{stage}")


# --------------------------------------------------------------------------- discovery

def list_groups(con: duckdb.DuckDBPyConnection, *, all_versions: bool = False) -> pd.DataFrame:
    """Feature groups (newest version of each, or every version) with owner, tags, rows, features."""
    ensure_registry(con)
    latest = "" if all_versions else ("qualify version = max(version) over (partition by group_name)")
    return con.execute(f"""
        select g.group_name, g.version, g.table_name, g.row_count,
               (select count(*) from features f where f.group_name = g.group_name
                    and f.version = g.version) as n_features,
               g.entity_keys, g.event_time_column, g.owner, g.tags, g.description, g.failed_checks,
               g.created_at
        from feature_groups g
        {latest}
        order by g.group_name, g.version""").df()


def versions(con: duckdb.DuckDBPyConnection, group: str) -> pd.DataFrame:
    """Every version of one group: when, how many rows, which definition and data hash."""
    ensure_registry(con)
    df = con.execute("""select version, table_name, created_at, row_count, definition_hash, data_hash,
                               validation_mode, failed_checks, data_snapshot
                        from feature_groups where group_name = ? order by version""", [group]).df()
    if df.empty:
        raise FeatureError(_unknown_group(con, group))
    return df


def _unknown_group(con, group: str) -> str:
    known = [r[0] for r in con.execute("select distinct group_name from feature_groups order by 1").fetchall()]
    return f"no feature group {group!r} (registered: {', '.join(known) or 'none'})"


def _resolve_version(con, group: str, version: int | None) -> dict:
    ensure_registry(con)
    sql = "select * from feature_groups where group_name = ? "
    args: list[Any] = [group]
    if version is None:
        sql += "order by version desc limit 1"
    else:
        sql, args = sql + "and version = ?", [group, int(version)]
    df = con.execute(sql, args).df()
    if df.empty:
        if version is not None and con.execute("select count(*) from feature_groups where group_name = ?",
                                               [group]).fetchone()[0]:
            raise FeatureError(f"feature group {group!r} has no version {version} "
                               f"(versions: {versions(con, group)['version'].tolist()})")
        raise FeatureError(_unknown_group(con, group))
    return df.iloc[0].to_dict()


def describe(con: duckdb.DuckDBPyConnection, group: str, version: int | None = None) -> pd.DataFrame:
    """One row per column of a group version: role, type, description, rules, write-time statistics."""
    g = _resolve_version(con, group, version)
    return con.execute("""
        select s.feature_name, s.role, s.dtype, coalesce(f.description, '') as description, f.not_null,
               f.min_value as rule_min,
               f.max_value as rule_max, f.accepted_values, s.n_rows, s.n_values, s.n_nulls, s.n_distinct,
               s.min_value, s.max_value, s.mean_value
        from feature_stats s
        left join features f using (group_name, version, feature_name)
        where s.group_name = ? and s.version = ?
        order by case s.role when 'entity_key' then 0 when 'event_time' then 1 else 2 end, f.position""",
                       [group, int(g["version"])]).df()


def check_results(con: duckdb.DuckDBPyConnection, group: str, version: int | None = None) -> pd.DataFrame:
    """The validation rules run when a group version was written, with failing row counts."""
    g = _resolve_version(con, group, version)
    return con.execute("""select feature_name, rule, rule_detail, failed_rows, passed, mode from feature_checks
                          where group_name = ? and version = ?""", [group, int(g["version"])]).df()


def lineage(con: duckdb.DuckDBPyConnection, group: str, version: int | None = None) -> dict:
    """Where a group version came from: its SQL, the tables it read, the snapshot, the definition."""
    g = _resolve_version(con, group, version)
    return {"group": group, "version": int(g["version"]), "table": g["table_name"],
            "source_kind": g["source_kind"], "source_file": g["source_file"], "source_sql": g["source_sql"],
            "source_tables": list(g["source_tables"]), "data_snapshot": int(g["data_snapshot"]),
            "created_at": g["created_at"], "definition": json.loads(g["definition_json"])}


def _tokens(text: Any) -> set[str]:
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return set()
    if not isinstance(text, str):
        text = " ".join(str(t) for t in text)
    return set(re.findall(r"[^\W_]+", text.lower()))


def _match(term: str, tokens: set[str]) -> float:
    if term in tokens:
        return 1.0
    if len(term) >= 3 and any(t.startswith(term) or (len(t) >= 3 and term.startswith(t)) for t in tokens):
        return 0.5
    return 0.0


def search(con: duckdb.DuckDBPyConnection, query: str, *, limit: int = 20) -> pd.DataFrame:
    """Rank groups and features (newest versions) by how well their text matches ``query``.

    score = sum over query terms and fields of SEARCH_WEIGHTS[field] x match, where match is 1 for an
    exact token, 0.5 for a prefix either way (3+ letters), 0 otherwise; a term counts once per field.
    ``matched`` explains each score ('name:plan=3'). Ties: groups first, then by name.
    """
    terms = sorted(_tokens(query))
    if not terms:
        raise FeatureError("search: the query has no words")
    ensure_registry(con)
    groups = list_groups(con)
    feats = con.execute("""select f.group_name, f.version, f.feature_name, f.dtype, f.description
                           from features f join (select group_name, max(version) as version
                                                 from feature_groups group by 1) g
                           using (group_name, version)""").df()
    docs = []
    for g in groups.itertuples():
        fnames = feats.loc[feats["group_name"] == g.group_name, "feature_name"].tolist()
        docs.append(({"kind": "group", "group_name": g.group_name, "feature_name": None,
                      "version": g.version, "dtype": None, "description": g.description},
                     {"name": _tokens(g.group_name), "tags": _tokens(list(g.tags)),
                      "description": _tokens(g.description), "features": _tokens(fnames)}))
    gmeta = {g.group_name: g for g in groups.itertuples()}
    for f in feats.itertuples():
        g = gmeta.get(f.group_name)
        docs.append(({"kind": "feature", "group_name": f.group_name, "feature_name": f.feature_name,
                      "version": f.version, "dtype": f.dtype, "description": f.description},
                     {"name": _tokens(f.feature_name), "tags": _tokens(list(g.tags)) if g else set(),
                      "description": _tokens(f.description),
                      "group": _tokens(f.group_name) | _tokens(g.description if g else None)}))
    rows = []
    for meta, fields in docs:
        score, why = 0.0, []
        for term in terms:
            for fname, toks in fields.items():
                s = SEARCH_WEIGHTS[fname] * _match(term, toks)
                if s:
                    score += s
                    why.append(f"{fname}:{term}={s:g}")
        if score:
            rows.append(meta | {"score": score, "matched": "; ".join(why)})
    cols = ["kind", "group_name", "feature_name", "version", "dtype", "score", "matched", "description"]
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    out["_k"] = (out["kind"] != "group").astype(int)
    out = out.sort_values(["score", "_k", "group_name", "feature_name"], ascending=[False, True, True, True],
                          na_position="first")
    return out.drop(columns="_k").head(limit).reset_index(drop=True)


# --------------------------------------------------------------------------- point-in-time retrieval

def asof_join_sql(left: str, right_table: str, key_pairs: Sequence[tuple[str, str, str | None]],
                  left_time: str, right_time: str, columns: Sequence[tuple[str, str]],
                  time_alias: str, ttl: str | None) -> str:
    """One point-in-time join step: every row of ``left`` plus the latest ``right_table`` row of the
    same entity with ``right_time <= left_time``; values older than ``ttl`` (an interval literal) are
    null. ``key_pairs``: (left column, right column, type to cast the left one to or None);
    ``columns``: (right column, output name). DuckDB ``ASOF LEFT JOIN``: the one engine-specific query
    of the feature store (Spark needs a window-over-union variant here).
    """
    on = [f"{'cast(l.' + _q(lk) + ' as ' + cast + ')' if cast else 'l.' + _q(lk)} = r.{_q(rk)}"
          for lk, rk, cast in key_pairs]
    on.append(f"l.{_q(left_time)} >= r.{_q(right_time)}")
    fresh = f"r.{_q(right_time)} >= l.{_q(left_time)} - interval {sql_literal(ttl)}" if ttl else "true"
    sel = [f"case when {fresh} then r.{_q(src)} end as {_q(alias)}" for src, alias in columns]
    sel.append(f"case when {fresh} then r.{_q(right_time)} end as {_q(time_alias)}")
    cols = ",\n        ".join(["l.*", *sel])
    return (f"select\n        {cols}\n"
            f"    from {left} as l\n"
            f"    asof left join {_q(right_table)} as r\n"
            f"        on {' and '.join(on)}")


def _ttl_literal(con, ttl: Any) -> str | None:
    if ttl is None:
        return None
    if isinstance(ttl, dt.timedelta):
        return f"{int(ttl / dt.timedelta(microseconds=1))} microseconds"
    try:
        con.execute(f"select interval {sql_literal(str(ttl))}")
    except duckdb.Error:
        raise FeatureError(f"ttl {ttl!r} is not an interval (e.g. '90 days', '12 hours')") from None
    return str(ttl)


def point_in_time_sql(con: duckdb.DuckDBPyConnection, entity: str, groups: str | Sequence[str], *,
                      timestamp_column: str, key_map: Mapping[str, str] | None = None,
                      features: Sequence[str] | None = None, version: int | Mapping[str, int] | None = None,
                      ttl: str | dt.timedelta | None = None, prefix: bool = False,
                      _order: str | None = None) -> str:
    """The SELECT that ``retrieve`` runs for an entity query or table name: print it, or paste it
    into a ``%%sql`` cell. Arguments as for ``retrieve``."""
    groups = [groups] if isinstance(groups, str) else list(groups)
    if not groups:
        raise FeatureError("retrieve: name at least one feature group")
    ttl_sql = _ttl_literal(con, ttl)
    src = entity.strip().rstrip(";")
    entity_sql = f"select * from {'.'.join(_q(p) for p in src.split('.'))}" if _IDENT.match(src) else src
    try:
        ecols = dict(con.execute(f"select column_name, column_type from (describe {entity_sql})").fetchall())
    except duckdb.Error as exc:
        raise FeatureError(f"retrieve: the entity query failed: {exc}") from exc
    if timestamp_column not in ecols:
        raise FeatureError(f"retrieve: timestamp_column {timestamp_column!r} is not an entity column "
                           f"(columns: {[c for c in ecols if c != '__wb_row']})")
    ts = "__wb_ts"  # the entity timestamp, as a TIMESTAMP when it came as text
    ts_expr = _q(timestamp_column) if ecols[timestamp_column] in TEMPORAL_TYPES else \
        f"cast({_q(timestamp_column)} as timestamp)"
    if ecols[timestamp_column] not in TEMPORAL_TYPES:  # text timestamps: name a bad value before the join fails
        try:
            bad = con.execute(f"select cast({_q(timestamp_column)} as varchar), count(*) over () from ({entity_sql}) "
                              f"where {_q(timestamp_column)} is not null "
                              f"and try_cast({_q(timestamp_column)} as timestamp) is null limit 1").fetchall()
        except duckdb.Error as exc:
            raise FeatureError(f"retrieve: timestamp_column {timestamp_column!r} ({ecols[timestamp_column]}) "
                               f"cannot be read as a timestamp: {str(exc).splitlines()[0]}") from None
        if bad:
            raise FeatureError(f"retrieve: timestamp_column {timestamp_column!r}: {bad[0][1]} value(s) are not "
                               f"timestamps, e.g. {bad[0][0]!r} (use 'YYYY-MM-DD[ HH:MM:SS]')")
    ctes = [f"e0 as (\n    select *, {ts_expr} as {ts}\n    from ({entity_sql})\n)"]
    out_cols = [c for c in ecols if c != "__wb_row"]
    taken = set(ecols) | {ts}
    key_cols: list[str] = []
    wanted = set(features or [])
    found: set[str] = set()
    for i, gname in enumerate(groups, start=1):
        g = _resolve_version(con, gname, version.get(gname) if isinstance(version, Mapping) else version)
        ftypes = dict(con.execute(f"select column_name, column_type from (describe {_q(g['table_name'])})")
                      .fetchall())
        pairs = []
        for k in g["entity_keys"]:
            ek = (key_map or {}).get(k, k)
            if ek not in ecols:
                raise FeatureError(f"retrieve: group {gname} is keyed by {k!r}, not an entity column; "
                                   f"pass key_map={{{k!r}: '<entity column>'}}")
            pairs.append((ek, k, None if ecols[ek] == ftypes[k] else ftypes[k]))
            key_cols.append(ek)
        fcols = [r[0] for r in con.execute("select feature_name from features where group_name = ? and "
                                           "version = ? order by position", [gname, int(g["version"])]).fetchall()
                 if not wanted or r[0] in wanted]
        found |= set(fcols)
        cols = [(f, f"{gname}__{f}" if prefix else f) for f in fcols]
        time_alias = f"{gname}__event_time"
        for _, alias in [*cols, (None, time_alias)]:
            if alias in taken:
                raise FeatureError(f"retrieve: output column {alias!r} of group {gname} clashes with "
                                   "another column; pass prefix=True or rename it")
            taken.add(alias)
        out_cols += [a for _, a in cols] + [time_alias]
        step = asof_join_sql(f"j{i - 1}" if i > 1 else "e0", g["table_name"], pairs, ts,
                             g["event_time_column"], cols, time_alias, ttl_sql)
        ctes.append(f"j{i} as (\n    {step}\n)")
    unknown = sorted(wanted - found)
    if unknown:
        raise FeatureError(f"retrieve: feature(s) {unknown} not in group(s) {groups}")
    order_by = _order or ", ".join([ts, *dict.fromkeys(_q(k) for k in key_cols)])
    return (f"with {(',' + chr(10)).join(ctes)}\nselect {', '.join(_q(c) for c in out_cols)}\n"
            f"from j{len(groups)}\norder by {order_by}")


def retrieve(con: duckdb.DuckDBPyConnection, entity: Any, groups: str | Sequence[str], *,
             timestamp_column: str, key_map: Mapping[str, str] | None = None,
             features: Sequence[str] | None = None, version: int | Mapping[str, int] | None = None,
             ttl: str | dt.timedelta | None = None, prefix: bool = False,
             out_table: str | None = None) -> pd.DataFrame | int:
    """Point-in-time features for each entity row: the latest values at or before its timestamp.

    ``entity``: a SELECT query, a workspace table name, or a DataFrame (pandas, polars, Arrow) with the
    groups' entity key column(s) (``key_map`` maps a group key to another entity column name) and
    ``timestamp_column``. Output: every entity row once, with each feature (``<group>__<feature>``
    when ``prefix``) and ``<group>__event_time`` (when the value became true; null when none or
    older than ``ttl``). ``features`` keeps only those; ``version`` pins one (or ``{group: N}``).
    Rows come back in the DataFrame's order, or for a query by timestamp and keys.
    ``out_table``: write a workspace table instead and return its row count.
    """
    if out_table is not None and (not _IDENT.match(out_table) or "." in out_table):
        raise FeatureError(f"retrieve: out_table {out_table!r} is not a table name")
    opts = dict(timestamp_column=timestamp_column, key_map=key_map, features=features, version=version,
                ttl=ttl, prefix=prefix)
    view = None
    if isinstance(entity, str):
        query = point_in_time_sql(con, entity, groups, **opts)
    else:
        import pyarrow as pa

        tbl = entity.to_arrow() if hasattr(entity, "to_arrow") else (
            entity if isinstance(entity, pa.Table) else pa.Table.from_pandas(entity, preserve_index=False))
        tbl = tbl.append_column("__wb_row", pa.array(range(tbl.num_rows), pa.int64()))  # keeps row order
        view = f"_fs_entity_{id(tbl)}"
        con.register(view, tbl)
    try:
        if view is not None:
            query = point_in_time_sql(con, f"select * from {view}", groups, **opts, _order="__wb_row")
        if out_table is None:
            return con.execute(query).df()
        transaction(con, lambda c: c.execute(f"create or replace table {_q(out_table)} as {query}"),
                    what=f"writing {out_table}")
        return int(con.execute(f"select count(*) from {_q(out_table)}").fetchone()[0])
    finally:
        if view is not None:
            con.unregister(view)


def read(con: duckdb.DuckDBPyConnection, group: str, version: int | None = None) -> duckdb.DuckDBPyRelation:
    """A group version's rows as a DuckDB relation (``.df()``, ``.pl()``, or more SQL on it)."""
    return con.sql(f"select * from {_q(_resolve_version(con, group, version)['table_name'])}")

