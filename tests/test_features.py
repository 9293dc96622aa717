"""Feature store: versioning, validation rules, search ranking, point-in-time correctness, CLI."""
from __future__ import annotations

import datetime as dt
import json
import random

import pandas as pd
import pytest

from workbench import features as fs
from workbench.workspace import sql_path, table_exists

T0 = dt.datetime(2024, 1, 1)


def _customers(con, rows=None):
    """A small customer-attribute history; all VARCHAR like the staging tables."""
    rows = rows or [
        ("C1", "2024-01-01", "gold", "14", "10.5"),
        ("C1", "2024-03-01", "silver", "16", "8"),
        ("C2", "2024-02-01", "bronze", "3", "1"),
        ("C3", "2024-02-15", "gold", "5", "2.25"),
    ]
    con.execute("create or replace table stg_customers (customer_id varchar, as_of varchar, plan varchar, "
                "tenure_months varchar, monthly_spend varchar)")
    con.executemany("insert into stg_customers values (?, ?, ?, ?, ?)", [list(r) for r in rows])


PROFILE_SQL = """
select customer_id, cast(as_of as timestamp) as as_of, plan, tenure_months, monthly_spend
from stg_customers
"""


def _group(**overrides) -> fs.FeatureGroup:
    kw = dict(name="customer_profile", source=PROFILE_SQL, entity_keys=["customer_id"], event_time="as_of",
              features=[fs.Feature("plan", "VARCHAR", "subscription plan",
                                   accepted_values=["bronze", "silver", "gold"]),
                        fs.Feature("tenure_months", "INTEGER", "months as a customer", min=0, max=600),
                        fs.Feature("monthly_spend", "DOUBLE", "average monthly spend", not_null=True)],
              description="Customer attributes over time", owner="growth-team", tags=["customer", "profile"])
    kw.update(overrides)
    return fs.FeatureGroup(**kw)


# --------------------------------------------------------------------------- registration and versions

def test_register_writes_data_metadata_stats_and_view(con):
    _customers(con)
    res = fs.register(con, _group())
    assert (res.version, res.table, res.created, res.row_count) == (1, "fs_customer_profile__v1", True, 4)
    rows = con.execute("select customer_id, as_of, plan, tenure_months, monthly_spend "
                       "from fs_customer_profile__v1 order by customer_id, as_of").fetchall()
    assert rows[0] == ("C1", T0, "gold", 14, 10.5)
    types = dict(con.execute("select column_name, column_type from (describe fs_customer_profile__v1)").fetchall())
    assert types == {"customer_id": "VARCHAR", "as_of": "TIMESTAMP", "plan": "VARCHAR",
                     "tenure_months": "INTEGER", "monthly_spend": "DOUBLE"}
    # the convenience view and the registry are plain tables a %%sql cell can query
    assert con.execute("select count(*) from fs_customer_profile").fetchone()[0] == 4
    g = con.execute("select owner, tags, entity_keys, event_time_column, source_tables, row_count "
                    "from feature_groups").fetchone()
    assert g == ("growth-team", ["customer", "profile"], ["customer_id"], "as_of", ["stg_customers"], 4)
    f = con.execute("select feature_name, dtype, source_dtype, description from features order by position").fetchall()
    assert f[1] == ("tenure_months", "INTEGER", "VARCHAR", "months as a customer")
    # statistics at write time agree with pandas on the written table
    data = con.execute("select * from fs_customer_profile__v1").df()
    stats = fs.describe(con, "customer_profile").set_index("feature_name")
    for col in data.columns:
        assert stats.loc[col, "n_nulls"] == data[col].isna().sum()
        assert stats.loc[col, "n_distinct"] == data[col].nunique()
    assert stats.loc["tenure_months", "min_value"] == "3" and stats.loc["tenure_months", "max_value"] == "16"
    assert stats.loc["monthly_spend", "mean_value"] == pytest.approx(data["monthly_spend"].mean())
    assert stats.loc["as_of", "role"] == "event_time" and stats.loc["customer_id", "role"] == "entity_key"
    assert fs.check_results(con, "customer_profile")["passed"].all()


def test_versions_unchanged_noop_changed_new_version_old_readable(con):
    _customers(con)
    assert fs.register(con, _group()).version == 1
    again = fs.register(con, _group())
    assert (again.version, again.created) == (1, False)
    # whitespace in the SQL is not a change; a description is
    assert not fs.register(con, _group(source="  " + PROFILE_SQL.replace("\n", "\n   "))).created
    v2 = fs.register(con, _group(description="Customer plan, tenure and spend over time"))
    assert (v2.version, v2.created) == (2, True)
    v3 = fs.register(con, _group(source=PROFILE_SQL + " where plan <> 'bronze'"))
    assert (v3.version, v3.row_count) == (3, 3)
    assert fs.versions(con, "customer_profile")["version"].tolist() == [1, 2, 3]
    assert fs.read(con, "customer_profile", 1).df().shape[0] == 4     # old versions stay readable
    assert con.execute("select count(*) from fs_customer_profile").fetchone()[0] == 3  # view: newest
    assert fs.lineage(con, "customer_profile", 3)["source_sql"].endswith("where plan <> 'bronze'")
    # new source rows: a plain re-register is a no-op, refresh=True writes a version iff the rows changed
    con.execute("insert into stg_customers values ('C4', '2024-04-01', 'gold', '1', '3')")
    assert not fs.register(con, _group(source=PROFILE_SQL + " where plan <> 'bronze'")).created
    v4 = fs.register(con, _group(source=PROFILE_SQL + " where plan <> 'bronze'"), refresh=True)
    assert (v4.version, v4.row_count) == (4, 4)
    same = fs.register(con, _group(source=PROFILE_SQL + " where plan <> 'bronze'"), refresh=True)
    assert (same.version, same.created) == (4, False)
    assert con.execute("select count(*) from feature_groups").fetchone()[0] == 4
    with pytest.raises(fs.FeatureError, match="no version 9"):
        fs.read(con, "customer_profile", 9)


_REGISTER_IN_A_PROCESS = """
import sys, workbench
from workbench import features as fs
con = workbench.connect(sys.argv[1])
res = fs.register(con, fs.FeatureGroup("acct", "select * from acct", ["acct_id"], "day",
                                       description=sys.argv[2]))
print(res.version, res.created)
"""


def test_concurrent_registrations_neither_lose_nor_duplicate_versions(con, workspace):
    import subprocess
    import sys

    con.execute("create table acct as select 'A' || range as acct_id, date '2024-01-01' as day, "
                "range as balance from range(50)")

    def run_all(descriptions):
        procs = [subprocess.Popen([sys.executable, "-c", _REGISTER_IN_A_PROCESS, str(workspace), d],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for d in descriptions]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        return [o[0].split() for o in outs]

    run_all(["same", "same"])    # one version however the two commits interleave
    assert con.execute("select version from feature_groups").fetchall() == [(1,)]
    run_all(["first", "second"])  # two different definitions: two new versions, each complete
    rows = con.execute("""select g.version, g.description, count(distinct s.feature_name), count(distinct c.rule)
                          from feature_groups g join feature_stats s using (group_name, version)
                          join feature_checks c using (group_name, version) group by all order by 1""").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3] and {r[1] for r in rows[1:]} == {"first", "second"}
    assert all(r[2:] == (3, 2) for r in rows)   # acct_id, day, balance; not_null + unique
    assert all(table_exists(con, f"fs_acct__v{v}") for v in (1, 2, 3))


def test_source_as_table_and_inferred_features(con):
    con.execute("create table acct as select 'A' || range as acct_id, date '2024-01-01' + range::int as day, "
                "range * 1.5 as balance from range(5)")
    res = fs.register(con, fs.FeatureGroup("account_balance", "acct", ["acct_id"], "day"))
    assert res.row_count == 5
    assert fs.describe(con, "account_balance").query("role == 'feature'")["feature_name"].tolist() == ["balance"]
    assert fs.lineage(con, "account_balance")["source_kind"] == "table"


@pytest.mark.parametrize("group, message", [
    (dict(name="Customer-Profile"), "lowercase"),
    (dict(name="a__b"), "lowercase"),
    (dict(entity_keys=[]), "entity_keys is empty"),
    (dict(event_time="missing_col"), r"\['missing_col'\] not in its source"),
    (dict(source="select customer_id, as_of, plan from stg_customers", features=[]), "is VARCHAR; cast it"),
    (dict(features=[fs.Feature("plan", "NOTATYPE")]), "unknown dtype 'NOTATYPE'"),
    (dict(features=[fs.Feature("plan"), fs.Feature("plan")]), "more than once"),
    (dict(source="select * from no_such_table"), r"its source failed \(a table it reads is missing: stg_\* tables come from step 01.*\): .*no_such_table"),
])
def test_bad_definitions_are_refused_by_name(con, group, message):
    _customers(con)
    with pytest.raises(fs.FeatureError, match=message):
        fs.register(con, _group(**group))
    assert not table_exists(con, "fs_customer_profile__v1")


# --------------------------------------------------------------------------- validation

# Each case: a bad source row, the rule it breaks, the column, and the entity key reported.
RULE_CASES = [
    (("C9", "2024-02-01", "gold", "5", "1"), None, None, None),  # a good row: every check passes
    ((None, "2024-02-01", "gold", "5", "1"), "not_null", "customer_id", None),
    (("C9", None, "gold", "5", "1"), "not_null", "as_of", "C9"),
    (("C9", "2024-02-01", "gold", "five", "1"), "type", "tenure_months", "C9"),
    (("C9", "2024-02-01", "gold", "5", None), "not_null", "monthly_spend", "C9"),
    (("C9", "2024-02-01", "gold", "-2", "1"), "min", "tenure_months", "C9"),
    (("C9", "2024-02-01", "gold", "601", "1"), "max", "tenure_months", "C9"),
    (("C9", "2024-02-01", "platinum", "5", "1"), "accepted_values", "plan", "C9"),
    (("C1", "2024-01-01", "gold", "5", "1"), "unique", "customer_id, as_of", "C1"),  # duplicates C1's row
]


@pytest.mark.parametrize("bad_row, rule, column, key", RULE_CASES,
                         ids=[c[1] and f"{c[1]}-{c[2]}" or "clean" for c in RULE_CASES])
def test_each_rule_strict_refuses_and_warn_writes(con, bad_row, rule, column, key):
    _customers(con)
    con.execute("insert into stg_customers values (?, ?, ?, ?, ?)", list(bad_row))
    if rule is None:
        res = fs.register(con, _group())
        assert res.failed_checks == 0 and res.violations.empty
        return
    with pytest.raises(fs.FeatureValidationError) as err:
        fs.register(con, _group(), validation="strict")
    failing = err.value.checks.query("not passed")
    assert failing[["feature_name", "rule"]].values.tolist() == [[column, rule]]
    v = err.value.violations
    assert v[["feature_name", "rule"]].values.tolist() == [[column, rule]]
    assert pd.isna(v["entity_key"].iloc[0]) if key is None else v["entity_key"].iloc[0] == key
    assert f"[{rule}]" in str(err.value) and "nothing written" in str(err.value)
    # strict: nothing at all was written
    assert not table_exists(con, "fs_customer_profile__v1") and not table_exists(con, "fs_customer_profile")
    assert not table_exists(con, "feature_groups") or \
        con.execute("select count(*) from feature_groups").fetchone()[0] == 0

    res = fs.register(con, _group(), validation="warn")
    assert res.created and res.row_count == 5 and res.failed_checks == 1
    rec = con.execute("select feature_name, rule, failed_rows, mode from feature_checks where not passed").fetchall()
    assert rec == [(column, rule, 2 if rule == "unique" else 1, "warn")]
    stored = con.execute("select feature_name, rule, entity_key from feature_violations").fetchall()
    assert stored == [(column, rule, key)]
    if rule == "type":  # an uncastable value is written as null, and counted as such
        q = "select tenure_months from fs_customer_profile where customer_id = 'C9'"
        assert con.execute(q).fetchone() == (None,)


def test_violations_are_counted_in_full_and_sampled(con):
    _customers(con, [(f"C{i}", "2024-01-01", "gold", str(-i - 1), "1") for i in range(30)])
    res = fs.register(con, _group(), validation="warn", max_reported_rows=5)
    check = res.checks.set_index("rule").loc["min"]
    assert check["failed_rows"] == 30 and len(res.violations) == 5


def test_composite_keys_reported_by_name(con):
    con.execute("create table st as select * from (values ('s1', 'p1', timestamp '2024-01-01', 3), "
                "('s1', null, timestamp '2024-01-01', 4)) t(store, product, ts, qty)")
    with pytest.raises(fs.FeatureValidationError) as err:
        fs.register(con, fs.FeatureGroup("stock", "st", ["store", "product"], "ts"))
    assert err.value.violations["entity_key"].tolist() == ["store=s1, product=NULL"]


# --------------------------------------------------------------------------- discovery

def _small_registry(con):
    _customers(con)
    fs.register(con, _group())
    con.execute("create table tickets as select 'C' || (range % 3) as customer_id, "
                "timestamp '2024-01-01' + to_days(range::int) as day, range as n_tickets, "
                "range % 2 = 0 as escalated from range(6)")
    fs.register(con, fs.FeatureGroup(
        "support_activity", "tickets", ["customer_id"], "day",
        features=[fs.Feature("n_tickets", "BIGINT", "support tickets opened so far"),
                  fs.Feature("escalated", "BOOLEAN", "last ticket was escalated to a manager")],
        description="How much a customer needs support", owner="support", tags=["support", "tickets"]))
    con.execute("create table plans as select 'gold' as plan_name, date '2024-01-01' as valid_from, 30.0 as price")
    fs.register(con, fs.FeatureGroup(
        "plan_catalog", "plans", ["plan_name"], "valid_from",
        features=[fs.Feature("price", "DOUBLE", "list price of the plan per month")],
        description="Subscription plan prices", owner="finance", tags=["pricing"]))


def test_search_ranks_by_weighted_field_matches(con):
    _small_registry(con)
    hits = fs.search(con, "tenure")
    assert hits.iloc[0][["kind", "feature_name", "score"]].tolist() == ["feature", "tenure_months", 3.0]
    assert hits.iloc[0]["matched"] == "name:tenure=3"
    assert len(hits) == 2 and hits.iloc[1]["kind"] == "group"  # customer_profile lists it (features=1)
    # a tag beats a description word: 'support' is support_activity's tag and name -> 3 + 2 + ...
    hits = fs.search(con, "support")
    assert hits.iloc[0]["group_name"] == "support_activity" and hits.iloc[0]["kind"] == "group"
    assert hits.iloc[0]["score"] == pytest.approx(3 + 2 + 1)   # name + tag + description
    # two terms add up; the best match for 'plan price' is plan_catalog.price (name 3 + description 1 + group)
    top = fs.search(con, "plan price").iloc[0]
    assert (top["group_name"], top["feature_name"]) == ("plan_catalog", "price")
    # prefix matches count half; nothing matching -> no rows
    assert fs.search(con, "escalat").iloc[0]["score"] == pytest.approx(1.5 + 0.5)
    assert fs.search(con, "zebra").empty
    scores = fs.search(con, "customer plan").score.tolist()
    assert scores == sorted(scores, reverse=True)


def test_list_versions_lineage(con):
    _small_registry(con)
    fs.register(con, _group(description="changed"))
    groups = fs.list_groups(con)
    assert groups["group_name"].tolist() == ["customer_profile", "plan_catalog", "support_activity"]
    assert groups.set_index("group_name").loc["customer_profile", "version"] == 2
    assert len(fs.list_groups(con, all_versions=True)) == 4
    lin = fs.lineage(con, "customer_profile", 1)
    assert lin["source_tables"] == ["stg_customers"] and "from stg_customers" in lin["source_sql"]
    # the snapshot recorded lets you read the source exactly as it was
    n = con.execute(f"select count(*) from stg_customers at (version => {lin['data_snapshot']})").fetchone()[0]
    assert n == 4
    with pytest.raises(fs.FeatureError, match="registered: customer_profile, plan_catalog"):
        fs.describe(con, "nope")


# --------------------------------------------------------------------------- point-in-time retrieval

def _reference(feat: pd.DataFrame, ent: pd.DataFrame, ttl: dt.timedelta | None) -> list:
    """Brute force: for each entity row, the feature row of the same key with the latest time <= ts."""
    by_key: dict = {}
    for r in feat.itertuples():
        by_key.setdefault(r.k, []).append((r.t, r.v))
    out = []
    for r in ent.itertuples():
        past = [(t, v) for t, v in by_key.get(r.k, []) if t <= r.ts]
        best = max(past) if past else None
        if best is not None and ttl is not None and best[0] < r.ts - ttl:
            best = None
        out.append((None, None) if best is None else best)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_in_time_matches_brute_force_no_leakage(con, seed):
    rng = random.Random(seed)
    minutes = rng.sample(range(5000), 400)  # distinct times per (key, t) pair below
    feat = pd.DataFrame({"k": [rng.randrange(15) for _ in minutes],
                         "t": [T0 + dt.timedelta(minutes=m) for m in minutes],
                         "v": [rng.random() for _ in minutes]}).drop_duplicates(["k", "t"])
    con.register("feat_df", feat)
    con.execute("create table feat as select * from feat_df")
    fs.register(con, fs.FeatureGroup("g", "feat", ["k"], "t"))
    # entity rows: random times, some exactly on a feature time (inclusive), keys 0..17 (16, 17 unknown)
    times = [T0 + dt.timedelta(minutes=rng.randrange(-100, 5200)) for _ in range(300)]
    times[:40] = list(feat["t"].iloc[:40])
    ent = pd.DataFrame({"k": [rng.randrange(18) for _ in times], "ts": times})
    ent.loc[:39, "k"] = feat["k"].iloc[:40].values
    for ttl in (None, dt.timedelta(minutes=300)):
        got = fs.retrieve(con, ent, "g", timestamp_column="ts", ttl=ttl)
        assert got[["k", "ts"]].equals(ent[["k", "ts"]])  # one row per entity row, in order
        expected = _reference(feat, ent, ttl)
        assert [(None if pd.isna(t) else t.to_pydatetime(), None if pd.isna(v) else v)
                for t, v in zip(got["g__event_time"], got["v"])] == expected
        assert (got["g__event_time"].dropna() <= got.loc[got["g__event_time"].notna(), "ts"]).all()
        if ttl is not None:
            fresh = got.dropna(subset=["g__event_time"])
            assert (fresh["ts"] - fresh["g__event_time"] <= ttl).all()
            assert got["v"].isna().sum() > _reference(feat, ent, None).count((None, None))  # TTL bit
    # the same through SQL, a string TTL and a table written in the workspace
    con.register("feat_ent", ent)
    n = fs.retrieve(con, "select * from feat_ent", "g", timestamp_column="ts", ttl="300 minutes",
                    out_table="pit_out")
    assert n == len(ent)
    sql_rows = con.execute("select k, ts, v from pit_out").fetchall()
    ref = {(k, ts): v for (k, ts), (_, v) in zip(ent.itertuples(index=False),
                                                  _reference(feat, ent, dt.timedelta(minutes=300)))}
    assert {(k, ts): v for k, ts, v in sql_rows} == ref


def test_retrieve_several_groups_prefix_keys_and_errors(con):
    _small_registry(con)
    ent = pd.DataFrame({"cust": ["C1", "C1", "C2"],
                        "created_at": ["2024-01-03 12:00", "2024-03-02", "2024-01-02"]})  # strings are cast
    out = fs.retrieve(con, ent, ["customer_profile", "support_activity"], timestamp_column="created_at",
                      key_map={"customer_id": "cust"}, prefix=True)
    assert out["customer_profile__plan"].tolist()[:2] == ["gold", "silver"]
    assert pd.isna(out["customer_profile__plan"].iloc[2])
    # tickets: customer C1 has days 2024-01-02 (n=1), 01-05 (n=4); C2: 01-03 (n=2) -> after 01-02 none
    assert out["support_activity__n_tickets"].tolist()[:2] == [1, 4]
    assert pd.isna(out["support_activity__n_tickets"].iloc[2])
    # the SQL behind it runs as is (e.g. in a %%sql cell) and gives the same rows
    con.register("ent_view", ent)
    sql = fs.point_in_time_sql(con, "ent_view", ["customer_profile", "support_activity"],
                               timestamp_column="created_at", key_map={"customer_id": "cust"}, prefix=True)
    assert sql.count("asof left join") == 2
    same = con.execute(sql).df().sort_values("created_at").reset_index(drop=True)
    pd.testing.assert_frame_equal(same, out.sort_values("created_at").reset_index(drop=True))
    pl = pytest.importorskip("polars")  # polars and Arrow entity tables work the same way
    from_polars = fs.retrieve(con, pl.from_pandas(ent), ["customer_profile", "support_activity"],
                              timestamp_column="created_at", key_map={"customer_id": "cust"}, prefix=True)
    pd.testing.assert_frame_equal(from_polars, out)
    only = fs.retrieve(con, ent, "customer_profile", timestamp_column="created_at",
                       key_map={"customer_id": "cust"}, features=["plan"], version=1)
    assert list(only.columns) == ["cust", "created_at", "plan", "customer_profile__event_time"]
    with pytest.raises(fs.FeatureError, match="not an entity column"):
        fs.retrieve(con, ent, "customer_profile", timestamp_column="created_at")
    with pytest.raises(fs.FeatureError, match="clashes"):
        fs.retrieve(con, ent.rename(columns={"cust": "customer_id", "created_at": "plan"}),
                    "customer_profile", timestamp_column="plan")
    with pytest.raises(fs.FeatureError, match="ttl"):
        fs.retrieve(con, ent, "customer_profile", timestamp_column="created_at",
                    key_map={"customer_id": "cust"}, ttl="soon")
    with pytest.raises(fs.FeatureError, match=r"\['nope'\] not in group"):
        fs.retrieve(con, ent, "customer_profile", timestamp_column="created_at",
                    key_map={"customer_id": "cust"}, features=["nope"])
    bad_ts = ent.assign(created_at=["2024-01-03 12:00", "last tuesday", None])
    with pytest.raises(fs.FeatureError, match=r"timestamp_column 'created_at': 1 value\(s\) are not timestamps, "
                                              r"e.g. 'last tuesday'"):
        fs.retrieve(con, bad_ts, "customer_profile", timestamp_column="created_at", key_map={"customer_id": "cust"})


def test_asof_sql_is_one_function():
    sql = fs.asof_join_sql("e0", "fs_g__v1", [("k", "k", None)], "ts", "t", [("v", "v")], "g__event_time",
                           "7 days")
    assert "asof left join" in sql and "interval '7 days'" in sql and sql.count("join") == 1


# --------------------------------------------------------------------------- CLI

def test_cli_list_search_show(con, workspace, capsys):
    from workbench.cli import main

    _small_registry(con)
    con.close()
    assert main(["--workspace", str(workspace), "features", "list"]) == 0
    assert "support_activity" in capsys.readouterr().out
    assert main(["--workspace", str(workspace), "features", "search", "tenure", "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["feature_name"] == "tenure_months"
    assert main(["--workspace", str(workspace), "features", "show", "customer_profile"]) == 0
    out = capsys.readouterr().out
    assert "tenure_months" in out and "from stg_customers" in out and "stg_customers" in out
    assert main(["--workspace", str(workspace), "features", "show", "nope"]) == 2
    assert "no feature group 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- notebook 07

def test_source_tables_resolve_ctes():
    assert fs.source_tables("with stg as (select * from stg), b as (select * from stg join t2 using (x)) "
                            "select * from b where x in (select x from t3)") == ["stg", "t2", "t3"]
    sql = sql_path("07_customer_profile").read_text()
    assert fs.source_tables(sql) == ["stg_customers"]


@pytest.mark.slow
def test_notebook_07_runs_headless_and_features_reach_training_data(workspace, tmp_path):
    """Notebook 07 headless, checked against an independent point-in-time join; then its
    examples_with_features is a training input: a template that reads customer_context, and notebook
    09 on text_with_context (07 run before 05 and 09). One spine and one run of 07 serve both halves."""
    import workbench
    from workbench import data, pipeline, templates
    from workbench.template_sql import apply_templates

    from test_classifier import build_tiny_model

    con = workbench.connect(workspace)
    data.build_spine(con, rows=300, seed=11)
    con.close()
    pipeline.run({"ttl_days": "200"}, only=["07"], workspace=workspace)
    con = workbench.connect(workspace)
    g = con.execute("select version, row_count, failed_checks, source_file, source_tables "
                    "from feature_groups").fetchall()
    assert g == [(1, con.execute("select count(distinct (customer_id, as_of)) from stg_customers").fetchone()[0],
                  0, "07_customer_profile.sql", ["stg_customers"])]
    n_examples = con.execute("select count(*) from examples").fetchone()[0]
    # independent check of the point-in-time join: a correlated max() over the raw snapshots
    expected = dict(con.execute("""
        select e.example_id, (select max(try_cast(c.as_of as timestamp)) from stg_customers c
                              where c.customer_id = e.customer_id
                                and try_cast(c.as_of as timestamp) <= e.created_at
                                and try_cast(c.as_of as timestamp) >= e.created_at - interval '200 days')
        from examples e""").fetchall())
    got = dict(con.execute("select example_id, profile_as_of from examples_with_features").fetchall())
    assert len(got) == n_examples and got == expected
    assert 0 < sum(v is not None for v in got.values()) < n_examples  # some examples before any profile
    ctx = con.execute("""select customer_context from examples_with_features join splits using (example_id)
                         where split = 'train' and plan is not null limit 1""").fetchone()[0]
    assert ctx.startswith("Customer plan: ") and "months" in ctx

    # a template over examples_with_features reads customer_context
    try:
        [tpl] = templates.parse_templates({
            "task": "intent_with_profile", "task_type": "classification", "table": "examples_with_features",
            "key": "example_id", "answer_choices": ["billing", "refund", "shipping", "technical_issue",
                                                    "account_access", "cancellation"],
            "templates": [{"id": "iwp-1", "name": "intent_with_profile",
                           "columns": ["customer_context", "text", "intent"],
                           "prompt": "{{ customer_context }}\nMessage: {{ text }}\nIntent:",
                           "completion": "{{ intent }}"}]})
        apply_templates(con, ["intent_with_profile"], templates=[tpl])
        want = dict(con.execute("select example_id, customer_context || chr(10) || 'Message: ' || text "
                                "|| chr(10) || 'Intent:' from examples_with_features").fetchall())
        got = dict(con.execute("select source_row_id, prompt from sft_examples "
                               "where task = 'intent_with_profile'").fetchall())
        assert got == want and any(p.startswith("Customer plan: ") for p in got.values())
    finally:
        con.close()

    # notebook 09 trains on examples_with_features.text_with_context
    tiny = build_tiny_model(tmp_path / "tiny")
    params = {"classifier_model": str(tiny), "classifier_table": "examples_with_features",
              "classifier_text_column": "text_with_context", "classifier_epochs": "1",
              "classifier_batch_size": "16", "train_causal_lm": "false", "n_preview": "2"}
    pipeline.run(params, only=["09"], workspace=workspace, progress=lambda msg: None)
    con = workbench.connect(workspace)
    try:
        run_id, status = con.execute("select run_id, status from runs where kind = 'classifier'").fetchone()
        assert status == "completed"
        want = dict(con.execute("select example_id, text_with_context from examples_with_features "
                                "join splits using (example_id) where split = 'test'").fetchall())
        got = dict(con.execute("select example_id, prompt from predictions where run_id = ? and split = 'test'",
                               [run_id]).fetchall())
        assert got == want
    finally:
        con.close()
