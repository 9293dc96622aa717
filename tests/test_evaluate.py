"""Evaluation reports against hand-computed values on small, hand-written run tables."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

import workbench
from workbench import evaluate as ev
from workbench import runs

# run r1 (classifier): 6 test predictions, one free-text answer outside the label set
R1_TEST = [("e1", "a", "a"), ("e2", "a", "b"), ("e3", "b", "b"), ("e4", "c", "c"), ("e5", "c", "garbage"),
           ("e6", "b", "b")]
R1_VAL = [("e7", "a", "a"), ("e8", "b", "c")]
GROUPS = {"e1": ("north", "18-29"), "e2": ("north", "65+"), "e3": ("south", "18-29"), "e4": ("south", "18-29"),
          "e5": ("south", "65+"), "e6": ("east", "30-44"), "e7": ("east", "30-44"), "e8": ("west", "45-64")}


def _preds(rows):
    return pd.DataFrame(rows, columns=["example_id", "label", "prediction"]).assign(prompt=lambda d: "text " + d.example_id)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Read-only tables shared by this module's tests (written once: commits are the slow part)."""
    con = workbench.connect(tmp_path_factory.mktemp("evaluate") / "workspace")
    ex = pd.DataFrame([{"example_id": k, "region": r, "age_band": a, "text": f"text {k}",
                        "intent": dict((i, lab) for i, lab, _ in R1_TEST + R1_VAL)[k]} for k, (r, a) in GROUPS.items()])
    workbench.write_table(con, "examples", ex)
    runs.start_run(con, model="m", task="intent_classification", kind="classifier", config={}, run_id="r1")
    runs.log_metrics(con, "r1", {"loss": 2.0}, step=1, epoch=0.5)
    runs.log_metrics(con, "r1", {"loss": 1.5}, step=2, epoch=1.0)
    runs.log_metrics(con, "r1", {"loss": 1.9, "accuracy": 0.3}, step=0, epoch=0.0, split="validation")
    runs.log_metrics(con, "r1", {"loss": 1.2, "accuracy": 0.5}, step=2, epoch=1.0, split="validation")
    runs.log_metrics(con, "r1", {"loss": 1.4, "accuracy": 0.4}, step=4, epoch=2.0, split="validation")
    runs.log_metrics(con, "r1", {"accuracy": 4 / 6, "majority_baseline": 1 / 3}, step=2, epoch=1.0, split="test")
    runs.write_predictions(con, "r1", "test", _preds(R1_TEST))
    runs.write_predictions(con, "r1", "validation", _preds(R1_VAL))
    runs.finish_run(con, "r1")
    # run r2 (a causal-LM run): predictions keyed by sft_examples ids, no test metrics logged
    workbench.write_table(con, "sft_examples", pd.DataFrame(
        {"example_id": ["s1", "s2", "s3", "s4", "s7"], "source_row_id": ["e1", "e2", "e3", "e4", "e7"],
         "task": "intent_classification"}))
    runs.start_run(con, model="lm", task="intent_classification", kind="sft", config={}, run_id="r2")
    runs.write_predictions(con, "r2", "validation", _preds([("s7", "a", "a")]))
    runs.write_predictions(con, "r2", "test", _preds([("s1", "a", "a"), ("s2", "a", "a"), ("s3", "b", "a"),
                                                      ("s4", "c", "c")]))
    runs.finish_run(con, "r2")
    yield con
    con.close()


def test_majority_baseline_by_hand():
    assert ev.majority_baseline(["a", "a", "b"], ["a", "b", "b", "c"]) == 0.25
    assert ev.majority_baseline(["b", "a"], ["a", "b", "b"]) == pytest.approx(1 / 3)  # tie: alphabetical
    assert math.isnan(ev.majority_baseline(["a"], []))
    with pytest.raises(ValueError, match="no training labels"):
        ev.majority_baseline([], ["a"])


def test_split_majority_baseline(con):
    workbench.write_table(con, "examples", pd.DataFrame(
        {"example_id": ["1", "2", "3", "4", "5", "6"], "intent": ["a", "a", "b", "a", "b", "b"]}))
    workbench.write_table(con, "splits", pd.DataFrame(
        {"example_id": ["1", "2", "3", "4", "5", "6"],
         "split": ["train", "train", "train", "test", "test", "validation"]}))
    assert ev.split_majority_baseline(con, "test") == 0.5     # train says 'a'; test is a, b
    assert ev.split_majority_baseline(con, "validation") == 0.0
    with pytest.raises(ValueError, match="no table 'nope'"):
        ev.split_majority_baseline(con, table="nope")


def test_accuracy_by_split(tables):
    acc = ev.accuracy_by_split(tables, "r1")
    assert acc[["split", "n", "n_correct"]].values.tolist() == [["validation", 2, 1], ["test", 6, 4]]
    assert acc["accuracy"].tolist() == pytest.approx([0.5, 4 / 6])
    both = ev.accuracy_by_split(tables)
    assert both.loc[(both.run_id == "r2") & (both.split == "test"), "accuracy"].item() == 0.75


def test_confusion_matrix_counts_free_text_as_other(tables):
    cm = ev.confusion_matrix(tables, "r1")
    assert list(cm.index) == ["a", "b", "c"] and list(cm.columns) == ["a", "b", "c", ev.OTHER]
    assert cm.values.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]]
    val = ev.confusion_matrix(tables, "r1", "validation")  # labels from the rows: 'c' is outside them
    assert list(val.columns) == ["a", "b", ev.OTHER] and val.values.tolist() == [[1, 0, 0], [0, 0, 1]]
    val = ev.confusion_matrix(tables, "r1", "validation", labels=["a", "b", "c"])
    assert val.values.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    fig = ev.plot_confusion_matrix(cm, normalize=True)
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[:4] == ["0.50", "0.50", "0.00", "0.00"]


def test_class_report_by_hand(tables):
    rep = ev.class_report(tables, "r1").set_index("label")
    assert rep["precision"].tolist() == pytest.approx([1.0, 2 / 3, 1.0])
    assert rep["recall"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert rep["f1"].tolist() == pytest.approx([2 / 3, 0.8, 2 / 3])
    assert rep["support"].tolist() == [2, 2, 2] and rep["predicted"].tolist() == [1, 3, 1]


def test_causal_lm_answers_count_as_the_label_they_normalize_to(con):
    """A causal LM decodes ``technical_issue`` as ``technical _ issue`` (WordPiece): ``correct`` counts it
    right, so the confusion matrix and the per-class report must too (not as ``<other>``)."""
    runs.start_run(con, model="lm", task="intent_classification", kind="sft", config={}, run_id="lm1")
    rows = [("s1", "technical_issue", "technical _ issue"), ("s2", "technical_issue", "billing"),
            ("s3", "billing", "Billing."), ("s4", "account_access", "account _ access"),
            ("s5", "billing", "no idea")]
    # correct as the SFT trainer writes it: normalized exact match
    runs.write_predictions(con, "lm1", "test", _preds(rows).assign(correct=[True, False, True, True, False]))
    assert ev.accuracy_by_split(con, "lm1")["n_correct"].tolist() == [3]
    cm = ev.confusion_matrix(con, "lm1")
    assert list(cm.columns) == ["account_access", "billing", "technical_issue", ev.OTHER]
    assert cm.values.tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 1, 1, 0]]
    rep = ev.class_report(con, "lm1").set_index("label")
    assert rep["recall"].tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert rep["predicted"].tolist() == [1, 2, 1]
    assert ev.as_labels(["technical issue", "refund", "x"], ["technical_issue"]) == ["technical_issue", "refund", "x"]


def test_wrong_predictions(tables):
    wrong = ev.wrong_predictions(tables, "r1")
    assert wrong[["example_id", "label", "prediction"]].values.tolist() == [["e2", "a", "b"], ["e5", "c", "garbage"]]
    assert len(ev.wrong_predictions(tables, "r1", limit=1)) == 1
    with pytest.raises(ValueError, match="no predictions on the 'train' split"):
        ev.wrong_predictions(tables, "r1", "train")


def test_group_accuracy_joins_examples_and_maps_sft_ids(tables):
    by_region = ev.group_accuracy(tables, "r1", "region")
    assert by_region[["region", "n"]].values.tolist() == [["east", 1], ["north", 2], ["south", 3]]
    assert by_region["accuracy"].tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    both = ev.group_accuracy(tables, "r1", ["region", "age_band"])
    assert both[both.region == "south"][["age_band", "n"]].values.tolist() == [["18-29", 2], ["65+", 1]]
    assert both.loc[both.age_band == "65+", "accuracy"].tolist() == [0.0, 0.0]
    sft = ev.group_accuracy(tables, "r2", "age_band")  # s1..s4 -> e1..e4
    assert sft[["age_band", "n"]].values.tolist() == [["18-29", 3], ["65+", 1]]
    assert sft["accuracy"].tolist() == pytest.approx([2 / 3, 1.0])


def test_curves_and_plot(tables):
    c = ev.metric_curves(tables, "r1")
    assert c["step"].tolist() == [0, 1, 2, 4]
    assert c["validation_accuracy"].tolist()[::2] == [0.3, 0.5] and math.isnan(c["validation_accuracy"][1])
    assert c["train_loss"].dropna().tolist() == [2.0, 1.5]
    fig = ev.plot_curves(tables, "r1")
    loss_ax, acc_ax = fig.axes
    assert [list(line.get_ydata()) for line in loss_ax.lines] == [[2.0, 1.5], [1.9, 1.2, 1.4]]
    assert list(acc_ax.lines[0].get_ydata()) == [0.3, 0.5, 0.4]
    assert acc_ax.collections[0].get_offsets().tolist() == [[2.0, pytest.approx(4 / 6)]]  # test, once
    assert acc_ax.lines[1].get_ydata()[0] == pytest.approx(1 / 3)  # majority baseline
    assert isinstance(ev.plot_curves(tables, ["r1", "r1"]), Figure)
    with pytest.raises(ValueError, match="no loss or accuracy"):
        ev.metric_curves(tables, "r2")


def test_run_summary_and_fallbacks(tables):
    assert ev.run_summary(tables, "r1") == ("test accuracy 0.67 vs majority baseline 0.33 (+33 points); "
                                            "validation accuracy 0.50 at step 2 "
                                            "(classifier run r1, task intent_classification)")
    r2 = ev.run_results(tables, "r2")  # from predictions; baseline: validation's top label ('a') on test
    assert r2["test_accuracy"] == 0.75 and r2["majority_baseline"] == 0.5
    assert ev.run_summary(tables, "r2").startswith("test accuracy 0.75 vs majority baseline 0.50 (+25 points)")
    with pytest.raises(ValueError, match="no run 'r9'"):
        ev.run_summary(tables, "r9")


def test_compare_runs(tables):
    t = ev.compare_runs(tables)
    # ordered by validation accuracy, never by test (r2 has the better test figure but no validation one)
    assert t["run_id"].tolist() == ["r1", "r2"]
    assert t.set_index("run_id").loc["r1", "best_validation_accuracy"] == 0.5
    assert t.set_index("run_id").loc["r1", "tested_step"] == 2
    assert ev.compare_runs(tables, kind="classifier")["run_id"].tolist() == ["r1"]
    assert ev.compare_runs(tables, ["r1"])["run_id"].tolist() == ["r1"]
    assert ev.compare_runs(tables, task="other").empty
    fig = ev.plot_compare_runs(t)
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([4 / 6, 0.75])


def test_latest_run(tables, con):
    assert ev.latest_run(tables) == "r2"  # finished last
    assert ev.latest_run(tables, "classifier") == "r1"
    assert ev.latest_run(tables, "cpt") == "r2"  # no run of that kind: the latest of any kind
    with pytest.raises(ValueError, match="no runs yet"):
        ev.latest_run(con)


def test_plot_group_accuracy(tables):
    t = ev.group_accuracy(tables, "r1", "region")
    fig = ev.plot_group_accuracy(t, "region", overall=4 / 6)
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == pytest.approx([1.0, 0.5, 2 / 3])
    assert [t.get_text() for t in ax.texts] == ["n=1", "n=2", "n=3"]


def test_compare_runs_rounds_accuracies(tables):
    t = ev.compare_runs(tables, ["r1"], digits=2)
    assert t.loc[0, "test_accuracy"] == 0.67 and t.loc[0, "majority_baseline"] == 0.33
