"""Notebooks 09 (fine-tune) and 10 (evaluate) run headless through the pipeline runner.

The spine's sample data (ingest, clean, split) fills the workspace; step 05 renders sft_examples;
notebook 09 fine-tunes a tiny randomly initialised BERT (with the MiniLM tokenizer) and the offline tiny
causal LM for one epoch, so the test takes seconds, not minutes.
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

    # step 05 writes sft_examples, so notebook 09 also trains the causal LM (tiny, without the test split)
    params = {"classifier_model": str(tiny), "classifier_learning_rate": "0.01", "classifier_epochs": "3",
              "classifier_batch_size": "16", "classifier_patience": "0", "n_preview": "3", "group_cols": '["age_band"]',
              "causal_config": '{"epochs": 1, "max_length": 48, "token_budget": 128, "eval_at_start": false, '
                               '"max_eval_examples": 4, "max_new_tokens": 4, "evaluate_test": false}'}
    out = pipeline.run(params, only=["05", "09", "10"], workspace=workspace, progress=lambda msg: None)

    con = workbench.connect(workspace)
    try:
        sft_id, sft_status = con.execute("select run_id, status from runs where kind = 'sft'").fetchone()
        tps = con.execute("select value from run_metrics where run_id = ? and metric = 'real_tokens_per_s'",
                          [sft_id]).fetchone()[0]
        assert sft_status == "completed"
        run_id, status, kind = con.execute("select run_id, status, kind from runs where kind = 'classifier'").fetchone()
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
    assert "causal LM is skipped" not in text09
    assert _images(out / "09_finetune.ipynb") >= 2  # loss and validation-accuracy curves of both runs
    # the causal LM's throughput per evaluation window, from run_metrics
    assert re.search(r"step\s*\|\s*real_tok_s\s*\|\s*trained_tok_s\s*\|\s*padding\s*\|\s*mfu\s*\|\s*peak_gb"
                     r"\s*\|\s*first_step_s", text09), text09[-3000:]
    assert f"{round(tps):.0f}" in text09  # the window's figure as the table shows it
    assert "the test split was not scored" in text09  # evaluate_test false: no test accuracy to print

    text10 = _outputs(out / "10_evaluate.ipynb")
    assert f"classifier run {run_id}" in text10 and "precision" in text10
    assert _images(out / "10_evaluate.ipynb") >= 3  # runs, confusion matrix, one group column

