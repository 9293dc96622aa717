"""The labeling and adjudication widgets (ipywidgets 8; JupyterLab 4, VS Code, papermill).

    from workbench.labeling_widget import LabelingWidget
    LabelingWidget(conn, annotator="ana", label_set="intent", choices=["billing", "refund"])

One item at a time with its context; a button per label; keyboard shortcuts typed into the
"Keys" box (1-9 label, s skip, u undo: a plain ``Text`` widget with ``continuous_update``, so no
compiled front-end extension is needed); a free-text mode to write or edit a reference completion;
progress for this annotator and overall. Every click goes through ``LabelingSession``, which commits
the row before the widget moves on. Displaying a widget never blocks, so a notebook run headless
by papermill just renders the first item and goes on.
"""
from __future__ import annotations

import html
import traceback
from typing import Callable, Sequence

import ipywidgets as W

from . import labeling as L

SKIP_KEYS = ("s", "0", " ")
UNDO_KEYS = ("u", "z")
_CARD = ("border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;margin:6px 0;"
         "font-size:15px;line-height:1.45;white-space:pre-wrap;max-width:820px")


def _item_html(item: dict | None, context_columns: Sequence[str], note: str = "") -> str:
    if item is None:
        return f"<div style='{_CARD}'>{html.escape(note) or '<b>Queue done:</b> every item has your answer.'}</div>"
    ctx = " · ".join(f"<span title='{html.escape(c)}'><b>{html.escape(c)}</b>: {html.escape(str(item.get(c)))}</span>"
                     for c in context_columns if item.get(c) is not None)
    return (f"<div style='color:#57606a;font-size:12px'>item <code>{html.escape(str(item['item_id']))}</code>"
            f"{' · ' + ctx if ctx else ''}</div>"
            f"<div class='wb-item-text' style='{_CARD}'>{html.escape(str(item['text']))}</div>"
            + (f"<div style='color:#9a6700;font-size:12px'>{html.escape(note)}</div>" if note else ""))


class LabelingWidget:
    """A labeling UI for one annotator over a label set of choices plus a free-text label set.

    Python API (what the buttons and keys call): ``press(key)``, ``choose(value)``, ``skip()``,
    ``undo()``, ``submit_text(text)``, ``set_mode('labels' | 'text')``, ``set_annotator(name)``;
    ``session`` / ``text_session`` are the ``LabelingSession``s underneath.
    """

    def __init__(self, con, annotator: str | None = None, label_set: str = "intent",
                 choices: Sequence[str] = tuple(L.INTENTS), *, text_label_set: str | None = "reference_completion",
                 queue: L.QueueConfig = L.QueueConfig(), prefill: Callable[[dict], str] | None = None):
        self.con, self.label_set, self.choices = con, label_set, list(choices)
        self.text_label_set, self.queue, self.prefill = text_label_set, queue, prefill
        self.mode = "labels"
        self.last_error: str | None = None

        self.title = W.HTML()
        self.annotator_box = W.Text(value=annotator or L.default_annotator(), description="Annotator",
                                    continuous_update=False, layout=W.Layout(width="280px"))
        self.annotator_box.observe(lambda ch: self._safe(self.set_annotator, ch["new"]), "value")
        self.progress_bar = W.IntProgress(min=0, max=1, layout=W.Layout(width="320px"))
        self.progress_text = W.HTML()
        self.item = W.HTML()
        self.mode_toggle = W.ToggleButtons(options=[("Labels", "labels"), ("Free text", "text")], value="labels",
                                           description="Mode", style={"button_width": "90px"})
        if text_label_set is None:
            self.mode_toggle.layout.display = "none"
        self.mode_toggle.observe(lambda ch: self._safe(self.set_mode, ch["new"]), "value")

        self.label_buttons = []
        for i, c in enumerate(self.choices):
            key = str(i + 1) if i < 9 else ""
            b = W.Button(description=f"{key} {c}".strip(), tooltip=f"label '{c}'" + (f" (key {key})" if key else ""),
                         layout=W.Layout(width="auto"))
            b.on_click(lambda _b, c=c: self._safe(self.choose, c))
            self.label_buttons.append(b)
        self.skip_button = W.Button(description="Skip (s)", icon="forward", tooltip="skip for now (key s)")
        self.undo_button = W.Button(description="Undo (u)", icon="undo", tooltip="retract your last answer (key u)")
        self.skip_button.on_click(lambda _b: self._safe(self.skip))
        self.undo_button.on_click(lambda _b: self._safe(self.undo))
        n = min(len(self.choices), 9)
        self.keys = W.Text(value="", description="Keys", continuous_update=True,
                           placeholder=f"click here, then type 1-{n} to label, s to skip, u to undo",
                           layout=W.Layout(width="420px"))
        self.keys.observe(self._on_key, "value")

        self.text_area = W.Textarea(placeholder="write the reference completion for this item",
                                    layout=W.Layout(width="820px", height="110px"))
        self.text_submit = W.Button(description="Submit text", icon="check", button_style="primary")
        self.text_submit.on_click(lambda _b: self._safe(self.submit_text, self.text_area.value))

        self.message = W.HTML()
        self.label_row = W.VBox([W.HBox(self.label_buttons, layout=W.Layout(flex_flow="row wrap")), self.keys])
        self.text_row = W.VBox([self.text_area, self.text_submit], layout=W.Layout(display="none"))
        self.box = W.VBox([
            self.title,
            W.HBox([self.annotator_box, self.mode_toggle]),
            W.HBox([self.progress_bar, self.progress_text]),
            self.item,
            self.label_row,
            self.text_row,
            W.HBox([self.skip_button, self.undo_button]),
            self.message,
        ])
        self.box.add_class("wb-labeling")
        self.set_annotator(self.annotator_box.value)

    # ------------------------------------------------------------------ the Python API
    @property
    def active(self) -> L.LabelingSession:
        return self.text_session if self.mode == "text" else self.session

    def set_annotator(self, name: str) -> None:
        name = (name or "").strip()
        if not name:
            self._say("Type your name in the Annotator box to start.", error=True)
            return
        self.session = L.LabelingSession(self.con, name, self.label_set, self.choices, queue=self.queue,
                                         source="widget")
        self.text_session = None
        if self.text_label_set:
            self.text_session = L.LabelingSession(self.con, name, self.text_label_set, None, queue=self.queue,
                                                  source="widget", session_id=self.session.session_id)
        if self.annotator_box.value != name:
            self.annotator_box.value = name
        self._say(f"Labeling as <b>{html.escape(name)}</b>; session <code>{self.session.session_id}</code>.")
        self.refresh()

    def set_mode(self, mode: str) -> None:
        if mode not in ("labels", "text") or (mode == "text" and self.text_session is None):
            raise ValueError(f"mode must be 'labels'{' or text' if self.text_session else ''}, not {mode!r}")
        self.mode = mode
        if self.mode_toggle.value != mode:
            self.mode_toggle.value = mode
        self.label_row.layout.display = "none" if mode == "text" else None
        self.text_row.layout.display = None if mode == "text" else "none"
        self.refresh()

    def choose(self, value: str) -> None:
        """Label the current item with ``value`` (what a label button does)."""
        row = self.session.submit(value)
        self._say(f"saved <b>{html.escape(value)}</b> for <code>{html.escape(row['item_id'])}</code>")
        self.refresh()

    def skip(self) -> None:
        row = self.active.skip()
        self._say(f"skipped <code>{html.escape(row['item_id'])}</code> (it comes back at the end)")
        self.refresh()

    def undo(self) -> None:
        last = self.active.undo()
        if last is None:
            self._say("nothing to undo")
        else:
            what = "skip" if last["kind"] == "skip" else f"'{last['value']}'"
            self._say(f"retracted your {html.escape(what)} on <code>{html.escape(last['item_id'])}</code>")
        self.refresh()

    def submit_text(self, text: str) -> None:
        """Save free text (a reference completion) for the current item in the text label set."""
        if self.text_session is None:
            raise ValueError("this widget has no free-text label set")
        row = self.text_session.submit(text)
        self._say(f"saved text ({len(text)} characters) for <code>{html.escape(row['item_id'])}</code>")
        self.refresh()

    def press(self, key: str) -> None:
        """Handle one shortcut key: 1-9 label, s (or 0, space) skip, u (or z) undo."""
        k = key.lower()
        if k.isdigit() and k != "0" and int(k) <= min(len(self.choices), 9):
            if self.mode == "text":
                self.set_mode("labels")
            self.choose(self.choices[int(k) - 1])
        elif k in SKIP_KEYS:
            self.skip()
        elif k in UNDO_KEYS:
            self.undo()
        else:
            self._say(f"key {key!r} does nothing: 1-{min(len(self.choices), 9)} label, s skip, u undo", error=True)

    # ------------------------------------------------------------------ rendering
    def refresh(self) -> None:
        s = self.active
        p = self.session.progress()
        name = html.escape(self.session.annotator)
        self.title.value = (f"<h3 style='margin:4px 0'>Label <code>{html.escape(self.label_set)}</code>"
                            f" &middot; {name}</h3>")
        self.progress_bar.max = max(p["total"], 1)
        self.progress_bar.value = p["done"]
        overall = (f"{p['ratings_done']}/{p['ratings_total']} ratings, " if p["ratings_total"] else "") + \
            f"{p['items_complete']}/{p['items_total']} items complete"
        mine = f"you: {p['done']} done, {p['remaining']} to go" + (f" ({p['skipped']} skipped)" if p["skipped"] else "")
        if self.mode == "text":
            tp = self.text_session.progress()
            mine += f" &middot; texts: {tp['done']}/{tp['total']}"
        self.progress_text.value = f"<span class='wb-progress'>{mine} &middot; everyone: {overall}</span>"
        cur = s.current
        note = ""
        if cur is not None:
            ans = s.answer(cur["item_id"])
            if ans and ans[0] == "skip":
                note = "you skipped this item before"
        elif not len(s.items):
            note = f"No items in {s.annotator}'s queue for {s.label_set!r}" + \
                (" (the label set has assignments: ask for some)." if s.assigned else ".")
        self.item.value = _item_html(cur, s.context_columns, note)
        for b in self.label_buttons + [self.skip_button, self.text_submit]:
            b.disabled = cur is None
        if self.mode == "text":
            self.text_area.value = self._draft(cur)

    def _draft(self, item: dict | None) -> str:
        if item is None:
            return ""
        ans = self.text_session.answer(item["item_id"])
        if ans and ans[0] == "label":
            return ans[1] or ""
        return self.prefill(item) if self.prefill else ""

    def _on_key(self, change) -> None:
        new = change["new"]
        if not new:
            return
        self.keys.value = ""  # ready for the next key; a key typed meanwhile arrives as the last character
        self._safe(self.press, new[-1])

    def _say(self, text: str, error: bool = False) -> None:
        color = "#cf222e" if error else "#1a7f37"
        self.message.value = f"<span class='wb-message' style='color:{color}'>{text}</span>"

    def _safe(self, fn, *args) -> None:
        """Run a UI action; show an error in the widget instead of losing it in the kernel log."""
        try:
            fn(*args)
            self.last_error = None
        except Exception as exc:  # noqa: BLE001 - shown to the user, re-raised nowhere
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._say(html.escape(self.last_error), error=True)
            traceback.print_exc()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)


class AdjudicationWidget:
    """Disagreements of a label set, one item at a time: each annotator's vote and a button per choice.

    Python API: ``decide(value)``, ``next()``; ``queue`` is the table of open disagreements.
    """

    def __init__(self, con, label_set: str = "intent", adjudicator: str | None = None, *,
                 pool: str = "label_pool"):
        self.con, self.label_set, self.pool = con, label_set, pool
        self.adjudicator = adjudicator or L.default_annotator()
        self.choices = L.label_set_choices(con, label_set) or []
        self.session_id = L.new_session_id("adj")
        self.header = W.HTML()
        self.item = W.HTML()
        self.votes = W.HTML()
        self.buttons = []
        for c in self.choices:
            b = W.Button(description=c, layout=W.Layout(width="auto"))
            b.on_click(lambda _b, c=c: self._safe(self.decide, c))
            self.buttons.append(b)
        self.next_button = W.Button(description="Next", icon="forward")
        self.next_button.on_click(lambda _b: self._safe(self.next))
        self.message = W.HTML()
        self.box = W.VBox([self.header, self.item, self.votes,
                           W.HBox(self.buttons + [self.next_button], layout=W.Layout(flex_flow="row wrap")),
                           self.message])
        self.box.add_class("wb-adjudication")
        self._pos = 0
        self.reload()

    def reload(self) -> None:
        self.queue = L.disagreements(self.con, self.label_set)
        self._pos = min(self._pos, max(len(self.queue) - 1, 0))
        self.render()

    @property
    def current(self) -> dict | None:
        return None if not len(self.queue) else self.queue.iloc[self._pos].to_dict()

    def decide(self, value: str) -> None:
        cur = self.current
        if cur is None:
            raise ValueError("no disagreement to adjudicate")
        L.adjudicate(self.con, self.label_set, cur["item_id"], value, self.adjudicator, session_id=self.session_id)
        self.message.value = f"<span style='color:#1a7f37'>decided <b>{html.escape(value)}</b> for " \
                             f"<code>{html.escape(cur['item_id'])}</code></span>"
        self.reload()

    def next(self) -> None:
        if len(self.queue):
            self._pos = (self._pos + 1) % len(self.queue)
        self.render()

    def render(self) -> None:
        cur = self.current
        self.header.value = (f"<h3 style='margin:4px 0'>Adjudicate <code>{html.escape(self.label_set)}</code>"
                             f" &middot; {len(self.queue)} open disagreement(s) &middot; "
                             f"{html.escape(self.adjudicator)}</h3>")
        for b in self.buttons + [self.next_button]:
            b.disabled = cur is None
        if cur is None:
            self.item.value = _item_html(None, [], "No open disagreements.")
            self.votes.value = ""
            return
        row = self.con.execute(f'select * from "{self.pool}" where item_id = ?', [cur["item_id"]]).df()
        item = row.iloc[0].to_dict() if len(row) else {"item_id": cur["item_id"], "text": "(not in the pool)"}
        self.item.value = _item_html(item, [c for c in item if c not in ("item_id", "text")])
        self.votes.value = "<br>".join(f"<b>{html.escape(v)}</b>: {html.escape(', '.join(a))}"
                                       for v, a in sorted(cur["votes"].items(), key=lambda kv: -len(kv[1])))

    def _safe(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.message.value = f"<span style='color:#cf222e'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)
