"""Split properties: stable hash, determinism, stability under append, groups, exact strata, leakage."""
from __future__ import annotations

import hashlib
import math

import pandas as pd
import pytest

from workbench import data
from workbench.workspace import write_table

INTENTS = ["billing", "refund", "shipping", "technical_issue", "account_access", "cancellation"]


def make_examples(n: int, start: int = 0, customers: int = 50) -> pd.DataFrame:
    rows = []
    for i in range(start, start + n):
        rows.append({"example_id": f"e{i}", "message_id": f"m{i}", "customer_id": f"c{i % customers}",
                     "created_at": pd.Timestamp("2026-01-01") + pd.Timedelta(minutes=i), "channel": "email",
                     "region": "north", "age_band": "30-44", "text": f"text {i}", "text_norm": f"text {i}",
                     "intent": INTENTS[(i * 7) % 5 if i % 11 else 5], "reply": "r"})
    return pd.DataFrame(rows)


def splits_of(con) -> dict[str, str]:
    return dict(con.execute("select example_id, split from splits").fetchall())


def python_fraction(seed: int, key: str) -> float:
    """The SQL's hash, computed independently: first 8 hex digits of md5(seed:key) / 16^8."""
    return int(hashlib.md5(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 2**32


def test_unstratified_split_matches_an_independent_md5_computation(con):
    write_table(con, "examples", make_examples(300))
    data.split(con, stratify=False, split_seed=5, train_fraction=0.7, validation_fraction=0.2)
    for ex_id, split in splits_of(con).items():
        u = python_fraction(5, ex_id)
        assert split == ("train" if u < 0.7 else "validation" if u < 0.9 else "test"), ex_id


def test_stratified_split_matches_an_independent_rank_by_md5(con):
    # the SQL ranks by the md5's first 8 hex digits as text: must be the order of the fraction u
    ex = make_examples(400)
    write_table(con, "examples", ex)
    data.split(con, stratify=True, split_seed=9, train_fraction=0.6, validation_fraction=0.25)
    got = splits_of(con)
    for _, group in ex.groupby("intent"):
        ranked = sorted(group["example_id"], key=lambda k: (python_fraction(9, k), k))
        n = len(ranked)
        n_train, n_train_val = math.floor(n * 0.6 + 0.5), math.floor(n * 0.85 + 0.5)
        for r, ex_id in enumerate(ranked, 1):
            assert got[ex_id] == ("train" if r <= n_train else "validation" if r <= n_train_val else "test"), ex_id


def test_same_inputs_same_splits(workspace, tmp_path):
    import workbench

    results = []
    for name in ("a", "b"):
        con = workbench.connect(tmp_path / name)
        write_table(con, "examples", make_examples(200))
        data.split(con, split_seed=11)
        results.append(splits_of(con))
    assert results[0] == results[1]


def test_seed_changes_assignment(con):
    write_table(con, "examples", make_examples(200))
    data.split(con, split_seed=1)
    first = splits_of(con)
    data.split(con, split_seed=2, reset=True)
    assert splits_of(con) != first


def test_exact_stratified_fractions(con):
    write_table(con, "examples", make_examples(997))
    data.split(con, stratify=True, train_fraction=0.8, validation_fraction=0.1)
    got = con.execute("""select e.intent, s.split, count(*) from splits s join examples e using (example_id)
                         group by all""").fetchall()
    per = {}
    for intent, split, n in got:
        per.setdefault(intent, {})[split] = n
    for intent, counts in per.items():
        n = sum(counts.values())
        assert abs(counts.get("train", 0) - 0.8 * n) <= 1, (intent, counts)
        assert abs(counts.get("validation", 0) - 0.1 * n) <= 1, (intent, counts)
        assert abs(counts.get("test", 0) - 0.1 * n) <= 1, (intent, counts)


def test_appending_rows_never_moves_old_ones(con):
    write_table(con, "examples", make_examples(300))
    data.split(con)
    before = splits_of(con)
    write_table(con, "examples", make_examples(120, start=300), mode="append")
    data.split(con)
    after = splits_of(con)
    assert {k: after[k] for k in before} == before
    assert len(after) == 420
    batches = dict(con.execute("select batch_id, count(*) from splits group by 1").fetchall())
    assert batches == {1: 300, 2: 120}
    # the new rows are assigned among themselves by the same rule: exact strata within the batch
    new = con.execute("""select e.intent, s.split, count(*) from splits s join examples e using (example_id)
                         where s.batch_id = 2 group by all""").fetchall()
    per = {}
    for intent, split, n in new:
        per.setdefault(intent, {})[split] = n
    for counts in per.values():
        n = sum(counts.values())
        assert abs(counts.get("train", 0) - 0.8 * n) <= 1


def test_group_key_keeps_groups_whole_also_across_appends(con):
    write_table(con, "examples", make_examples(400, customers=40))
    data.split(con, group_key="customer_id")
    write_table(con, "examples", make_examples(100, start=400, customers=40), mode="append")
    data.split(con, group_key="customer_id")
    n_splits = con.execute("""select max(k) from (select e.customer_id, count(distinct s.split) k
                              from splits s join examples e using (example_id) group by 1)""").fetchone()[0]
    assert n_splits == 1
    assert con.execute("select count(distinct split) from splits").fetchone()[0] == 3


def test_examples_with_a_null_group_key_still_get_a_split(con):
    df = make_examples(200, customers=20)
    df.loc[df.index % 10 == 0, "customer_id"] = None
    write_table(con, "examples", df)
    counts = data.split(con, group_key="customer_id")
    assert sum(counts.values()) == 200
    assert con.execute("select count(*) from examples left join splits using (example_id) "
                       "where split is null").fetchone()[0] == 0
    # each null-key example is its own unit: they spread over splits rather than forming one group
    spread = con.execute("select count(distinct split) from splits join examples using (example_id) "
                         "where customer_id is null").fetchone()[0]
    assert spread > 1


def test_leakage_check_finds_a_planted_leak_and_zero_after_dedup(con):
    df = make_examples(100)
    write_table(con, "examples", df)
    data.split(con)
    assert data.leakage(con) == 0
    # plant: two examples with the same normalized text in different splits
    s = splits_of(con)
    a = next(k for k, v in s.items() if v == "train")
    b = next(k for k, v in s.items() if v == "test")
    con.execute("update examples set text_norm = 'same' where example_id in (?, ?)", [a, b])
    data.split(con)  # recomputes split_leakage
    assert data.leakage(con) == 1
    assert con.execute("select n_splits, first_split, last_split from split_leakage").fetchone() == (2, "test", "train")


def test_leakage_table_equals_an_independent_computation(con):
    write_table(con, "examples", make_examples(300))
    data.split(con)
    by_split = {}
    for ex_id, split in sorted(splits_of(con).items()):
        by_split.setdefault(split, []).append(ex_id)
    plants = {"x": by_split["train"][:2] + by_split["validation"][:1] + by_split["test"][:1],  # 3 splits
              "y": by_split["train"][2:4],  # twice in one split: no leak
              "z": by_split["validation"][1:2] + by_split["test"][1:3]}  # 2 splits
    for text, ids in plants.items():
        con.execute(f"update examples set text_norm = ? where example_id in ({', '.join('?' * len(ids))})", [text, *ids])
    data.split(con)  # recomputes split_leakage
    rows = con.execute("select e.text_norm, s.split from splits s join examples e using (example_id)").fetchall()
    expected = {}
    for text, split in rows:
        expected.setdefault(text, []).append(split)
    expected = sorted((t, len(set(v)), len(v), min(v), max(v)) for t, v in expected.items() if len(set(v)) > 1)
    assert [e[0] for e in expected] == ["x", "z"]
    assert sorted(con.execute("select * from split_leakage").fetchall()) == expected


def test_bad_split_parameters(con):
    from workbench.workspace import WorkspaceError, table_exists

    with pytest.raises(WorkspaceError, match="splits need table examples"):
        data.split(con)
    assert not table_exists(con, "splits")
    write_table(con, "examples", make_examples(10))
    with pytest.raises(ValueError, match="fractions"):
        data.split(con, train_fraction=0.9, validation_fraction=0.2)
    with pytest.raises(ValueError, match="group_key"):
        data.split(con, group_key="text; drop table examples")
    with pytest.raises(ValueError, match="unknown split parameter"):
        data.split(con, seed=3)


def test_fraction_formula_is_uniform():
    us = [python_fraction(42, f"k{i}") for i in range(5000)]
    assert abs(sum(us) / len(us) - 0.5) < 0.02 and 0 <= min(us) and max(us) < 1
    assert math.isclose(sum(u < 0.8 for u in us) / 5000, 0.8, abs_tol=0.03)
