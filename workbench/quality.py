"""Data quality report on a whole workspace table, stored as rows of ``quality_report``.

    workbench quality examples --text-column text --label-column intent
    workbench sql "select check_name, column_name, value, detail from quality_report where report_id = '...'"

Every check runs in SQL over the full table (no sampling): row count, nulls and blanks per column,
exact duplicate rows and texts, near-duplicate texts (MinHash/LSH, ``near_dup.py``), length
distribution in characters and whitespace tokens (quantiles and a histogram), length outliers
(outside ``[Q1 - k*IQR, Q3 + k*IQR]``), PII hits (emails, phone numbers, card-like numbers: the
``mask_pii`` patterns), label balance, and leakage between splits (the same normalized text, or a
near-duplicate, in two splits; splits come from a ``split`` column or the ``splits`` table).
``plot_report`` draws the report for a notebook.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time
from dataclasses import dataclass

import duckdb
import pandas as pd

from .flow_steps import PII_PATTERNS, lit, normalize_expr, qi
from .near_dup import near_dup_ctes
from .workspace import table_exists, write_table


@dataclass
class QualityConfig:
    text_column: str | None = None     # None: 'text' when the table has one; no text checks without it
    label_column: str | None = None    # None: the first of intent, label present
    key_column: str | None = None      # None: the first of example_id, source_row_id, item_id, id present
    split_column: str | None = None    # None: a 'split' column, else the splits table joined on the key
    splits_table: str = "splits"       # where split assignments live (example_id, split)
    split_key_column: str | None = None  # column joined to splits.example_id; None: the key or source_row_id,
                                         # whichever matches more (sft_examples: source_row_id = examples' id)
    near_dup: bool = True              # MinHash/LSH near-duplicates: the slowest check on big tables
    near_dup_threshold: float = 0.8    # Jaccard similarity of word 3-gram sets
    ngram: int = 3                     # word n-grams: cheaper than character n-grams on millions of rows
    bands: int = 8                     # LSH bands x rows per band = hash functions (32): more is slower, finer
    rows_per_band: int = 4
    outlier_iqr: float = 3.0           # length outliers: beyond k interquartile ranges from the quartiles
    histogram_bins: int = 20           # length histogram buckets


REPORT_COLUMNS = ["report_id", "table_name", "check_name", "column_name", "value", "detail", "created_at"]


def _pick(cols: list[str], given: str | None, candidates: tuple[str, ...], what: str, table: str) -> str | None:
    lower = {c.lower(): c for c in cols}
    if given:
        if given.lower() not in lower:
            raise ValueError(f"{what} {given!r} is not a column of {table}; columns: {', '.join(cols)}")
        return lower[given.lower()]
    return next((lower[c] for c in candidates if c in lower), None)


def quality_report(con: duckdb.DuckDBPyConnection, table: str, config: QualityConfig | None = None, *,
                   write: bool = True, report_id: str | None = None, timings: dict | None = None) -> pd.DataFrame:
    """Run every check on ``table``; append the rows to ``quality_report`` and return them.

    ``timings``, when given, receives the seconds each group of checks took.
    """
    cfg = config or QualityConfig()
    if not table_exists(con, table):
        raise ValueError(f"table {table!r} not found in the workspace")
    schema = con.execute(f"describe {qi(table)}").fetchall()
    cols = [r[0] for r in schema]
    types = {r[0]: r[1] for r in schema}
    text = _pick(cols, cfg.text_column, ("text",), "text column", table)
    label = _pick(cols, cfg.label_column, ("intent", "label"), "label column", table)
    key = _pick(cols, cfg.key_column, ("example_id", "source_row_id", "item_id", "id"), "key column", table)
    split = _pick(cols, cfg.split_column, ("split",), "split column", table)
    split_key, matched = (None, 0) if split else _split_key(con, table, cols, key, cfg)
    created = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    report_id = report_id or f"qr-{created:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    rows: list[tuple] = []

    def add(check: str, column: str | None, value, detail: str | None = None) -> None:
        rows.append((report_id, table, check, column, None if value is None else float(value), detail, created))

    t = qi(table)
    t0 = time.perf_counter()
    # one scan: row count, nulls and blanks per column
    exprs = ["count(*)"] + [f"count(*) - count({qi(c)})" for c in cols]
    text_cols = [c for c in cols if types[c].upper().startswith("VARCHAR")]
    exprs += [f"count(*) filter (where trim({qi(c)}) = '')" for c in text_cols]
    res = con.execute(f"select {', '.join(exprs)} from {t}").fetchone()
    n = res[0]
    add("row_count", None, n)
    for c, k in zip(cols, res[1:1 + len(cols)]):
        add("null_count", c, k, f"{k / n:.2%} of rows" if n else None)
    for c, k in zip(text_cols, res[1 + len(cols):]):
        add("blank_count", c, k, "empty or whitespace-only text")
    others = [c for c in cols if c != key]
    distinct = f"select count(*) from (select distinct {', '.join(map(qi, others))} from {t})"
    dup = con.execute(f"select count(*) - ({distinct}) from {t}").fetchone()[0] if others else 0
    add("duplicate_rows", None, dup, "rows equal to an earlier row in every column" + (f" but {key}" if key else ""))
    if timings is not None:
        timings["rows, nulls, duplicate rows"] = time.perf_counter() - t0
    if split_key:
        add("split_join", split_key, matched, f"rows whose {split_key} is an example_id of {cfg.splits_table}")
    elif not split and table_exists(con, cfg.splits_table):
        add("split_join", None, 0, f"no key column matches {cfg.splits_table}.example_id: no split, "
                                   "leakage not checked")
    if text:
        prof = f"_quality_{secrets.token_hex(4)}"
        with _timed(timings, "text: profile pass (normalize, lengths, pii flags)"):
            _profile(con, t, prof, text, key, split, split_key, cfg)
        try:
            with _timed(timings, "text: duplicates, lengths, outliers"):
                _text_checks(con, prof, text, key, cfg, add)
            with _timed(timings, "text: pii"):
                counts = ", ".join(f"count(*) filter (where _{k}), count(*) filter (where _{k}_masked)"
                                   for k in PII_PATTERNS)
                res = con.execute(f"select {counts} from {prof}").fetchone()
                for i, kind in enumerate(PII_PATTERNS):
                    add(f"pii_{kind}", text, res[2 * i], f"rows with an unmasked {kind[:-1]}; {res[2 * i + 1]} "
                                                          f"rows hold the mask {PII_PATTERNS[kind][0]}")
            has_splits = bool(split or split_key)
            if has_splits:
                with _timed(timings, "text: exact leakage between splits"):
                    _leakage_checks(con, prof, text, cfg, add)
            if cfg.near_dup:
                with _timed(timings, "text: near-duplicates (and near leakage)"):
                    _near_dup_checks(con, prof, text, cfg, add, leakage=has_splits)
        finally:
            con.execute(f"drop table if exists {prof}")
    if label:
        with _timed(timings, "label balance"):
            _label_checks(con, t, label, n, add)
    df = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    if write:
        write_table(con, "quality_report", df, mode="append")
    return df


@contextlib.contextmanager
def _timed(timings: dict | None, what: str):
    t0 = time.perf_counter()
    yield
    if timings is not None:
        timings[what] = timings.get(what, 0.0) + time.perf_counter() - t0


def _split_key(con, table: str, cols: list[str], key: str | None, cfg) -> tuple[str | None, int]:
    """The column that links rows to ``splits.example_id`` and the rows it links (None, 0: no splits
    table, or nothing matches).

    A table derived from ``examples`` may carry its own id next to the example's: ``sft_examples`` has
    ``example_id`` (one per rendered example) and ``source_row_id`` (the example it was rendered from,
    the id ``splits`` knows). Joining on the wrong one finds no split and reports no leakage.
    """
    if not table_exists(con, cfg.splits_table):
        return None, 0
    lower = {c.lower(): c for c in cols}
    cands = ([_pick(cols, cfg.split_key_column, (), "split key column", table)] if cfg.split_key_column
             else [c for c in dict.fromkeys([key, lower.get("source_row_id")]) if c])
    if not cands:
        return None, 0
    s = qi(cfg.splits_table)
    hits = con.execute("select " + ", ".join(
        f"(select count(*) from {qi(table)} as x where cast(x.{qi(c)} as varchar) in (select example_id from {s}))"
        for c in cands)).fetchone()
    best = max(range(len(cands)), key=lambda i: hits[i])  # ties: the key
    return (cands[best], hits[best]) if hits[best] else (None, 0)


def _profile(con, t, prof, text, key, split, split_key, cfg) -> None:
    """One pass over the raw text: normalized text, lengths, PII flags, split (a temp table)."""
    c = qi(text)
    if split:
        base, split_col = t, qi(split)
    elif split_key:
        base = (f"(select x.*, s.split as _split_ from {t} as x left join {qi(cfg.splits_table)} as s "
                f"on s.example_id = cast(x.{qi(split_key)} as varchar))")
        split_col = "_split_"
    else:
        base, split_col = t, "null"
    pii = [f"regexp_matches({c}, {lit(pat)}) as _{k}, strpos({c}, {lit(tok)}) > 0 as _{k}_masked"
           for k, (tok, pat) in PII_PATTERNS.items()]
    ws = normalize_expr(text)  # whitespace collapsed and trimmed, computed once
    con.execute(f"""create temp table {prof} as
        select
            _key, lower(_ws) as _norm, _chars,
            case when _ws = '' then 0 else length(_ws) - length(replace(_ws, ' ', '')) + 1 end as _tokens,
            _split, {', '.join(f'_{k}, _{k}_masked' for k in PII_PATTERNS)}
        from (
            select
                {'cast(' + qi(key) + ' as varchar)' if key else 'null'} as _key,
                {ws} as _ws,
                length({c}) as _chars,
                {split_col} as _split,
                {', '.join(pii)}
            from {base} as b
        ) as p""")


def _text_checks(con, prof, text, key, cfg, add) -> None:
    dup = con.execute(f"select count(_norm) - count(distinct _norm) from {prof}").fetchone()[0]
    add("duplicate_text", text, dup, "rows whose normalized text (lowercase, collapsed spaces) appeared earlier")
    for unit in ("chars", "tokens"):
        x = f"_{unit}"
        q = con.execute(f"select min({x}), quantile_cont({x}, [0.05, 0.25, 0.5, 0.75, 0.95]), max({x}), avg({x}) "
                        f"from {prof}").fetchone()
        if q[0] is None:
            continue
        lo_, (p05, p25, p50, p75, p95), hi_, mean = q
        for stat, v in (("min", lo_), ("p05", p05), ("p25", p25), ("p50", p50), ("p75", p75), ("p95", p95),
                        ("max", hi_), ("mean", mean)):
            add(f"length_{unit}_{stat}", text, v)
        width = max(1, -(-(hi_ - lo_ + 1) // cfg.histogram_bins))
        for b, k in con.execute(f"select ({x} - {lo_}) // {width} as b, count(*) from {prof} "
                                f"where {x} is not null group by b order by b").fetchall():
            start = lo_ + int(b) * width
            add(f"length_{unit}_hist", text, k, f"[{start}, {start + width})")
        fence_lo, fence_hi = p25 - cfg.outlier_iqr * (p75 - p25), p75 + cfg.outlier_iqr * (p75 - p25)
        cond = f"{x} < {fence_lo} or {x} > {fence_hi}"
        out = con.execute(f"select count(*) from {prof} where {cond}").fetchone()[0]
        ex = ""
        if out and key:
            keys = con.execute(f"select _key from {prof} where {cond} order by {x} desc, _key limit 5").fetchall()
            ex = "; e.g. " + ", ".join(k[0] for k in keys)
        add(f"length_{unit}_outliers", text, out, f"outside [{fence_lo:g}, {fence_hi:g}] {unit} "
                                                   f"(quartiles -/+ {cfg.outlier_iqr:g} IQR){ex}")


def _near_dup_checks(con, prof, text, cfg, add, leakage: bool) -> None:
    # "earlier" = smaller key (or, without a key, smaller normalized text)
    ctes = near_dup_ctes(prof, "nd", ["_key", "_split"], column="_norm", threshold=cfg.near_dup_threshold,
                         ngram=cfg.ngram, unit="words", bands=cfg.bands, rows_per_band=cfg.rows_per_band,
                         order_by=["_key"], verify="minhash", output="pairs", normalize=False, neighbours=0,
                         band_hash=True)
    # DuckDB-only report SQL: materialize only the CTEs both counts read (the rest stream)
    both = {"nd__rows", "nd__texts", "nd"}
    with_ = ",\n".join(f"{name} as {'materialized ' if name in both else ''}(\n{sql}\n)" for name, sql in ctes)
    near, pairs = con.execute(
        f"with {with_} select "
        f"(select count(*) from nd__rows as r inner join nd__texts as x on x._text = r._text "
        f" left join (select distinct _tid from nd) as p on p._tid = x._tid "
        f" where r._pos <> x._tid or p._tid is not null), "
        f"(select count(*) from nd as p inner join nd__rows as a on a._pos = p._tid "
        f" inner join nd__rows as b on b._pos = p._other where a._split <> b._split)").fetchone()
    add("near_duplicate_text", text, near,
        f"rows equal or near (word {cfg.ngram}-gram jaccard >= {cfg.near_dup_threshold}, MinHash "
        f"{cfg.bands}x{cfg.rows_per_band}) to an earlier row; exact duplicates included")
    if leakage:
        add("leakage_near_pairs", text, pairs, "near-duplicate text pairs whose first rows sit in different splits")


def _label_checks(con, t, label, n, add) -> None:
    counts = con.execute(f"select cast({qi(label)} as varchar), count(*) from {t} group by 1 order by 2 desc, 1"
                         ).fetchall()
    for value, k in counts:
        add("label_count", label, k, f"{value} ({k / n:.1%})" if value is not None else f"null ({k / n:.1%})")
    present = [k for v, k in counts if v is not None]
    if present:
        add("label_classes", label, len(present))
        add("label_imbalance_ratio", label, max(present) / min(present), "largest class / smallest class")


def _leakage_checks(con, prof, text, cfg, add) -> None:
    for name, k in con.execute(f"select _split, count(*) from {prof} group by 1 order by 1").fetchall():
        add("split_count", None, k, str(name))
    leak = con.execute(f"select count(*), coalesce(sum(n), 0) from (select _norm, count(*) as n from {prof} "
                       f"where _norm is not null and _split is not null group by _norm "
                       f"having count(distinct _split) > 1) as l").fetchone()
    add("leakage_exact_texts", text, leak[0], f"normalized texts found in more than one split ({leak[1]} rows)")


def latest_report(con: duckdb.DuckDBPyConnection, table: str | None = None) -> pd.DataFrame:
    where = "where table_name = ?" if table else ""
    rid = con.execute(f"select report_id from quality_report {where} order by created_at desc limit 1",
                      [table] if table else []).fetchone()
    if rid is None:
        raise ValueError(f"no quality report{' for ' + table if table else ''} in the workspace")
    return con.execute("select * from quality_report where report_id = ? order by check_name, column_name",
                       [rid[0]]).df()


def summary(report: pd.DataFrame) -> pd.DataFrame:
    """The headline checks of a report (no histogram or per-label rows)."""
    per_value = ["label_count", "split_count", "null_count"]
    keep = ~report["check_name"].str.endswith("_hist") & ~report["check_name"].isin(per_value)
    return report.loc[keep, ["check_name", "column_name", "value", "detail"]].reset_index(drop=True)


def plot_report(report: pd.DataFrame):
    """Length histograms (chars, tokens), label balance and nulls per column, as one matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for ax, unit in zip(axes[0], ("chars", "tokens")):
        h = report[report["check_name"] == f"length_{unit}_hist"]
        ax.bar(range(len(h)), h["value"], color="#4c72b0")
        ax.set_xticks(range(len(h)), [d.split(",")[0].lstrip("[") for d in h["detail"]], rotation=90, fontsize=7)
        ax.set_title(f"length in {unit} (rows per bucket)")
    lab = report[report["check_name"] == "label_count"]
    axes[1][0].barh([d.rsplit(" (", 1)[0] for d in lab["detail"]], lab["value"], color="#55a868")
    axes[1][0].set_title("label balance (rows)")
    nulls = report[(report["check_name"] == "null_count") & (report["value"] > 0)]
    axes[1][1].barh(nulls["column_name"], nulls["value"], color="#c44e52")
    axes[1][1].set_title("nulls per column" + ("" if len(nulls) else ": none"))
    fig.suptitle(f"quality report {report['report_id'].iloc[0]} on {report['table_name'].iloc[0]}")
    fig.tight_layout()
    return fig
