"""Hyperparameter sweeps: chosen on validation, test once, resume, budgets, failures, seeds, notebook.

Trials train a tiny randomly initialised BERT (2 layers, hidden 32) with the offline MiniLM
tokenizer, on the generated sample data (``build_spine``, about 270 examples) or on a small
synthetic intent set: seconds per trial.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import workbench
from workbench import classifier as C
from workbench import sweep as S
from workbench.data import build_spine

from test_classifier import build_tiny_model, write_examples

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-bert")))


def base(model: str, **kw) -> dict:
    """Fixed trial config: the tiny model, one thread, no early stopping."""
    return {"model": model, "threads": 1, "batch_size": 16, "patience": 0, **kw}


def test_rows(con, sweep_id: str) -> pd.DataFrame:
    """Every split='test' metric row of the sweep's runs."""
    return con.execute("""select r.run_id, m.metric, m.value, m.step from runs as r join run_metrics as m using (run_id)
        where r.sweep_id = ? and m.split = 'test' order by m.metric""", [sweep_id]).df()


test_rows.__test__ = False  # a helper, not a test


# --------------------------------------------------------------------------- the main contract

def test_sweep_on_sample_data_chooses_on_validation_and_tests_once(con, tiny_model):
    build_spine(con, rows=300, seed=7)
    space = {"learning_rate": {"low": 1e-7, "high": 3e-2, "log": True}, "epochs": [1, 2]}
    # two sensible trials and a hopeless one first (the median pruner needs finished trials to
    # compare with), then one the TPE model proposes
    first = [{"learning_rate": 1e-2, "epochs": 2}, {"learning_rate": 3e-3, "epochs": 2},
             {"learning_rate": 1e-7, "epochs": 2}]
    seen = []
    res = S.sweep(space, 4, con=con, strategy="tpe", enqueue=first, config=base(tiny_model), seed=3,
                  progress=False, on_trial_end=seen.append)

    trials = con.execute("select * from sweep_trials where sweep_id = ? order by trial", [res.sweep_id]).df()
    assert len(trials) == 4 and [r["trial"] for r in seen] == [0, 1, 2, 3]
    assert [json.loads(p) for p in trials["params_json"][:3]] == first
    assert set(trials["status"]) <= {"completed", "pruned"}
    done = trials[trials["status"] == "completed"]
    # the tuning found something: the best validation accuracy beats the worst trial's
    assert done["validation_metric"].max() > trials["validation_metric"].min()

    # the hopeless trial was pruned after an epoch where it was worse than the median of the others
    hopeless = trials.iloc[2]
    assert hopeless["status"] == "pruned"
    epoch = int(hopeless["error"].split("pruned after epoch ")[1].split(":")[0])
    at_epoch = dict(con.execute("""select run_id, value from run_metrics where split = 'validation'
        and metric = 'accuracy' and epoch = ?""", [float(epoch)]).fetchall())
    assert hopeless["validation_metric"] == pytest.approx(at_epoch[hopeless["run_id"]])
    assert at_epoch[hopeless["run_id"]] < pd.Series([at_epoch[r] for r in trials["run_id"][:2]]).median()
    assert con.execute("select status from runs where run_id = ?", [hopeless["run_id"]]).fetchone()[0] == "interrupted"
    assert epoch < 2 and not (con_root(con) / "models" / hopeless["run_id"]).exists()  # stopped early, checkpoint gone

    # every trial is a run tagged with the sweep, with its parameters in the run's config
    tagged = con.execute("select run_id, config_json, status, sweep_trial from runs where sweep_id = ?",
                         [res.sweep_id]).df()
    assert sorted(tagged["run_id"]) == sorted(trials["run_id"])
    # the trainer recorded the trial number itself: trial -> run is a lookup, not a guess by config
    assert dict(zip(tagged["run_id"], tagged["sweep_trial"])) == dict(zip(trials["run_id"], trials["trial"]))
    for _, t in trials.iterrows():
        cfg = json.loads(tagged.set_index("run_id").loc[t["run_id"], "config_json"])
        for k, v in json.loads(t["params_json"]).items():
            assert cfg[k] == v
    # a trial's recorded metric is its best validation accuracy in run_metrics
    for _, t in done.iterrows():
        best = con.execute("select max(value) from run_metrics where run_id = ? and split = 'validation'"
                           " and metric = 'accuracy'", [t["run_id"]]).fetchone()[0]
        assert t["validation_metric"] == pytest.approx(best)

    # the best is chosen on validation only
    best_row = done.sort_values(["validation_metric", "trial"], ascending=[False, True]).iloc[0]
    assert (res.best_trial, res.best_run_id) == (best_row["trial"], best_row["run_id"])
    assert res.best_validation == pytest.approx(best_row["validation_metric"])
    assert res.best_params == json.loads(best_row["params_json"])

    # test evaluated exactly once: one set of test rows, for the chosen run, none for other trials
    tr = test_rows(con, res.sweep_id)
    assert (tr["run_id"] == res.best_run_id).all()
    assert sorted(tr["metric"]) == ["accuracy", "loss", "majority_baseline"]
    preds = con.execute("select run_id, split, count(*) as n from predictions where run_id in"
                        " (select run_id from runs where sweep_id = ?) group by all", [res.sweep_id]).df()
    assert set(preds.loc[preds["split"] == "test", "run_id"]) == {res.best_run_id}
    n_test = con.execute("select count(*) from splits where split = 'test'").fetchone()[0]
    assert int(preds.loc[preds["split"] == "test", "n"].iloc[0]) == n_test
    sweep_row = con.execute("select status, test_metric, test_metric_name, best_run_id from sweeps"
                            " where sweep_id = ?", [res.sweep_id]).fetchone()
    acc = float(tr.loc[tr["metric"] == "accuracy", "value"].iloc[0])
    assert sweep_row == ("completed", pytest.approx(acc), "test_accuracy", res.best_run_id)
    assert res.test_metric == pytest.approx(acc)
    assert "evaluated once" in res.summary() and f"best trial {res.best_trial}" in res.summary()

    # the recorded test predictions are what the saved (chosen) model predicts
    test = con.execute("select prompt, prediction from predictions where run_id = ? and split = 'test'"
                       " order by example_id", [res.best_run_id]).df()
    assert C.predict(res.best_run_id, test["prompt"].tolist(), con=con) == test["prediction"].tolist()
    # keep_models='best': only the chosen trial's model remains
    assert sorted(p.name for p in (con_root(con) / "models").iterdir()) == [res.best_run_id]

    # a second test evaluation is refused, and so is extending a tested sweep
    with pytest.raises(S.SweepError, match="once"):
        S.evaluate_best_on_test(con, res.sweep_id)
    with pytest.raises(S.SweepError, match="already evaluated"):
        S.sweep(None, 6, con=con, sweep_id=res.sweep_id, progress=False)
    assert len(test_rows(con, res.sweep_id)) == 3


def con_root(con) -> Path:
    return C.workspace_root(con)


def test_trial_runs_are_found_by_sweep_and_trial_not_by_config(con, tiny_model):
    """Runs with the very same config as a trial (another kernel's plain run, another sweep's trial,
    started later) never get mistaken for it: the trainer records sweep_id and sweep_trial."""
    write_examples(con)
    res = S.sweep({"learning_rate": [1e-3]}, 1, con=con, strategy="grid", config=base(tiny_model, epochs=1),
                  progress=False, evaluate_test=False)
    trial_run = res.trials["run_id"].iloc[0]
    assert con.execute("select sweep_id, sweep_trial from runs where run_id = ?", [trial_run]).fetchone() \
        == (res.sweep_id, 0)
    # a plain run and another sweep's trial 0, both with the trial's exact config, both newer
    want = con.execute("select config_json from runs where run_id = ?", [trial_run]).fetchone()[0]
    cfg = C.ClassifierConfig(**json.loads(want))
    plain = C.train_classifier(con, cfg, progress=False).run_id
    other = C.train_classifier(con, cfg, progress=False, sweep_id="sweep-other", sweep_trial=0).run_id
    assert {con.execute("select config_json from runs where run_id = ?", [r]).fetchone()[0]
            for r in (plain, other)} == {want}
    assert con.execute("select sweep_id, sweep_trial from runs where run_id = ?", [plain]).fetchone() == (None, None)
    sw = S._Sweep(con, res.sweep_id, "classifier", "validation_accuracy", "maximize", "accuracy", {}, 0, None, False)
    assert S._trial_run(sw, 0) == trial_run and S._trial_run(sw, 1) is None
    assert S._trial_run(dataclasses.replace(sw, sweep_id="sweep-other"), 0) == other


def test_guard_refuses_selection_on_test_metrics(con):
    write_examples(con, n=60)
    for metric in ("test_accuracy", "test_loss", "TEST_ACCURACY"):
        with pytest.raises(S.SweepError, match="not allowed.*validation split"):
            S.sweep({"learning_rate": [1e-3]}, 1, metric=metric, con=con, progress=False)
    with pytest.raises(S.SweepError, match="validation_f1.*validation_accuracy"):
        S.sweep({"learning_rate": [1e-3]}, 1, metric="validation_f1", con=con, progress=False)
    assert con.execute("select count(*) from sweeps").fetchone()[0] == 0  # refused before anything ran


def test_bad_input_is_refused_before_anything_runs(con):
    write_examples(con, n=60)
    cases = [
        ({"learning_rte": [1e-3]}, {}, "learning_rte.*not a classifier config field"),
        ({"lora_r": [8]}, {}, "lora_r.*not a classifier config field"),
        ({"template": ["a", "b"]}, {}, "template choice"),
        ({"learning_rate": {"low": 0, "high": 1e-3, "log": True}}, {}, "log range needs low > 0"),
        ({"learning_rate": {"low": 1e-3, "high": 1e-4}}, {}, "low < high"),
        ({"learning_rate": {"low": 1e-4, "high": 1e-3}}, {"strategy": "grid"}, "grid needs a list"),
        ({"learning_rate": [1e-3]}, {"strategy": "bayes"}, "strategy='bayes'"),
        ({"learning_rate": [1e-3]}, {"config": {"learning_rate": 1e-3}}, "fixed and also in the search space"),
        ({"learning_rate": [1e-3]}, {"budget": None}, "unbounded"),
        ({"learning_rate": [1e-3]}, {"sweep_id": "sweep-nope"}, "no such sweep"),
    ]
    for space, kw, match in cases:
        kw = {"budget": 2, **kw}
        with pytest.raises(S.SweepError, match=match):
            S.sweep(space, kw.pop("budget"), con=con, progress=False, **kw)
    assert con.execute("select count(*) from sweeps").fetchone()[0] == 0


# --------------------------------------------------------------------------- failures, budgets, pruning

def test_failing_trial_is_recorded_and_the_sweep_continues(con, tiny_model, capsys):
    write_examples(con, n=90)
    # the grid has a learning rate the trainer rejects: that trial fails, the other runs
    res = S.sweep({"learning_rate": [-1.0, 1e-2]}, 10, con=con, strategy="grid",
                  config=base(tiny_model, epochs=1), progress=False)
    t = res.trials.set_index("learning_rate")
    assert len(res.trials) == 2  # a grid stops at its size, whatever the trial budget
    assert t.loc[-1.0, "status"] == "failed" and "learning_rate must be > 0" in t.loc[-1.0, "error"]
    assert pd.isna(t.loc[-1.0, "validation_metric"])
    assert t.loc[0.01, "status"] == "completed" and res.best_run_id == t.loc[0.01, "run_id"]
    assert res.status == "completed" and res.test_metric is not None

    # the CLI shows the same sweep
    from workbench import cli

    assert cli.main(["sweep", "show", res.sweep_id]) == 0
    out = capsys.readouterr().out
    assert "learning_rate must be > 0" in out and "evaluated once" in out
    assert cli.main(["sweep", "list"]) == 0 and res.sweep_id in capsys.readouterr().out


def test_time_budget_stops_the_running_trial(con, tiny_model):
    write_examples(con, n=90)
    started = time.monotonic()
    res = S.sweep({"learning_rate": [1e-2, 2e-2]}, {"seconds": 3}, con=con, strategy="random",
                  config=base(tiny_model, epochs=200), progress=False)
    took = time.monotonic() - started
    row = con.execute("select status, elapsed_s, error from sweeps where sweep_id = ?", [res.sweep_id]).fetchone()
    assert row[0] == "failed" and row[2] == "no trial completed"
    assert 3 <= row[1] < 6 and took < 10
    assert res.trials["status"].tolist() == ["stopped"]
    assert "time budget" in res.trials["error"].iloc[0]
    run = con.execute("select status, sweep_id from runs where run_id = ?", [res.trials["run_id"].iloc[0]]).fetchone()
    assert run == ("interrupted", res.sweep_id)
    assert res.test_metric is None and len(test_rows(con, res.sweep_id)) == 0


# --------------------------------------------------------------------------- determinism and resume

def test_same_seed_same_trials(con, tiny_model):
    write_examples(con, n=90)
    space = {"learning_rate": {"low": 1e-3, "high": 3e-2, "log": True}, "batch_size": [8, 16],
             "warmup_ratio": {"low": 0.0, "high": 0.2}}
    cfg = base(tiny_model, epochs=1)
    cfg.pop("batch_size")
    runs = [S.sweep(space, 2, con=con, strategy="random", config=cfg, seed=s, progress=False, evaluate_test=False)
            for s in (5, 5, 6)]
    params = [r.trials.sort_values("trial")[["learning_rate", "batch_size", "warmup_ratio"]].values.tolist()
              for r in runs]
    assert params[0] == params[1] and params[0] != params[2]
    metrics = [r.trials.sort_values("trial")["validation_metric"].tolist() for r in runs[:2]]
    assert metrics[0] == metrics[1]  # the trials themselves are deterministic too
    assert all(r.test_metric is None for r in runs)  # evaluate_test=False: left for later, once
    assert S.evaluate_best_on_test(con, runs[0].sweep_id) == S.load_sweep(con, runs[0].sweep_id).test_metric


def test_resume_after_an_interruption_skips_finished_trials(con):
    """Between trials (KeyboardInterrupt from a callback); trials fail fast here (max_length=0):
    the sampler's draws do not depend on outcomes with strategy='random'."""
    write_examples(con, n=60)
    space = {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "warmup_ratio": [0.0, 0.1]}
    kw = dict(con=con, strategy="random", config={"max_length": 0}, seed=11, progress=False)

    def stop_after_two(row):
        if row["trial"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S.sweep(space, 4, on_trial_end=stop_after_two, **kw)
    sid, status = con.execute("select sweep_id, status from sweeps").fetchone()
    assert status == "interrupted"
    first = con.execute("select trial, finished_at from sweep_trials where sweep_id = ? order by trial", [sid]).fetchall()
    assert [t for t, _ in first] == [0, 1]

    ran = []
    res = S.sweep(space, 4, sweep_id=sid, on_trial_end=ran.append, **kw)
    assert [r["trial"] for r in ran] == [2, 3]  # finished trials are not run again
    again = con.execute("select trial, finished_at from sweep_trials where sweep_id = ? and trial < 2 order by trial",
                        [sid]).fetchall()
    assert again == first
    # resume=True finds the unfinished sweep by its arguments too; this one is finished, so a new one starts
    uninterrupted = S.sweep(space, 4, resume=True, **kw)
    assert uninterrupted.sweep_id != sid
    cols = ["trial", "learning_rate", "warmup_ratio"]
    assert res.trials.sort_values("trial")[cols].values.tolist() == \
        uninterrupted.trials.sort_values("trial")[cols].values.tolist()


@pytest.mark.slow
def test_resume_after_a_kill_mid_trial_continues_that_trial(workspace, tiny_model):
    con = workbench.connect(workspace)
    write_examples(con, n=100)
    con.close()
    space = {"learning_rate": [1e-2, 2e-2]}
    cfg = base(tiny_model, epochs=20, batch_size=8)
    script = textwrap.dedent(f"""
        import workbench
        from workbench import sweep as S
        S.sweep({space!r}, 2, con=workbench.connect({str(workspace)!r}), strategy="grid", config={cfg!r},
                progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    con = workbench.connect(workspace)
    try:
        deadline, run_id = time.monotonic() + 120, None
        while time.monotonic() < deadline and run_id is None:  # wait for trial 0's first checkpoint
            time.sleep(0.3)
            row = con.execute("select run_id from sweep_trials where trial = 0 and run_id is not null").fetchone() \
                if workbench.table_exists(con, "sweep_trials") else None
            if row and (workspace / "models" / row[0] / C.CHECKPOINT).exists():
                run_id = row[0]
        assert run_id, proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sid = con.execute("select sweep_id from sweeps").fetchone()[0]
        assert con.execute("select status from sweep_trials where trial = 0").fetchone()[0] == "running"

        ran = []
        res = S.sweep(None, 1, con=con, sweep_id=sid, on_trial_end=ran.append, progress=False)  # a smaller budget
        assert [r["trial"] for r in ran] == [0]
        assert ran[0]["run_id"] == run_id and ran[0]["status"] == "completed"  # continued, not started over
        assert con.execute("select count(*) from runs where sweep_id = ?", [sid]).fetchone()[0] == 1
        evals = con.execute("select count(*) from run_metrics where run_id = ? and split = 'validation'"
                            " and metric = 'accuracy'", [run_id]).fetchone()[0]
        assert evals == 21  # step 0 and each of 20 epochs, once each despite the kill
        assert res.status == "completed" and len(test_rows(con, sid)) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        con.close()


# --------------------------------------------------------------------------- the notebook

@pytest.mark.slow
def test_notebook_runs_a_small_sweep_headless(workspace, tiny_model):
    from workbench import pipeline

    con = workbench.connect(workspace)
    build_spine(con, rows=300, seed=7)
    con.close()
    assert "12_tune_hyperparameters" in pipeline.OPTIONAL_STEPS
    params = {"classifier_model": tiny_model, "sweep_trials": "3", "sweep_config": '{"batch_size": 16}',
              "sweep_space": '{"learning_rate": {"low": 1e-4, "high": 3e-2, "log": true}, "epochs": [1]}'}
    out = pipeline.run(params, only=["12"], workspace=workspace, progress=lambda msg: None)

    con = workbench.connect(workspace)
    try:
        sid, status, best_run, test_metric = con.execute(
            "select sweep_id, status, best_run_id, test_metric from sweeps").fetchone()
        assert status == "completed" and test_metric is not None
        assert con.execute("select count(*) from sweep_trials where sweep_id = ?", [sid]).fetchone()[0] == 3
        assert con.execute("select count(*) from runs where sweep_id = ?", [sid]).fetchone()[0] == 3
        assert set(test_rows(con, sid)["run_id"]) == {best_run}
    finally:
        con.close()
    nb = nbformat.read(out / "12_tune_hyperparameters.ipynb", as_version=4)
    text = "\n".join(o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain", "")
                     for c in nb.cells for o in c.get("outputs", []))
    assert f"test evaluated once, for run {best_run}" in text
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) == 2


# --------------------------------------------------------------------------- SFT trials

def write_sft_examples(con, n: int = 48) -> None:
    """Small ``sft_examples`` (intent_classification, choices) and ``splits`` tables per docs/schema.md."""
    from test_classifier import PHRASES

    labels = sorted(PHRASES)
    rows, splits = [], []
    for i in range(n):
        intent = labels[i % len(labels)]
        src = f"ex{i:04d}"
        rows.append({"example_id": f"intent_v1|{src}", "source_row_id": src, "task": "intent_classification",
                     "template_id": "intent_v1", "prompt": f"Message: {PHRASES[intent][i % 3]}\nIntent:",
                     "completion": intent, "choices": labels})
        k = i * 7 % 10
        splits.append({"example_id": src, "split": "train" if k < 6 else "validation" if k < 8 else "test",
                       "seed": 0, "batch_id": 1, "assigned_at": pd.Timestamp("2026-01-01")})
    workbench.write_table(con, "sft_examples", pd.DataFrame(rows))
    workbench.write_table(con, "splits", pd.DataFrame(splits))


@pytest.mark.slow
def test_sft_sweep_over_lora_and_token_budget(con):
    pytest.importorskip("workbench.finetune")
    write_sft_examples(con)
    fixed = {"epochs": 1, "max_length": 48, "eval_at_start": False, "max_eval_examples": 6, "max_new_tokens": 5,
             "warmup_steps": 2, "patience": 0, "micro_batch_size": 2}
    space = {"learning_rate": [3e-3], "lora": [True], "lora_rank": [4, 8], "lora_alpha": [16], "lora_dropout": [0.0],
             "token_budget": [96, 128]}
    res = S.sweep(space, 2, metric="validation_choice_accuracy", con=con, strategy="grid", trainer="sft",
                  config=fixed, progress=False)
    assert res.status == "completed" and len(res.trials) == 2
    assert set(res.trials["status"]) == {"completed"}
    runs_ = con.execute("select run_id, kind, config_json, sweep_trial from runs where sweep_id = ?",
                        [res.sweep_id]).df()
    assert dict(zip(runs_["run_id"], runs_["sweep_trial"])) == dict(zip(res.trials["run_id"], res.trials["trial"]))
    assert sorted(runs_["run_id"]) == sorted(res.trials["run_id"]) and set(runs_["kind"]) == {"sft"}
    for _, t in res.trials.iterrows():  # the aliases reached the SFT config: lr, lora_r
        cfg = json.loads(runs_.set_index("run_id").loc[t["run_id"], "config_json"])
        assert (cfg["lr"], cfg["lora_r"], cfg["token_budget"], cfg["metric"]) == \
            (3e-3, t["lora_r"], t["token_budget"], "choice_accuracy")
    tr = test_rows(con, res.sweep_id)
    assert set(tr["run_id"]) == {res.best_run_id}  # trials' own test rows are gone; one evaluation remains
    assert tr.groupby("metric").size().max() == 1 and "choice_accuracy" in set(tr["metric"])
    assert res.test_metric_name == "test_choice_accuracy"
    assert res.test_metric == pytest.approx(float(tr.loc[tr["metric"] == "choice_accuracy", "value"].iloc[0]))


@pytest.mark.slow
def test_sft_test_predictions_are_judged_as_the_test_accuracy_is(con):
    """The chosen SFT trial's test predictions: ``correct`` is the normalized exact match the accuracy
    uses (the WordPiece tokenizer decodes ``yes_please`` as ``yes _ please``), and the test rows sit at
    the step whose weights were kept."""
    from workbench.evaluate import normalize_answer

    rows, splits = [], []
    for i in range(40):  # a trivial two-label task the tiny model learns in a dozen steps
        src = f"ex{i:03d}"
        rows.append({"example_id": f"t|{src}", "source_row_id": src, "task": "intent_classification",
                     "template_id": "t", "prompt": ("do you want tea" if i % 2 == 0 else "are you full") + "\nAnswer:",
                     "completion": ["yes_please", "no_thanks"][i % 2], "choices": ["no_thanks", "yes_please"]})
        k = i * 7 % 10
        splits.append({"example_id": src, "split": "train" if k < 6 else "validation" if k < 8 else "test",
                       "seed": 0, "batch_id": 1, "assigned_at": pd.Timestamp("2026-01-01")})
    workbench.write_table(con, "sft_examples", pd.DataFrame(rows))
    workbench.write_table(con, "splits", pd.DataFrame(splits))
    fixed = {"epochs": 6, "token_budget": 64, "micro_batch_size": 2, "max_length": 32, "eval_at_start": False,
             "max_new_tokens": 5, "warmup_steps": 2, "patience": 0, "threads": 1}
    res = S.sweep({"lr": [3e-3]}, 1, con=con, strategy="grid", trainer="sft", config=fixed, progress=False)
    preds = con.execute("select prediction, label, correct from predictions where run_id = ? and split = 'test'",
                        [res.best_run_id]).df()
    assert len(preds) == 8 and preds["prediction"].str.contains(" _ ").any()  # the case this test is about
    assert preds["correct"].tolist() == [normalize_answer(p) == normalize_answer(y)
                                         for p, y in zip(preds["prediction"], preds["label"])]
    assert preds["correct"].mean() == pytest.approx(res.test_metric) and res.test_metric > 0.5
    tested = con.execute("select distinct step from run_metrics where run_id = ? and split = 'test'",
                         [res.best_run_id]).fetchall()
    kept = con.execute("select distinct step from run_metrics where run_id = ? and split = 'validation'"
                       " and metric = 'final_accuracy'", [res.best_run_id]).fetchall()
    assert tested == kept and len(tested) == 1


@pytest.mark.slow
def test_time_budget_stops_a_running_sft_trial(con):
    """SFT trials get the same step callback as classifier trials: the deadline stops them mid-run."""
    write_sft_examples(con)
    fixed = {"epochs": 400, "max_length": 48, "eval_at_start": False, "max_eval_examples": 6, "max_new_tokens": 5,
             "warmup_steps": 2, "patience": 0, "micro_batch_size": 2}
    started = time.monotonic()
    res = S.sweep({"learning_rate": [3e-3, 1e-3]}, {"seconds": 4}, con=con, strategy="random", trainer="sft",
                  config=fixed, progress=False)
    assert time.monotonic() - started < 30
    assert res.trials["status"].tolist() == ["stopped"]
    assert "time budget" in res.trials["error"].iloc[0]
    run = con.execute("select status, sweep_id from runs where run_id = ?", [res.trials["run_id"].iloc[0]]).fetchone()
    assert run[1] == res.sweep_id and run[0] in ("interrupted", "failed")


@pytest.mark.slow
def test_sft_sweep_over_the_layout_tests_the_chosen_trial_in_its_own_layout(con, tmp_path):
    """A sweep may compare the bare layout with the model's chat template: each trial trains in its own
    layout, and the chosen trial's single test evaluation uses the layout that trial trained with."""
    from test_finetune import make_chat_model

    from workbench import finetune

    write_sft_examples(con)
    data = con.execute("select prompt, completion from sft_examples").df()
    folder = make_chat_model(tmp_path, data, hidden=64)
    fixed = {"model": str(folder), "epochs": 1, "max_length": 64, "eval_at_start": False, "max_eval_examples": 6,
             "max_new_tokens": 5, "warmup_steps": 2, "patience": 0, "micro_batch_size": 4, "lr": 3e-3}
    res = S.sweep({"layout": ["bare", "chat"]}, 2, metric="validation_choice_accuracy", con=con, strategy="grid",
                  trainer="sft", config=fixed, progress=False)
    assert res.status == "completed" and set(res.trials["status"]) == {"completed"}
    cfgs = {r: json.loads(c) for r, c in con.execute("select run_id, config_json from runs where sweep_id = ?",
                                                     [res.sweep_id]).fetchall()}
    assert sorted((c["layout"], c["layout_resolved"]) for c in cfgs.values()) == [("bare", "bare"), ("chat", "chat")]
    best = cfgs[res.best_run_id]
    saved = finetune.saved_layout(Path(con.execute("select model_path from runs where run_id = ?",
                                                   [res.best_run_id]).fetchone()[0]))
    assert saved == best["layout_resolved"]
    # the one test evaluation, redone by hand in the chosen trial's layout, gives the recorded accuracy
    cfg = finetune.SFTConfig(**{k: v for k, v in best.items() if k in finetune.SFTConfig.__dataclass_fields__})
    parts = finetune.check_frame(finetune.load_sft_frame(con, cfg.task), cfg.task)
    model, tok = finetune.load_model(res.best_run_id)
    metrics, _ = finetune.evaluate(model, tok, parts["test"], cfg, best["layout_resolved"])
    assert res.test_metric == pytest.approx(metrics["choice_accuracy"])
