"""The ``workbench`` command line.

    workbench run [-p NAME VALUE]... [--only STEP]...   # the notebooks, headless (papermill)
    workbench sql "select * from row_fate limit 5" --format table
    workbench demo-data --rows 5000 --out data/sample
    workbench ingest data/sample/messages.csv --table stg_messages
    workbench label import export.csv --label-set intent --annotator-column annotator
"""
from __future__ import annotations

import argparse
import json
import sys

from .workspace import WorkspaceError


def _cmd_run(args) -> int:
    from .pipeline import PipelineError, run

    try:
        out = run(dict(args.param or []), only=args.only, with_=args.with_, workspace=args.workspace,
                  log_output=args.log_output)
    except PipelineError as exc:
        print(f"workbench run: {exc}", file=sys.stderr)
        return 1
    print(f"executed notebooks: {out}")
    return 0


def _print_frame(df, fmt: str) -> None:
    if fmt == "csv":
        df.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        print(df.to_json(orient="records", date_format="iso"))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(no rows)")


def _cmd_sql(args) -> int:
    import duckdb

    from .workspace import connect, transaction

    con = connect(args.workspace)
    text = args.statement if args.statement != "-" else sys.stdin.read()

    def body(c):  # the whole statement list in one transaction: it all lands or none of it
        res = c.execute(text)
        return res.df() if res.description else None

    try:
        df = transaction(con, body, what="workbench sql")
    except duckdb.Error as exc:
        print(f"workbench sql: {exc}", file=sys.stderr)
        return 1
    if df is not None:
        _print_frame(df, args.format)
    return 0


def _cmd_demo_data(args) -> int:
    from .sample import write_sample

    files = write_sample(args.out, rows=args.rows, seed=args.seed)
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def _cmd_ingest(args) -> int:
    from .data import ingest
    from .workspace import connect

    con = connect(args.workspace)
    report = ingest(con, args.files, table=args.table, fmt=args.format, mode=args.mode)
    print(json.dumps(report, indent=2, default=str))
    return 0


def _cmd_label(args) -> int:
    from . import labeling as L
    from .workspace import connect

    con = connect(args.workspace)
    if args.label_command == "import":
        try:
            report = L.import_labels(
                con, args.file, label_set=args.label_set, item_column=args.item_column,
                value_column=args.value_column, annotator_column=None if args.annotator else args.annotator_column,
                annotator=args.annotator, created_at_column=args.created_at_column,
                choices=args.choices.split(",") if args.choices else None, pool=args.pool)
        except L.LabelImportError as exc:
            print(f"workbench label import: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2))
    elif args.label_command == "status":
        L.ensure_tables(con)
        sets = [args.label_set] if args.label_set else [
            r[0] for r in con.execute("select label_set from label_sets order by label_set").fetchall()]
        for ls in sets:
            print(f"label set {ls}:")
            _print_frame(L.queue_status(con, ls, L.QueueConfig(pool=args.pool, max_items=args.max_items)), args.format)
        if not sets:
            print("(no label sets yet)")
    else:
        _print_frame(L.build_labels_final(con), args.format)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", help="workspace folder (default: $WORKBENCH_HOME or ./workspace)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute the pipeline notebooks in order with papermill")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter (repeatable); each notebook gets the ones it declares")
    r.add_argument("--only", action="append", metavar="STEP", help="run only this step (number or name)")
    r.add_argument("--with", dest="with_", action="append", metavar="STEP", help="also run an optional step")
    r.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("sql", help="run SQL on the workspace ('-' reads standard input)")
    s.add_argument("statement")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=_cmd_sql)

    d = sub.add_parser("demo-data", help="write the deterministic, messy sample data set")
    d.add_argument("--rows", type=int, default=3000, help="labeled support messages (default 3000)")
    d.add_argument("--out", default="data/sample", help="output folder")
    d.add_argument("--seed", type=int, default=7)
    d.set_defaults(func=_cmd_demo_data)

    i = sub.add_parser("ingest", help="load CSV / JSONL / Parquet files into a workspace table")
    i.add_argument("files", nargs="+")
    i.add_argument("--table", required=True)
    i.add_argument("--format", choices=["auto", "csv", "jsonl", "parquet"], default="auto")
    i.add_argument("--mode", choices=["replace", "append"], default="replace")
    i.set_defaults(func=_cmd_ingest)

    lb = sub.add_parser("label", help="labels: import another tool's export, queue status, build labels_final")
    lsub = lb.add_subparsers(dest="label_command", required=True)
    li = lsub.add_parser("import", help="append labels from a CSV/JSONL export (all rows valid, or nothing)")
    li.add_argument("file")
    li.add_argument("--label-set", default="intent", help="label set the values belong to (default intent)")
    li.add_argument("--item-column", default="item_id")
    li.add_argument("--value-column", default="value")
    li.add_argument("--annotator-column", default="annotator")
    li.add_argument("--annotator", help="one annotator name for every row (instead of --annotator-column)")
    li.add_argument("--created-at-column", help="column with each label's timestamp (default: import time)")
    li.add_argument("--choices", help="comma-separated allowed values (registers the label set)")
    li.add_argument("--pool", default="label_pool", help="item ids must exist in this table (when it exists)")
    ls_ = lsub.add_parser("status", help="per annotator: assigned, done, skipped, remaining")
    ls_.add_argument("--label-set", help="one label set (default: all)")
    ls_.add_argument("--pool", default="label_pool")
    ls_.add_argument("--max-items", type=int, default=60, help="queue size of open queues (as in notebook 03)")
    lf = lsub.add_parser("final", help="rebuild labels_final from labels (majority vote, adjudication)")
    for q in (ls_, lf):
        q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    li.set_defaults(func=_cmd_label)
    ls_.set_defaults(func=_cmd_label)
    lf.set_defaults(func=_cmd_label)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "workspace", None):
        import os
        os.environ["WORKBENCH_HOME"] = args.workspace
    try:
        return int(args.func(args) or 0)
    except (WorkspaceError, ValueError, FileNotFoundError) as exc:
        print(f"workbench {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
