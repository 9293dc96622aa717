"""Evaluation reports for any training run, read from the workspace tables.

    python -c "import workbench; from workbench import evaluate as ev; print(ev.compare_runs(workbench.connect()))"

Shared by the classifier and the causal-LM fine-tuning routines: both write ``runs``,
``run_metrics`` and ``predictions`` (see ``workbench.runs``), and everything here reads those
tables, so a report can be made for any finished run, in any kernel, long after training.
Figures are returned (matplotlib ``Figure``), never shown: a notebook displays them, a script
saves them.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

import duckdb
import pandas as pd

from .workspace import table_exists

OTHER = "<other>"  # column of the confusion matrix for predictions outside the label set (free text)


# --------------------------------------------------------------------------- answers

def normalize_answer(text: str) -> str:
    """Normalized form for exact match: NFKC, lowercase, ``_`` as a space, no space next to
    punctuation, single spaces, no final period.

    ``technical_issue``, ``technical issue`` (a plain-words template) and ``technical _ issue``
    (WordPiece decoding) all normalize to ``technical issue``.
    """
    s = unicodedata.normalize("NFKC", str(text)).lower().replace("_", " ").strip()
    s = re.sub(r"\s*([^\w\s])\s*", r"\1", s)
    return re.sub(r"\s+", " ", s).strip().rstrip(".").strip()


def as_labels(predictions: Iterable[str], labels: Sequence[str]) -> list[str]:
    """Each prediction spelled as the label it means: a causal LM's ``technical _ issue`` (WordPiece
    decoding) is the label ``technical_issue``, as ``predictions.correct`` already counts it. A
    prediction that matches no label (after ``normalize_answer``) is kept as it is."""
    known = set(labels)
    canon: dict[str, str] = {}
    for lab in labels:
        canon.setdefault(normalize_answer(lab), lab)
    return [p if p in known else canon.get(normalize_answer(p), p) for p in predictions]


# --------------------------------------------------------------------------- baselines

def majority_baseline(train_labels: Iterable[str], eval_labels: Iterable[str]) -> float:
    """Accuracy of always predicting the most frequent training label (ties: alphabetically first)."""
    counts = Counter(train_labels)
    if not counts:
        raise ValueError("majority_baseline: no training labels")
    top = min(counts, key=lambda lab: (-counts[lab], lab))
    labels = list(eval_labels)
    return sum(lab == top for lab in labels) / len(labels) if labels else float("nan")


def split_majority_baseline(con: duckdb.DuckDBPyConnection, split: str = "test", *, table: str = "examples",
                            label_column: str = "intent", key: str = "example_id") -> float:
    """Majority-class baseline on a split of the workspace: train's most frequent label, scored on ``split``.

    ``table`` holds the labels, joined to ``splits`` on ``key`` (for ``sft_examples`` use
    ``label_column='completion', key='source_row_id'`` and filter the task beforehand with a view).
    """
    for t in (table, "splits"):
        if not table_exists(con, t):
            raise ValueError(f"split_majority_baseline: the workspace has no table {t!r}")
    df = con.execute(f"""
        select s.split, cast(t."{label_column}" as varchar) as label
        from "{table}" as t join splits as s on cast(s.example_id as varchar) = cast(t."{key}" as varchar)
        where s.split in ('train', ?)""", [split]).df()
    return majority_baseline(df.loc[df["split"] == "train", "label"], df.loc[df["split"] == split, "label"])


# --------------------------------------------------------------------------- predictions

def predictions(con: duckdb.DuckDBPyConnection, run_id: str, split: str = "test") -> pd.DataFrame:
    """The run's predictions on one split (example_id, prompt, prediction, label, correct)."""
    df = con.execute("select example_id, prompt, prediction, label, correct from predictions"
                     " where run_id = ? and split = ? order by example_id", [run_id, split]).df()
    if df.empty:
        raise ValueError(f"run {run_id!r} has no predictions on the {split!r} split")
    return df


def accuracy_by_split(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str] | str | None = None) -> pd.DataFrame:
    """One row per (run, split): n, n_correct, accuracy, from ``predictions``."""
    ids = [run_ids] if isinstance(run_ids, str) else run_ids
    where, params = ("where run_id in (select unnest(?))", [list(ids)]) if ids else ("", [])
    return con.execute(f"""
        select run_id, split, count(*) as n, count(*) filter (where correct) as n_correct,
               avg(case when correct then 1.0 else 0.0 end) as accuracy
        from predictions {where}
        group by run_id, split
        order by run_id, case split when 'train' then 0 when 'validation' then 1 else 2 end""", params).df()


def confusion_matrix(con: duckdb.DuckDBPyConnection, run_id: str, split: str = "test",
                     labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Counts with true labels as rows and predicted labels as columns.

    Predictions are matched to labels as ``correct`` is computed (``normalize_answer``: a causal
    LM's ``technical _ issue`` is ``technical_issue``). Predictions outside the label set (a
    generative model's free text) are counted in one ``<other>`` column, so every row still sums to
    the label's support.
    """
    from sklearn.metrics import confusion_matrix as sk_confusion

    df = predictions(con, run_id, split)
    labels = list(labels) if labels is not None else sorted(set(df["label"]))
    pred = pd.Series(as_labels(df["prediction"], labels), index=df.index)
    pred = pred.where(pred.isin(labels), OTHER)
    cols = labels + ([OTHER] if (pred == OTHER).any() else [])
    cm = sk_confusion(df["label"], pred, labels=cols)
    out = pd.DataFrame(cm, index=pd.Index(cols, name="label"), columns=pd.Index(cols, name="predicted"))
    return out.loc[labels]


def plot_confusion_matrix(cm: pd.DataFrame, *, title: str = "", normalize: bool = False):
    """A heatmap of ``confusion_matrix(...)`` (counts, or row shares with ``normalize=True``)."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    values = cm.div(cm.sum(axis=1).replace(0, 1), axis=0) if normalize else cm
    fig = Figure(figsize=(1.0 + 0.75 * cm.shape[1], 1.0 + 0.6 * cm.shape[0]))
    ax = fig.subplots()
    im = ax.imshow(values.to_numpy(dtype=float), cmap=plt.get_cmap("Blues"))
    ax.set_xticks(range(cm.shape[1]), cm.columns, rotation=45, ha="right")
    ax.set_yticks(range(cm.shape[0]), cm.index)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true label")
    top = float(values.to_numpy().max()) if values.size else 0.0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            v = values.iat[i, j]
            ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center",
                    color="white" if top and v > top / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return fig


def class_report(con: duckdb.DuckDBPyConnection, run_id: str, split: str = "test") -> pd.DataFrame:
    """Per-class precision, recall, F1 and support (one row per true label), from ``predictions``
    (predictions matched to labels with ``normalize_answer``, as ``correct`` is)."""
    from sklearn.metrics import precision_recall_fscore_support

    df = predictions(con, run_id, split)
    labels = sorted(set(df["label"]))
    pred = pd.Series(as_labels(df["prediction"], labels), index=df.index)
    p, r, f, s = precision_recall_fscore_support(df["label"], pred, labels=labels, zero_division=0)
    predicted = pred.value_counts()
    return pd.DataFrame({"label": labels, "precision": p, "recall": r, "f1": f, "support": s,
                         "predicted": [int(predicted.get(lab, 0)) for lab in labels]})


def wrong_predictions(con: duckdb.DuckDBPyConnection, run_id: str, split: str = "test",
                      limit: int | None = None) -> pd.DataFrame:
    """The misclassified rows of a split (example_id, prompt, label, prediction)."""
    df = predictions(con, run_id, split)
    wrong = df.loc[~df["correct"].astype(bool), ["example_id", "prompt", "label", "prediction"]]
    return wrong.head(limit).reset_index(drop=True) if limit else wrong.reset_index(drop=True)


def group_accuracy(con: duckdb.DuckDBPyConnection, run_id: str, by: str | Sequence[str] = "region",
                   split: str = "test", *, table: str = "examples") -> pd.DataFrame:
    """Accuracy per group: the run's predictions joined to ``examples`` (e.g. by region, age_band).

    Prediction ids that are ``sft_examples`` ids are mapped to their source example first, so
    classifier and causal-LM runs report the same way.
    """
    by = [by] if isinstance(by, str) else list(by)
    maps_sft = table_exists(con, "sft_examples")
    sft_join = "left join sft_examples as s on s.example_id = p.example_id" if maps_sft else ""
    source = "coalesce(e0.example_id, s.source_row_id)" if maps_sft else "e0.example_id"
    group_cols = ", ".join(f'e."{c}"' for c in by)
    df = con.execute(f"""
        with p as (
            select example_id, correct from predictions where run_id = ? and split = ?
        ),
        keyed as (
            select {source} as source_id, p.correct
            from p
            left join "{table}" as e0 on cast(e0.example_id as varchar) = p.example_id
            {sft_join}
        )
        select {group_cols}, count(*) as n, avg(case when k.correct then 1.0 else 0.0 end) as accuracy
        from keyed as k join "{table}" as e on cast(e.example_id as varchar) = k.source_id
        group by all
        order by {group_cols}""", [run_id, split]).df()
    if df.empty:
        raise ValueError(f"run {run_id!r}: no {split!r} predictions join {table!r} on example_id")
    return df


def plot_group_accuracy(table: pd.DataFrame, column: str, *, overall: float | None = None, title: str = ""):
    """Horizontal bars of accuracy per group (a ``group_accuracy`` table), each labelled with its n."""
    from matplotlib.figure import Figure

    t = table.sort_values(column)
    fig = Figure(figsize=(6, 0.5 * len(t) + 1.2))
    ax = fig.subplots()
    bars = ax.barh(t[column].astype(str), t["accuracy"])
    for bar, n in zip(bars, t["n"]):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"n={n}", va="center", fontsize=8)
    if overall is not None:
        ax.axvline(overall, color="grey", linestyle="--", label=f"all groups {overall:.2f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlim=(0, 1.15), xlabel="test accuracy", title=title or f"accuracy by {column}")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- curves

def metric_curves(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Training curves in wide form: one row per step, columns ``train_loss``, ``validation_loss``,
    ``validation_accuracy`` (and any other split_metric the run logged)."""
    df = con.execute("select step, epoch, split, metric, value from run_metrics where run_id = ?"
                     " and split in ('train', 'validation') and metric in ('loss', 'accuracy')"
                     " order by step", [run_id]).df()
    if df.empty:
        raise ValueError(f"run {run_id!r} has no loss or accuracy rows in run_metrics")
    df["name"] = df["split"] + "_" + df["metric"]
    wide = df.pivot_table(index="step", columns="name", values="value", aggfunc="last")
    wide["epoch"] = df.groupby("step")["epoch"].max()
    return wide.reset_index().rename_axis(columns=None)


def plot_curves(con: duckdb.DuckDBPyConnection, run_id: str | Sequence[str], *, title: str = ""):
    """Loss (train and validation) and validation accuracy against optimizer step.

    Several run ids draw one line per run on the same axes (compare runs). The test accuracy of
    a run, when logged, is a marker at the step whose weights were tested.
    """
    from matplotlib.figure import Figure

    ids = [run_id] if isinstance(run_id, str) else list(run_id)
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for rid in ids:
        c = metric_curves(con, rid)
        tag = "" if len(ids) == 1 else f"{rid}: "
        if "train_loss" in c:
            t = c.dropna(subset=["train_loss"])
            ax_loss.plot(t["step"], t["train_loss"], label=f"{tag}train loss", alpha=0.8)
        if "validation_loss" in c:
            v = c.dropna(subset=["validation_loss"])
            ax_loss.plot(v["step"], v["validation_loss"], marker="o", label=f"{tag}validation loss")
        if "validation_accuracy" in c:
            v = c.dropna(subset=["validation_accuracy"])
            line, = ax_acc.plot(v["step"], v["validation_accuracy"], marker="o", label=f"{tag}validation")
            test = con.execute("select step, value from run_metrics where run_id = ? and split = 'test'"
                               " and metric = 'accuracy'", [rid]).fetchall()
            for step, value in test:
                ax_acc.scatter([step], [value], marker="*", s=160, color=line.get_color(), zorder=3,
                               label=f"{tag}test (once, step {step})")
            base = con.execute("select value from run_metrics where run_id = ? and split = 'test'"
                               " and metric = 'majority_baseline'", [rid]).fetchone()
            if base is not None and len(ids) == 1:
                ax_acc.axhline(base[0], color="grey", linestyle="--", label="majority baseline")
    ax_loss.set(xlabel="optimizer step", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="optimizer step", ylabel="accuracy", title="validation accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- summaries

def latest_run(con: duckdb.DuckDBPyConnection, kind: str | None = None) -> str:
    """The most recent completed run (of ``kind`` when given; any kind when it has none) with test predictions."""
    if not table_exists(con, "runs"):
        raise ValueError("the workspace has no runs yet: train a model first (notebook 09)")
    q = """select r.run_id from runs as r
           where r.status = 'completed' {kind}
             and exists (select 1 from predictions as p where p.run_id = r.run_id and p.split = 'test')
           order by r.finished_at desc, r.started_at desc limit 1"""
    for clause, params in (("and r.kind = ?", [kind]), ("", [])) if kind else (("", []),):
        row = con.execute(q.format(kind=clause), params).fetchone()
        if row:
            return row[0]
    raise ValueError("no completed run with test predictions in the workspace: train a model first (notebook 09)")


def run_results(con: duckdb.DuckDBPyConnection, run_id: str) -> dict:
    """Headline figures of one run: test accuracy, majority baseline, best validation accuracy, steps."""
    row = con.execute("select kind, task, model, status from runs where run_id = ?", [run_id]).fetchone()
    if row is None:
        raise ValueError(f"no run {run_id!r} in the runs table")
    m = con.execute("select split, metric, step, value from run_metrics where run_id = ?", [run_id]).df()

    def pick(split: str, metric: str):
        hit = m[(m["split"] == split) & (m["metric"] == metric)]
        return (float(hit["value"].iloc[-1]), int(hit["step"].iloc[-1])) if len(hit) else (None, None)

    test_acc, tested_step = pick("test", "accuracy")
    baseline, _ = pick("test", "majority_baseline")
    if test_acc is None:  # a routine that logged no test metric: fall back to its predictions
        acc = accuracy_by_split(con, run_id)
        hit = acc[acc["split"] == "test"]
        test_acc = float(hit["accuracy"].iloc[0]) if len(hit) else None
    if baseline is None:  # most frequent validation label, scored on test (no peeking at test labels)
        preds = con.execute("select split, label from predictions where run_id = ?", [run_id]).df()
        val, test = preds[preds["split"] == "validation"], preds[preds["split"] == "test"]
        if len(val) and len(test):
            baseline = majority_baseline(val["label"], test["label"])
    val_rows = m[(m["split"] == "validation") & (m["metric"] == "accuracy")]
    at_tested = val_rows[val_rows["step"] == tested_step] if tested_step is not None else val_rows.iloc[0:0]
    return {"run_id": run_id, "kind": row[0], "task": row[1], "model": row[2], "status": row[3],
            "test_accuracy": test_acc, "majority_baseline": baseline,
            "validation_accuracy": float(at_tested["value"].iloc[-1]) if len(at_tested) else
            (float(val_rows["value"].max()) if len(val_rows) else None),
            "best_validation_accuracy": float(val_rows["value"].max()) if len(val_rows) else None,
            "tested_step": tested_step, "steps": int(m["step"].max()) if len(m) else 0}


def run_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    """One line: 'test accuracy 0.93 vs majority baseline 0.31 (+62 points) ...'."""
    r = run_results(con, run_id)
    if r["test_accuracy"] is None:
        return f"run {run_id} ({r['kind']}, {r['status']}): no test accuracy recorded"
    line = f"test accuracy {r['test_accuracy']:.2f}"
    if r["majority_baseline"] is not None:
        line += (f" vs majority baseline {r['majority_baseline']:.2f} "
                 f"({100 * (r['test_accuracy'] - r['majority_baseline']):+.0f} points)")
    if r["validation_accuracy"] is not None:
        line += f"; validation accuracy {r['validation_accuracy']:.2f}"
        if r["tested_step"] is not None:
            line += f" at step {r['tested_step']}"
    return line + f" ({r['kind']} run {run_id}, task {r['task']})"


def compare_runs(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str] | None = None, *,
                 task: str | None = None, kind: str | None = None, digits: int | None = None) -> pd.DataFrame:
    """One row per run with its headline figures, best validation accuracy first (then newest first).

    Choose between runs on ``validation_accuracy``; the test column is there to report, not to
    select on (selecting on test makes its figure optimistic), so the table is not ordered by it.
    ``digits`` rounds the accuracies.
    """
    if not table_exists(con, "runs"):
        return pd.DataFrame(columns=["run_id", "kind", "task", "model", "status", "test_accuracy",
                                     "majority_baseline", "validation_accuracy"])
    q = "select run_id, started_at from runs where true"
    params: list = []
    if run_ids is not None:
        q += " and run_id in (select unnest(?))"
        params.append(list(run_ids))
    if task is not None:
        q += " and task = ?"
        params.append(task)
    if kind is not None:
        q += " and kind = ?"
        params.append(kind)
    rows = con.execute(q + " order by started_at", params).fetchall()
    out = pd.DataFrame([{**run_results(con, rid), "started_at": started} for rid, started in rows])
    if out.empty:
        return out
    cols = ["run_id", "kind", "task", "model", "status", "started_at", "test_accuracy", "majority_baseline",
            "validation_accuracy", "best_validation_accuracy", "tested_step", "steps"]
    out = out[cols].sort_values(["validation_accuracy", "started_at"], ascending=[False, False],
                                na_position="last").reset_index(drop=True)
    if digits is not None:
        num = ["test_accuracy", "majority_baseline", "validation_accuracy", "best_validation_accuracy"]
        out[num] = out[num].astype(float).round(digits)
    return out


def plot_compare_runs(table: pd.DataFrame, *, title: str = ""):
    """Bars of test accuracy per run (from ``compare_runs``), with each run's majority baseline."""
    from matplotlib.figure import Figure

    t = table.dropna(subset=["test_accuracy"])
    fig = Figure(figsize=(max(5.0, 1.2 * len(t) + 2), 4))
    ax = fig.subplots()
    x = range(len(t))
    ax.bar(x, t["test_accuracy"], label="test accuracy")
    if "majority_baseline" in t:
        ax.scatter(x, t["majority_baseline"], marker="_", s=600, color="black", label="majority baseline")
    ax.set_xticks(list(x), [f"{k}\n{r[-6:]}" for k, r in zip(t["kind"], t["run_id"])], fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0, 1.02), title=title or "test accuracy per run")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
