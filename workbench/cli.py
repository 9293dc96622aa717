"""The ``workbench`` command line.

    workbench run [-p NAME VALUE]... [--only STEP]...   # the notebooks, headless (papermill)
    workbench sql "select * from row_fate limit 5" --format table
    workbench demo-data --rows 5000 --out data/sample
    workbench ingest data/sample/messages.csv --table stg_messages
    workbench label import export.csv --label-set intent --annotator-column annotator
    workbench train-classifier --epochs 2 --max-train-examples 800 && workbench evaluate
    workbench bias report --table examples --group age_band --label intent
    workbench cpt round --until "2026-07-01"          # continued pre-training on what arrived since the last round
    workbench features search "plan tenure"
    workbench sft --set epochs=4 --set lora=true        # causal-LM fine-tuning (docs/finetune.md)
    workbench sweep run --space '{"learning_rate": [1e-4, 3e-4]}' --trials 4
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
                  log_output=args.log_output, resume=args.resume)
    except PipelineError as exc:
        print(f"workbench run: {exc}", file=sys.stderr)
        return 1
    print(f"executed notebooks: {out}")
    print(f"pipeline run {out.name} completed (pipeline_runs, pipeline_steps)")
    return 0


def _json_cell(v):
    """A nested value (list, struct, map) as JSON text: a CSV cell holding the whole value, not numpy's
    repr (which elides long arrays with '...')."""
    import numpy as np

    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=lambda x: x.tolist() if isinstance(x, np.ndarray) else str(x))
    return v


def _jsonable(v):
    """One result value as JSON: floats at full precision (pandas' to_json keeps 10 digits), blobs as
    DuckDB prints them ('\\xFF'), times in ISO 8601 (milliseconds unless finer ones are set), NaN and
    missing values as null, nested values recursively."""
    import datetime as dt
    import decimal
    import math

    import numpy as np
    import pandas as pd

    if v is None or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating, decimal.Decimal)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, str):
        return v
    if isinstance(v, (pd.Timestamp, dt.datetime)):
        t = pd.Timestamp(v)
        return t.isoformat(timespec="milliseconds" if t.microsecond % 1000 == 0 and not t.nanosecond else "auto")
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (pd.Timedelta, dt.timedelta, np.timedelta64)):
        return pd.Timedelta(v).isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in bytes(v))
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def _print_frame(df, fmt: str) -> None:
    if fmt == "csv":
        df = df.copy()
        for col in df.columns[df.dtypes == object]:
            df[col] = df[col].map(_json_cell)
        df.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        print(json.dumps([{str(k): _jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")],
                         allow_nan=False, separators=(",", ":")))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(no rows)")


def _cmd_sql(args) -> int:
    import duckdb

    from .workspace import connect, transaction

    con = connect(args.workspace)
    text = args.statement if args.statement != "-" else sys.stdin.read()
    if not text.strip():
        print("workbench sql: no SQL statement given", file=sys.stderr)
        return 2

    try:
        statements = con.extract_statements(text)
    except duckdb.Error as exc:
        print(f"workbench sql: {exc}", file=sys.stderr)
        return 1

    def body(c):  # the whole statement list in one transaction: it all lands or none of it
        frames = []
        for st in statements:
            res = c.execute(st)
            if res is None or not res.description:
                continue
            counts_only = [d[0] for d in res.description] == ["Count"] and st.type.name != "SELECT"
            if len(statements) == 1 or not counts_only:  # a list prints its queries, not DDL row counts
                frames.append(res.df())
        return frames

    try:
        frames = transaction(con, body, what="workbench sql")
    except duckdb.Error as exc:
        print(f"workbench sql: {exc}", file=sys.stderr)
        return 1
    for i, df in enumerate(frames):
        if i and args.format != "json":
            print()  # one blank line between result sets (json: one array per line)
        _print_frame(df, args.format)
    return 0


def _cmd_demo_data(args) -> int:
    import dataclasses

    from .sample import Hardness, write_sample

    hardness = Hardness.easy() if args.easy else Hardness()
    if args.label_noise is not None:
        hardness = dataclasses.replace(hardness, label_noise=args.label_noise)
    try:
        hardness.style_p()
    except ValueError as exc:
        print(f"error: --label-noise: {exc}", file=sys.stderr)
        return 2
    files = write_sample(args.out, rows=args.rows, seed=args.seed, hardness=hardness)
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


def _cmd_flow(args) -> int:
    from .flows import compile_spark_sql, compile_sql, load_flow, run_flow, validate
    from .workspace import connect

    flow = load_flow(args.file)
    con = connect(args.workspace)
    if args.action == "validate":
        plan = validate(flow, con)
        print(f"{flow.where}: ok ({len(plan)} steps)")
    elif args.action == "compile":
        sql = (compile_spark_sql if args.spark else compile_sql)(flow, con, output=args.output or "")
        if args.out:
            from pathlib import Path

            Path(args.out).write_text(sql)
            print(f"wrote {args.out}")
        else:
            print(sql, end="")
    else:
        if args.engine == "spark":  # started here so a bad master or remote fails before the flow runs
            from .spark import session

            session(master=args.spark_master or None, remote=args.spark_remote or None)
        res = run_flow(con, flow, output=args.output, engine=args.engine)
        _print_frame(res.stats(), "table")
        print(f"run {res.run_id}: wrote {res.output} ({res.steps[-1].rows_out} rows)")
    return 0


def _cmd_gc(args) -> int:
    from .workspace import connect, expire_snapshots

    try:
        r = expire_snapshots(connect(args.workspace), older_than_days=args.older_than_days, dry_run=args.dry_run)
    except ValueError as exc:
        print(f"workbench gc: {exc}", file=sys.stderr)
        return 2
    verb = "would expire" if r["dry_run"] else "expired"
    print(f"{verb} {len(r['expired'])} snapshot(s) older than {args.older_than_days:g} days; kept "
          f"{len(r['kept_referenced'])} referenced by workspace tables (runs, models, ...) or current")
    if not r["dry_run"]:
        print(f"deleted {r['files_deleted']} data file(s), {r['bytes_deleted'] / 1e6:,.1f} MB")
    return 0


def _cmd_quality(args) -> int:
    from .quality import QualityConfig, quality_report, summary
    from .workspace import connect

    cfg = QualityConfig(text_column=args.text_column, label_column=args.label_column, key_column=args.key_column,
                        split_column=args.split_column, near_dup=not args.no_near_dup)
    report = quality_report(connect(args.workspace), args.table, cfg)
    _print_frame(report[["check_name", "column_name", "value", "detail"]] if args.all else summary(report), args.format)
    print(f"report {report['report_id'].iloc[0]}: {len(report)} rows in quality_report", file=sys.stderr)
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
def _cmd_templates(args) -> int:
    from . import templates as T

    if args.action in ("list", "search"):
        found = (T.list_templates(args.task, table=args.table) if args.action == "list"
                 else T.search(args.text, task=args.task))
        df = T.catalog(found)
        if args.format == "table" and len(df):
            df = df[["id", "name", "task", "task_type", "table", "choices", "description"]]
        _print_frame(df, args.format)
        return 0
    if args.action == "validate":
        con = None
        if args.table:
            from .workspace import connect
            con = connect(args.workspace)
        probs = T.validate(con=con, table=args.table, task=args.task)
        for prob in probs:
            print(f"error: {prob}", file=sys.stderr)
        n = len(T.list_templates(args.task, table=None if args.task else args.table))
        where = f"workspace table {args.table!r}" if args.table else "the documented table contract"
        print(f"{n} template(s) checked against {where}: "
              + (f"{len(probs)} problem(s)" if probs else "all valid"))
        return 1 if probs else 0
    if args.action == "show":
        t = T.get(args.id)
        row = T.SAMPLE_ROWS.get(t.table, [{}])[0]
        print(f"# {t.label}: task {t.task} ({t.task_type}), table {t.table}, columns {list(t.columns)}")
        if t.answer_choices:
            print(f"# answer choices: {list(t.answer_choices)}")
        for part, text in T.render(t, row).items():
            if text is not None:
                print(f"--- {part} (sample row {row.get(t.key)})\n{text}")
        return 0
    if args.action == "apply":
        from .template_sql import apply_templates
        from .workspace import connect
        out = apply_templates(connect(args.workspace), args.task or ["intent_classification"], choice=args.choice,
                              seed=args.seed, limit=args.limit or None, engine=args.engine)
        _print_frame(out, "table")
        return 0
    raise ValueError(f"unknown templates action {args.action!r}")


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
def _cmd_features(args) -> int:
    from . import features as fs
    from .workspace import connect

    con = connect(args.workspace)
    try:
        if args.action == "list":
            _print_frame(fs.list_groups(con, all_versions=args.all_versions), args.format)
        elif args.action == "search":
            _print_frame(fs.search(con, " ".join(args.query), limit=args.limit), args.format)
        else:
            lin = fs.lineage(con, args.group, args.version)
            d = lin["definition"]
            print(f"{lin['group']} v{lin['version']}  table {lin['table']} (view fs_{lin['group']} = newest)")
            print(f"  {d['description']}\n  owner: {d['owner'] or '-'}   tags: {', '.join(d['tags']) or '-'}")
            print(f"  entity keys: {', '.join(d['entity_keys'])}   event time: {d['event_time']}")
            print("\ncolumns (statistics computed at write time):")
            _print_frame(fs.describe(con, args.group, args.version), args.format)
            print("\nvalidation checks:")
            _print_frame(fs.check_results(con, args.group, args.version), args.format)
            print("\nversions:")
            _print_frame(fs.versions(con, args.group), args.format)
            print(f"\nlineage: reads {', '.join(lin['source_tables']) or '?'} at snapshot {lin['data_snapshot']}"
                  + (f" (sql/{lin['source_file']})" if lin["source_file"] else "") + "\n" + lin["source_sql"])
    except fs.FeatureError as exc:
        print(f"workbench features: {exc}", file=sys.stderr)
        return 2
    finally:
        con.close()
    return 0


def _cmd_sweep(args) -> int:
    from . import sweep as sw
    from .workspace import connect

    con = connect(args.workspace)
    try:
        if args.action == "list":
            _print_frame(sw.list_sweeps(con), args.format)
            return 0
        if args.action == "run":
            budget = {"trials": args.trials, "seconds": args.seconds}
            res = sw.sweep(json.loads(args.space) if args.space else None, budget, args.metric, con=con,
                           strategy=args.strategy, trainer=args.trainer, seed=args.seed, sweep_id=args.sweep_id,
                           config=json.loads(args.config) if args.config else None, evaluate_test=not args.no_test)
        else:
            res = sw.load_sweep(con, args.sweep_id)
            print(res.summary())
        _print_frame(res.trials.drop(columns=["started_at", "finished_at"]), args.format)
    except (sw.SweepError, json.JSONDecodeError) as exc:
        print(f"workbench sweep: {exc}", file=sys.stderr)
        return 2
    finally:
        con.close()
    return 0


def _cmd_train_classifier(args) -> int:
    from .classifier import config_from_args, train_classifier
    from .workspace import connect

    config = None if args.resume else config_from_args(args)  # a resumed run keeps its stored config
    result = train_classifier(connect(args.workspace), config, resume_from=args.resume, progress=not args.quiet)
    print(result.summary())
    return 0


def _cmd_evaluate(args) -> int:
    from . import evaluate
    from .workspace import connect

    con = connect(args.workspace)
    if args.compare:
        _print_frame(evaluate.compare_runs(con, kind=args.kind, digits=3), args.format)
        return 0
    run_id = args.run_id or evaluate.latest_run(con, args.kind)
    print(evaluate.run_summary(con, run_id))
    _print_frame(evaluate.class_report(con, run_id, args.split).round(3), args.format)
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
    p = argparse.ArgumentParser(
        prog="workbench", description="SQL-first data preparation and fine-tuning over a workspace "
        "(DuckDB + DuckLake). Start with 'workbench run' (the whole pipeline on the sample data), then "
        "'workbench sql'. Docs: README.md and docs/.")
    p.add_argument("--workspace", help="workspace folder (default: $WORKBENCH_HOME or ./workspace)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute the pipeline notebooks in order with papermill")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter (repeatable); each notebook gets the ones it declares")
    r.add_argument("--only", action="append", metavar="STEP", help="run only this step (number or name)")
    r.add_argument("--with", dest="with_", action="append", metavar="STEP", help="also run an optional step")
    r.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")
    r.add_argument("--resume", metavar="RUN_ID",
                   help="run a recorded pipeline run's failed and remaining steps with its parameters "
                        "(-p overrides them); 'last': the latest run (pipeline_runs)")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("sql", help="run SQL on the workspace ('-' reads standard input)")
    s.add_argument("statement")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=_cmd_sql)

    d = sub.add_parser("demo-data", help="write the deterministic, messy sample data set")
    d.add_argument("--rows", type=int, default=3000, help="labeled support messages (default 3000)")
    d.add_argument("--out", default="data/sample", help="output folder")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--label-noise", type=float, default=None,
                   help="share of labels replaced by a neighbouring intent (default 0.05)")
    d.add_argument("--easy", action="store_true",
                   help="only clear messages and no label noise: a trivially separable intent task")
    d.set_defaults(func=_cmd_demo_data)

    i = sub.add_parser("ingest", help="load CSV / JSONL / Parquet files into a workspace table")
    i.add_argument("files", nargs="+")
    i.add_argument("--table", required=True)
    i.add_argument("--format", choices=["auto", "csv", "jsonl", "parquet"], default="auto")
    i.add_argument("--mode", choices=["replace", "append"], default="replace")
    i.set_defaults(func=_cmd_ingest)

    flw = sub.add_parser("flow", help="data flows (flows/*.yaml): validate, compile to SQL, run")
    flw.add_argument("action", choices=["run", "compile", "validate"])
    flw.add_argument("file", help="flow file, or a name in flows/")
    flw.add_argument("--output", help="output table (default: the flow's output, or flow_<name>)")
    flw.add_argument("--out", help="compile: write the SQL to this file (e.g. sql/11_flow_x.sql)")
    flw.add_argument("--spark", action="store_true", help="compile: print Spark SQL (SQLGlot)")
    flw.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb",
                     help="run: where the steps run (spark: the same results on Apache Spark, docs/flows.md)")
    flw.add_argument("--spark-master", default="", help="run --engine spark: local[2], spark://host:7077 "
                     "(default: $WORKBENCH_SPARK_MASTER or local[*])")
    flw.add_argument("--spark-remote", default="", help="run --engine spark: Spark Connect URL sc://host:15002 "
                     "(default: $SPARK_REMOTE)")
    flw.set_defaults(func=_cmd_flow)

    gc = sub.add_parser("gc", help="expire old snapshots (keeping those runs and models refer to) and delete "
                                   "the data files only they held")
    gc.add_argument("--older-than-days", type=float, default=30.0, help="expire snapshots older than this (30)")
    gc.add_argument("--dry-run", action="store_true", help="say which snapshots would go; change nothing")
    gc.set_defaults(func=_cmd_gc)

    qr = sub.add_parser("quality", help="data quality report on a workspace table (written to quality_report)")
    qr.add_argument("table")
    qr.add_argument("--text-column", help="default: text")
    qr.add_argument("--label-column", help="default: intent or label")
    qr.add_argument("--key-column", help="default: example_id, source_row_id, item_id or id")
    qr.add_argument("--split-column", help="default: split, else the splits table joined on the key")
    qr.add_argument("--no-near-dup", action="store_true", help="skip the near-duplicate check (the slowest)")
    qr.add_argument("--all", action="store_true", help="print every row (histograms, per-label counts)")
    qr.add_argument("--format", choices=["table", "csv", "json"], default="table")
    qr.set_defaults(func=_cmd_quality)

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
    t = sub.add_parser("templates", help="the prompt template library: list, search, validate, show, apply")
    tsub = t.add_subparsers(dest="action", required=True)
    tl = tsub.add_parser("list", help="list templates")
    tl.add_argument("--task", help="only this task (e.g. intent_classification)")
    tl.add_argument("--table", help="only templates over this table")
    ts = tsub.add_parser("search", help="templates whose id, name, description or text contain every word")
    ts.add_argument("text")
    ts.add_argument("--task")
    for sp in (tl, ts):
        sp.add_argument("--format", choices=["table", "csv", "json"], default="table")
    tv = tsub.add_parser("validate", help="check the library (exit 1 on any problem)")
    tv.add_argument("--table", help="check against this workspace table (default: the documented contract)")
    tv.add_argument("--task", help="only this task's templates (with --table: applied to that table)")
    tw = tsub.add_parser("show", help="a template rendered on a built-in sample row")
    tw.add_argument("id", help="template id or name")
    ta = tsub.add_parser("apply", help="render templates into sft_examples in the workspace")
    ta.add_argument("--task", action="append", help="task to render (repeatable; default intent_classification)")
    ta.add_argument("--choice", default="random", help="'random' (one per row, seeded), 'all', or a template id")
    ta.add_argument("--seed", type=int, default=7)
    ta.add_argument("--limit", type=int, default=0, help="source rows per task (0 = all)")
    ta.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb",
                    help="spark: on Apache Spark ($SPARK_REMOTE, else $WORKBENCH_SPARK_MASTER or local[*])")
    t.set_defaults(func=_cmd_templates)

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
    f = sub.add_parser("features", help="feature store: list, search and show feature groups")
    fsub = f.add_subparsers(dest="action", required=True)
    fl = fsub.add_parser("list", help="feature groups (newest version of each)")
    fl.add_argument("--all-versions", action="store_true", help="every version, not just the newest")
    fq = fsub.add_parser("search", help="ranked search over group and feature names, descriptions, tags")
    fq.add_argument("query", nargs="+")
    fq.add_argument("--limit", type=int, default=20)
    fw = fsub.add_parser("show", help="one group: columns, statistics, checks, versions, lineage")
    fw.add_argument("group")
    fw.add_argument("--version", type=int, help="default: the newest")
    for sp in (fl, fq, fw):
        sp.add_argument("--format", choices=["table", "csv", "json"], default="table")
    f.set_defaults(func=_cmd_features)

    from .classifier import add_config_arguments

    tc = sub.add_parser("train-classifier", help="fine-tune a sequence classifier on examples + splits "
                                                 "(default: the offline MiniLM); see docs/finetune_classifier.md")
    add_config_arguments(tc)
    tc.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its checkpoint")
    tc.add_argument("--quiet", action="store_true", help="no progress bar")
    tc.set_defaults(func=_cmd_train_classifier)

    ev = sub.add_parser("evaluate", help="a run's test accuracy vs the majority baseline and per-class report")
    ev.add_argument("run_id", nargs="?", help="run id (default: the latest completed run of --kind)")
    ev.add_argument("--kind", help="classifier, sft, ... (default: any)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--compare", action="store_true", help="one row per run instead")
    ev.add_argument("--format", choices=["table", "csv", "json"], default="table")
    ev.set_defaults(func=_cmd_evaluate)

    f = sub.add_parser("sft", help="supervised fine-tuning of a causal LM on sft_examples + splits")
    f.add_argument("--task", help="sft_examples.task (default intent_classification)")
    f.add_argument("--model", help="offline:tiny-llama (default), a Hugging Face id or a local folder")
    f.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any SFTConfig field (repeatable)")
    f.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its last checkpoint")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_sft)

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

    w = sub.add_parser("sweep", help="hyperparameter sweeps: chosen on validation, test evaluated once")
    wsub = w.add_subparsers(dest="action", required=True)
    wr = wsub.add_parser("run", help="run (or, with --sweep-id, resume) a sweep")
    wr.add_argument("--space", help='search space as JSON, e.g. \'{"learning_rate": {"low": 3e-5, "high": 3e-4, '
                                    '"log": true}, "epochs": [1, 2]}\' (default: the trainer\'s default space)')
    wr.add_argument("--trials", type=int, default=8, help="trial budget (0: no cap)")
    wr.add_argument("--seconds", type=float, default=0, help="wall-clock budget (0: no cap)")
    wr.add_argument("--strategy", choices=["grid", "random", "tpe"], help="default tpe (or the resumed sweep's)")
    wr.add_argument("--metric", default="validation_accuracy", help="validation metric to choose on")
    wr.add_argument("--trainer", choices=["classifier", "sft"], help="default classifier")
    wr.add_argument("--config", help='fixed trial config as JSON, e.g. \'{"max_train_examples": 300}\'')
    wr.add_argument("--seed", type=int)
    wr.add_argument("--sweep-id", help="resume this sweep")
    wr.add_argument("--no-test", action="store_true", help="do not evaluate the chosen trial on test yet")
    wl = wsub.add_parser("list", help="sweeps, newest first")
    ws = wsub.add_parser("show", help="one sweep: summary and trials, best first")
    ws.add_argument("sweep_id")
    for q in (wr, wl, ws):
        q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    w.set_defaults(func=_cmd_sweep)

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
