"""Inter-annotator agreement: Cohen's kappa, Fleiss' kappa, Krippendorff's alpha, per group.

    python -c "import workbench, workbench.agreement as a; print(a.agreement(workbench.connect(), 'intent'))"

Nominal labels only. Items count when two or more annotators labeled them. Cohen's kappa is per
pair of annotators on the items both labeled; Fleiss' kappa uses every rating of each item
(Fleiss 1971, generalized to a varying number of raters per item); Krippendorff's alpha (nominal)
is computed from the coincidence matrix and handles missing ratings. Per group attribute
(``region``, ``age_band``, ...) the same statistics, with a bootstrap interval for alpha so a drop in
one small group can be told from noise. ``write_agreement`` stores the rows in ``label_agreement``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .labeling import ensure_tables, table_exists, votes
from .workspace import transaction

_DDL = """
create table if not exists label_agreement (
    label_set varchar, group_column varchar, group_value varchar, statistic varchar, annotators varchar,
    value double, ci_low double, ci_high double, n_items bigint, n_ratings bigint, n_annotators bigint,
    computed_at timestamp
)
"""


@dataclass
class AgreementConfig:
    groups: tuple[str, ...] = ("region", "age_band")  # pool columns to split agreement by
    bootstrap: int = 500      # resamples of items for alpha's interval; 0 turns intervals off
    level: float = 0.90       # interval coverage
    min_pair_items: int = 2   # Cohen's kappa only for pairs with at least this many shared items
    seed: int = 7


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e).

    NaN when chance agreement is 1 (both gave one and the same label throughout).
    """
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"cohen_kappa needs two equal, non-empty label lists (got {len(a)} and {len(b)})")
    cats = sorted(set(a) | set(b), key=str)
    p_o = float(np.mean(a == b))
    p_e = sum(float(np.mean(a == c)) * float(np.mean(b == c)) for c in cats)
    return float("nan") if p_e == 1 else (p_o - p_e) / (1 - p_e)


def counts_matrix(v: pd.DataFrame, categories: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], list]:
    """Items x categories counts of ratings from long rows (item_id, value)."""
    cats = list(categories) if categories is not None else sorted(v["value"].unique(), key=str)
    ct = pd.crosstab(v["item_id"], v["value"]).reindex(columns=cats, fill_value=0)
    return ct.to_numpy(dtype=float), cats, list(ct.index)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from an items x categories count matrix (items with fewer than 2 ratings are dropped).

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)); p_j = sum_i n_ij / sum_i n_i;
    kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2).
    """
    counts = np.asarray(counts, dtype=float)
    n_i = counts.sum(axis=1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if not len(counts):
        return float("nan")
    p_i = ((counts ** 2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float((p_j ** 2).sum())
    return float("nan") if p_e == 1 else (float(p_i.mean()) - p_e) / (1 - p_e)


def _alpha_parts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pairable item (2+ ratings): m_u, sum_c n_uc (n_uc - 1) / (m_u - 1), and n_uc."""
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    same = (counts * (counts - 1)).sum(axis=1) / (m - 1)
    return m, same, counts


def _alpha(n: np.ndarray, same: np.ndarray, n_c: np.ndarray) -> np.ndarray:
    # alpha = 1 - D_o / D_e with D_o = (n - sum_c o_cc) / n and D_e = (n^2 - sum_c n_c^2) / (n (n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 - (n - 1) * (n - same) / (n ** 2 - (n_c ** 2).sum(axis=-1))


def krippendorff_alpha(counts: np.ndarray) -> float:
    """Krippendorff's alpha for nominal data from an items x categories count matrix.

    Coincidences within item u count each ordered pair of its m_u ratings with weight 1/(m_u - 1);
    items with one rating are not pairable and drop out.
    """
    m, same, c = _alpha_parts(counts)
    if not len(m):
        return float("nan")
    return float(_alpha(m.sum(), same.sum(), c.sum(axis=0)))


def krippendorff_alpha_interval(counts: np.ndarray, *, resamples: int = 500, level: float = 0.90,
                                seed: int = 7) -> tuple[float, float]:
    """Percentile bootstrap interval of alpha, resampling items."""
    m, same, c = _alpha_parts(counts)
    if len(m) < 2 or resamples <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(m), np.full(len(m), 1 / len(m)), size=resamples).astype(float)
    a = _alpha(w @ m, w @ same, w @ c)
    a = a[np.isfinite(a)]
    if not len(a):
        return float("nan"), float("nan")
    lo, hi = np.quantile(a, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def percent_agreement(counts: np.ndarray) -> float:
    """Share of agreeing pairs of ratings within items (the observed agreement of Fleiss' kappa)."""
    counts = np.asarray(counts, dtype=float)
    n_i = counts.sum(axis=1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if not len(counts):
        return float("nan")
    return float((((counts ** 2).sum(axis=1) - n_i) / (n_i * (n_i - 1))).mean())


def pairwise_cohen(v: pd.DataFrame, min_items: int = 2) -> pd.DataFrame:
    """Cohen's kappa per pair of annotators on the items both labeled."""
    wide = v.pivot(index="item_id", columns="annotator", values="value")
    rows = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        if len(both) >= min_items:
            rows.append({"annotator_a": a, "annotator_b": b, "n_items": len(both),
                         "kappa": cohen_kappa(both[a].tolist(), both[b].tolist())})
    return pd.DataFrame(rows, columns=["annotator_a", "annotator_b", "n_items", "kappa"])


def _stats(v: pd.DataFrame, cats: list[str], cfg: AgreementConfig) -> list[dict]:
    multi = v[v.groupby("item_id")["annotator"].transform("size") >= 2]
    counts, _, _ = counts_matrix(multi, cats)
    base = {"n_items": int(multi["item_id"].nunique()), "n_ratings": len(multi),
            "n_annotators": int(multi["annotator"].nunique())}
    lo, hi = krippendorff_alpha_interval(counts, resamples=cfg.bootstrap, level=cfg.level, seed=cfg.seed)
    out = [dict(base, statistic="percent_agreement", value=percent_agreement(counts)),
           dict(base, statistic="fleiss_kappa", value=fleiss_kappa(counts)),
           dict(base, statistic="krippendorff_alpha", value=krippendorff_alpha(counts), ci_low=lo, ci_high=hi)]
    for r in pairwise_cohen(multi, cfg.min_pair_items).itertuples():
        out.append({"statistic": "cohen_kappa", "annotators": f"{r.annotator_a}|{r.annotator_b}",
                    "value": r.kappa, "n_items": r.n_items, "n_ratings": 2 * r.n_items, "n_annotators": 2})
    return out


def agreement(con, label_set: str, cfg: AgreementConfig = AgreementConfig(), *, pool: str = "label_pool") -> pd.DataFrame:
    """Agreement of a label set overall (group_column 'all') and per value of each group column.

    Columns: label_set, group_column, group_value, statistic ('percent_agreement' | 'fleiss_kappa' |
    'krippendorff_alpha' | 'cohen_kappa'), annotators ('a|b' for Cohen's kappa, else null), value,
    ci_low, ci_high (alpha only), n_items, n_ratings, n_annotators.
    """
    ensure_tables(con)
    v = votes(con, label_set)
    cats = sorted(v["value"].unique(), key=str)
    rows = [dict(r, group_column="all", group_value="all") for r in _stats(v, cats, cfg)] if len(v) else []
    if len(v) and table_exists(con, pool):
        pool_cols = [d[0] for d in con.execute(f'select * from "{pool}" limit 0').description]
        groups = [g for g in cfg.groups if g in pool_cols]
        if groups:
            attrs = con.execute(f'select item_id, {", ".join(groups)} from "{pool}"').df()
            vg = v.merge(attrs, on="item_id", how="left")
            for g in groups:
                for value, part in vg.groupby(vg[g].fillna("(missing)").astype(str), sort=True):
                    rows += [dict(r, group_column=g, group_value=value) for r in _stats(part, cats, cfg)]
    cols = ["label_set", "group_column", "group_value", "statistic", "annotators", "value", "ci_low", "ci_high",
            "n_items", "n_ratings", "n_annotators"]
    out = pd.DataFrame(rows).assign(label_set=label_set).reindex(columns=cols)
    return out.astype({"value": float, "ci_low": float, "ci_high": float})


def write_agreement(con, label_set: str, cfg: AgreementConfig = AgreementConfig(), *,
                    pool: str = "label_pool") -> pd.DataFrame:
    """Compute ``agreement`` and replace this label set's rows of ``label_agreement``."""
    df = agreement(con, label_set, cfg, pool=pool).assign(computed_at=pd.Timestamp.now(tz="UTC").tz_localize(None))

    def body(c):
        c.execute(_DDL)
        c.execute("delete from label_agreement where label_set = ?", [label_set])
        c.register("_wb_agreement", df)
        try:
            c.execute("insert into label_agreement by name select * from _wb_agreement")
        finally:
            c.unregister("_wb_agreement")
    transaction(con, body, what="writing label_agreement")
    return df


def plot_group_agreement(df: pd.DataFrame, statistic: str = "krippendorff_alpha", ax=None):
    """Bar chart of one statistic per group value with its interval; the dashed line is the overall value."""
    import matplotlib.pyplot as plt

    d = df[(df["statistic"] == statistic) & (df["group_column"] != "all")].reset_index(drop=True)
    overall = df[(df["statistic"] == statistic) & (df["group_column"] == "all")]["value"]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(d) + 1.5), 3.2))
    labels = [f"{g}={v}\n(n={n})" for g, v, n in zip(d["group_column"], d["group_value"], d["n_items"])]
    lo = (d["value"] - d["ci_low"]).clip(lower=0).fillna(0)
    hi = (d["ci_high"] - d["value"]).clip(lower=0).fillna(0)
    colors = ["#4c72b0" if g == d["group_column"].iloc[0] else "#dd8452" for g in d["group_column"]] if len(d) else []
    ax.bar(range(len(d)), d["value"].fillna(0), yerr=[lo, hi], capsize=3, color=colors)
    if len(overall):
        ax.axhline(float(overall.iloc[0]), color="black", linestyle="--", linewidth=1, label="all items")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(len(d)), labels, fontsize=8)
    ax.set_ylabel(statistic.replace("_", " "))
    ax.set_title(f"{statistic.replace('_', ' ')} per group (bars: bootstrap interval)", fontsize=10)
    return ax
