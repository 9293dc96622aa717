"""Applying templates at scale: the Jinja-to-SQL compiler, the batched Jinja path, template choice per
row, and writing sft_examples. Every fast path is compared with the reference renderer row by row."""
from __future__ import annotations

import datetime as dt
import hashlib

import duckdb
import pandas as pd
import pytest

from workbench import template_sql as S
from workbench import templates as T

TASKS = ["intent_classification", "reply_generation", "contact_extraction"]

# rows that stress exactness: non-ASCII case mapping, Unicode whitespace, quotes, newlines, NUL-free
# separators, SQL-looking text, an empty reply and a null reply (skipped)
TRICKY = [
    ("x1", "Straße ÉCOLE: my card <CARD> was charged twice ß İ", "billing", "Fixed: ﬁnal ß"),
    ("x2", "\u3000 leading and trailing unicode spaces\xa0\n", "refund", "  padded reply \t"),
    ("x3", "it's a 'quoted' \"text\" with\nnew lines and {{ braces }} and {% tags %}", "shipping", "ok"),
    ("x4", "'); drop table examples; -- <EMAIL> <PHONE>", "technical_issue", "no injection"),
    ("x5", "emoji 😀 and combining e\u0301", "account_access", ""),
    ("x6", "null reply row", "cancellation", None),
]


def examples_table(con, extra: list[tuple] = TRICKY, table: str = "examples") -> list[dict]:
    rows = [dict(r) for r in T.SAMPLE_ROWS["examples"]]
    base = rows[0]
    for key, text, intent, reply in extra:
        rows.append({**base, "example_id": key, "text": text, "text_norm": text.lower(), "intent": intent,
                     "reply": reply, "channel": "chat"})
    df = pd.DataFrame(rows)  # noqa: F841 - read by DuckDB below
    con.execute(f"create or replace table {table} as select * from df")
    return rows


def reference(rows: list[dict], *, con, templates=None) -> int:
    """Compare every written row with templates.render on its source row; return the rows compared."""
    src = {r["example_id"]: r for r in rows}
    got = con.execute("select * from sft_examples").to_arrow_table().to_pylist()
    for r in got:
        t = T.get(r["template_id"], templates)
        want = T.render(t, src[r["source_row_id"]])
        assert (r["system"], r["prompt"], r["completion"]) == (want["system"], want["prompt"], want["completion"]), t.id
        assert r["example_id"] == f"{t.id}|{r['source_row_id']}" and r["task"] == t.task
        assert r["choices"] == (list(t.answer_choices) if t.answer_choices else None)
    return len(got)


# --------------------------------------------------------------------------- stable hash

def test_stable_hash_sql_equals_python_and_md5():
    con = duckdb.connect()
    for key in ["", "a", "messages.csv:12", "7:intent_classification:x", "ü😀"]:
        sql = con.execute(f"select {S.stable_hash_sql('$1')}", [key]).fetchone()[0]
        assert sql == S.stable_hash(key) == int(hashlib.md5(key.encode()).hexdigest()[:8], 16)


def test_stable_hash_sql_transpiles_to_spark():
    import sqlglot

    spark = sqlglot.transpile(f"select {S.stable_bucket_sql('k', 7, 't', 5)} from x", read="duckdb", write="spark")[0]
    assert "MD5(" in spark.upper() and "HASH(" not in spark.upper()


# --------------------------------------------------------------------------- the compiler

@pytest.mark.parametrize("prompt, compiles", [
    ("plain text only", True),
    ("{{ text }} / {{ intent | upper }} / {{ text | lower | trim }}", True),
    ("{{ intent | replace('_', ' ') | capitalize }}: {{ text | length }}", True),
    ("{% if intent == 'refund' %}R{% elif intent in ['billing', 'shipping'] %}B{% else %}O{% endif %}", True),
    ("{{ 'yes' if '<CARD>' in text and not (intent != 'billing') else 'no' }}", True),
    ("{{ text ~ ' | ' ~ intent }} {{ answer_choices | join(', ') }} "
     "{% for c in answer_choices %}{{ c }};{% endfor %}", True),
    ("{{ created_at }}", False),                               # TIMESTAMP prints differently in SQL
    ("{{ text | truncate(20) }}", False),
    ("{% set x = text %}{{ x }}", False),
    ("{% for w in text.split() %}{{ w }}{% endfor %}", False),
    ("{{ text[:5] }}", False),
])
def test_compiled_or_batched_output_equals_jinja(prompt, compiles):
    con = duckdb.connect()
    rows = examples_table(con)
    t = T.parse_templates({"task": "probe", "task_type": "classification", "table": "examples",
                           "answer_choices": list(T.INTENTS),
                           "templates": [{"id": "p-1", "name": "probe", "prompt": prompt, "completion": "{{ intent }}",
                                          "columns": ["text", "intent", "created_at"]}]}, "probe.yaml")
    types = dict(con.execute("select column_name, column_type from (describe examples)").fetchall())
    assert (S.compile_part(t[0], "prompt", types).sql is not None) == compiles
    for compile_sql in (True, False):
        S.apply_templates(con, "probe", choice="all", templates=t, compile_sql=compile_sql, mode="replace",
                          validate=False)  # compiler probes, not library templates
        assert reference(rows, con=con, templates=t) == len(rows)


def test_case_filters_on_non_ascii_rows_route_through_jinja():
    con = duckdb.connect()
    rows = examples_table(con)
    t = T.parse_templates({"task": "probe", "task_type": "generation", "table": "examples", "templates": [
        {"id": "u-1", "name": "upper", "prompt": "{{ text | upper }}", "completion": "{{ intent | capitalize }}"}]})
    plan = S.plan_part(t[0], "prompt", {"text": "VARCHAR", "intent": "VARCHAR"})
    assert plan.method == "sql+python" and "regexp_matches" in plan.sql
    S.apply_templates(con, "probe", choice="all", templates=t)
    got = dict(con.execute("select source_row_id, prompt from sft_examples").fetchall())
    assert got["x1"].startswith("STRASSE ÉCOLE")          # Python's mapping, not DuckDB's 'STRAẞE'
    assert reference(rows, con=con, templates=t) == len(rows)


def test_shipped_intent_and_reply_templates_compile_fully():
    types = T.CONTRACT["examples"]
    for t in T.list_templates("intent_classification") + T.list_templates("reply_generation"):
        for part, cp in S.compile_template(t, types).items():
            assert cp.sql is not None and cp.exact_when is None, (t.id, part, cp.reason)


def test_batch_renderer_equals_row_renderer_including_duplicates_and_separator_like_values():
    t = T.get("ce-list-kinds")
    texts = ["a <CARD>", "b", "a <CARD>", "\x02wb-row-end\x02 <EMAIL>", "c <PHONE> <EMAIL>"] * 3
    assert S.render_batch(t, "completion", {"text": texts}) == [
        T.render_part(t, "completion", {"text": x}) for x in texts]


def test_render_errors_in_the_batch_path_name_the_template():
    con = duckdb.connect()
    examples_table(con, extra=[])
    t = T.parse_templates({"task": "probe", "task_type": "generation", "table": "examples", "templates": [
        {"id": "e-1", "name": "explodes", "prompt": "{{ text }}", "completion": "{{ (text | length) // 0 }}"}]})
    with pytest.raises(T.TemplateError, match=r"template 'explodes' \(e-1\): completion failed to render"):
        S.apply_templates(con, "probe", choice="all", templates=t, validate=False)


# --------------------------------------------------------------------------- choosing templates

def test_every_shipped_template_on_sample_like_rows_both_paths():
    con = duckdb.connect()
    rows = examples_table(con)
    for compile_sql in (True, False):
        out = S.apply_templates(con, TASKS, choice="all", compile_sql=compile_sql)
        n_ok = len([r for r in rows if r["reply"]])   # null or empty reply: no reply examples
        assert dict(zip(out.template_id, out.rows)) == {
            t.id: (n_ok if t.task == "reply_generation" else len(rows)) for t in T.load_library() if t.task in TASKS}
        assert reference(rows, con=con) == out.rows.sum()
    assert set(out.completion_by[out.template_id.isin(["ce-list-kinds", "ce-redaction-check"])]) == {"python"}


def test_random_choice_is_seeded_stable_and_matches_the_python_hash():
    con = duckdb.connect()
    con.execute("create table examples as select 'k' || i as example_id, 'text ' || i as text, "
                "['billing', 'refund'][1 + i % 2] as intent, 'chat' as channel from range(3000) t(i)")
    S.apply_templates(con, "intent_classification", choice="random", seed=11)
    got = dict(con.execute("select source_row_id, template_id from sft_examples").fetchall())
    ids = sorted(t.id for t in T.list_templates("intent_classification"))
    assert len(got) == 3000
    assert all(got[k] == ids[S.stable_hash(f"11:intent_classification:{k}") % len(ids)] for k in got)
    share = pd.Series(got).value_counts(normalize=True)
    assert len(share) == 5 and share.max() < 0.25 and share.min() > 0.15
    S.apply_templates(con, "intent_classification", choice="random", seed=11)
    assert dict(con.execute("select source_row_id, template_id from sft_examples").fetchall()) == got
    S.apply_templates(con, "intent_classification", choice="random", seed=12)
    again = dict(con.execute("select source_row_id, template_id from sft_examples").fetchall())
    assert sum(again[k] != got[k] for k in got) > 2000   # a new seed reshuffles ~4/5 of the rows


def test_one_named_template_limit_and_replace_tasks_keeps_other_tasks():
    con = duckdb.connect()
    examples_table(con, extra=[])
    S.apply_templates(con, "reply_generation", choice="all")
    S.apply_templates(con, "intent_classification", choice="ic-route-queue", limit=4)
    counts = dict(con.execute("select template_id, count(*) from sft_examples group by all").fetchall())
    assert counts["ic-route-queue"] == 4 and sum(v for k, v in counts.items() if k.startswith("rg-")) == 24
    with pytest.raises(T.TemplateError, match="not 'random', 'all' or a template of task 'reply_generation'"):
        S.apply_templates(con, "reply_generation", choice="ic-route-queue")
    with pytest.raises(T.TemplateError, match="no templates for task 'nope'"):
        S.apply_templates(con, "nope")


def test_invalid_template_against_the_live_table_writes_nothing():
    con = duckdb.connect()
    con.execute("create table examples as select 'k1' as example_id, 'hi' as text")   # no intent column
    with pytest.raises(T.TemplateError, match=r"nothing written:\n.*intent not column\(s\) of table 'examples'"):
        S.apply_templates(con, "intent_classification")
    assert con.execute("select count(*) from duckdb_tables() where table_name = 'sft_examples'").fetchone()[0] == 0


# --------------------------------------------------------------------------- the workspace table

def test_writes_sft_examples_in_the_workspace(con):
    import json

    from workbench.workspace import write_table

    rows = T.SAMPLE_ROWS["examples"] + [{**T.SAMPLE_ROWS["examples"][0], "example_id": "late",
                                          "created_at": dt.datetime(2025, 1, 1)}]
    write_table(con, "examples", pd.DataFrame(rows))
    write_table(con, "corpus_documents", pd.DataFrame(T.SAMPLE_ROWS["corpus_documents"]))
    S.apply_templates(con, ["intent_classification", "reply_generation", "article_title"], choice="random")
    assert {r[0]: r[1] for r in con.execute("describe sft_examples").fetchall()} == {
        "example_id": "VARCHAR", "source_row_id": "VARCHAR", "source_table": "VARCHAR", "task": "VARCHAR",
        "template_id": "VARCHAR", "prompt": "VARCHAR", "completion": "VARCHAR", "choices": "VARCHAR[]",
        "system": "VARCHAR", "messages": "VARCHAR"}
    got = con.execute("select task, source_table, count(*) from sft_examples group by all order by all").fetchall()
    assert got == [("article_title", "corpus_documents", 3), ("intent_classification", "examples", 7),
                   ("reply_generation", "examples", 7)]
    for system, prompt, completion, messages in con.execute(
            "select system, prompt, completion, messages from sft_examples").fetchall():
        msgs = json.loads(messages)
        want = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        assert msgs == want
    checks = S.check_sft_examples(con, ["intent_classification", "reply_generation", "article_title"])
    assert checks.ok.all(), checks
    # a planted bad row is caught by the data checks
    con.execute("update sft_examples set completion = 'nonsense' where template_id like 'ic-%'")
    checks = S.check_sft_examples(con, ["intent_classification"])
    assert not checks.set_index("check").loc["completion not among choices", "ok"]


def test_plan_sql_runs_on_its_own_when_every_part_compiles():
    con = duckdb.connect()
    rows = examples_table(con, extra=[])
    plan = S.plan_render(con, ["intent_classification", "reply_generation"], choice="all")
    assert plan.udfs == [] and "case wb_pick_" in plan.sql and "cross join (values (0), (1), (2), (3), (4))" in plan.sql
    got = con.execute(plan.sql).fetchall()
    assert len(got) == len(rows) * 9
    assert set(plan.summary().prompt_by) == {"sql"}


def test_rows_whose_completion_renders_empty_are_counted_not_written(con):
    from workbench.workspace import write_table

    base = T.SAMPLE_ROWS["examples"][0]
    replies = ["Sure, done.", "", "   ", "\n\t", None, "Refund sent."]
    write_table(con, "examples", pd.DataFrame([{**base, "example_id": f"e{i}", "reply": r}
                                               for i, r in enumerate(replies)]))
    out = S.apply_templates(con, ["reply_generation", "intent_classification"], choice="all")
    by_task = out.groupby("task")[["rows", "skipped_empty"]].sum()
    n_templates = (out["task"] == "reply_generation").sum()
    # '', '   ', '\n\t': rendered blank; None: a column the template reads is null (not rendered)
    assert by_task.loc["reply_generation"].tolist() == [2 * n_templates, 3 * n_templates]
    assert out.loc[out["task"] == "reply_generation", "skipped_missing"].tolist() == [1] * n_templates
    assert out[["skipped_missing", "skipped_empty"]][out["task"] == "intent_classification"].sum().sum() == 0
    assert (out["rows"] + out["skipped_missing"] + out["skipped_empty"]).tolist() == [6] * len(out)
    left = con.execute("select count(*) from sft_examples where task = 'reply_generation' "
                       "and trim(completion, ' ' || chr(9) || chr(10)) = ''").fetchone()[0]
    assert left == 0
    assert set(con.execute("select distinct source_row_id from sft_examples where task = 'reply_generation'")
               .df()["source_row_id"]) == {"e0", "e5"}
