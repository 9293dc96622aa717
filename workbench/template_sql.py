"""Apply prompt templates to a table at scale: Jinja compiled to SQL, the rest rendered in Arrow batches.

    python -c "import workbench, workbench.template_sql as ts; print(ts.apply_templates(workbench.connect()))"
    python benchmarks/template_render.py --rows 1000000
    workbench templates apply --task contact_extraction --engine spark

``apply_templates`` writes ``sft_examples`` in one SQL statement run by DuckDB:

* every part (system, prompt, completion) of a template is *compiled* to a SQL string expression when
  it uses only plain text, columns, ``~``, ``if``/``elif``/``else`` on simple tests, the filters
  ``upper lower capitalize trim replace length string``, and sub-expressions that read no column
  (constants such as ``answer_choices | join(', ')`` or a ``for`` loop over them are rendered once);
* a part that does not compile runs as a vectorized DuckDB Python UDF: Arrow batches of rows go in,
  each distinct combination of the columns it reads is rendered once, by one sandboxed Jinja render
  per batch (the template wrapped in a loop over the batch), and an Arrow array comes back;
* case-changing filters match Python only on ASCII text, so compiled parts using them fall back to
  the UDF row by row for non-ASCII values (the output is always exactly what ``templates.render`` gives).

``engine="spark"`` runs the same SQL on Apache Spark (transpiled by ``workbench.spark.to_spark_sql``),
the parts that do not compile in Spark Arrow UDFs calling the same ``render_batch``; the rows go
through a Parquet staging folder into ``sft_examples``, identical to DuckDB's (docs/templates.md).

Choosing templates per row is SQL too: ``random`` picks one template per source row and task with a
portable stable hash (md5 of seed, task and key; never ``random()``), ``all`` renders every template,
a template id renders that one.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import duckdb
import pyarrow as pa
from jinja2 import nodes

from .templates import (ENV, PARTS, Template, TemplateError, check_template, load_library, render_part)

SFT_TABLE = "sft_examples"
SFT_COLUMNS = """
    example_id varchar,      -- '<template_id>|<source_row_id>'
    source_row_id varchar,   -- key of the source row (examples.example_id, corpus_documents.doc_id)
    source_table varchar,    -- table the row came from
    task varchar,            -- e.g. 'intent_classification'
    template_id varchar,     -- templates/*.yaml id that rendered it
    prompt varchar,
    completion varchar,
    choices varchar[],       -- answer choices (classification), else null
    system varchar,          -- system message, null when the template has none
    messages varchar         -- JSON chat messages: [{role, content}, ...]
"""
CHOICES = ("random", "all")          # or a template id / name
ENGINES = ("duckdb", "spark")        # where apply_templates runs the SQL (spark: workbench.spark.session())
WS_CHARS = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())  # what Python's str.strip() removes
_SEP = "\x00\x02wb-row-end\x02\x00"  # row separator of batched renders (never whitespace: `-%}` keeps it)
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
_STATEFUL = (nodes.Assign, nodes.AssignBlock, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.With,
             nodes.Scope, nodes.ScopedEvalContextModifier, nodes.EvalContextModifier)


# --------------------------------------------------------------------------- portable stable hash

def stable_hash(text: str) -> int:
    """First 8 hex digits of md5(text) as an int: the same number ``stable_hash_sql`` computes in SQL."""
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16)


def hex8_sql(hex_expr: str) -> str:
    """The first 8 hex digits of a hex string as an integer, in portable SQL (no ``'0x..'::bigint``).

    Digits are cast to bigint before multiplying: 8 * 16^7 overflows a 32-bit int (Spark's ANSI mode
    raises)."""
    return "(" + " + ".join(f"(cast(strpos('0123456789abcdef', substr({hex_expr}, {k}, 1)) as bigint) - 1) * {16 ** (8 - k)}"
                            for k in range(1, 9)) + ")"


def stable_hash_sql(expr: str) -> str:
    """``stable_hash`` in portable SQL (DuckDB and Spark): md5, hex digits summed, never ``hash()``."""
    return hex8_sql(f"md5({expr})")


def bucket_key_sql(key_sql: str, seed: int | str, task: str) -> str:
    """The string hashed to choose a row's template: ``'<seed>:<task>:<key>'``."""
    return f"{lit(f'{seed}:{task}:')} || cast({key_sql} as varchar)"


def stable_bucket_sql(key_sql: str, seed: int | str, task: str, n: int) -> str:
    """Which of ``n`` templates a row gets: ``stable_hash(f'{seed}:{task}:{key}') % n`` in SQL."""
    return f"({stable_hash_sql(bucket_key_sql(key_sql, seed, task))} % {int(n)})"


# --------------------------------------------------------------------------- SQL helpers

def lit(value: str) -> str:
    if "\x00" in value:
        raise _NotCompilable("a NUL character cannot be a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _NotCompilable(Exception):
    pass


# --------------------------------------------------------------------------- the compiler

@dataclass
class CompiledPart:
    part: str
    sql: str | None              # SQL string expression; None when the part does not compile
    exact_when: str | None       # SQL condition for rows where ``sql`` equals Jinja's output (None: all rows)
    reason: str | None = None    # why it did not compile
    columns: tuple[str, ...] = ()  # columns the part reads


def _fold_template(body: list[nodes.Node]):
    t = nodes.Template(body, lineno=1)
    t.set_environment(ENV)
    return ENV.template_class.from_code(ENV, ENV.compile(t), ENV.make_globals(None), None)


class _Compiler:
    def __init__(self, template: Template, types: dict[str, str]):
        self.t, self.types = template, types
        self.columns = set(template.columns)
        self.ascii: set[str] = set()   # columns whose values must be ASCII for the SQL to match Python
        self.ctx = {"answer_choices": list(template.answer_choices)} if template.answer_choices is not None else {}

    # which columns a node reads (a loop variable shadowing a column counts: it only blocks folding)
    def reads(self, node: nodes.Node) -> set[str]:
        found = itertools.chain([node], node.find_all(nodes.Name))
        return {n.name for n in found if isinstance(n, nodes.Name) and n.ctx == "load" and n.name in self.columns}

    def fold(self, body: list[nodes.Node]) -> str:
        try:
            return _fold_template(body).render(self.ctx)
        except Exception as exc:  # noqa: BLE001 - not foldable: leave the part to the Jinja renderer
            raise _NotCompilable(f"constant part fails to render alone: {exc}") from None

    def body(self, stmts: list[nodes.Node]) -> str:
        pieces = [self.stmt(s) for s in stmts]
        pieces = [p for p in pieces if p != "''"]
        return "(" + " || ".join(pieces) + ")" if len(pieces) > 1 else (pieces[0] if pieces else "''")

    def stmt(self, node: nodes.Node) -> str:
        if isinstance(node, nodes.Output):
            return self.body_exprs(node.nodes)
        if not self.reads(node):
            return lit(self.fold([node]))
        if isinstance(node, nodes.If):
            whens = [(node.test, node.body)] + [(e.test, e.body) for e in node.elif_]
            sql = "case " + " ".join(f"when {self.test(t)} then {self.body(b)}" for t, b in whens)
            return sql + f" else {self.body(node.else_)} end"
        raise _NotCompilable(f"{{% {type(node).__name__.lower()} %}} over columns")

    def body_exprs(self, exprs: list[nodes.Expr]) -> str:
        pieces = [lit(e.data) if isinstance(e, nodes.TemplateData) else self.out(e) for e in exprs]
        pieces = [p for p in pieces if p != "''"]
        return "(" + " || ".join(pieces) + ")" if len(pieces) > 1 else (pieces[0] if pieces else "''")

    def out(self, e: nodes.Expr) -> str:
        """SQL text of what ``{{ e }}`` prints."""
        sql, typ = self.expr(e)
        return sql if typ == "str" else f"cast({sql} as varchar)"

    def expr(self, e: nodes.Expr) -> tuple[str, str]:
        """(SQL, 'str' | 'int') of an expression."""
        if not self.reads(e):
            return lit(self.fold([nodes.Output([e])])), "str"
        if isinstance(e, nodes.Name):
            typ = self.types.get(e.name, "VARCHAR").upper()
            if typ == "VARCHAR":
                return ident(e.name), "str"
            if typ in _INT_TYPES:
                return ident(e.name), "int"
            raise _NotCompilable(f"column {e.name} is {typ}; Python prints it differently from SQL")
        if isinstance(e, nodes.Concat):
            return "(" + " || ".join(self.out(x) for x in e.nodes) + ")", "str"
        if isinstance(e, nodes.CondExpr):
            if e.expr2 is None:
                raise _NotCompilable("inline if without else")
            return f"case when {self.test(e.test)} then {self.out(e.expr1)} else {self.out(e.expr2)} end", "str"
        if isinstance(e, nodes.Filter) and e.node is not None:
            return self.filter(e)
        raise _NotCompilable(f"{type(e).__name__} expression")

    def filter(self, f: nodes.Filter) -> tuple[str, str]:
        if f.kwargs or f.dyn_args or f.dyn_kwargs:
            raise _NotCompilable(f"filter {f.name} with keyword arguments")
        x, typ = self.expr(f.node)
        if typ != "str" and f.name not in ("string",):
            raise _NotCompilable(f"filter {f.name} on a number")
        args = [self.const(a) for a in f.args]
        if f.name in ("upper", "lower", "capitalize") and not args:
            self.ascii |= self.reads(f.node)
            if f.name == "capitalize":
                return f"(upper(substr({x}, 1, 1)) || lower(substr({x}, 2)))", "str"
            return f"{f.name}({x})", "str"
        if f.name == "trim" and not args:
            return f"trim({x}, {lit(WS_CHARS)})", "str"
        if f.name == "replace" and len(args) == 2 and all(isinstance(a, str) for a in args) and args[0]:
            return f"replace({x}, {lit(args[0])}, {lit(args[1])})", "str"
        if f.name in ("length", "count") and not args:
            return f"length({x})", "int"
        if f.name == "string" and not args:
            return (x, "str") if typ == "str" else (f"cast({x} as varchar)", "str")
        raise _NotCompilable(f"filter {f.name}")

    def const(self, e: nodes.Expr) -> Any:
        if self.reads(e):
            raise _NotCompilable("filter argument reads a column")
        try:
            return e.as_const()
        except nodes.Impossible:
            raise _NotCompilable("filter argument is not a constant") from None

    def test(self, e: nodes.Expr) -> str:
        """SQL boolean with the truth value Jinja gives ``e``."""
        if not self.reads(e):
            return "true" if self.fold([nodes.If(e, [nodes.Output([nodes.Const("1")])], [], [])]) else "false"
        if isinstance(e, nodes.Not):
            return f"(not {self.test(e.node)})"
        if isinstance(e, nodes.And):
            return f"({self.test(e.left)} and {self.test(e.right)})"
        if isinstance(e, nodes.Or):
            return f"({self.test(e.left)} or {self.test(e.right)})"
        if isinstance(e, nodes.Compare) and len(e.ops) == 1:
            return self.compare(e.expr, e.ops[0].op, e.ops[0].expr)
        sql, typ = self.expr(e)   # truthiness: non-empty string, non-zero number
        return f"({sql} <> '')" if typ == "str" else f"({sql} <> 0)"

    def operand(self, e: nodes.Expr) -> tuple[str, str, Any]:
        if not self.reads(e):
            v = self.const(e)
            if isinstance(v, bool) or not isinstance(v, (str, int, list, tuple)):
                raise _NotCompilable(f"comparison with {type(v).__name__}")
            if isinstance(v, str):
                return lit(v), "str", v
            if isinstance(v, int):
                return str(v), "int", v
            if not all(isinstance(i, str) for i in v):
                raise _NotCompilable("membership in a list of non-strings")
            return "(" + ", ".join(lit(i) for i in v) + ")", "list", v
        sql, typ = self.expr(e)
        return sql, typ, None

    def compare(self, left: nodes.Expr, op: str, right: nodes.Expr) -> str:
        a, ta, _ = self.operand(left)
        b, tb, vb = self.operand(right)
        if op in ("eq", "ne") and ta == tb and ta in ("str", "int"):
            return f"({a} {'=' if op == 'eq' else '<>'} {b})"
        if op in ("lt", "lteq", "gt", "gteq") and ta == tb == "int":
            return f"({a} {dict(lt='<', lteq='<=', gt='>', gteq='>=')[op]} {b})"
        if op in ("in", "notin") and ta == "str" and tb in ("str", "list"):
            sql = f"contains({b}, {a})" if tb == "str" else (f"({a} in {b})" if vb else "false")
            return sql if op == "in" else f"(not {sql})"
        raise _NotCompilable(f"comparison '{op}' between {ta} and {tb}")


def compile_part(template: Template, part: str, types: dict[str, str] | None = None) -> CompiledPart:
    """One part of a template as a SQL string expression over its table's columns (or why it cannot be)."""
    src = getattr(template, part)
    types = types or {}
    if src is None:
        return CompiledPart(part, "null", None)
    ast = ENV.parse(src)
    comp = _Compiler(template, types)
    cols = tuple(sorted(comp.reads(ast)))
    if any(True for _ in ast.find_all(_STATEFUL)):
        return CompiledPart(part, None, None, "uses set/macro/call/with: rendered by Jinja", cols)
    try:
        sql = comp.body(ast.body)
    except _NotCompilable as exc:
        return CompiledPart(part, None, None, str(exc), cols)
    exact = (" and ".join(f"regexp_matches({ident(c)}, '^[\\x00-\\x7F]*$')" for c in sorted(comp.ascii))
             if comp.ascii else None)
    return CompiledPart(part, sql, exact, None, cols)


def compile_template(template: Template, types: dict[str, str] | None = None) -> dict[str, CompiledPart]:
    return {p: compile_part(template, p, types) for p in PARTS}


# --------------------------------------------------------------------------- the batch renderer

def _loop_template(template: Template, part: str, columns: Sequence[str]):
    """The part wrapped in ``{% for <columns> in wb_rows_ %}...<SEP>{% endfor %}`` (AST level, so the
    part's own whitespace control is untouched): one render per batch instead of one per row."""
    ast = ENV.parse(getattr(template, part))
    if len(columns) == 1:
        target = nodes.Name(columns[0], "store")
    else:
        target = nodes.Tuple([nodes.Name(c, "store") for c in columns], "store")
    loop = nodes.For(target, nodes.Name("wb_rows_", "load"), ast.body + [nodes.Output([nodes.TemplateData(_SEP)])],
                     [], None, False, lineno=1)
    return _fold_template([loop])


def render_batch(template: Template, part: str, columns: dict[str, Sequence[Any]]) -> list[str]:
    """A part rendered for many rows at once (``columns``: column -> values); equals ``render_part`` per row."""
    names = sorted(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    rows = list(zip(*(columns[c] for c in names))) if names else [()] * n
    try:
        uniq = list(dict.fromkeys(rows))
    except TypeError:  # a list or map column: values are not hashable, render every row
        uniq = rows
    ctx = {"answer_choices": list(template.answer_choices)} if template.answer_choices is not None else {}
    if not names:
        return [render_part(template, part, {})] * n
    loop = _loop_template_cached(template, part, tuple(names))
    items = [u[0] for u in uniq] if len(names) == 1 else uniq
    try:
        out = loop.render({**ctx, "wb_rows_": items}).split(_SEP)[:-1]
    except Exception:  # noqa: BLE001 - find the row and report it with the template's name
        for u in uniq:
            render_part(template, part, dict(zip(names, u)))
        raise
    if len(out) != len(uniq):  # a value contains the separator: render those rows one by one
        out = [render_part(template, part, dict(zip(names, u))) for u in uniq]
    if len(uniq) == len(rows):
        return out
    by = dict(zip(uniq, out))
    return [by[r] for r in rows]


_LOOPS: dict[tuple, Any] = {}


def _loop_template_cached(template: Template, part: str, names: tuple[str, ...]):
    key = (getattr(template, part), template.answer_choices, names)
    if key not in _LOOPS:
        _LOOPS[key] = _loop_template(template, part, names)
    return _LOOPS[key]


def _udf(template: Template, part: str, names: Sequence[str]) -> Callable:
    def fn(*arrays: pa.Array) -> pa.Array:
        cols = {c: a.to_pylist() for c, a in zip(names, arrays)}
        return pa.array(render_batch(template, part, cols), pa.string())
    # DuckDB reads the arity from the signature: one positional parameter per column
    fn.__signature__ = inspect.Signature([inspect.Parameter(f"c{i}", inspect.Parameter.POSITIONAL_ONLY)
                                          for i in range(len(names))])
    return fn


# --------------------------------------------------------------------------- planning and applying

@dataclass
class PartPlan:
    template: Template
    part: str
    sql: str                   # the SQL expression used in the statement
    method: str                # 'sql' | 'sql+python' (non-ASCII rows) | 'python' | 'constant' | 'none'
    reason: str | None
    udf: tuple[str, Callable, list[str]] | None  # (function name, function, argument types)
    columns: tuple[str, ...] = ()  # the columns the UDF takes, in order


def plan_part(template: Template, part: str, types: dict[str, str], *, compile_sql: bool = True,
              udf_name: str = "wb_render") -> PartPlan:
    cp = compile_part(template, part, types)
    if getattr(template, part) is None:
        return PartPlan(template, part, "cast(null as varchar)", "none", None, None)
    names = list(cp.columns)
    if not names:   # reads no column: the same text on every row, rendered once
        return PartPlan(template, part, lit(render_part(template, part, {})), "constant", None, None)
    call = f"{udf_name}({', '.join(ident(c) for c in names)})"
    udf = (udf_name, _udf(template, part, names), [types[c] for c in names])
    if cp.sql is not None and compile_sql:
        if cp.exact_when is None:
            return PartPlan(template, part, cp.sql, "sql", None, None)
        return PartPlan(template, part, f"case when {cp.exact_when} then {cp.sql} else {call} end",
                        "sql+python", "case filters on non-ASCII text", udf, cp.columns)
    return PartPlan(template, part, call, "python", cp.reason or "compilation disabled", udf, cp.columns)


def _source_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    try:
        return {r[0]: str(r[1]) for r in con.execute(f"describe {ident(table)}").fetchall()}
    except duckdb.CatalogException:
        raise TemplateError(f"table {table!r} does not exist") from None


def choose_templates(lib: Sequence[Template], task: str, choice: str) -> list[Template]:
    """The templates of ``task`` that ``choice`` ('random', 'all', or a template id/name) renders."""
    mine = sorted((t for t in lib if t.task == task), key=lambda t: t.id)
    if not mine:
        known = sorted({t.task for t in lib})
        raise TemplateError(f"no templates for task {task!r}; tasks: {', '.join(known)}")
    if choice in CHOICES:
        return mine
    picked = [t for t in mine if choice in (t.id, t.name)]
    if not picked:
        raise TemplateError(f"choice {choice!r} is not 'random', 'all' or a template of task {task!r} "
                            f"(ids: {', '.join(t.id for t in mine)})")
    return picked


_NON_SPACE = ("[^\\t-\\r\\x{1c}-\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}"
              "\\x{202f}\\x{205f}\\x{3000}]")  # RE2: a character Python's str.strip() keeps


def build_sql(plans: dict[str, list[tuple[Template, dict[str, PartPlan]]]], *, choice: str, seed: int | str,
              sources: dict[str, str], types: dict[str, dict[str, str]], limit: int | None = None,
              count_missing: bool = False) -> str:
    """The ``select`` producing the ``sft_examples`` rows of every task.

    One pass per task: each source row carries ``wb_pick_`` (its template: the stable hash for
    'random', one row per template for 'all'), and every column is a ``case wb_pick_`` over the
    task's templates, so DuckDB evaluates only the chosen template's expressions for a row. A row
    whose chosen template reads a null column is not rendered; a rendered row whose completion is
    blank carries ``wb_empty_ = true`` (``apply_templates`` counts both and writes neither).
    ``count_missing=True``: instead, ``(template_id, n)`` of the rows left out for a null column.
    """
    ctes, selects, missing = [], [], []
    for ti, (task, items) in enumerate(plans.items()):
        table, key, n = sources[task], items[0][0].key, len(items)
        src = f"select * from {ident(table)}"
        if limit:
            src += f" order by md5(cast({ident(key)} as varchar)), {ident(key)} limit {int(limit)}"
        frm = f"src_{ti}"
        if choice == "random" and n > 1:   # md5 once per row, then its first 8 hex digits
            ctes.append(f"hashed_{ti} as (\n    select *, md5({bucket_key_sql(ident(key), seed, task)}) as wb_md5_"
                        f"\n    from ({src})\n)")
            ctes.append(f"src_{ti} as (\n    select *, {hex8_sql('wb_md5_')} % {n} as wb_pick_"
                        f"\n    from hashed_{ti}\n)")
        elif n > 1:                        # 'all': every row once per template (values: portable, not range())
            ctes.append(f"src_{ti} as (\n    {src}\n)")
            frm += f" cross join (values {', '.join(f'({i})' for i in range(n))}) as wb_templates_(wb_pick_)"
        else:
            ctes.append(f"src_{ti} as (\n    select *, 0 as wb_pick_ from ({src})\n)")

        def case(expr_of) -> str:
            if n == 1:
                return expr_of(*items[0])
            whens = "\n".join(f"            when {i} then {expr_of(t, parts)}" for i, (t, parts) in enumerate(items))
            return f"case wb_pick_\n{whens}\n        end"

        def not_null(t: Template, _parts) -> str:
            conds = [f"{ident(c)} is not null" for c in sorted(set(t.columns) & set(types[task]))]
            return "(" + " and ".join(conds) + ")" if conds else "true"

        def choices(t: Template, _parts) -> str:
            if t.answer_choices is None:
                return "cast(null as varchar[])"
            return "[" + ", ".join(lit(c) for c in t.answer_choices) + "]::varchar[]"

        selects.append(
            "    select\n"
            f"        {case(lambda t, _: lit(t.id + '|'))} || cast({ident(key)} as varchar) as example_id,\n"
            f"        cast({ident(key)} as varchar) as source_row_id,\n"
            f"        {lit(table)} as source_table,\n"
            f"        {lit(task)} as task,\n"
            f"        {case(lambda t, _: lit(t.id))} as template_id,\n"
            f"        {case(lambda t, p: p['prompt'].sql)} as prompt,\n"
            f"        {case(lambda t, p: p['completion'].sql)} as completion,\n"
            f"        {case(choices)} as choices,\n"
            f"        {case(lambda t, p: p['system'].sql)} as system\n"
            f"    from {frm}\n"
            f"    where {case(not_null)}")
        missing.append(f"    select {case(lambda t, _: lit(t.id))} as template_id\n    from {frm}\n"
                       f"    where not {case(not_null)}")
    if count_missing:
        return ("with " + ",\n".join(ctes) + ",\nleft_out as (\n" + "\n    union all\n".join(missing) + "\n)\n"
                "select template_id, count(*) as n from left_out group by all")
    user = "{'role': 'user', 'content': prompt}, {'role': 'assistant', 'content': completion}"
    return ("with " + ",\n".join(ctes) + ",\nrendered as (\n" + "\n    union all\n".join(selects) + "\n)\n"
            "select\n    *,\n"
            f"    cast(case when system is null then to_json([{user}])\n"
            f"         else to_json([{{'role': 'system', 'content': system}}, {user}]) end as varchar) as messages\n"
            f"    , not coalesce(regexp_matches(completion, {lit(_NON_SPACE)}), false) as wb_empty_\n"
            "from rendered")


@dataclass
class RenderPlan:
    """What ``apply_templates`` runs: the SQL, each template's part plans, the UDFs the SQL calls."""
    tasks: list[str]
    sql: str
    plans: dict[str, list[tuple[Template, dict[str, PartPlan]]]]
    udfs: list[tuple[str, Callable, list[str]]]
    missing_sql: str = ""   # (template_id, n): rows not rendered because a column the template reads is null

    def summary(self, counts: dict[str, int] | None = None, empty: dict[str, int] | None = None,
                missing: dict[str, int] | None = None):
        """One row per template: task, template_id, rows (written), skipped_missing (a column the template
        reads is null), skipped_empty (the completion rendered blank), how each part renders. Every
        source row a template was chosen for is in one of the three. Without ``counts``: the plan only."""
        import pandas as pd
        written = counts is not None
        counts, empty, missing = counts or {}, empty or {}, missing or {}
        return pd.DataFrame([{"task": task, "template_id": t.id,
                              **({"rows": counts.get(t.id, 0), "skipped_missing": missing.get(t.id, 0),
                                  "skipped_empty": empty.get(t.id, 0)} if written else {}),
                              **{f"{p}_by": parts[p].method for p in PARTS}}
                             for task, items in self.plans.items() for t, parts in items])


def plan_render(con: duckdb.DuckDBPyConnection, tasks: Sequence[str] | str = ("intent_classification",), *,
                choice: str = "random", seed: int | str = 7, source: str | None = None, limit: int | None = None,
                templates: Sequence[Template] | None = None, compile_sql: bool = True,
                validate: bool = True) -> RenderPlan:
    """Choose, validate and compile the templates of ``tasks``; build the ``select`` of ``sft_examples`` rows.

    ``plan_render(con, 'intent_classification').sql`` is the SQL ``apply_templates`` runs (parts that do
    not compile call Python UDFs, registered only while ``apply_templates`` runs).
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError("tasks is empty: name at least one task")
    lib = list(templates) if templates is not None else load_library()
    plans: dict[str, list[tuple[Template, dict[str, PartPlan]]]] = {}
    sources, types = {}, {}
    udfs: list[tuple[str, Callable, list[str]]] = []
    counter = itertools.count()
    call_id = secrets.token_hex(3)   # UDF names unique per plan: two runs on one connection never clash
    for task in tasks:
        chosen = choose_templates(lib, task, choice)
        tables = {t.table for t in chosen}
        if source is None and len(tables) > 1:
            raise TemplateError(f"templates of task {task!r} read different tables {sorted(tables)}; pass source=")
        sources[task] = source or chosen[0].table
        types[task] = _source_types(con, sources[task])
        if validate:
            from .templates import workspace_dataset
            needed = {c for t in chosen for c in t.columns}   # their domains feed the answer-choice check
            ds = workspace_dataset(con, sources[task], domain_columns=needed)
            probs = [p for t in chosen for p in check_template(t, ds)]
            if probs:
                raise TemplateError(f"{len(probs)} template problem(s) against table {sources[task]!r}, "
                                    "nothing written:\n" + "\n".join(f"  - {p}" for p in probs))
        items = []
        for t in chosen:
            parts = {p: plan_part(t, p, types[task], compile_sql=compile_sql,
                                  udf_name=f"wb_render_{call_id}_{next(counter)}") for p in PARTS}
            udfs += [pp.udf for pp in parts.values() if pp.udf is not None and pp.method != "sql"]
            items.append((t, parts))
        plans[task] = items
    kw = dict(choice=choice, seed=seed, sources=sources, types=types, limit=limit)
    return RenderPlan(tasks, build_sql(plans, **kw), plans, udfs, build_sql(plans, **kw, count_missing=True))


def apply_templates(con: duckdb.DuckDBPyConnection, tasks: Sequence[str] | str = ("intent_classification",), *,
                    choice: str = "random", seed: int | str = 7, source: str | None = None,
                    table: str = SFT_TABLE, mode: str = "replace_tasks", limit: int | None = None,
                    templates: Sequence[Template] | None = None, compile_sql: bool = True,
                    validate: bool = True, engine: str = "duckdb"):
    """Render the templates of ``tasks`` over their source tables and write ``table`` (``sft_examples``).

    choice:  'random' = one template per source row and task (stable md5 of seed, task, key);
             'all' = every template of the task for every row; a template id/name = that template.
    source:  table to apply the templates to (default: the templates' ``table``).
    mode:    'replace_tasks' (rewrite the rows of these tasks; keep other tasks), 'replace', 'append'.
    limit:   render only this many source rows per task (a stable-hash subset), None = all.
    engine:  'duckdb', or 'spark': the same SQL on Apache Spark (``workbench.spark.session()``), the
             parts that do not compile rendered by the same Jinja code in Spark Arrow UDFs; the rows
             land in ``table`` exactly as DuckDB writes them (``con`` must be a workspace connection).
    Returns one row per template: task, template_id, rows written, and how each part was rendered.
    Validation against the live source runs first: nothing is written when a template is invalid.
    """
    if mode not in ("replace_tasks", "replace", "append"):
        raise ValueError(f"mode must be 'replace_tasks', 'replace' or 'append', not {mode!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use one of {ENGINES}")
    plan = plan_render(con, tasks, choice=choice, seed=seed, source=source, limit=limit, templates=templates,
                       compile_sql=compile_sql, validate=validate)
    missing = dict(con.execute(plan.missing_sql).fetchall())  # source columns only: no rendering
    if engine == "spark":
        skipped = _apply_spark(con, plan, table, mode)
    else:
        for name, fn, arg_types in plan.udfs:
            con.create_function(name, fn, arg_types, "VARCHAR", type="arrow")
        try:
            skipped = _write(con, plan, table, mode, plan.sql)
        except duckdb.Error as exc:
            raise TemplateError(f"rendering into {table} failed: {exc}") from exc
        finally:
            for name, _, _ in plan.udfs:
                con.remove_function(name)
    counts = dict(con.execute(f"select template_id, count(*) from {ident(table)} where {_in_tasks(plan.tasks)} "
                              "group by all").fetchall())
    return plan.summary(counts, skipped, missing)


def _in_tasks(tasks: Sequence[str]) -> str:
    return f"task in ({', '.join(lit(t) for t in tasks)})"


def _write(con: duckdb.DuckDBPyConnection, plan: RenderPlan, table: str, mode: str,
           select_sql: str) -> dict[str, int]:
    """``table`` gets the rows of ``select_sql`` whose completion is not blank (``wb_empty_``: an example
    teaching the model to answer nothing, e.g. from an empty reply), as ``mode`` says, in one workspace
    transaction; returns the blank rows left out per template id."""
    from .workspace import transaction

    def write(c):
        c.execute(f"create or replace temp table _wb_rendered as {select_sql}")
        try:
            skipped = dict(c.execute("select template_id, count(*) from _wb_rendered where wb_empty_ "
                                     "group by all").fetchall())
            if mode == "replace":
                c.execute(f"create or replace table {ident(table)} ({SFT_COLUMNS})")
            else:
                c.execute(f"create table if not exists {ident(table)} ({SFT_COLUMNS})")
            if mode == "replace_tasks":
                c.execute(f"delete from {ident(table)} where {_in_tasks(plan.tasks)}")
            c.execute(f"insert into {ident(table)} by name select * exclude (wb_empty_) from _wb_rendered "
                      "where not wb_empty_")
        finally:
            c.execute("drop table if exists temp._wb_rendered")
        return skipped
    return transaction(con, write, what=f"writing {table}")


# --------------------------------------------------------------------------- on Spark

def spark_sql(plan: RenderPlan) -> str:
    """``plan.sql`` as the Spark SQL ``apply_templates(engine='spark')`` runs.

    Transpiled with ``workbench.spark.to_spark_sql`` (its dialect fixes and trap refusals). Spark
    evaluates a Python UDF on every row, whatever ``case`` branch it sits in, so each call of a
    Python-rendered part gets a first argument: true on the rows whose branch takes it (the row's
    template, a non-ASCII row); the UDF renders only those rows (``spark_udf``).
    """
    import sqlglot
    from sqlglot import exp

    from .spark import to_spark_sql

    tree = sqlglot.parse_one(plan.sql, read="duckdb")
    names = {name.lower() for name, _, _ in plan.udfs}
    calls = [c for c in tree.find_all(exp.Anonymous) if c.name.lower() in names]
    guarded = [(c, _branch_condition(c)) for c in calls]
    for call, guard in guarded:
        call.set("expressions", [guard, *call.expressions])
    return to_spark_sql(tree, source="the template SQL of " + ", ".join(plan.tasks))


def _branch_condition(node):
    """SQL condition (SQLGlot) under which the ``case`` branches around ``node`` evaluate it."""
    from sqlglot import exp

    def holds(case, when) -> exp.Expression:  # a when's condition as a non-null boolean
        cond = exp.EQ(this=case.this.copy(), expression=when.this.copy()) if case.this else when.this.copy()
        return exp.func("coalesce", exp.Paren(this=cond), exp.false())

    conds: list[exp.Expression] = []
    child, parent = node, node.parent
    while parent is not None and not isinstance(parent, exp.Select):
        case = parent.parent if isinstance(parent, exp.If) else parent
        if isinstance(case, exp.Case) and (child.arg_key == "default" or
                                           (parent is not case and child.arg_key == "true")):
            ifs = case.args.get("ifs") or []
            earlier = ifs if child.arg_key == "default" else ifs[:ifs.index(parent)]
            conds += [exp.Not(this=holds(case, w)) for w in earlier]
            if child.arg_key == "true":
                conds.append(holds(case, parent))
        child, parent = parent, parent.parent
    return exp.and_(*conds) if conds else exp.true()


def spark_udf(template: Template, part: str, names: Sequence[str]):
    """The Spark Arrow UDF of a Python-rendered part: ``(guard, *columns)``; renders the rows whose
    guard is true and whose columns are not null with ``render_batch`` (the DuckDB path's code), null
    elsewhere (Spark may evaluate it before the query's null filter)."""
    from pyspark.sql.functions import arrow_udf
    from pyspark.sql.types import StringType

    def fn(guard: pa.Array, *arrays: pa.Array) -> pa.Array:
        import pyarrow.compute as pc

        mask = pc.fill_null(guard, False)
        for a in arrays:   # a null here: a row the query's null filter drops (never rendered on DuckDB)
            mask = pc.and_(mask, pc.is_valid(a))
        cols = {c: pc.filter(a, mask).to_pylist() for c, a in zip(names, arrays)}
        rendered = iter(render_batch(template, part, cols))
        return pa.array([next(rendered) if keep else None for keep in mask.to_pylist()], pa.string())
    return arrow_udf(fn, StringType())   # a scalar Arrow UDF, from the type hints


def _apply_spark(con: duckdb.DuckDBPyConnection, plan: RenderPlan, table: str, mode: str) -> dict[str, int]:
    """Run ``spark_sql(plan)`` on Spark, write the rows as Parquet, then insert them into ``table`` (one
    transaction); the Parquet staging folder is removed either way."""
    import shutil

    from . import spark as wbspark
    from .workspace import WorkspaceError, sql_literal

    try:
        staging = wbspark.spark_dir(con) / "_staging" / f"{table}-{secrets.token_hex(4)}"
    except WorkspaceError as exc:
        raise TemplateError(f"engine='spark' writes through a workspace: {exc}") from None
    sql = spark_sql(plan)   # a SparkError (unportable SQL) before Spark starts
    spark = wbspark.session()
    python_parts = [pp for items in plan.plans.values() for _, parts in items for pp in parts.values()
                    if pp.udf is not None and pp.method != "sql"]
    try:
        for pp in python_parts:
            spark.udf.register(pp.udf[0], spark_udf(pp.template, pp.part, pp.columns))
        wbspark.register_inputs(spark, con, plan.sql)
        try:
            wbspark.write_dataset(spark.sql(sql), staging)
        except Exception as exc:  # noqa: BLE001 - Spark's errors (a UDF's Jinja error inside a PythonException)
            raise TemplateError(f"rendering into {table} on Spark failed: {_spark_reason(exc)}") from exc
        try:
            return _write(con, plan, table, mode,
                          f"select * from read_parquet({sql_literal(str(staging / '*.parquet'))})")
        except duckdb.Error as exc:
            raise TemplateError(f"writing the Spark output into {table} failed: {exc}") from exc
    finally:
        for pp in python_parts:
            try:
                spark.sql(f"drop temporary function if exists {pp.udf[0]}")
            except Exception:  # noqa: BLE001 - cleanup only
                pass
        shutil.rmtree(staging, ignore_errors=True)


def _spark_reason(exc: BaseException) -> str:
    """The line of a Spark error that says what went wrong (a TemplateError raised in a UDF included)."""
    import re

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "TemplateError:" in ln:
            return ln[ln.index("TemplateError:") + len("TemplateError:"):].strip()
    python = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]  # a UDF's traceback
    return (python[-1] if python else lines[0] if lines else type(exc).__name__)[:500]


def check_sft_examples(con: duckdb.DuckDBPyConnection, tasks: Sequence[str] | str, *, choice: str = "random",
                       table: str = SFT_TABLE, templates: Sequence[Template] | None = None):
    """Data tests of the written examples, one row per check (``ok`` False = broken); for notebooks and tests."""
    import pandas as pd

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    lib = list(templates) if templates is not None else load_library()
    in_tasks = _in_tasks(tasks)
    q = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    per_row_max = 1 if choice != "all" else max(len(choose_templates(lib, t, choice)) for t in tasks)
    checks = [
        ("tasks without examples", len(set(tasks) - {r[0] for r in con.execute(
            f"select distinct task from {ident(table)} where {in_tasks}").fetchall()}), 0),
        ("duplicate example_id", q(f"select count(*) - count(distinct example_id) from {ident(table)}"), 0),
        (f"source rows with more than {per_row_max} example(s) in a task", q(
            f"select count(*) from (select task, source_row_id from {ident(table)} where {in_tasks} "
            f"group by all having count(*) > {per_row_max})"), 0),
        ("empty prompt or completion", q(
            f"select count(*) from {ident(table)} where {in_tasks} and (trim(prompt, {lit(WS_CHARS)}) = '' "
            f"or trim(completion, {lit(WS_CHARS)}) = '')"), 0),
        ("completion not among choices", q(
            f"select count(*) from {ident(table)} where {in_tasks} and choices is not null "
            "and not list_contains(choices, completion)"), 0),
        ("template_id not in the library", q(
            f"select count(*) from {ident(table)} where {in_tasks} and template_id not in "
            f"({', '.join(lit(t.id) for t in lib)})"), 0),
    ]
    return pd.DataFrame([{"check": c, "value": int(v), "ok": int(v) == want} for c, v, want in checks])
