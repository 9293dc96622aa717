"""Spark ingest = DuckDB ingest on every edge case the DuckDB ingest handles (issue #10).

Each input below is ingested on both engines (``data.ingest(..., engine="duckdb"|"spark")``); the rows
(every column, ``source_line``), the rejects (line, reason, raw line), the per-file report and the
column names must be the same. The cases come from tests/test_data.py (multi-line CSV records in LF,
CRLF, mixed and gzipped files, unterminated quotes, blank lines, lines over 4 MiB, JSONL keys that
differ only in case, reserved column names) and from probing DuckDB's CSV state machine (spaces
around quotes, quotes after an error, quotes closed lines later). Cases tests/test_spark.py already
compares (47 single-line edge cases, mixed line ends) are not repeated. All files go through one
ingest per engine; inputs DuckDB refuses are compared error for error.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import time

import pandas as pd
import pytest

import workbench
from workbench import data

from test_spark import needs_java

pytestmark = [pytest.mark.spark, needs_java]
COUNTS = re.compile(r"(missing columns|too many columns): [^;(]*")  # DuckDB's 'Found: N' varies: the kind

HEADER = "message_id,customer_id,created_at,channel,region,age_band,text,intent,reply"
LEAD = "C1,2026-01-05 10:00:00,email,north,30-44"


def good(i: int, text: str | None = None) -> str:
    return f'M{i},{LEAD},"{text or f"I want a refund for order {i}"}",refund,"We will refund it."'


def lines(*records: str, eol: str = "\n") -> bytes:
    """Records joined by ``eol`` ('mixed': \\n and \\r\\n alternating, also inside quoted fields)."""
    phys = "\n".join(records).split("\n")
    ends = ["\n", "\r\n"] if eol == "mixed" else [eol]
    return "".join(line + ends[k % len(ends)] for k, line in enumerate(phys)).encode().replace(b"<E9>", b"\xe9")


def multiline_records(eol: str) -> bytes:
    """test_data's records over several lines: rows, rejects and blank lines inside and between them."""
    return lines(
        HEADER, good(1), "", f'M2,{LEAD},"two\nlines",refund,ok',
        f'M3,{LEAD},"three lines\n\nwith a blank one, and ""quotes""",refund,"ok"', "",
        f'M4,{LEAD},my 5" screen broke,technical_issue,ok', f'M5,{LEAD},"too many\ncolumns",refund,ok,EXTRA',
        f'M6,{LEAD}, "spaces around\nthe quotes" ,refund,"reply over\n\nthree lines"', "", "",
        "M7,C1,2026-01-05,email,north", good(8),
        f'M9,{LEAD},"opens here,refund,ok\nM10,{LEAD},in it,refund,ok\nM11,{LEAD},closes",x',
        f'M12,{LEAD},"last\nrecord",refund,ok', f'M14,{LEAD},"caf<E9>\nlatin-1",refund,ok', "", good(13), eol=eol)


PLAIN = "M{0},C1,2026-01-05 10:00:00,email,north,30-44,plain text {0},refund,ok"
BIG = 4_300_000  # characters: a line over DuckDB's max_line_size (4 MiB)

# file name -> bytes: ingested together, one ingest per engine (few files: each costs Spark jobs)
CASES: dict[str, bytes] = {
    # test_data: malformed rows, blank lines, a stray quote closed lines later (one reject over 3 lines)
    "messy.csv": lines(HEADER, good(1), "M3,C1,2026-01-05,email,north", good(4),
                       "M5,C1,2026-01-05,chat,south,18-29,hello,billing,reply,EXTRA",
                       'M6,C1,2026-01-05,email,north,30-44,"a "stray" quote",refund,ok', good(7),
                       "M8,C1,2026-01-05,email,east,45-64,Caf<E9>,refund,ok", "", good(9), "",
                       'M3,C1,x,"bad"q",refund,ok', f'M0,{LEAD},"multi\nline text",refund,ok',
                       f'M2,{LEAD},"opens here,refund,ok', f"M3,{LEAD},swallowed,refund,ok",
                       f'M4,{LEAD},closes",x', good(5)),
    # test_data: a quote never closed swallows the rest (after records over several lines)
    "unterminated.csv": lines(HEADER, f'M1,{LEAD},"one\n\nrecord",refund,ok', good(2), "",
                              f'M3,{LEAD},"never closed,refund,ok', PLAIN.format(4), PLAIN.format(5), "",
                              PLAIN.format(6)),
    # test_data: records over several lines in CRLF, mixed and gzipped (LF) files
    "multiline_crlf.csv": multiline_records("\r\n"),
    "multiline_mixed.csv": multiline_records("mixed"),
    "multiline_gz.csv.gz": gzip.compress(multiline_records("\n")),
    # DuckDB's state machine: an error does not end a record, a quote after it is a plain character,
    # one space may precede an opening quote (two may not), a quote after a closing one reopens it;
    # the last line opens a quote never closed
    "quote_states.csv": lines(
        "a,b,c", '1,"b"x,"open\nclose",z', '2,ab"c,"x\ny"', '3,"a""\nb",c', '4,"a" ,"b\nc"', '5,b,c,"open\nx",y',
        '6,"x\n\n",c', '7,"x\ny" z,c', '8,"caf<E9>\nx",c', '9,"b"x"y\nz",c', '10,"a" "b\nc",d', '11,"a""b\nc",d',
        '12,"a"x "b\nc",d', '13,ab "c\nd",e', '14,"a" x,"b\nc"', '15,  "x\ny"  ,c', '16,"x"\t"y\nz",c',
        '17,  "x"  ,c', '18, "x"   ,c', '19,"a"  "b",c', '20,"a" "b" "c",d', '21,"a"  ,c', '22,   "a",c',
        '23,x  "y",c', '24, "",c', '25,"x\ty"\t,c', '26,"a,\nb",c', '27,x,"a\n\n\nb"', "28,x,y",
        '29, "a\nb",c', '30,"a" "b\n\nc"', '31,"a,b"x,c', '32,"a\n' + "\n".join(f"{i},x,y" for i in range(40)) + '",z',
        '33,b,"c'),
    "long_line.csv": lines("a,b", "1,2", "3," + "x" * BIG, "5,6"),
    # reserved column names; CRLF without a line end after the last line
    "reserved.csv": b"source_line,Source_Row_Id,x,source_file_1,SOURCE_FILE\r\n1,2,3,4,5\r\n6,7,8,9,10",
    # names DuckLake reserves (row_id, begin_snapshot, end_snapshot: renamed <name>_1); a quote in a name
    "lake_reserved.csv": b'row_id,Begin_Snapshot,"say ""x""",text\n1,2,3,hello\n',
    "lake_reserved.jsonl": lines('{"END_SNAPSHOT": "e", "row_id_1": "k", "row_id": "r"}'),
    # JSONL
    "long_line.jsonl": lines('{"a": "1"}', json.dumps({"a": "2", "t": "x" * BIG}), '{"a": "3"}'),
    "keys.jsonl": lines('{"text": "one", "t": 1}', '{"Text": "two"}', "   ", "\u00a0\u3000", "\t",
                        '{"text": "three", "Text": "four", "Text_1": "x"}', '{"TEXT": "five", "T": 2}',
                        "  " + json.dumps({"message_id": "A2"}),
                        json.dumps({"it's": "q", "a]b": 1, 'x"y': 2, "k.1": 3, "$": 4, "[0]": 5, "source_line": "s",
                                    "Source_Row_Id": "r", "n": 1.50, "e": 1e5, "o": {"z": [1, 2.0]},
                                    "big": 12345678901234567890, "neg": -0.0, "u": "caf\u00e9 \u2603",
                                    "esc": "tab\there \"q\" \\ /", "nul": None, "tr": True, "a\\b": "bs"})),
    "crlf.jsonl": lines('{"a": "1"}', "", '{"a": "2", "b": [1]}', '{"a" 3}', "[1]", '{"a": "4"}', eol="\r\n"),
    "cr_in_quotes.csv": b'a,b,c\n1,"x\ry",c\n2,b,c\r\n3,"p\rq\nr",s\n',  # a \r in a quoted field is data
    "lines_gz.jsonl.gz": gzip.compress(lines('{"a": "1"}', "", "not json", '{"a": "2", "B": "x"}')),
    "no_trailing_newline.jsonl": b'{"a": "1"}\n{"a": "2"}',
}


def _parquet_case(path) -> None:
    pd.DataFrame({"source_line": [7, 8], "Source_File": ["x", "y"], "v": [0.1, None]}).to_parquet(path)


# file name -> (bytes, the words DuckDB's IngestError names): each ingested alone, on both engines
ERRORS: dict[str, tuple[bytes, str]] = {
    "empty.csv": (b"", "line 1: no header row"),
    "dup_header.csv": (b"a,b,a\n1,2,3\n", "column 'a' appears twice"),
    "case_header.csv": (b"id,x,ID\n1,2,3\n", "line 1: columns 'id' and 'ID' differ only in case"),
    "blank_header.csv": (b"\n1,2\n", "no header row"),
    "empty_key.jsonl": (b'{"a": 1}\n{"": 2}\n', "an empty JSON key"),
    "lone_cr.csv": (b'a,b,c\n1,"x\ry",c\n2,b,c\r\n3,b\rc,d\n', "cannot read as csv"),  # a \r outside quotes
}


# ---------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    for name, body in CASES.items():
        (folder / name).write_bytes(body)
    _parquet_case(folder / "reserved.parquet")
    return folder


def _results(con, report: dict) -> dict:
    rows: dict[str, list] = {}
    cur = con.execute("select * from t order by source_file, source_line")
    names = [d[0] for d in cur.description]
    for r in cur.fetchall():
        row = dict(zip(names, r))
        rows.setdefault(os_name(row.pop("source_file")), []).append({k: v for k, v in row.items() if v is not None})
    rejects: dict[str, list] = {}
    for file, line, row_id, reason, raw in con.execute(
            "select source_file, source_line, source_row_id, reason, raw_line from ingest_rejects "
            "where table_name = 't' order by source_file, source_line").fetchall():
        if "invalid encoding" in reason:  # each engine has its own replacement characters (docs/spark.md)
            raw = None
        rejects.setdefault(os_name(file), []).append((line, row_id, COUNTS.sub(r"\1", reason), raw))
    return {"report": {os_name(k): v for k, v in report.items()}, "rows": rows, "rejects": rejects,
            "columns": [(r[0], r[1]) for r in con.execute("describe t").fetchall()]}


def os_name(path: str) -> str:
    return os.path.basename(path)


@pytest.fixture(scope="module")
def both(spark, inputs, tmp_path_factory):
    """Every case file ingested once on each engine: {engine: results, ...}."""
    files = sorted(p for p in inputs.iterdir())
    out, seconds = {}, {}
    for engine in ("duckdb", "spark"):
        con = workbench.connect(tmp_path_factory.mktemp(engine))
        t0 = time.perf_counter()
        report = data.ingest(con, files, table="t", engine=engine)
        seconds[engine] = round(time.perf_counter() - t0, 1)
        out[engine] = _results(con, report)
        con.close()
    print(f"\ningest of {len(files)} edge-case files: {seconds} s")
    return out


# ---------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", sorted([*CASES, "reserved.parquet"]))
def test_same_rows_and_rejects(both, name):
    duck, spk = both["duckdb"], both["spark"]
    assert spk["rejects"].get(name) == duck["rejects"].get(name)
    assert spk["rows"].get(name) == duck["rows"].get(name)
    assert spk["report"][name] == duck["report"][name]
    assert duck["rows"].get(name) or duck["rejects"].get(name)  # the case holds something to compare


def test_same_columns_and_plenty_compared(both):
    assert both["spark"]["columns"] == both["duckdb"]["columns"]
    duck = both["duckdb"]
    n_rows, n_rejects = (sum(map(len, duck[k].values())) for k in ("rows", "rejects"))
    multi = sum("physical lines" in r[2] for rs in duck["rejects"].values() for r in rs)
    assert n_rows >= 60 and n_rejects >= 40 and multi >= 10, (n_rows, n_rejects, multi)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_same_error(spark, tmp_path, name):
    body, words = ERRORS[name]
    path = tmp_path / name
    path.write_bytes(body)
    for engine in ("duckdb", "spark"):
        con = workbench.connect(tmp_path / engine)
        with pytest.raises(data.IngestError, match=re.escape(f"{path}: ") + ".*" + re.escape(words)):
            data.ingest(con, [path], table="t", engine=engine, fmt="csv" if name.endswith(".csv") else "auto")
        assert not con.execute("select count(*) from duckdb_tables() where table_name = 't'").fetchone()[0]
        con.close()


def test_a_folder_is_refused_on_both_engines(tmp_path):
    (tmp_path / "d.csv").mkdir()
    for engine in ("duckdb", "spark"):
        con = workbench.connect(tmp_path / engine)
        with pytest.raises(data.IngestError, match=re.escape(f"{tmp_path / 'd.csv'}: a folder, not a file")):
            data.ingest(con, [tmp_path / "d.csv"], table="t", engine=engine)
        con.close()
