"""Ingest on Apache Spark: CSV / JSONL / Parquet parsed with Spark functions, DuckDB's rows and rejects.

    python -c "import workbench, workbench.data as d; d.ingest(workbench.connect(), ['data/sample/messages.csv'], table='stg_messages', engine='spark')"

``workbench.data.ingest(..., engine="spark")`` validates its arguments and calls ``ingest_spark``: the
same rows, rejects (file, line, reason, raw line), column names and ``source_row_id`` as DuckDB's
ingest, on every edge case its tests cover (tests/test_spark_ingest.py): records over several lines,
unterminated quotes, lines over 4 MiB, mixed line ends, lines ending with a lone CR
(tests/test_spark_parity.py), JSONL keys differing only in case, reserved column names. The limits
left are in docs/spark.md.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Sequence

from .spark import INVALID_ENCODING, ZS_SPACES, SparkError, _short, session, spark_dir, write_dataset
from .workspace import lake_names, sql_literal, table_exists, transaction, unique_names


MAX_LINE_BYTES = 4194304  # DuckDB's max_line_size, as workbench.data sets it: a longer line is a reject
LINE_SIZE = "line size over maximum: Maximum line size of 4194304 bytes exceeded. Actual Size:"  # DuckDB's words
UNTERMINATED = "unquoted value: Value with unterminated quote found."
RESERVED = ["source_row_id", "source_file"]  # the columns ingest adds before a reader's source_line
CLOSER_LOOKAHEAD = 32  # lines after a quote opened at a line end searched at once for the line closing it


def ingest_spark(con, paths: Sequence[Path], fmts: Sequence[str], *, table: str, mode: str = "replace",
                 spark=None) -> dict[str, Any]:
    """Parse files on Spark into ``table`` and ``ingest_rejects``: the rows, rejects (file, line,
    reason) and ``source_row_id`` of ``workbench.data.ingest`` (which validates the arguments and
    calls this for ``engine='spark'``). Parsed rows go to ``<workspace>/spark/<table>/``, rejects to
    ``<workspace>/spark/ingest_rejects/<table>/``; then both are registered in one transaction.
    """
    from pyspark.sql import functions as F

    from .data import REJECTS_DDL, IngestError

    spark = spark or session()
    out = spark_dir(con)
    cached: list = []  # parsed files, kept (memory, then disk) until both outputs are written
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    rows_all = rejects_all = None
    try:
        for p, f in zip(paths, fmts):
            try:
                rows, rejects = READERS_SPARK[f](spark, p, cached)
            except (IngestError, SparkError):
                raise
            except Exception as exc:
                raise IngestError(f"{p}: cannot read as {f} on Spark: {_short(exc)}") from exc
            # as DuckDB names them: the ingest's own columns first, then DuckLake's reserved names
            rows = rows.toDF(*lake_names(unique_names(RESERVED + rows.columns))[len(RESERVED):])
            row_id = F.concat(F.lit(p.name + ":"), F.col("source_line").cast("string")).alias("source_row_id")
            rows = rows.select(row_id, F.lit(str(p)).alias("source_file"), "*")
            rejects = rejects.select(
                row_id, F.lit(table).alias("table_name"), F.lit(str(p)).alias("source_file"), "source_line",
                "reason", "raw_line", F.lit(now).cast("timestamp_ntz").alias("ingested_at"))
            rows_all = rows if rows_all is None else rows_all.unionByName(rows, allowMissingColumns=True)
            rejects_all = rejects if rejects_all is None else rejects_all.unionByName(rejects)
        rows_path = write_dataset(rows_all, out / table)
        rejects_path = write_dataset(rejects_all, out / "ingest_rejects" / table)
    finally:
        for df in cached:
            df.unpersist()

    rows_glob = sql_literal(str(Path(rows_path) / "*.parquet"))
    rejects_glob = sql_literal(str(Path(rejects_path) / "*.parquet"))

    def write(c) -> None:
        c.execute(REJECTS_DDL)
        if mode == "replace" or not table_exists(c, table):
            c.execute(f'create or replace table "{table}" as select * from read_parquet({rows_glob})')
            c.execute("delete from ingest_rejects where table_name = ?", [table])
        else:
            dup = c.execute(f'select count(*) from "{table}" t join read_parquet({rows_glob}) n '
                            "using (source_row_id)").fetchone()[0]
            if dup:
                raise IngestError(f"{table}: {dup} rows of these files were ingested before (same "
                                  "source_row_id); use mode='replace' to reload")
            c.execute(f'insert into "{table}" by name select * from read_parquet({rows_glob})')
        c.execute(f"insert into ingest_rejects by name select * from read_parquet({rejects_glob})")

    transaction(con, write, what=f"ingesting into {table} (Spark)")
    count = "select source_file, count(*) from read_parquet({}) group by 1"
    counts = dict(con.execute(count.format(rows_glob)).fetchall())
    rejected = dict(con.execute(count.format(rejects_glob)).fetchall())
    return {str(p): {"format": f, "rows": counts.get(str(p), 0), "rejected": rejected.get(str(p), 0)}
            for p, f in zip(paths, fmts)}


def numbered_lines(spark, path: Path | str, line_sep: str | None = None):
    """A text file as ``(line, value)``: 1-based physical line numbers, in parallel.

    Spark reads a file in blocks (splits); each block is read in order by one task, so within a block
    ``monotonically_increasing_id()`` counts lines. A line's number is the lines of the earlier blocks
    plus its offset in its block (the per-block counts are tiny: one row per block). ``line_sep="\\n"``
    splits at ``\\n`` only (a ``\\r\\n`` line keeps its ``\\r``); by default at ``\\n``, ``\\r\\n`` and ``\\r``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    reader = spark.read if line_sep is None else spark.read.option("lineSep", line_sep)
    if _one_block(spark, Path(path)):  # one task reads it all, as partition 0: ids count from 0
        return reader.text(str(path)).select((F.monotonically_increasing_id() + 1).alias("line"), "value")
    raw = reader.text(str(path)).select(
        F.col("_metadata.file_block_start").alias("block"), F.monotonically_increasing_id().alias("mid"), "value")
    blocks = raw.groupBy("block").agg(F.min("mid").alias("first_mid"), F.count(F.lit(1)).alias("n"))
    before = F.coalesce(F.sum("n").over(Window.orderBy("block").rowsBetween(Window.unboundedPreceding, -1)), F.lit(0))
    blocks = blocks.select("block", "first_mid", before.alias("before"))
    return raw.join(F.broadcast(blocks), "block").select(
        (F.col("before") + F.col("mid") - F.col("first_mid") + 1).alias("line"), "value")


def _one_block(spark, path: Path) -> bool:
    """Whether Spark reads the file as one split: gzipped, or no larger than the split size could be."""
    def size(key: str, default: str) -> int:  # '128m', '4194304b', '65536'
        v = str(spark.conf.get(key, default)).strip().lower().removesuffix("b")
        return int(float(v.rstrip("kmgt")) * {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(v[-1:], 1))
    return path.name.lower().endswith(".gz") or path.stat().st_size <= min(
        size("spark.sql.files.maxPartitionBytes", "128m"), size("spark.sql.files.openCostInBytes", "4m"))


def _cached(df, keep: list):
    """``df`` persisted: rows and rejects both come from one parse of the file (and one numbering)."""
    from pyspark import StorageLevel

    df = df.persist(StorageLevel.MEMORY_AND_DISK)
    keep.append(df)
    return df


def _raw_line(col="value", lines=None):
    """A reject's raw line as DuckDB's ingest stores it: invalid bytes replaced, 2,000 characters per
    physical line (``lines``: the lines a record spans)."""
    from pyspark.sql import functions as F

    keep = F.lit(2000) if lines is None else F.col(lines) * 2000
    return F.substring(F.make_valid_utf8(col), F.lit(1), keep)


def _too_long(col="value"):
    """DuckDB's reject reason for a line over its maximum line size (null when it is not)."""
    from pyspark.sql import functions as F

    size = F.octet_length(col)
    return F.when(size > MAX_LINE_BYTES, F.concat(F.lit(LINE_SIZE), size.cast("string"), F.lit(" bytes.")))


def _csv_patterns(d: str) -> dict[str, str]:
    """Java regexes of DuckDB's strict CSV state machine (quote and escape ``"``, delimiter ``d``).

    A field starting with ``"`` or one space and ``"`` is quoted (two spaces: the quotes are plain
    characters); in it ``""`` is a quote and a line break is part of the value; after the closing
    quote, spaces and another quote reopen it, spaces and the delimiter end the field, anything else
    is an ``unquoted value`` error after which quotes are plain characters up to the delimiter. Any
    other field is unquoted (a quote in it is a plain character)."""
    q = '[^"]*+(?:""[^"]*+)*+'  # inside quotes, up to the closing quote
    quoted = f' ?"{q}"(?: *+"{q}")*+ *+'
    field = f'(?:{quoted}(?:[^{d}"][^{d}]*+)?|(?! ?")[^{d}]*+)'  # lenient: with the error tail
    opened = f' ?"{q}(?:" *+"{q})*+'  # a quoted field still open at the line end
    fields = f"(?:{field}{d})*+"
    return {
        "strict": f'{d}( ?"{q}"(?: *"{q}")* *|(?! ?")[^{d}]*+)',  # one well-formed field (after a delimiter)
        "lenient": f"{d}({field})",
        # a line starting a record that ends inside a quoted field
        "opens": f"^{fields}{opened}\\z",
        # a line starting inside a quoted field that ends inside one
        "stays": f'^{q}(?:" *+"{q})*+(?:\\z|" *+(?:[^{d}"][^{d}]*+)?{d}{fields}{opened}\\z)',
    }


def _csv_spark(spark, path: Path, keep: list):
    """CSV parsed with regexes that follow DuckDB's strict reader, record by record (docs/spark.md).

    Lines are split at ``\\n`` and numbered. A line that leaves a quoted field open (``opens``) starts a
    record over several lines, which ends at the first later line that closes it (``stays`` false);
    the driver walks those few lines in order. A quote never closed makes the rest of the file rejects,
    as DuckDB's ingest does. Each record's fields are then matched; a record that is not valid UTF-8,
    over 4 MiB, has too few / too many fields or a bad quote is a reject with DuckDB's reason texts.
    """
    import csv

    from pyspark.sql import functions as F

    from .data import IngestError, _header_names, _mixed_line_ends, cr_line_ends

    delim = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    d = "\\t" if delim == "\t" else ","
    pat = _csv_patterns(d)
    cr = cr_line_ends(path)  # old Mac line ends: lines split at \r (a \r in a quoted field is a line break)
    eol = "\r" if cr else "\n"
    body = F.col("value") if cr else F.regexp_replace("value", "\r\\z", "")  # a line without its line end
    lines = _cached(numbered_lines(spark, path, eol).select(
        "line", "value", F.is_valid_utf8("value").alias("utf8"),
        (body.rlike(pat["opens"]) & (F.col("line") > 1)).alias("opens"), body.rlike(pat["stays"]).alias("stays")), keep)
    # one pass: the header, the lines that open a record over several lines, the last that closes one
    stats = lines.agg(F.first(F.when(F.col("line") == 1, F.col("value")), ignorenulls=True).alias("header"),
                      F.sort_array(F.collect_list(F.when(F.col("opens"), F.col("line")))).alias("openers"),
                      F.max(F.when(~F.col("stays"), F.col("line"))).alias("last_closer"),
                      F.min(F.when(body.contains("\r"), F.col("line"))).alias("first_cr"),
                      F.count(F.when((body == "") & (F.col("line") > 1), 1)).alias("blanks")).collect()[0]
    if stats["first_cr"] == 1:  # lines ending with \r alone (cr_line_ends) and with \n: refused as DuckDB does
        raise IngestError(f"{path}: cannot read as csv: line 1: a carriage return (\\r) that ends no line in the "
                          "header: the file mixes line ends \\r and \\n (DuckDB's strict CSV reader refuses it); "
                          "convert its line ends to \\n")
    head = stats["header"]
    header = next(csv.reader([head.removesuffix("\r")], delimiter=delim), None) if head is not None else None
    names = _header_names(header, path)
    if any(ord(ch) < 32 for n in names for ch in n):
        raise IngestError(f"{path}: line 1: a column name holds a control character")
    n_cols = len(names)
    lines = lines.where("line > 1")
    spans, unterminated = _multi_line_records(lines, list(stats["openers"]), stats["last_closer"] or 0)
    one = lines.where(body != "")
    if unterminated is not None:
        one = one.where(F.col("line") < unterminated)
    records = one.select("line", body.alias("text"), "utf8", F.lit(1).alias("n_lines"))
    if spans:
        multi = spark.createDataFrame(spans, "start long, stop long").select(
            F.col("start").alias("rec"), F.explode(F.sequence("start", "stop")).alias("line"))
        records = records.join(F.broadcast(multi) if len(spans) < 100_000 else multi, "line", "left_anti")
        text = F.array_join(F.transform(F.col("parts"), lambda x: x["value"]), eol)
        if _mixed_line_ends(path):  # DuckDB's ingest reads such a file with every \r\n as \n
            text = F.replace(text, F.lit("\r\n"), F.lit("\n"))
        grouped = (lines.join(multi, "line").groupBy("rec")
                   .agg(F.sort_array(F.collect_list(F.struct("line", "value"))).alias("parts"),
                        F.bool_and("utf8").alias("utf8"))
                   .select(F.col("rec").alias("line"), F.regexp_replace(text, "\r\\z", "").alias("text"), "utf8",
                           F.size("parts").alias("n_lines")))
        records = records.unionByName(grouped)

    text = F.make_valid_utf8("text")  # invalid bytes become U+FFFD (the record is rejected, but counted)
    tokens = F.regexp_extract_all(F.concat(F.lit(delim), text), F.lit(pat["strict"]), 1)
    tiled = F.array_join(tokens, delim) == text
    found = F.size(F.regexp_extract_all(F.concat(F.lit(delim), text), F.lit(pat["lenient"]), 1))
    counts = f"Expected Number of Columns: {n_cols} Found: "
    too_long = _too_long("text")
    reasons = F.array_compact(F.array(
        F.when(~F.col("utf8"), F.lit(INVALID_ENCODING)),  # the text had its invalid bytes replaced
        F.when(found < n_cols, F.concat(F.lit("missing columns: " + counts), found.cast("string"))),
        F.when(found > n_cols, F.concat(F.lit("too many columns: " + counts), found.cast("string"))),
        F.when(~tiled, F.lit(UNTERMINATED)),
    ))
    reason = F.when(too_long.isNotNull(), too_long).when(F.size(reasons) > 0, F.array_join(reasons, "; "))
    span = F.concat(F.lit(" (one record over physical lines "), F.col("line").cast("string"), F.lit("-"),
                    (F.col("line") + F.col("n_lines") - 1).cast("string"),
                    F.lit(": a quoted field runs across line ends; raw_line holds all of them)"))
    reason = F.when(F.col("n_lines") > 1, F.concat(reason, span)).otherwise(reason)
    parsed = _cached(records.select(
        F.col("line").alias("source_line"), reason.alias("reason"), "text", "n_lines",
        F.when(too_long.isNull(), tokens).alias("tokens")), keep)

    if stats["first_cr"]:  # a \r that ends no line, outside quotes: DuckDB's strict reader refuses the file
        unquoted = F.regexp_replace("text", F.lit('"[^"]*+(?:""[^"]*+)*+"'), F.lit(""))
        bad = parsed.where(unquoted.contains("\r")).agg(F.min("source_line")).collect()[0][0]
        if bad is not None:
            raise IngestError(f"{path}: cannot read as csv: line {bad}: a carriage return (\\r) outside quotes "
                              "that ends no line (DuckDB's strict CSV reader refuses the file)")

    def field(i: int):
        tok = F.get("tokens", i)
        unquoted = F.regexp_replace(F.trim(tok), F.lit(f'"([^"]*+(?:""[^"]*+)*+)"'), F.lit("$1"))
        value = F.when(tok.rlike('^ ?"'), F.replace(unquoted, F.lit('""'), F.lit('"'))).otherwise(tok)
        return F.nullif(value, F.lit(""))

    rows = parsed.where("reason is null").select(
        "source_line", *[field(i).alias(name) for i, name in enumerate(names)])
    rejects = parsed.where("reason is not null").select(
        "source_line", "reason", _raw_line("text", "n_lines").alias("raw_line"))
    if unterminated is not None:  # the record keeps its first line; every later line is a reject
        rest = lines.where(F.col("line") >= unterminated).where(body != "").select(
            F.col("line").alias("source_line"),
            F.when(F.col("line") == unterminated, F.lit(UNTERMINATED)).otherwise(
                F.lit(f"swallowed by the unterminated quoted field that starts at line {unterminated}")).alias("reason"),
            _raw_line(body).alias("raw_line"))
        rejects = rejects.unionByName(rest)
    if cr:
        rows = _cr_numbering(rows, rejects, path, renumber=bool(spans or stats["blanks"]))
    return rows, rejects


def _cr_numbering(rows, rejects, path: Path, *, renumber: bool):
    """The rows of a file whose lines end with ``\\r`` alone, numbered as DuckDB's ingest numbers them.

    DuckDB's ingest counts lines by ``\\n``, so in such a file a row's ``source_line`` is its record's
    ordinal + 1 (the header is line 1): blank lines and the line breaks inside quoted fields are not
    counted (``renumber``: the file has some, so the ordinals differ from the physical lines). It cannot
    place a rejected record in such a file and refuses it: so does this, naming the first bad line."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from .data import cr_reject_error

    bad = rejects.orderBy("source_line").limit(1).collect()
    if bad:
        raise cr_reject_error(path, bad[0]["source_line"], bad[0]["reason"])
    if not renumber:
        return rows
    ordinal = F.row_number().over(Window.orderBy("source_line")) + 1
    return rows.withColumn("source_line", ordinal.cast("long"))


def _multi_line_records(lines, openers: list[int], last_closer: int) -> tuple[list[tuple[int, int]], int | None]:
    """(first line, last line) of each record over several lines, and the line of a quote never closed.

    ``openers`` are the lines that, read from a record's start, leave a quote open (few). A record from
    an opener ends at the first later line that closes the quote: searched for all openers in the
    ``CLOSER_LOOKAHEAD`` lines after them at once, further only for the openers that need it (none past
    ``last_closer``, the last line that can close a quote). An opener inside an earlier record starts none."""
    from pyspark.sql import functions as F

    if not openers:
        return [], None
    near = {}
    if openers[0] < last_closer:
        offsets = lines.sparkSession.createDataFrame([(o,) for o in openers if o < last_closer], "opener long")
        offsets = offsets.select("opener", F.explode(F.sequence(F.col("opener") + 1,
                                                                F.col("opener") + CLOSER_LOOKAHEAD)).alias("line"))
        near = dict(offsets.join(lines.where(~F.col("stays")).select("line"), "line")
                    .groupBy("opener").agg(F.min("line")).collect())
    spans, pos = [], 0
    for o in openers:
        if o <= pos:
            continue  # inside the record before it
        close = near.get(o)
        if close is None and o < last_closer:
            close = lines.where((F.col("line") > o) & ~F.col("stays")).agg(F.min("line")).collect()[0][0]
        if close is None:
            return spans, o
        spans.append((o, close))
        pos = close
    return spans, None


def _jsonl_spark(spark, path: Path, keep: list):
    """JSONL read as numbered lines, then parsed with Spark's JSON functions.

    Like DuckDB's ingest: blank lines are no rows; a line that is not valid UTF-8, over 4 MiB, not
    valid JSON, or not a JSON object is a reject; the columns are the union of the objects' keys, first
    seen first, named by ``data.json_columns`` (keys differing only in case); values as
    ``json_extract_string`` gives them (strings unescaped, other values as JSON text).
    """
    from pyspark.sql import functions as F

    from .data import json_columns

    lines = numbered_lines(spark, path).where(F.trim("value", F.lit(ZS_SPACES)) != "")
    v = F.try_parse_json("value")
    kind = F.schema_of_variant(v)
    # Spark's parser takes trailing text after a value ({"a": 1} x); DuckDB's does not
    trailing = ~F.col("value").rlike("[}\\]][ \\t\\n\\r]*\\z")
    duck_type = (F.when(kind.startswith("ARRAY"), "ARRAY").when(kind == "STRING", "VARCHAR")
                 .when(kind == "BOOLEAN", "BOOLEAN").when(kind == "VOID", "NULL")
                 .when(kind.rlike("^(BIGINT|INT|SMALLINT|TINYINT|DECIMAL\\([0-9]+,0\\))$"),
                       F.when(F.trim("value").startswith("-"), "BIGINT").otherwise("UBIGINT"))
                 .otherwise("DOUBLE"))
    too_long = _too_long()
    reason = (F.when(too_long.isNotNull(), too_long)
              .when(~F.is_valid_utf8("value"), F.lit(INVALID_ENCODING))
              .when(v.isNull() | ((kind.startswith("OBJECT") | kind.startswith("ARRAY")) & trailing),
                    F.lit("malformed JSON"))
              .when(~kind.startswith("OBJECT"), F.concat(F.lit("not a JSON object: "), duck_type)))
    parsed = _cached(lines.select(F.col("line").alias("source_line"), reason.alias("reason"), "value"), keep)
    valid = parsed.where("reason is null")
    first_seen = (valid.select("source_line", F.posexplode(F.json_object_keys("value")).alias("pos", "key"))
                  .groupBy("key").agg(F.min(F.struct("source_line", "pos")).alias("first")).collect())
    keys = [r["key"] for r in sorted(first_seen, key=lambda r: tuple(r["first"]))]  # few: no Spark sort job
    columns = json_columns(keys, path)
    # DuckDB's order: the first seen of each name (case-insensitive), then the later case variants
    columns = [c for c in columns if c[0] == c[1]] + [c for c in columns if c[0] != c[1]]
    if columns:  # json_tuple: one parse per line, keys by name (no JSON path: any key works)
        rows = valid.select("source_line", F.json_tuple("value", *[k for k, _ in columns]))
        rows = rows.toDF("source_line", *[n for _, n in columns])
    else:
        rows = valid.select("source_line")
    rejects = parsed.where("reason is not null").select("source_line", "reason", _raw_line().alias("raw_line"))
    return rows, rejects


def _parquet_spark(spark, path: Path, keep: list):
    """Parquet: every column as a string, ``source_line`` = row number in the file (1-based)."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(path))
    cols = [F.col(f"`{c}`").cast("string").alias(c) for c in df.columns]
    rows = df.select((F.col("_metadata.row_index") + 1).alias("source_line"), *cols)
    rejects = spark.createDataFrame([], "source_line bigint, reason string, raw_line string")
    return rows, rejects


READERS_SPARK = {"csv": _csv_spark, "jsonl": _jsonl_spark, "parquet": _parquet_spark}
