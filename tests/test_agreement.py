"""Agreement statistics against hand-computed and published values, and per-group agreement in the workspace."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

import workbench
from workbench import agreement as A
from workbench import labeling as L


def test_cohen_kappa_hand_computed_and_sklearn():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert A.cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa_score(a, b) == pytest.approx(0.4)
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.choice(list("abcd"), 40)
        y = np.where(rng.random(40) < 0.6, x, rng.choice(list("abcde"), 40))
        assert A.cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))
    assert math.isnan(A.cohen_kappa(["a", "a"], ["a", "a"]))  # chance agreement 1: undefined
    with pytest.raises(ValueError):
        A.cohen_kappa(["a"], ["a", "b"])


def test_fleiss_kappa_published_example():
    # Fleiss (1971) style worked example: 10 subjects, 14 raters, 5 categories.
    # P_bar = 0.378, P_e = 0.2128 (by hand: sum of squared column shares), kappa = 0.210.
    counts = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                       [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert A.percent_agreement(counts) == pytest.approx(0.378, abs=5e-4)
    assert A.fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_small_by_hand():
    # 3 items x 3 raters: [a,a,a], [a,a,b], [b,b,b].
    # P_i = 1, 1/3, 1 -> P_bar = 7/9; p_a = 5/9, p_b = 4/9 -> P_e = 41/81; kappa = (63/81 - 41/81) / (40/81) = 0.55
    counts = np.array([[3, 0], [2, 1], [0, 3]])
    assert A.fleiss_kappa(counts) == pytest.approx(22 / 40)
    # two raters, no missing data: Fleiss' kappa is Scott's pi (pooled shares)
    a, b = list("aabbab"), list("abbbaa")
    v = pd.DataFrame({"item_id": list(range(6)) * 2, "value": a + b})
    counts, _, _ = A.counts_matrix(v)
    p_o = np.mean(np.array(a) == np.array(b))
    p = (np.array(a + b) == "a").mean()
    assert A.fleiss_kappa(counts) == pytest.approx((p_o - (p ** 2 + (1 - p) ** 2)) / (1 - (p ** 2 + (1 - p) ** 2)))


KRIPPENDORFF_2011 = {  # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def _long(data: dict) -> pd.DataFrame:
    return pd.DataFrame([{"item_id": u, "annotator": a, "value": str(v)}
                         for a, vs in data.items() for u, v in enumerate(vs) if v is not None])


def _alpha_by_pairs(v: pd.DataFrame) -> float:
    """Krippendorff's alpha straight from its definition: all ordered pairs of values within each unit,
    weighted 1/(m_u - 1); expected disagreement from all pairable values."""
    pairs, values = [], []
    for _, g in v.groupby("item_id"):
        vals = g["value"].tolist()
        if len(vals) < 2:
            continue
        values += vals
        for i, j in itertools.permutations(range(len(vals)), 2):
            pairs.append((vals[i] != vals[j], 1 / (len(vals) - 1)))
    n = len(values)
    d_o = sum(w for diff, w in pairs if diff) / n
    d_e = sum(a != b for a, b in itertools.permutations(values, 2)) / (n * (n - 1))
    return 1 - d_o / d_e


def test_krippendorff_alpha_published_example_and_definition():
    v = _long(KRIPPENDORFF_2011)
    counts, _, _ = A.counts_matrix(v)
    assert A.krippendorff_alpha(counts) == pytest.approx(0.743, abs=5e-4)
    assert A.krippendorff_alpha(counts) == pytest.approx(_alpha_by_pairs(v))
    rng = np.random.default_rng(11)
    for _ in range(4):  # random data with missing ratings
        rows = [{"item_id": u, "annotator": a, "value": str(rng.integers(3) if rng.random() < 0.5 else u % 3)}
                for u in range(15) for a in "abcd" if rng.random() < 0.7]
        rv = pd.DataFrame(rows)
        c, _, _ = A.counts_matrix(rv)
        assert A.krippendorff_alpha(c) == pytest.approx(_alpha_by_pairs(rv))
    lo, hi = A.krippendorff_alpha_interval(counts, resamples=300, seed=1)
    assert lo < A.krippendorff_alpha(counts) < hi and -1 <= lo and hi <= 1


def test_pairwise_cohen_uses_shared_items_only():
    v = _long(KRIPPENDORFF_2011)
    pw = A.pairwise_cohen(v).set_index(["annotator_a", "annotator_b"])
    assert len(pw) == 6
    wide = v.pivot(index="item_id", columns="annotator", values="value")
    both = wide[["A", "C"]].dropna()
    assert pw.loc[("A", "C"), "n_items"] == len(both) == 8
    assert pw.loc[("A", "C"), "kappa"] == pytest.approx(cohen_kappa_score(both["A"], both["C"]))


def test_agreement_per_group_in_the_workspace(con):
    # region north: the three annotators always agree; south: they split on every item.
    n = 12
    pool = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)],
                         "region": ["north" if i < 6 else "south" for i in range(n)],
                         "age_band": ["65+" if i % 3 == 0 else "18-29" for i in range(n)]})
    workbench.write_table(con, "label_pool", pool)
    choices = ["x", "y", "z"]
    for k, who in enumerate(["ana", "ben", "cy"]):
        s = L.LabelingSession(con, who, "topic", choices, queue=L.QueueConfig(max_items=None))
        s.submit_many([(f"i{i}", choices[i % 3] if i < 6 else choices[(i + k) % 3]) for i in range(n)])
    df = A.write_agreement(con, "topic", A.AgreementConfig(bootstrap=200))

    def alpha(group, value):
        rows = df[(df.group_column == group) & (df.group_value == value) & (df.statistic == "krippendorff_alpha")]
        return rows["value"].item()
    assert alpha("region", "north") == pytest.approx(1.0)
    v = L.votes(con, "topic").merge(pool, on="item_id")
    south, _, _ = A.counts_matrix(v[v.region == "south"])
    assert alpha("region", "south") == pytest.approx(A.krippendorff_alpha(south)) and alpha("region", "south") < 0
    allc, _, _ = A.counts_matrix(v)
    assert alpha("all", "all") == pytest.approx(A.krippendorff_alpha(allc))
    assert set(df.query("group_column == 'age_band'")["group_value"]) == {"18-29", "65+"}
    cohen = df.query("group_column == 'all' and statistic == 'cohen_kappa'")
    assert sorted(cohen["annotators"]) == ["ana|ben", "ana|cy", "ben|cy"] and (cohen["n_items"] == n).all()
    wide = v.pivot(index="item_id", columns="annotator", values="value")
    assert cohen.set_index("annotators").loc["ana|ben", "value"] == pytest.approx(
        cohen_kappa_score(wide["ana"], wide["ben"]))
    stored = con.execute("select * from label_agreement where label_set = 'topic'").df()
    assert len(stored) == len(df)
    A.write_agreement(con, "topic", A.AgreementConfig(bootstrap=0))  # replaces, never duplicates
    assert con.execute("select count(*) from label_agreement").fetchall()[0][0] == len(df)
