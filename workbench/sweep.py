"""Hyperparameter sweeps: trials chosen on the validation split, the test split touched once.

    python -c "import workbench; from workbench.sweep import sweep; print(sweep({'learning_rate': {'low': 3e-5, 'high': 3e-4, 'log': True}, 'epochs': [1, 2]}, 4).summary())"

Each trial is a real training run (``workbench.classifier`` by default, ``workbench.finetune`` with
``trainer="sft"``) recorded in ``runs`` with the sweep's ``sweep_id`` and its ``sweep_trial`` number (the
trainers take both, so the sweep finds a trial's run by them, never by its config). Optuna proposes the
parameters (grid, random, or the TPE model-based sampler with a median pruner fed each epoch's
validation metric), seeded per trial from ``(seed, trial number)``, so the same seed gives the same
trials, interrupted or not. The best trial is chosen on the validation metric; then, once, its
saved model is scored on the test split (``sweeps.test_metric``, and ``run_metrics`` / ``predictions``
rows with ``split = 'test'`` for that run only). Asking to select on a test metric is an error. Trials
run with ``evaluate_test=False`` (both trainers), so they never score test; as a second guard the
sweep deletes any test rows of a trial the moment it ends, unread.

Bounded and resumable: ``budget`` caps trials and wall-clock seconds (a trial still running at the
deadline is stopped); a failing trial is recorded with its error and the sweep goes on; the Optuna
study lives in ``<workspace>/sweeps/<sweep_id>.optuna.log``, so ``sweep(..., sweep_id=ID)`` (or
``resume=True``) continues an interrupted sweep: finished trials are kept, an interrupted trial
continues from its checkpoint. One process runs a given sweep at a time.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd

from . import runs
from .workspace import connect, snapshot_id, table_exists, transaction, workspace_root

# The default search space of classifier trials: the knobs that matter most for a small encoder.
DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": {"low": 3e-5, "high": 3e-4, "log": True},  # AdamW peak rate
    "epochs": [1, 2, 3],                                       # passes over train
    "batch_size": [16, 32],                                    # examples per step
    "warmup_ratio": {"low": 0.0, "high": 0.2},                 # share of steps warming up
    "weight_decay": {"low": 0.0, "high": 0.1},                 # AdamW decay
}
# ... and of SFT trials (the offline tiny Llama trains from scratch: higher rates than fine-tuning).
SFT_SEARCH_SPACE: dict[str, Any] = {
    "lr": {"low": 5e-4, "high": 5e-3, "log": True},  # AdamW peak rate
    "epochs": [2, 4],                                # passes over train
    "token_budget": [256, 512],                      # tokens per packed row
    "warmup_steps": [0, 10],                         # linear warmup steps
}
STRATEGIES = ("grid", "random", "tpe")
# Config field that turns a trainer's end-of-run test evaluation off; every trial sets it to False.
TEST_HOOK = "evaluate_test"
TRIAL_STATUSES = ("running", "completed", "pruned", "failed", "stopped", "interrupted")
# Names people use for the same knob; mapped to each trainer's config field.
ALIASES = {
    "classifier": {"lr": "learning_rate", "warmup": "warmup_ratio"},
    "sft": {"learning_rate": "lr", "lora_rank": "lora_r", "warmup": "warmup_steps",
            "batch_size": "micro_batch_size", "template": "template_id", "templates": "template_id"},
}
METRICS = {  # metric -> (direction, name in the trainer's validation metrics)
    "classifier": {"validation_accuracy": ("maximize", "accuracy"), "validation_loss": ("minimize", "loss")},
    "sft": {"validation_accuracy": ("maximize", "accuracy"), "validation_loss": ("minimize", "loss"),
            "validation_choice_accuracy": ("maximize", "choice_accuracy")},
}


@dataclass
class Budget:
    trials: int | None = None       # trials started (any outcome); None: no cap (then seconds must be set)
    seconds: float | None = None    # wall-clock seconds of sweeping, summed over resumes; None: no cap


@dataclass
class SweepResult:
    sweep_id: str
    status: str                     # completed | failed (no trial completed) | interrupted
    metric: str                     # the validation metric trials were chosen on
    direction: str                  # maximize | minimize
    best_trial: int | None
    best_run_id: str | None
    best_params: dict
    best_validation: float | None   # the chosen trial's validation metric
    test_metric_name: str           # e.g. 'test_accuracy'
    test_metric: float | None       # the chosen trial on test: evaluated once, after the sweep
    trials: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def summary(self) -> str:
        counts = self.trials["status"].value_counts().to_dict() if len(self.trials) else {}
        head = (f"sweep {self.sweep_id}: {len(self.trials)} trial(s) "
                f"({', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'})")
        if self.best_trial is None:
            return head + "; no trial completed, nothing chosen, test not evaluated"
        text = (f"{head}; best trial {self.best_trial} (run {self.best_run_id}) chosen on {self.metric} "
                f"= {self.best_validation:.4f}")
        if self.test_metric is None:
            return text + "; test split not evaluated yet"
        return (text + f"; {self.test_metric_name} = {self.test_metric:.4f}, evaluated once, for the chosen "
                "trial only, after the sweep")


class SweepError(ValueError):
    """Bad sweep input (the message names the parameter), or an action that would touch test twice."""


class _OutOfTime(Exception):
    """The sweep's wall-clock budget ran out while a trial was training."""


_DDL = """
create table if not exists sweeps (
    sweep_id varchar, created_at timestamp, finished_at timestamp, trainer varchar, strategy varchar,
    pruner varchar, metric varchar, direction varchar, search_space_json varchar, config_json varchar,
    budget_trials integer, budget_seconds double, seed bigint, status varchar, n_trials integer,
    best_trial integer, best_run_id varchar, best_params_json varchar, best_validation double,
    test_metric_name varchar, test_metric double, test_evaluated_at timestamp, data_snapshot bigint,
    elapsed_s double, storage varchar, error varchar
);
create table if not exists sweep_trials (
    sweep_id varchar, trial integer, run_id varchar, params_json varchar, status varchar,
    validation_metric double, error varchar, started_at timestamp, finished_at timestamp
);
"""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    runs.ensure_tables(con)
    transaction(con, lambda c: c.execute(_DDL), what="creating sweep tables")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------- checking the input

def check_metric(metric: str, trainer: str = "classifier") -> tuple[str, str]:
    """(direction, trainer metric name); selecting on anything but a validation metric is an error."""
    if "test" in metric.lower():
        raise SweepError(f"metric={metric!r}: selecting trials on a test metric is not allowed. Trials are "
                         "chosen on the validation split; the test split is evaluated once, for the chosen "
                         "trial, after the sweep. Use one of: " + ", ".join(METRICS[trainer]))
    if metric not in METRICS[trainer]:
        raise SweepError(f"metric={metric!r} is not a {trainer} validation metric; use one of: "
                         + ", ".join(METRICS[trainer]))
    return METRICS[trainer][metric]


def _trainer(trainer: str):
    if trainer == "classifier":
        from . import classifier
        return classifier.ClassifierConfig
    if trainer == "sft":
        try:
            from . import finetune
        except ImportError as exc:
            raise SweepError("trainer='sft' needs workbench.finetune, which this checkout lacks") from exc
        return finetune.SFTConfig
    raise SweepError(f"trainer={trainer!r}: use 'classifier' or 'sft'")


def _field_name(name: str, trainer: str, fields: set[str]) -> str:
    mapped = ALIASES[trainer].get(name, name)
    if mapped in fields:
        return mapped
    if name in ("template", "template_id", "templates"):
        raise SweepError(f"search_space[{name!r}]: template choice is an SFT search dimension (trainer='sft', "
                         "SFTConfig.template_id); the classifier reads raw text: sweep its text_column instead")
    raise SweepError(f"search_space[{name!r}] is not a {trainer} config field; fields: {', '.join(sorted(fields))}")


def normalize_space(search_space: Mapping[str, Any], trainer: str = "classifier") -> dict[str, Any]:
    """Check a search space and return it keyed by config field names.

    A value is a list (the choices), a dict ``{"low", "high"[, "log"][, "step"][, "type"]}`` (a range;
    integer when both ends are integers or ``"type": "int"``), or a scalar (fixed for every trial).
    """
    if not isinstance(search_space, Mapping) or not search_space:
        raise SweepError("search_space must be a non-empty dict of parameter -> choices or range")
    fields = {f.name for f in dataclasses.fields(_trainer(trainer))}
    out: dict[str, Any] = {}
    for name, spec in search_space.items():
        key = _field_name(str(name), trainer, fields)
        where = f"search_space[{name!r}]"
        if isinstance(spec, (list, tuple)):
            if not spec:
                raise SweepError(f"{where}: an empty list of choices")
            bad = [v for v in spec if not (v is None or isinstance(v, (bool, int, float, str)))]
            if bad:
                raise SweepError(f"{where}: choices must be numbers, strings, booleans or null, got {bad[0]!r}")
            spec = list(spec)
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"low", "high", "log", "step", "type"}
            if unknown or "low" not in spec or "high" not in spec:
                raise SweepError(f"{where}: a range is {{'low': ..., 'high': ...[, 'log': bool, 'step': ..., "
                                 f"'type': 'int' | 'float']}}, got {dict(spec)!r}")
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise SweepError(f"{where}: needs numbers low < high, got low={low!r} high={high!r}")
            kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
            if kind not in ("int", "float"):
                raise SweepError(f"{where}: type must be 'int' or 'float', got {kind!r}")
            if spec.get("log") and low <= 0:
                raise SweepError(f"{where}: a log range needs low > 0, got {low!r}")
            if spec.get("log") and spec.get("step"):
                raise SweepError(f"{where}: a range is either log or stepped, not both")
            spec = {"low": low, "high": high, "log": bool(spec.get("log", False)), "step": spec.get("step"),
                    "type": kind}
        elif not (spec is None or isinstance(spec, (bool, int, float, str))):
            raise SweepError(f"{where}: expected a list, a range dict or a fixed value, got {spec!r}")
        if key in out:
            raise SweepError(f"{where}: {key!r} is given twice (once under another name)")
        out[key] = spec
    return out


def grid_points(space: Mapping[str, Any]) -> dict[str, list]:
    """Every value the grid tries per parameter: lists as given, stepped ranges expanded."""
    grid = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            grid[name] = spec
        elif isinstance(spec, dict):
            if not spec["step"]:
                raise SweepError(f"search_space[{name!r}]: a grid needs a list of values or a range with a 'step'")
            n = int(math.floor((spec["high"] - spec["low"]) / spec["step"] + 1e-9)) + 1
            vals = [spec["low"] + i * spec["step"] for i in range(n)]
            grid[name] = [int(v) for v in vals] if spec["type"] == "int" else [round(v, 12) for v in vals]
        else:
            grid[name] = [spec]
    return grid


def _budget(budget: Budget | Mapping | int | None) -> Budget:
    if budget is None:
        b = Budget()
    elif isinstance(budget, Budget):
        b = budget
    elif isinstance(budget, bool):
        raise SweepError(f"budget={budget!r}: give a number of trials, {{'trials': n, 'seconds': s}} or Budget")
    elif isinstance(budget, int):
        b = Budget(trials=budget)
    elif isinstance(budget, Mapping):
        unknown = set(budget) - {"trials", "seconds"}
        if unknown:
            raise SweepError(f"budget: unknown key(s) {sorted(unknown)}; use 'trials' and 'seconds'")
        b = Budget(trials=budget.get("trials"), seconds=budget.get("seconds"))
    else:
        raise SweepError(f"budget={budget!r}: give a number of trials, {{'trials': n, 'seconds': s}} or Budget")
    b = Budget(trials=b.trials or None, seconds=b.seconds or None)  # 0 = no cap, as in the notebook
    if b.trials is not None and b.trials < 0 or b.seconds is not None and b.seconds < 0:
        raise SweepError(f"budget: trials and seconds must be >= 0, got {b}")
    return b


# --------------------------------------------------------------------------- Optuna

def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _sampler(strategy: str, space: dict, seed: int, trial_number: int, startup_trials: int):
    """A sampler seeded from (seed, trial number): the same trials whether or not the sweep was resumed."""
    optuna = _optuna()
    s = int(np.random.SeedSequence([int(seed), int(trial_number)]).generate_state(1)[0])
    if strategy == "grid":
        return optuna.samplers.GridSampler(grid_points(space), seed=s)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=s)
    return optuna.samplers.TPESampler(seed=s, n_startup_trials=startup_trials)


def _pruner(name: str):
    optuna = _optuna()
    if name == "median":  # stop a trial whose epoch-k validation metric is worse than the median at epoch k
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _suggest(trial, space: Mapping[str, Any], strategy: str) -> dict[str, Any]:
    params = {}
    grid = grid_points(space) if strategy == "grid" else None
    for name, spec in space.items():
        if grid is not None:
            params[name] = trial.suggest_categorical(name, grid[name])
        elif isinstance(spec, list):
            params[name] = trial.suggest_categorical(name, spec)
        elif isinstance(spec, dict) and spec["type"] == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]),
                                             step=int(spec["step"] or 1), log=spec["log"])
        elif isinstance(spec, dict):
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               step=spec["step"], log=spec["log"])
        else:
            params[name] = spec
    return params


# --------------------------------------------------------------------------- trials

@dataclass
class _Sweep:
    """What a trial needs to know about its sweep."""
    con: Any
    sweep_id: str
    trainer: str
    metric: str
    direction: str
    metric_key: str               # name in the trainer's validation metrics ('accuracy', 'loss', ...)
    base: dict
    data_snapshot: int
    deadline: float | None        # time.monotonic() at which the budget runs out
    prune: bool


def _config(sw: _Sweep, params: Mapping[str, Any]):
    cls = _trainer(sw.trainer)
    values = {**sw.base, **params}
    fields = {f.name for f in dataclasses.fields(cls)}
    if sw.trainer == "classifier":
        values.setdefault("keep_best", "loss" if sw.metric_key == "loss" else "accuracy")
    else:
        values.setdefault("metric", sw.metric_key)
    if TEST_HOOK in fields:  # a trainer that can skip its end-of-run test evaluation: trials never touch test
        values[TEST_HOOK] = False
    try:
        return cls(**values)
    except TypeError as exc:
        raise SweepError(f"config: {exc}") from None


def _trial_run(sw: _Sweep, number: int) -> str | None:
    """The run the trainer started for trial ``number`` of this sweep (trainers record ``sweep_id`` and
    ``sweep_trial`` in ``runs``); the newest one if a crashed trial was started again."""
    row = sw.con.execute("select run_id from runs where sweep_id = ? and sweep_trial = ?"
                         " order by started_at desc limit 1", [sw.sweep_id, int(number)]).fetchall()
    return row[0][0] if row else None


def _trial_step(sw: _Sweep, trial, box: dict, step: int) -> None:
    """Each training step of a trial: find its run once (the run row exists before the first step; a
    resumed sweep continues that run after a kill), and stop when the sweep's time budget is spent."""
    if box.get("run_id") is None and not box.get("looked"):
        box["looked"] = True
        box["run_id"] = _trial_run(sw, trial.number)
        if box["run_id"]:
            _upsert_trial(sw.con, sw.sweep_id, trial.number, run_id=box["run_id"])
    if sw.deadline is not None and time.monotonic() >= sw.deadline:
        raise _OutOfTime(f"the sweep's time budget ran out at step {step}")


def _validation_value(sw: _Sweep, run_id: str, step: int | None = None) -> float | None:
    """The chosen validation metric of a run: at ``step``, or its best evaluation."""
    agg = "max" if sw.direction == "maximize" else "min"
    if step is not None:
        row = sw.con.execute("select value from run_metrics where run_id = ? and split = 'validation'"
                             " and metric = ? and step = ?", [run_id, sw.metric_key, step]).fetchone()
    else:
        row = sw.con.execute(f"select {agg}(value) from run_metrics where run_id = ? and split = 'validation'"
                             " and metric = ?", [run_id, sw.metric_key]).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _run_trial(sw: _Sweep, trial, cfg, resume_run: str | None, box: dict) -> float:
    """Train one trial; returns its validation metric. ``box['run_id']`` is set as soon as it is known."""
    optuna = _optuna()
    tag = {"sweep_id": sw.sweep_id, "sweep_trial": trial.number}  # recorded in runs: how we find the trial's run
    done = resume_run and sw.con.execute("select status from runs where run_id = ?", [resume_run]).fetchone()
    if done and done[0] == "completed":  # finished, but the process stopped before recording it
        box["run_id"] = resume_run
        if sw.trainer == "sft":
            row = sw.con.execute("select value from run_metrics where run_id = ? and split = 'validation' and"
                                 " metric = ?", [resume_run, f"final_{sw.metric_key}"]).fetchone()
            return None if row is None else float(row[0])
        return _validation_value(sw, resume_run)
    if sw.trainer == "sft":
        from . import finetune

        if sw.deadline is not None and time.monotonic() >= sw.deadline:
            raise _OutOfTime("the sweep's time budget ran out before this trial started")

        def on_sft_step(step: int) -> None:
            _trial_step(sw, trial, box, step)
            value = _validation_value(sw, box["run_id"], step) if sw.prune and box.get("run_id") else None
            if value is not None:  # an evaluation happened at this step: report it, prune a hopeless trial
                trial.report(value, step)
                box["last_value"] = value
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}: {sw.metric} {value:.4f} is worse "
                                             "than the median of earlier trials at that step")

        box["run_id"] = resume_run
        try:
            res = finetune.train_sft(sw.con, cfg, resume_from=resume_run, progress=False, on_step=on_sft_step,
                                     **tag)
        finally:
            box["run_id"] = box.get("run_id") or resume_run or _trial_run(sw, trial.number)
        return float(res.metrics["validation"][sw.metric_key])

    from . import classifier

    n_train = sw.con.execute(f"""select count(*) from "{cfg.table}" as e join splits as s
        on cast(s.example_id as varchar) = cast(e.example_id as varchar) where s.split = 'train'""").fetchone()[0]
    if cfg.max_train_examples:
        n_train = min(n_train, cfg.max_train_examples)
    per_epoch = max(1, math.ceil(n_train / cfg.batch_size))

    def on_step(step: int) -> None:
        _trial_step(sw, trial, box, step)
        epoch, at_end = divmod(step, per_epoch)
        if sw.prune and at_end == 0 and epoch < cfg.epochs and box.get("run_id"):
            value = _validation_value(sw, box["run_id"], step)
            if value is not None:
                trial.report(value, epoch)
                box["last_value"] = value
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}: {sw.metric} {value:.4f} is worse "
                                             "than the median of earlier trials at that epoch")

    box["run_id"] = resume_run
    try:
        res = classifier.train_classifier(sw.con, None if resume_run else cfg, resume_from=resume_run,
                                          progress=False, on_step=on_step, **tag)
    finally:
        box["run_id"] = box.get("run_id") or _trial_run(sw, trial.number)
    return _validation_value(sw, res.run_id) if sw.metric_key == "loss" else float(res.validation_accuracy)


def _upsert(c, sweep_id: str, number: int, **cols) -> None:
    if c.execute("select count(*) from sweep_trials where sweep_id = ? and trial = ?", [sweep_id, number]).fetchone()[0]:
        c.execute(f"update sweep_trials set {', '.join(f'{k} = ?' for k in cols)} where sweep_id = ? and trial = ?",
                  [*cols.values(), sweep_id, number])
    else:
        names = ["sweep_id", "trial", *cols]
        c.execute(f"insert into sweep_trials ({', '.join(names)}) values ({', '.join('?' * len(names))})",
                  [sweep_id, number, *cols.values()])


def _upsert_trial(con, sweep_id: str, number: int, **cols) -> None:
    transaction(con, lambda c: _upsert(c, sweep_id, number, **cols), what="recording a sweep trial")


def _best_row(con, sweep_id: str, direction: str, exclude: int | None = None):
    order = "desc" if direction == "maximize" else "asc"
    return con.execute(f"""select trial, run_id, params_json, validation_metric from sweep_trials
        where sweep_id = ? and status = 'completed' and validation_metric is not null and trial <> ?
        order by validation_metric {order}, trial limit 1""", [sweep_id, -1 if exclude is None else exclude]).fetchone()


def _execute(sw: _Sweep, study, trial, params: dict, resume_run: str | None, *, keep_models: str,
             progress: bool, on_trial_end: Callable[[dict], None] | None) -> None:
    """Run one trial to an outcome and record it in Optuna, ``sweep_trials`` and ``runs``."""
    optuna = _optuna()
    con, number = sw.con, trial.number
    _upsert_trial(con, sw.sweep_id, number, run_id=resume_run, params_json=json.dumps(params, sort_keys=True),
                  status="running", error=None, started_at=_now(), finished_at=None)
    box: dict = {}
    value, err, started = None, None, time.monotonic()
    try:
        value = _run_trial(sw, trial, _config(sw, params), resume_run, box)
        state, status = optuna.trial.TrialState.COMPLETE, "completed"
        if value is None or not math.isfinite(value):
            state, status, err = optuna.trial.TrialState.FAIL, "failed", f"no finite {sw.metric}: {value!r}"
    except optuna.TrialPruned as exc:
        state, status, err = optuna.trial.TrialState.PRUNED, "pruned", str(exc)
        value = box.get("last_value")  # the epoch's value that was judged hopeless
    except _OutOfTime as exc:
        state, status, err = optuna.trial.TrialState.FAIL, "stopped", str(exc)
    except KeyboardInterrupt:  # the Optuna trial stays RUNNING: a resumed sweep continues it
        _upsert_trial(con, sw.sweep_id, number, run_id=box.get("run_id"), status="interrupted",
                      error="KeyboardInterrupt", finished_at=_now())
        raise
    except Exception as exc:  # a failing trial is recorded and the sweep goes on
        state, status, err = optuna.trial.TrialState.FAIL, "failed", f"{type(exc).__name__}: {exc}"[:2000]
    run_id = box.get("run_id")
    drop = [run_id] if run_id and status != "completed" else []  # a checkpoint nobody resumes
    if status == "completed" and keep_models == "best":  # at most two saved models at any time
        prev = _best_row(con, sw.sweep_id, sw.direction, exclude=number)
        better = prev is None or (value > prev[3] if sw.direction == "maximize" else value < prev[3])
        if prev is not None:
            drop.append(prev[1] if better else run_id)
    row = dict(run_id=run_id, status=status, validation_metric=value, error=err, finished_at=_now())

    def record(c):
        if run_id:
            if status in ("pruned", "stopped"):
                c.execute("update runs set status = 'interrupted', finished_at = ?, error = ? where run_id = ?",
                          [_now(), err, run_id])
            # Trials are not tested (both trainers take evaluate_test=False); a trainer without that
            # switch still scores test at the end of a run: those rows go at once, unread.
            c.execute("delete from run_metrics where run_id = ? and split = 'test'", [run_id])
            c.execute("delete from predictions where run_id = ? and split = 'test'", [run_id])
        for r in drop:
            c.execute("update runs set model_path = null where run_id = ?", [r])
        _upsert(c, sw.sweep_id, number, **row)
    transaction(con, record, what="recording a trial's outcome")
    for r in drop:
        shutil.rmtree(workspace_root(con) / "models" / r, ignore_errors=True)
    _tell(study, number, value if status == "completed" else None, state)
    row = {"sweep_id": sw.sweep_id, "trial": number, "params": params, **row,
           "seconds": round(time.monotonic() - started, 1)}
    if progress:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        score = f"{sw.metric} {value:.4f}" if value is not None else (err or "")[:120]
        print(f"trial {number}: {status:<9} {score}  ({shown}; {row['seconds']}s)", flush=True)
    if on_trial_end is not None:
        on_trial_end(row)


def _tell(study, number: int, value: float | None, state) -> None:
    try:
        study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as exc:  # GridSampler calls Study.stop() on its last point (the state is stored)
        if "Study.stop" not in str(exc):
            raise


def _new_sweep_id() -> str:
    return f"sweep-{_now():%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _sweep_row(con, sweep_id: str) -> dict | None:
    cur = con.execute("select * from sweeps where sweep_id = ?", [sweep_id])
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row))


def sweep(search_space: Mapping[str, Any] | None = None, budget: Budget | Mapping | int | None = 8,
          metric: str = "validation_accuracy", *, con: duckdb.DuckDBPyConnection | None = None,
          strategy: str | None = None, trainer: str | None = None, config: Mapping[str, Any] | None = None,
          seed: int | None = None, pruner: str = "auto", startup_trials: int | None = None,
          enqueue: Sequence[Mapping[str, Any]] = (), sweep_id: str | None = None, resume: bool = False,
          evaluate_test: bool = True, keep_models: str = "best", progress: bool = True,
          on_trial_end: Callable[[dict], None] | None = None) -> SweepResult:
    """Tune ``search_space`` on the validation split within ``budget``; test the chosen trial once.

    ``strategy``: 'grid' | 'random' | 'tpe' (default; Optuna's model-based sampler, with a median
    pruner fed each epoch's validation metric: ``pruner='auto'`` = median for tpe, none otherwise).
    ``trainer``: 'classifier' (default) or 'sft'; ``config``: fixed config fields for every trial.
    ``budget``: trials (int), ``{'trials': n, 'seconds': s}`` or :class:`Budget`.
    ``sweep_id`` / ``resume=True``: continue an unfinished sweep (arguments left at None are the
    stored ones; given ones must match). ``enqueue``: parameter sets to try first (e.g. the defaults).
    ``evaluate_test=False`` leaves the one test evaluation to :func:`evaluate_best_on_test`.
    ``keep_models``: 'best' removes the saved models of trials that are not the best so far; 'all'.
    """
    # ---- check everything before a row is written
    con = con if con is not None else connect()
    ensure_tables(con)
    row = None
    if sweep_id or resume:
        row = _sweep_row(con, sweep_id) if sweep_id else None
        if sweep_id and row is None:
            raise SweepError(f"sweep_id={sweep_id!r}: no such sweep in the sweeps table")
    given = {"trainer": trainer, "strategy": strategy, "seed": seed}
    trainer = trainer or (row or {}).get("trainer") or "classifier"
    strategy = strategy or (row or {}).get("strategy") or "tpe"
    seed = int(seed if seed is not None else (row or {}).get("seed") or 0)
    if strategy not in STRATEGIES:
        raise SweepError(f"strategy={strategy!r}: use one of {', '.join(STRATEGIES)}")
    direction, metric_key = check_metric(metric, trainer)
    if search_space is None:
        space = json.loads(row["search_space_json"]) if row else normalize_space(
            DEFAULT_SEARCH_SPACE if trainer == "classifier" else SFT_SEARCH_SPACE, trainer)
    else:
        space = normalize_space(search_space, trainer)
    fields = {f.name for f in dataclasses.fields(_trainer(trainer))}
    base = dict(config) if config is not None else json.loads(row["config_json"]) if row else {}
    for k in base:
        if k not in fields:
            raise SweepError(f"config[{k!r}] is not a {trainer} config field; fields: {', '.join(sorted(fields))}")
        if k in space:
            raise SweepError(f"config[{k!r}] is fixed and also in the search space: keep it in one of them")
    needed = [base.get("table", "examples"), "splits"] if trainer == "classifier" else ["sft_examples", "splits"]
    missing = [t for t in needed if not table_exists(con, t)]
    if missing:
        raise SweepError(f"the workspace has no table {missing[0]!r}: run the pipeline steps that write it first "
                         "(workbench run --only 01 --only 02 --only 05 --only 06)")
    b = _budget(budget)
    if strategy == "grid":
        size = int(np.prod([len(v) for v in grid_points(space).values()]))
        b = Budget(trials=min(b.trials or size, size), seconds=b.seconds)
    if b.trials is None and b.seconds is None:
        raise SweepError("budget: give a number of trials, a number of seconds, or both (an unbounded sweep never ends)")
    pruner = ("median" if strategy == "tpe" else "none") if pruner == "auto" else pruner
    if pruner not in ("median", "none"):
        raise SweepError(f"pruner={pruner!r}: use 'auto', 'median' or 'none'")
    if keep_models not in ("best", "all"):
        raise SweepError(f"keep_models={keep_models!r}: use 'best' or 'all'")
    queued = []
    for i, p in enumerate(enqueue):
        mapped = {_field_name(str(k), trainer, fields): v for k, v in p.items()}
        extra = set(mapped) - set(space)
        if extra:
            raise SweepError(f"enqueue[{i}]: {sorted(extra)} not in the search space")
        queued.append(mapped)
    space_json = json.dumps(space, sort_keys=True)
    base_json = json.dumps(base, sort_keys=True, default=str)
    if resume and row is None:
        hit = con.execute("""select sweep_id from sweeps where status in ('running', 'interrupted')
            and trainer = ? and strategy = ? and metric = ? and search_space_json = ? and config_json = ?
            and seed = ? order by created_at desc limit 1""",
                          [trainer, strategy, metric, space_json, base_json, seed]).fetchone()
        row = _sweep_row(con, hit[0]) if hit else None
    if row is not None:
        stored = {"trainer": row["trainer"], "strategy": row["strategy"], "seed": int(row["seed"]),
                  "metric": row["metric"], "search_space": row["search_space_json"], "config": row["config_json"]}
        now = {"trainer": trainer, "strategy": strategy, "seed": seed, "metric": metric,
               "search_space": space_json, "config": base_json}
        diff = [k for k in stored if stored[k] != now[k] and (k not in given or given[k] is not None)]
        if diff:
            raise SweepError(f"sweep {row['sweep_id']}: {', '.join(diff)} differ from the stored sweep; "
                             "leave them out (None) to resume with the stored ones")
        if row["test_metric"] is not None:
            raise SweepError(f"sweep {row['sweep_id']} already evaluated its chosen trial on test "
                             f"({row['test_metric_name']} {row['test_metric']:.4f}); the test split is touched "
                             "once per sweep: start a new sweep to search further")

    # ---- create or reopen: the sweeps row and the Optuna study
    optuna = _optuna()
    new = row is None
    sweep_id = _new_sweep_id() if new else row["sweep_id"]
    storage_path = workspace_root(con) / "sweeps" / f"{sweep_id}.optuna.log"  # Optuna's append-only journal
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    if new:
        snap = snapshot_id(con)
        transaction(con, lambda c: c.execute(
            "insert into sweeps (sweep_id, created_at, trainer, strategy, pruner, metric, direction,"
            " search_space_json, config_json, budget_trials, budget_seconds, seed, status, n_trials,"
            " test_metric_name, data_snapshot, elapsed_s, storage) values"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', 0, ?, ?, 0, ?)",
            [sweep_id, _now(), trainer, strategy, pruner, metric, direction, space_json, base_json, b.trials,
             b.seconds, seed, metric.replace("validation_", "test_", 1), snap, str(storage_path)]),
            what="creating a sweep")
    else:
        snap = int(row["data_snapshot"])
        transaction(con, lambda c: c.execute(
            "update sweeps set status = 'running', finished_at = null, budget_trials = ?, budget_seconds = ?,"
            " pruner = ? where sweep_id = ?", [b.trials, b.seconds, pruner, sweep_id]), what="resuming a sweep")
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(storage_path)))
    study = optuna.create_study(study_name=sweep_id, storage=storage, direction=direction, load_if_exists=True)
    if new:
        for p in queued:
            study.enqueue_trial(p)
    if startup_trials is None:
        startup_trials = max(2, min(10, (b.trials or 12) // 3))
    elapsed_before = float((row or {}).get("elapsed_s") or 0.0)
    t_start = time.monotonic()
    sw = _Sweep(con, sweep_id, trainer, metric, direction, metric_key, base, snap,
                None if b.seconds is None else t_start + b.seconds - elapsed_before, pruner == "median")
    if progress:
        print(f"sweep {sweep_id}: {strategy}, {metric} ({direction}), budget {b.trials or '-'} trials / "
              f"{b.seconds or '-'} s" + ("" if new else " (resumed)"), flush=True)

    def study_for(number: int):
        return optuna.Study(study_name=sweep_id, storage=storage, pruner=_pruner(pruner),
                            sampler=_sampler(strategy, space, seed, number, startup_trials))

    def time_left() -> bool:
        return sw.deadline is None or time.monotonic() < sw.deadline

    status, error = "interrupted", None
    try:
        recorded = {t: (r, st, v) for t, r, st, v in con.execute(
            "select trial, run_id, status, validation_metric from sweep_trials where sweep_id = ?", [sweep_id]).fetchall()}
        States = optuna.trial.TrialState
        final = {"completed": States.COMPLETE, "pruned": States.PRUNED, "failed": States.FAIL, "stopped": States.FAIL}
        for ft in study.get_trials(deepcopy=False, states=(States.RUNNING,)):  # left running by a stopped process
            run_id, trial_status, value = recorded.get(ft.number, (None, None, None))
            if trial_status in final:  # recorded, but the process stopped before telling Optuna
                _tell(study, ft.number, value if trial_status == "completed" else None, final[trial_status])
                continue
            if not time_left():
                break
            st = study_for(ft.number)
            trial = optuna.trial.Trial(st, ft._trial_id)
            _execute(sw, st, trial, _suggest(trial, space, strategy), run_id,
                     keep_models=keep_models, progress=progress, on_trial_end=on_trial_end)
        while time_left():
            started = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
            if b.trials is not None and len(started) >= b.trials:
                break
            st = study_for(len(study.get_trials(deepcopy=False, states=None)))
            trial = st.ask()
            _execute(sw, st, trial, _suggest(trial, space, strategy), None, keep_models=keep_models,
                     progress=progress, on_trial_end=on_trial_end)
        status = "completed"
    except Exception as exc:  # a bug or a workspace error, not a trial's failure (those are recorded)
        status, error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        best = _best_row(con, sweep_id, direction)
        n = con.execute("select count(*) from sweep_trials where sweep_id = ?", [sweep_id]).fetchone()[0]
        if status == "completed" and best is None:
            status, error = "failed", "no trial completed"
        elapsed = elapsed_before + time.monotonic() - t_start
        transaction(con, lambda c: c.execute(
            "update sweeps set status = ?, finished_at = ?, n_trials = ?, best_trial = ?, best_run_id = ?,"
            " best_params_json = ?, best_validation = ?, elapsed_s = ?, error = ? where sweep_id = ?",
            [status, _now(), n, *(best or (None,) * 4), elapsed, error, sweep_id]), what="finishing a sweep")
    if evaluate_test and best is not None:
        evaluate_best_on_test(con, sweep_id)
    result = load_sweep(con, sweep_id)
    if progress:
        print(result.summary(), flush=True)
    return result


# --------------------------------------------------------------------------- the one test evaluation

def _classifier_test(con, run: dict, sweep_row: dict) -> tuple[dict, int, pd.DataFrame]:
    """Score the saved classifier on the test split of the sweep's data snapshot."""
    import torch

    from . import classifier
    from .evaluate import majority_baseline

    cfg = json.loads(run["config_json"])
    src, n = cfg["table"], int(run["data_snapshot"])  # the data the chosen trial trained on
    df = con.execute(f"""
        with e as (select * from "{src}" at (version => {n})),
        s as (select * from splits at (version => {n}))
        select cast(e.example_id as varchar) as example_id, s.split, e."{cfg['text_column']}" as text,
               cast(e."{cfg['label_column']}" as varchar) as label
        from e join s on cast(s.example_id as varchar) = cast(e.example_id as varchar)
        where s.split in ('train', 'test')
        order by e.example_id""").df()
    train, test = df[df["split"] == "train"], df[df["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise SweepError(f"the test split of {src!r} is empty at snapshot {n}: nothing to evaluate")
    model, tok, labels, max_length = classifier.load_classifier(run["model_path"], device=cfg.get("device", "auto"))
    device = next(model.parameters()).device
    ids = tok(test["text"].astype(str).tolist(), truncation=True, max_length=max_length)["input_ids"]
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index.get(v, -100) for v in test["label"]])  # -100: a label the model never saw (ignored by loss)
    pred, loss_sum = np.empty(len(ids), dtype=np.int64), 0.0
    model.eval()
    with torch.no_grad():
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            enc = {k: v.to(device) for k, v in tok.pad({"input_ids": [ids[j] for j in idx]}, return_tensors="pt").items()}
            logits = model(**enc).logits.float()
            loss_sum += float(torch.nn.functional.cross_entropy(
                logits, torch.as_tensor(y[idx], device=device), reduction="sum", ignore_index=-100))
            pred[idx] = logits.argmax(-1).cpu().numpy()
    known = int((y >= 0).sum())
    metrics = {"loss": loss_sum / known if known else None, "accuracy": float((pred == y).mean()),
               "majority_baseline": majority_baseline(train["label"], test["label"])}
    meta = Path(run["model_path"]) / classifier.META_FILE
    step = int(json.loads(meta.read_text()).get("best_step") or 0) if meta.exists() else 0
    preds = pd.DataFrame({"example_id": test["example_id"], "prompt": test["text"],
                          "prediction": [labels[i] for i in pred], "label": test["label"], "correct": pred == y})
    return metrics, step, preds


def _sft_test(con, run: dict, sweep_row: dict) -> tuple[dict, int, pd.DataFrame]:
    from . import finetune

    stored = json.loads(run["config_json"])
    cfg = finetune.SFTConfig(**{f.name: stored[f.name] for f in dataclasses.fields(finetune.SFTConfig)
                                if f.name in stored})
    # the layout the trial trained with ("auto" resolved then); runs recorded before layouts existed were bare
    cfg = dataclasses.replace(cfg, layout=stored.get("layout_resolved") or stored.get("layout") or "bare")
    parts = finetune.check_frame(finetune.load_sft_frame(con, cfg.task, int(run["data_snapshot"]), cfg.template_id),
                                 cfg.task)
    if parts["test"].empty:
        raise SweepError(f"task {cfg.task!r} has no test examples: nothing to evaluate")
    model, tok = finetune.load_model(run["model_path"], device=cfg.device if cfg.device != "auto" else "cpu")
    metrics, pred = finetune.evaluate(model, tok, parts["test"], cfg)
    metrics["majority_baseline"] = finetune.majority_baseline(parts["train"], parts["test"])
    # the step whose weights were saved (keep_best): where the trainer logged its final_* validation metrics
    step = con.execute("select max(step) from run_metrics where run_id = ? and split = 'validation'"
                       " and starts_with(metric, 'final_')", [run["run_id"]]).fetchone()[0]
    if step is None:
        step = con.execute("select max(step) from run_metrics where run_id = ?", [run["run_id"]]).fetchone()[0] or 0
    # correct = normalized exact match, as the accuracy counts it ('technical _ issue' is 'technical_issue')
    return metrics, int(step), pred[["example_id", "prompt", "prediction", "label", "correct"]]


def evaluate_best_on_test(con: duckdb.DuckDBPyConnection, sweep_id: str) -> float:
    """Score the sweep's chosen trial on the test split: once per sweep (a second call is an error).

    Writes ``run_metrics`` rows (``split = 'test'``) and test ``predictions`` for the chosen run, and
    ``sweeps.test_metric``, in one transaction. Returns the test metric (e.g. test accuracy).
    """
    row = _sweep_row(con, sweep_id)
    if row is None:
        raise SweepError(f"sweep_id={sweep_id!r}: no such sweep")
    if row["test_metric"] is not None:
        raise SweepError(f"sweep {sweep_id} already evaluated trial {row['best_trial']} on test at "
                         f"{row['test_evaluated_at']} ({row['test_metric_name']} {row['test_metric']:.4f}); "
                         "the test split is touched once per sweep")
    if row["status"] != "completed" or row["best_run_id"] is None:
        raise SweepError(f"sweep {sweep_id} is {row['status']} with no chosen trial yet: finish it first "
                         "(the choice must be final before test is touched)")
    run = con.execute("select * from runs where run_id = ?", [row["best_run_id"]]).df().iloc[0].to_dict()
    if not run.get("model_path") or not Path(run["model_path"]).is_dir():
        raise SweepError(f"the chosen run {row['best_run_id']} has no saved model (model_path {run.get('model_path')!r})")
    metrics, step, preds = (_classifier_test if row["trainer"] == "classifier" else _sft_test)(con, run, row)
    key = METRICS[row["trainer"]][row["metric"]][1]
    value = metrics.get(key)
    if value is None:
        raise SweepError(f"test evaluation of run {row['best_run_id']} gave no {key!r}: {metrics}")
    preds = preds.assign(run_id=row["best_run_id"], split="test")  # `correct` as the test accuracy counts it
    preds = preds[["run_id", "example_id", "split", "prompt", "prediction", "label", "correct"]]
    logged = runs._now()
    rows = [(row["best_run_id"], step, None, "test", k, float(v), logged) for k, v in metrics.items() if v is not None]

    def body(c):
        if c.execute("select test_metric from sweeps where sweep_id = ?", [sweep_id]).fetchone()[0] is not None:
            raise SweepError(f"sweep {sweep_id}: test was evaluated concurrently; it is touched once")
        c.executemany("insert into run_metrics values (?, ?, ?, ?, ?, ?, ?)", rows)
        c.register("_sweep_test_predictions", preds)
        c.execute("insert into predictions select * from _sweep_test_predictions")
        c.unregister("_sweep_test_predictions")
        c.execute("update sweeps set test_metric = ?, test_evaluated_at = ? where sweep_id = ?",
                  [float(value), _now(), sweep_id])
    transaction(con, body, what="recording the sweep's test evaluation")
    return float(value)


# --------------------------------------------------------------------------- reading results

def trials_frame(con: duckdb.DuckDBPyConnection, sweep_id: str) -> pd.DataFrame:
    """One row per trial, parameters as columns, sorted best first on the validation metric."""
    row = _sweep_row(con, sweep_id)
    if row is None:
        raise SweepError(f"sweep_id={sweep_id!r}: no such sweep")
    df = con.execute("select * from sweep_trials where sweep_id = ? order by trial", [sweep_id]).df()
    params = pd.DataFrame([json.loads(p) for p in df["params_json"]], index=df.index)
    df = pd.concat([df.drop(columns=["params_json", "sweep_id"]), params], axis=1)
    df["seconds"] = (df["finished_at"] - df["started_at"]).dt.total_seconds().round(1)
    return df.sort_values(["validation_metric", "trial"], ascending=[row["direction"] == "minimize", True],
                          na_position="last").reset_index(drop=True)


def load_sweep(con: duckdb.DuckDBPyConnection, sweep_id: str) -> SweepResult:
    row = _sweep_row(con, sweep_id)
    if row is None:
        raise SweepError(f"sweep_id={sweep_id!r}: no such sweep")
    return SweepResult(
        sweep_id=sweep_id, status=row["status"], metric=row["metric"], direction=row["direction"],
        best_trial=None if row["best_trial"] is None else int(row["best_trial"]), best_run_id=row["best_run_id"],
        best_params=json.loads(row["best_params_json"]) if row["best_params_json"] else {},
        best_validation=row["best_validation"], test_metric_name=row["test_metric_name"],
        test_metric=row["test_metric"], trials=trials_frame(con, sweep_id))


def list_sweeps(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    ensure_tables(con)
    return con.execute("""select sweep_id, created_at, trainer, strategy, metric, status, n_trials, best_trial,
        round(best_validation, 4) as best_validation, test_metric_name, round(test_metric, 4) as test_metric,
        round(elapsed_s, 1) as elapsed_s from sweeps order by created_at desc""").df()


def plot_trials(con: duckdb.DuckDBPyConnection, sweep_id: str):
    """The validation metric over trials (with the best so far) and against each hyperparameter."""
    import matplotlib.pyplot as plt

    row, df = _sweep_row(con, sweep_id), trials_frame(con, sweep_id).sort_values("trial")
    space = json.loads(row["search_space_json"])
    names = [k for k, v in space.items() if isinstance(v, (list, dict))]
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.6 * (1 + len(names)), 3.2), squeeze=False)
    colors = {"completed": "tab:blue", "pruned": "tab:orange", "failed": "tab:red", "stopped": "tab:gray",
              "interrupted": "tab:gray", "running": "tab:gray"}
    ok = df[df["validation_metric"].notna()]
    ax = axes[0][0]
    ax.scatter(ok["trial"], ok["validation_metric"], c=[colors[s] for s in ok["status"]])
    done = df[df["status"] == "completed"].set_index("trial")["validation_metric"]
    if len(done):
        best = (done.cummax() if row["direction"] == "maximize" else done.cummin()).reindex(df["trial"]).ffill()
        ax.step(best.index, best.values, where="post", color="black", lw=1, label="best so far")
        ax.legend(fontsize=8)
    ax.set(xlabel="trial", ylabel=row["metric"], title="over trials")
    for ax, name in zip(axes[0][1:], names):
        if isinstance(space[name], list):  # choices: one slot each, in the order given
            slot = {str(v): i for i, v in enumerate(space[name])}
            ax.scatter([slot[str(v)] for v in ok[name]], ok["validation_metric"], c=[colors[s] for s in ok["status"]])
            ax.set_xticks(range(len(slot)), list(slot))
        else:
            ax.scatter(ok[name], ok["validation_metric"], c=[colors[s] for s in ok["status"]])
            if space[name].get("log"):
                ax.set_xscale("log")
        ax.set(xlabel=name, title=name)
    fig.suptitle(f"{sweep_id}: {row['metric']} per trial (blue completed, orange pruned)", fontsize=10)
    fig.tight_layout()
    plt.close(fig)  # shown once, by display(fig), not again by the inline backend
    return fig


def plot_best(con: duckdb.DuckDBPyConnection, sweep_id: str):
    """The chosen trial: validation vs test (evaluated once) vs the majority-class baseline."""
    import matplotlib.pyplot as plt

    row = _sweep_row(con, sweep_id)
    if row is None or row["best_run_id"] is None:
        raise SweepError(f"sweep {sweep_id} has no chosen trial to plot")
    base = con.execute("select value from run_metrics where run_id = ? and split = 'test' and metric = "
                       "'majority_baseline'", [row["best_run_id"]]).fetchone()
    bars = {"validation\n(chosen on)": row["best_validation"],
            "test\n(evaluated once)": row["test_metric"] if row["test_metric"] is not None else np.nan}
    if base is not None and "accuracy" in row["metric"]:
        bars["majority\nbaseline (test)"] = base[0]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    ax.bar(list(bars), list(bars.values()), color=["tab:blue", "tab:green", "tab:gray"][:len(bars)])
    for i, v in enumerate(bars.values()):
        if v is not None and not np.isnan(v):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom")
    top = np.nanmax([v for v in bars.values() if v is not None] or [1.0])
    ax.set(ylabel=row["metric"].replace("validation_", ""), ylim=(0, top * 1.18),
           title=f"best trial {row['best_trial']} ({row['best_run_id']})")
    fig.tight_layout()
    plt.close(fig)
    return fig
