"""Data preparation: ingest raw files, clean and deduplicate, split — SQL over the workspace.

    workbench ingest data/sample/messages.csv data/sample/messages_app.jsonl --table stg_messages
    python -c "import workbench, workbench.data as d; d.build_spine(workbench.connect())"

Ingest never aborts on a malformed row and never drops one silently: each lands in
``ingest_rejects`` with its file, line and reason. Every parsed row gets a stable ``source_row_id``
(``'<file name>:<line>'``). Cleaning, dedup and splits are the SQL files in ``sql/`` (one per table),
run with ``run_sql_file``, so the same SQL runs from a ``%%sql`` cell, headless, and on Spark
(``engine="spark"``: ``workbench.spark``, docs/spark.md).
"""
from __future__ import annotations

import datetime as dt
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import duckdb
import numpy as np
import pandas as pd

from .workspace import (LAKE_RESERVED, UNCOMPRESSED_TABLES, WorkspaceError, lake_names, parquet_layout,
                        run_sql_file, sql_literal, table_exists, transaction, uncompressed, unique_names)

FORMATS = ("csv", "jsonl", "parquet")
# Rows per Parquet row group of the workspace's tables, unless the workspace sets its own
# (DuckLake option parquet_row_group_size). DuckLake's default, 122,880, makes DuckDB's Parquet writer
# spend about a fifth more CPU on these tables (measured: stg_messages, int_messages_data) for no
# faster reads; files are 0.4% larger.
ENGINES = ("duckdb", "spark")  # engine="spark": the same SQL and ingest rules on Spark (workbench.spark)
REJECTS_DDL = """
create table if not exists ingest_rejects (
    source_row_id varchar,   -- '<file name>:<line>'
    table_name varchar,      -- the table the row was meant for
    source_file varchar,     -- full path as given
    source_line bigint,      -- 1-based line (CSV: the physical line the record starts on)
    reason varchar,
    raw_line varchar,        -- the offending line (invalid bytes replaced)
    ingested_at timestamp
)
"""


class IngestError(WorkspaceError):
    """A file could not be ingested at all (missing, unreadable, unknown format)."""


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use one of {ENGINES}")
    return engine


def _run_sql(con: duckdb.DuckDBPyConnection, name: str, params: dict, engine: str) -> None:
    if engine == "spark":
        from .spark import run_sql_file_spark
        run_sql_file_spark(con, name, params)
    else:
        run_sql_file(con, name, params)


def detect_format(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix, fmt in ((".csv", "csv"), (".tsv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix) or name.endswith(suffix + ".gz"):
            return fmt
    raise IngestError(f"{path}: cannot tell the format from the name; pass --format csv|jsonl|parquet")


def _q(path: str | os.PathLike) -> str:
    return sql_literal(str(path))


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------- readers
# Each reader returns (select SQL of parsed rows, list of reject tuples). Parsed rows carry
# source_line; every source column is VARCHAR (typing happens in the cleaning SQL, with reasons).

def _csv(con: duckdb.DuckDBPyConnection, path: Path, tag: str = "") -> tuple[str, list[tuple]]:
    """CSV via DuckDB's reader with ``store_rejects``: bad rows go to ``reject_errors``.

    Every row and reject gets the physical line its record starts on (header = line 1). Parsed rows
    land in the temp table in file order (insertion order is preserved, also with a parallel scan),
    so a row's ``rowid`` is its ordinal and its line is ``rowid + 2`` plus the number of lines before
    it on which no row starts (rejects, blank lines, the further lines of records that span several):
    a hash join on a small table of shifts. DuckDB numbers records, not lines; when rows + rejects +
    blank lines + header = lines, every record is one line and its numbers are the lines
    (``_shifts``). Otherwise (a quoted field holds a line break) rejects are placed by their bytes
    (``_reject_spans``) and rows by the line breaks in their values (``_record_lines``,
    ``_line_shifts``).
    A file that mixes ``\\n`` and ``\\r\\n`` line ends (DuckDB's reader aborts on one) is read from a
    copy with every ``\\r\\n`` written as ``\\n``: the same lines, so the same line numbers.
    """
    delim = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    header = _csv_header(path, delim)
    columns = "{" + ", ".join(f"{sql_literal(c)}: 'VARCHAR'" for c in header) + "}"
    # No dialect sniffing: one malformed line can make the sniffer pick a wrong dialect for the
    # whole file. RFC 4180 with the header's columns, every value VARCHAR.
    opts = (f"auto_detect = false, header = true, columns = {columns}, delim = {sql_literal(delim)}, "
            "quote = '\"', escape = '\"', store_rejects = true, "
            "rejects_table = 'wb_reject_errors', rejects_scan = 'wb_reject_scans', "
            "strict_mode = true, null_padding = false, max_line_size = 4194304, parallel = true")
    table = f"temp.wb_csv_rows{tag}"
    # the line scan (Python, one core) runs beside DuckDB's parse, which releases the GIL
    scan_pool = ThreadPoolExecutor(1, thread_name_prefix="wb-line-scan")
    scan = scan_pool.submit(_line_scan, path)
    scan_pool.shutdown(wait=False)
    with tempfile.TemporaryDirectory(prefix="wb-csv-") as tmp:
        read_path = path
        try:
            con.execute(f"create or replace temp table wb_csv_rows{tag} as "
                        f"select * from read_csv({_q(path)}, {opts})")
        except duckdb.Error:
            if not _mixed_line_ends(path):
                raise
            con.execute("drop table if exists temp.wb_reject_errors; drop table if exists temp.wb_reject_scans")
            read_path = _lf_copy(path, Path(tmp) / "lf.csv")
            con.execute(f"create or replace temp table wb_csv_rows{tag} as "
                        f"select * from read_csv({_q(read_path)}, {opts})")
        rej = con.execute(
            "select distinct line, error_type, error_message, csv_line, line_byte_position "
            "from temp.wb_reject_errors order by line, error_type, error_message"  # a record can be reported twice
        ).fetchall()
        con.execute("drop table if exists temp.wb_reject_errors; drop table if exists temp.wb_reject_scans")
        # A record's csv_line starts at byte line_byte_position - 1 and carries the line breaks of
        # blank lines before it: strip those. Several errors can hit one record: one reject per
        # record (DuckDB's line) with all reasons joined.
        by_line: dict[int, list] = {}
        for line, etype, msg, raw, pos in rej:
            text = (raw or "").lstrip("\r\n")
            entry = by_line.setdefault(int(line), [{}, text.rstrip("\r\n"), int(pos) - 1 + len(raw or "") - len(text)])
            entry[0].setdefault(etype.lower().replace("_", " "), msg)  # one reason per error type
        if by_line and cr_line_ends(path):  # old Mac line ends: DuckDB's lines are no physical lines here
            first = min(by_line)
            raise cr_reject_error(path, first, _reasons(by_line[first][0]))
        n_lines, blanks = scan.result()  # blank lines are no rows
        n_rows = con.execute(f"select count(*) from {table}").fetchall()[0][0]
        cols = [r[0] for r in con.execute(f"describe {table}").fetchall()]
        if n_rows + len(by_line) + len(blanks) + 1 == n_lines:  # one line per record: DuckDB's lines
            spans, multi = {line: (line, 1) for line in by_line}, None
        else:  # a record over several lines (or the lines an unterminated quote swallows)
            spans, multi = _reject_spans(read_path, by_line), _record_lines(con, table, cols)
    rejects = sorted((*spans[line], _reasons(reasons), raw)
                     for line, (reasons, raw, _) in by_line.items())  # (first line, lines, reason, raw)
    if multi is None:  # rejects and blank lines: the lines before a row on which no row starts
        shift, block = _shifts(con, f"wb_csv_shift{tag}", sorted({r[0] for r in rejects} | set(blanks)),
                               first_data_line=2, n_rows=n_rows), SHIFT_BLOCK
    else:
        lo, shifts = _line_shifts(path, [(first, n) for first, n, _, _ in rejects], blanks, multi)
        block = max(1, min(SHIFT_BLOCK, n_rows // max(1, len(lo))))  # a row meets about 2 ranges at most
        shift = _shift_table(con, f"wb_csv_shift{tag}", lo, shifts, n_rows=n_rows, block=block)
    select = ", ".join(f'r.{_qi(c)}' for c in cols)
    sql = (f"select r.rowid + 2 + {shift} as source_line, {select} from {table} r "
           f"{_shift_join(shift, tag, 'csv', block=block)}")
    # An unterminated quote makes DuckDB's reader swallow every line after it: neither rows nor
    # rejects. The record keeps its first line; every line after it is a reject of its own, so the
    # accounting adds up.
    swallowed = []
    if rejects and "unterminated quote" in rejects[-1][2]:
        first, _, reason, raw = rejects[-1]
        last_row = con.execute(f"select max(source_line) from ({sql})").fetchall()[0][0] or 0
        if last_row < first < n_lines:
            rejects[-1] = (first, 1, reason, raw.split("\n")[0].rstrip("\r"))
            swallowed = [(phys, f"swallowed by the unterminated quoted field that starts at line {first}", text)
                         for phys, text in _read_lines(path, first + 1, n_lines) if phys not in blanks]
    out = [(first, reason if n == 1 else f"{reason} (one record over physical lines {first}-{first + n - 1}: "
            "a quoted field runs across line ends; raw_line holds all of them)", raw)
           for first, n, reason, raw in rejects]
    return sql, out + swallowed


def _reasons(by_type: dict[str, str]) -> str:
    """A rejected record's reasons, one per error type: 'missing columns: ...; unquoted value: ...'."""
    return "; ".join(f"{t}: {m}" for t, m in sorted(by_type.items()))


def _reject_spans(path: Path, by_line: dict[int, list]) -> dict[int, tuple[int, int]]:
    """(first physical line, lines) of each rejected record, by DuckDB's line: from its byte range.

    ``csv_line`` holds the record's bytes, each invalid UTF-8 byte as one ``?`` (one that eats a line
    break too), so its UTF-8 length is the record's length in bytes, and its last byte says its last
    line."""
    ends = {line: pos + max(1, len(raw.encode("utf-8"))) - 1 for line, (_, raw, pos) in by_line.items()}
    at = _physical_lines(path, {pos for _, _, pos in by_line.values()} | set(ends.values()))
    return {line: (at[pos], at[ends[line]] - at[pos] + 1) for line, (_, _, pos) in by_line.items()}


def _record_lines(con: duckdb.DuckDBPyConnection, table: str, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ordinals, further lines) of the parsed rows whose record spans several lines, in file order.

    A line break outside quotes ends a record, so a record's further lines are the ``\\n`` in its
    values (DuckDB keeps them, ``\\r\\n`` included): DuckDB's own parse, no second CSV parser."""
    if not cols:
        return np.zeros(0, "int64"), np.zeros(0, "int64")
    quoted = [_qi(c) for c in cols]
    breaks = " + ".join(f"coalesce(len(string_split({c}, chr(10))) - 1, 0)" for c in quoted)  # 2x replace()
    where = " or ".join(f"contains({c}, chr(10))" for c in quoted)
    got = con.execute(f"select rowid as i, {breaks} as n from {table} where {where} order by rowid").fetchnumpy()
    return np.asarray(got["i"], "int64"), np.asarray(got["n"], "int64")


def _line_shifts(path: Path, rejects: list[tuple[int, int]], blanks: list[int],
                 multi: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Where the line shift of the parsed CSV rows changes: (ordinals, shift from there on).

    Row ``i`` (0-based, file order) starts on line ``i + 2 + shift(i)``, ``shift(i)`` counting the
    lines before it on which no row starts: the further lines of earlier rows over several lines
    (``multi``: ordinals, further lines), every line of earlier rejected records (``rejects``: first
    line, lines; file order) and the blank lines between records (``blanks``: every blank line; one
    inside a record, a quoted field holding an empty line, is part of that record). The walk visits
    the rejects and blank lines only: rows between two of them are placed by bisecting the rows over
    several lines, whose first lines are ``2 + ordinal + further lines before + gap lines before``.
    """
    from bisect import bisect_left

    ords, extra = multi
    before = np.concatenate(([0], np.cumsum(extra)))  # before[m]: further lines of the multi-line rows < m
    # A multi-line row's first line is 2 + pos[m] + the gap lines before it. Taking every gap line
    # so far overshoots for rows before the last gap, but not past the event: those gap lines lie
    # between such a row and the event. So bisecting pos with all gap lines so far finds the last
    # multi-line row starting before an event, and whether the event lies inside it.
    pos = (ords + before[:-1]).tolist()
    extra_l, before_l = extra.tolist(), before.tolist()  # bisect and index lists: 5x faster than numpy's
    events = sorted([(first, n, True) for first, n in rejects] + [(b, 1, False) for b in blanks])
    at, add = [], []  # the gaps: rows before each, lines
    gap = rows = 0  # gap lines so far; rows before the last gap
    for line, n, is_reject in events:
        m = bisect_left(pos, line - 2 - gap) - 1  # the last multi-line row starting before this line
        # inside that row, or inside the last reject (then fewer rows would come before it than before the reject)
        if (m >= 0 and line <= pos[m] + 2 + gap + extra_l[m]) or line - 2 - gap - before_l[m + 1] < rows:
            if is_reject:
                raise IngestError(f"{path}: line {line}: a rejected record inside the record before it; "
                                  "cannot number the lines of this file (please report it)")
            continue  # a blank line inside a record
        rows = line - 2 - gap - before_l[m + 1]  # rows before this line
        at.append(rows)
        add.append(n)
        gap += n
    at = np.concatenate((ords + 1, np.asarray(at, "int64")))
    order = np.argsort(at, kind="stable")
    at, total = at[order], np.cumsum(np.concatenate((extra, np.asarray(add, "int64")))[order])
    last = np.flatnonzero(np.append(at[1:] != at[:-1], len(at) > 0))  # one shift per ordinal: its total
    return at[last], total[last]


def cr_line_ends(path: Path) -> bool:
    """True when the file's lines end with ``\\r`` alone (old Mac): it has a ``\\r`` and no ``\\n``.
    Stops at the first ``\\n``: a file with ``\\n`` line ends is decided by its first 64 KiB."""
    seen_cr, size = False, 1 << 16
    with _open_bytes(path) as f:
        while chunk := f.read(size):
            if b"\n" in chunk:
                return False
            seen_cr, size = seen_cr or b"\r" in chunk, _CHUNK
    return seen_cr


def cr_reject_error(path: Path, line: int, reason: str) -> "IngestError":
    """The refusal of a file with lone-CR line ends that holds a rejected record (both engines)."""
    return IngestError(f"{path}: line {line}: {reason}: the file's lines end with \\r alone (old Mac), and the "
                       "ingest cannot number the lines of such a file that holds a rejected record (DuckDB's "
                       "reader counts lines by \\n); fix the record, or convert the line ends to \\n")


def _mixed_line_ends(path: Path) -> bool:
    """True when some lines end with ``\\r\\n`` and others with ``\\n`` alone.

    A chunk without a ``\\r`` (most of a file with ``\\n`` line ends) is only searched for a
    ``\\n``: a fifth of the CPU of counting both."""
    crlf = bare_lf = False
    with _open_bytes(path) as f:
        carry = b""
        while chunk := f.read(_CHUNK):
            buf = carry + chunk
            carry = b"\r" if buf.endswith(b"\r") else b""  # its \n may open the next chunk
            body = buf[:len(buf) - len(carry)]
            if b"\r" in body:
                n_crlf = body.count(b"\r\n")
                crlf = crlf or n_crlf > 0
                bare_lf = bare_lf or body.count(b"\n") > n_crlf
            else:
                bare_lf = bare_lf or b"\n" in body
            if crlf and bare_lf:
                return True
    return False


def _lf_copy(path: Path, dest: Path) -> Path:
    """``path`` with every ``\\r\\n`` written as ``\\n`` (also inside quoted values), uncompressed."""
    with _open_bytes(path) as src, open(dest, "wb") as out:
        carry = b""
        while chunk := src.read(_CHUNK):
            chunk = carry + chunk
            carry = b"\r" if chunk.endswith(b"\r") else b""  # its \n may open the next chunk
            out.write(chunk[:len(chunk) - len(carry)].replace(b"\r\n", b"\n"))
        out.write(carry)
    return dest


_CHUNK = 1 << 24  # bytes per read of the streaming scans


def _physical_lines(path: Path, positions: set[int]) -> dict[int, int]:
    """The physical line (1-based) holding each byte position: one streaming pass."""
    out: dict[int, int] = {}
    todo = sorted(positions)
    base, offset, k = 0, 0, 0  # newlines before the chunk, the chunk's file offset, next position
    with _open_bytes(path) as f:
        while k < len(todo) and (chunk := f.read(_CHUNK)):
            last = 0
            while k < len(todo) and todo[k] < offset + len(chunk):
                pos = todo[k] - offset
                base += chunk.count(b"\n", last, pos)
                last = pos
                out[todo[k]] = base + 1
                k += 1
            base += chunk.count(b"\n", last)
            offset += len(chunk)
    for pos in todo[k:]:  # past the end of the file
        out[pos] = base + 1
    return out


SHIFT_BLOCK = 256  # rows per block of the shift join: each row meets about 1 + 256 * (reject rate) shifts


def _shifts(con: duckdb.DuckDBPyConnection, name: str, skipped: list[int], *, first_data_line: int,
            n_rows: int) -> str:
    """A temp table of line shifts for parsed rows numbered by ordinal; returns the SQL term to add.

    Parsed row ``i`` (0-based, file order) sits on line ``i + first_data_line + shift(i)`` where
    ``shift(i)`` counts the skipped lines (rejects, blanks) before it: ``#{j : a_j <= i}`` with
    ``a_j = line_j - first_data_line - (j - 1)`` the number of rows parsed before the j-th skipped
    line (``_shift_table``). No skipped lines: the term is 0.
    """
    starts: dict[int, int] = {}  # a -> largest j with a_j = a (consecutive skipped lines share an a)
    for j, line in enumerate(sorted(skipped), 1):
        starts[line - first_data_line - (j - 1)] = j
    los = sorted(starts)
    return _shift_table(con, name, los, [starts[lo] for lo in los], n_rows=n_rows)


def _shift_table(con: duckdb.DuckDBPyConnection, name: str, los: Sequence[int], shifts: Sequence[int], *,
                 n_rows: int, block: int = SHIFT_BLOCK) -> str:
    """The temp table of shifts ``shifts[k]`` for the ordinals ``[los[k], los[k + 1])``; the SQL term.

    Each range is listed once per block of ``block`` ordinals it touches, so a row finds its range
    with an equality join on its block (cheap, parallel) instead of a sort-based ASOF join."""
    if not len(los):
        return "0"
    lo = np.asarray(los, dtype="int64")
    hi = np.append(lo[1:], n_rows)
    keep = lo < hi
    lo, hi, shift = lo[keep], hi[keep], np.asarray(shifts, dtype="int64")[keep]
    first, count = lo // block, (hi - 1) // block - lo // block + 1  # the blocks each range touches
    k = np.repeat(np.arange(len(lo)), count)
    blocks = first[k] + np.arange(len(k)) - np.repeat(np.cumsum(count) - count, count)
    frame = pd.DataFrame({"block": blocks, "lo": lo[k], "hi": hi[k], "shift": shift[k]})
    con.register("wb_shift_ranges", frame)
    try:
        con.execute(f"create or replace temp table {name} as select * from wb_shift_ranges")
    finally:
        con.unregister("wb_shift_ranges")
    return "coalesce(x.shift, 0)"


def _shift_join(shift: str, tag: str, kind: str, block: int = SHIFT_BLOCK) -> str:
    if shift == "0":
        return ""
    return (f"left join temp.wb_{kind}_shift{tag} x on x.block = r.rowid // {block} "
            "and r.rowid >= x.lo and r.rowid < x.hi")


def _open_bytes(path: Path):
    import gzip

    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _line_scan(path: Path) -> tuple[int, list[int]]:
    """Physical lines in a file, and the numbers of its blank lines."""
    n, blanks = 0, []
    with _open_bytes(path) as f:
        for n, line in enumerate(f, 1):
            if line == b"\n" or line == b"\r\n":
                blanks.append(n)
    return n, blanks


def _read_lines(path: Path, first: int, last: int) -> list[tuple[int, str]]:
    out = []
    with _open_bytes(path) as f:
        for n, line in enumerate(f, 1):
            if n > last:
                break
            if n >= first:
                out.append((n, line.rstrip(b"\r\n").decode("utf-8", errors="replace")))
    return out


def _csv_header(path: Path, delim: str) -> list[str]:
    import csv
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        row = next(csv.reader(f, delimiter=delim), None)
    return _header_names(row, path)


def _header_names(row: list[str] | None, path: Path) -> list[str]:
    """Column names from a CSV header row (shared with the Spark ingest)."""
    if not row or not any(c.strip() for c in row):
        raise IngestError(f"{path}: line 1: no header row (CSV files need one)")
    names: list[str] = []
    for i, c in enumerate(row, 1):
        name = c.strip().lstrip("\ufeff") or f"column{i}"
        if name in names:
            raise IngestError(f"{path}: line 1: column {name!r} appears twice in the header")
        same = [n for n in names if n.lower() == name.lower()]
        if same:  # column names are case-insensitive in DuckDB and Spark
            raise IngestError(f"{path}: line 1: columns {same[0]!r} and {name!r} differ only in case "
                              "(column names are case-insensitive); rename one in the header")
        names.append(name)
    return names


def _jsonl(con: duckdb.DuckDBPyConnection, path: Path, tag: str = "") -> tuple[str, list[tuple]]:
    """JSONL read as lines (so every line has its number), then parsed with DuckDB's JSON functions.

    A line that is not valid UTF-8, not valid JSON, or not a JSON object is a reject with its line.
    Blank lines are not rows. Columns are the union of the keys of the valid objects, first seen first.
    """
    # auto_detect off: the sniffer aborts the whole read on a line over max_line_size (the reader
    # alone rejects that line and goes on)
    opts = ("auto_detect = false, columns = {'raw_line': 'VARCHAR'}, header = false, delim = '\\x1e', quote = '', escape = '', "
            "store_rejects = true, rejects_table = 'wb_reject_errors', rejects_scan = 'wb_reject_scans', "
            "max_line_size = 4194304, strict_mode = false, parallel = true")
    # DuckDB's reader counts the \r of a \r\n line as a line of its own in a file that mostly ends
    # lines with \n (a silent shift of every later line number): read such a file from an LF copy
    with tempfile.TemporaryDirectory(prefix="wb-jsonl-") as tmp:
        read_path = _lf_copy(path, Path(tmp) / "lf.jsonl") if _mixed_line_ends(path) else path
        con.execute(f"create or replace temp table wb_json_lines{tag} as "
                    f"select raw_line from read_csv({_q(read_path)}, {opts})")
    bad = con.execute(
        "select distinct line, error_type, error_message, csv_line from temp.wb_reject_errors order by line"
    ).fetchall()
    # lines the reader rejected (invalid UTF-8) are absent from wb_json_lines: shift like CSV
    n_rows = con.execute(f"select count(*) from temp.wb_json_lines{tag}").fetchall()[0][0]
    shift = _shifts(con, f"wb_json_shift{tag}", [int(line) for line, *_ in bad], first_data_line=1, n_rows=n_rows)
    con.execute(f"""
        create or replace temp table wb_json_parsed{tag} as
        select r.rowid + 1 + {shift} as source_line, r.raw_line,
               case when not json_valid(r.raw_line) then 'malformed JSON'
                    -- valid JSON opening with '{{' is an object: no second parse for its type
                    when substr(r.raw_line, 1, 1) <> '{{' and json_type(r.raw_line) <> 'OBJECT'
                        then 'not a JSON object: ' || json_type(r.raw_line)
               end as reason
        from temp.wb_json_lines{tag} r {_shift_join(shift, tag, 'json')}
        where r.raw_line <> '' and (strpos({_ZS}, substr(r.raw_line, 1, 1)) = 0 or trim(r.raw_line) <> '')
    """)
    con.execute(f"drop table temp.wb_json_lines{tag}")  # its lines are in wb_json_parsed now: free the memory
    rejects = [(int(line), f"{et.lower().replace('_', ' ')}: {msg}", raw) for line, et, msg, raw in bad]
    rejects += con.execute(f"select source_line, reason, raw_line from temp.wb_json_parsed{tag} "
                           "where reason is not null order by source_line").fetchall()
    keys: list[str] = []
    for (key_list,) in con.execute(f"""
            select json_keys(raw_line) as ks from temp.wb_json_parsed{tag} where reason is null
            group by ks order by min(source_line)""").fetchall():
        keys += [k for k in key_list if k not in keys]
    # of keys differing only in case the first seen is in the struct, each other one its own column
    # read by path (a struct holding both would match neither: their values were lost)
    columns = json_columns(keys, path)
    first = {k.lower(): k for k, name in columns if k == name}
    variants = [(k, name) for k, name in columns if k != name]
    # one parse per line into a struct of VARCHARs (numbers and nested values keep their JSON text)
    structure = "{" + ", ".join(f"{_json_path_key(k)}: \"VARCHAR\"" for k in first.values()) + "}"
    extra = "".join(f", json_extract_string(raw_line, {sql_literal('$.' + _json_path_key(k))}) as {_qi(name)}"
                    for k, name in variants)
    sql = ("select source_line" + (f", unnest(from_json(raw_line, {sql_literal(structure)}))" if keys else "")
           + extra + f" from temp.wb_json_parsed{tag} where reason is null")
    con.execute("drop table if exists temp.wb_reject_errors; drop table if exists temp.wb_reject_scans")
    return sql, sorted(rejects)


def json_columns(keys: Sequence[str], path: Path) -> list[tuple[str, str]]:
    """(key, column name) of a JSONL file's keys, first seen first (both engines' ingest).

    Column names are case-insensitive: of keys differing only in case ('a', 'A') the first seen keeps
    its name, each later one becomes '<key>_<n>' (the smallest n not taken). An empty key is refused:
    no column can be named after it."""
    if "" in keys:
        raise IngestError(f'{path}: an empty JSON key (""): name the key; no column can be named after it')
    first: dict[str, str] = {}
    for k in keys:
        first.setdefault(k.lower(), k)
    taken, out = set(first), []
    for k in keys:
        name = k
        if first[k.lower()] != k:
            n = 1
            while f"{k}_{n}".lower() in taken:
                n += 1
            name = f"{k}_{n}"
            taken.add(name.lower())
        out.append((k, name))
    return out


# The characters DuckDB's trim() removes (Unicode category Zs). A line whose first character is not
# one of them is not blank: trim (which copies every line) runs only on the others.
_ZS = sql_literal("\u0020\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                  "\u202f\u205f\u3000")


def _json_path_key(key: str) -> str:
    return '"' + key.replace('\\', '\\\\').replace('"', '\\"') + '"'


def _parquet(con: duckdb.DuckDBPyConnection, path: Path, tag: str = "") -> tuple[str, list[tuple]]:
    cols = [r[0] for r in con.execute(f"describe select * from read_parquet({_q(path)})").fetchall()]
    select = ", ".join(f'cast({_qi(c)} as varchar) as {_qi(c)}' for c in cols)
    return f"select file_row_number + 1 as source_line, {select} from read_parquet({_q(path)}, file_row_number = true)", []


READERS = {"csv": _csv, "jsonl": _jsonl, "parquet": _parquet}


# ---------------------------------------------------------------------------------------- ingest

def ingest(con: duckdb.DuckDBPyConnection, files: Sequence[str | os.PathLike] | str, *, table: str,
           fmt: str = "auto", mode: str = "replace", engine: str = "duckdb") -> dict[str, Any]:
    """Load files into ``table`` (+ ``ingest_rejects``) in one transaction; returns a per-file report.

    ``mode='replace'`` rebuilds the table (and its rejects) from these files; ``'append'`` adds them,
    refusing a file whose rows are already in the table (same ``source_row_id``).
    ``engine='spark'`` parses the files on Spark (same rows, rejects and ids; ``workbench.spark``).
    """
    _check_engine(engine)
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not files:
        raise IngestError("no input files given")
    if mode not in ("replace", "append"):
        raise IngestError(f"mode must be 'replace' or 'append', not {mode!r}")
    if not table.replace("_", "").isalnum():
        raise IngestError(f"table name {table!r}: use letters, digits and underscores")
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise IngestError(f"{p}: " + ("a folder, not a file" if p.is_dir() else "no such file"))
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise IngestError(f"two input files share a name ({names}); source_row_id needs unique names")
    fmts = [detect_format(p) if fmt == "auto" else fmt for p in paths]
    for p, f in zip(paths, fmts):
        if f not in FORMATS:
            raise IngestError(f"{p}: unknown format {f!r} (use one of {FORMATS})")
    parquet_layout(con)
    if engine == "spark":
        from .spark_ingest import ingest_spark
        return ingest_spark(con, paths, fmts, table=table, mode=mode)

    # Parse every file first (temp tables and views, outside the workspace), then write all in one
    # transaction. Each file's rows are a view over its parsed temp table: written once, into the lake.
    # JSONL files first: reading one holds its lines twice for a moment (the lines, then the parsed
    # lines), which is best done before a large CSV file's rows are held too (less spilling to disk)
    parts, report = [], {str(p): {"format": f, "rows": 0, "rejected": 0} for p, f in zip(paths, fmts)}
    for i in sorted(range(len(paths)), key=lambda i: fmts[i] != "jsonl"):
        p, f = paths[i], fmts[i]
        try:
            sql, rejects = READERS[f](con, p, f"_{i}")
        except duckdb.Error as exc:
            raise IngestError(f"{p}: cannot read as {f}: {exc}") from exc
        view = (f"select {sql_literal(p.name)} || ':' || source_line as source_row_id, "
                f"{sql_literal(str(p))} as source_file, * from ({sql})")
        cols = [d[0] for d in con.execute(f"{view} limit 0").description]
        if any(c.lower() in LAKE_RESERVED for c in cols):  # a source column row_id becomes row_id_1
            names = lake_names(unique_names(cols))  # renamed by position: names may repeat in any case
            view = f"select * from ({view}) as wb_named({', '.join(_qi(n) for n in names)})"
        con.execute(f"create or replace temp view wb_part_{i} as {view}")
        parts.append((i, p, rejects))
        report[str(p)]["rejected"] = len(rejects)
    parts.sort()  # the files' order: the order of the table's rows and columns
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rejects_df = pd.DataFrame(
        [(f"{p.name}:{line}", table, str(p), line, reason, _printable(raw), now)
         for _, p, rejects in parts for line, reason, raw in rejects],
        columns=["source_row_id", "table_name", "source_file", "source_line", "reason", "raw_line", "ingested_at"])

    def write(c: duckdb.DuckDBPyConnection) -> None:
        c.execute(REJECTS_DDL)
        union = " union all by name ".join(f"select * from temp.wb_part_{i}" for i, _, _ in parts)
        write_rows = (lambda q: uncompressed(c, lambda: c.execute(q))) if table in UNCOMPRESSED_TABLES else c.execute
        if mode == "replace" or not table_exists(c, table):
            write_rows(f'create or replace table "{table}" as {union}')
            c.execute("delete from ingest_rejects where table_name = ?", [table])
        else:
            have = {r[0] for r in c.execute(f'describe "{table}"').fetchall()}
            for i, p, _ in parts:
                extra = [r[0] for r in c.execute(f"describe select * from temp.wb_part_{i}").fetchall()
                         if r[0] not in have]
                if extra:
                    raise IngestError(f"{p}: column(s) {', '.join(extra)} not in table {table} (its columns: "
                                      f"{', '.join(sorted(have))}); use mode='replace' to rebuild it from "
                                      "all files at once")
            dup = c.execute(f'select count(*) from "{table}" t join ({union}) n using (source_row_id)').fetchall()[0][0]
            if len(rejects_df):  # a file whose every row was rejected left no row in the table
                c.register("wb_new_rejects", rejects_df[["source_row_id"]])
                dup += c.execute("select count(*) from ingest_rejects r join wb_new_rejects n using (source_row_id) "
                                 "where r.table_name = ?", [table]).fetchall()[0][0]
                c.unregister("wb_new_rejects")
            if dup:
                raise IngestError(f"{table}: {dup} rows of these files were ingested before (same "
                                  "source_row_id); use mode='replace' to reload")
            write_rows(f'insert into "{table}" by name {union}')
        if len(rejects_df):
            c.register("wb_new_rejects", rejects_df)
            c.execute("insert into ingest_rejects by name select * from wb_new_rejects")
            c.unregister("wb_new_rejects")
        counts = dict(c.execute(f'select source_file, count(*) from "{table}" where source_file in '
                                f'({", ".join(sql_literal(str(p)) for _, p, _ in parts)}) group by 1').fetchall())
        for _, p, _ in parts:
            report[str(p)]["rows"] = int(counts.get(str(p), 0))

    try:
        transaction(con, write, what=f"ingesting into {table}")
    finally:  # free the parsed copies (temp tables live as long as the connection)
        for i, _, _ in parts:
            con.execute(f"drop view if exists temp.wb_part_{i}")
        for (name,) in con.execute("select table_name from duckdb_tables() where temporary "
                                   "and regexp_matches(table_name, '^wb_(csv|json)_.*_[0-9]+$')").fetchall():
            con.execute(f'drop table if exists temp."{name}"')
    return report


def _printable(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    raw = str(raw)
    return raw[:2000 * (1 + raw.count("\n"))]  # 2,000 characters per physical line the record spans


# ---------------------------------------------------------------------------------------- pipeline

SAMPLE_FILES = {  # table -> sample files that feed it
    "stg_messages": ["messages.csv", "messages_app.jsonl"],
    "stg_pool": ["unlabeled_pool.jsonl"],
    "stg_kb_articles": ["kb_articles.jsonl"],
    "stg_customers": ["customers.csv"],
}


def ingest_sample(con: duckdb.DuckDBPyConnection, sample_dir: str | os.PathLike,
                  engine: str = "duckdb") -> dict[str, Any]:
    """Ingest every file of a sample data folder into its staging table."""
    d = Path(sample_dir)
    # every file first: a missing one must not leave some staging tables reloaded and others stale
    missing = [f for files in SAMPLE_FILES.values() for f in files if not (d / f).is_file()]
    if missing:
        raise IngestError(f"{d}: missing {', '.join(missing)} (a sample data folder holds "
                          f"{', '.join(f for files in SAMPLE_FILES.values() for f in files)}); nothing ingested")
    return {table: ingest(con, [d / f for f in files], table=table, engine=engine)
            for table, files in SAMPLE_FILES.items()}


CLEAN_SQL = ["02_int_messages", "02_examples", "02_corpus_documents", "02_label_pool", "02_row_fate"]
CLEAN_DEFAULTS = {"max_chars": 4000, "min_chars": 3}
SPLIT_DEFAULTS = {"train_fraction": 0.8, "validation_fraction": 0.1, "split_seed": 42,
                  "group_key": "", "stratify": True}


# The raw columns the cleaning SQL reads from each staging table (besides source_row_id, source_file).
CLEAN_INPUT_COLUMNS = {
    "stg_messages": ["message_id", "customer_id", "created_at", "channel", "region", "age_band", "text",
                     "intent", "reply"],
    "stg_pool": ["message_id", "customer_id", "created_at", "channel", "region", "age_band", "text"],
    "stg_kb_articles": ["doc_id", "published_at", "topic", "title", "body"],
}


def _check_clean_inputs(con: duckdb.DuckDBPyConnection) -> None:
    """Every staging table and column the cleaning SQL reads, checked before any of it runs (a
    failure half way would leave examples rebuilt and row_fate stale)."""
    for table, cols in CLEAN_INPUT_COLUMNS.items():
        if not table_exists(con, table):
            raise WorkspaceError(f"cleaning needs table {table}: ingest its files first (notebook 01, "
                                 "workbench ingest)")
        have = {r[0] for r in con.execute(f'describe "{table}"').fetchall()}
        missing = [c for c in cols if c not in have]
        if missing:
            files = [r[0] for r in con.execute(f'select distinct source_file from "{table}" order by 1 limit 5')
                     .fetchall()] if "source_file" in have else []
            raise WorkspaceError(f"{table} has no column {', '.join(missing)} (ingested from "
                                 f"{', '.join(files) or 'no rows'}); the cleaning SQL reads {', '.join(cols)}")


def clean(con: duckdb.DuckDBPyConnection, engine: str = "duckdb", **params: Any) -> None:
    """Run the cleaning SQL files (normalize, filter with reasons, dedup, row accounting)."""
    _check_engine(engine)
    _check_clean_inputs(con)
    parquet_layout(con)
    p = {**CLEAN_DEFAULTS, **params}
    for name in CLEAN_SQL:
        _run_sql(con, name, p, engine)


SPLIT_GROUP_KEYS = ("", "customer_id", "message_id", "channel", "region", "age_band")


def check_split_params(**params: Any) -> dict[str, Any]:
    """The split parameters with defaults filled in; a ValueError names the first bad one."""
    unknown = set(params) - set(SPLIT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown split parameter(s) {sorted(unknown)}; known: {sorted(SPLIT_DEFAULTS)}")
    p = {**SPLIT_DEFAULTS, **params}
    if p["group_key"] not in SPLIT_GROUP_KEYS:
        raise ValueError(f"group_key {p['group_key']!r}: use one of {SPLIT_GROUP_KEYS}")
    tf, vf = float(p["train_fraction"]), float(p["validation_fraction"])
    if not (0 < tf < 1 and 0 <= vf < 1 and tf + vf <= 1):
        raise ValueError(f"split fractions train={tf}, validation={vf}: need 0 < train, train + validation <= 1")
    return p


def split(con: duckdb.DuckDBPyConnection, *, reset: bool = False, engine: str = "duckdb",
          **params: Any) -> dict[str, int]:
    """Assign new examples to train/validation/test (old assignments never move); returns counts.

    ``reset=True`` forgets earlier assignments first (everything is split again)."""
    _check_engine(engine)
    p = check_split_params(**params)
    if not table_exists(con, "examples"):
        raise WorkspaceError("splits need table examples: run step 02 (data.clean) first")
    parquet_layout(con)
    if reset:
        transaction(con, lambda c: c.execute("drop table if exists splits"), what="resetting splits")
    con.execute("""create table if not exists splits (
        example_id varchar, split varchar, seed bigint, batch_id bigint, assigned_at timestamp)""")
    _run_sql(con, "06_splits", p, engine)
    _run_sql(con, "06_split_leakage", {}, engine)
    return dict(con.execute("select split, count(*) from splits group by split order by split").fetchall())


def sample_dir(path: str | os.PathLike | None = None, *, rows: int = 3000, seed: int = 7) -> Path:
    """A folder of raw files: ``path`` if given, else the bundled sample under the workspace
    (``<workspace>/sample/rows<N>-seed<S>``), generated on first use."""
    from .sample import write_sample
    from .workspace import home

    if path:
        p = Path(path)
        if not p.is_dir():
            raise IngestError(f"sample_dir {p}: no such folder")
        return p
    p = home() / "sample" / f"rows{rows}-seed{seed}"
    if not (p / "BIAS.md").exists():  # BIAS.md is written last: its presence means a complete set
        write_sample(p, rows=rows, seed=seed)
    return p


DATASETS = {"messages": "stg_messages", "label_pool": "stg_pool", "corpus": "stg_kb_articles"}


def check_row_fate(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """Check the accounting contract: per data set, ``row_fate`` rows = parsed rows + rejected rows,
    and each input row has exactly one fate. Raises ``WorkspaceError`` naming the data set otherwise."""
    out = {}
    for dataset, stg in DATASETS.items():
        if not table_exists(con, stg):
            continue
        parsed = con.execute(f'select count(*) from "{stg}"').fetchall()[0][0]
        rejected = con.execute("select count(*) from ingest_rejects where table_name = ?", [stg]).fetchall()[0][0]
        fates = dict(con.execute("select fate, count(*) from row_fate where dataset = ? group by fate",
                                 [dataset]).fetchall())
        distinct = con.execute("select count(distinct source_row_id) from row_fate where dataset = ?",
                               [dataset]).fetchall()[0][0]
        total = sum(fates.values())
        if total != parsed + rejected or distinct != total:
            raise WorkspaceError(f"row_fate for {dataset}: {total} fates ({distinct} distinct rows) but "
                                 f"{parsed} parsed + {rejected} rejected input rows")
        # the same rows, not only as many: every fate names an input row
        stray = con.execute(f"""
            select f.source_row_id from row_fate f
            where f.dataset = ? and f.source_row_id not in (
                select source_row_id from "{stg}"
                union all
                select source_row_id from ingest_rejects where table_name = ?)
            limit 3""", [dataset, stg]).fetchall()
        if stray:
            raise WorkspaceError(f"row_fate for {dataset}: fates for rows that are no input row, e.g. "
                                 f"{', '.join(r[0] for r in stray)}")
        out[dataset] = {"input_rows": parsed + rejected, **fates}
    return out


def build_spine(con: duckdb.DuckDBPyConnection, raw_dir: str | os.PathLike | None = None, *,
                rows: int = 600, seed: int = 7, engine: str = "duckdb", **params: Any) -> None:
    """Generate (if needed) and ingest the sample data, clean it and split it: the spine in one call.

    ``params`` may set the cleaning (``min_chars``, ``max_chars``) and split parameters."""
    ingest_sample(con, sample_dir(raw_dir, rows=rows, seed=seed), engine=engine)
    clean(con, engine=engine, **{k: v for k, v in params.items() if k in CLEAN_DEFAULTS})
    split(con, engine=engine, **{k: v for k, v in params.items() if k in SPLIT_DEFAULTS})


def leakage(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("select count(*) from split_leakage").fetchall()[0][0])


def fate_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("select fate, count(*) from row_fate group by fate order by fate").fetchall())
