"""The flow builder: an ipywidgets form to assemble a data flow without typing code.

    builder = FlowBuilder(conn); builder          # in a notebook cell: pick a source, add steps, preview

Pick a source table (or a file), add steps from the menu, reorder or remove them, fill each step's
form (built from the step's fields in ``flow_steps.STEPS``), then Preview (row counts after every
step and the first rows after the selected one), Save (``flows/<name>.yaml``), Export SQL
(``sql/<file>.sql``) or Run (writes the output table and the row accounting). Preview and Run use
the engine shown under the buttons: DuckDB, or Apache Spark for a flow meant for it
(``FlowBuilder(conn, engine="spark", spark_master="local[2]")`` or ``spark_remote="sc://host:15002"``,
the names of ``workbench flow run`` and notebook 11; the engine menu switches). Everything the
buttons do is plain Python on the builder (``builder.flow()``, ``builder.preview()``), and tests
drive it by setting widget values and calling ``button.click()``.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import duckdb
import ipywidgets as w
import yaml

from .flow_steps import STEPS, Field
from .flows import ENGINES, FLOW_DIR, Flow, FlowError, compile_sql, load_flow, preview, run_flow, save_flow, validate
from .spark import SparkError
from .workspace import ALIAS, SQL_DIR

FILE_SOURCE = "(file)"


def _tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute("select table_name from duckdb_tables() where database_name = ? union "
                       "select view_name from duckdb_views() where database_name = ? order by 1",
                       [ALIAS, ALIAS]).fetchall()
    return [r[0] for r in rows if not r[0].startswith("_")]


class FlowBuilder:
    """Widgets and their callbacks; ``widget`` is the VBox to display."""

    def __init__(self, con: duckdb.DuckDBPyConnection, flow: Flow | str | Path | None = None, *,
                 flow_dir: str | Path = FLOW_DIR, sql_dir: str | Path = SQL_DIR, preview_rows: int = 5,
                 engine: str = "duckdb", spark_master: str = "", spark_remote: str = ""):
        if engine not in ENGINES:
            raise FlowError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
        self.con, self.flow_dir, self.sql_dir, self.preview_rows = con, Path(flow_dir), Path(sql_dir), preview_rows
        # engine "spark": where Preview and Run start (or find) the session, as `workbench flow run` takes them
        self.spark_master, self.spark_remote = spark_master, spark_remote   # "": $SPARK_REMOTE, else the
        # running session, else $WORKBENCH_SPARK_MASTER or local[*] (workbench.spark.session)
        self.steps: list[dict[str, Any]] = []
        self.fields: dict[str, w.Widget] = {}   # the selected step's form, by field name
        self.last_preview = None                # list[StepResult] of the last Preview
        self._quiet = False                     # True while widgets are filled programmatically

        def lay() -> w.Layout:  # one Layout per widget: hiding one (display='none') must not hide the others
            return w.Layout(width="420px")

        self.name = w.Text(value="my_flow", description="flow name", layout=lay())
        self.source = w.Dropdown(options=_tables(con) + [FILE_SOURCE], description="source", layout=lay())
        self.source_file = w.Text(description="file", placeholder="data/sample/messages.csv", layout=lay())
        self.output = w.Text(description="output table", placeholder="flow_<name>", layout=lay())
        self.key = w.Dropdown(options=[""], description="row key", layout=lay())
        self.load_menu = w.Dropdown(options=self._flow_files(), description="open flow", layout=lay())
        self.load_button = w.Button(description="Open", icon="folder-open")
        self.step_menu = w.Dropdown(options=[(s.label, s.name) for s in STEPS.values()], description="step",
                                    layout=lay())
        self.add_button = w.Button(description="Add step", icon="plus", button_style="primary")
        self.steps_list = w.Select(options=[], rows=10, description="steps", layout=w.Layout(width="420px"))
        self.up_button = w.Button(description="Up", icon="arrow-up")
        self.down_button = w.Button(description="Down", icon="arrow-down")
        self.remove_button = w.Button(description="Remove", icon="trash", button_style="danger")
        self.form = w.VBox([])
        self.form_title = w.HTML()
        self.preview_button = w.Button(description="Preview", icon="eye", button_style="info")
        self.save_button = w.Button(description="Save flow", icon="save")
        self.sql_file = w.Text(description="SQL file", placeholder="11_flow_<name>.sql", layout=lay())
        self.export_button = w.Button(description="Export SQL", icon="file-code-o")
        self.run_button = w.Button(description="Run", icon="play", button_style="success")
        self.engine = w.Dropdown(options=[("DuckDB", "duckdb"), ("Spark", "spark")], value=engine,
                                 description="engine", layout=lay())
        self.engine_info = w.HTML()
        self.status = w.HTML()
        self.counts = w.HTML()
        self.rows = w.HTML()

        self.add_button.on_click(lambda _: self.add_step(self.step_menu.value))
        self.remove_button.on_click(lambda _: self.remove_step())
        self.up_button.on_click(lambda _: self.move_step(-1))
        self.down_button.on_click(lambda _: self.move_step(+1))
        self.preview_button.on_click(lambda _: self._guard(self.preview))
        self.save_button.on_click(lambda _: self._guard(self.save))
        self.export_button.on_click(lambda _: self._guard(self.export_sql))
        self.run_button.on_click(lambda _: self._guard(self.run))
        self.load_button.on_click(lambda _: self._guard(lambda: self.load(self.load_menu.value)
                                                        if self.load_menu.value else None))
        self.steps_list.observe(lambda ch: self._show_form(), names="value")
        self.source.observe(lambda ch: self._source_changed(), names="value")
        self.source_file.observe(lambda ch: self._source_changed(), names="value")
        self.engine.observe(lambda ch: self._show_engine(), names="value")

        self.widget = w.VBox([
            w.HBox([self.load_menu, self.load_button]),
            self.name, w.HBox([self.source, self.source_file]), self.output, self.key,
            w.HBox([self.step_menu, self.add_button]),
            w.HBox([self.steps_list, w.VBox([self.up_button, self.down_button, self.remove_button])]),
            self.form_title, self.form,
            w.HBox([self.preview_button, self.save_button, self.sql_file, self.export_button, self.run_button]),
            w.HBox([self.engine, self.engine_info]),
            self.status, self.counts, self.rows,
        ])
        self._source_changed()
        self._show_engine()
        if flow is not None:
            self.load(flow)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ the flow as data

    def _flow_files(self) -> list[str]:
        return sorted(p.name for p in self.flow_dir.glob("*.yaml")) if self.flow_dir.exists() else []

    def flow(self) -> Flow:
        """The flow the widgets describe."""
        src = {"table": self.source.value} if self.source.value != FILE_SOURCE else {"file": self.source_file.value}
        return Flow(name=self.name.value.strip() or "my_flow", source=src, steps=[dict(s) for s in self.steps],
                    output=self.output.value.strip() or None, key=self.key.value or None,
                    path=self.flow_dir / f"{self.name.value.strip() or 'my_flow'}.yaml")

    def load(self, flow: Flow | str | Path) -> None:
        if not isinstance(flow, Flow):
            flow = load_flow(flow if Path(str(flow)).exists() else self.flow_dir / str(flow))
        self.steps = [dict(s) for s in flow.steps]
        self._refresh_list(None)
        self._quiet = True
        try:
            self.name.value = flow.name
            if "table" in flow.source:
                if flow.source["table"] not in self.source.options:
                    self.source.options = list(self.source.options[:-1]) + [flow.source["table"], FILE_SOURCE]
                self.source.value = flow.source["table"]
            else:
                self.source.value, self.source_file.value = FILE_SOURCE, flow.source["file"]
            self.output.value = flow.output or ""
        finally:
            self._quiet = False
        self._source_changed()
        self.key.value = flow.key if flow.key in self.key.options else ""
        self._refresh_list(0 if self.steps else None)
        self._say(f"opened flow {flow.name} ({len(self.steps)} steps)")

    def _columns_before(self, index: int) -> list[str]:
        """Column names flowing into step ``index`` (0-based); the source's when an earlier step is invalid."""
        f = self.flow()
        try:
            from .flows import source_columns

            cols = source_columns(self.con, f)
        except FlowError:
            return []
        if index == 0:
            return cols
        f.steps = f.steps[:index]
        try:
            return validate(f, cols)[-1].compiled.columns
        except FlowError:
            return cols

    # ------------------------------------------------------------------ step list

    def add_step(self, kind: str) -> None:
        spec = STEPS[kind]
        step: dict[str, Any] = {"step": kind}
        cols = self._columns_before(len(self.steps))
        for f in spec.fields:  # preselect a plausible column so a new step is valid at once
            if f.required and f.kind in ("column", "columns") and cols:
                guess = next((c for c in ("text", "intent", "source_row_id") if c in cols), cols[0])
                if f.name == "key":
                    keys = [c for c in ("source_row_id", "example_id", "id") if c in cols] + cols
                    guess = self.key.value or keys[0]
                if f.name == "label":
                    guess = next((c for c in ("intent", "label") if c in cols), cols[0])
                step[f.name] = guess if f.kind == "column" else [guess]
        self.steps.append(step)
        self._refresh_list(len(self.steps) - 1)

    def remove_step(self) -> None:
        i = self.selected
        if i is None:
            return
        del self.steps[i]
        self._refresh_list(min(i, len(self.steps) - 1) if self.steps else None)

    def move_step(self, delta: int) -> None:
        i = self.selected
        if i is None or not 0 <= i + delta < len(self.steps):
            return
        self.steps[i], self.steps[i + delta] = self.steps[i + delta], self.steps[i]
        self._refresh_list(i + delta)

    @property
    def selected(self) -> int | None:
        return self.steps_list.value

    def _refresh_list(self, select: int | None) -> None:
        self._quiet = True
        self.steps_list.options = [(f"{i + 1}. {STEPS[s['step']].label}", i) for i, s in enumerate(self.steps)]
        self.steps_list.value = select
        self._quiet = False
        self._show_form()

    # ------------------------------------------------------------------ the selected step's form

    def _show_form(self) -> None:
        i = self.selected
        self.fields = {}
        if i is None or i >= len(self.steps):
            self.form.children, self.form_title.value = [], ""
            return
        step, spec = self.steps[i], STEPS[self.steps[i]["step"]]
        cols = self._columns_before(i)
        self.form_title.value = f"<b>step {i + 1}: {html.escape(spec.label)}</b> — {html.escape(spec.doc)}"
        rows = []
        for f in spec.fields:
            widget = self._field_widget(f, step.get(f.name, f.default), cols)
            widget.observe(lambda ch, f=f, i=i: self._field_changed(i, f, ch["new"]), names="value")
            self.fields[f.name] = widget
            rows.append(w.HBox([widget, w.HTML(f"<small>{html.escape(f.help)}</small>")]) if f.help else widget)
        self.form.children = rows

    @staticmethod
    def _field_widget(f: Field, value: Any, cols: list[str]) -> w.Widget:
        desc = f.name + (" *" if f.required else "")
        style = {"description_width": "140px"}

        def lay() -> w.Layout:
            return w.Layout(width="420px")
        if f.kind == "column":
            opts = [""] + cols + ([value] if value and value not in cols else [])
            return w.Dropdown(options=opts, value=value or "", description=desc, style=style, layout=lay())
        if f.kind == "columns":
            vals = [value] if isinstance(value, str) else list(value or [])
            return w.SelectMultiple(options=cols + [v for v in vals if v not in cols], value=tuple(vals),
                                    description=desc, style=style, layout=lay(), rows=min(6, max(len(cols), 2)))
        if f.kind == "bool":
            return w.Checkbox(value=bool(value), description=desc, style=style, indent=False)
        if f.kind == "choice":
            return w.Dropdown(options=list(f.choices), value=value, description=desc, style=style, layout=lay())
        if f.kind == "int" and value is not None:
            return w.IntText(value=value, description=desc, style=style, layout=lay())
        if f.kind == "float" and value is not None:
            return w.FloatText(value=value, description=desc, style=style, layout=lay())
        if f.kind in ("mapping", "rename", "casts"):
            text = "\n".join(f"{k}: {'null' if v is None else v}" for k, v in (value or {}).items())
            return w.Textarea(value=text, description=desc, placeholder="old: new (one per line; null: no value)",
                              style=style,
                              layout=w.Layout(width="420px", height="90px"))
        if f.kind == "template":
            return w.Textarea(value=value or "", description=desc, style=style,
                              layout=w.Layout(width="620px", height="80px"))
        return w.Text(value="" if value is None else str(value), description=desc, style=style, layout=lay(),
                      placeholder="(empty)" if f.kind in ("int", "float", "target") else "")

    def _field_changed(self, i: int, f: Field, new: Any) -> None:
        if self._quiet or i >= len(self.steps):
            return
        try:
            value = self._parse(f, new)
        except ValueError as exc:
            self._say(f"step {i + 1}, field {f.name!r}: {exc}", error=True)
            return
        step = self.steps[i]
        if value is None or value == f.default or value in ("", [], {}):
            step.pop(f.name, None)
        else:
            step[f.name] = value
        self._say("")  # later steps' column menus are rebuilt when they are selected

    @staticmethod
    def _parse(f: Field, new: Any) -> Any:
        if f.kind == "columns":
            return list(new)
        if f.kind in ("mapping", "rename", "casts"):
            if not new.strip():
                return {}
            d = yaml.safe_load(new)
            if not isinstance(d, dict):
                raise ValueError("write one 'old: new' pair per line")
            return {str(k): (None if v is None else str(v)) for k, v in d.items()}
        if f.kind in ("int", "float", "target") and isinstance(new, str):
            s = new.strip()
            if not s:
                return None
            if f.kind == "target" and s in ("min", "max"):
                return s
            try:
                return int(s) if f.kind in ("int", "target") else float(s)
            except ValueError:
                raise ValueError(f"{s!r} is not a number") from None
        return new

    # ------------------------------------------------------------------ source

    def _source_changed(self) -> None:
        if self._quiet:
            return
        self.source_file.layout.display = "" if self.source.value == FILE_SOURCE else "none"
        cols = self._columns_before(0)
        keep = self.key.value if self.key.value in cols else ""
        self.key.options = [""] + cols
        self.key.value = keep or next((c for c in ("source_row_id", "example_id") if c in cols), "")
        self._show_form()

    # ------------------------------------------------------------------ actions

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#1b5e20"
        self.status.value = f"<span style='color:{color}'>{html.escape(text, quote=False)}</span>" if text else ""

    def _guard(self, action) -> None:
        try:
            action()
        except (FlowError, SparkError, ValueError, FileNotFoundError, duckdb.Error) as exc:
            self._say(str(exc), error=True)

    @property
    def engine_target(self) -> str:
        """Where Preview and Run execute, in words: ``DuckDB``, ``Spark local[2]``, ``Spark Connect sc://...``."""
        if self.engine.value == "duckdb":
            return "DuckDB"
        if self.spark_remote:
            return f"Spark Connect {self.spark_remote}"
        if self.spark_master:
            return f"Spark {self.spark_master}"
        return "Spark (the running session, else $SPARK_REMOTE, $WORKBENCH_SPARK_MASTER or local[*])"

    def _show_engine(self) -> None:
        self.engine_info.value = f"Preview and Run use <b>{html.escape(self.engine_target)}</b>"

    def _spark(self):
        """The Spark session of engine "spark" (started on first use), else None."""
        if self.engine.value != "spark":
            return None
        from .spark import session

        return session(master=self.spark_master or None, remote=self.spark_remote or None)

    def preview(self):
        """Row counts after every step, and the first rows after the selected step (or the last)."""
        results = preview(self.con, self.flow(), limit=self.preview_rows, engine=self.engine.value,
                          spark=self._spark())
        self.last_preview = results
        rows = "".join(f"<tr><td>{r.index}</td><td>{html.escape(r.kind)}</td><td>{r.rows_in:,}</td>"
                       f"<td>{r.rows_out:,}</td><td>{r.removed:,}</td><td>{html.escape(r.reason or '')}</td></tr>"
                       for r in results)
        self.counts.value = ("<table><tr><th>#</th><th>step</th><th>rows in</th><th>rows out</th><th>removed</th>"
                             f"<th>why rows left</th></tr>{rows}</table>")
        at = results[min(self.selected + 1, len(results) - 1)] if self.selected is not None else results[-1]
        self.rows.value = (f"<b>first rows after {'the source' if at.index == 0 else f'step {at.index} ({at.kind})'}"
                           f"</b>" + at.head.to_html(index=False, max_cols=12))
        self._say(f"preview on {self.engine_target}: {results[0].rows_out:,} rows in, "
                  f"{results[-1].rows_out:,} rows out")
        return results

    def save(self) -> Path:
        flow = self.flow()
        validate(flow, self.con)
        path = save_flow(flow, self.flow_dir / f"{flow.name}.yaml")
        self.load_menu.options = self._flow_files()
        self.load_menu.value = path.name
        self._say(f"saved {path}")
        return path

    def export_sql(self) -> Path:
        flow = self.flow()
        sql = compile_sql(flow, self.con)
        name = self.sql_file.value.strip() or f"11_flow_{flow.name}.sql"
        path = Path(name) if Path(name).is_absolute() else self.sql_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql)
        self._say(f"wrote {path}")
        return path

    def run(self):
        res = run_flow(self.con, self.flow(), engine=self.engine.value, spark=self._spark())
        self.last_preview = res.steps
        self._say(f"run {res.run_id} on {self.engine_target}: wrote {res.output} ({res.steps[-1].rows_out:,} rows)")
        return res
