"""Prompt templates as files: load, validate, search and render them (sandboxed Jinja).

    workbench templates list --task intent_classification
    workbench templates search refund
    workbench templates validate --table examples

Each ``templates/*.yaml`` file holds the templates of one task (file-level keys are defaults for its
templates)::

    task: intent_classification      # sft_examples.task
    task_type: classification        # classification | generation | extraction | summarization | question_answering
    table: examples                  # the table whose columns are the template variables
    key: example_id                  # the column that becomes sft_examples.source_row_id
    answer_choices: [billing, refund, ...]
    templates:
      - id: ic-which-category        # stable key, stored in sft_examples.template_id
        name: which_category         # unique, human readable
        columns: [text, intent]      # every column the template reads
        prompt: "Which category ...\\n{{ text }}"
        completion: "{{ intent }}"
        system: "You are ..."        # optional, for chat models
        metadata: {description: ..., languages: [en], choices_in_prompt: false}

Templates render in a sandboxed Jinja environment with strict undefined variables: no attribute
starting with ``_``, no file system (no loader: ``include``/``import``/``extends`` fail), no
mutation of values, no huge ``*``/``**`` results. ``answer_choices`` is the only variable that is
not a column. Trailing newlines of a part's source are dropped (YAML ``|`` blocks add one).

Applying templates to a table at scale (SQL compilation, batched rendering) is in
``workbench.template_sql``; tokenization, chat formats and the mask audit in
``workbench.template_tokens`` (both re-exported here).
"""
from __future__ import annotations

import datetime as dt
import functools
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
TASK_TYPES = ("classification", "generation", "extraction", "summarization", "question_answering")
PARTS = ("system", "prompt", "completion")  # the Jinja parts of a template, in message order
BUILTIN_VARIABLES = frozenset({"answer_choices"})  # template variables that are not columns
MAX_RESULT_LEN = 100_000  # sandbox: the longest string/list a `*` may build

INTENTS = ("billing", "refund", "shipping", "technical_issue", "account_access", "cancellation")

# The table contract (docs/schema.md) used to validate the library without a workspace: column
# types, the finite value domains that answer-choice checks enumerate, and sample-like rows.
CONTRACT: dict[str, dict[str, str]] = {
    "examples": {"example_id": "VARCHAR", "message_id": "VARCHAR", "customer_id": "VARCHAR",
                 "created_at": "TIMESTAMP", "channel": "VARCHAR", "region": "VARCHAR",
                 "age_band": "VARCHAR", "text": "VARCHAR", "text_norm": "VARCHAR", "intent": "VARCHAR",
                 "reply": "VARCHAR"},
    "label_pool": {"item_id": "VARCHAR", "message_id": "VARCHAR", "customer_id": "VARCHAR",
                   "created_at": "TIMESTAMP", "channel": "VARCHAR", "region": "VARCHAR",
                   "age_band": "VARCHAR", "text": "VARCHAR"},
    "corpus_documents": {"doc_id": "VARCHAR", "published_at": "TIMESTAMP", "topic": "VARCHAR",
                         "title": "VARCHAR", "text": "VARCHAR"},
}
DOMAINS: dict[tuple[str, str], tuple[str, ...]] = {
    ("examples", "intent"): INTENTS,
    ("examples", "region"): ("north", "south", "east", "west"),
    ("examples", "age_band"): ("18-29", "30-44", "45-64", "65+"),
}


def _ex(i: int, intent: str, text: str, reply: str, channel: str = "email") -> dict:
    return {"example_id": f"messages.csv:{i}", "message_id": f"m{i:05d}", "customer_id": f"c{i % 7:04d}",
            "created_at": dt.datetime(2024, 3, i % 28 + 1, 9, 30), "channel": channel,
            "region": ("north", "south", "east", "west")[i % 4], "age_band": ("18-29", "30-44", "45-64", "65+")[i % 4],
            "text": text, "text_norm": text.lower(), "intent": intent, "reply": reply}


SAMPLE_ROWS: dict[str, list[dict]] = {
    "examples": [
        _ex(2, "billing", "I was charged twice for my subscription this month, card <CARD>.",
            "Sorry about the double charge. I have refunded the duplicate payment; it shows within 5 days."),
        _ex(3, "refund", "Please refund order 4411, the blender arrived broken. Reach me at <EMAIL>.",
            "I'm sorry the blender arrived broken. Your refund for order 4411 is on its way.", "chat"),
        _ex(4, "shipping", "Where is my parcel? Tracking has not moved in a week.",
            "Thanks for waiting. Your parcel is delayed at the depot and should arrive within 3 days.", "app"),
        _ex(5, "technical_issue", "The app crashes every time I open the settings page.",
            "Sorry about the crash. Please update to the latest version; that fixes the settings page."),
        _ex(6, "account_access", "I can't log in, the reset link never arrives. Call me on <PHONE>.",
            "I have sent a new reset link and verified your email address; please check your spam folder.",
            "phone_transcript"),
        _ex(7, "cancellation", "Cancel my plan at the end of this billing period please.",
            "Done: your plan ends at the close of this billing period and you will not be charged again."),
    ],
    "corpus_documents": [
        {"doc_id": "KB00001", "published_at": dt.datetime(2025, 11, 2), "topic": "invoices",
         "title": "Invoices for your router", "text": "This article explains invoices for the router. Most "
         "questions about invoices are answered in a few steps. Customers usually see the change within 3 "
         "business days."},
        {"doc_id": "KB00002", "published_at": dt.datetime(2025, 11, 9), "topic": "tracking",
         "title": "Tracking for your laptop", "text": "Deliveries with UPS can be tracked from the order page. "
         "Contact support if tracking does not work after these steps."},
        {"doc_id": "KB00003", "published_at": dt.datetime(2025, 11, 16), "topic": "password reset",
         "title": "Password reset for your smart speaker", "text": "First, open the account page and select "
         "password reset. For security, we never ask for your full password."},
    ],
}
SAMPLE_ROWS["label_pool"] = [{k: v for k, v in r.items() if k in CONTRACT["label_pool"]} | {"item_id": r["message_id"]}
                             for r in SAMPLE_ROWS["examples"]]


class TemplateError(ValueError):
    """A template file or template is invalid; the message names the file, the template and the problem."""


# --------------------------------------------------------------------------- the sandbox

class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja sandbox that also refuses to build huge strings or lists with ``*`` / ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError(f"exponent {right} is too large for a template")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RESULT_LEN:
                    raise SecurityError(f"'*' would build a value of {len(seq) * n} items (limit {MAX_RESULT_LEN})")
        return super().call_binop(context, operator, left, right)


ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True,
               keep_trailing_newline=True)
_FORBIDDEN_NODES = {nodes.Extends: "extends", nodes.Include: "include", nodes.Import: "import",
                    nodes.FromImport: "from-import", nodes.Block: "block"}


@functools.lru_cache(maxsize=512)
def compile_source(source: str):
    """The sandboxed Jinja template of one part's source (cached)."""
    return ENV.from_string(source)


# --------------------------------------------------------------------------- templates

@dataclass(frozen=True)
class Template:
    id: str                                  # stable key; sft_examples.template_id
    name: str                                # unique human-readable name
    task: str                                # e.g. 'intent_classification'; sft_examples.task
    task_type: str                           # one of TASK_TYPES
    table: str                               # table whose columns are the variables
    key: str                                 # column that becomes sft_examples.source_row_id
    columns: tuple[str, ...]                 # columns the template reads
    prompt: str                              # Jinja source of the user prompt
    completion: str                          # Jinja source of the expected answer
    system: str | None = None                # Jinja source of a system message (chat), optional
    answer_choices: tuple[str, ...] | None = None
    description: str = ""
    languages: tuple[str, ...] = ("en",)
    choices_in_prompt: bool = False          # the prompt lists the answer choices
    source_file: str = ""                    # the YAML file it came from

    @property
    def label(self) -> str:
        where = f"{Path(self.source_file).name}: " if self.source_file else ""
        return f"{where}template {self.name!r} ({self.id})"

    def parts(self) -> dict[str, str]:
        """The Jinja sources of the parts this template has."""
        return {p: getattr(self, p) for p in PARTS if getattr(self, p) is not None}

    def variables(self) -> set[str]:
        """Every undeclared variable the parts use (columns and ``answer_choices``)."""
        out: set[str] = set()
        for src in self.parts().values():
            out |= meta.find_undeclared_variables(ENV.parse(src))
        return out

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "task": self.task, "task_type": self.task_type,
                "table": self.table, "columns": ", ".join(self.columns),
                "choices": len(self.answer_choices or ()), "choices_in_prompt": self.choices_in_prompt,
                "description": self.description, "file": Path(self.source_file).name}


_FILE_KEYS = {"task", "task_type", "table", "key", "answer_choices", "system", "metadata", "templates"}
_TEMPLATE_KEYS = {"id", "name", "task", "task_type", "table", "key", "columns", "prompt", "completion",
                  "system", "answer_choices", "metadata"}
_META_KEYS = {"description", "languages", "choices_in_prompt"}
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _source(value: Any, where: str, part: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TemplateError(f"{where}: {part} must be a string of Jinja, not {type(value).__name__}")
    return value.rstrip("\n")


def parse_templates(doc: Mapping[str, Any], source_file: str = "<memory>") -> list[Template]:
    """Templates from one parsed YAML document (file-level keys are defaults for each template)."""
    fname = Path(source_file).name
    if not isinstance(doc, Mapping):
        raise TemplateError(f"{fname}: expected a mapping with a 'templates' list")
    unknown = set(doc) - _FILE_KEYS
    if unknown:
        raise TemplateError(f"{fname}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(_FILE_KEYS))}")
    items = doc.get("templates")
    if not isinstance(items, list) or not items:
        raise TemplateError(f"{fname}: 'templates' must be a non-empty list")
    out = []
    for i, raw in enumerate(items):
        if not isinstance(raw, Mapping):
            raise TemplateError(f"{fname}: templates[{i}] must be a mapping")
        where = f"{fname}: templates[{i}]" + (f" ({raw['id']})" if "id" in raw else "")
        unknown = set(raw) - _TEMPLATE_KEYS
        if unknown:
            raise TemplateError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                f"allowed: {', '.join(sorted(_TEMPLATE_KEYS))}")
        t = {k: doc[k] for k in _FILE_KEYS - {"templates", "metadata"} if k in doc} | dict(raw)
        md = {**(doc.get("metadata") or {}), **(raw.get("metadata") or {})}
        if set(md) - _META_KEYS:
            raise TemplateError(f"{where}: unknown metadata key(s) {', '.join(sorted(set(md) - _META_KEYS))}")
        missing = [k for k in ("id", "name", "task", "task_type", "table", "prompt", "completion") if not t.get(k)]
        if missing:
            raise TemplateError(f"{where}: missing {', '.join(missing)}")
        if not _ID.match(str(t["id"])):
            raise TemplateError(f"{where}: id {t['id']!r} must be lowercase letters, digits, '-', '_' or '.'")
        choices = t.get("answer_choices")
        if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
            raise TemplateError(f"{where}: answer_choices must be a list of strings")
        columns = t.get("columns")
        if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
            raise TemplateError(f"{where}: columns must be a list of column names")
        langs = md.get("languages", ["en"])
        tmpl = Template(
            id=str(t["id"]), name=str(t["name"]), task=str(t["task"]), task_type=str(t["task_type"]),
            table=str(t["table"]), key=str(t.get("key") or _default_key(str(t["table"]))),
            columns=tuple(columns) if columns is not None else (),
            prompt=_source(t["prompt"], where, "prompt"), completion=_source(t["completion"], where, "completion"),
            system=_source(t.get("system"), where, "system"),
            answer_choices=tuple(choices) if choices is not None else None,
            description=str(md.get("description", "")),
            languages=tuple(langs) if isinstance(langs, list) else (str(langs),),
            choices_in_prompt=bool(md.get("choices_in_prompt", False)), source_file=str(source_file))
        if columns is None:  # not declared: the columns it reads (parse errors surface in validate())
            try:
                tmpl = _replace(tmpl, columns=tuple(sorted(tmpl.variables() - BUILTIN_VARIABLES)))
            except TemplateSyntaxError:
                pass
        out.append(tmpl)
    return out


def _replace(t: Template, **kw) -> Template:
    import dataclasses
    return dataclasses.replace(t, **kw)


def _default_key(table: str) -> str:
    return {"examples": "example_id", "corpus_documents": "doc_id", "label_pool": "item_id"}.get(table, "id")


def load_file(path: str | Path) -> list[Template]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path.name}: not valid YAML: {exc}") from None
    return parse_templates(doc, str(path))


def load_library(directory: str | Path | None = None) -> list[Template]:
    """Every template in ``directory/*.yaml`` (default ``TEMPLATE_DIR``), in file then list order."""
    d = Path(directory) if directory else TEMPLATE_DIR
    files = sorted(d.glob("*.yaml"))
    if not files:
        raise TemplateError(f"no template files (*.yaml) in {d}")
    return [t for f in files for t in load_file(f)]


# --------------------------------------------------------------------------- discovery

def list_templates(task: str | None = None, *, table: str | None = None, templates: Sequence[Template] | None = None,
                   directory: str | Path | None = None) -> list[Template]:
    """Templates of the library, optionally only those of one task and/or one table."""
    lib = list(templates) if templates is not None else load_library(directory)
    return [t for t in lib if (task is None or t.task == task) and (table is None or t.table == table)]


def tasks(templates: Sequence[Template] | None = None) -> dict[str, int]:
    """Task name -> number of templates."""
    out: dict[str, int] = {}
    for t in templates if templates is not None else load_library():
        out[t.task] = out.get(t.task, 0) + 1
    return out


def search(text: str, *, task: str | None = None, templates: Sequence[Template] | None = None) -> list[Template]:
    """Templates whose id, name, task, description or Jinja text contain every word of ``text``."""
    words = [w.lower() for w in text.split()]
    out = []
    for t in list_templates(task, templates=templates):
        hay = " ".join([t.id, t.name, t.task, t.task_type, t.table, t.description, *t.parts().values(),
                        *(t.answer_choices or ())]).lower()
        if all(w in hay for w in words):
            out.append(t)
    return out


def get(id_or_name: str, templates: Sequence[Template] | None = None) -> Template:
    lib = list(templates) if templates is not None else load_library()
    for t in lib:
        if id_or_name in (t.id, t.name):
            return t
    raise TemplateError(f"no template with id or name {id_or_name!r}; ids: {', '.join(t.id for t in lib)}")


def catalog(templates: Sequence[Template] | None = None):
    """The library as a pandas DataFrame (one row per template) for notebooks and the CLI."""
    import pandas as pd
    return pd.DataFrame([t.summary() for t in (templates if templates is not None else load_library())])


# --------------------------------------------------------------------------- rendering (reference, one row)

def context(template: Template, row: Mapping[str, Any]) -> dict[str, Any]:
    ctx = {c: row[c] for c in template.columns if c in row}
    if template.answer_choices is not None:
        ctx["answer_choices"] = list(template.answer_choices)
    return ctx


def render_part(template: Template, part: str, row: Mapping[str, Any]) -> str | None:
    """One part of a template rendered for one row; errors name the template and the part."""
    src = getattr(template, part)
    if src is None:
        return None
    try:
        return compile_source(src).render(context(template, row))
    except SecurityError as exc:
        raise TemplateError(f"{template.label}: {part} is unsafe and was refused by the sandbox: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any Jinja runtime error, reported with the template
        raise TemplateError(f"{template.label}: {part} failed to render: {type(exc).__name__}: {exc}") from None


def render(template: Template, row: Mapping[str, Any]) -> dict[str, str | None]:
    """``{'system', 'prompt', 'completion'}`` of one row: the reference that every fast path must match."""
    return {p: render_part(template, p, row) for p in PARTS}


# --------------------------------------------------------------------------- validation

@dataclass
class Problem:
    template: str   # template label (file, name, id), or the file
    problem: str

    def __str__(self) -> str:
        return f"{self.template}: {self.problem}"


@dataclass
class Dataset:
    """What a template is validated against: a table's columns and types, sample rows, value domains."""
    table: str
    columns: dict[str, str]                                # name -> DuckDB type
    rows: list[dict] = field(default_factory=list)         # sample rows
    domains: dict[str, tuple] = field(default_factory=dict)  # column -> every value it takes (finite only)


def contract_dataset(table: str) -> Dataset | None:
    """The documented contract of ``table`` with built-in sample-like rows (no workspace needed)."""
    if table not in CONTRACT:
        return None
    return Dataset(table, dict(CONTRACT[table]), [dict(r) for r in SAMPLE_ROWS.get(table, [])],
                   {c: v for (t, c), v in DOMAINS.items() if t == table})


def workspace_dataset(con, table: str, *, sample: int = 200, max_domain: int = 200,
                      domain_columns: Iterable[str] | None = None) -> Dataset:
    """A workspace table's real columns, up to ``sample`` rows, and the value domains of its
    low-cardinality VARCHAR columns (only of ``domain_columns`` when given: each costs a scan)."""
    import duckdb
    try:
        cols = {r[0]: str(r[1]) for r in con.execute(f'describe "{table}"').fetchall()}
    except duckdb.CatalogException:
        raise TemplateError(f"table {table!r} does not exist in the workspace") from None
    key = next((c for c in ("example_id", "doc_id", "item_id") if c in cols), next(iter(cols)))
    cur = con.execute(f'select * from "{table}" order by md5(cast("{key}" as varchar)) limit {int(sample)}')
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    domains = {}
    wanted = set(cols) if domain_columns is None else set(domain_columns)
    for c, typ in cols.items():
        if typ != "VARCHAR" or c not in wanted:
            continue
        vals = con.execute(f'select distinct "{c}" from "{table}" where "{c}" is not null '
                           f'limit {max_domain + 1}').fetchall()
        if len(vals) <= max_domain:  # plus the documented values: a label absent from this data is still producible
            domains[c] = tuple(sorted({v[0] for v in vals} | set(DOMAINS.get((table, c), ()))))
    return Dataset(table, cols, rows, domains)


def _probe_rows(t: Template, ds: Dataset, limit: int = 2000) -> list[dict]:
    """Sample rows, plus each combination of the finite domains of the columns the completion reads."""
    rows = [r for r in ds.rows if all(r.get(c) is not None for c in t.columns)]
    try:
        comp_vars = meta.find_undeclared_variables(ENV.parse(t.completion)) - BUILTIN_VARIABLES
    except TemplateSyntaxError:
        return rows
    finite = [c for c in sorted(comp_vars) if c in ds.domains]
    if rows and finite:
        combos = itertools.islice(itertools.product(*(ds.domains[c] for c in finite)), limit)
        rows = rows + [{**rows[i % len(rows)], **dict(zip(finite, combo))} for i, combo in enumerate(combos)]
    return rows


def check_template(t: Template, ds: Dataset | None) -> list[Problem]:
    """Every problem of one template against one dataset (None: the table is unknown)."""
    P = lambda msg: Problem(t.label, msg)  # noqa: E731
    probs: list[Problem] = []
    if t.task_type not in TASK_TYPES:
        probs.append(P(f"task_type {t.task_type!r} is not one of {', '.join(TASK_TYPES)}"))
    if not t.completion.strip():
        probs.append(P("completion is empty"))
    used: set[str] = set()
    for part, src in t.parts().items():
        try:
            ast = ENV.parse(src)
        except TemplateSyntaxError as exc:
            probs.append(P(f"{part} does not parse: line {exc.lineno}: {exc.message}"))
            continue
        for node_type, tag in _FORBIDDEN_NODES.items():
            if any(True for _ in ast.find_all(node_type)):
                probs.append(P(f"{part} uses {{% {tag} %}}, which templates cannot use (no file system access)"))
        used |= meta.find_undeclared_variables(ast)
    if probs:
        return probs
    if "answer_choices" in used and t.answer_choices is None:
        probs.append(P("uses answer_choices but defines none"))
    undeclared = sorted(used - BUILTIN_VARIABLES - set(t.columns))
    if undeclared:
        probs.append(P(f"uses variable(s) {', '.join(undeclared)} not listed in columns {list(t.columns)}"))
    if ds is None:
        probs.append(P(f"table {t.table!r} is unknown: not in the workspace (or, without one, the documented "
                       "contract), so its columns cannot be checked"))
        return probs
    not_cols = sorted((used - BUILTIN_VARIABLES) - set(ds.columns)) + sorted(set(t.columns) - used - set(ds.columns))
    if not_cols:
        probs.append(P(f"variable(s) {', '.join(not_cols)} not column(s) of table {ds.table!r} "
                       f"(columns: {', '.join(ds.columns)})"))
    if t.key not in ds.columns:
        probs.append(P(f"key column {t.key!r} is not a column of table {ds.table!r}"))
    if t.answer_choices is not None:
        if not t.answer_choices or len(set(t.answer_choices)) != len(t.answer_choices) or "" in t.answer_choices:
            probs.append(P("answer_choices must be distinct, non-empty strings"))
    if probs:
        return probs
    rows = _probe_rows(t, ds)
    if not rows:
        probs.append(P(f"no sample row of {ds.table!r} has all of {list(t.columns)}: nothing to render"))
        return probs
    produced: dict[str, int] = {}
    prompts: list[str] = []
    for i, row in enumerate(rows):
        try:
            out = render(t, row)
        except TemplateError as exc:
            probs.append(Problem(t.label, str(exc).split(": ", 2)[-1] + f" (sample row {i})"))
            return probs
        produced[out["completion"]] = produced.get(out["completion"], 0) + 1
        prompts.append(out["prompt"])
    if all(not c.strip() for c in produced):
        probs.append(P(f"completion renders empty on all {len(rows)} sample rows"))
    if t.answer_choices is not None:
        stray = sorted(c for c in produced if c not in t.answer_choices)
        if stray:
            probs.append(P(f"completion produces {', '.join(map(repr, stray[:5]))}, not among answer_choices "
                           f"{list(t.answer_choices)}"))
        never = [c for c in t.answer_choices if c not in produced]
        if never:
            probs.append(P(f"answer choice(s) {', '.join(map(repr, never))} can never be produced by the "
                           f"completion (tried {len(rows)} rows)"))
        listed = all(all(c in p for c in t.answer_choices) for p in prompts)
        if t.choices_in_prompt and not listed:
            probs.append(P("metadata says choices_in_prompt but the prompt does not show every answer choice"))
        if not t.choices_in_prompt and "answer_choices" in meta.find_undeclared_variables(ENV.parse(t.prompt)):
            probs.append(P("prompt shows answer_choices but metadata.choices_in_prompt is false"))
    elif t.choices_in_prompt:
        probs.append(P("metadata says choices_in_prompt but the template has no answer_choices"))
    return probs


def validate(templates: Sequence[Template] | None = None, *, con=None, table: str | None = None,
             task: str | None = None, datasets: Mapping[str, Dataset] | None = None) -> list[Problem]:
    """Every problem in the library (or ``templates``); an empty list means valid.

    Without ``con``, templates are checked against the documented table contract and built-in sample
    rows. With ``con``, against the workspace tables themselves. ``table`` checks only the templates
    of that table (or, with ``task``, that task's templates applied to ``table``).
    """
    if templates is None:
        try:
            templates = load_library()
        except TemplateError as exc:
            return [Problem("library", str(exc))]
    chosen = [t for t in templates if task is None or t.task == task]
    if table and task is None:
        chosen = [t for t in chosen if t.table == table]
    if not chosen:
        return [Problem("library", f"no template matches task={task!r} table={table!r}")]
    probs: list[Problem] = []
    for attr in ("id", "name"):
        seen: dict[str, Template] = {}
        for t in templates:
            key = getattr(t, attr)
            if key in seen:
                probs.append(Problem(t.label, f"duplicate {attr} {key!r} (also in {seen[key].label})"))
            seen.setdefault(key, t)
    cache: dict[str, Dataset | None] = dict(datasets or {})
    for t in chosen:
        target = table or t.table
        if target not in cache:
            try:
                cache[target] = workspace_dataset(con, target) if con is not None else contract_dataset(target)
            except TemplateError:   # not in the workspace: reported per template by check_template
                cache[target] = None
        ds = cache[target]
        probs += check_template(_replace(t, table=target) if table else t, ds)
    return probs


def check_library(templates: Sequence[Template] | None = None, **kw) -> list[Template]:
    """Validate and return the templates; raise one ``TemplateError`` listing every problem."""
    lib = list(templates) if templates is not None else load_library()
    probs = validate(lib, **kw)
    if probs:
        raise TemplateError(f"{len(probs)} template problem(s):\n" + "\n".join(f"  - {p}" for p in probs))
    return lib


def __getattr__(name: str):  # re-exports, imported lazily (torch/transformers stay unloaded until used)
    if name in ("apply_templates", "plan_render", "check_sft_examples", "compile_template", "stable_bucket_sql",
                "stable_hash", "render_batch"):
        from . import template_sql
        return getattr(template_sql, name)
    if name in ("tokenize_example", "prompt_ids", "mask_audit", "MaskAudit", "MaskAuditError", "to_messages",
                "format_example", "train_chat_tokenizer", "load_tokenizer", "PLAIN_SEPARATOR"):
        from . import template_tokens
        return getattr(template_tokens, name)
    raise AttributeError(f"module 'workbench.templates' has no attribute {name!r}")
