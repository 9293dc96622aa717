"""Notebooks 09 (fine-tune) and 10 (evaluate) run headless through the pipeline runner.

The spine's sample data (ingest, clean, split) fills the workspace; notebook 09 fine-tunes a tiny
randomly initialised BERT (with the MiniLM tokenizer) so the test takes seconds, not minutes.
Notebook 09 on step 07's examples_with_features is tested in tests/test_features.py (with notebook 07,
on the same spine and run of 07).
"""
from __future__ import annotations

import re

import nbformat
import pytest

import workbench
from workbench import pipeline
from workbench.data import build_spine

from test_classifier import build_tiny_model

pytestmark = pytest.mark.slow


def _outputs(path) -> str:
    nb = nbformat.read(path, as_version=4)
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") if out.get("output_type") == "stream"
                        else out.get("data", {}).get("text/plain", ""))
    return "\n".join(text)


def _images(path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def test_notebooks_09_and_10_train_record_and_report(workspace, tmp_path):
    con = workbench.connect(workspace)
    build_spine(con, rows=300, seed=7)
    n_split = dict(con.execute("select split, count(*) from splits group by split").fetchall())
    con.close()
    tiny = build_tiny_model(tmp_path / "tiny")

    params = {"classifier_model": str(tiny), "classifier_learning_rate": "0.01", "classifier_epochs": "3",
              "classifier_batch_size": "16", "classifier_patience": "0", "train_causal_lm": "false",
              "n_preview": "3", "group_cols": '["age_band"]'}
    out = pipeline.run(params, only=["09", "10"], workspace=workspace, progress=lambda msg: None)

    con = workbench.connect(workspace)
    try:
        run_id, status, kind = con.execute("select run_id, status, kind from runs").fetchone()
        assert (status, kind) == ("completed", "classifier")
        val = con.execute("select step, epoch from run_metrics where run_id = ? and split = 'validation'"
                          " and metric = 'accuracy' order by step", [run_id]).fetchall()
        assert [e for _, e in val] == [0.0, 1.0, 2.0, 3.0]  # untrained, then each epoch end
        n_test = con.execute("select count(*) from run_metrics where run_id = ? and split = 'test'"
                             " and metric = 'accuracy'", [run_id]).fetchone()[0]
        assert n_test == 1
        preds = dict(con.execute("select split, count(*) from predictions where run_id = ? group by split",
                                 [run_id]).fetchall())
        assert preds == {"validation": n_split["validation"], "test": n_split["test"]}
        assert (workspace / "models" / run_id / "config.json").exists()
    finally:
        con.close()

    text09 = _outputs(out / "09_finetune.ipynb")
    assert re.search(r"label\s*\|\s*train\s*\|\s*validation\s*\|\s*test", text09)  # the label x split table
    assert f"run {run_id})" in text09 and "vs majority baseline" in text09
    assert "causal LM is skipped" not in text09  # train_causal_lm=false: not even tried
    assert _images(out / "09_finetune.ipynb") >= 1  # loss and validation-accuracy curves

    text10 = _outputs(out / "10_evaluate.ipynb")
    assert f"classifier run {run_id}" in text10 and "precision" in text10
    assert _images(out / "10_evaluate.ipynb") >= 3  # runs, confusion matrix, one group column


def test_notebook_09_trains_the_causal_lm_and_shows_its_throughput(workspace):
    """The causal-LM part of notebook 09 (classifier off) on the spine's sample and step 05's sft_examples:
    it trains, and the throughput table (per evaluation window, from run_metrics) shows the run's figures."""
    con = workbench.connect(workspace)
    build_spine(con, rows=300, seed=7)
    con.close()
    params = {"train_classifier_model": "false", "n_preview": "2",
              "causal_config": '{"epochs": 1, "max_length": 48, "token_budget": 128, "eval_at_start": false, '
                               '"max_eval_examples": 4, "max_new_tokens": 4, "evaluate_test": false}'}
    out = pipeline.run(params, only=["05", "09"], workspace=workspace, progress=lambda msg: None)
    con = workbench.connect(workspace)
    try:
        run_id, status, kind = con.execute("select run_id, status, kind from runs").fetchone()
        tps = con.execute("select value from run_metrics where run_id = ? and metric = 'real_tokens_per_s'",
                          [run_id]).fetchone()[0]
    finally:
        con.close()
    assert (status, kind) == ("completed", "sft")
    text09 = _outputs(out / "09_finetune.ipynb")
    assert re.search(r"step\s*\|\s*real_tok_s\s*\|\s*trained_tok_s\s*\|\s*padding\s*\|\s*mfu\s*\|\s*peak_gb"
                     r"\s*\|\s*first_step_s", text09), text09[-3000:]
    assert f"{round(tps):.0f}" in text09  # the window's figure as the table shows it
    assert "the test split was not scored" in text09  # evaluate_test false: no test accuracy to print
