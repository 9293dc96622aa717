"""Bias metrics: representation, pre-training label bias, labeling bias, and model bias (Fairlearn).

    workbench bias report --table examples --group age_band --label intent --strata region

Pure functions over pandas frames (rows, or counts with an ``n`` column); ``workbench.bias_report``
reads the workspace, turns these numbers into findings, figures, the HTML report and the
``bias_metrics`` table.

Conventions (SageMaker Clarify's pre-training metrics, docs "Pre-training bias metrics"): the
*facet* ``d`` is one group (``age_band=65+``), ``a`` is the rest of the rows. ``Pa``/``Pd`` are the
label distributions of ``a``/``d`` over every label value seen anywhere in the data.

    CI   = (na - nd) / (na + nd)                 class imbalance; > 0: the facet is the smaller side
    DPL  = qa - qd                               per label value (one-vs-rest); > 0: the facet has less of it
    KL   = sum Pa log(Pa / Pd)                   nats; infinite where Pa > 0 = Pd (see below)
    JS   = 0.5 * (KL(Pa, P) + KL(Pd, P)), P = (Pa + Pd) / 2
    LP   = sqrt(sum (Pa - Pd)^2)                 L2 norm
    TVD  = 0.5 * sum |Pa - Pd|
    KS   = max |Pa - Pd|
    CDDL = (1/n) sum_i n_i * DD_i over strata i, DD_i = nd_i(0)/n_i(0) - nd_i(1)/n_i(1)
           (share of the stratum's rejected rows in the facet minus share of its accepted rows;
           "accepted" = the label value, one-vs-rest; a stratum with no accepted or no rejected
           rows counts that side as 0, as Clarify's implementation does)

The distance metrics (KL, JS, LP, TVD, KS) are computed over the whole label distribution
(``label`` = None) and, for multi-class labels, one-vs-rest for each label value (the binary
distribution [share, 1 - share]; there LP, TVD and KS are functions of |DPL|).

Label values seen in only one side. Clarify drops label values absent from either side before it
computes KL/JS/LP/TVD/KS. Here nothing is dropped: the label universe is every value in the data,
a missing value has probability 0, and 0 * log(0 / q) = 0. JS, LP, TVD and KS are then finite and
count the value; KL(Pa, Pd) is infinite when the facet lacks a value the rest has. Reported as
``inf`` plus a finding, unless ``kl_epsilon`` > 0 asks for additive (Lidstone) smoothing of the
counts: P(x) = (n(x) + eps) / (n + eps * K), K = number of label values.
Empty facet (no rows): CI = 1 (an empty rest: -1); every label metric is None (undefined).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd


@dataclass
class BiasConfig:
    """Thresholds that turn numbers into warnings, and the knobs of the estimates."""
    min_group_size: int = 30            # groups with fewer rows are flagged: their metrics are noisy
    representation_ratio: float = 0.8   # flag share / expected below this (four-fifths rule) or above 1/this
    uniform_reference: bool = True      # no reference given for a column: expect equal shares (1/k)
    dpl_threshold: float = 0.10         # flag |DPL| above this (10 points of a label's share, facet vs rest)
    tvd_threshold: float = 0.15         # flag label mixes whose total variation distance exceeds this
    cddl_threshold: float = 0.20        # flag |CDDL| above this (CDDL scales with the facet's share of rows)
    kl_epsilon: float = 0.0             # additive smoothing of label counts for KL; 0 = exact (may be inf)
    ci_level: float = 0.95              # confidence level of every interval (Wilson, Newcombe, bootstrap)
    accuracy_gap_threshold: float = 0.10  # model: flag a group whose accuracy is this far below overall
    parity_threshold: float = 0.10      # model: flag demographic parity / equalized odds differences above this
    n_boot: int = 100                   # model: bootstrap resamples for intervals (0 = none); ~linear cost
    seed: int = 0                       # bootstrap random state

    def __post_init__(self):
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level must be in (0, 1), got {self.ci_level}")
        if not 0 < self.representation_ratio <= 1:
            raise ValueError(f"representation_ratio must be in (0, 1], got {self.representation_ratio}")
        if self.kl_epsilon < 0 or self.min_group_size < 0 or self.n_boot < 0:
            raise ValueError("kl_epsilon, min_group_size and n_boot must be >= 0")

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(0.5 + self.ci_level / 2)


MISSING = "(missing)"  # group value shown for NULL
SEP = " & "            # joins the parts of an intersection: 'age_band=65+ & region=north'

METRIC_COLUMNS = ["column", "facet", "metric", "label", "value", "ci_low", "ci_high", "n_facet", "n_rest"]


# --------------------------------------------------------------------------- small helpers

def facet_name(column: str | Sequence[str], value: Any | Sequence[Any]) -> str:
    """'age_band=65+' for one column; 'age_band=65+ & region=north' for an intersection."""
    if isinstance(column, str):
        return f"{column}={value}"
    return SEP.join(f"{c}={v}" for c, v in zip(column, value))


def column_name(columns: str | Sequence[str]) -> str:
    return columns if isinstance(columns, str) else SEP.join(columns)


def counts_of(df: pd.DataFrame, cols: Sequence[str], count_col: str | None = None) -> pd.DataFrame:
    """Rows (or partial counts in ``count_col``) summed per distinct ``cols``; NULL groups kept."""
    cols = list(cols)
    missing = [c for c in cols + ([count_col] if count_col else []) if c not in df.columns]
    if missing:
        raise ValueError(f"no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, df.columns))})")
    w = df[count_col].astype("int64") if count_col else pd.Series(1, index=df.index, dtype="int64")
    frame = df[cols].copy()
    frame["n"] = w.to_numpy()
    return frame.groupby(cols, dropna=False, sort=True, observed=True)["n"].sum().reset_index()


def _group_values(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), MISSING).astype(str)


def wilson(k: float, n: float, z: float) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion k/n (None for n = 0)."""
    if n <= 0:
        return None, None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def metric_row(column, facet, metric, label, value, lo=None, hi=None, n_facet=None, n_rest=None) -> dict:
    """One long metric row (``METRIC_COLUMNS``); ``n_facet``/``n_rest`` are the sizes behind it."""
    return dict(column=column, facet=facet, metric=metric, label=label, value=value,
                ci_low=lo, ci_high=hi, n_facet=n_facet, n_rest=n_rest)


def metric_frame(rows: list[dict]) -> pd.DataFrame:
    """Long metric rows as a frame with float ``value, ci_low, ci_high`` (None becomes NaN)."""
    out = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    for c in ("value", "ci_low", "ci_high"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    return out


# --------------------------------------------------------------------------- 1. representation

def representation(df: pd.DataFrame, group_cols: Sequence[str], *,
                   reference: Mapping[str, Mapping[str, float]] | None = None,
                   intersections: bool = True, count_col: str | None = None,
                   config: BiasConfig | None = None) -> pd.DataFrame:
    """Counts and shares per group of each column (and of their intersection), against a reference.

    ``reference`` maps a column to its expected shares (``{"age_band": {"65+": 0.25, ...}}``;
    normalized to sum 1). A reference group absent from the data appears with ``n = 0``. Without a
    reference, ``config.uniform_reference`` expects 1/k per group; an intersection expects the
    product of its columns' expected shares (independence). Returns one row per group: ``column,
    group, facet, n, share, share_low, share_high`` (Wilson interval), ``expected_share, ratio``.
    """
    cfg = config or BiasConfig()
    if not group_cols:
        raise ValueError("group_cols: give at least one group column")
    reference = {k: _normalized(k, v) for k, v in (reference or {}).items()}
    unknown = sorted(set(reference) - set(group_cols))
    if unknown:
        raise ValueError(f"reference names column(s) {unknown} that are not in group_cols {list(group_cols)}")
    total = int(df[count_col].sum()) if count_col else len(df)
    expected: dict[str, dict[str, float]] = {}
    frames = []
    for col in group_cols:
        c = counts_of(df, [col], count_col)
        c[col] = _group_values(c[col])
        c = c.groupby(col, sort=True)["n"].sum()
        groups = list(c.index) + [g for g in reference.get(col, {}) if g not in c.index]
        if col in reference:
            exp = {g: reference[col].get(g, 0.0) for g in groups}
        elif cfg.uniform_reference and groups:
            exp = {g: 1 / len(groups) for g in groups}
        else:
            exp = {}
        expected[col] = exp
        frames.append(pd.DataFrame({"column": col, "group": groups, "facet": [facet_name(col, g) for g in groups],
                                    "n": [int(c.get(g, 0)) for g in groups],
                                    "expected_share": [exp.get(g) for g in groups]}))
    if intersections and len(group_cols) > 1:
        c = counts_of(df, list(group_cols), count_col)
        for col in group_cols:
            c[col] = _group_values(c[col])
        c = c.groupby(list(group_cols), sort=True)["n"].sum().reset_index()
        exp = [math.prod(expected[col].get(r[col], float("nan")) for col in group_cols) if all(expected.values())
               else None for _, r in c.iterrows()]
        frames.append(pd.DataFrame({
            "column": column_name(group_cols),
            "group": [SEP.join(r[col] for col in group_cols) for _, r in c.iterrows()],
            "facet": [facet_name(group_cols, [r[col] for col in group_cols]) for _, r in c.iterrows()],
            "n": c["n"].astype(int).tolist(), "expected_share": exp}))
    out = pd.concat(frames, ignore_index=True)
    out["expected_share"] = pd.to_numeric(out["expected_share"], errors="coerce").astype("float64")
    out["share"] = out["n"] / total if total else np.nan
    ci = [wilson(n, total, cfg.z) for n in out["n"]]
    out["share_low"] = [lo for lo, _ in ci]
    out["share_high"] = [hi for _, hi in ci]
    out["ratio"] = np.where(out["expected_share"] > 0, out["share"] / out["expected_share"], np.nan)
    return out[["column", "group", "facet", "n", "share", "share_low", "share_high", "expected_share", "ratio"]]


def _normalized(col: str, shares: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(shares, Mapping) or not shares:
        raise ValueError(f"reference[{col!r}] must map group values to expected shares, got {shares!r}")
    bad = {k: v for k, v in shares.items() if not isinstance(v, (int, float)) or v < 0}
    if bad:
        raise ValueError(f"reference[{col!r}]: shares must be numbers >= 0, got {bad}")
    total = float(sum(shares.values()))
    if total <= 0:
        raise ValueError(f"reference[{col!r}]: shares sum to 0")
    return {str(k): v / total for k, v in shares.items()}


# --------------------------------------------------------------------------- 2. pre-training label metrics

def class_imbalance(n_a: int, n_d: int) -> float | None:
    """CI = (na - nd) / (na + nd): > 0 when the facet d is the smaller side; None when both are empty."""
    return None if n_a + n_d == 0 else (n_a - n_d) / (n_a + n_d)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """sum p log(p/q), with 0 log(0/q) = 0 and p log(p/0) = inf for p > 0."""
    mask = p > 0
    if np.any(q[mask] == 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def distribution_metrics(counts_a: Sequence[float], counts_d: Sequence[float], *,
                         kl_epsilon: float = 0.0) -> dict[str, float | None]:
    """KL, JS, LP, TVD, KS of two label-count vectors over the same label values (a = rest, d = facet).

    Every value is None when either side has no rows. ``kl_epsilon`` smooths the counts for KL only.
    """
    a = np.asarray(counts_a, dtype="float64")
    d = np.asarray(counts_d, dtype="float64")
    if a.shape != d.shape:
        raise ValueError("counts_a and counts_d must have one entry per label value each")
    if a.sum() == 0 or d.sum() == 0:
        return dict.fromkeys(("KL", "JS", "LP", "TVD", "KS"))
    pa, pd_ = a / a.sum(), d / d.sum()
    if kl_epsilon > 0:
        k = len(a)
        kl = _kl((a + kl_epsilon) / (a.sum() + kl_epsilon * k), (d + kl_epsilon) / (d.sum() + kl_epsilon * k))
    else:
        kl = _kl(pa, pd_)
    m = (pa + pd_) / 2
    diff = pa - pd_
    return {"KL": kl, "JS": 0.5 * (_kl(pa, m) + _kl(pd_, m)), "LP": float(np.sqrt(np.sum(diff ** 2))),
            "TVD": float(0.5 * np.sum(np.abs(diff))), "KS": float(np.max(np.abs(diff)))}


def dpl(pos_a: int, n_a: int, pos_d: int, n_d: int, z: float = 1.959964) -> tuple[float | None, float | None, float | None]:
    """DPL = qa - qd with Newcombe's hybrid score interval (from the two Wilson intervals; sound
    near 0 and 1, where a Wald interval collapses). (None, None, None) when a side is empty."""
    if n_a == 0 or n_d == 0:
        return None, None, None
    qa, qd = pos_a / n_a, pos_d / n_d
    la, ua = wilson(pos_a, n_a, z)
    ld, ud = wilson(pos_d, n_d, z)
    diff = qa - qd
    return diff, diff - math.sqrt((qa - la) ** 2 + (ud - qd) ** 2), diff + math.sqrt((ua - qa) ** 2 + (qd - ld) ** 2)


def cddl(strata: pd.DataFrame) -> float | None:
    """CDDL from per-stratum counts: columns ``pos_d, pos, neg_d, neg`` (facet accepted, all accepted,
    facet rejected, all rejected) per stratum. None when the data has no accepted or no rejected row,
    or the facet is empty."""
    pos, neg = strata["pos"].sum(), strata["neg"].sum()
    if pos == 0 or neg == 0 or (strata["pos_d"].sum() + strata["neg_d"].sum()) == 0:
        return None
    n_i = strata["pos"] + strata["neg"]
    accepted = np.where(strata["pos"] > 0, strata["pos_d"] / strata["pos"].where(strata["pos"] > 0, 1), 0.0)
    rejected = np.where(strata["neg"] > 0, strata["neg_d"] / strata["neg"].where(strata["neg"] > 0, 1), 0.0)
    return float(np.sum(n_i * (rejected - accepted)) / n_i.sum())


def label_bias(df: pd.DataFrame, group_cols: str | Sequence[str], label_col: str, *,
               strata_col: str | None = None, groups: Iterable[str] | None = None,
               count_col: str | None = None, per_label: bool = True,
               config: BiasConfig | None = None) -> pd.DataFrame:
    """Clarify's pre-training metrics for every group of ``group_cols`` (one column, or several
    as one intersection) against the rest of the rows.

    ``groups`` adds facet values to evaluate even if absent (an empty facet: CI = 1, the rest
    None). Rows with a NULL label are left out. Returns long rows (``METRIC_COLUMNS``): ``CI``,
    ``KL/JS/LP/TVD/KS`` with ``label`` None (whole distribution) and, when ``per_label``, per label
    value (one-vs-rest), ``DPL`` and ``CDDL`` (with ``strata_col``) per label value, plus
    ``label_share`` (the facet's share of each label, Wilson interval) for plots and sentences.
    DPL intervals are Newcombe's hybrid score intervals.
    """
    cfg = config or BiasConfig()
    cols = [group_cols] if isinstance(group_cols, str) else list(group_cols)
    keys = cols + [label_col] + ([strata_col] if strata_col else [])
    c = counts_of(df, keys, count_col)
    c = c[c[label_col].notna()].copy()
    for col in cols:
        c[col] = _group_values(c[col])
    c["_facet"] = [facet_name(cols if len(cols) > 1 else cols[0], vals if len(cols) > 1 else vals[0])
                   for vals in c[cols].itertuples(index=False, name=None)]
    if strata_col:
        c[strata_col] = _group_values(c[strata_col])
    c[label_col] = c[label_col].astype(str)
    labels = sorted(c[label_col].unique())
    colname = column_name(cols)
    facets = list(dict.fromkeys(sorted(c["_facet"].unique())))
    for g in groups or []:
        name = facet_name(cols[0], g) if len(cols) == 1 else facet_name(cols, g)
        if name not in facets:
            facets.append(name)
    by_label = c.groupby(["_facet", label_col])["n"].sum().unstack(fill_value=0).reindex(
        index=facets, columns=labels, fill_value=0)
    total_by_label = by_label.sum(axis=0)
    rows: list[dict] = []
    for facet in facets:
        d = by_label.loc[facet].to_numpy(dtype="float64")
        a = total_by_label.to_numpy(dtype="float64") - d
        n_d, n_a = int(d.sum()), int(a.sum())
        rows.append(metric_row(colname, facet, "CI", None, class_imbalance(n_a, n_d), n_facet=n_d, n_rest=n_a))
        for metric, value in distribution_metrics(a, d, kl_epsilon=cfg.kl_epsilon).items():
            rows.append(metric_row(colname, facet, metric, None, value, n_facet=n_d, n_rest=n_a))
        for i, lab in enumerate(labels):
            lo, hi = wilson(d[i], n_d, cfg.z)
            rows.append(metric_row(colname, facet, "label_share", lab, d[i] / n_d if n_d else None, lo, hi, n_d, n_a))
            value, lo, hi = dpl(int(a[i]), n_a, int(d[i]), n_d, cfg.z)
            rows.append(metric_row(colname, facet, "DPL", lab, value, lo, hi, n_d, n_a))
            if per_label and len(labels) > 2:
                ovr = distribution_metrics([a[i], n_a - a[i]], [d[i], n_d - d[i]], kl_epsilon=cfg.kl_epsilon)
                rows += [metric_row(colname, facet, m, lab, v, n_facet=n_d, n_rest=n_a) for m, v in ovr.items()]
        if strata_col:
            s = c.assign(_in=c["_facet"] == facet)
            for lab in labels:
                pos = s[label_col] == lab
                strata = pd.DataFrame({
                    "pos_d": s["n"].where(pos & s["_in"], 0), "pos": s["n"].where(pos, 0),
                    "neg_d": s["n"].where(~pos & s["_in"], 0), "neg": s["n"].where(~pos, 0),
                    strata_col: s[strata_col]}).groupby(strata_col).sum()
                rows.append(metric_row(colname, facet, "CDDL", lab, cddl(strata), n_facet=n_d, n_rest=n_a))
    return metric_frame(rows)


def labels_only_in_one_side(df: pd.DataFrame, group_col: str, label_col: str,
                            count_col: str | None = None) -> pd.DataFrame:
    """Label values that occur in a group but never in the rest of the rows, or the reverse.

    One row per (facet, label): ``column, facet, label, side`` ('facet_only' | 'rest_only'),
    ``n`` (rows of that label on the side that has it). Empty facets are not listed.
    """
    c = counts_of(df, [group_col, label_col], count_col)
    c = c[c[label_col].notna()].copy()
    c[group_col] = _group_values(c[group_col])
    c[label_col] = c[label_col].astype(str)
    t = c.groupby([group_col, label_col])["n"].sum().unstack(fill_value=0)
    rows = []
    total = t.sum(axis=0)
    for g in t.index:
        for lab in t.columns:
            n_d, n_a = int(t.loc[g, lab]), int(total[lab] - t.loc[g, lab])
            if n_d > 0 and n_a == 0:
                rows.append((group_col, facet_name(group_col, g), lab, "facet_only", n_d))
            elif n_d == 0 and n_a > 0:
                rows.append((group_col, facet_name(group_col, g), lab, "rest_only", n_a))
    return pd.DataFrame(rows, columns=["column", "facet", "label", "side", "n"])


# --------------------------------------------------------------------------- 3. labeling bias

def current_labels(labels: pd.DataFrame, label_values: Iterable[str] | None = None) -> pd.DataFrame:
    """The label each annotator currently gives each item, from an append-only ``labels`` table.

    The latest row per (item_id, annotator) by ``created_at`` wins; it counts as a label when its
    ``value`` is not null, its ``kind`` (if the column exists) is null or 'label', and (when
    ``label_values`` is given) the value is one of them. A later retraction, skip or null row
    therefore removes an earlier label. Returns ``item_id, annotator, value``.
    """
    need = ["item_id", "annotator", "value"]
    missing = [c for c in need if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table lacks column(s) {missing} (has {list(labels.columns)})")
    df = labels.copy()
    df["_order"] = np.arange(len(df))
    sort = (["created_at"] if "created_at" in df.columns else []) + ["_order"]
    df = df.sort_values(sort, kind="stable").groupby(["item_id", "annotator"], sort=False).tail(1)
    ok = df["value"].notna()
    if "kind" in df.columns:
        ok &= df["kind"].isna() | (df["kind"].astype(str).str.lower() == "label")
    if label_values is not None:
        ok &= df["value"].astype(str).isin({str(v) for v in label_values})
    out = df.loc[ok, need].copy()
    out["value"] = out["value"].astype(str)
    return out.sort_values(["item_id", "annotator"]).reset_index(drop=True)


def _unit_counts(units: Iterable[Sequence[str]]) -> np.ndarray:
    """Items x values count matrix of ``units`` (the values given to each item)."""
    units = [list(u) for u in units]
    cats = sorted({v for u in units for v in u})
    return np.array([[u.count(c) for c in cats] for u in units], dtype=float).reshape(len(units), len(cats))


def krippendorff_alpha_nominal(units: Iterable[Sequence[str]]) -> float | None:
    """Krippendorff's alpha for nominal values (``workbench.agreement.krippendorff_alpha``, the one
    definition); ``units`` = the values given to each item.

    Items with fewer than two values are not pairable and are ignored. None when no pairs exist or
    every pairable value is the same (expected disagreement 0: alpha undefined).
    """
    from .agreement import krippendorff_alpha

    alpha = krippendorff_alpha(_unit_counts(units))
    return alpha if math.isfinite(alpha) else None


def pairwise_agreement(units: Iterable[Sequence[str]]) -> tuple[float | None, int]:
    """Observed agreement, as ``label_agreement``'s ``percent_agreement``: per item the share of
    agreeing pairs of its ratings, averaged over items with 2+ ratings; (value, pairs)."""
    from .agreement import percent_agreement

    counts = _unit_counts(units)
    m = counts.sum(axis=1)
    pairs = int((m * (m - 1) // 2).sum())
    return (percent_agreement(counts) if pairs else None), pairs


def labeling_bias(current: pd.DataFrame, items: pd.DataFrame, group_cols: Sequence[str], *,
                  final: pd.DataFrame | None = None, config: BiasConfig | None = None) -> pd.DataFrame:
    """Label rates per annotator per group, and agreement per group.

    ``current``: ``item_id, annotator, value`` (from ``current_labels``); ``items``: ``item_id`` and
    the group columns; ``final``: optional ``item_id, value`` (``labels_final``). Metrics (facet
    'annotator=A & age_band=65+' for rates, 'age_band=65+' for agreement):
    ``label_rate`` (the annotator's share of a label on the group's items, Wilson interval),
    ``DPL`` (other annotators' rate minus this annotator's, on the same group's items),
    ``agreement`` (pairwise observed agreement), ``krippendorff_alpha``, ``final_agreement``
    (share of annotator labels equal to the final label), ``n_items`` (items labeled).
    """
    cfg = config or BiasConfig()
    missing = [c for c in ["item_id", *group_cols] if c not in items.columns]
    if missing:
        raise ValueError(f"items lack column(s) {missing} (have {list(items.columns)})")
    df = current.merge(items[["item_id", *group_cols]].drop_duplicates("item_id"), on="item_id", how="inner")
    labels = sorted(df["value"].unique())
    rows: list[dict] = []
    for col in group_cols:
        df[col] = _group_values(df[col])
        for g, part in df.groupby(col, sort=True):
            gname = facet_name(col, g)
            units = [list(v) for v in part.groupby("item_id")["value"]
                     .apply(list) if len(v) >= 2]
            agreement, n_pairs = pairwise_agreement(units)
            rows.append(metric_row(col, gname, "n_items", None, float(part["item_id"].nunique())))
            rows.append(metric_row(col, gname, "agreement", None, agreement, n_facet=n_pairs))
            rows.append(metric_row(col, gname, "krippendorff_alpha", None, krippendorff_alpha_nominal(units),
                             n_facet=len(units)))
            if final is not None and len(final):
                f = part.merge(final[["item_id", "value"]].rename(columns={"value": "_final"}), on="item_id")
                if len(f):
                    k = int((f["value"] == f["_final"].astype(str)).sum())
                    lo, hi = wilson(k, len(f), cfg.z)
                    rows.append(metric_row(col, gname, "final_agreement", None, k / len(f), lo, hi, len(f)))
            for ann, mine in part.groupby("annotator", sort=True):
                others = part[part["annotator"] != ann]
                fname = facet_name(["annotator", col], [ann, g])
                for lab in labels:
                    k = int((mine["value"] == lab).sum())
                    lo, hi = wilson(k, len(mine), cfg.z)
                    rows.append(metric_row(col, fname, "label_rate", lab, k / len(mine), lo, hi, len(mine), len(others)))
                    value, lo, hi = dpl(int((others["value"] == lab).sum()), len(others), k, len(mine), cfg.z)
                    rows.append(metric_row(col, fname, "DPL", lab, value, lo, hi, len(mine), len(others)))
    return metric_frame(rows)


# --------------------------------------------------------------------------- 4. model bias (Fairlearn)

def accuracy(y_true, y_pred) -> float:
    """Share of exact matches (= ``sklearn.metrics.accuracy_score``, without its input checks:
    the bootstrap calls it thousands of times)."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def class_rate(cls: str, *, given: str) -> Callable:
    """One-vs-rest rates of class ``cls``: 'pred' = selection rate P(pred = c), 'true' = recall
    (TPR) P(pred = c | true = c), 'other' = FPR P(pred = c | true != c); NaN when undefined."""
    def rate(y_true, y_pred):
        yt, yp = np.asarray(y_true), np.asarray(y_pred) == cls
        mask = {"pred": np.ones(len(yp), bool), "true": yt == cls, "other": yt != cls}[given]
        return float(np.mean(yp[mask])) if mask.any() else float("nan")
    rate.__name__ = f"{given}_rate_{cls}"
    return rate


def resolve_metrics(metrics: Mapping[str, Callable] | Iterable[str] | None) -> dict[str, Callable]:
    """Metric functions ``f(y_true, y_pred)``: a mapping, or names of ``sklearn.metrics`` functions
    (``"balanced_accuracy_score"``; ``"f1_score"`` and the other averaged ones get ``average="macro"``)."""
    import sklearn.metrics
    from functools import partial

    if metrics is None:
        return {"accuracy": accuracy}
    if isinstance(metrics, Mapping):
        return dict(metrics)
    out: dict[str, Callable] = {}
    for name in metrics:
        if name == "accuracy":
            out[name] = accuracy
            continue
        fn = getattr(sklearn.metrics, name, None)
        if not callable(fn) or not name.endswith(("_score", "_error", "_loss")):
            raise ValueError(f"metric {name!r}: not 'accuracy' nor a metric function of sklearn.metrics")
        if name in ("f1_score", "precision_score", "recall_score", "fbeta_score", "jaccard_score"):
            fn = partial(fn, average="macro", zero_division=0)
        out[name] = fn
    return out


def model_bias(df: pd.DataFrame, group_cols: Sequence[str], *, y_true: str = "label", y_pred: str = "prediction",
               metrics: Mapping[str, Callable] | Iterable[str] | None = None, intersections: bool = False,
               config: BiasConfig | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-group model metrics with Fairlearn's ``MetricFrame`` (bootstrap intervals), and parity.

    For each group column (and their intersection when asked): ``accuracy`` and every metric in
    ``metrics``, plus per class (one-vs-rest) ``selection_rate``, ``recall`` (TPR) and ``fpr``,
    overall and by group, with ``MetricFrame(n_boot=config.n_boot, ci_quantiles=...)`` intervals.
    Per class, Fairlearn's ``demographic_parity_difference/ratio`` and
    ``equalized_odds_difference/ratio`` (between groups, the class as positive label); the
    demographic parity intervals are the bootstrap intervals of the selection rate's
    between-group difference and ratio (the same quantity); equalized odds has none. Rows with
    ``label`` None hold the worst class. Returns (long metric rows: facet '(all)' for overall
    values, the column name for between-group values; {column: MetricFrame}).
    """
    import warnings

    from fairlearn.metrics import (MetricFrame, demographic_parity_difference, demographic_parity_ratio,
                                   equalized_odds_difference, equalized_odds_ratio)

    cfg = config or BiasConfig()
    if df.empty:
        raise ValueError("no predictions to evaluate")
    missing = [c for c in [y_true, y_pred, *group_cols] if c not in df.columns]
    if missing:
        raise ValueError(f"predictions frame lacks column(s) {missing}")
    yt = df[y_true].astype(str).to_numpy()
    yp = df[y_pred].astype(str).to_numpy()
    true_classes = set(yt)
    # a class only the model answers (a causal LM's invalid answer, a label missing from this split)
    # still has a selection rate and FPR per group: answering it more often for one group is a bias
    classes = sorted(true_classes | set(yp))
    fns = resolve_metrics(metrics)
    if "accuracy" not in fns:
        fns = {"accuracy": accuracy, **fns}
    rates: dict[str, Callable] = {}  # per-class TPR / FPR: point values only (see below)
    for cls in classes:
        fns[f"selection_rate[{cls}]"] = class_rate(cls, given="pred")
        if cls in true_classes:
            rates[f"recall[{cls}]"] = class_rate(cls, given="true")
        rates[f"fpr[{cls}]"] = class_rate(cls, given="other")
    alpha = 1 - cfg.ci_level
    boot = dict(n_boot=cfg.n_boot, ci_quantiles=[alpha / 2, 1 - alpha / 2], random_state=cfg.seed) if cfg.n_boot else {}
    sets = [[c] for c in group_cols] + ([list(group_cols)] if intersections and len(group_cols) > 1 else [])
    rows: list[dict] = []
    frames: dict[str, Any] = {}
    for k, cols in enumerate(sets):
        sf = df[cols].apply(_group_values)
        key = sf if len(cols) > 1 else sf[cols[0]]
        colname = column_name(cols)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn metrics warn on groups lacking a class
            mf = MetricFrame(metrics=fns, y_true=yt, y_pred=yp, sensitive_features=key, **boot)
            # Fairlearn's bootstrap costs about 1 ms per metric, group and resample on this machine:
            # the per-class TPR/FPR (equalized odds has no interval anyway) skip it.
            mf_rates = MetricFrame(metrics=rates, y_true=yt, y_pred=yp, sensitive_features=key)
        frames[colname] = mf
        by = pd.concat([mf.by_group, mf_rates.by_group], axis=1)
        overall = pd.concat([mf.overall, mf_rates.overall])
        lo_by, hi_by = mf.by_group_ci if boot else (None, None)
        lo_all, hi_all = mf.overall_ci if boot else (None, None)
        d_lo, d_hi = mf.difference_ci() if boot else (None, None)
        r_lo, r_hi = mf.ratio_ci() if boot else (None, None)
        sizes = key.value_counts()
        for name in [*fns, *rates]:
            metric, label = _split_metric(name)
            if k == 0:  # overall values once per report
                rows.append(metric_row(None, "(all)", metric, label, overall[name], _at(lo_all, name), _at(hi_all, name),
                                 n_facet=len(df)))
            for g in by.index:
                facet = facet_name(cols, g) if len(cols) > 1 else facet_name(cols[0], g)
                n = int(sizes.get(g, 0))
                rows.append(metric_row(colname, facet, metric, label, by.loc[g, name], _at(lo_by, (g, name)),
                                 _at(hi_by, (g, name)), n, len(df) - n))
        worst: dict[str, float] = {}
        for cls in classes:
            tb, pb = yt == cls, yp == cls
            sel = f"selection_rate[{cls}]"
            values = {
                "demographic_parity_difference": (demographic_parity_difference(tb, pb, sensitive_features=key),
                                                  _at(d_lo, sel), _at(d_hi, sel)),
                "demographic_parity_ratio": (demographic_parity_ratio(tb, pb, sensitive_features=key),
                                             _at(r_lo, sel), _at(r_hi, sel)),
            }
            if cls in true_classes:  # equalized odds needs true positives of the class
                values["equalized_odds_difference"] = (equalized_odds_difference(tb, pb, sensitive_features=key),
                                                       None, None)
                values["equalized_odds_ratio"] = (equalized_odds_ratio(tb, pb, sensitive_features=key), None, None)
            for metric, (v, lo, hi) in values.items():
                rows.append(metric_row(colname, colname, metric, cls, v, lo, hi))
                if _isnum(v):
                    worst[metric] = (max if metric.endswith("difference") else min)(worst.get(metric, v), v)
        rows += [metric_row(colname, colname, metric, None, v) for metric, v in worst.items()]
    return metric_frame(rows), frames


def _at(frame, key):
    """A value of a bootstrap-interval Series/DataFrame (None without intervals or for that metric)."""
    if frame is None:
        return None
    if isinstance(key, tuple):
        g, name = key
        return frame.loc[g, name] if name in frame.columns else None
    return frame[key] if key in frame.index else None


def _isnum(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _split_metric(name: str) -> tuple[str, str | None]:
    """'selection_rate[refund]' -> ('selection_rate', 'refund'); 'accuracy' -> ('accuracy', None)."""
    if name.endswith("]") and "[" in name:
        base, lab = name[:-1].split("[", 1)
        return base, lab
    return name, None
