"""The same preparation on DuckDB and on Spark local[2]: ingest, clean + dedup, split, on generated messages.

    python benchmarks/spark_vs_duckdb.py                      # 2,000,000 rows (generated once, cached)
    python benchmarks/spark_vs_duckdb.py --rows 200000 --master 'local[2]'

Each engine runs in its own process on the same files (the sample generator's messages.csv +
messages_app.jsonl, malformed lines included) into its own fresh workspace, doing exactly what
``workbench run`` does for the messages: ``data.ingest`` (rejects kept), ``02_int_messages.sql`` +
``02_examples.sql`` (normalize, PII masks, filters, dedup), ``data.split`` (``06_splits.sql``), every
table registered in the workspace. Prints seconds per stage (Spark's session start apart) and checks
that both engines kept and split the same examples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(engine: str, data_dir: Path, master: str) -> None:
    import workbench
    from workbench import data
    from workbench.spark import run_sql_file_spark
    from workbench.workspace import run_sql_file

    run = run_sql_file_spark if engine == "spark" else run_sql_file
    timings = {}
    t0 = time.perf_counter()
    if engine == "spark":
        from workbench import spark

        spark.session(master=master)
        timings["session start"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        con = workbench.connect(Path(tmp) / "workspace")
        stages = [
            ("ingest", lambda: data.ingest(con, [data_dir / "messages.csv", data_dir / "messages_app.jsonl"],
                                           table="stg_messages", engine=engine)),
            ("clean + dedup", lambda: [run(con, name, data.CLEAN_DEFAULTS)
                                       for name in ("02_int_messages", "02_examples")]),
            ("split", lambda: data.split(con, engine=engine)),
        ]
        for name, fn in stages:
            t = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - t
        check = con.execute("select count(*), sum(hash(example_id || split)) from splits").fetchone()
    print(json.dumps({"engine": engine, "timings": timings, "kept": check[0], "check": str(check[1])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--master", default="local[2]", help="Spark master for the Spark run")
    ap.add_argument("--data", help="folder of generated files (default: a cache folder per row count)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data_dir = Path(args.data or Path(tempfile.gettempdir()) / f"workbench-bench-{args.rows}")
    if args.child:
        child(args.child, data_dir, args.master)
        return
    if not (data_dir / "BIAS.md").exists():
        from workbench.sample import write_sample

        t0 = time.perf_counter()
        write_sample(data_dir, rows=args.rows, seed=1)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.0f} s into {data_dir}")
    results = {}
    for engine in ("duckdb", "spark"):
        p = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--data", str(data_dir),
                            "--master", args.master, "--child", engine], capture_output=True, text=True)
        lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
        if p.returncode != 0 or not lines:
            print(f"{engine}: failed\n{p.stderr[-3000:]}")
            continue
        results[engine] = json.loads(lines[-1])
    stages = ["session start", "ingest", "clean + dedup", "split"]
    print(f"{'stage':16s} {'duckdb':>10s} {'spark ' + args.master:>16s}")
    for stage in stages:
        cells = [f"{results[e]['timings'][stage]:.1f} s" if e in results and stage in results[e]["timings"] else "-"
                 for e in ("duckdb", "spark")]
        print(f"{stage:16s} {cells[0]:>10s} {cells[1]:>16s}")
    totals = {e: sum(v for k, v in r["timings"].items() if k != "session start") for e, r in results.items()}
    print(f"{'total (no start)':16s} "
          + " ".join(f"{totals.get(e, 0):>{w}.1f} s" for e, w in (("duckdb", 8), ("spark", 14))))
    if len(results) == 2:
        d, s = results["duckdb"], results["spark"]
        same = d["kept"] == s["kept"] and d["check"] == s["check"]
        print(f"same examples and splits on both engines: {same} ({results['duckdb']['kept']:,} examples)")
        print(f"spark / duckdb: {totals['spark'] / totals['duckdb']:.2f}x")
    import duckdb
    import pyspark

    print(f"rows: {args.rows:,}; cpu cores: {os.cpu_count()}; duckdb {duckdb.__version__}; "
          f"pyspark {pyspark.__version__}; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
