"""Quality report: every check on a small table whose answers are known, the table, the CLI, plots."""
from __future__ import annotations

import pytest

from workbench.quality import QualityConfig, latest_report, plot_report, quality_report, summary

ROWS = [
    # example_id, text, intent, split, region
    ("e01", "I was charged twice for my plan this month", "billing", "train", "north"),
    ("e02", "i was charged   TWICE for my plan this month", "billing", "test", "north"),       # dup of e01 (normalized), leaks
    ("e03", "where is my parcel, order 12345 has not arrived", "shipping", "train", "south"),
    ("e04", "call me at 555-123-4567 about my refund please", "refund", "validation", None),
    ("e05", "my email is ann@example.com and I cannot log in", "account_access", "train", "east"),
    ("e06", None, "billing", "train", "west"),
    ("e07", "card 4111 1111 1111 1111 was charged twice", None, "train", "west"),
    ("e08", "ok", "billing", "train", "west"),
    ("e09", "where is my parcel, order 12345 has not arrived yet", "shipping", "test", "south"),  # near e03, leaks
    ("e10", "the app crashes when I open the settings page", "technical_issue", "train", "east"),
    ("e11", "my masked number is <PHONE>", "refund", "train", "east"),
    ("e12", "   ", "billing", "train", "east"),
]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """One workspace for the module: the report below is computed once."""
    import workbench

    c = workbench.connect(tmp_path_factory.mktemp("quality") / "workspace")
    yield c
    c.close()


@pytest.fixture(scope="module")
def report(con):
    con.execute("create table ex as select * from (values "
                + ", ".join("(" + ", ".join("null" if v is None else "'" + v + "'" for v in r) + ")" for r in ROWS)
                + ") as t(example_id, text, intent, split, region)")
    return quality_report(con, "ex", QualityConfig(near_dup_threshold=0.7, histogram_bins=5))


def value(report, check, column=None):
    rows = report[(report["check_name"] == check) & ((report["column_name"] == column) if column else True)]
    assert len(rows) == 1, (check, column, rows)
    return rows["value"].iloc[0]


def test_counts_nulls_duplicates(report):
    assert value(report, "row_count") == 12
    assert value(report, "null_count", "text") == 1 and value(report, "null_count", "intent") == 1
    assert value(report, "null_count", "region") == 1 and value(report, "null_count", "example_id") == 0
    assert value(report, "blank_count", "text") == 1
    assert value(report, "duplicate_rows") == 0
    assert value(report, "duplicate_text", "text") == 1                  # e02
    assert value(report, "near_duplicate_text", "text") == 2             # e02 (equal) and e09 (near e03)


def test_lengths_and_outliers(report):
    texts = [r[1] for r in ROWS if r[1] is not None]
    chars = sorted(len(t) for t in texts)
    assert value(report, "length_chars_min", "text") == min(chars) and value(report, "length_chars_max", "text") == max(chars)
    assert value(report, "length_tokens_min", "text") == 0               # the blank text
    assert value(report, "length_tokens_max", "text") == 10
    hist = report[report["check_name"] == "length_chars_hist"]
    assert hist["value"].sum() == len(texts) and hist["detail"].iloc[0].startswith(f"[{min(chars)}, ")
    assert value(report, "length_chars_outliers", "text") == 0
    detail = report.loc[report["check_name"] == "length_tokens_outliers", "detail"].iloc[0]
    assert detail.startswith("outside [")


def test_pii_labels_and_leakage(report):
    assert value(report, "pii_emails", "text") == 1
    assert value(report, "pii_phones", "text") == 1
    assert value(report, "pii_cards", "text") == 1
    assert "1 rows hold the mask <PHONE>" in report.loc[report["check_name"] == "pii_phones", "detail"].iloc[0]
    labels = report[report["check_name"] == "label_count"]
    assert dict(zip(labels["detail"].str.split(" ").str[0], labels["value"])) == {
        "billing": 5, "shipping": 2, "refund": 2, "account_access": 1, "technical_issue": 1, "null": 1}
    assert value(report, "label_classes", "intent") == 5 and value(report, "label_imbalance_ratio", "intent") == 5
    splits = report[report["check_name"] == "split_count"]
    assert dict(zip(splits["detail"], splits["value"])) == {"train": 9, "test": 2, "validation": 1}
    assert value(report, "leakage_exact_texts", "text") == 1             # e01/e02
    assert value(report, "leakage_near_pairs", "text") == 1              # e03/e09


def test_report_table_and_splits_table(con, report):
    stored = latest_report(con, "ex")
    assert len(stored) == len(report) and set(stored["report_id"]) == set(report["report_id"])
    assert list(stored.columns) == ["report_id", "table_name", "check_name", "column_name", "value", "detail",
                                    "created_at"]
    # split assignments from the splits table, joined on the key, when the table has no split column
    con.execute("create table ex2 as select example_id, text, intent from ex")
    con.execute("create table splits as select example_id, split from ex")
    rep2 = quality_report(con, "ex2", QualityConfig(near_dup_threshold=0.7))
    assert value(rep2, "leakage_exact_texts", "text") == 1 and value(rep2, "leakage_near_pairs", "text") == 1
    assert len(rep2[rep2["check_name"] == "split_count"]) == 3
    assert value(rep2, "split_join", "example_id") == len(ROWS)
    # a table rendered from examples (sft_examples) has its own example_id; source_row_id is the
    # example's id that splits knows: the report joins on it and still finds the leaks
    con.execute("create table sft as select 'tpl-a:' || example_id as example_id, example_id as source_row_id, "
                "text, intent from ex")
    rep3 = quality_report(con, "sft", QualityConfig(near_dup_threshold=0.7))
    assert value(rep3, "split_join", "source_row_id") == len(ROWS)
    assert value(rep3, "leakage_exact_texts", "text") == 1 and value(rep3, "leakage_near_pairs", "text") == 1
    # keys that splits does not know: said so, and no leakage rows that would read as 'no leakage'
    con.execute("create table other as select 'x' || example_id as id, text from ex")
    rep4 = quality_report(con, "other", QualityConfig(near_dup_threshold=0.7))
    assert value(rep4, "split_join") == 0 and "leakage not checked" in rep4.loc[
        rep4["check_name"] == "split_join", "detail"].iloc[0]
    assert not rep4["check_name"].str.startswith("leakage").any()
    with pytest.raises(ValueError, match="split key column 'nope' is not a column of sft"):
        quality_report(con, "sft", QualityConfig(split_key_column="nope"))
    assert "split_count" not in set(summary(rep2)["check_name"])  # the summary keeps headline checks only
    fig = plot_report(report)
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="label column 'label' is not a column of ex"):
        quality_report(con, "ex", QualityConfig(label_column="label"))
    with pytest.raises(ValueError, match="table 'nope' not found"):
        quality_report(con, "nope")


def test_cli_quality(report, tmp_path, capsys, monkeypatch):
    import workbench
    from workbench.cli import main

    ws = tmp_path / "ws"
    monkeypatch.setenv("WORKBENCH_HOME", str(ws))
    c = workbench.connect(ws)
    c.execute("create table ex as select * from (values ('e1', 'hello there', 'billing'), ('e2', 'mail a@b.co', null))"
              " as t(example_id, text, intent)")
    c.close()
    assert main(["quality", "ex", "--no-near-dup"]) == 0
    out = capsys.readouterr().out
    assert "row_count" in out and "pii_emails" in out and "near_duplicate_text" not in out
    assert main(["quality", "ex", "--format", "csv", "--all"]) == 0
    out = capsys.readouterr().out
    assert "length_chars_hist" in out and "pii_emails,text,1.0" in out
