"""Rendering prompt templates over 1,000,000 rows: SQL-compiled vs batched Jinja vs a row-at-a-time loop.

    python benchmarks/template_render.py                 # 1,000,000 rows
    python benchmarks/template_render.py --rows 100000 --threads 2

Builds a synthetic ``examples`` table (distinct texts, 6 intents, replies) in an in-memory DuckDB and
times ``workbench.template_sql.apply_templates`` writing ``sft_examples`` (rendering + insert), for:

* ``sql``: the 5 intent templates, one chosen per row by the stable hash, compiled to SQL;
* ``jinja-batched``: the same templates with compilation off (sandboxed Jinja over Arrow batches);
* ``mixed``: ``ce-list-kinds``, whose completion does not compile (prompt in SQL, completion batched);
* ``sql -> workspace``: the compiled path writing into a DuckLake workspace (Parquet) instead of memory;
* ``row loop``: the naive baseline, ``templates.render`` per row in a Python loop (measured on a slice).

Every path's output equals ``templates.render`` row by row (tests/test_template_sql.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import duckdb

from workbench import template_sql as S
from workbench import templates as T


def make_examples(con: duckdb.DuckDBPyConnection, rows: int) -> None:
    con.execute(f"""
        create or replace table examples as
        select
            'messages.csv:' || i as example_id,
            ['email', 'chat', 'app', 'phone_transcript'][1 + i % 4] as channel,
            ['Hi, ', 'Hello, ', '', 'Good morning, '][1 + i % 4]
                || ['I was charged twice for order #', 'Please refund order #', 'Where is my parcel, order #',
                    'The app crashes since order #', 'I cannot log in after order #',
                    'Cancel my subscription and order #'][1 + i % 6]
                || (100000 + i * 7919 % 900000)
                || [' Thanks.', ' My card is <CARD>.', '', ' Mail me at <EMAIL>.', ' Please help.'][1 + i % 5]
                as text,
            ['billing', 'refund', 'shipping', 'technical_issue', 'account_access', 'cancellation'][1 + i % 6] as intent,
            'Thanks for reaching out about order #' || (100000 + i * 7919 % 900000)
                || '. I have looked into it and fixed the problem.' as reply
        from range({rows}) t(i)
    """)


def timed(label: str, rows: int, fn) -> dict:
    """Wall seconds, and CPU seconds of this process (all threads): on a shared machine the CPU figure
    is the steadier one, wall time grows with everyone else's load."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    secs, cpu_secs = time.perf_counter() - start, time.process_time() - cpu
    return {"method": label, "rows": rows, "seconds": secs, "rows_per_s": rows / secs,
            "cpu_seconds": cpu_secs, "rows_per_cpu_s": rows / cpu_secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--loop-rows", type=int, default=50_000, help="rows for the row-at-a-time baseline")
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads (0: all cores)")
    args = ap.parse_args()

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    con = duckdb.connect()
    if args.threads:
        con.execute(f"set threads = {args.threads}")
    make_examples(con, args.rows)
    n = args.rows
    results = []

    def run(**kw):
        def go():
            S.apply_templates(con, kw.pop("task", "intent_classification"), mode="replace", validate=False, **kw)
        return go

    lib = T.list_templates("intent_classification")
    results.append(timed("validate the 5 intent templates against the table", n, lambda: T.check_library(
        lib, con=con, table="examples", task="intent_classification")))
    results.append(timed("sql (5 intent templates, random choice)", n, run(choice="random")))
    assert con.execute("select count(*) from sft_examples").fetchone()[0] == n
    results.append(timed("jinja-batched (same, compilation off)", n, run(choice="random", compile_sql=False)))
    results.append(timed("mixed (ce-list-kinds: SQL prompt, batched completion)", n,
                         run(task="contact_extraction", choice="ce-list-kinds")))

    with tempfile.TemporaryDirectory() as ws:
        import workbench
        from workbench.workspace import write_table
        wcon = workbench.connect(ws)
        if args.threads:
            wcon.execute(f"set threads = {args.threads}")
        write_table(wcon, "examples", con.execute("select * from examples").to_arrow_table())
        results.append(timed("sql -> DuckLake workspace (Parquet)", n, lambda: S.apply_templates(
            wcon, "intent_classification", choice="random", mode="replace", validate=False)))
        wcon.close()

    slice_rows = con.execute(f"select * from examples limit {args.loop_rows}").to_arrow_table().to_pylist()

    def loop():
        out = []
        for r in slice_rows:
            t = lib[S.stable_hash(f"7:intent_classification:{r['example_id']}") % len(lib)]
            out.append(T.render(t, r))
        return out
    results.append(timed(f"row loop baseline (templates.render, {args.loop_rows} rows)", args.loop_rows, loop))

    threads = con.execute("select current_setting('threads')").fetchone()[0]
    print(f"template rendering, {n:,} rows, DuckDB {duckdb.__version__}, {threads} threads, "
          f"Python {platform.python_version()}, {platform.machine()}")
    print(f"load average before: {load}")
    print(f"{'method':58s} {'rows':>10s} {'wall s':>7s} {'rows/s':>10s} {'cpu s':>7s} {'rows/cpu-s':>11s}")
    for r in results:
        print(f"{r['method']:58s} {r['rows']:>10,d} {r['seconds']:>7.2f} {r['rows_per_s']:>10,.0f} "
              f"{r['cpu_seconds']:>7.2f} {r['rows_per_cpu_s']:>11,.0f}")


if __name__ == "__main__":
    main()
