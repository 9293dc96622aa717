"""Ingest + clean + dedup + split on generated messages: workbench (DuckDB SQL) vs Polars vs pandas.

    python benchmarks/prep_pipeline.py --rows 5000000          # all three engines, one run
    python benchmarks/prep_pipeline.py --rows 200000 --engines workbench,polars

Each engine runs in its own process (so peak memory is its own) on the same files (the sample
generator's messages.csv + messages_app.jsonl, malformed lines included) and does the same work:
parse (malformed rows set aside), NFC + whitespace normalization, PII masking (3 regexes), typing and
filters, exact dedup on the lower-cased text keeping the earliest row, and a stratified split from
md5(seed:key); output written as Parquet. Prints rows/s, peak RSS and the ratios against workbench.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
CARD = r"\b(?:\d[ -]?){12,18}\d\b"
PHONE = r"(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}\b"
INTENTS = ["billing", "refund", "shipping", "technical_issue", "account_access", "cancellation"]
TRAIN, VAL, SEED = 0.8, 0.1, 42


def run_workbench(data: Path, out: Path) -> int:
    import workbench
    from workbench import data as wdata
    from workbench.workspace import ROW_GROUP_SIZE, run_sql_file

    con = workbench.connect(out / "workspace")
    con.execute("set memory_limit = '2GB'")  # spill rather than grow: the goal is < 3 GB peak
    wdata.ingest(con, [data / "messages.csv", data / "messages_app.jsonl"], table="stg_messages")
    run_sql_file(con, "02_int_messages", {"min_chars": 3, "max_chars": 4000})
    run_sql_file(con, "02_examples", {})
    wdata.split(con, train_fraction=TRAIN, validation_fraction=VAL, split_seed=SEED, stratify=True)
    # the workspace's row group size (each engine writes with its own settings; Polars: zstd)
    con.execute(f"copy (select e.*, s.split from examples e join splits s using (example_id)) "
                f"to '{out / 'examples.parquet'}' (format parquet, row_group_size {ROW_GROUP_SIZE})")
    return con.execute("select count(*) from splits").fetchone()[0]


def _fraction_md5(keys) -> list[float]:
    import hashlib

    return [int(hashlib.md5(f"{SEED}:{k}".encode()).hexdigest()[:8], 16) / 2**32 for k in keys]


def run_polars(data: Path, out: Path) -> int:
    import polars as pl

    csv = pl.read_csv(data / "messages.csv", infer_schema=False, ignore_errors=True, encoding="utf8-lossy",
                      truncate_ragged_lines=True)  # polars cannot set ragged rows aside: it truncates them
    csv = csv.with_row_index("line", offset=2).with_columns(
        (pl.lit("messages.csv:") + pl.col("line").cast(pl.String)).alias("source_row_id"))
    lines = pl.read_csv(data / "messages_app.jsonl", has_header=False, separator="\x1e", quote_char=None,
                        new_columns=["raw"], encoding="utf8-lossy", infer_schema=False)
    lines = lines.with_row_index("line", offset=1).filter(
        pl.col("raw").str.starts_with("{") & pl.col("raw").str.ends_with("}") & ~pl.col("raw").str.contains("\ufffd"))
    schema = pl.Struct({c: pl.String for c in csv.columns if c not in ("line", "source_row_id")})
    js = lines.with_columns(pl.col("raw").str.json_decode(schema).alias("j")).unnest("j").drop("raw")
    js = js.with_columns((pl.lit("messages_app.jsonl:") + pl.col("line").cast(pl.String)).alias("source_row_id"))
    df = pl.concat([csv, js], how="diagonal")

    def norm(c):
        return pl.col(c).fill_null("").str.normalize("NFC").str.replace_all(r"\s+", " ").str.strip_chars()

    df = df.with_columns(
        norm("text").str.replace_all(EMAIL, "<EMAIL>").str.replace_all(CARD, "<CARD>")
        .str.replace_all(PHONE, "<PHONE>").alias("text"),
        pl.col("intent").fill_null("").str.strip_chars().str.to_lowercase().alias("intent"),
        pl.col("created_at").str.strip_chars().str.to_datetime(strict=False).alias("created_at"),
        norm("reply").alias("reply"),
    )
    df = df.filter((pl.col("text").str.len_chars() >= 3) & (pl.col("text").str.len_chars() <= 4000)
                   & pl.col("intent").is_in(INTENTS) & pl.col("created_at").is_not_null())
    df = df.with_columns(pl.col("text").str.to_lowercase().alias("text_norm"))
    df = df.sort(["created_at", "source_row_id"]).unique("text_norm", keep="first", maintain_order=True)
    df = df.with_columns(pl.col("source_row_id").map_batches(
        lambda s: pl.Series(_fraction_md5(s.to_list()), dtype=pl.Float64), return_dtype=pl.Float64).alias("u"))
    df = df.with_columns(pl.col("u").rank("ordinal").over("intent").alias("r"),
                         pl.len().over("intent").alias("n"))
    df = df.with_columns(pl.when(pl.col("r") <= (pl.col("n") * TRAIN + 0.5).floor()).then(pl.lit("train"))
                         .when(pl.col("r") <= (pl.col("n") * (TRAIN + VAL) + 0.5).floor()).then(pl.lit("validation"))
                         .otherwise(pl.lit("test")).alias("split"))
    df.write_parquet(out / "examples.parquet")
    return df.height


def run_pandas(data: Path, out: Path) -> int:
    import pandas as pd

    csv = pd.read_csv(data / "messages.csv", dtype=str, keep_default_na=False, on_bad_lines="skip",
                      encoding_errors="replace", engine="c")
    csv["source_row_id"] = "messages.csv:" + (csv.index + 2).astype(str)
    rows = []
    with open(data / "messages_app.jsonl", "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                obj["source_row_id"] = f"messages_app.jsonl:{i}"
                rows.append(obj)
    df = pd.concat([csv, pd.DataFrame(rows)], ignore_index=True)

    def norm(s):
        return s.fillna("").str.normalize("NFC").str.replace(r"\s+", " ", regex=True).str.strip()

    df["text"] = (norm(df["text"]).str.replace(EMAIL, "<EMAIL>", regex=True).str.replace(CARD, "<CARD>", regex=True)
                  .str.replace(PHONE, "<PHONE>", regex=True))
    df["intent"] = df["intent"].fillna("").str.strip().str.lower()
    df["created_at"] = pd.to_datetime(df["created_at"].str.strip(), errors="coerce", format="%Y-%m-%d %H:%M:%S")
    df["reply"] = norm(df["reply"])
    n = df["text"].str.len()
    df = df[(n >= 3) & (n <= 4000) & df["intent"].isin(INTENTS) & df["created_at"].notna()].copy()
    df["text_norm"] = df["text"].str.lower()
    df = df.sort_values(["created_at", "source_row_id"]).drop_duplicates("text_norm", keep="first")
    df["u"] = _fraction_md5(df["source_row_id"])
    df["r"] = df.groupby("intent")["u"].rank(method="first")
    df["n"] = df.groupby("intent")["u"].transform("size")
    df["split"] = "test"
    df.loc[df["r"] <= (df["n"] * (TRAIN + VAL) + 0.5) // 1, "split"] = "validation"
    df.loc[df["r"] <= (df["n"] * TRAIN + 0.5) // 1, "split"] = "train"
    df.to_parquet(out / "examples.parquet")
    return len(df)


ENGINES = {"workbench": run_workbench, "polars": run_polars, "pandas": run_pandas}


def child(engine: str, data: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        kept = ENGINES[engine](data, Path(tmp))
        secs = time.perf_counter() - t0
        # CPU over the same span as the wall time: deleting the outputs (workbench's workspace holds
        # every step's table, about 4 GB at 5M rows) is the harness's cleanup, not the engine's work
        ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"engine": engine, "seconds": secs, "kept": kept, "peak_mb": ru.ru_maxrss / 1024,
                      "cpu_s": ru.ru_utime + ru.ru_stime}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--engines", default="workbench,polars,pandas")
    ap.add_argument("--data", help="folder of generated files (default: a cache folder per row count)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = Path(args.data or Path(tempfile.gettempdir()) / f"workbench-bench-{args.rows}")
    if args.child:
        child(args.child, data)
        return
    if not (data / "BIAS.md").exists():
        from workbench.sample import write_sample

        t0 = time.perf_counter()
        write_sample(data, rows=args.rows, seed=1)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s into {data}")
    input_rows = sum(1 for _ in open(data / "messages.csv", "rb")) - 1 + sum(1 for _ in open(data / "messages_app.jsonl", "rb"))
    results = {}
    for engine in args.engines.split(","):
        p = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--data", str(data), "--child", engine],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{engine}: failed\n{p.stderr[-2000:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        results[engine] = r
        print(f"{engine:10s} {r['seconds']:8.1f} s  {input_rows / r['seconds']:12,.0f} rows/s  "
              f"cpu {r['cpu_s']:7.1f} s  peak {r['peak_mb']:7.0f} MB  kept {r['kept']:,}")
    if "workbench" in results:
        base = results["workbench"]["seconds"]
        for engine, r in results.items():
            if engine != "workbench":
                print(f"workbench vs {engine}: {r['seconds'] / base:.2f}x the speed (wall), "
                      f"{r['cpu_s'] / results['workbench']['cpu_s']:.2f}x less CPU")
    print(f"input lines: {input_rows:,}; cpu cores: {os.cpu_count()}; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
