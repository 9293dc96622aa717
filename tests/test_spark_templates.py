"""Prompt templates applied on Spark give DuckDB's ``sft_examples`` row for row.

One local Spark session (``local[2]``: tests/conftest.py's ``spark``, shared by every Spark test file)
and one spine workspace serve the module: each test applies templates with ``engine="duckdb"`` into
``sft_examples_duckdb`` and with ``engine="spark"`` into ``sft_examples``, then compares every column
of every row (as multisets) and the column types. Skipped only where Java is missing.
"""
from __future__ import annotations

import datetime as dt
import json
import re

import pandas as pd
import pytest

import workbench
from workbench import spark as wbspark
from workbench import template_sql as S
from workbench import templates as T
from workbench.data import build_spine
from workbench.workspace import snapshot_id, workspace_root, write_table

from test_spark import needs_java

pytestmark = [pytest.mark.spark, needs_java]
ALL_TASKS = ["intent_classification", "reply_generation", "contact_extraction", "article_title", "article_topic"]
DUCK = "sft_examples_duckdb"


@pytest.fixture(scope="module")
def ws(spark, tmp_path_factory):
    """A workspace holding the spine (examples, corpus_documents, splits) of 600 generated rows."""
    con = workbench.connect(tmp_path_factory.mktemp("sparktpl") / "ws")
    build_spine(con, rows=600, seed=11)
    yield con
    con.close()


def both(con, tasks, **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply on DuckDB (into ``sft_examples_duckdb``) and on Spark (into ``sft_examples``)."""
    return (S.apply_templates(con, tasks, table=DUCK, **kw),
            S.apply_templates(con, tasks, engine="spark", **kw))


def same_rows(con) -> int:
    """Both tables hold the same rows (every column, duplicates counted) and types; returns the count."""
    cols = "example_id, source_row_id, source_table, task, template_id, prompt, completion, choices, system, messages"
    a, b = (f"select {cols} from {t}" for t in ("sft_examples", DUCK))
    only_spark = con.execute(f"select count(*) from ({a} except all {b})").fetchone()[0]
    only_duck = con.execute(f"select count(*) from ({b} except all {a})").fetchone()[0]
    assert (only_spark, only_duck) == (0, 0)
    assert con.execute(f"describe {a}").fetchall() == con.execute(f"describe {b}").fetchall()
    return con.execute(f"select count(*) from ({a})").fetchone()[0]


@pytest.mark.parametrize("choice", ["all", "random"])
def test_every_task_on_spark_writes_duckdbs_rows(ws, choice):
    duck, spk = both(ws, ALL_TASKS, choice=choice, seed=5, mode="replace")
    assert duck.equals(spk)   # per template: rows written and how each part rendered
    assert {"python", "sql"} <= set(spk.completion_by)   # contact_extraction renders through Jinja UDFs
    assert same_rows(ws) == spk.rows.sum()
    n_examples = ws.execute("select count(*) from examples").fetchone()[0]
    per_task = dict(ws.execute("select task, count(*) from sft_examples group by all").fetchall())
    assert per_task["intent_classification"] == n_examples * (5 if choice == "all" else 1) > 300
    checks = S.check_sft_examples(ws, ALL_TASKS, choice=choice)
    assert checks.ok.all(), checks


TRICKY = [  # exactness: Unicode whitespace and case, control characters, quotes, JSON escapes, long text
    ("t1", "Straße ÉCOLE: my card <CARD> was charged twice ß İ", "billing", "Fixed: ﬁnal ß", 3),
    ("t2", "\u3000 leading and trailing unicode spaces\xa0\n", "refund", "  padded reply \t", 0),
    ("t3", "it's a 'quoted' \"text\" with\nnew lines, {{ braces }}, a \\ backslash and C:\\new", "shipping", "ok", 12),
    ("t4", "'); drop table examples; -- <EMAIL> <PHONE>", "technical_issue", "no injection", None),
    ("t5", "emoji 😀, combining e\u0301, ΟΔΟΣ, \x0b\x1c\x1f\x7f\u2028\u2029\x85 controls", "account_access", "x",
     -4),
    ("t6", "a reply of only Unicode spaces", "cancellation", "\u3000 \n\xa0", 7),
    ("t7", "zzz long " * 40, "billing", None, 1),
]
PROBES = [  # prompt, completion: compiled to SQL, SQL with non-ASCII rows through Jinja, Jinja only
    ("{{ text | trim }}|{{ text | length }}|{{ text | replace('a', 'ä') }}", "{{ intent }}"),
    ("{{ text | upper }} / {{ text | lower }}", "{{ intent | capitalize }}"),
    ("{% if '<CARD>' in text %}card{% elif text | length > 30 %}long{% else %}short{% endif %}: {{ n }}",
     "{{ reply }}"),
    ("{{ created_at }} {{ text | truncate(20) }} {{ n * 2 }}", "{{ intent | title }}"),
    ("{% set words = text.split() %}{{ words | join('/') }}", "{{ reply | trim }}"),
    ("{{ ratio }} {{ tags }} {{ even }} {{ day }} {{ tags | join('+') }}", "{{ intent }}"),  # more Arrow types
]


def test_tricky_text_and_every_render_path_match(ws):
    base = {"message_id": "m", "customer_id": "c", "channel": "chat", "region": "north", "age_band": "18-29"}
    rows = [{**base, "example_id": k, "text": text, "text_norm": text.lower(), "intent": intent, "reply": reply,
             "n": n, "created_at": dt.datetime(2026, 1, 5, 9, 30, 15, 250)} for k, text, intent, reply, n in TRICKY]
    write_table(ws, "tricky", pd.DataFrame(rows).astype({"n": "Int64"}))
    ws.execute("create or replace table tricky as select *, n / 4 as ratio, [intent, channel] as tags, "
               "n % 2 = 0 as even, cast(created_at as date) as day from tricky")
    rows = ws.execute("select * from tricky").to_arrow_table().to_pylist()
    spec = [{"id": f"p-{i}", "name": f"probe_{i}", "prompt": p, "completion": c, "system": "sys" if i == 0 else None}
            for i, (p, c) in enumerate(PROBES)]
    probes = T.parse_templates({"task": "probe", "task_type": "generation", "table": "tricky", "key": "example_id",
                                "templates": spec}, "probe.yaml")
    duck, spk = both(ws, "probe", choice="all", templates=probes, mode="replace", validate=False)
    assert duck.equals(spk)
    assert {"sql", "sql+python", "python"} <= set(spk.prompt_by)
    # skipped: null n (p-2, p-3, p-5), null or blank reply (p-2, p-4)
    assert same_rows(ws) == spk.rows.sum() == 6 * 7 - 7
    got = ws.execute("select completion from sft_examples where template_id = 'p-1' and source_row_id = 't1'")
    assert got.fetchone()[0] == "Billing"
    for r in ws.execute("select template_id, source_row_id, system, prompt, completion from sft_examples").fetchall():
        want = T.render(T.get(r[0], probes), next(x for x in rows if x["example_id"] == r[1]))
        assert r[2:] == (want["system"], want["prompt"], want["completion"])


def test_modes_limit_and_named_template_match(ws):
    both(ws, "reply_generation", choice="all", mode="replace")
    both(ws, "intent_classification", choice="random", seed=3, limit=50)               # replace_tasks
    both(ws, "article_topic", choice="random", limit=10, mode="append")
    counts = dict(ws.execute("select task, count(*) from sft_examples group by all").fetchall())
    n_reply = ws.execute("select count(*) from examples where trim(reply) <> ''").fetchone()[0]
    assert counts == {"reply_generation": 4 * n_reply, "intent_classification": 50, "article_topic": 10}
    assert same_rows(ws) == sum(counts.values())
    both(ws, "reply_generation", choice="rg-agent-turn", limit=5)   # replace_tasks keeps the other tasks
    assert dict(ws.execute("select task, count(*) from sft_examples group by all").fetchall()) == {
        **counts, "reply_generation": 5}
    assert same_rows(ws) == sum(counts.values()) - 4 * n_reply + 5


def test_bad_template_on_spark_errors_before_writing(ws):
    S.apply_templates(ws, "intent_classification", engine="spark", limit=30, mode="replace")
    ws.execute("create or replace table examples_zzz as select * replace (case when example_id = (select "
               "min(example_id) from examples) then text || ' zzz' else text end as text) from examples")
    before = snapshot_id(ws), ws.execute("select * from sft_examples order by all").fetchall()
    staging = wbspark.spark_dir(ws) / "_staging"
    bad = T.parse_templates({"task": "intent_classification", "task_type": "classification", "table": "examples",
                             "templates": [{"id": "b-1", "name": "bad_column", "prompt": "{{ country }}",
                                            "completion": "{{ intent }}"}]})
    with pytest.raises(T.TemplateError, match=r"nothing written:\n.*country not column\(s\) of table 'examples'"):
        S.apply_templates(ws, "intent_classification", engine="spark", templates=bad)
    # passes validation (sampled rows), fails in a Spark UDF on one row: the error names the template
    explodes = T.parse_templates({"task": "intent_classification", "task_type": "classification",
                                  "table": "examples", "templates": [
                                      {"id": "e-1", "name": "explodes", "prompt": "{{ text }}",
                                       "completion": "{{ intent if 'zzz' not in text else (text | length) // 0 }}"}]})
    with pytest.raises(T.TemplateError, match=r"on Spark failed: .*template 'explodes' \(e-1\): completion failed"):
        S.apply_templates(ws, "intent_classification", engine="spark", templates=explodes, validate=False,
                          source="examples_zzz")
    assert (snapshot_id(ws), ws.execute("select * from sft_examples order by all").fetchall()) == before
    assert not any(staging.iterdir())   # the Parquet staging folders are gone
    with pytest.raises(ValueError, match="engine 'postgres'"):
        S.apply_templates(ws, "intent_classification", engine="postgres")


def test_spark_sql_guards_python_parts_and_transpiles_cleanly(ws):
    plan = S.plan_render(ws, ["intent_classification", "contact_extraction"], choice="random")
    sql = S.spark_sql(plan)
    assert "RANGE(" not in sql.upper() and "EXPLODE" not in sql.upper()
    guard = r"(NOT COALESCE\(\(wb_pick_ = \d\), FALSE\) AND )*COALESCE\(\(wb_pick_ = \d\), FALSE\)"
    for name, _, _ in plan.udfs:   # each Jinja-rendered call only on the rows that picked its template
        assert re.search(rf"{name}\({guard}, `text`\)", sql, re.I), name
    assert len(plan.udfs) == 2


@pytest.mark.slow
def test_notebook_05_on_spark_writes_duckdbs_rows(ws, monkeypatch):
    """``workbench run --only 05 -p engine spark``: the notebook's kernel starts its own local Spark."""
    from workbench import pipeline

    tasks = ["intent_classification", "contact_extraction"]
    S.apply_templates(ws, tasks, table=DUCK, choice="random", seed=9, limit=200, mode="replace")
    ws.execute("drop table if exists sft_examples")
    monkeypatch.setenv("WORKBENCH_HOME", str(workspace_root(ws)))   # pipeline.run sets it; restored after
    out = pipeline.run({"engine": "spark", "spark_master": "local[1]", "template_tasks": json.dumps(tasks),
                        "template_seed": "9", "template_limit": "200", "audit_tokenizer": "", "audit_sample": "2"},
                       only=["05"], workspace=workspace_root(ws), progress=lambda *a: None)
    assert same_rows(ws) == 400, out
    assert "COALESCE((wb_pick_ = " in next(out.glob("05*.ipynb")).read_text()   # it printed the Spark SQL


def test_blank_and_missing_replies_are_counted_alike_on_both_engines(ws):
    """Rows that give no example (a null column, a blank completion) are counted the same on both engines."""
    ws.execute("create or replace table examples_gaps as select * replace ("
               "case when hash(example_id) % 5 = 0 then '' when hash(example_id) % 5 = 1 then null "
               "else reply end as reply) from examples")
    duck, spk = both(ws, ["reply_generation"], choice="random", seed=3, mode="replace", source="examples_gaps")
    assert duck.equals(spk)
    n = ws.execute("select count(*) from examples_gaps").fetchone()[0]
    assert spk["skipped_empty"].sum() > 0 and spk["skipped_missing"].sum() > 0
    assert (spk["rows"] + spk["skipped_missing"] + spk["skipped_empty"]).sum() == n
    assert same_rows(ws) == spk["rows"].sum()
