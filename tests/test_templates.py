"""The template library: files, every validation rule (a failing template each), the sandbox, discovery,
the CLI, and notebook 05 run headless with papermill."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from jinja2 import meta

from workbench import templates as T
from workbench.cli import main as cli


def one(**kw) -> T.Template:
    """A single template from a YAML-like mapping: a valid intent template unless ``kw`` overrides a key."""
    doc = {"task": "intent_classification", "task_type": "classification", "table": "examples",
           "answer_choices": list(T.INTENTS),
           "templates": [{"id": "t-1", "name": "t_one", "prompt": "Message: {{ text }}\nIntent:",
                          "completion": "{{ intent }}", **kw}]}
    return T.parse_templates(doc, "test.yaml")[0]


def problems(*templates: T.Template, **kw) -> str:
    return "\n".join(str(p) for p in T.validate(list(templates), **kw))


# --------------------------------------------------------------------------- the shipped library

def test_library_has_five_tasks_and_three_phrasings_each_and_is_valid():
    lib = T.load_library()
    counts = T.tasks(lib)
    assert len(counts) >= 5
    assert all(n >= 3 for n in counts.values()), counts
    assert {"intent_classification", "reply_generation"} <= set(counts)
    assert {t.task_type for t in lib} >= {"classification", "generation", "extraction", "summarization",
                                          "question_answering"}
    assert len({t.id for t in lib}) == len({t.name for t in lib}) == len(lib)
    assert T.validate(lib) == []
    for t in lib:
        assert t.description and t.languages == ("en",) and t.source_file.endswith(".yaml")


@pytest.mark.parametrize("template", T.load_library(), ids=lambda t: t.id)
def test_every_shipped_template_renders_on_sample_rows(template):
    for row in T.SAMPLE_ROWS[template.table]:
        out = T.render(template, row)
        assert out["prompt"].strip() and out["completion"].strip()
        assert "{{" not in out["prompt"] and "{%" not in out["prompt"]
        for col in ("text",):  # the templates show the row's text (not a constant prompt)
            if col in meta.find_undeclared_variables(T.ENV.parse(template.prompt)):
                assert row[col] in out["prompt"]
        if template.answer_choices:
            assert out["completion"] in template.answer_choices
            assert all(c in out["prompt"] for c in template.answer_choices) == template.choices_in_prompt


def test_shipped_templates_valid_and_rendered_on_spine_tables(con):
    from workbench.data import build_spine

    build_spine(con, rows=120, seed=3)
    assert T.validate(con=con) == []
    tasks = list(T.tasks())   # every shipped template rendered over the spine's rows, all five tasks
    out = T.apply_templates(con, tasks, choice="all")
    assert (out.rows > 0).all() and len(out) == len(T.load_library())
    assert T.check_sft_examples(con, tasks, choice="all").ok.all()


# --------------------------------------------------------------------------- validation rules

def test_rule_template_that_does_not_parse():
    msg = problems(one(prompt="Message: {{ text }"))
    assert "test.yaml: template 't_one' (t-1): prompt does not parse: line 1" in msg


def test_rule_variable_that_is_not_a_column():
    msg = problems(one(prompt="{{ text }} from {{ country }}", columns=["text", "intent", "country"]))
    assert "t_one" in msg and "country not column(s) of table 'examples'" in msg
    # also when the table is a workspace table: the live columns count
    msg = problems(one(prompt="{{ sender }}: {{ text }}", columns=["sender", "text", "intent"]))
    assert "sender" in msg


def test_rule_variable_not_declared_in_columns():
    msg = problems(one(prompt="{{ channel }}: {{ text }}", columns=["text", "intent"]))
    assert "uses variable(s) channel not listed in columns" in msg


def test_rule_empty_completion():
    assert "completion is empty" in problems(one(completion="   "))
    # renders empty on every row
    msg = problems(one(completion="{{ '' if intent else 'x' }}", answer_choices=None))
    assert "completion renders empty on all" in msg


def test_rule_duplicate_names_and_ids():
    a = one()
    b = one(id="t-2")            # same name as a
    c = one(name="other")        # same id as a
    msg = problems(a, b, c)
    assert "duplicate name 't_one'" in msg and "duplicate id 't-1'" in msg


def test_rule_answer_choices_the_completion_cannot_produce():
    # a choice that never comes out ('billing' is spelt differently)
    msg = problems(one(answer_choices=["Billing", *T.INTENTS[1:]]))
    assert "answer choice(s) 'Billing' can never be produced" in msg
    assert "completion produces 'billing', not among answer_choices" in msg
    # a completion that transforms the label away from the choices
    msg = problems(one(completion="{{ intent | upper }}"))
    assert "not among answer_choices" in msg and "can never be produced" in msg


def test_rule_choices_in_prompt_must_be_true():
    msg = problems(one(prompt="{{ answer_choices | join(', ') }}: {{ text }}"))
    assert "prompt shows answer_choices but metadata.choices_in_prompt is false" in msg
    msg = problems(one(metadata={"choices_in_prompt": True}))
    assert "choices_in_prompt but the prompt does not show every answer choice" in msg


def test_rule_include_and_unknown_task_type():
    assert "uses {% include %}" in problems(one(prompt="{% include '/etc/passwd' %}{{ text }}"))
    assert "task_type 'classify'" in problems(one(task_type="classify"))
    assert "uses answer_choices but defines none" in problems(
        one(answer_choices=None, prompt="{{ answer_choices }} {{ text }}"))


def test_file_errors_name_the_file_and_template(tmp_path):
    with pytest.raises(T.TemplateError, match=r"test.yaml: templates\[0\] \(t-1\): unknown key\(s\) promt"):
        one(promt="x")
    with pytest.raises(T.TemplateError, match="missing completion"):
        T.parse_templates({"task": "x", "task_type": "generation", "table": "examples",
                           "templates": [{"id": "a", "name": "a", "prompt": "{{ text }}"}]}, "f.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(T.TemplateError, match="broken.yaml: not valid YAML"):
        T.load_file(bad)


def test_validate_against_a_workspace_table_uses_its_real_columns(con):
    import pandas as pd

    from workbench.workspace import write_table

    rows = [{k: v for k, v in r.items() if k != "reply"} for r in T.SAMPLE_ROWS["examples"]]
    write_table(con, "examples", pd.DataFrame(rows))
    msg = problems(*T.list_templates(table="examples"), con=con, table="examples")
    assert "reply not column(s) of table 'examples'" in msg
    assert "rg-write-reply" in msg and "ic-" not in msg   # intent templates fine, reply templates not
    assert problems(one(), con=con) == ""
    # templates over a table the workspace does not have: a problem each, not a crash
    msg = problems(*T.list_templates("article_title"), con=con)
    assert msg.count("table 'corpus_documents' is unknown: not in the workspace") == 3


# --------------------------------------------------------------------------- the sandbox

@pytest.mark.parametrize("source", [
    "{{ text.__class__ }}",
    "{{ text.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ ''.join.__self__ }}",
])
def test_sandbox_refuses_python_internals(source):
    t = one(prompt=source, columns=["text", "intent"])
    with pytest.raises(T.TemplateError, match=r"t_one.*prompt is unsafe and was refused by the sandbox"):
        T.render(t, T.SAMPLE_ROWS["examples"][0])
    assert "refused by the sandbox" in problems(t)


def test_sandbox_has_no_os_no_files_no_huge_strings():
    row = T.SAMPLE_ROWS["examples"][0]
    t = one(prompt="{{ os.system('echo hi') }}", columns=["os", "text", "intent"])
    with pytest.raises(T.TemplateError, match="'os' is undefined"):
        T.render(t, row)
    assert "os not column(s) of table" in problems(t)
    with pytest.raises(T.TemplateError, match="no loader"):
        T.render(one(prompt="{% include '/etc/passwd' %}"), row)
    with pytest.raises(T.TemplateError, match="refused by the sandbox.*limit"):
        T.render(one(prompt="{{ 'x' * 100000000 }}"), row)
    with pytest.raises(T.TemplateError, match="immutable|unsafe"):
        T.render(one(prompt="{{ answer_choices.append('x') }}"), row)


# --------------------------------------------------------------------------- discovery

def test_list_search_get():
    assert {t.id for t in T.list_templates("reply_generation")} == {
        "rg-write-reply", "rg-agent-turn", "rg-with-intent", "rg-respond-as-support"}
    assert [t.id for t in T.search("queue")] == ["ic-route-queue"]             # by text
    assert [t.id for t in T.search("plain words")] == ["ic-plain-words"]      # by name/description, all words
    assert {t.task for t in T.search("json")} == {"contact_extraction"}
    assert T.search("refund", task="reply_generation") == []
    assert T.get("route_to_queue").id == "ic-route-queue"
    with pytest.raises(T.TemplateError, match="no template with id or name 'nope'"):
        T.get("nope")
    df = T.catalog()
    assert len(df) == len(T.load_library()) and {"id", "task", "columns", "description"} <= set(df.columns)


def test_cli_list_search_validate_show(capsys):
    assert cli(["templates", "list", "--task", "intent_classification", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["task"] for r in rows} == {"intent_classification"} and len(rows) == 5
    assert cli(["templates", "search", "headline"]) == 0
    assert "at-headline-for-topic" in capsys.readouterr().out
    assert cli(["templates", "validate"]) == 0
    assert "all valid" in capsys.readouterr().out
    assert cli(["templates", "show", "ic-ticket-list"]) == 0
    assert "- technical_issue" in capsys.readouterr().out


def test_cli_validate_fails_naming_template_and_problem(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.yaml").write_text(
        "task: intent_classification\ntask_type: classification\ntable: examples\n"
        "templates:\n  - {id: x-1, name: broken, prompt: '{{ text }', completion: '{{ intent }}'}\n"
        "  - {id: x-2, name: nosuch, prompt: '{{ subject }}', completion: '{{ intent }}'}\n")
    monkeypatch.setattr(T, "TEMPLATE_DIR", tmp_path)
    assert cli(["templates", "validate"]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml: template 'broken' (x-1): prompt does not parse" in err
    assert "template 'nosuch' (x-2): variable(s) subject not column(s) of table 'examples'" in err


def test_cli_validate_against_workspace_table(con, workspace, capsys):
    import pandas as pd

    from workbench.workspace import write_table

    write_table(con, "examples", pd.DataFrame(T.SAMPLE_ROWS["examples"]))
    assert cli(["--workspace", str(workspace), "templates", "validate", "--table", "examples"]) == 0
    assert "workspace table 'examples': all valid" in capsys.readouterr().out


# --------------------------------------------------------------------------- notebook 05, headless

@pytest.mark.slow
def test_notebook_05_writes_sft_examples(workspace, tmp_path):
    import papermill as pm

    import workbench
    from workbench.data import build_spine
    from workbench.pipeline import NOTEBOOK_DIR

    con = workbench.connect(workspace)
    build_spine(con, rows=200, seed=5)
    n_examples = con.execute("select count(*) from examples").fetchone()[0]
    con.close()
    pm.execute_notebook(str(NOTEBOOK_DIR / "05_apply_templates.ipynb"), str(tmp_path / "05.ipynb"),
                        parameters={"workspace": str(workspace), "audit_sample": 4,
                                    "template_tasks": ["intent_classification", "reply_generation"]},
                        cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False)
    con = workbench.connect(workspace)
    got = dict(con.execute("select task, count(*) from sft_examples group by all").fetchall())
    assert got == {"intent_classification": n_examples, "reply_generation": n_examples}
    per_row = con.execute("select max(n) from (select source_row_id, task, count(*) n from sft_examples group by all)")
    assert per_row.fetchone()[0] == 1
    assert con.execute("select count(distinct template_id) from sft_examples").fetchone()[0] == 9
    assert con.execute("select count(*) from sft_examples s join examples e on e.example_id = s.source_row_id "
                       "where s.task = 'intent_classification' and s.completion <> replace(e.intent, '_', ' ') "
                       "and s.completion <> e.intent").fetchone()[0] == 0
    executed = json.loads((tmp_path / "05.ipynb").read_text())
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for c in executed["cells"]
                   for o in c.get("outputs", []))
    assert "Mask audit" in html and "#c8f7c5" in html          # the token rendering was displayed


def test_module_import_stays_light():
    code = "import sys, workbench.templates; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
