"""The ``workbench`` command line.

    workbench run [-p NAME VALUE]... [--only STEP]...   # the notebooks, headless (papermill)
    workbench sql "select * from row_fate limit 5" --format table
    workbench demo-data --rows 5000 --out data/sample
    workbench ingest data/sample/messages.csv --table stg_messages
    workbench sft --set epochs=4 --set lora=true        # causal-LM fine-tuning (docs/finetune.md)
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


def _cmd_sft(args) -> int:
    import dataclasses

    from .finetune import SFTConfig, config_from_strings, train_sft
    from .workspace import connect

    con = connect(args.workspace)
    try:
        if args.resume:  # the run's own config, with any --set applied on top
            row = con.execute("select config_json from runs where run_id = ?", [args.resume]).fetchone()
            if row is None:
                raise ValueError(f"no run {args.resume!r} in the runs table")
            names = {f.name for f in dataclasses.fields(SFTConfig)}
            saved = {k: v for k, v in json.loads(row[0]).items() if k in names}
            saved["stop_at_step"] = None  # the interruption is over unless --set asks for another
            config = config_from_strings(args.set or [], base=SFTConfig(**saved))
        else:
            config = config_from_strings(args.set or [])
        if args.task:
            config = dataclasses.replace(config, task=args.task)
        if args.model:
            config = dataclasses.replace(config, model=args.model)
        res = train_sft(con, config, resume_from=args.resume, progress=not args.no_progress)
    finally:
        con.close()
    print(json.dumps({k: v for k, v in dataclasses.asdict(res).items() if k != "metrics"}, indent=2, default=str))
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

    f = sub.add_parser("sft", help="supervised fine-tuning of a causal LM on sft_examples + splits")
    f.add_argument("--task", help="sft_examples.task (default intent_classification)")
    f.add_argument("--model", help="offline:tiny-llama (default), a Hugging Face id or a local folder")
    f.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any SFTConfig field (repeatable)")
    f.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its last checkpoint")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_sft)

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
