"""The headless pipeline: execute ``notebooks/NN_*.ipynb`` in order with papermill.

    workbench run                                  # every default step on the bundled sample data
    workbench run -p sample_rows 20000 --only 02   # one step, a parameter overridden

Each notebook gets only the parameters its ``parameters`` cell declares (an unknown ``-p`` name is
an error before anything runs); executed copies land in ``<workspace>/runs/<run_id>/``; the first
failing notebook stops the run with its name and error.
"""
from __future__ import annotations

import ast
import datetime as dt
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .workspace import home

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# Steps left out of a default run (run them with --only or --with): too slow for the default budget.
OPTIONAL_STEPS: set[str] = {"12_tune_hyperparameters"}


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it and the error."""


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


def run(params: Mapping[str, str] | None = None, *, only: list[str] | None = None,
        with_: list[str] | None = None, workspace: str | os.PathLike | None = None,
        notebook_dir: Path = NOTEBOOK_DIR, log_output: bool = False, progress=print) -> Path:
    """Execute the pipeline; returns the folder holding the executed notebooks."""
    import papermill as pm

    all_steps = steps(notebook_dir)
    chosen = select(all_steps, only, with_)
    raw = dict(params or {})
    declared = {k for s in all_steps for k in s.parameters}
    unknown = sorted(set(raw) - declared)
    if unknown:
        raise PipelineError(f"unknown parameter(s) {', '.join(unknown)}; notebooks declare: "
                            + ", ".join(sorted(declared)))
    root = home(workspace)
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
        if "workspace" in step.parameters:
            mine["workspace"] = str(root)
        per_step.append((step, mine))
    unused = sorted(k for k in raw if not any(k in step.parameters for step in chosen))
    if unused:  # declared by steps not in this run: say so rather than drop them silently
        progress(f"note: no step of this run declares {', '.join(unused)}; ignored")
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    out_dir = root / "runs" / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WORKBENCH_HOME"] = str(root)  # kernels inherit it: workbench.connect() finds the workspace
    for step, mine in per_step:
        progress(f"[{step.name}] running" + (f" with {mine}" if mine else ""))
        started = dt.datetime.now()
        try:
            pm.execute_notebook(str(step.path), str(out_dir / step.path.name), parameters=mine,
                                cwd=str(step.path.parent), log_output=log_output, progress_bar=False,
                                kernel_name="python3")
        except pm.PapermillExecutionError as exc:
            raise PipelineError(f"{step.name} failed at cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                                f"executed copy: {out_dir / step.path.name}") from None
        except Exception as exc:  # the kernel died (memory, os._exit), a cell timed out, ...
            raise PipelineError(f"{step.name} failed: {type(exc).__name__}: {str(exc).strip()}\n"
                                f"executed copy: {out_dir / step.path.name}") from exc
        progress(f"[{step.name}] done in {(dt.datetime.now() - started).total_seconds():.1f}s")
    return out_dir
