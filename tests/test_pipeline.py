"""The headless pipeline: notebooks executed in order with papermill on small parameters."""
from __future__ import annotations

import json
import os
import re

import pytest

import workbench
from workbench import pipeline


def test_every_notebook_has_a_parameters_cell_and_no_outputs():
    steps = pipeline.steps()
    assert [s.number for s in steps] == sorted(s.number for s in steps)
    for s in steps:
        assert "workspace" in s.parameters, s.name
        nb = json.loads(s.path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, f"{s.name} has outputs"


def test_coerce_parameter_types():
    assert pipeline.coerce("true", False) is True
    assert pipeline.coerce("3", 1) == 3 and pipeline.coerce("0.5", 0.1) == 0.5
    assert pipeline.coerce("[1, 2]", []) == [1, 2]
    with pytest.raises(ValueError):
        pipeline.coerce("maybe", True)


def test_select_steps():
    steps = pipeline.steps()
    assert [s.name for s in pipeline.select(steps, ["02"], None)] == ["02_clean_dedup"]
    with pytest.raises(pipeline.PipelineError, match="no notebook step matches 99"):
        pipeline.select(steps, ["99"], None)


@pytest.mark.slow
def test_spine_notebooks_run_headless_and_write_their_tables(workspace):
    out = pipeline.run({"sample_rows": "400", "split_seed": "3"}, only=["01", "02", "06"], workspace=workspace)
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["01_ingest_raw.ipynb", "02_clean_dedup.ipynb",
                                                           "06_split_examples.ipynb"]
    con = workbench.connect(workspace)
    for table in ("stg_messages", "ingest_rejects", "examples", "row_fate", "corpus_documents", "label_pool",
                  "splits", "split_leakage"):
        assert workbench.table_exists(con, table), table
    assert con.execute("select count(*) from split_leakage").fetchone()[0] == 0
    assert undocumented(con) == []  # every table and column these steps write is in docs/schema.md
    assert con.execute("select count(distinct seed) from splits").fetchone()[0] == 1
    assert con.execute("select min(seed) from splits").fetchone()[0] == 3
    # running the split step again assigns nothing new and moves nothing
    before = con.execute("select example_id, split from splits order by 1").fetchall()
    pipeline.run({}, only=["06"], workspace=workspace)
    assert con.execute("select example_id, split from splits order by 1").fetchall() == before


def test_every_notebook_parameter_is_documented():
    from pathlib import Path

    doc = (Path(pipeline.NOTEBOOK_DIR).parent / "docs" / "pipeline.md").read_text()
    for s in pipeline.steps():
        assert f"### {s.name}" in doc, f"docs/pipeline.md has no section for {s.name}"
        section = doc.split(f"### {s.name}", 1)[1].split("\n### ", 1)[0]
        for name in s.parameters:
            assert f"`{name}`" in section, f"{s.name}: parameter {name} is not documented in docs/pipeline.md"


def test_papermill_parses_every_parameter_line(caplog):
    """papermill's own parser (used for --help-notebook and to warn on unknown -p names) reads every line."""
    import logging

    from papermill.translators import PythonTranslator

    for s in pipeline.steps():
        nb = json.loads(s.path.read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        with caplog.at_level(logging.WARNING, logger="papermill"):
            caplog.clear()
            names = [p.name for p in PythonTranslator.inspect({"source": src})]
        assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()], (s.name, caplog.text)
        assert sorted(names) == sorted(s.parameters), s.name


def test_unused_parameter_is_reported_and_a_dead_kernel_names_its_notebook(tmp_path, workspace):
    import nbformat

    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    for name, param in (("01_a", "x: int = 1  # x"), ("02_b", "y: int = 2  # y")):
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                               "display_name": "Python 3"}})
        cell = nbformat.v4.new_code_cell(f'{param}\nworkspace: str = ""  # workspace folder')
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell("assert x == 5" if name == "01_a" else "pass")]
        nbformat.write(nb, nbdir / f"{name}.ipynb")
    said = []
    bad = nbdir.parent / "bad"
    bad.mkdir()
    nb.cells = [cell, nbformat.v4.new_code_cell("import os; os._exit(3)")]  # the kernel dies
    nbformat.write(nb, bad / "01_dies.ipynb")
    with pytest.raises(pipeline.PipelineError, match="01_dies failed: DeadKernelError"):
        pipeline.run({}, workspace=workspace, notebook_dir=bad, progress=said.append)
    said.clear()
    out = pipeline.run({"x": "5", "y": "3"}, only=["01"], workspace=workspace, notebook_dir=nbdir,
                       progress=said.append)
    assert said[0] == "note: no step of this run declares y; ignored"
    assert said[1] == f"pipeline run {out.name}: 1 step(s), executed copies in {out}"
    assert [p.name for p in out.glob("*.ipynb")] == ["01_a.ipynb"]


@pytest.mark.parametrize("params, message", [
    ({"train_fraction": "1.5"}, "train_fraction of 06_split_examples is 1.5: need a value from 0 to 1"),
    ({"train_fraction": "0.7", "validation_fraction": "0.4"}, "train + validation <= 1"),
    ({"engine": "sparc"}, "parameter engine of 01_ingest_raw is 'sparc': use one of duckdb, spark"),
    ({"classifier_epochs": "0"}, "parameter classifier_epochs of 09_finetune is 0: need at least 1"),
    ({"cpt_lr": "-0.1"}, "parameter cpt_lr of 08_continued_pretraining is -0.1: need a number above 0"),
    ({"simulate_noise": "1.2"}, "simulate_noise of 03_label_items is 1.2: need a value from 0 to 1"),
    ({"min_chars": "50", "max_chars": "10"}, "min_chars of 02_clean_dedup is 50: more than max_chars 10"),
    ({"cpt_max_docs": "-3"}, "cpt_max_docs of 08_continued_pretraining is -3: need 0 or more"),
])
def test_bad_parameter_values_fail_before_any_step_runs(workspace, params, message):
    with pytest.raises(pipeline.PipelineError, match=re.escape(message)):
        pipeline.run(params, workspace=workspace, progress=lambda *_: None)
    assert not (workspace / "runs").exists()  # nothing ran: no executed notebook, no run folder


def test_every_notebook_default_passes_the_value_checks():
    for step in pipeline.steps():
        pipeline.check_values(step, step.parameters)


def test_p_workspace_is_the_workspace_and_a_failed_sql_cell_says_why(tmp_path, workspace, monkeypatch):
    """``-p workspace DIR`` runs in DIR (it used to be overwritten by the default workspace), and a
    ``%%sql`` cell that fails (jupysql raises an empty CellExecutionError) reports the database's error."""
    other = tmp_path / "elsewhere"
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    nb = {"cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": 'workspace: str = ""  # workspace folder\n'},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "%load_ext sql\nimport workbench\nconn = workbench.connect(workspace or None)\n%sql conn --alias wb"},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "%%sql\nselect * from no_such_table"}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}
    (nb_dir / "01_fails.ipynb").write_text(json.dumps(nb))
    with pytest.raises(pipeline.PipelineError) as err:
        pipeline.run({"workspace": str(other)}, notebook_dir=nb_dir, progress=lambda *_: None)
    msg = str(err.value)
    assert "01_fails failed at cell 4" in msg  # papermill injects a parameters cell and "no_such_table does not exist" in msg
    assert "If using snippets" not in msg
    assert (other / "runs").is_dir() and (other / "wb.sqlite").exists()  # ran in the folder -p named
    assert not (workspace / "runs").exists()
    with pytest.raises(pipeline.PipelineError, match="name different folders"):
        pipeline.run({"workspace": str(other)}, workspace=workspace, notebook_dir=nb_dir)


def _tiny_notebooks(folder, cells: dict[str, str]):
    """Notebooks NN_x.ipynb with a parameters cell (``x``, ``workspace``) and one code cell each."""
    import nbformat

    folder.mkdir()
    for name, code in cells.items():
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                               "display_name": "Python 3"}})
        params = nbformat.v4.new_code_cell('x: int = 1  # x\nworkspace: str = ""  # workspace folder')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(code)]
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def test_runs_are_recorded_and_a_failed_run_resumes_where_it_stopped(tmp_path, workspace):
    nbdir = _tiny_notebooks(tmp_path / "nb", {
        "01_a": "import workbench, workbench.runs\nc = workbench.connect(workspace)\n"
                "workbench.runs.start_run(c, model='m', task='t', kind='k', config={})",
        "02_b": "assert x == 5, f'x is {x}'",
        # the kernel talks over Unix sockets, not a TCP port (pipeline._kernel_manager_class)
        "03_c": "import json, ipykernel\nassert json.loads(ipykernel.get_connection_info())['transport'] == 'ipc'"})
    quiet = dict(workspace=workspace, notebook_dir=nbdir, progress=lambda *_: None)
    with pytest.raises(pipeline.PipelineError, match=r"02_b failed at cell \d+: AssertionError: x is 1") as err:
        pipeline.run({}, **quiet)
    first = re.search(r"workbench run --resume (\S+)", str(err.value)).group(1)
    assert pipeline.RUN_ENV not in os.environ  # the kernels' variable does not leak into this process
    con = workbench.connect(workspace)
    row = con.execute("select status, steps, failed_step, error, finished_at is not null, resumed_from "
                      "from pipeline_runs where pipeline_run_id = ?", [first]).fetchone()
    assert row[:3] == ("failed", ["01_a", "02_b", "03_c"], "02_b") and "x is 1" in row[3] and row[4]
    assert row[5] is None
    steps = con.execute("select position, step, status, seconds > 0, executed_notebook like ? from pipeline_steps "
                        "where pipeline_run_id = ? order by position", [f"%{first}/%", first]).fetchall()
    assert steps == [(1, "01_a", "completed", True, True), (2, "02_b", "failed", True, True)]
    # the training run a notebook started carries the pipeline run's id
    assert con.execute("select pipeline_run_id from runs").fetchall() == [(first,)]
    con.close()

    # resume: the failed step and the one after it, with the run's parameters and the fix given now
    out = pipeline.run({"x": "5"}, resume="last", **quiet)
    con = workbench.connect(workspace)
    row = con.execute("select status, steps, params_json, resumed_from from pipeline_runs "
                      "where pipeline_run_id = ?", [out.name]).fetchone()
    assert row == ("completed", ["02_b", "03_c"], '{"x": "5"}', first)
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["02_b.ipynb", "03_c.ipynb"]
    assert con.execute("select count(*) from pipeline_steps where pipeline_run_id = ? and status = 'completed'",
                       [out.name]).fetchone()[0] == 2
    assert undocumented(con) == []  # pipeline_runs, pipeline_steps, runs
    con.close()
    with pytest.raises(pipeline.PipelineError, match="that run completed; nothing to resume"):
        pipeline.run({}, resume="last", **quiet)
    with pytest.raises(pipeline.PipelineError, match="--resume nope: no such pipeline run"):
        pipeline.run({}, resume="nope", **quiet)
    with pytest.raises(pipeline.PipelineError, match="takes no --only"):
        pipeline.run({}, resume=first, only=["01"], **quiet)


def test_an_interrupted_run_is_recorded_and_a_live_run_is_not_resumed(tmp_path, workspace, monkeypatch):
    import socket
    import subprocess
    import sys

    nbdir = _tiny_notebooks(tmp_path / "nb", {"01_a": "pass", "02_b": "pass"})
    quiet = dict(workspace=workspace, notebook_dir=nbdir, progress=lambda *_: None)
    real = pipeline._execute

    def ctrl_c_in_02(pm, step, *args):
        if step.name == "02_b":
            raise KeyboardInterrupt
        return real(pm, step, *args)

    monkeypatch.setattr(pipeline, "_execute", ctrl_c_in_02)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run({}, **quiet)
    monkeypatch.setattr(pipeline, "_execute", real)
    con = workbench.connect(workspace)
    (run_id, status, failed), = con.execute("select pipeline_run_id, status, failed_step from pipeline_runs").fetchall()
    assert (status, failed) == ("interrupted", "02_b")
    # a run whose row says 'running' and whose process lives on this host is not resumed twice
    con.execute("update pipeline_runs set status = 'running', pid = ?", [os.getpid()])
    assert con.execute("select host from pipeline_runs").fetchone()[0] == socket.gethostname()
    con.close()
    with pytest.raises(pipeline.PipelineError, match=f"still running \\(pid {os.getpid()}"):
        pipeline.run({}, resume=run_id, **quiet)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    con = workbench.connect(workspace)
    con.execute("update pipeline_runs set pid = ?", [int(dead)])  # the process died without a word
    con.close()
    out = pipeline.run({}, resume=run_id, **quiet)
    assert [p.name for p in out.glob("*.ipynb")] == ["02_b.ipynb"]


def test_cli_resume_names_what_is_wrong(workspace, capsys):
    from workbench.cli import main

    assert main(["--workspace", str(workspace), "run", "--resume", "last"]) == 1
    assert "--resume last: no pipeline run is recorded in" in capsys.readouterr().err
    assert main(["--workspace", str(workspace), "run", "--resume", "nope", "--only", "01"]) == 1
    assert "takes no --only" in capsys.readouterr().err


def test_sigterm_from_a_scheduler_ends_the_run_as_interrupted(tmp_path, workspace):
    """A scheduler stops a job with SIGTERM: the run and its step are recorded as interrupted (not left
    'running'), the process exits 143, and the run can be resumed."""
    import signal
    import subprocess
    import sys
    import time

    nbdir = _tiny_notebooks(tmp_path / "nb", {"01_a": "pass", "02_b": "import time\ntime.sleep(120)"})
    script = (f"from pathlib import Path\nfrom workbench import pipeline\n"
              f"pipeline.run({{}}, workspace={str(workspace)!r}, notebook_dir=Path({str(nbdir)!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until step 02 runs (its kernel sleeping)
        time.sleep(1)
        if (workspace / "wb.sqlite").exists():
            con = workbench.connect(workspace)
            try:
                running = con.execute("select count(*) from pipeline_steps where step = '02_b' "
                                      "and status = 'running'").fetchone()[0]
            except Exception:
                running = 0
            con.close()
            if running:
                break
    else:
        proc.kill()
        pytest.fail("step 02_b never started: " + (proc.communicate()[0] or ""))
    time.sleep(2)  # inside the notebook's cell
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    con = workbench.connect(workspace)
    assert con.execute("select status, failed_step from pipeline_runs").fetchall() == [("interrupted", "02_b")]
    assert con.execute("select step, status from pipeline_steps order by position").fetchall() == [
        ("01_a", "completed"), ("02_b", "interrupted")]
    con.close()


def undocumented(con) -> list[str]:
    """The workspace tables (and their columns) that no table row of docs/schema.md names. A row's
    first cell names its tables (`fs_<g>__v<N>`: a pattern, whose columns are the user's); its other
    cells its columns; a row that says `every source column` or `likewise` (staging) lists none, and
    `every `T` column` adds T's."""
    from pathlib import Path

    md = (Path(pipeline.NOTEBOOK_DIR).parent / "docs" / "schema.md").read_text()
    rows: dict[str, tuple[set[str], str]] = {}
    for line in md.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(re.findall(r"`([^`]*)`", line))))
            for name in re.findall(r"`([^`]+)`", first):
                rows[name] = (words, line)
    def row(table):  # its own row, else the first pattern that matches it
        if table in rows:
            return rows[table]
        for name, value in rows.items():
            if "<" in name[1:] and re.fullmatch(re.sub(r"<[^>]+>", ".+", name), table):  # not '<flow output>' (any)
                return value
    out = []
    for (table,) in con.execute("select table_name from information_schema.tables "
                                "where table_catalog = 'wb' order by 1").fetchall():
        found = row(table)
        if found is None:
            out.append(table)
            continue
        words, line = found
        if table not in rows or "every source column" in line or "| likewise |" in line:
            continue  # a pattern's columns are the user's (a feature group, a flow's output); staging's the file's
        for inherited in re.findall(r"every `([a-z_]+)` column", line):
            words = words | rows.get(inherited, (set(), ""))[0]
        cols = [r[0] for r in con.execute("select column_name from information_schema.columns "
                                          "where table_catalog = 'wb' and table_name = ?", [table]).fetchall()]
        out += [f"{table}.{c}" for c in cols if c not in words]
    return out


def test_the_schema_doc_check_flags_what_the_doc_lacks(con):
    con.execute("create table mystery (a integer)")
    con.execute("create table split_leakage (text_norm varchar, n_splits bigint, surprise varchar)")
    con.execute("create table fs_profile__v1 (customer_id varchar, anything double)")  # a pattern: the user's columns
    assert undocumented(con) == ["mystery", "split_leakage.surprise"]
