"""The headless pipeline: execute ``notebooks/NN_*.ipynb`` in order with papermill.

    workbench run                                  # every default step on the bundled sample data
    workbench run -p sample_rows 20000 --only 02   # one step, a parameter overridden

    workbench run --resume last                    # the last run's failed and remaining steps, same parameters

Each notebook gets only the parameters its ``parameters`` cell declares (an unknown ``-p`` name is
an error before anything runs); executed copies land in ``<workspace>/runs/<run_id>/``; the first
failing notebook stops the run with its name and error. Every run is recorded in the workspace
(``pipeline_runs``, ``pipeline_steps``), and training runs started by its notebooks carry its id
(``runs.pipeline_run_id``).
"""
from __future__ import annotations

import ast
import datetime as dt
import json
import os
import secrets
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .runs import PIPELINE_RUN_ENV
from .workspace import connect, home, transaction

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# Steps left out of a default run (run them with --only or --with): too slow for the default budget.
OPTIONAL_STEPS: set[str] = {"12_tune_hyperparameters"}


# the environment variable a pipeline run sets for its kernels: runs.start_run records it
RUN_ENV = PIPELINE_RUN_ENV

_DDL = """
create table if not exists pipeline_runs (
    pipeline_run_id varchar,  -- '<UTC yyyymmddThhmmss>-<6 hex>': the folder <workspace>/runs/<id>/
    started_at timestamp,
    finished_at timestamp,
    status varchar,           -- running | completed | failed | interrupted (runs.RUN_STATUSES)
    steps varchar[],          -- the steps this run was to execute, in order
    params_json varchar,      -- the -p values as given (text), a JSON object
    resumed_from varchar,     -- the pipeline run this one resumed (workbench run --resume), else null
    failed_step varchar,
    error varchar,
    output_dir varchar,       -- the executed notebooks
    host varchar,
    pid integer
);
create table if not exists pipeline_steps (
    pipeline_run_id varchar,
    position integer,         -- 1, 2, ... in the run's order
    step varchar,             -- notebook name, e.g. '02_clean_dedup'
    status varchar,           -- running | completed | failed | interrupted
    started_at timestamp,
    finished_at timestamp,
    seconds double,
    parameters_json varchar,  -- the values the notebook got (converted to its types), a JSON object
    executed_notebook varchar,
    error varchar
);
"""


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it and the error."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _record(root: Path, sql: str, args: list, what: str) -> None:
    """One write to the run history, on a connection of its own (the kernels hold theirs)."""
    con = connect(root)
    try:
        transaction(con, lambda c: (c.execute(_DDL), c.execute(sql, args)), what=what)
    finally:
        con.close()


@dataclass
class Step:
    name: str          # file stem, e.g. '02_clean_dedup'
    path: Path
    parameters: dict[str, Any]   # declared parameters and their defaults

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The names and default values assigned in the cell tagged ``parameters``."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            out: dict[str, Any] = {}
            for node in ast.parse(src).body:
                target = None
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    target, value = node.target, node.value
                if isinstance(target, ast.Name):
                    out[target.id] = ast.literal_eval(value)
            return out
    raise PipelineError(f"{path.name}: no cell tagged 'parameters'")


def steps(notebook_dir: Path = NOTEBOOK_DIR) -> list[Step]:
    return [Step(p.stem, p, notebook_parameters(p))
            for p in sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))]


def coerce(value: str, default: Any) -> Any:
    """A ``-p NAME VALUE`` string as the type of the parameter's default."""
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, (list, dict)):
        return json.loads(value)
    return value


# Value rules by parameter name, checked for every chosen step before the first notebook starts (a bad
# value would otherwise fail only when its step runs, maybe an hour into the run).
AT_LEAST_ONE = ("_rows", "_epochs", "_batch_size", "max_length", "_rounds", "_trials", "queue_size", "overlap_k")
POSITIVE = ("_lr", "_learning_rate", "_seconds")
UNIT_INTERVAL = ("_fraction", "_noise")


def check_values(step: Step, values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first parameter whose value the step would refuse."""
    from .data import ENGINES, check_split_params

    def bad(name: str, need: str) -> ValueError:
        return ValueError(f"parameter {name} of {step.name} is {values[name]!r}: {need}")

    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            continue
        if name == "engine" and v not in ENGINES:
            raise bad(name, f"use one of {', '.join(ENGINES)}")
        if isinstance(v, str):
            continue
        if name.endswith(AT_LEAST_ONE) and v < 1:
            raise bad(name, "need at least 1")
        if name.endswith(POSITIVE) and not v > 0:
            raise bad(name, "need a number above 0")
        if name.endswith(UNIT_INTERVAL) and not 0 <= v <= 1:
            raise bad(name, "need a value from 0 to 1")
        if isinstance(v, int) and not name.endswith("seed") and v < 0:
            raise bad(name, "need 0 or more")
    if "min_chars" in values and "max_chars" in values and values["min_chars"] > values["max_chars"]:
        raise bad("min_chars", f"more than max_chars {values['max_chars']}")
    if "train_fraction" in values:
        try:
            check_split_params(**{k: values[k] for k in ("train_fraction", "validation_fraction", "group_key",
                                                         "stratify") if k in values})
        except ValueError as exc:
            raise ValueError(f"{step.name}: {exc}") from None


def select(all_steps: list[Step], only: list[str] | None, with_: list[str] | None) -> list[Step]:
    def match(step: Step, key: str) -> bool:
        return step.name == key or step.number == key or step.name.startswith(key)

    if only:
        chosen = [s for s in all_steps if any(match(s, k) for k in only)]
        missing = [k for k in only if not any(match(s, k) for s in all_steps)]
    else:
        chosen = [s for s in all_steps
                  if s.name not in OPTIONAL_STEPS or any(match(s, k) for k in (with_ or []))]
        missing = [k for k in (with_ or []) if not any(match(s, k) for s in all_steps)]
    if missing:
        raise PipelineError(f"no notebook step matches {', '.join(missing)}; steps: "
                            + ", ".join(s.name for s in all_steps))
    return chosen


def _alive(host: str | None, pid: int | None) -> bool:
    if host != socket.gethostname() or not pid:
        return False  # another machine's process cannot be checked from here: its row says 'running'
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resume_plan(root: Path, which: str, all_steps: list[Step]) -> tuple[str, dict[str, str], list[Step]]:
    """The pipeline run to resume (``which``: its id, or ``last``), its parameters, and its steps that
    did not complete, in order."""
    con = connect(root)
    try:
        con.execute(_DDL)
        if which == "last":
            row = con.execute("select pipeline_run_id from pipeline_runs order by started_at desc limit 1").fetchone()
            if row is None:
                raise PipelineError(f"--resume last: no pipeline run is recorded in {root}")
            which = row[0]
        row = con.execute("select status, steps, params_json, host, pid from pipeline_runs "
                          "where pipeline_run_id = ?", [which]).fetchone()
        if row is None:
            raise PipelineError(f"--resume {which}: no such pipeline run in {root} "
                                "(workbench sql \"select * from pipeline_runs\")")
        status, names, params_json, host, pid = row
        if status == "completed":
            raise PipelineError(f"--resume {which}: that run completed; nothing to resume")
        if status == "running" and _alive(host, pid):
            raise PipelineError(f"--resume {which}: that run is still running (pid {pid} on {host})")
        done = {r[0] for r in con.execute("select step from pipeline_steps where pipeline_run_id = ? "
                                          "and status = 'completed'", [which]).fetchall()}
    finally:
        con.close()
    by_name = {s.name: s for s in all_steps}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise PipelineError(f"--resume {which}: its step(s) {', '.join(missing)} are no longer in the notebooks folder")
    return which, json.loads(params_json), [by_name[n] for n in names if n not in done]


def run(params: Mapping[str, str] | None = None, *, only: list[str] | None = None,
        with_: list[str] | None = None, workspace: str | os.PathLike | None = None,
        notebook_dir: Path = NOTEBOOK_DIR, log_output: bool = False, progress=print,
        resume: str | None = None) -> Path:
    """Execute the pipeline; returns the folder holding the executed notebooks.

    ``resume``: a recorded pipeline run's id (or ``last``, the latest one): run its steps that did not
    complete, with its parameters (``params`` override them), as a new pipeline run."""
    import papermill as pm

    all_steps = steps(notebook_dir)
    raw = dict(params or {})
    # -p workspace DIR is the same as --workspace DIR (every notebook's workspace parameter is this folder)
    given = raw.pop("workspace", None)
    if given and workspace and Path(given).resolve() != Path(workspace).resolve():
        raise PipelineError(f"-p workspace {given!r} and --workspace {str(workspace)!r} name different folders")
    root = home(workspace or given or None)
    resumed_from = None
    if resume:
        if only or with_:
            raise PipelineError("--resume runs the steps the resumed run left; it takes no --only / --with")
        resumed_from, before, chosen = _resume_plan(root, resume, all_steps)
        raw = {**before, **raw}
        if not chosen:
            raise PipelineError(f"--resume {resumed_from}: every step of it completed; nothing to resume")
    else:
        chosen = select(all_steps, only, with_)
    declared = {k for s in all_steps for k in s.parameters}
    unknown = sorted(set(raw) - declared)
    if unknown:
        raise PipelineError(f"unknown parameter(s) {', '.join(unknown)}; notebooks declare: "
                            + ", ".join(sorted(declared)))
    # Every value is converted for every chosen step first: a wrong type fails before anything runs.
    per_step = []
    for step in chosen:
        mine = {}
        for k, v in raw.items():
            if k in step.parameters:
                try:
                    mine[k] = coerce(v, step.parameters[k]) if isinstance(v, str) else v
                except ValueError as exc:
                    kind = type(step.parameters[k]).__name__
                    raise PipelineError(f"parameter {k} of {step.name} (a {kind}, default "
                                        f"{step.parameters[k]!r}): {exc}") from None
        try:
            check_values(step, {**step.parameters, **mine})
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
        if "workspace" in step.parameters:
            mine["workspace"] = str(root)
        per_step.append((step, mine))
    unused = sorted(k for k in raw if not any(k in step.parameters for step in chosen))
    if unused:  # declared by steps not in this run: say so rather than drop them silently
        progress(f"note: no step of this run declares {', '.join(unused)}; ignored")
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    out_dir = root / "runs" / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    _record(root, "insert into pipeline_runs (pipeline_run_id, started_at, status, steps, params_json, "
            "resumed_from, output_dir, host, pid) values (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
            [run_id, _now(), [s.name for s, _ in per_step], json.dumps(raw, sort_keys=True), resumed_from,
             str(out_dir), socket.gethostname(), os.getpid()], "recording a pipeline run")
    if resumed_from:
        progress(f"resuming {resumed_from} as {run_id}: {', '.join(s.name for s, _ in per_step)}")
    else:
        progress(f"pipeline run {run_id}: {len(per_step)} step(s), executed copies in {out_dir}")
    os.environ["WORKBENCH_HOME"] = str(root)  # kernels inherit it: workbench.connect() finds the workspace
    restore_term = _on_sigterm()
    saved_env = os.environ.get(RUN_ENV)
    os.environ[RUN_ENV] = run_id  # kernels inherit it: their training runs record it
    status, failed_step, error = "running", None, None
    try:
        for position, (step, mine) in enumerate(per_step, 1):
            progress(f"[{step.name}] running" + (f" with {mine}" if mine else ""))
            started = _now()
            executed = out_dir / step.path.name
            _record(root, "insert into pipeline_steps (pipeline_run_id, position, step, status, started_at, "
                    "parameters_json, executed_notebook) values (?, ?, ?, 'running', ?, ?, ?)",
                    [run_id, position, step.name, started, json.dumps(mine, sort_keys=True, default=str),
                     str(executed)], "recording a pipeline step")
            try:
                _execute(pm, step, mine, executed, log_output)
            except BaseException as exc:
                status = "failed" if isinstance(exc, Exception) else "interrupted"  # Ctrl-C, SystemExit
                failed_step, error = step.name, str(exc) or type(exc).__name__
                _finish_step(root, run_id, step.name, started, status, error)
                if isinstance(exc, PipelineError):
                    raise PipelineError(f"{exc}\npipeline run {run_id} {status}; after a fix: "
                                        f"workbench run --resume {run_id}") from None
                raise
            _finish_step(root, run_id, step.name, started, "completed", None)
            progress(f"[{step.name}] done in {(_now() - started).total_seconds():.1f}s")
        status = "completed"
    finally:
        restore_term()
        if saved_env is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = saved_env
        if status == "running":  # an error outside a step (e.g. recording it): the run ends failed
            status = "failed"
        try:
            _record(root, "update pipeline_runs set status = ?, finished_at = ?, failed_step = ?, error = ? "
                    "where pipeline_run_id = ?", [status, _now(), failed_step, error, run_id],
                    "finishing a pipeline run")
        except Exception as exc:  # never hide the step's own error behind the history's
            progress(f"note: could not record the end of pipeline run {run_id}: {exc}")
    return out_dir


def _kernel_manager_class():
    """The kernels talk to this process over Unix sockets on POSIX (jupyter_client's ``ipc``
    transport), not TCP ports on localhost: no port another user of the machine can reach, and no
    "Kernel is running over TCP without encryption" warning printed by every step."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc" if os.name == "posix" else "tcp"

    return IPCKernelManager


def _on_sigterm():
    """A scheduler stops a job with SIGTERM, which by default ends Python at once (no ``finally``:
    the run would stay 'running' and the notebook's kernel be left behind). During a run it raises
    SystemExit(143) instead: the step and the run are recorded as interrupted, papermill shuts the
    kernel down. Returns the function that puts the previous handler back (off the main thread no
    handler can be set: nothing is changed)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _execute(pm, step: Step, mine: dict[str, Any], executed: Path, log_output: bool) -> None:
    try:
        pm.execute_notebook(str(step.path), str(executed), parameters=mine, cwd=str(step.path.parent),
                            log_output=log_output, progress_bar=False, kernel_name="python3",
                            kernel_manager_class=_kernel_manager_class())
    except pm.PapermillExecutionError as exc:
        why = str(exc.evalue).strip() or _cell_output(executed, exc.exec_count)
        raise PipelineError(f"{step.name} failed at cell {exc.exec_count}: {exc.ename}: {why}\n"
                            f"executed copy: {executed}") from None
    except Exception as exc:  # the kernel died (memory, os._exit), a cell timed out, ...
        raise PipelineError(f"{step.name} failed: {type(exc).__name__}: {str(exc).strip()}\n"
                            f"executed copy: {executed}") from exc


def _finish_step(root: Path, run_id: str, name: str, started: dt.datetime, status: str, error: str | None) -> None:
    end = _now()
    try:
        _record(root, "update pipeline_steps set status = ?, finished_at = ?, seconds = ?, error = ? "
                "where pipeline_run_id = ? and step = ?",
                [status, end, (end - started).total_seconds(), error, run_id, name], "recording a pipeline step")
    except Exception:
        if status == "completed":
            raise
        # a failed or interrupted step: its own error is the one to report


def _cell_output(path: Path, exec_count: int, lines: int = 8) -> str:
    """The last lines a failed cell printed: the reason when the exception itself says nothing (a
    ``%%sql`` cell prints the database's error and raises an empty ``CellExecutionError``)."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return ""
    for cell in cells:
        if cell.get("execution_count") == exec_count:
            text = "".join("".join(o.get("text", "")) if isinstance(o.get("text"), (str, list)) else ""
                           for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            noise = ("jupysql.ploomber.io", "If using snippets, you may pass")  # jupysql's generic hints
            kept = [ln for ln in text.splitlines() if ln.strip() and not any(n in ln for n in noise)]
            return "\n".join(kept[-lines:])
    return ""
