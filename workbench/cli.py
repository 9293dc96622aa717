"""The ``workbench`` command line.

    workbench run [-p NAME VALUE]... [--only STEP]...   # the notebooks, headless (papermill)
    workbench sql "select * from row_fate limit 5" --format table
    workbench demo-data --rows 5000 --out data/sample
    workbench ingest data/sample/messages.csv --table stg_messages
    workbench bias report --table examples --group age_band --label intent
    workbench cpt round --until "2026-07-01"          # continued pre-training on what arrived since the last round
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


def _cmd_bias(args) -> int:
    from .bias import BiasConfig
    from .bias_report import data_bias_report, model_bias_report
    from .workspace import connect

    con = connect(args.workspace)
    cfg = BiasConfig(**{k: v for k, v in (("min_group_size", args.min_group_size), ("n_boot", args.n_boot),
                                          ("dpl_threshold", args.dpl_threshold)) if v is not None})
    if args.bias_command == "report":
        reference = json.loads(args.reference) if args.reference else None
        report = data_bias_report(con, table=args.table, group_cols=args.group, label_col=args.label,
                                  strata_col=args.strata, reference=reference, config=cfg, html=not args.no_html)
    else:
        report = model_bias_report(con, args.run_id, args.group, split=args.split, config=cfg,
                                   html=not args.no_html)
    print(report.summary())
    print(f"bias_metrics rows: {len(report.metrics)} (report_id {report.report_id})")
    if report.html_path:
        print(f"html: {report.html_path}")
    return 1 if args.fail_on_warning and report.warnings else 0


def _cmd_cpt(args) -> int:
    from . import cpt
    from .workspace import connect, table_exists

    con = connect(args.workspace)
    if args.cpt_command == "promoted":
        path = cpt.promoted_model(con)
        print(path or "no promoted model yet: run 'workbench cpt round'", file=sys.stdout if path else sys.stderr)
        return 0 if path else 1
    if args.cpt_command == "abandon":
        cpt.abandon_round(con, args.round)
        print(f"round {args.round} abandoned; its documents wait for the next round")
        return 0
    if args.cpt_command == "status":
        wm = cpt.watermark(con)
        print(f"watermark: {'none (no round yet)' if wm is None else f'{wm[0]} / {wm[1]}'}")
        counts = (cpt.corpus_status(con).groupby("state")["n_docs"].sum().to_dict()
                  if table_exists(con, "corpus_documents") else {})  # per round, held out, waiting
        print("corpus documents: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))
        _print_frame(cpt.registry(con)[["model_id", "parent_id", "round", "status", "data_snapshot", "path"]], args.format)
        for line in cpt.decisions(con)[-args.last:]:
            print(line)
        print(f"promoted: {cpt.promoted_model(con)}")
        return 0
    fields = {"model": args.model, "epochs": args.epochs, "lr": args.lr, "replay_fraction": args.replay_fraction,
              "replay_source": args.replay_source, "max_docs": args.max_docs, "threads": args.threads,
              "gates": tuple(g.strip() for g in args.gates.split(",")) if args.gates else None}
    config = cpt.CPTConfig(**{k: v for k, v in fields.items() if v is not None})
    if args.rounds:
        results = cpt.run_rounds(con, config, rounds=args.rounds, progress=args.progress)
    else:
        results = [cpt.run_round(con, config, until=args.until, progress=args.progress)]
        print(results[0].summary())
    rejected = [r for r in results if r.status == "rejected"]
    return 3 if args.fail_on_reject and rejected else 0


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

    b = sub.add_parser("bias", help="bias reports: data and labels, or a run's predictions")
    bsub = b.add_subparsers(dest="bias_command", required=True)
    br = bsub.add_parser("report", help="representation, label bias and labeling bias of a table")
    br.add_argument("--table", default="examples")
    br.add_argument("--label", default="intent", help="label column")
    br.add_argument("--strata", help="column CDDL conditions on")
    br.add_argument("--reference", help='expected shares as JSON: \'{"age_band": {"65+": 0.25, ...}}\'')
    bm = bsub.add_parser("model", help="per-group metrics and parity of a run's predictions (Fairlearn)")
    bm.add_argument("--run-id", required=True)
    bm.add_argument("--split", default="test")
    for q in (br, bm):
        q.add_argument("--group", action="append", required=True, metavar="COLUMN", help="group column (repeatable)")
        q.add_argument("--min-group-size", type=int)
        q.add_argument("--dpl-threshold", type=float)
        q.add_argument("--n-boot", type=int, help="bootstrap resamples for model intervals")
        q.add_argument("--no-html", action="store_true", help="do not write the HTML report")
        q.add_argument("--fail-on-warning", action="store_true", help="exit 1 when the report has warnings")
        q.set_defaults(func=_cmd_bias)

    c = sub.add_parser("cpt", help="continued pre-training rounds with validation gates and a model registry")
    csub = c.add_subparsers(dest="cpt_command", required=True)
    cr = csub.add_parser("round", help="train on the documents that arrived since the last round (resumes an unfinished one)")
    cr.add_argument("--until", help="only documents published up to this time (e.g. 2026-07-01)")
    cr.add_argument("--rounds", type=int, help="split everything pending into N equal time windows, one round each")
    cr.add_argument("--model", help="base model of the first round (default offline:tiny-llama)")
    cr.add_argument("--epochs", type=int)
    cr.add_argument("--lr", type=float)
    cr.add_argument("--replay-fraction", type=float, help="share of the round's tokens replayed (default 0.3)")
    cr.add_argument("--replay-source", choices=["earlier", "general", "both"])
    cr.add_argument("--max-docs", type=int, help="new documents per round at most, oldest first")
    cr.add_argument("--gates", help="comma-separated gates that decide promotion (default: all four)")
    cr.add_argument("--threads", type=int, help="torch CPU threads (1: fastest on a busy shared machine)")
    cr.add_argument("--progress", action="store_true", help="show a training progress bar")
    cr.add_argument("--fail-on-reject", action="store_true", help="exit 3 when a round is rejected (for schedulers)")
    cs = csub.add_parser("status", help="watermark, registry and the latest promotion decisions")
    cs.add_argument("--last", type=int, default=3, help="decisions of the last N rounds (default 3)")
    cs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    csub.add_parser("promoted", help="print the path of the latest promoted model (exit 1 if none)")
    ca = csub.add_parser("abandon", help="give up an unfinished round; its documents go back to the queue")
    ca.add_argument("--round", type=int, required=True)
    c.set_defaults(func=_cmd_cpt)

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
