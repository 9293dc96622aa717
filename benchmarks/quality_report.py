"""Benchmark: the data quality report on a generated table of N support messages (default 5,000,000).

    python benchmarks/quality_report.py                 # 5M rows, temp workspace
    python benchmarks/quality_report.py --rows 200000 --no-near-dup

Rows are generated in DuckDB (word salad from a support vocabulary, 6 intents, splits, about 5%
exact duplicates, 5% near-duplicates, some emails / phone numbers / card numbers, a few very long
messages) and written to a fresh workspace table; the report then runs over all of them.
Prints the generation time, the report time (with and without the near-duplicate check) and the
headline figures. Results are recorded in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import duckdb

import workbench
from workbench.quality import QualityConfig, quality_report, summary

VOCAB = ("i my the a to for and is was not it on in with please help thanks order account card charge "
         "charged twice refund money back parcel package delivery arrived late never tracking number "
         "password login log reset locked app crash error update screen settings cancel subscription "
         "plan renew invoice billing payment address wrong broken damaged return label store week month "
         "today yesterday still again support agent email phone").split()
INTENTS = ["billing", "refund", "shipping", "technical_issue", "account_access", "cancellation"]

GENERATE = """
create or replace table bench_messages as
with ids as (
    select
        range as i,
        -- every 20th row repeats the previous row's text (exact duplicate), every 20th + 1 the text
        -- of two rows back plus one word (near-duplicate); the rest get their own text
        case when range % 20 = 0 and range > 0 then range - 1 when range % 20 = 1 and range > 1 then range - 2
             else range end as s
    from range({rows})
),
texts as (
    select i, s,
        array_to_string(list_transform(range(cast(6 + hash(s, 'n') % 24 as bigint)),
            lambda k: {vocab}[cast(1 + hash(s, k) % {nvocab} as bigint)]), ' ') as body
    from ids
)
select
    'ex' || i as example_id,
    {intents}[cast(1 + hash(i, 'intent') % 6 as bigint)] as intent,
    -- splits follow the text's seed (duplicates share a split) except for 1% of the near-duplicates: leakage
    case when hash(case when i % 100 = 1 then i else s end, 'split') % 10 < 8 then 'train'
         when hash(case when i % 100 = 1 then i else s end, 'split') % 10 < 9 then 'validation'
         else 'test' end as split,
    case when i % 100000 = 11 then repeat(body || ' ', 12) else body end
        || case when i % 20 = 1 and i > 1 then ' thanks' else '' end
        || case when i % 50 = 3 then ' call me at 555-' || lpad(cast(i % 1000 as varchar), 3, '0') || '-'
                                     || lpad(cast(i % 10000 as varchar), 4, '0') else '' end
        || case when i % 70 = 5 then ' my email is user' || i || '@example.com' else '' end
        || case when i % 500 = 7 then ' card 4111 1111 1111 ' || lpad(cast(i % 10000 as varchar), 4, '0')
                else '' end as text
from texts
"""


def generate(con: duckdb.DuckDBPyConnection, rows: int) -> None:
    vocab = "[" + ", ".join(f"'{w}'" for w in VOCAB) + "]"
    intents = "[" + ", ".join(f"'{w}'" for w in INTENTS) + "]"
    con.execute(GENERATE.format(rows=rows, vocab=vocab, nvocab=len(VOCAB), intents=intents))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--workspace", help="default: a temporary folder (a bench_messages table there is reused)")
    ap.add_argument("--memory-limit", default="6GB", help="DuckDB memory_limit (default 6GB)")
    ap.add_argument("--no-near-dup", action="store_true", help="skip the run with the near-duplicate check")
    args = ap.parse_args()
    ws = args.workspace or tempfile.mkdtemp(prefix="wb-bench-quality-")
    con = workbench.connect(ws)
    # a shared machine: DuckDB spills to disk (<workspace>/.tmp) beyond this instead of taking most of the RAM
    con.execute(f"set memory_limit = '{args.memory_limit}'")
    if workbench.table_exists(con, "bench_messages") and \
            con.execute("select count(*) from bench_messages").fetchone()[0] == args.rows:
        print(f"reusing bench_messages in {ws}")
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        generate(con, args.rows)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s wall, "
              f"{time.process_time() - c0:.1f}s CPU ({ws})")
    n = con.execute("select count(*) from bench_messages").fetchone()[0]
    timings = {}
    for near in ([False] if args.no_near_dup else [False, True]):
        parts: dict[str, float] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        rep = quality_report(con, "bench_messages", QualityConfig(near_dup=near), timings=parts)
        timings[near] = time.perf_counter() - t0
        print(f"quality report on {n:,} rows, near-dup {'on ' if near else 'off'}: {timings[near]:.1f}s wall, "
              f"{time.process_time() - c0:.1f}s CPU; load average {os.getloadavg()[0]:.1f}")
        for what, sec in parts.items():
            print(f"    {what}: {sec:.1f}s wall")
    print(summary(rep).to_string(index=False, max_colwidth=70))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, memory_limit {args.memory_limit}; "
          f"duckdb {duckdb.__version__}; python "
          f"{platform.python_version()}")


if __name__ == "__main__":
    main()
