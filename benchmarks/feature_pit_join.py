"""Point-in-time join benchmark: 1,000,000 entity rows against 10,000,000 feature rows.

    python benchmarks/feature_pit_join.py                       # full size, temporary workspace
    python benchmarks/feature_pit_join.py --entities 10000 --features 100000   # a quick run

Writes a random feature history (``--keys`` entities, one year of timestamps) into a temporary
workspace and registers it as a feature group (``workbench.features.register``: validation,
statistics, Parquet under DuckLake), then times ``workbench.features.retrieve`` (ASOF JOIN) for a
random entity table, into a workspace table and into a pandas DataFrame. Checks the result: one
row per entity row, no feature newer than its entity timestamp, none older than the TTL, and a
brute-force recomputation on a sample of rows.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

import workbench  # noqa: E402
from workbench import features as fs  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process, all threads (wall time depends on who else shares the cores)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu

    def __str__(self):
        return f"{self.wall:7.2f} s wall {self.cpu:7.2f} s CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=1_000_000, help="entity rows to join")
    ap.add_argument("--features", type=int, default=10_000_000, help="feature rows (history)")
    ap.add_argument("--keys", type=int, default=100_000, help="distinct entity keys")
    ap.add_argument("--ttl", default="30 days", help="time-to-live of a feature value")
    ap.add_argument("--check", type=int, default=2000, help="entity rows re-checked by brute force")
    ap.add_argument("--workspace", help="workspace folder (default: a temporary one, deleted after)")
    args = ap.parse_args()

    root = Path(args.workspace or tempfile.mkdtemp(prefix="wb-pit-bench-"))
    con = workbench.connect(root)
    print(f"duckdb {duckdb.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"threads {con.execute('select current_setting(' + repr('threads') + ')').fetchone()[0]}, "
          f"load average {os.getloadavg()[0]:.1f}")
    try:
        # Distinct (key, time) pairs: key = i % keys; each key's snapshots are spread over a year,
        # plus a jitter smaller than their spacing. Same data on every run and machine.
        with Timer() as t_gen:
            con.execute(f"""
                create or replace table bench_customer_history as
                select (i % {args.keys})::bigint as customer_id,
                       timestamp '2024-01-01' + to_seconds(((i // {args.keys}) * 86400 * 365
                            // {max(1, args.features // args.keys)}
                            + (i % 997))::bigint) as updated_at,
                       (i % 7)::integer as plan_tier,
                       ((i * 7919) % 100000) / 100.0 as monthly_spend,
                       (i % 3 = 0) as churn_risk
                from range({args.features}) t(i)""")

        with Timer() as t_reg:
            res = fs.register(con, fs.FeatureGroup(
                "bench_customer", "bench_customer_history", ["customer_id"], "updated_at",
                features=[fs.Feature("plan_tier", "INTEGER", "plan tier", min=0, max=6),
                          fs.Feature("monthly_spend", "DOUBLE", "spend", min=0),
                          fs.Feature("churn_risk", "BOOLEAN", "flag")],
                description="benchmark history"))

        con.execute(f"""
            create or replace table bench_entities as
            select i as entity_row, ((i * 48271) % {args.keys})::bigint as customer_id,
                   timestamp '2024-01-01' + to_seconds(((i * 2654435761) % (86400 * 400))::bigint) as ts
            from range({args.entities}) t(i)""")

        with Timer() as t_table:
            n = fs.retrieve(con, "bench_entities", "bench_customer", timestamp_column="ts", ttl=args.ttl,
                            out_table="bench_entity_features")
        with Timer() as t_df:
            df = fs.retrieve(con, "select * from bench_entities", "bench_customer", timestamp_column="ts",
                             ttl=args.ttl)

        # checks: every entity row once, no future values, TTL respected, a brute-force sample agrees
        assert n == len(df) == args.entities, (n, len(df))
        bad = con.execute(f"""select count(*) filter (where bench_customer__event_time > ts),
                                     count(*) filter (where bench_customer__event_time < ts - interval '{args.ttl}')
                              from bench_entity_features""").fetchone()
        assert bad == (0, 0), bad
        mismatches = con.execute(f"""
            with sample as (select * from bench_entity_features order by entity_row limit {args.check}),
            brute as (
                select s.entity_row, max(h.updated_at) as latest
                from sample s join bench_customer_history h
                    on h.customer_id = s.customer_id and h.updated_at <= s.ts
                group by s.entity_row)
            select count(*) from sample s left join brute b using (entity_row)
            where (case when b.latest >= s.ts - interval '{args.ttl}' then b.latest end)
                  is distinct from s.bench_customer__event_time""").fetchone()[0]
        assert mismatches == 0, f"{mismatches} rows differ from the brute-force join"
        hit = con.execute("select avg((bench_customer__event_time is not null)::int) "
                          "from bench_entity_features").fetchone()[0]

        print(f"feature rows {args.features:,} ({args.keys:,} keys), entity rows {args.entities:,}, "
              f"ttl {args.ttl}: {hit:.1%} rows got values")
        print(f"generate history                        {t_gen}")
        print(f"register v{res.version} (validate, stats, write)     {t_reg}")
        print(f"point-in-time join -> workspace table   {t_table}")
        print(f"point-in-time join -> pandas DataFrame  {t_df}")
        print(f"load average after: {os.getloadavg()[0]:.1f} (wall time grows when others share the cores)")
        print(f"checked: no future values, TTL held, {args.check} rows equal a brute-force join")
    finally:
        con.close()
        if not args.workspace:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
