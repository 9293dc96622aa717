"""The flow builder widget, driven through its Python API: set widget values, click buttons."""
from __future__ import annotations

import ipywidgets as w
import pytest
import yaml

from workbench.flow_widget import FILE_SOURCE, FlowBuilder
from workbench.flows import FLOW_DIR, FlowError, load_flow, run_flow, validate
from workbench.workspace import table_exists

MESSAGES = [
    # message_id, created_at, channel, text, intent
    ("m01", "2024-01-03 10:00:00", "email", "I was charged twice for my plan, mail me at ann@example.com", "Billing"),
    ("m02", "2024-01-04 11:00:00", "chat", "i was charged twice for my plan, mail me at ann@example.com", "billing"),
    ("m03", "2024-01-05 09:30:00", "chat", "My parcel has not arrived, it has been two weeks", "shipping"),
    ("m04", "2024-01-05 12:00:00", "app", "Please refund my last order, the item was broken", "refunds"),
    ("m05", "2024-01-06 08:15:00", "app", "The app crashes every time I open the settings page", "technical issue"),
    ("m06", "2024-01-06 18:40:00", "email", "I cannot log in, my password reset link never arrives", "account access"),
    ("m07", "2024-01-07 07:00:00", "chat", "Cancel my subscription please, call me on 555-123-4567", "cancellation"),
    ("m08", "2024-01-07 09:00:00", "chat", "ok", "billing"),
    ("m09", "2024-01-08 10:00:00", "email", "Здравствуйте, посылка не пришла", "shipping"),
    ("m10", "2024-01-08 11:00:00", "chat", None, "refund"),
    ("m11", "not a date", "chat", "Why was I billed for a plan I never ordered?", "billing"),
    ("m12", "2024-01-09 10:00:00", "app", "The app crashes every time I open the settings page!", "technical_issue"),
    ("m13", "2024-01-09 13:00:00", "email", "Where is my refund for order 4412? It was approved last week", "complaint"),
    ("m14", "2024-01-10 10:00:00", "chat", "  My   package was delivered to the wrong address  ", "SHIPPING"),
]
STG_COLUMNS = ["source_row_id", "source_file", "source_line", "message_id", "customer_id", "created_at", "channel",
               "region", "age_band", "text", "intent", "reply"]


def make_stg_messages(con) -> int:
    """A small stg_messages table (the spine's contract: every source column VARCHAR)."""
    rows = []
    for i, (mid, ts, channel, text, intent) in enumerate(MESSAGES, 2):
        rows.append((f"messages.csv:{i}", "messages.csv", str(i), mid, f"c{i % 5}", ts, channel,
                     ["north", "south", "east", "west"][i % 4], ["18-29", "30-44", "45-64", "65+"][i % 4], text,
                     intent, f"Thanks, we are on it ({mid})."))
    values = ", ".join("(" + ", ".join("null" if v is None else "'" + v.replace("'", "''") + "'" for v in r) + ")"
                       for r in rows)
    con.execute(f"create or replace table stg_messages as select * from (values {values}) as t({', '.join(STG_COLUMNS)})")
    return len(rows)


def type_value(widget: w.Widget, value) -> None:
    """What a person does in the form: pick, tick, or type text."""
    if isinstance(widget, w.SelectMultiple):
        widget.value = tuple([value] if isinstance(value, str) else value)
    elif isinstance(widget, w.Textarea) and isinstance(value, dict):
        widget.value = "\n".join(f"{k}: {'null' if v is None else v}" for k, v in value.items())
    elif isinstance(widget, (w.Text, w.Textarea)):
        widget.value = str(value)
    else:
        widget.value = value


@pytest.fixture
def builder(con, tmp_path):
    make_stg_messages(con)
    return FlowBuilder(con, flow_dir=tmp_path / "flows", sql_dir=tmp_path / "sql")


def test_build_the_sample_flow_by_clicks(builder, con, tmp_path):
    target = load_flow(FLOW_DIR / "support_messages.yaml")
    b = builder
    b.name.value = target.name
    b.source.value = "stg_messages"
    b.output.value = target.output
    b.key.value = target.key
    for raw in target.steps:
        b.step_menu.value = raw["step"]
        b.add_button.click()
        assert b.selected == len(b.steps) - 1 and b.steps[-1]["step"] == raw["step"]
        for field, value in raw.items():
            if field != "step":
                type_value(b.fields[field], value)
    assert b.status.value == ""  # no field was refused

    # the flow in the widgets is the sample flow: same steps, same parameters after defaults
    built = b.flow()
    assert [p.params for p in validate(built, con)] == [p.params for p in validate(target, con)]

    b.preview_button.click()
    assert "preview on DuckDB:" in b.status.value, b.status.value
    counts = [(r.kind, r.rows_in, r.rows_out) for r in b.last_preview]
    assert counts[0] == ("source", 14, 14) and len(counts) == len(target.steps) + 1
    assert "<td>near_dedup</td>" in b.counts.value and "first rows after" in b.rows.value
    run = run_flow(con, target, output="flow_check")
    assert [(r.kind, r.rows_in, r.rows_out) for r in run.steps] == counts

    b.save_button.click()
    saved = tmp_path / "flows" / "support_messages.yaml"
    assert saved.exists() and "saved" in b.status.value
    assert [p.params for p in validate(load_flow(saved), con)] == [p.params for p in validate(target, con)]
    assert yaml.safe_load(saved.read_text())["source"] == {"table": "stg_messages"}

    b.sql_file.value = "11_flow_support_messages.sql"
    b.export_button.click()
    sql = (tmp_path / "sql" / "11_flow_support_messages.sql").read_text()
    assert sql.startswith("-- creates: flow_support_messages") and "s11_near_dedup as (" in sql

    b.run_button.click()
    assert "wrote flow_support_messages" in b.status.value
    assert con.execute("select count(*) from flow_support_messages").fetchone()[0] == counts[-1][2]


def test_reorder_remove_and_forms(builder):
    b = builder
    for kind in ("filter", "length_filter", "dedup"):
        b.step_menu.value = kind
        b.add_button.click()
    assert [s["step"] for s in b.steps] == ["filter", "length_filter", "dedup"]
    assert b.steps[1]["column"] == "text"  # a required column is preselected
    b.steps_list.value = 2
    b.up_button.click()
    assert [s["step"] for s in b.steps] == ["filter", "dedup", "length_filter"] and b.selected == 1
    b.up_button.click()
    b.up_button.click()  # already first: nothing moves
    assert [s["step"] for s in b.steps] == ["dedup", "filter", "length_filter"] and b.selected == 0
    b.down_button.click()
    assert [s["step"] for s in b.steps] == ["filter", "dedup", "length_filter"]
    b.remove_button.click()
    assert [s["step"] for s in b.steps] == ["filter", "length_filter"] and b.selected == 1

    # the form follows the selected step; its menus list the columns flowing into the step
    assert set(b.fields) == {"column", "unit", "min", "max"}
    assert "text" in b.fields["column"].options and "reply" in b.fields["column"].options
    type_value(b.fields["min"], "abc")
    assert "step 2, field 'min'" in b.status.value and "min" not in b.steps[1]
    type_value(b.fields["min"], "5")
    assert b.steps[1]["min"] == 5
    type_value(b.fields["unit"], "tokens")
    type_value(b.fields["unit"], "chars")  # back to the default: not written to the file
    assert b.steps[1] == {"step": "length_filter", "column": "text", "min": 5}

    # a bad predicate is reported in the status line, naming step and field; nothing is saved
    b.steps_list.value = 0
    type_value(b.fields["where"], "chanel = 'chat'")
    b.save_button.click()
    assert "step 1 (filter): field 'where': column 'chanel' not found" in b.status.value
    assert not (b.flow_dir / "my_flow.yaml").exists()
    type_value(b.fields["where"], "channel = 'chat'")
    b.preview_button.click()
    assert [r.rows_out for r in b.last_preview] == [14, 7, 5]  # chat rows; then "ok" and the null text leave


def test_open_an_existing_flow_and_file_source(builder, tmp_path):
    b = builder
    b.load(FLOW_DIR / "support_messages.yaml")
    assert b.name.value == "support_messages" and len(b.steps) == len(load_flow(FLOW_DIR / "support_messages.yaml").steps)
    assert b.steps_list.options[0][0] == "1. Select / rename / cast columns"
    b.save_button.click()
    assert b.load_menu.options == ("support_messages.yaml",)
    n = len(b.steps)
    while b.steps:
        b.remove_button.click()
    b.load_button.click()
    assert len(b.steps) == n and b.selected == 0

    csv = tmp_path / "m.csv"
    csv.write_text("id,text\n1,hello there\n2,\n")
    b.source.value = FILE_SOURCE
    b.source_file.value = str(csv)
    assert b.source_file.layout.display == "" and list(b.key.options) == ["", "id", "text"]
    b.source.value = "stg_messages"  # a table again: the file box hides, nothing else does
    assert b.source_file.layout.display == "none"
    assert all(x.layout.display in (None, "") for x in (b.name, b.source, b.output, b.key, b.load_menu, b.step_menu))
    b.source.value = FILE_SOURCE
    while b.steps:
        b.remove_button.click()
    b.step_menu.value = "drop_nulls"
    b.add_button.click()
    b.preview_button.click()
    assert [r.rows_out for r in b.last_preview] == [2, 1]


def test_engine_is_shown_and_a_bad_spark_target_is_reported(con, tmp_path):
    """Preview and Run name their engine; a Spark master URL that is not one fails in the status line
    (before any Spark starts) and nothing is written."""
    make_stg_messages(con)
    with pytest.raises(FlowError, match="engine 'polars'"):
        FlowBuilder(con, flow_dir=tmp_path, engine="polars")
    b = FlowBuilder(con, FLOW_DIR / "support_messages.yaml", flow_dir=tmp_path)
    assert b.engine.value == "duckdb" and "<b>DuckDB</b>" in b.engine_info.value
    b = FlowBuilder(con, FLOW_DIR / "support_messages.yaml", flow_dir=tmp_path, engine="spark",
                    spark_master="locl[2]")
    assert "Preview and Run use <b>Spark locl[2]</b>" in b.engine_info.value
    b.run_button.click()
    assert "spark_master 'locl[2]'" in b.status.value and "color:#b00020" in b.status.value
    b.preview_button.click()
    assert "spark_master 'locl[2]'" in b.status.value and b.last_preview is None
    assert not table_exists(con, "flow_support_messages") and not table_exists(con, "flow_runs")
    b.engine.value = "duckdb"  # the menu switches the engine
    assert "<b>DuckDB</b>" in b.engine_info.value
    b.preview_button.click()
    assert "preview on DuckDB: 14 rows in" in b.status.value
