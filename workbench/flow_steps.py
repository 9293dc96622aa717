"""The step catalogue of data flows: each step's parameters and the SQL it compiles to.

    python -c "from workbench.flow_steps import STEPS; print(list(STEPS))"

A step is a ``StepSpec``: its fields (typed parameters with defaults; the widget builds its forms
from them) and a compile function ``(prev, name, columns, params) -> CompiledStep`` returning named
CTEs (the last one, named ``name``, is the step's output), the output columns, and the reason rows
leave. All SQL stays in the portable subset that SQLGlot transpiles to Spark (``portable=False``
marks the few options that need ``workbench.spark``'s dialect fixes on top). Hashes are ``md5``
based (never DuckDB's ``hash()``).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .workspace import sql_literal


class FlowError(ValueError):
    """A flow file is invalid; the message names the file, the step and the field."""


class BadParam(Exception):
    """Raised by a compile function; ``validate`` turns it into a FlowError naming step and field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field, self.message = field_name, message


@dataclass
class Field:
    name: str
    kind: str            # column, columns, identifier, str, sql, regex, template, int, float, bool,
                         # choice, mapping, rename, casts, target
    default: Any = None
    required: bool = False
    choices: tuple = ()
    help: str = ""
    min: float | None = None
    max: float | None = None


@dataclass
class CompiledStep:
    ctes: list[tuple[str, str]]      # (name, select statement); the last is the step's output
    columns: list[str]               # output columns, in order
    reason: str | None               # why rows leave (None: the step never removes rows)
    portable: bool = True            # False: plain SQLGlot does not carry it to Spark (workbench.spark does)


@dataclass
class StepSpec:
    name: str
    label: str                       # menu text
    doc: str
    fields: list[Field]
    compile: Callable[[str, str, list[str], dict[str, Any]], CompiledStep]
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- SQL helpers

_SIMPLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = {"all", "and", "as", "between", "by", "case", "cast", "create", "cross", "default", "distinct",
             "else", "end", "except", "false", "from", "full", "group", "having", "in", "inner", "interval",
             "intersect", "is", "join", "left", "like", "limit", "not", "null", "on", "or", "order", "outer",
             "right", "select", "table", "then", "to", "true", "union", "using", "values", "when", "where",
             "with", "window", "date", "timestamp", "user", "range", "array", "map", "primary", "references"}


def qi(name: str) -> str:
    """An identifier, double-quoted only when it needs to be (SQLGlot turns quotes into Spark backticks)."""
    if _SIMPLE.match(name) and name.lower() not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


lit = sql_literal  # a Python value as a SQL literal (one definition for the package)


def hex8_int(hex_expr: str) -> str:
    """The first 8 hex digits of an md5 hex string as an integer in [0, 2^32), portable to Spark.

    ARCHITECTURE.md's formula; each digit is cast to bigint before scaling (Spark's ``locate``
    returns int and ``15 * 16^7`` overflows int in Spark's ANSI mode).
    """
    return " + ".join(f"cast(strpos('0123456789abcdef', substr({hex_expr}, {k}, 1)) - 1 as bigint) * {16 ** (8 - k)}"
                      for k in range(1, 9))


def hash_fraction(key_expr: str, seed: int) -> str:
    """A stable number in [0, 1) from ``md5(seed || ':' || key)``: the spine's split rule (sql/06_splits.sql)."""
    return f"({hex8_int(f'md5({lit(str(seed))} || {lit(chr(58))} || cast({key_expr} as varchar))')}) / 4294967296.0"


def _select_list(items: list[str]) -> str:
    return ",\n    ".join(items)


def _assign(cols: list[str], exprs: dict[str, str]) -> tuple[list[str], list[str]]:
    """Select items that set each target column to its expression (in place when it exists, else appended)."""
    items = [f"{exprs[c]} as {qi(c)}" if c in exprs else qi(c) for c in cols]
    new = [t for t in exprs if t not in cols]
    return items + [f"{exprs[t]} as {qi(t)}" for t in new], list(cols) + new


def _replace(cols: list[str], target: str, expr: str) -> tuple[list[str], list[str]]:
    return _assign(cols, {target: expr})


def _simple(prev: str, name: str, cols: list[str], items: list[str], where: str | None = None,
            reason: str | None = None, portable: bool = True, out: list[str] | None = None) -> CompiledStep:
    sql = f"select\n    {_select_list(items)}\nfrom {prev}"
    if where:
        sql += f"\nwhere {where}"
    return CompiledStep([(name, sql)], out if out is not None else list(cols), reason, portable)


# --------------------------------------------------------------------------- parameter checking

def _column(cols: list[str], value: Any, fname: str) -> str:
    if not isinstance(value, str):
        raise BadParam(fname, f"expected a column name, got {value!r}")
    for c in cols:
        if c.lower() == value.lower():
            return c
    raise BadParam(fname, f"column {value!r} not found; columns here: {', '.join(cols)}")


def check_params(spec: StepSpec, params: dict[str, Any], cols: list[str], where: str) -> dict[str, Any]:
    """Defaults filled in, types checked, column names resolved; errors name the step and field."""
    known = {f.name for f in spec.fields}
    unknown = sorted(set(params) - known)
    if unknown:
        raise FlowError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                        f"fields of {spec.name}: {', '.join(f.name for f in spec.fields)}")
    out: dict[str, Any] = {}
    for f in spec.fields:
        v = params.get(f.name, f.default)
        try:
            out[f.name] = _check(f, v, cols)
        except BadParam as exc:
            raise FlowError(f"{where}: field {exc.field!r}: {exc.message}") from None
    return out


def _check(f: Field, v: Any, cols: list[str]) -> Any:
    if v is None or (v == "" and f.kind not in ("str", "template")) or (v == [] and f.kind == "columns"):
        if f.required:
            raise BadParam(f.name, "is required")
        return [] if f.kind == "columns" else ({} if f.kind in ("mapping", "rename", "casts") else None)
    k = f.kind
    if k == "column":
        return _column(cols, v, f.name)
    if k == "columns":
        vs = [v] if isinstance(v, str) else v
        if not isinstance(vs, list):
            raise BadParam(f.name, f"expected a list of column names, got {v!r}")
        return [_column(cols, x, f.name) for x in vs]
    if k == "identifier":
        if not isinstance(v, str) or not _SIMPLE.match(v):
            raise BadParam(f.name, f"expected a column name (letters, digits, _), got {v!r}")
        return v
    if k in ("str", "sql", "regex", "template"):
        if not isinstance(v, str):
            raise BadParam(f.name, f"expected text, got {v!r}")
        if k == "sql":
            _check_predicate(v, cols, f.name)
        if k == "regex":
            _check_regex(v, f.name)
        return v
    if k == "bool":
        if not isinstance(v, bool):
            raise BadParam(f.name, f"expected true or false, got {v!r}")
        return v
    if k in ("int", "float"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (k == "int" and not float(v).is_integer()):
            raise BadParam(f.name, f"expected {'an integer' if k == 'int' else 'a number'}, got {v!r}")
        v = int(v) if k == "int" else float(v)
        if (f.min is not None and v < f.min) or (f.max is not None and v > f.max):
            raise BadParam(f.name, f"must be between {f.min} and {f.max}, got {v}")
        return v
    if k == "choice":
        if v not in f.choices:
            raise BadParam(f.name, f"expected one of {', '.join(map(str, f.choices))}, got {v!r}")
        return v
    if k == "target":
        if v in ("min", "max") or (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            return v
        raise BadParam(f.name, f"expected 'min', 'max' or a positive integer, got {v!r}")
    if k in ("mapping", "rename", "casts"):
        if not isinstance(v, dict):
            raise BadParam(f.name, f"expected a mapping (key: value), got {v!r}")
        if k == "mapping":
            return {str(a): (None if b is None else str(b)) for a, b in v.items()}
        res = {}
        for a, b in v.items():
            col = _column(cols, str(a), f.name)
            if k == "rename" and (not isinstance(b, str) or not _SIMPLE.match(b)):
                raise BadParam(f.name, f"new name for {a!r} must be letters, digits and _, got {b!r}")
            if k == "casts" and str(b).lower() not in CAST_TYPES:
                raise BadParam(f.name, f"type {b!r} for {a!r} not supported; use one of {', '.join(CAST_TYPES)}")
            res[col] = str(b).lower() if k == "casts" else b
        return res
    raise AssertionError(k)


def _check_predicate(text: str, cols: list[str], fname: str) -> None:
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse(f"select 1 from t where {text}", read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise BadParam(fname, f"not a SQL predicate: {str(exc).splitlines()[0]}") from None
    if len(tree) != 1 or not isinstance(tree[0], exp.Select) or tree[0].args.get("where") is None:
        raise BadParam(fname, f"not a single SQL predicate: {text!r}")
    known = {c.lower() for c in cols}
    for col in tree[0].args["where"].find_all(exp.Column):
        if col.name.lower() not in known:
            raise BadParam(fname, f"column {col.name!r} not found; columns here: {', '.join(cols)}")


def _check_regex(pattern: str, fname: str) -> None:
    if re.search(r"\(\?<?[=!]", pattern):
        raise BadParam(fname, "lookahead/lookbehind is not supported by DuckDB's RE2 engine")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise BadParam(fname, f"not a valid regular expression: {exc}") from None


# --------------------------------------------------------------------------- the steps

CAST_TYPES = ("varchar", "integer", "bigint", "double", "boolean", "date", "timestamp")


def _select(prev, name, cols, p):
    keep = p["columns"] or list(cols)
    for f in ("rename", "cast"):
        for c in p[f]:
            if c not in keep:
                raise BadParam(f, f"column {c!r} is not among the selected columns")
    items, out = [], []
    for c in keep:
        e = qi(c)
        if c in p["cast"]:
            e = f"{'try_cast' if p['safe_cast'] else 'cast'}({e} as {p['cast'][c]})"
        new = p["rename"].get(c, c)
        items.append(e if e == qi(new) else f"{e} as {qi(new)}")
        out.append(new)
    dup = sorted({c for c in out if [o.lower() for o in out].count(c.lower()) > 1})
    if dup:
        raise BadParam("rename", f"two output columns would be named {', '.join(dup)}")
    return _simple(prev, name, cols, items, out=out)


def _filter(prev, name, cols, p):
    return _simple(prev, name, cols, [qi(c) for c in cols], where=p["where"],
                   reason=p["reason"] or f"filter: {p['where']}")


def _drop_nulls(prev, name, cols, p):
    conds = []
    for c in p["columns"]:
        conds.append(f"{qi(c)} is not null")
        if p["empty_strings"]:
            conds.append(f"trim(cast({qi(c)} as varchar)) <> ''")
    what = "null or empty" if p["empty_strings"] else "null"
    return _simple(prev, name, cols, [qi(c) for c in cols], where="\n    and ".join(conds),
                   reason=f"{what} in {', '.join(p['columns'])}")


def normalize_expr(col: str, *, lowercase=False, collapse_whitespace=True, strip=True, nfc=False) -> str:
    e = qi(col)
    if nfc:
        e = f"nfc_normalize({e})"
    if collapse_whitespace:
        e = f"regexp_replace({e}, '\\s+', ' ', 'g')"
    if strip:
        e = f"trim({e})"
    if lowercase:
        e = f"lower({e})"  # ASCII-safe across engines; non-ASCII case folding differs (ARCHITECTURE.md)
    return e


def _normalize_text(prev, name, cols, p):
    e = normalize_expr(p["column"], lowercase=p["lowercase"], collapse_whitespace=p["collapse_whitespace"],
                       strip=p["strip"], nfc=p["nfc"])
    items, out = _replace(cols, p["output"] or p["column"], e)
    return _simple(prev, name, cols, items, out=out, portable=not p["nfc"])


def _regex_replace(prev, name, cols, p):
    e = f"regexp_replace({qi(p['column'])}, {lit(p['pattern'])}, {lit(p['replacement'] or '')}, 'g')"
    items, out = _replace(cols, p["output"] or p["column"], e)
    # Group references differ: DuckDB writes \1, Spark (Java) writes $1.
    return _simple(prev, name, cols, items, out=out, portable=not re.search(r"\\\d", p["replacement"] or ""))


def token_count_expr(col: str) -> str:
    """Whitespace tokens, portable: spaces in the collapsed text + 1 (0 for blank text)."""
    t = f"regexp_replace(trim({col}), '\\s+', ' ', 'g')"
    return f"(case when trim({col}) = '' then 0 else length({t}) - length(replace({t}, ' ', '')) + 1 end)"


def _length_filter(prev, name, cols, p):
    if p["min"] is None and p["max"] is None:
        raise BadParam("min", "give min, max or both")
    if p["min"] is not None and p["max"] is not None and p["min"] > p["max"]:
        raise BadParam("max", f"max ({p['max']}) is below min ({p['min']})")
    c = qi(p["column"])
    n = f"length({c})" if p["unit"] == "chars" else token_count_expr(c)
    conds = ([f"{n} >= {p['min']}"] if p["min"] is not None else []) + \
            ([f"{n} <= {p['max']}"] if p["max"] is not None else [])
    lo = "" if p["min"] is None else p["min"]
    hi = "" if p["max"] is None else p["max"]
    return _simple(prev, name, cols, [qi(x) for x in cols], where="\n    and ".join(conds),
                   reason=f"{p['column']} length outside [{lo}, {hi}] {p['unit']}")


def _order(cols: list[str], first: list[str], desc: bool) -> str:
    d = " desc" if desc else ""
    return ", ".join([f"{qi(c)}{d}" for c in first] + [qi(c) for c in cols if c not in first])


def _dedup(prev, name, cols, p):
    keys = p["columns"] or list(cols)
    inner = (f"select\n        {', '.join(qi(c) for c in cols)},\n"
             f"        row_number() over (partition by {', '.join(qi(c) for c in keys)} "
             f"order by {_order(cols, p['order_by'], p['keep'] == 'last')}) as _rn\n"
             f"    from {prev}")
    sql = f"select\n    {_select_list([qi(c) for c in cols])}\nfrom (\n    {inner}\n) as ranked\nwhere _rn = 1"
    return CompiledStep([(name, sql)], list(cols), f"exact duplicate on {', '.join(keys)}")


PII_PATTERNS = {
    # RE2 and Java both accept these (no lookaround); order matters: emails, then cards, then phones.
    "emails": ("<EMAIL>", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "cards": ("<CARD>", r"\b[0-9]{4}([ -]?[0-9]{4}){2}[ -]?[0-9]{1,7}\b"),
    "phones": ("<PHONE>", r"(\+[0-9]{1,3}[ .-]?)?(\([0-9]{2,4}\)[ .-]?|\b[0-9]{3}[ .-]?)[0-9]{3}[ .-]?[0-9]{4}\b"
                          r"|\+[0-9]{1,3}([ .-]?[0-9]{2,4}){2,4}\b"),
}


def mask_pii_expr(col: str, kinds=("emails", "cards", "phones")) -> str:
    """Nested ``regexp_replace`` calls, one per kind, laid out one pattern per line."""
    lines: list[str] = []
    for kind in [k for k in ("emails", "cards", "phones") if k in kinds]:
        token, pat = PII_PATTERNS[kind]
        if not lines:
            lines = [f"regexp_replace({qi(col)}, {lit(pat)}, {lit(token)}, 'g')"]
        else:
            lines = ["regexp_replace("] + ["    " + ln for ln in lines]
            lines[-1] += ","
            lines.append(f"    {lit(pat)}, {lit(token)}, 'g')")
    return "\n    ".join(lines)


def _mask_pii(prev, name, cols, p):
    kinds = [k for k in ("emails", "cards", "phones") if p[k]]
    if not kinds:
        raise BadParam("emails", "turn on at least one of emails, phones, cards")
    items = [f"{mask_pii_expr(c, kinds)} as {qi(c)}" if c in p["columns"] else qi(c) for c in cols]
    return _simple(prev, name, cols, items)


SCRIPTS = {  # character classes both RE2 and Java understand
    "latin": "A-Za-z\\x{00C0}-\\x{024F}",
    "cyrillic": "\\x{0400}-\\x{04FF}",
    "greek": "\\x{0370}-\\x{03FF}",
    "arabic": "\\x{0600}-\\x{06FF}",
    "cjk": "\\x{3040}-\\x{30FF}\\x{4E00}-\\x{9FFF}\\x{AC00}-\\x{D7AF}",
}


def script_ratio_expr(col: str, script: str) -> str:
    c = qi(col)
    return (f"length(regexp_replace({c}, '[^{SCRIPTS[script]}]', '', 'g'))"
            f" / nullif(length(regexp_replace({c}, '[^\\p{{L}}]', '', 'g')), 0)")


def _script_filter(prev, name, cols, p):
    r = script_ratio_expr(p["column"], p["script"])
    cond = f"coalesce({r} >= {p['min_ratio']}, {lit(p['keep_no_letters'])})"
    return _simple(prev, name, cols, [qi(c) for c in cols], where=cond,
                   reason=f"fewer than {p['min_ratio']:.0%} of letters in {p['column']} are {p['script']}")


def _map_labels(prev, name, cols, p):
    if not p["mapping"]:
        raise BadParam("mapping", "is required (old label: new label)")
    c = qi(p["column"])
    whens = "\n        ".join(f"when cast({c} as varchar) = {lit(a)} then {lit(b)}" for a, b in p["mapping"].items())
    other = {"keep": f"cast({c} as varchar)", "null": "null", "drop": "null"}[p["unmapped"]]
    items, out = _replace(cols, p["output"] or p["column"], f"case\n        {whens}\n        else {other}\n    end")
    where = reason = None
    if p["unmapped"] == "drop":
        where = f"cast({c} as varchar) in ({', '.join(lit(a) for a in p['mapping'])})"
        reason = f"{p['column']} not in the label mapping"
    return _simple(prev, name, cols, items, where=where, reason=reason, out=out)


def _resample(prev, name, cols, p):
    lab, key, t = qi(p["label"]), qi(p["key"]), p["target"]
    target = {"min": "min(_n)", "max": "max(_n)"}.get(t, str(t))
    copies = ", ".join(f"({i})" for i in range(p["max_copies"]))
    rank_hash = f"md5({lit(str(p['seed']))} || '|' || cast(p.{key} as varchar) || '|' || cast(c._copy as varchar))"
    order = f"c._copy, {rank_hash}" + "".join(f", p.{qi(x)}" for x in cols)
    out_cols = [c for c in cols if c != "sample_copy"]
    inner = (f"select\n        {', '.join('p.' + qi(c) for c in out_cols)},\n        c._copy,\n"
             f"        row_number() over (partition by p.{lab} order by {order}) as _rank,\n        t._target\n"
             f"    from {prev} as p\n    inner join {name}__classes as k on k.{lab} = p.{lab}\n"
             f"    cross join {name}__target as t\n    cross join (values {copies}) as c(_copy)\n"
             f"    where c._copy = 0 or c._copy * k._n < t._target")
    return CompiledStep([
        (f"{name}__classes", f"select {lab}, count(*) as _n\nfrom {prev}\nwhere {lab} is not null\ngroup by {lab}"),
        (f"{name}__target", f"select {target} as _target\nfrom {name}__classes"),
        (name, f"select\n    {_select_list([qi(c) for c in out_cols] + ['_copy as sample_copy'])}\n"
               f"from (\n    {inner}\n) as ranked\nwhere _rank <= _target"),
    ], out_cols + ["sample_copy"], f"undersampled {p['label']} (target {t}) or null label")


_JINJA_VAR = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*((?:\|\s*[a-z]+\s*)*)}}")
TEMPLATE_FILTERS = {"lower": "lower({})", "upper": "upper({})", "trim": "trim({})"}


def template_expr(template: str, cols: list[str], fname: str) -> str:
    """A Jinja subset (``{{ column }}``, filters ``lower``/``upper``/``trim``) as a SQL string concatenation.

    Null values render as empty text. ``{% ... %}`` blocks are not part of the subset.
    """
    if "{%" in template or "{#" in template:
        raise BadParam(fname, "only {{ column }} placeholders (with | lower, | upper, | trim) are supported")
    parts, pos = [], 0

    def text(t: str) -> str:  # newlines as chr(10): the SQL file stays indentable, literals stay one line
        pieces = []
        for i, line in enumerate(t.split("\n")):
            pieces += (["chr(10)"] if i else []) + ([lit(line)] if line else [])
        return " || ".join(pieces)

    for m in _JINJA_VAR.finditer(template):
        if m.start() > pos:
            parts.append(text(template[pos:m.start()]))
        e = f"coalesce(cast({qi(_column(cols, m.group(1), fname))} as varchar), '')"
        for flt in [x.strip() for x in m.group(2).split("|") if x.strip()]:
            if flt not in TEMPLATE_FILTERS:
                raise BadParam(fname, f"unknown filter {flt!r}; use {', '.join(TEMPLATE_FILTERS)}")
            e = TEMPLATE_FILTERS[flt].format(e)
        parts.append(e)
        pos = m.end()
    if pos < len(template):
        parts.append(text(template[pos:]))
    rest = _JINJA_VAR.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise BadParam(fname, "a {{ ... }} placeholder must be a column name with optional | filters")
    return " || ".join(parts) if parts else "''"


def library_template(template_id: str, cols: list[str]) -> tuple[str, dict[str, str]]:
    """A template of the template library (``templates/*.yaml``) compiled to SQL by ``template_sql``.

    Returns the template's id and ``{part: SQL expression}`` for its prompt and completion. A part
    that needs Jinja at run time (no SQL form) is an error: render such templates with
    ``workbench templates apply`` instead.
    """
    from . import template_sql, templates

    try:
        t = templates.get(template_id)
    except templates.TemplateError as exc:
        raise BadParam("template_id", str(exc)) from None
    missing = [c for c in t.columns if c.lower() not in {x.lower() for x in cols}]
    if missing:
        raise BadParam("template_id", f"{t.label} reads {', '.join(missing)}, not among the columns here: "
                                      f"{', '.join(cols)}")
    out = {}
    for part in ("prompt", "completion"):
        cp = template_sql.compile_part(t, part)
        if cp.sql is None:
            raise BadParam("template_id", f"{t.label}: the {part} has no SQL form ({cp.reason}); "
                                          "render it with `workbench templates apply`")
        out[part] = cp.sql
    return t.id, out


def _apply_template(prev, name, cols, p):
    exprs: dict[str, str] = {}
    if p["template_id"]:
        if p["prompt"] or p["completion"]:
            raise BadParam("template_id", "give either template_id or prompt/completion, not both")
        tid, parts = library_template(p["template_id"], cols)
        exprs = {p["prompt_column"]: parts["prompt"], p["completion_column"]: parts["completion"],
                 "template_id": lit(tid)}
    else:
        if not p["prompt"]:
            raise BadParam("prompt", "is required (or a template_id from the template library)")
        exprs[p["prompt_column"]] = template_expr(p["prompt"], cols, "prompt")
        if p["completion"]:
            exprs[p["completion_column"]] = template_expr(p["completion"], cols, "completion")
    if p["completion_column"] == p["prompt_column"]:
        raise BadParam("completion_column", "must differ from prompt_column")
    items, out = _assign(cols, exprs)
    return _simple(prev, name, cols, items, out=out)


def split_expr(key: str, seed: int, train: float, validation: float) -> str:
    f = hash_fraction(qi(key), seed)
    return (f"case\n        when {f} < {train} then 'train'\n"
            f"        when {f} < {round(train + validation, 10)} then 'validation'\n"
            f"        else 'test'\n    end")


def _split(prev, name, cols, p):
    if p["train"] + p["validation"] > 1:
        raise BadParam("validation", f"train + validation must be at most 1, got {p['train'] + p['validation']}")
    if not p["stratify"]:
        items, out = _replace(cols, p["output"], split_expr(p["key"], p["seed"], p["train"], p["validation"]))
        return _simple(prev, name, cols, items, out=out)
    # Stratified, as sql/06_splits.sql: rank rows by the hash fraction within their label; the first
    # floor(n * train + 0.5) go to train, up to floor(n * (train + validation) + 0.5) to validation.
    # Ties (copies of a key after resample) are ordered by every column, so both engines agree.
    lab, key = qi(p["stratify"]), qi(p["key"])
    inner = (f"select\n        {', '.join(qi(c) for c in cols)},\n"
             f"        row_number() over (partition by {lab} order by {hash_fraction(key, p['seed'])}, "
             f"{_order(cols, [p['key']], False)}) as _r,\n"
             f"        count(*) over (partition by {lab}) as _n\n    from {prev}")
    case = (f"case\n        when _r <= floor(_n * {p['train']} + 0.5) then 'train'\n"
            f"        when _r <= floor(_n * {round(p['train'] + p['validation'], 10)} + 0.5) then 'validation'\n"
            f"        else 'test'\n    end")
    items, out = _replace(cols, p["output"], case)
    sql = f"select\n    {_select_list(items)}\nfrom (\n    {inner}\n) as ranked"
    return CompiledStep([(name, sql)], out, None)


def _near_dedup(prev, name, cols, p):
    from .near_dup import near_dup_ctes

    ctes = near_dup_ctes(prev, name, cols, column=p["column"], threshold=p["threshold"], ngram=p["ngram"],
                         unit=p["unit"], bands=p["bands"], rows_per_band=p["rows_per_band"], seed=p["seed"],
                         order_by=p["order_by"], lowercase=p["lowercase"])
    return CompiledStep(ctes, list(cols), f"near-duplicate of an earlier {p['column']} "
                                          f"({p['unit'][:-1]} {p['ngram']}-gram jaccard >= {p['threshold']})",
                        portable=p["unit"] == "chars")


F = Field
STEPS: dict[str, StepSpec] = {s.name: s for s in [
    StepSpec("select", "Select / rename / cast columns", "Keep columns (all when empty), rename and cast them.", [
        F("columns", "columns", help="columns to keep, in order (empty: all)"),
        F("rename", "rename", help="old name: new name"),
        F("cast", "casts", help=f"column: type ({', '.join(CAST_TYPES)})"),
        F("safe_cast", "bool", True, help="bad values become null (try_cast) instead of failing the run"),
    ], _select),
    StepSpec("filter", "Filter rows (SQL predicate)", "Keep rows where the predicate is true.", [
        F("where", "sql", required=True, help="SQL predicate, e.g. channel <> 'test'"),
        F("reason", "str", help="why removed rows left (default: the predicate)"),
    ], _filter),
    StepSpec("drop_nulls", "Drop rows with nulls", "Drop rows with a null (or blank) value in any chosen column.", [
        F("columns", "columns", required=True, help="columns that must have a value"),
        F("empty_strings", "bool", True, help="also drop blank text"),
    ], _drop_nulls),
    StepSpec("normalize_text", "Normalize text", "Collapse whitespace, trim, optionally lowercase / NFC.", [
        F("column", "column", required=True), F("output", "identifier", help="new column (default: in place)"),
        F("lowercase", "bool", False), F("collapse_whitespace", "bool", True), F("strip", "bool", True),
        F("nfc", "bool", False, help="Unicode NFC (on Spark: workbench.spark's nfc_normalize)"),
    ], _normalize_text),
    StepSpec("regex_replace", "Regex replace", "Replace every match of a regular expression (RE2 syntax).", [
        F("column", "column", required=True), F("pattern", "regex", required=True),
        F("replacement", "str", ""), F("output", "identifier", help="new column (default: in place)"),
    ], _regex_replace),
    StepSpec("length_filter", "Length filter", "Keep rows whose text length is within [min, max].", [
        F("column", "column", required=True), F("unit", "choice", "chars", choices=("chars", "tokens")),
        F("min", "int", min=0), F("max", "int", min=0),
    ], _length_filter),
    StepSpec("dedup", "Remove exact duplicates", "Keep one row per distinct value of the key columns.", [
        F("columns", "columns", help="key columns (empty: all columns)"),
        F("order_by", "columns", help="which row is kept: the first by these columns"),
        F("keep", "choice", "first", choices=("first", "last")),
    ], _dedup),
    StepSpec("near_dedup", "Remove near-duplicates", "MinHash/LSH on character n-grams, verified by exact Jaccard.", [
        F("column", "column", required=True), F("threshold", "float", 0.8, min=0.05, max=1.0),
        F("ngram", "int", 5, min=1, max=20, help="shingle size (characters or words)"),
        F("unit", "choice", "chars", choices=("chars", "words"),
          help="words: DuckDB list functions (on Spark: flow run --engine spark)"),
        F("lowercase", "bool", True, help="compare lowercased, whitespace-collapsed text"),
        F("bands", "int", 16, min=1, max=64), F("rows_per_band", "int", 4, min=1, max=16),
        F("seed", "int", 42), F("order_by", "columns", help="which row is kept: the first by these columns"),
    ], _near_dedup),
    StepSpec("mask_pii", "Mask PII",
             "Replace emails, phone numbers and card-like numbers by <EMAIL>, <PHONE>, <CARD>.", [
        F("columns", "columns", required=True), F("emails", "bool", True), F("phones", "bool", True),
        F("cards", "bool", True),
    ], _mask_pii),
    StepSpec("script_filter", "Script (language) filter", "Keep rows whose letters are mostly in one script.", [
        F("column", "column", required=True), F("script", "choice", "latin", choices=tuple(SCRIPTS)),
        F("min_ratio", "float", 0.8, min=0.0, max=1.0), F("keep_no_letters", "bool", False),
    ], _script_filter),
    StepSpec("map_labels", "Map labels", "Rename label values; unmapped values kept, nulled or dropped.", [
        F("column", "column", required=True), F("mapping", "mapping", required=True, help="old: new"),
        F("unmapped", "choice", "keep", choices=("keep", "null", "drop")), F("output", "identifier"),
    ], _map_labels),
    StepSpec("resample", "Over/under-sample per class", "Each class to a target count, chosen by md5 hash.", [
        F("label", "column", required=True), F("key", "column", required=True),
        F("target", "target", "min", help="'min', 'max' or a row count per class"),
        F("seed", "int", 42), F("max_copies", "int", 20, min=1, max=1000, help="cap on oversampling"),
    ], _resample),
    StepSpec("apply_template", "Apply template", "Render prompt/completion columns from a Jinja subset.", [
        F("prompt", "template", help="e.g. 'Classify: {{ text }}'"), F("completion", "template"),
        F("template_id", "str", help="a template id or name of templates/*.yaml instead (adds template_id)"),
        F("prompt_column", "identifier", "prompt"), F("completion_column", "identifier", "completion"),
    ], _apply_template),
    StepSpec("split", "Train/validation/test split", "The spine's rule: md5(seed || ':' || key) to a fraction.", [
        F("key", "column", required=True), F("seed", "int", 42),
        F("train", "float", 0.8, min=0.0, max=1.0), F("validation", "float", 0.1, min=0.0, max=1.0),
        F("stratify", "column", help="label column: each label gets the fractions (rank by hash within it)"),
        F("output", "identifier", "split"),
    ], _split),
]}
