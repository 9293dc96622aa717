"""The labeling and adjudication widgets through their Python API, and notebook 03 run headless."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import workbench
from workbench import labeling as L
from workbench.labeling_widget import AdjudicationWidget, LabelingWidget

REPO = Path(__file__).resolve().parent.parent
INTENTS = L.INTENTS


def make_pool(con, n: int = 6) -> pd.DataFrame:
    pool = pd.DataFrame({"item_id": [f"pool:{i}" for i in range(n)],
                         "text": [f"message <b>{i}</b> & more" for i in range(n)],
                         "region": ["north", "south"] * (n // 2), "age_band": ["65+", "18-29"] * (n // 2)})
    workbench.write_table(con, "label_pool", pool)
    return pool


def rows(con, label_set: str = "intent") -> pd.DataFrame:
    return con.execute("select * from labels where label_set = ? order by created_at, label_id", [label_set]).df()


def widget(con, name: str = "ana", **kw) -> LabelingWidget:
    return LabelingWidget(con, name, "intent", INTENTS, queue=L.QueueConfig(max_items=None), **kw)


def test_buttons_and_keys_write_rows_at_once(con):
    make_pool(con)
    w = widget(con)
    order = list(w.session.items.index)
    assert "message &lt;b&gt;" in w.item.value and order[0] in w.item.value  # the text is escaped
    assert [b.description for b in w.label_buttons][:2] == ["1 billing", "2 refund"]

    w.label_buttons[0].click()                         # a button
    assert rows(con)[["item_id", "value", "kind"]].values.tolist() == [[order[0], "billing", "label"]]
    assert order[1] in w.item.value and "you: 1 done, 5 to go" in w.progress_text.value

    w.keys.value = "3"                                 # a shortcut key: 3 = shipping
    assert w.keys.value == "" and rows(con)["value"].tolist() == ["billing", "shipping"]
    w.keys.value = "s"                                 # skip
    w.keys.value = "u"                                 # undo the skip
    w.keys.value = "u"                                 # undo 'shipping'
    log = rows(con)
    assert log["kind"].tolist() == ["label", "label", "skip", "retraction", "retraction"]
    assert log["retracts"].iloc[4] == log["label_id"].iloc[1]
    assert order[1] in w.item.value and "retracted your &#x27;shipping&#x27;" in w.message.value
    w.keys.value = "42"                                # two keys before the kernel caught up: the last counts
    assert rows(con)["value"].iloc[-1] == "refund"
    w.keys.value = "x"
    assert "does nothing" in w.message.value and w.last_error is None
    w.keys.value = "9"                                 # only 6 labels
    assert len(rows(con)) == 6
    w.skip_button.click()
    w.undo_button.click()
    assert rows(con)["kind"].tolist()[-2:] == ["skip", "retraction"]


def test_queue_done_disables_buttons_and_reopening_resumes(workspace, con):
    make_pool(con, 4)
    w = widget(con)
    w.press("1")
    w.press("2")
    w2 = widget(workbench.connect(workspace))          # a restarted kernel
    assert w2.session.session_id != w.session.session_id
    assert w2.session.current["item_id"] == w.session.current["item_id"]
    w2.press("1")
    w2.press("1")
    assert "Queue done" in w2.item.value and all(b.disabled for b in w2.label_buttons)
    w2.label_buttons[0].click()                        # a click on a disabled button that got through anyway
    assert "nothing left to label" in w2.message.value and len(rows(con)) == 4


def test_free_text_mode(con):
    make_pool(con, 4)
    w = widget(con, prefill=lambda item: f"draft for {item['item_id']}")
    assert w.text_row.layout.display == "none"
    w.mode_toggle.value = "text"                       # what clicking "Free text" does
    assert w.mode == "text" and w.label_row.layout.display == "none" and w.text_row.layout.display is None
    first = w.text_session.current["item_id"]
    assert w.text_area.value == f"draft for {first}"
    w.text_area.value = "Thanks, I have refunded order 12."
    w.text_submit.click()
    t = rows(con, "reference_completion")
    assert t[["item_id", "value", "kind", "source"]].values.tolist() == [
        [first, "Thanks, I have refunded order 12.", "label", "widget"]]
    assert w.text_session.current["item_id"] != first and "texts: 1/4" in w.progress_text.value
    w.undo_button.click()                              # undo in text mode retracts the text, and shows it again
    assert rows(con, "reference_completion")["kind"].tolist() == ["label", "retraction"]
    assert w.text_session.current["item_id"] == first
    w.text_area.value = "   "
    w.text_submit.click()
    assert "free text is empty" in w.message.value and len(rows(con, "reference_completion")) == 2
    assert len(rows(con)) == 0                         # the button label set is untouched
    w.press("2")                                       # a number key switches back to labels
    assert w.mode == "labels" and rows(con)["value"].tolist() == ["refund"]
    lab = LabelingWidget(con, "ana", "intent", INTENTS, text_label_set=None)
    assert lab.mode_toggle.layout.display == "none" and lab.text_session is None


def test_annotator_name_switches_the_session(con):
    make_pool(con, 4)
    w = widget(con)
    w.press("1")
    w.annotator_box.value = "ben"
    assert w.session.annotator == "ben" and "you: 0 done" in w.progress_text.value
    assert "1/4 items complete" in w.progress_text.value
    w.press("2")
    assert rows(con)["annotator"].tolist() == ["ana", "ben"]
    w.annotator_box.value = "  "
    assert "Type your name" in w.message.value and w.session.annotator == "ben"


def test_assigned_queue_and_outsider(con):
    make_pool(con, 6)
    L.assign(con, "intent", ["ana", "ben"], 1, L.QueueConfig(max_items=None))
    w = widget(con, "ana")
    mine = set(con.execute("select item_id from label_assignments where annotator = 'ana'").df()["item_id"])
    assert set(w.session.items.index) == mine
    outsider = widget(con, "zed")
    assert "No items in zed&#x27;s queue" in outsider.item.value and all(b.disabled for b in outsider.label_buttons)


def test_adjudication_widget(con):
    make_pool(con, 4)
    for who, vals in {"ana": ["billing", "refund", "billing"], "ben": ["billing", "shipping", "refund"]}.items():
        s = L.LabelingSession(con, who, "intent", INTENTS, queue=L.QueueConfig(max_items=None))
        s.submit_many([(f"pool:{i}", v) for i, v in enumerate(vals)])
    a = AdjudicationWidget(con, "intent", "lead")
    assert list(a.queue["item_id"]) == ["pool:1", "pool:2"] and "2 open disagreement" in a.header.value
    assert "<b>refund</b>: ana" in a.votes.value and "<b>shipping</b>: ben" in a.votes.value
    a.next_button.click()
    assert a.current["item_id"] == "pool:2"
    [b for b in a.buttons if b.description == "refund"][0].click()
    assert list(a.queue["item_id"]) == ["pool:1"]
    [b for b in a.buttons if b.description == "cancellation"][0].click()
    assert not len(a.queue) and all(b.disabled for b in a.buttons) and "No open disagreements" in a.item.value
    L.build_labels_final(con)
    final = con.execute("select item_id, value, method from labels_final order by item_id").fetchall()
    assert final == [("pool:0", "billing", "unanimous"), ("pool:1", "cancellation", "adjudicated"),
                     ("pool:2", "refund", "adjudicated")]
    adj = rows(con).query("kind == 'adjudication'")
    assert adj["annotator"].unique().tolist() == ["lead"] and adj["session_id"].nunique() == 1


@pytest.mark.slow
def test_notebook_runs_headless_with_papermill(workspace, con, tmp_path):
    import papermill as pm

    from workbench import data

    data.build_spine(con, rows=300, seed=7)
    out = tmp_path / "03.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "03_label_items.ipynb"), str(out), cwd=str(REPO / "notebooks"),
                        parameters={"workspace": str(workspace), "queue_size": 24, "agreement_bootstrap": 50,
                                    "annotator": "nb-user"},
                        kernel_name="python3", progress_bar=False)
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # rendered, no wait
    summary = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    assert "includes SIMULATED annotators" in summary

    asg = con.execute("select annotator, count(*) as n from label_assignments group by annotator").df()
    assert set(asg["annotator"]) == {"nb-user", "sim-1", "sim-2", "sim-3"} and asg["n"].sum() == 24 * 3
    lab = con.execute("select annotator, count(*) as n from labels where source = 'simulated' group by annotator "
                      "order by annotator").df()
    assert lab.merge(asg, on="annotator").pipe(lambda m: (m.n_x == m.n_y).all())  # every sim labeled its share
    agree = con.execute("select * from label_agreement where group_column = 'all'").df()
    alpha = agree.query("statistic == 'krippendorff_alpha'")["value"].item()
    assert 0.3 < alpha <= 1 and {"fleiss_kappa", "cohen_kappa", "percent_agreement"} <= set(agree["statistic"])
    assert {"region", "age_band"} <= set(con.execute("select group_column from label_agreement").df()["group_column"])
    final = con.execute("select method, count(*) as n from labels_final group by method").df()
    assert final["n"].sum() > 12 and set(final["method"]) <= {"unanimous", "majority", "single", "adjudicated"}
