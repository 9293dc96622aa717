"""Exactness check for changes to the preparation path: build its tables with two code trees, compare.

    PYTHONPATH=/path/to/tree-a python benchmarks/prep_compare.py build /tmp/workbench-bench-1000000 /tmp/ws-a
    PYTHONPATH=/path/to/tree-b python benchmarks/prep_compare.py build /tmp/workbench-bench-1000000 /tmp/ws-b
    python benchmarks/prep_compare.py compare /tmp/ws-a /tmp/ws-b     # exit status 1 on any difference

``build`` runs the benchmark's workbench path (``data.ingest``, ``02_int_messages``, ``02_examples``,
``data.split``, ``memory_limit = 2GB``) into a fresh workspace. ``compare`` checks ``stg_messages``,
``ingest_rejects``, ``int_messages``, ``examples``, ``splits`` and ``split_leakage`` as multisets
(``except all`` both ways) with the same column names and types; the load times ``ingested_at`` and
``assigned_at`` are left out.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

TABLES = [("stg_messages", ""), ("ingest_rejects", "ingested_at"), ("int_messages", ""), ("examples", ""),
          ("splits", "assigned_at"), ("split_leakage", "")]


def build(data: Path, ws: Path) -> None:
    import workbench
    from workbench import data as wdata
    from workbench.workspace import run_sql_file

    shutil.rmtree(ws, ignore_errors=True)
    con = workbench.connect(ws)
    con.execute("set memory_limit = '2GB'")
    wdata.ingest(con, [data / "messages.csv", data / "messages_app.jsonl"], table="stg_messages")
    run_sql_file(con, "02_int_messages", {"min_chars": 3, "max_chars": 4000})
    run_sql_file(con, "02_examples", {})
    wdata.split(con, train_fraction=0.8, validation_fraction=0.1, split_seed=42, stratify=True)


def compare(a: Path, b: Path) -> bool:
    import duckdb

    from workbench.workspace import _config

    con = duckdb.connect(config=_config())
    con.execute(f"attach 'ducklake:sqlite:{a}/wb.sqlite' as a (read_only)")
    con.execute(f"attach 'ducklake:sqlite:{b}/wb.sqlite' as b (read_only)")
    same = True
    for table, skip in TABLES:
        ca, cb = (con.execute(f"describe {side}.{table}").fetchall() for side in "ab")
        cols = ", ".join(f'"{c[0]}"' for c in ca if c[0] != skip)
        n = con.execute(f"select count(*) from a.{table}").fetchall()[0][0]
        only_a, only_b = (con.execute(f"select count(*) from (select {cols} from {x}.{table} except all "
                                      f"select {cols} from {y}.{table})").fetchall()[0][0]
                          for x, y in (("a", "b"), ("b", "a")))
        ok = ca == cb and only_a == only_b == 0
        same &= ok
        print(f"{table:16s} rows {n:9,d}  columns/types {'same' if ca == cb else 'DIFFER'}  "
              f"only in a {only_a}  only in b {only_b}  {'ok' if ok else 'DIFFERENT'}")
    return same


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("build", "compare"):
        sys.exit(__doc__)
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(0 if compare(Path(sys.argv[2]), Path(sys.argv[3])) else 1)
