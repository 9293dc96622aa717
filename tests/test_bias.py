"""Bias metrics against hand-computed values on small tables, and Fairlearn numbers against MetricFrame."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workbench import bias
from workbench.bias import BiasConfig

LN = math.log
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")


def rows(spec: dict[str, dict[str, int]], group="g", label="y") -> pd.DataFrame:
    """{'A': {'x': 2, 'y': 1}} -> one row per (group, label) occurrence."""
    return pd.DataFrame([(g, lab) for g, counts in spec.items() for lab, n in counts.items() for _ in range(n)],
                        columns=[group, label])


def metric(m: pd.DataFrame, facet: str, name: str, label=None) -> float | None:
    sel = (m["facet"] == facet) & (m["metric"] == name)
    sel &= m["label"].isna() if label is None else (m["label"] == label)
    hit = m.loc[sel, "value"]
    assert len(hit) == 1, (facet, name, label, len(hit))
    v = hit.iloc[0]
    return None if pd.isna(v) else float(v)


# A: x2 y1 z1 (n 4); B: w2 x1 y3 (n 6). 'z' only in A, 'w' only in B.
TWO_GROUPS = {"A": {"x": 2, "y": 1, "z": 1}, "B": {"w": 2, "x": 1, "y": 3}}


def test_pretraining_metrics_by_hand_with_a_label_in_one_group_only():
    m = bias.label_bias(rows(TWO_GROUPS), "g", "y")
    # facet d = A (4 rows), rest a = B (6 rows); labels w, x, y, z
    pa = [2 / 6, 1 / 6, 3 / 6, 0]
    pd_ = [0, 2 / 4, 1 / 4, 1 / 4]
    assert metric(m, "g=A", "CI") == pytest.approx((6 - 4) / (6 + 4))
    for lab, a, d in zip("wxyz", pa, pd_):
        assert metric(m, "g=A", "DPL", lab) == pytest.approx(a - d)
        assert metric(m, "g=A", "label_share", lab) == pytest.approx(d)
    assert metric(m, "g=A", "KL") == math.inf  # the rest has 'w', the facet never: not dropped
    mid = [(a + d) / 2 for a, d in zip(pa, pd_)]
    kl_am = 1 / 3 * LN((1 / 3) / mid[0]) + 1 / 6 * LN((1 / 6) / mid[1]) + 1 / 2 * LN((1 / 2) / mid[2])
    kl_dm = 1 / 2 * LN((1 / 2) / mid[1]) + 1 / 4 * LN((1 / 4) / mid[2]) + 1 / 4 * LN((1 / 4) / mid[3])
    assert metric(m, "g=A", "JS") == pytest.approx(0.5 * (kl_am + kl_dm))
    assert metric(m, "g=A", "LP") == pytest.approx(math.sqrt((1 / 3) ** 2 + (1 / 3) ** 2 + (1 / 4) ** 2 + (1 / 4) ** 2))
    assert metric(m, "g=A", "TVD") == pytest.approx(0.5 * (1 / 3 + 1 / 3 + 1 / 4 + 1 / 4))
    assert metric(m, "g=A", "KS") == pytest.approx(1 / 3)
    # the other facet mirrors: CI and DPL change sign, the symmetric distances stay
    assert metric(m, "g=B", "CI") == pytest.approx(-0.2)
    assert metric(m, "g=B", "DPL", "x") == pytest.approx(1 / 3)
    assert metric(m, "g=B", "TVD") == pytest.approx(7 / 12)
    assert metric(m, "g=B", "KL") == math.inf  # A has 'z', B never


def test_one_vs_rest_distances_per_label_value():
    m = bias.label_bias(rows(TWO_GROUPS), "g", "y")
    # label 'x': rest B has 1/6, facet A has 1/2 -> binary distributions [1/6, 5/6] vs [1/2, 1/2]
    a, d = np.array([1 / 6, 5 / 6]), np.array([1 / 2, 1 / 2])
    assert metric(m, "g=A", "KL", "x") == pytest.approx(float(np.sum(a * np.log(a / d))))
    mid = (a + d) / 2
    assert metric(m, "g=A", "JS", "x") == pytest.approx(0.5 * float(np.sum(a * np.log(a / mid)) + np.sum(d * np.log(d / mid))))
    assert metric(m, "g=A", "TVD", "x") == pytest.approx(1 / 3)
    assert metric(m, "g=A", "KS", "x") == pytest.approx(1 / 3)
    assert metric(m, "g=A", "LP", "x") == pytest.approx(math.sqrt(2) / 3)
    # 'w' is absent from the facet: its one-vs-rest KL is infinite too
    assert metric(m, "g=A", "KL", "w") == math.inf


def test_kl_additive_smoothing_with_epsilon():
    m = bias.label_bias(rows(TWO_GROUPS), "g", "y", config=BiasConfig(kl_epsilon=0.5))
    pa = np.array([2.5, 1.5, 3.5, 0.5]) / 8   # rest B: (n + 0.5) / (6 + 0.5 * 4)
    pd_ = np.array([0.5, 2.5, 1.5, 1.5]) / 6  # facet A: (n + 0.5) / (4 + 0.5 * 4)
    assert metric(m, "g=A", "KL") == pytest.approx(float(np.sum(pa * np.log(pa / pd_))))
    # only KL is smoothed
    assert metric(m, "g=A", "TVD") == pytest.approx(7 / 12)


def test_empty_group_gets_ci_one_and_no_label_metrics():
    m = bias.label_bias(rows(TWO_GROUPS), "g", "y", groups=["C"])
    assert metric(m, "g=C", "CI") == pytest.approx(1.0)
    for name in ("KL", "JS", "LP", "TVD", "KS"):
        assert metric(m, "g=C", name) is None
    assert metric(m, "g=C", "DPL", "x") is None
    assert bias.class_imbalance(0, 0) is None and bias.class_imbalance(0, 3) == -1


def test_single_class_label():
    df = rows({"A": {"x": 3}, "B": {"x": 2}})
    df["s"] = ["s1", "s1", "s2", "s1", "s2"]
    m = bias.label_bias(df, "g", "y", strata_col="s")
    assert metric(m, "g=A", "CI") == pytest.approx((2 - 3) / 5)
    assert metric(m, "g=A", "DPL", "x") == 0
    for name in ("KL", "JS", "LP", "TVD", "KS"):
        assert metric(m, "g=A", name) == 0
    assert metric(m, "g=A", "CDDL", "x") is None  # no rejected row anywhere: undefined


def test_cddl_by_hand_including_a_stratum_without_rejections():
    spec = [  # (stratum, group, label, count)
        ("s1", "d", "yes", 1), ("s1", "d", "no", 3), ("s1", "a", "yes", 3), ("s1", "a", "no", 1),
        ("s2", "d", "yes", 2), ("s2", "a", "yes", 1), ("s2", "a", "no", 1),
    ]
    df = pd.DataFrame([(s, g, y) for s, g, y, n in spec for _ in range(n)], columns=["s", "g", "y"])
    m = bias.label_bias(df, "g", "y", strata_col="s")
    # DD_1 = 3/4 - 1/4; DD_2 = 0/1 - 2/3; weights n_1 = 8, n_2 = 4
    assert metric(m, "g=d", "CDDL", "yes") == pytest.approx((8 * 0.5 + 4 * (-2 / 3)) / 12)
    assert metric(m, "g=d", "DPL", "yes") == pytest.approx(4 / 6 - 3 / 6)
    # a stratum with no rejected row counts that side as 0 (Clarify's convention): DD_3 = 0 - 1/2
    df3 = pd.concat([df, pd.DataFrame([("s3", "d", "yes"), ("s3", "a", "yes")], columns=["s", "g", "y"])])
    m3 = bias.label_bias(df3, "g", "y", strata_col="s")
    assert metric(m3, "g=d", "CDDL", "yes") == pytest.approx((4 - 8 / 3 - 1) / 14)


def test_counts_input_equals_row_input_and_null_groups_are_kept():
    df = rows(TWO_GROUPS)
    df.loc[0, "g"] = None
    counts = df.groupby(["g", "y"], dropna=False).size().rename("n").reset_index()
    a = bias.label_bias(df, "g", "y")
    b = bias.label_bias(counts, "g", "y", count_col="n")
    pd.testing.assert_frame_equal(a, b)
    assert "g=(missing)" in set(a["facet"])


def test_dpl_interval_is_newcombe_hybrid_score():
    value, lo, hi = bias.dpl(3, 6, 1, 4, z=1.959964)
    la, ua = bias.wilson(3, 6, 1.959964)
    ld, ud = bias.wilson(1, 4, 1.959964)
    assert value == pytest.approx(0.25)
    assert lo == pytest.approx(0.25 - math.sqrt((0.5 - la) ** 2 + (ud - 0.25) ** 2))
    assert hi == pytest.approx(0.25 + math.sqrt((ua - 0.5) ** 2 + (0.25 - ld) ** 2))
    # Wilson by its formula: p = 0.5, n = 6
    z = 1.959964
    centre = (0.5 + z * z / 12) / (1 + z * z / 6)
    half = z * math.sqrt(0.25 / 6 + z * z / 144) / (1 + z * z / 6)
    assert (la, ua) == pytest.approx((centre - half, centre + half))


def test_labels_only_in_one_side():
    only = bias.labels_only_in_one_side(rows(TWO_GROUPS), "g", "y")
    got = {(r.facet, r.label, r.side, r.n) for r in only.itertuples()}
    assert got == {("g=A", "z", "facet_only", 1), ("g=A", "w", "rest_only", 2),
                   ("g=B", "w", "facet_only", 2), ("g=B", "z", "rest_only", 1)}


def test_representation_against_a_reference_with_an_absent_group_and_intersections():
    df = rows(TWO_GROUPS)
    df["r"] = ["n", "n", "s", "s", "n", "n", "n", "s", "s", "s"]
    rep = bias.representation(df, ["g", "r"], reference={"g": {"A": 5, "B": 3, "C": 2}})
    g = rep[rep["column"] == "g"].set_index("group")
    assert g["n"].to_dict() == {"A": 4, "B": 6, "C": 0}
    assert g["share"].to_dict() == pytest.approx({"A": 0.4, "B": 0.6, "C": 0.0})
    assert g["expected_share"].to_dict() == pytest.approx({"A": 0.5, "B": 0.3, "C": 0.2})
    assert g["ratio"].to_dict() == pytest.approx({"A": 0.8, "B": 2.0, "C": 0.0})
    r = rep[rep["column"] == "r"].set_index("group")
    assert r["expected_share"].to_dict() == pytest.approx({"n": 0.5, "s": 0.5})  # no reference: equal shares
    inter = rep[rep["column"] == "g & r"].set_index("facet")
    assert inter.loc["g=A & r=n", "n"] == 2 and inter.loc["g=B & r=s", "n"] == 3
    assert inter.loc["g=A & r=n", "expected_share"] == pytest.approx(0.5 * 0.5)
    assert inter["n"].sum() == 10
    with pytest.raises(ValueError, match="reference names column"):
        bias.representation(df, ["g"], reference={"nope": {"a": 1}})
    with pytest.raises(ValueError, match="shares must be numbers"):
        bias.representation(df, ["g"], reference={"g": {"A": -1}})
    with pytest.raises(ValueError, match="no column 'zz'"):
        bias.representation(df, ["zz"])


# --------------------------------------------------------------------------- labeling

def test_current_labels_latest_row_wins_and_retractions_remove():
    t = pd.Timestamp("2026-01-01")
    labels = pd.DataFrame([
        ("i1", "ann", "x", t, "label"), ("i1", "ann", "y", t + pd.Timedelta(1, "s"), "label"),   # relabel
        ("i2", "ann", "x", t, "label"), ("i2", "ann", None, t + pd.Timedelta(1, "s"), "retract"),  # undo
        ("i3", "ann", "x", t, "label"), ("i3", "bob", "x", t, "skip"),
        ("i4", "bob", "__other__", t, "label"),
    ], columns=["item_id", "annotator", "value", "created_at", "kind"])
    cur = bias.current_labels(labels, label_values=["x", "y"])
    assert list(cur.itertuples(index=False, name=None)) == [("i1", "ann", "y"), ("i3", "ann", "x")]
    # without a kind column, a null value retracts
    cur2 = bias.current_labels(labels.drop(columns="kind"))
    assert ("i2", "ann", "x") not in set(cur2.itertuples(index=False, name=None))
    with pytest.raises(ValueError, match="annotator"):
        bias.current_labels(labels.drop(columns="annotator"))


def test_agreement_statistics_by_hand():
    units = [["a", "a"], ["a", "b"], ["b", "b"], ["c"]]  # the single label is not pairable
    # coincidences: o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6
    assert bias.krippendorff_alpha_nominal(units) == pytest.approx(1 - 5 * 2 / (3 * 3 * 2))
    assert bias.pairwise_agreement(units) == (pytest.approx(2 / 3), 3)
    # three annotators on one item: pairs ab, ab, bb -> 1 of 3 agree
    assert bias.pairwise_agreement([["a", "b", "b"]]) == (pytest.approx(1 / 3), 3)
    assert bias.krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None  # no variation: undefined
    assert bias.krippendorff_alpha_nominal([["a"]]) is None


def test_labeling_bias_rates_per_annotator_per_group():
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(6)], "age": ["old"] * 2 + ["young"] * 4})
    truth = {"i0": "x", "i1": "y", "i2": "x", "i3": "y", "i4": "x", "i5": "y"}
    cur = pd.DataFrame([(i, a, "refund" if (a == "bob" and i in ("i0", "i1")) else v)
                        for i, v in truth.items() for a in ("ann", "bob")], columns=["item_id", "annotator", "value"])
    final = pd.DataFrame({"item_id": list(truth), "value": list(truth.values())})
    m = bias.labeling_bias(cur, items, ["age"], final=final)
    # bob labels both old items 'refund', ann none of them
    assert metric(m, "annotator=bob & age=old", "label_rate", "refund") == 1.0
    assert metric(m, "annotator=bob & age=old", "DPL", "refund") == pytest.approx(0 - 1)
    assert metric(m, "annotator=ann & age=old", "DPL", "refund") == pytest.approx(1 - 0)
    assert metric(m, "age=old", "agreement") == 0.0
    assert metric(m, "age=young", "agreement") == 1.0
    assert metric(m, "age=old", "final_agreement") == pytest.approx(2 / 4)
    assert metric(m, "age=young", "krippendorff_alpha") == pytest.approx(1.0)
    assert metric(m, "age=old", "n_items") == 2


# --------------------------------------------------------------------------- model (Fairlearn)

@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 240
    y = rng.choice(["a", "b", "c"], n)
    g = rng.choice(["old", "young", "mid"], n, p=[0.2, 0.5, 0.3])
    p = np.where(rng.random(n) < np.where(g == "old", 0.5, 0.85), y, rng.choice(["a", "b", "c", "junk"], n))
    return pd.DataFrame({"label": y, "prediction": p, "age": g, "region": rng.choice(["n", "s"], n)})


def test_model_bias_matches_direct_metricframe_calls(preds):
    from fairlearn.metrics import (MetricFrame, demographic_parity_difference, demographic_parity_ratio,
                                   equalized_odds_difference, equalized_odds_ratio, selection_rate)
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    cfg = BiasConfig(n_boot=30, seed=5)
    m, frames = bias.model_bias(preds, ["age"], metrics=["accuracy", "balanced_accuracy_score"], config=cfg)
    yt, yp, sf = preds["label"].to_numpy(), preds["prediction"].to_numpy(), preds["age"]
    direct = MetricFrame(metrics={"accuracy": accuracy_score}, y_true=yt, y_pred=yp, sensitive_features=sf,
                         n_boot=30, ci_quantiles=[0.025, 0.975], random_state=5)
    lo, hi = direct.by_group_ci
    for g in ("old", "young", "mid"):
        row = m[(m["facet"] == f"age={g}") & (m["metric"] == "accuracy")].iloc[0]
        assert row["value"] == pytest.approx(direct.by_group.loc[g, "accuracy"])
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo.loc[g, "accuracy"], hi.loc[g, "accuracy"]))
    assert metric(m, "(all)", "accuracy") == pytest.approx(accuracy_score(yt, yp))
    bal = MetricFrame(metrics=balanced_accuracy_score, y_true=yt, y_pred=yp, sensitive_features=sf)
    assert metric(m, "age=old", "balanced_accuracy_score") == pytest.approx(bal.by_group.loc["old"])
    for cls in ("a", "b", "c"):
        sr = MetricFrame(metrics={"sr": lambda t, p, c=cls: selection_rate(t, p, pos_label=c)},
                         y_true=yt, y_pred=yp, sensitive_features=sf)
        assert metric(m, "age=young", "selection_rate", cls) == pytest.approx(sr.by_group.loc["young", "sr"])
        tb, pb = yt == cls, yp == cls
        for name, fn in (("demographic_parity_difference", demographic_parity_difference),
                         ("demographic_parity_ratio", demographic_parity_ratio),
                         ("equalized_odds_difference", equalized_odds_difference),
                         ("equalized_odds_ratio", equalized_odds_ratio)):
            assert metric(m, "age", name, cls) == pytest.approx(fn(tb, pb, sensitive_features=sf)), (name, cls)
        # the demographic parity interval is the bootstrap interval of the selection rate's difference
        boot = MetricFrame(metrics=lambda t, p: float(np.mean(p)), y_true=tb, y_pred=pb, sensitive_features=sf,
                           n_boot=30, ci_quantiles=[0.025, 0.975], random_state=5)
        row = m[(m["facet"] == "age") & (m["metric"] == "demographic_parity_difference") & (m["label"] == cls)].iloc[0]
        d_lo, d_hi = boot.difference_ci()
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((float(d_lo), float(d_hi)))
    worst = max(metric(m, "age", "equalized_odds_difference", c) for c in "abc")
    assert metric(m, "age", "equalized_odds_difference") == pytest.approx(worst)
    assert "age" in frames
    # 'junk' is only ever predicted (more often for 'old'): selection rate, FPR and parity, no recall or odds
    sr = MetricFrame(metrics={"sr": lambda t, p: selection_rate(t, p, pos_label="junk")},
                     y_true=yt, y_pred=yp, sensitive_features=sf)
    assert sr.by_group.loc["old", "sr"] > 0
    assert metric(m, "age=old", "selection_rate", "junk") == pytest.approx(sr.by_group.loc["old", "sr"])
    dpd = demographic_parity_difference(yt == "junk", yp == "junk", sensitive_features=sf)
    assert dpd > 0 and metric(m, "age", "demographic_parity_difference", "junk") == pytest.approx(dpd)
    assert metric(m, "(all)", "fpr", "junk") == pytest.approx((yp == "junk").mean())
    junk = m[m["label"] == "junk"]
    assert not junk["metric"].isin(["recall", "equalized_odds_difference", "equalized_odds_ratio"]).any()


def test_model_bias_intersections_and_no_bootstrap(preds):
    m, frames = bias.model_bias(preds, ["age", "region"], intersections=True, config=BiasConfig(n_boot=0))
    assert set(frames) == {"age", "region", "age & region"}
    sub = preds[(preds["age"] == "old") & (preds["region"] == "n")]
    assert metric(m, "age=old & region=n", "accuracy") == pytest.approx((sub["label"] == sub["prediction"]).mean())
    assert m["ci_low"].isna().all()
    sub = preds[preds["label"] == "a"]
    assert metric(m, "(all)", "recall", "a") == pytest.approx((sub["prediction"] == "a").mean())
    sub = preds[preds["label"] != "a"]
    assert metric(m, "(all)", "fpr", "a") == pytest.approx((sub["prediction"] == "a").mean())


def test_model_metric_names_are_checked():
    with pytest.raises(ValueError, match="not 'accuracy' nor a metric function"):
        bias.resolve_metrics(["no_such_metric"])
    assert set(bias.resolve_metrics(["f1_score", "accuracy"])) == {"f1_score", "accuracy"}


def test_config_is_checked():
    with pytest.raises(ValueError, match="ci_level"):
        BiasConfig(ci_level=1.5)
    with pytest.raises(ValueError, match="representation_ratio"):
        BiasConfig(representation_ratio=2)


def test_agreement_has_one_definition_in_bias_and_label_agreement():
    from workbench import agreement

    # items with different numbers of ratings: pooled pairs (4 of 7 agree) and the per-item mean
    # ((1 + 3/6) / 2 = 0.75) differ; both reports use the per-item mean (Fleiss' observed agreement)
    units = [["a", "a"], ["a", "b", "b", "b"], ["c"]]
    long = pd.DataFrame([(i, v) for i, u in enumerate(units) for v in u], columns=["item_id", "value"])
    counts, _, _ = agreement.counts_matrix(long)
    assert bias.pairwise_agreement(units) == (pytest.approx(0.75), 7)
    assert agreement.percent_agreement(counts) == pytest.approx(0.75)
    assert bias.krippendorff_alpha_nominal(units) == pytest.approx(agreement.krippendorff_alpha(counts))
