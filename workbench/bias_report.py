"""Bias reports people read: findings as sentences, figures, a self-contained HTML file, and tables.

    workbench bias report --table examples --group age_band --group region --label intent --strata channel
    workbench bias model --run-id <run_id> --group age_band

``data_bias_report`` (notebook 04) covers representation, pre-training label bias and labeling
bias; ``model_bias_report`` (notebook 10) covers a run's test predictions with Fairlearn. Both
write every number to ``bias_metrics(report_id, scope, facet, metric, label, value, ci_low,
ci_high)``, one row per report to ``bias_reports``, and the HTML report to
``<workspace>/reports/bias_<report_id>.html`` (figures embedded as base64 PNG).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html as html_lib
import io
import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd

from . import bias
from .bias import BiasConfig
from .workspace import WorkspaceError, snapshot_id, table_exists, transaction, workspace_root

SCOPES = ("representation", "label", "labeling", "model")

_DDL = """
create table if not exists bias_metrics (
    report_id varchar,   -- bias_reports.report_id
    scope varchar,       -- representation | label | labeling | model
    facet varchar,       -- 'age_band=65+', 'age_band=65+ & region=north', '(all)', or a column for between-group values
    metric varchar,      -- 'share', 'DPL', 'KL', 'accuracy', 'demographic_parity_difference', ...
    label varchar,       -- label value (one-vs-rest), or null for the whole distribution
    value double,        -- may be +inf (KL with a label the facet lacks)
    ci_low double,
    ci_high double
);
create table if not exists bias_reports (
    report_id varchar,
    created_at timestamp,
    kind varchar,         -- 'data' | 'model'
    source_table varchar,
    run_id varchar,
    group_cols varchar,   -- comma-separated
    label_col varchar,
    strata_col varchar,
    n_rows bigint,
    data_snapshot bigint, -- DuckLake snapshot the report read
    html_path varchar,
    n_findings bigint,
    n_warnings bigint,
    config_json varchar
);
"""


@dataclass
class Finding:
    scope: str            # representation | label | labeling | model
    facet: str
    metric: str
    label: str | None
    value: float | None
    severity: str         # 'warning' (a threshold was crossed) | 'info'
    message: str          # one sentence a person reads


@dataclass
class BiasReport:
    report_id: str
    kind: str                                   # 'data' | 'model'
    source_table: str
    created_at: dt.datetime
    metrics: pd.DataFrame                       # bias_metrics rows of this report
    findings: list[Finding]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    notes: list[str] = field(default_factory=list)          # what was skipped, and why
    run_id: str | None = None
    html_path: Path | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def sentences(self, scope: str | None = None, *, warnings_only: bool = False) -> list[str]:
        ordered = sorted(self.findings, key=lambda f: (f.severity != "warning", SCOPES.index(f.scope)))
        return [("WARNING: " if f.severity == "warning" else "") + f.message for f in ordered
                if (scope is None or f.scope == scope) and (f.severity == "warning" or not warnings_only)]

    def summary(self) -> str:
        """Warnings first, then notes: one line each."""
        head = (f"bias report {self.report_id} on {self.source_table}: {len(self.warnings)} warning(s), "
                f"{len(self.findings) - len(self.warnings)} note(s)")
        return "\n".join([head, *("- " + s for s in self.sentences()), *("- " + n for n in self.notes)])

    def findings_frame(self) -> pd.DataFrame:
        return pd.DataFrame([dataclasses.asdict(f) for f in self.findings],
                            columns=[f.name for f in dataclasses.fields(Finding)])


# --------------------------------------------------------------------------- reading the workspace

def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    if not table_exists(con, table):
        hint = {"examples": ": run steps 01 and 02 (workbench run --only 01 --only 02)",
                "label_pool": ": run steps 01 and 02", "labels": ": label items first (step 03)"}.get(table, "")
        raise WorkspaceError(f"table {table!r} not found in the workspace{hint}")
    return [r[0] for r in con.execute(f"select * from {_quote(table)} limit 0").description]


def _check_columns(con, table: str, needed: Iterable[str | None], what: str = "column") -> list[str]:
    cols = _columns(con, table)
    missing = [c for c in needed if c and c not in cols]
    if missing:
        raise WorkspaceError(f"table {table!r} has no {what} {', '.join(map(repr, missing))} "
                             f"(columns: {', '.join(cols)})")
    return cols


def _counts(con, table: str, cols: Sequence[str]) -> pd.DataFrame:
    sel = ", ".join(_quote(c) for c in dict.fromkeys(cols))
    return con.execute(f"select {sel}, count(*) as n from {_quote(table)} group by all").df()


def group_counts(con: duckdb.DuckDBPyConnection, table: str, group_cols: Sequence[str]) -> pd.DataFrame:
    """Rows per combination of ``group_cols`` in ``table`` (a missing table or column is named)."""
    group_cols = [group_cols] if isinstance(group_cols, str) else list(group_cols)
    _check_columns(con, table, group_cols, "group column")
    return _counts(con, table, group_cols).rename(columns={"n": "n_rows"}).sort_values(group_cols,
                                                                                        ignore_index=True)


def new_report_id() -> str:
    return f"bias-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- findings

def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if abs(x) < 0.1 else f"{100 * x:.0f}%"


def _pts(x: float) -> str:
    return f"{abs(100 * x):.0f} points"


def _small(n: int, cfg: BiasConfig) -> str:
    return f" (only {n} rows: noisy)" if n < cfg.min_group_size else ""


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def representation_findings(rep: pd.DataFrame, cfg: BiasConfig) -> list[Finding]:
    out: list[Finding] = []
    total = int(rep.loc[rep["column"] == rep["column"].iloc[0], "n"].sum()) if len(rep) else 0
    flagged: set[str] = set()
    for _, r in rep.iterrows():
        if not _finite(r["expected_share"]) or r["expected_share"] <= 0:
            continue
        parts = r["facet"].split(bias.SEP)
        if len(parts) > 1 and flagged & set(parts):
            continue  # an intersection of an already flagged group tells nothing new
        exp, share = r["expected_share"], r["share"] if total else 0.0
        if r["n"] == 0:
            msg = f"{r['facet']} has no rows, against {_pct(exp)} expected: missing from the data."
        elif r["ratio"] < cfg.representation_ratio:
            msg = (f"{r['facet']} is {_pct(share)} of the data ({r['n']} of {total} rows) against {_pct(exp)} "
                   f"expected: under-represented ({r['ratio']:.2f}x).")
        elif r["ratio"] > 1 / cfg.representation_ratio:
            if len(parts) > 1:
                continue
            out.append(Finding("representation", r["facet"], "share_ratio", None, float(r["ratio"]), "info",
                               f"{r['facet']} is {_pct(share)} of the data against {_pct(exp)} expected: "
                               f"over-represented ({r['ratio']:.2f}x)."))
            continue
        else:
            continue
        flagged.add(r["facet"])
        out.append(Finding("representation", r["facet"], "share_ratio", None, float(r["ratio"]), "warning", msg))
    for col, part in rep.groupby("column", sort=False):
        small = part[(part["n"] > 0) & (part["n"] < cfg.min_group_size)]
        if len(small):
            names = ", ".join(f"{g} ({n})" for g, n in zip(small["group"], small["n"]))
            out.append(Finding("representation", col, "count", None, float(small["n"].min()),
                               "info" if bias.SEP in col else "warning",
                               f"{len(small)} group(s) of {col} have fewer than {cfg.min_group_size} rows: {names}; "
                               f"their metrics are noisy."))
    return out


def label_findings(metrics: pd.DataFrame, only: pd.DataFrame, cfg: BiasConfig, label_col: str,
                   strata_col: str | None) -> list[Finding]:
    """Warnings from single-column label metrics (intersections are in bias_metrics only)."""
    out: list[Finding] = []
    m = metrics[~metrics["column"].str.contains(bias.SEP, regex=False)]
    share = m[m["metric"] == "label_share"].set_index(["facet", "label"])["value"]
    missing = {(r["facet"], r["label"]) for _, r in only.iterrows() if r["side"] == "rest_only"}
    explained: set[tuple[str, str]] = set()
    for _, r in m[m["metric"] == "DPL"].iterrows():
        v = r["value"]
        if not _finite(v) or abs(v) <= cfg.dpl_threshold:
            continue
        qd = share.get((r["facet"], r["label"]))
        qa = qd + v
        significant = r["ci_low"] > 0 or r["ci_high"] < 0
        never = (r["facet"], r["label"]) in missing
        explained |= {(r["facet"], r["label"])} if never else set()
        msg = (f"{r['facet']}: its share of {label_col} '{r['label']}' is {_pts(v)} "
               f"{'lower' if v > 0 else 'higher'} than the rest ({_pct(qd)} vs {_pct(qa)}; "
               f"DPL {v:+.2f}, {cfg.ci_level:.0%} CI {r['ci_low']:+.2f} to {r['ci_high']:+.2f})"
               f"{'' if significant else ', but the interval includes 0: could be chance'}"
               f"{'; the label never occurs in the facet, so KL(rest, facet) is infinite' if never else ''}"
               f"{_small(int(r['n_facet']), cfg)}.")
        out.append(Finding("label", r["facet"], "DPL", r["label"], float(v), "warning" if significant else "info", msg))
    dist = m[m["label"].isna()].pivot_table(index="facet", columns="metric", values="value", aggfunc="first")
    n_by = m.drop_duplicates("facet").set_index("facet")["n_facet"]
    for facet, r in dist.iterrows():
        if _finite(r.get("TVD")) and r["TVD"] > cfg.tvd_threshold:
            kl = "infinite" if math.isinf(r["KL"]) else f"{r['KL']:.2f}"
            out.append(Finding("label", facet, "TVD", None, float(r["TVD"]), "warning",
                               f"{facet}: its {label_col} mix differs from the rest (TVD {r['TVD']:.2f}, "
                               f"JS {r['JS']:.3f}, KS {r['KS']:.2f}, KL {kl}){_small(int(n_by[facet]), cfg)}."))
    for _, r in m[m["metric"] == "CDDL"].iterrows():
        v = r["value"]
        if _finite(v) and abs(v) > cfg.cddl_threshold:
            side = "more of the rows without" if v > 0 else "more of the rows with"
            out.append(Finding("label", r["facet"], "CDDL", r["label"], float(v), "warning",
                               f"{r['facet']} within strata of {strata_col}: CDDL for {label_col} '{r['label']}' is "
                               f"{v:+.2f} (the facet holds {side} '{r['label']}' than of the rest)."))
    for _, r in only.iterrows():
        if (r["facet"], r["label"]) in explained:
            continue
        n_facet = int(n_by.get(r["facet"], 0))
        n_total = int(m[(m["facet"] == r["facet"]) & (m["metric"] == "CI")][["n_facet", "n_rest"]].sum(axis=1).iloc[0])
        if r["side"] == "rest_only":
            expected = n_facet * r["n"] / max(n_total, 1)
            msg = (f"{label_col} '{r['label']}' never occurs in {r['facet']} ({r['n']} rows of it in the rest, "
                   f"{expected:.1f} expected): KL(rest, facet) is infinite"
                   f"{f' (reported smoothed, epsilon {cfg.kl_epsilon})' if cfg.kl_epsilon else ''}; "
                   f"JS, LP, TVD and KS count it.")
            out.append(Finding("label", r["facet"], "label_missing", r["label"], 0.0,
                               "warning" if expected >= 5 else "info", msg))
        else:
            out.append(Finding("label", r["facet"], "label_only_here", r["label"], float(r["n"]), "info",
                               f"{label_col} '{r['label']}' occurs only in {r['facet']} ({r['n']} rows); "
                               f"JS, LP, TVD and KS count it."))
    return out


def labeling_findings(metrics: pd.DataFrame, cfg: BiasConfig) -> list[Finding]:
    out: list[Finding] = []
    rate = metrics[metrics["metric"] == "label_rate"].set_index(["facet", "label"])["value"]
    for _, r in metrics[metrics["metric"] == "DPL"].iterrows():
        v = r["value"]
        if not _finite(v) or abs(v) <= cfg.dpl_threshold or not (r["ci_low"] > 0 or r["ci_high"] < 0):
            continue
        ann, grp = r["facet"].split(bias.SEP, 1)
        mine = rate.get((r["facet"], r["label"]))
        out.append(Finding("labeling", r["facet"], "DPL", r["label"], float(v), "warning",
                           f"annotator {ann.split('=', 1)[1]} gives '{r['label']}' to {_pct(mine)} of {grp} items, "
                           f"the other annotators to {_pct(mine + v)} ({_pts(v)} {'less' if v > 0 else 'more'})."))
    agree = metrics[metrics["metric"] == "agreement"].dropna(subset=["value"])
    overall = agree[agree["facet"] == "(all)"]["value"]
    if len(overall):
        for _, r in agree[agree["facet"] != "(all)"].iterrows():
            if r["value"] < overall.iloc[0] - cfg.dpl_threshold:
                out.append(Finding("labeling", r["facet"], "agreement", None, float(r["value"]), "warning",
                                   f"annotators agree on {_pct(r['value'])} of label pairs for {r['facet']} items, "
                                   f"against {_pct(overall.iloc[0])} overall."))
    return out


def model_findings(metrics: pd.DataFrame, cfg: BiasConfig) -> list[Finding]:
    out: list[Finding] = []
    overall = metrics[(metrics["facet"] == "(all)") & (metrics["metric"] == "accuracy")]["value"]
    if len(overall):
        acc = overall.iloc[0]
        for _, r in metrics[(metrics["metric"] == "accuracy") & (metrics["facet"] != "(all)")
                            & ~metrics["column"].fillna("").str.contains(bias.SEP, regex=False)].iterrows():
            if _finite(r["value"]) and r["value"] < acc - cfg.accuracy_gap_threshold:
                ci = (f", {cfg.ci_level:.0%} CI {r['ci_low']:.2f}-{r['ci_high']:.2f}" if _finite(r["ci_low"]) else "")
                out.append(Finding("model", r["facet"], "accuracy", None, float(r["value"]), "warning",
                                   f"{r['facet']}: accuracy {r['value']:.2f}{ci} against {acc:.2f} overall "
                                   f"({_pts(acc - r['value'])} lower){_small(int(r['n_facet']), cfg)}."))
    for metric in ("demographic_parity_difference", "equalized_odds_difference"):
        part = metrics[(metrics["metric"] == metric) & metrics["label"].notna()]
        for col, rows in part.groupby("column", sort=False):
            bad = rows[rows["value"] > cfg.parity_threshold].sort_values("value", ascending=False)
            if len(bad):
                listed = ", ".join(f"'{lab}' ({v:.2f})" for lab, v in zip(bad["label"], bad["value"]))
                out.append(Finding("model", col, metric, None, float(bad["value"].max()), "warning",
                                   f"{metric.replace('_', ' ')} across {col} exceeds {cfg.parity_threshold:.2f} "
                                   f"for class(es) {listed}."))
    return out


# --------------------------------------------------------------------------- figures

def _figure(height: float, width: float = 7.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_representation(rep: pd.DataFrame):
    """Observed share per group (Wilson interval) against the expected share, one panel per column."""
    cols = [c for c in dict.fromkeys(rep["column"]) if bias.SEP not in c]
    fig = _figure(1.0 + 0.35 * sum(len(rep[rep["column"] == c]) for c in cols) + 0.6 * len(cols))
    axes = fig.subplots(len(cols), 1, squeeze=False,
                        height_ratios=[max(1, len(rep[rep["column"] == c])) for c in cols])[:, 0]
    for ax, col in zip(axes, cols):
        p = rep[rep["column"] == col].reset_index(drop=True)
        y = np.arange(len(p))
        err = np.vstack([p["share"] - p["share_low"], p["share_high"] - p["share"]]).clip(min=0)
        ax.barh(y, p["share"], xerr=err, color="#4C78A8", label="observed share", capsize=3)
        if p["expected_share"].notna().any():
            ax.scatter(p["expected_share"], y, marker="|", s=300, color="#E45756", zorder=3, label="expected")
        ax.set_yticks(y, p["group"])
        ax.invert_yaxis()
        ax.set_title(col, loc="left", fontsize=10)
        ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle("Representation: share of rows per group", fontsize=11)
    return fig


def plot_label_mix(metrics: pd.DataFrame, column: str, label_col: str = "label"):
    """Heatmap of each group's share of each label; colour = points above (red) or below (blue) the rest."""
    m = metrics[metrics["column"] == column]
    share = m[m["metric"] == "label_share"].pivot(index="facet", columns="label", values="value")
    diff = -m[m["metric"] == "DPL"].pivot(index="facet", columns="label", values="value")
    share, diff = share.dropna(how="all"), diff.reindex_like(share)
    fig = _figure(1.2 + 0.45 * len(share), 1.5 + 1.1 * len(share.columns))
    ax = fig.subplots()
    lim = max(0.05, float(np.nanmax(np.abs(diff.to_numpy()))) if diff.size else 0.05)
    im = ax.imshow(diff.to_numpy(dtype=float), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(share.shape[0]):
        for j in range(share.shape[1]):
            v, dv = share.iat[i, j], diff.iat[i, j]
            if _finite(v):
                dark = _finite(dv) and abs(dv) > 0.6 * lim
                ax.text(j, i, f"{100 * v:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xticks(range(share.shape[1]), share.columns, rotation=30, ha="right")
    ax.set_yticks(range(share.shape[0]), [f.split("=", 1)[1] for f in share.index])
    fig.colorbar(im, ax=ax, label="facet share - rest share", format=lambda v, _: f"{100 * v:+.0f} pts")
    ax.set_title(f"{label_col} mix by {column} (text: share within the group)", fontsize=10, loc="left")
    return fig


def plot_group_metric(metrics: pd.DataFrame, metric: str, title: str, overall: float | None = None):
    """One bar per group (single columns only) with its interval, and the overall value as a line."""
    m = metrics[(metrics["metric"] == metric) & metrics["label"].isna() & (metrics["facet"] != "(all)")
                & ~metrics["column"].fillna("").str.contains(bias.SEP, regex=False)].reset_index(drop=True)
    fig = _figure(1.0 + 0.35 * max(len(m), 1))
    ax = fig.subplots()
    y = np.arange(len(m))
    has_ci = m["ci_low"].notna().all() and len(m)
    err = np.vstack([m["value"] - m["ci_low"], m["ci_high"] - m["value"]]).clip(min=0) if has_ci else None
    ax.barh(y, m["value"], xerr=err, color="#72B7B2", capsize=3)
    if overall is not None and _finite(overall):
        ax.axvline(overall, color="#E45756", linestyle="--", label=f"overall {overall:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, m["facet"])
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10, loc="left")
    return fig


def plot_selection_rates(metrics: pd.DataFrame, column: str):
    """Heatmap of the model's selection rate per class per group (Fairlearn MetricFrame)."""
    m = metrics[(metrics["column"] == column) & (metrics["metric"] == "selection_rate")]
    t = m.pivot(index="facet", columns="label", values="value")
    fig = _figure(1.2 + 0.45 * len(t), 1.5 + 1.1 * len(t.columns))
    ax = fig.subplots()
    im = ax.imshow(t.to_numpy(dtype=float), cmap="viridis", vmin=0, aspect="auto")
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            ax.text(j, i, f"{100 * t.iat[i, j]:.0f}%", ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(range(t.shape[1]), t.columns, rotation=30, ha="right")
    ax.set_yticks(range(t.shape[0]), [f.split("=", 1)[1] for f in t.index])
    fig.colorbar(im, ax=ax, label="selection rate")
    ax.set_title(f"predicted class share by {column}", fontsize=10, loc="left")
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML and tables

_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Bias report {{ r.report_id }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
li.warning { color: #a40000; } li.info { color: #444; }
table { border-collapse: collapse; font-size: .85em; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; } th { background: #f4f4f4; }
img { max-width: 100%; } .meta { color: #666; font-size: .9em; }
</style></head><body>
<h1>Bias report: {{ r.source_table }}</h1>
<p class="meta">report <code>{{ r.report_id }}</code> &middot; {{ r.kind }} &middot; created {{ created }} UTC
{% if r.run_id %}&middot; run <code>{{ r.run_id }}</code>{% endif %}
&middot; {{ params }}</p>
<h2>Findings ({{ r.warnings|length }} warning(s))</h2>
<ul>{% for f in findings %}<li class="{{ f.severity }}">{% if f.severity == 'warning' %}<b>warning</b>: {% endif %}{{ f.message }}</li>{% endfor %}
{% for n in r.notes %}<li class="info">{{ n }}</li>{% endfor %}</ul>
{% for name, png in figures %}<h2>{{ name }}</h2><img alt="{{ name }}" src="data:image/png;base64,{{ png }}">{% endfor %}
{% for name, table in tables %}<h2>{{ name }}</h2>{{ table }}{% endfor %}
<p class="meta">Every number above is in the workspace table <code>bias_metrics</code>:
<code>select * from bias_metrics where report_id = '{{ r.report_id }}'</code></p>
</body></html>
"""


def render_html(report: BiasReport) -> str:
    import jinja2

    figures = [(name, base64.b64encode(figure_png(fig)).decode("ascii")) for name, fig in report.figures.items()]
    tables = [(name, t.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", border=0))
              for name, t in report.tables.items()]
    order = sorted(report.findings, key=lambda f: (f.severity != "warning", SCOPES.index(f.scope)))
    params = ", ".join(f"{k}: {v}" for k, v in report.params.items()
                       if k != "config" and v not in (None, "", [], {}))
    return jinja2.Environment(autoescape=True).from_string(_HTML).render(
        r=report, findings=order, figures=figures, tables=tables, params=params,
        created=f"{report.created_at:%Y-%m-%d %H:%M:%S}")


def _metric_rows(report_id: str, scope: str, metrics: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"report_id": report_id, "scope": scope, "facet": metrics["facet"].astype(object),
                         "metric": metrics["metric"], "label": metrics["label"].astype(object),
                         "value": metrics["value"], "ci_low": metrics["ci_low"], "ci_high": metrics["ci_high"]})


def _representation_rows(report_id: str, rep: pd.DataFrame) -> pd.DataFrame:
    long = []
    for metric, col, lo, hi in (("count", "n", None, None), ("share", "share", "share_low", "share_high"),
                                ("expected_share", "expected_share", None, None), ("share_ratio", "ratio", None, None)):
        long.append(pd.DataFrame({"facet": rep["facet"], "metric": metric, "label": None,
                                  "value": rep[col].astype(float),
                                  "ci_low": rep[lo] if lo else np.nan, "ci_high": rep[hi] if hi else np.nan}))
    frame = pd.concat(long, ignore_index=True)
    frame = frame[frame["value"].notna()]
    return _metric_rows(report_id, "representation", frame)


def save(con: duckdb.DuckDBPyConnection, report: BiasReport, *, html: bool = True) -> BiasReport:
    """Write the HTML file, then ``bias_metrics`` and ``bias_reports`` rows in one transaction."""
    if html:
        out = workspace_root(con) / "reports" / f"bias_{report.report_id}.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(report), encoding="utf-8")
        report.html_path = out
    p = report.params
    meta = pd.DataFrame([{
        "report_id": report.report_id, "created_at": report.created_at, "kind": report.kind,
        "source_table": report.source_table, "run_id": report.run_id,
        "group_cols": ",".join(p.get("group_cols") or []), "label_col": p.get("label_col"),
        "strata_col": p.get("strata_col"), "n_rows": p.get("n_rows"), "data_snapshot": snapshot_id(con),
        "html_path": str(report.html_path) if report.html_path else None, "n_findings": len(report.findings),
        "n_warnings": len(report.warnings), "config_json": json.dumps(p.get("config", {}), sort_keys=True)}])
    metrics = report.metrics

    def body(c):
        c.execute(_DDL)
        c.register("_bias_metrics_new", metrics)
        c.register("_bias_reports_new", meta)
        try:
            c.execute("insert into bias_metrics by name select * from _bias_metrics_new")
            c.execute("insert into bias_reports by name select * from _bias_reports_new")
        finally:
            c.unregister("_bias_metrics_new")
            c.unregister("_bias_reports_new")

    transaction(con, body, what="writing bias_metrics")
    return report


# --------------------------------------------------------------------------- the two reports

def data_bias_report(con: duckdb.DuckDBPyConnection, *, table: str = "examples",
                     group_cols: Sequence[str] = ("age_band",), label_col: str = "intent",
                     strata_col: str | None = None, reference: Mapping[str, Mapping[str, float]] | None = None,
                     intersections: bool = True, labels_table: str = "labels", items_table: str = "label_pool",
                     final_table: str = "labels_final", label_values: Iterable[str] | None = None,
                     config: BiasConfig | None = None, write: bool = True, html: bool = True,
                     report_id: str | None = None, label_set: str = "intent") -> BiasReport:
    """Representation, pre-training label bias and labeling bias of a workspace table.

    Counts are aggregated in DuckDB (``group by``), so the table may be larger than memory.
    Labeling bias reads ``labels_table`` joined to ``items_table`` on ``item_id`` (group columns
    from there) and ``final_table`` when they exist; otherwise it is skipped with a note.
    """
    cfg = config or BiasConfig()
    group_cols = [group_cols] if isinstance(group_cols, str) else list(group_cols)
    if not group_cols:
        raise ValueError("group_cols: give at least one group column")
    if strata_col in group_cols:
        raise ValueError(f"strata_col {strata_col!r} is also a group column; pick another column to condition on")
    _check_columns(con, table, [*group_cols, label_col, strata_col])
    counts = _counts(con, table, [*group_cols, label_col] + ([strata_col] if strata_col else []))
    n_rows = int(counts["n"].sum())
    if n_rows == 0:
        raise WorkspaceError(f"table {table!r} has no rows")
    report_id = report_id or new_report_id()
    rep = bias.representation(counts, group_cols, reference=reference, intersections=intersections,
                              count_col="n", config=cfg)
    label_parts, only_parts = [], []
    for col in group_cols:
        groups = list((reference or {}).get(col, {}))
        label_parts.append(bias.label_bias(counts, col, label_col, strata_col=strata_col, groups=groups,
                                           count_col="n", config=cfg))
        only_parts.append(bias.labels_only_in_one_side(counts, col, label_col, count_col="n"))
    if intersections and len(group_cols) > 1:
        label_parts.append(bias.label_bias(counts, group_cols, label_col, strata_col=strata_col,
                                           count_col="n", per_label=False, config=cfg))
    label_metrics = pd.concat(label_parts, ignore_index=True)
    only = pd.concat(only_parts, ignore_index=True)
    findings = (representation_findings(rep, cfg)
                + label_findings(label_metrics, only, cfg, label_col, strata_col))
    notes: list[str] = []
    if label_values is None:
        label_values = sorted(counts[label_col].dropna().astype(str).unique())
    labeling = _labeling(con, labels_table, items_table, final_table, group_cols, label_values, cfg, notes,
                         label_set)
    findings += labeling_findings(labeling, cfg) if labeling is not None else []
    metrics = pd.concat([_representation_rows(report_id, rep), _metric_rows(report_id, "label", label_metrics)]
                        + ([_metric_rows(report_id, "labeling", labeling)] if labeling is not None else []),
                        ignore_index=True)
    figures = {"Representation": plot_representation(rep)}
    for col in group_cols:
        figures[f"{label_col} mix by {col}"] = plot_label_mix(label_metrics, col, label_col)
    tables = {"representation": rep, "label metrics": _label_table(label_metrics)}
    if labeling is not None:
        figures["Annotator agreement by group"] = plot_group_metric(
            labeling, "agreement", "pairwise annotator agreement per group",
            overall=_value(labeling, "(all)", "agreement"))
        tables["labeling"] = labeling[labeling["metric"].isin(["n_items", "agreement", "krippendorff_alpha",
                                                               "final_agreement"])]
    report = BiasReport(report_id, "data", table, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                        metrics, findings, tables, figures, notes, params=dict(
                            group_cols=group_cols, label_col=label_col, strata_col=strata_col, n_rows=n_rows,
                            reference=reference, config=dataclasses.asdict(cfg)))
    return save(con, report, html=html) if write else report


def _value(metrics: pd.DataFrame, facet: str, metric: str) -> float | None:
    v = metrics[(metrics["facet"] == facet) & (metrics["metric"] == metric)]["value"]
    return float(v.iloc[0]) if len(v) and _finite(v.iloc[0]) else None


def _label_table(m: pd.DataFrame) -> pd.DataFrame:
    """One row per single-column facet: size, CI and the distance metrics over the whole label mix."""
    m = m[~m["column"].str.contains(bias.SEP, regex=False) & m["label"].isna()]
    t = m.pivot_table(index=["column", "facet"], columns="metric", values="value", aggfunc="first", sort=False)
    n = m.drop_duplicates("facet").set_index("facet")["n_facet"]
    t = t.reset_index()
    t.insert(2, "n", t["facet"].map(n))
    return t[[c for c in ["column", "facet", "n", "CI", "KL", "JS", "LP", "TVD", "KS"] if c in t.columns]]


def _labeling(con, labels_table, items_table, final_table, group_cols, label_values, cfg, notes,
              label_set="intent"):
    if not table_exists(con, labels_table):
        notes.append(f"labeling bias skipped: no table {labels_table!r} in the workspace (notebook 03 writes it).")
        return None
    if not table_exists(con, items_table):
        notes.append(f"labeling bias skipped: no table {items_table!r} to take the items' groups from.")
        return None
    item_cols = _columns(con, items_table)
    have = [c for c in group_cols if c in item_cols]
    if "item_id" not in item_cols or not have:
        notes.append(f"labeling bias skipped: {items_table!r} lacks item_id or the group columns {group_cols}.")
        return None
    if labels_table == "labels" and table_exists(con, "labels_current"):
        # the labeling workflow's own view of each annotator's current answer per label set: it
        # resolves undo of a relabel and keeps free-text answers of another label set apart
        current = con.execute("select item_id, annotator, value from labels_current "
                              "where label_set = ? and kind = 'label'", [label_set]).df()
        if label_values is not None:
            current = current[current["value"].astype(str).isin({str(v) for v in label_values})]
        current["value"] = current["value"].astype(str)
    else:  # an append-only labels table from elsewhere: latest row per item and annotator
        labels = con.execute(f"select * from {_quote(labels_table)}").df()
        current = bias.current_labels(labels, label_values)
    if current.empty:
        notes.append(f"labeling bias skipped: {labels_table!r} holds no current label.")
        return None
    items = con.execute(f"select item_id, {', '.join(_quote(c) for c in have)} from {_quote(items_table)}").df()
    final = None
    if table_exists(con, final_table) and {"item_id", "value"} <= set(_columns(con, final_table)):
        final = con.execute(f"select item_id, value from {_quote(final_table)}").df()
    current["item_id"] = current["item_id"].astype(str)
    items["item_id"] = items["item_id"].astype(str)
    if final is not None:
        final["item_id"] = final["item_id"].astype(str)
    m = bias.labeling_bias(current, items, have, final=final, config=cfg)
    units = [list(v) for v in current.groupby("item_id")["value"].apply(list) if len(v) >= 2]
    agreement, pairs = bias.pairwise_agreement(units)
    overall = pd.DataFrame([bias.metric_row(None, "(all)", "agreement", None, agreement, n_facet=pairs),
                            bias.metric_row(None, "(all)", "krippendorff_alpha", None,
                                      bias.krippendorff_alpha_nominal(units), n_facet=len(units)),
                            bias.metric_row(None, "(all)", "n_items", None, float(current["item_id"].nunique()))])
    notes.append(f"labeling: {len(current)} current labels from {current['annotator'].nunique()} annotator(s) on "
                 f"{current['item_id'].nunique()} items ({len(units)} with 2+ labels).")
    return bias.metric_frame(overall.to_dict("records") + m.to_dict("records"))


def model_bias_report(con: duckdb.DuckDBPyConnection, run_id: str, group_cols: Sequence[str] = ("age_band",), *,
                      split: str = "test", examples_table: str = "examples",
                      metrics: Mapping[str, Callable] | Iterable[str] | None = None, intersections: bool = False,
                      normalize: bool = True, config: BiasConfig | None = None, write: bool = True,
                      html: bool = True, report_id: str | None = None) -> BiasReport:
    """Model bias of one run: ``predictions`` (run_id, split) joined to ``examples`` for the groups.

    Per-group metrics with Fairlearn ``MetricFrame`` and bootstrap intervals, demographic parity
    and equalized odds per class (one-vs-rest). ``normalize`` reads each prediction as the label it
    means (``evaluate.as_labels``: a causal LM's ``Technical _ issue`` is ``technical_issue``), as the
    trainers count ``predictions.correct``.
    """
    cfg = config or BiasConfig()
    group_cols = [group_cols] if isinstance(group_cols, str) else list(group_cols)
    _check_columns(con, "predictions", ["run_id", "example_id", "split", "prediction", "label"])
    _check_columns(con, examples_table, ["example_id", *group_cols])
    sel = ", ".join(f"e.{_quote(c)}" for c in group_cols)
    sql = (f"select p.example_id, p.prediction, p.label, {sel} from predictions p "
           f"join {_quote(examples_table)} e on e.example_id = p.example_id where p.run_id = ? and p.split = ?")
    df = con.execute(sql, [run_id, split]).df()
    n_pred = con.execute("select count(*) from predictions where run_id = ? and split = ?", [run_id, split]).fetchone()[0]
    if n_pred == 0:
        raise WorkspaceError(f"no predictions for run_id {run_id!r} and split {split!r}")
    notes = []
    if len(df) == 0 and table_exists(con, "sft_examples"):  # predictions keyed by SFT example id
        df = con.execute(
            f"select p.example_id, p.prediction, p.label, {sel} from predictions p "
            f"join sft_examples s on s.example_id = p.example_id "
            f"join {_quote(examples_table)} e on e.example_id = s.source_row_id "
            f"where p.run_id = ? and p.split = ?", [run_id, split]).df()
    if len(df) < n_pred:
        notes.append(f"{n_pred - len(df)} of {n_pred} predictions have no matching row in {examples_table!r} "
                     f"and are left out.")
    if df.empty:
        raise WorkspaceError(f"none of the {n_pred} predictions of run {run_id!r} joins {examples_table!r} on example_id")
    if normalize:
        from .evaluate import as_labels

        df["label"] = df["label"].astype(str)
        df["prediction"] = as_labels(df["prediction"].astype(str), sorted(set(df["label"])))
    report_id = report_id or new_report_id()
    m, frames = bias.model_bias(df, group_cols, metrics=metrics, intersections=intersections, config=cfg)
    findings = model_findings(m, cfg)
    figures = {"Accuracy by group": plot_group_metric(m, "accuracy", f"accuracy per group ({split} split)",
                                                      overall=_value(m, "(all)", "accuracy"))}
    for col in group_cols:
        figures[f"Predicted class share by {col}"] = plot_selection_rates(m, col)
    tables = {f"metrics by {col}": frames[col].by_group.reset_index() for col in frames}
    parity = m[m["metric"].str.contains("parity|odds", regex=True)]
    tables["parity (one-vs-rest per class)"] = parity.pivot_table(
        index=["column", "label"], columns="metric", values="value", aggfunc="first", dropna=False).reset_index()
    report = BiasReport(report_id, "model", "predictions", dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                        _metric_rows(report_id, "model", m), findings, tables, figures, notes, run_id=run_id,
                        params=dict(group_cols=group_cols, label_col="label", split=split, n_rows=len(df),
                                    config=dataclasses.asdict(cfg)))
    return save(con, report, html=html) if write else report
