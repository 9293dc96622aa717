"""Ingest, cleaning and the row accounting contract, on hand-written messy files and on the sample."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench import data
from workbench.workspace import ROW_GROUP_SIZE, WorkspaceError

HEADER = "message_id,customer_id,created_at,channel,region,age_band,text,intent,reply\n"


def good(i: int, text: str | None = None, intent: str = "refund", ts: str = "2026-01-05 10:00:00") -> str:
    text = text if text is not None else f"I want a refund for order {i}"
    return f'M{i},C1,{ts},email,north,30-44,"{text}",{intent},"We will refund it."\n'


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_csv_malformed_rows_are_rejected_with_file_line_reason(con, tmp_path):
    body = (HEADER + good(1) + good(2)
            + "M3,C1,2026-01-05,email,north\n"                                          # too few columns
            + good(4)
            + "M5,C1,2026-01-05,chat,south,18-29,hello,billing,reply,EXTRA\n"            # too many columns
            + 'M6,C1,2026-01-05,email,north,30-44,"a "stray" quote",refund,ok\n'       # bad quoting
            + good(7))
    f = write(tmp_path / "m.csv", body.encode() + b'M8,C1,2026-01-05,email,east,45-64,Caf\xe9,refund,ok\n'
              + good(9).encode())
    report = data.ingest(con, [f], table="stg_messages")
    assert report[str(f)] == {"format": "csv", "rows": 5, "rejected": 4}
    rej = con.execute("select source_row_id, source_line, reason from ingest_rejects order by source_line").fetchall()
    assert [r[0] for r in rej] == ["m.csv:4", "m.csv:6", "m.csv:7", "m.csv:9"]
    reasons = " | ".join(r[2] for r in rej)
    for expected in ("missing columns", "too many columns", "unterminated quote", "invalid encoding"):
        assert expected in reasons
    kept = con.execute("select source_row_id, message_id from stg_messages order by source_line").fetchall()
    assert kept == [("m.csv:2", "M1"), ("m.csv:3", "M2"), ("m.csv:5", "M4"), ("m.csv:8", "M7"), ("m.csv:10", "M9")]


def test_jsonl_malformed_lines_and_invalid_utf8(con, tmp_path):
    lines = [json.dumps({"message_id": "A1", "text": "hello", "intent": "billing"}).encode(),
             b'{"message_id": "A2", "text": "trunc',
             b"",  # blank lines are not rows
             b'["an", "array"]',
             b'{"message_id": "A3", "text": "bad \xff bytes"}',
             json.dumps({"message_id": "A4", "text": "caf\u00e9", "extra": 1}).encode()]
    f = write(tmp_path / "a.jsonl", b"\n".join(lines) + b"\n")
    data.ingest(con, [f], table="stg_messages")
    rej = dict(con.execute("select source_line, reason from ingest_rejects").fetchall())
    assert set(rej) == {2, 4, 5}
    assert rej[2] == "malformed JSON" and rej[4].startswith("not a JSON object") and "encoding" in rej[5]
    rows = con.execute("select source_row_id, message_id, text, extra from stg_messages order by source_line").fetchall()
    assert rows == [("a.jsonl:1", "A1", "hello", None), ("a.jsonl:6", "A4", "café", "1")]


def test_jsonl_line_over_the_maximum_size_is_a_reject_not_an_abort(con, tmp_path):
    big = json.dumps({"a": "2", "t": "x" * 4_300_000})  # over DuckDB's max_line_size (4 MiB)
    f = write(tmp_path / "long.jsonl", "\n".join(['{"a": "1"}', '{"a": "0"}', big, '{"a": "3"}']) + "\n")
    data.ingest(con, [f], table="stg")
    assert con.execute("select source_line, a from stg order by 1").fetchall() == [(1, "1"), (2, "0"), (4, "3")]
    rej = con.execute("select source_line, reason from ingest_rejects").fetchall()
    assert len(rej) == 1 and rej[0][0] == 3 and "line size" in rej[0][1]


def test_jsonl_keys_differing_only_in_case_keep_every_value(con, tmp_path):
    lines = ['{"text": "one", "t": 1}', '{"Text": "two"}', '{"text": "three", "Text": "four", "Text_1": "x"}']
    data.ingest(con, [write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")], table="stg")
    cols = [r[0] for r in con.execute("describe stg").fetchall()]
    assert cols == ["source_row_id", "source_file", "source_line", "text", "t", "Text_1", "Text_2"]
    rows = con.execute('select text, "Text_2", "Text_1" from stg order by source_line').fetchall()
    assert rows == [("one", None, None), (None, "two", None), ("three", "four", "x")]


def test_parquet_and_mixed_formats_union_by_name(con, tmp_path):
    import pandas as pd

    pq = tmp_path / "p.parquet"
    pd.DataFrame({"message_id": ["P1", "P2"], "text": ["x y z", "a b c"], "n": [1, 2]}).to_parquet(pq)
    csv = write(tmp_path / "c.csv", HEADER + good(1))
    data.ingest(con, [csv, pq], table="stg")
    got = con.execute("select source_row_id, message_id, n from stg order by source_row_id").fetchall()
    assert got == [("c.csv:2", "M1", None), ("p.parquet:1", "P1", "1"), ("p.parquet:2", "P2", "2")]


def test_ingest_errors_name_the_problem(con, tmp_path):
    with pytest.raises(data.IngestError, match="no such file"):
        data.ingest(con, [tmp_path / "missing.csv"], table="t")
    with pytest.raises(data.IngestError, match="cannot tell the format"):
        data.ingest(con, [write(tmp_path / "x.txt", "a")], table="t")
    with pytest.raises(data.IngestError, match="no header"):
        data.ingest(con, [write(tmp_path / "empty.csv", "")], table="t")
    with pytest.raises(data.IngestError, match="appears twice"):
        data.ingest(con, [write(tmp_path / "dup.csv", "a,a\n1,2\n")], table="t")
    with pytest.raises(data.IngestError, match="dupcase.csv: line 1: columns 'id' and 'ID' differ only in case"):
        data.ingest(con, [write(tmp_path / "dupcase.csv", "id,ID\n1,2\n")], table="t")
    (tmp_path / "d").mkdir()
    with pytest.raises(data.IngestError, match="d: a folder, not a file"):
        data.ingest(con, [tmp_path / "d"], table="t")
    with pytest.raises(data.IngestError, match="share a name"):
        data.ingest(con, [write(tmp_path / "s.csv", "a\n1\n"), write(tmp_path / "d" / "s.csv", "a\n1\n")], table="t")
    assert not con.execute("select count(*) from duckdb_tables() where table_name = 't'").fetchone()[0]


def test_append_refuses_reingesting_the_same_rows(con, tmp_path):
    f1 = write(tmp_path / "one.csv", HEADER + good(1))
    f2 = write(tmp_path / "two.csv", HEADER + good(2))
    data.ingest(con, [f1], table="stg")
    data.ingest(con, [f2], table="stg", mode="append")
    assert con.execute("select count(*) from stg").fetchone()[0] == 2
    with pytest.raises(data.IngestError, match="ingested before"):
        data.ingest(con, [f1], table="stg", mode="append")
    assert con.execute("select count(*) from stg").fetchone()[0] == 2
    # a file whose every row is a reject: appending it twice would count its rejects twice
    f3 = write(tmp_path / "three.jsonl", "[1]\nnot json\n")
    data.ingest(con, [f3], table="stg", mode="append")
    with pytest.raises(data.IngestError, match="ingested before"):
        data.ingest(con, [f3], table="stg", mode="append")
    assert con.execute("select count(*) from ingest_rejects where table_name = 'stg'").fetchone()[0] == 2


def test_append_refuses_a_file_with_other_columns(con, tmp_path):
    import pandas as pd

    data.ingest(con, [write(tmp_path / "one.csv", HEADER + good(1))], table="stg")
    pd.DataFrame({"message_id": ["M9"], "body": ["hi"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(data.IngestError, match=r"other.parquet: column\(s\) body not in table stg"):
        data.ingest(con, [tmp_path / "other.parquet"], table="stg", mode="append")
    assert con.execute("select count(*) from stg").fetchone()[0] == 1
    assert not con.execute("select count(*) from ingest_rejects where source_file like '%other%'").fetchone()[0]
    # a file with fewer columns appends (the missing ones are null)
    pd.DataFrame({"message_id": ["M8"], "text": ["hello"]}).to_parquet(tmp_path / "fewer.parquet")
    data.ingest(con, [tmp_path / "fewer.parquet"], table="stg", mode="append")
    assert con.execute("select intent from stg where message_id = 'M8'").fetchall() == [(None,)]


def _clean_one_file(con, tmp_path, body: str):
    data.ingest(con, [write(tmp_path / "m.csv", HEADER + body)], table="stg_messages")
    _clean_messages_only(con)


def _clean_messages_only(con):
    for t in ("stg_pool", "stg_kb_articles"):
        con.execute(f"create table {t} (source_row_id varchar, source_file varchar, source_line bigint, "
                    + ("message_id varchar, customer_id varchar, created_at varchar, channel varchar, "
                       "region varchar, age_band varchar, text varchar)" if t == "stg_pool" else
                       "doc_id varchar, published_at varchar, topic varchar, title varchar, body varchar)"))
    data.clean(con, min_chars=3, max_chars=80)


def test_clean_normalizes_filters_dedups_with_reasons(con, tmp_path):
    body = (good(1, "I want a refund for order 1", ts="2026-01-05 10:00:00")
            + good(2, "  I WANT a   refund for\norder 1 ", ts="2026-01-01 09:00:00")  # exact dup, earlier: lines 3-4
            + good(3, "I want a refund for order 1!!")                                  # near dup: kept by exact dedup
            + good(4, "")                                                                 # empty
            + 'M5,C1,2026-01-05,email,north,30-44,,refund,x\n'                           # null text
            + good(6, "x" * 200)                                                         # too long
            + good(7, "where is my parcel", intent="")                                   # missing label
            + good(8, "where is my parcel now", intent=" Shipping ")                     # case/space noise in label
            + good(9, "hello there", intent="other")                                     # unknown label
            + good(10, "hello there again", ts="31/02/2026")                             # bad timestamp
            + good(11, "mail me at jane.doe@example.com or +1 (555) 123-4567, card 4111 1111 1111 1234"))
    _clean_one_file(con, tmp_path, body)
    fate = dict(con.execute("select source_row_id, fate || coalesce(': ' || reason, '') from row_fate").fetchall())
    assert fate["m.csv:3"] == "kept"                      # M2: earliest of the exact duplicates
    assert fate["m.csv:2"] == "duplicate: duplicate of m.csv:3"
    assert fate["m.csv:5"] == "kept"
    assert fate["m.csv:6"] == "filtered: empty text"
    assert fate["m.csv:7"] == "filtered: empty text"
    assert fate["m.csv:8"] == "filtered: text longer than 80 chars"
    assert fate["m.csv:9"] == "filtered: missing intent"
    assert fate["m.csv:10"] == "kept"
    assert fate["m.csv:11"] == "filtered: unknown intent: other"
    assert fate["m.csv:12"] == "filtered: unparseable created_at: 31/02/2026"
    ex = dict(con.execute("select example_id, text from examples").fetchall())
    assert ex["m.csv:3"] == "I WANT a refund for order 1"
    assert ex["m.csv:13"] == "mail me at <EMAIL> or <PHONE>, card <CARD>"
    assert con.execute("select intent from examples where example_id = 'm.csv:10'").fetchone()[0] == "shipping"
    assert data.check_row_fate(con)["messages"] == {"input_rows": 11, "kept": 4, "duplicate": 1, "filtered": 6}


def test_int_messages_is_a_view_with_text_norm_and_replaces_an_older_table(con, tmp_path):
    body = good(1, "Refund For ORDER 1") + good(2, "x")
    data.ingest(con, [write(tmp_path / "m.csv", HEADER + body)], table="stg_messages")
    # a workspace written before int_messages became a view holds it as a table
    con.execute("create table int_messages as select 1 as stale")
    data._run_sql(con, "02_int_messages", {"min_chars": 3, "max_chars": 80}, "duckdb")
    kinds = dict(con.execute("select table_name, table_type from information_schema.tables where table_catalog = "
                             "current_database() and table_name like 'int_messages%'").fetchall())
    assert kinds == {"int_messages": "VIEW", "int_messages_data": "BASE TABLE"}
    rows = con.execute("select source_row_id, text, text_norm, filter_reason from int_messages "
                       "order by source_row_id").fetchall()
    assert rows == [("m.csv:2", "Refund For ORDER 1", "refund for order 1", None),
                    ("m.csv:3", "x", "x", "text shorter than 3 chars")]
    assert "text_norm" not in [r[0] for r in con.execute("describe int_messages_data").fetchall()]
    data._run_sql(con, "02_int_messages", {"min_chars": 3, "max_chars": 80}, "duckdb")  # runs again over the view
    assert con.execute("select count(*) from int_messages").fetchone()[0] == 2


def test_pii_masking_positive_and_negative(con, tmp_path):
    cases = {
        "write to a.b-c@mail.example.org today": "write to <EMAIL> today",
        "call 555-123-4567 please": "call <PHONE> please",
        "call (555) 123 4567 please": "call <PHONE> please",
        "card 4111-1111-1111-1111 expired": "card <CARD> expired",
        "order #570689 for $232": "order #570689 for $232",          # not PII
        "error code E12 on 2026-01-05": "error code E12 on 2026-01-05",  # not PII
    }
    body = "".join(good(i, t) for i, t in enumerate(cases, 1))
    _clean_one_file(con, tmp_path, body)
    got = [r[0] for r in con.execute("select text from int_messages order by message_id").fetchall()]
    assert got == list(cases.values())


def test_row_fate_invariant_on_the_messy_sample(con, tmp_path):
    data.build_spine(con, rows=400, seed=3)
    counts = data.check_row_fate(con)
    m = counts["messages"]
    assert m["input_rows"] == m["kept"] + m["duplicate"] + m["filtered"] + m["rejected"]
    assert min(m["duplicate"], m["filtered"], m["rejected"]) > 0  # the sample is messy in every way
    # tampering with row_fate breaks the contract loudly
    con.execute("delete from row_fate where fate = 'duplicate' and dataset = 'messages' and source_row_id in "
                "(select source_row_id from row_fate where fate = 'duplicate' limit 1)")
    with pytest.raises(WorkspaceError, match="row_fate for messages"):
        data.check_row_fate(con)
    # as many fates as input rows, but one names a row that is no input row: also caught
    data.clean(con)
    con.execute("update row_fate set source_row_id = 'nowhere.csv:1' where source_row_id = "
                "(select min(source_row_id) from row_fate where dataset = 'messages' and fate = 'kept')")
    with pytest.raises(WorkspaceError, match="no input row, e.g. nowhere.csv:1"):
        data.check_row_fate(con)


def test_ingest_sample_with_a_missing_file_writes_nothing(con, tmp_path):
    from workbench.sample import write_sample
    from workbench.workspace import snapshot_id

    write_sample(tmp_path / "s", rows=60, seed=1)
    data.ingest_sample(con, tmp_path / "s")
    before = snapshot_id(con)
    (tmp_path / "s" / "kb_articles.jsonl").unlink()
    with pytest.raises(data.IngestError, match="missing kb_articles.jsonl .*nothing ingested"):
        data.ingest_sample(con, tmp_path / "s")
    assert snapshot_id(con) == before  # no staging table was reloaded


def test_clean_names_a_missing_input_column_before_writing(con, tmp_path):
    from workbench.workspace import snapshot_id

    data.build_spine(con, rows=60, seed=1)
    con.execute("create or replace table stg_pool as select * exclude (age_band) from stg_pool")
    before = snapshot_id(con)
    with pytest.raises(WorkspaceError, match=r"stg_pool has no column age_band \(ingested from .*unlabeled_pool.jsonl"):
        data.clean(con)
    assert snapshot_id(con) == before  # examples and row_fate untouched: still consistent
    data.check_row_fate(con)


def test_blank_lines_keep_physical_line_numbers(con, tmp_path):
    f = write(tmp_path / "b.csv", HEADER + good(1) + "\n" + good(2) + "\n" + 'M3,C1,x,"bad"q",refund,ok\n' + good(4))
    data.ingest(con, [f], table="stg")
    rows = con.execute("select source_row_id, message_id from stg order by source_line").fetchall()
    assert rows == [("b.csv:2", "M1"), ("b.csv:4", "M2"), ("b.csv:7", "M4")]
    assert con.execute("select source_row_id from ingest_rejects").fetchall() == [("b.csv:6",)]


def test_unterminated_quote_swallowing_the_rest_is_accounted_for(con, tmp_path):
    """DuckDB's reader drops every line after an unterminated quote; those lines become rejects."""
    plain = "M{},C1,2026-01-05 10:00:00,email,north,30-44,plain text {},refund,ok\n"
    f = write(tmp_path / "u.csv", HEADER + good(1) + 'M2,C1,2026-01-05,email,north,30-44,"never closed,refund,x\n'
              + plain.format(3, 3) + plain.format(4, 4))
    report = data.ingest(con, [f], table="stg")
    assert report[str(f)] == {"format": "csv", "rows": 1, "rejected": 3}
    rej = con.execute("select source_row_id, reason, raw_line from ingest_rejects order by source_line").fetchall()
    assert [r[0] for r in rej] == ["u.csv:3", "u.csv:4", "u.csv:5"]
    assert "unterminated quote" in rej[0][1] and "swallowed" in rej[1][1] and rej[2][2].startswith("M4,")


def test_mixed_line_ends_load_with_physical_line_numbers(con, tmp_path):
    """A file mixing \\n and \\r\\n line ends loads (DuckDB's reader alone aborts on it); same line numbers."""
    rows = [good(1), good(2), good(3), good(4)]
    body = (HEADER.replace("\n", "\r\n") + rows[0] + rows[1].replace("\n", "\r\n") + "\r\n"
            + "M9,C1,2026-01-05,email,north\n" + rows[2] + rows[3].replace("\n", "\r\n"))
    f = write(tmp_path / "mixed.csv", body)
    assert data.ingest(con, [f], table="stg")[str(f)] == {"format": "csv", "rows": 4, "rejected": 1}
    got = con.execute("select source_row_id, message_id, reply from stg order by source_line").fetchall()
    assert got == [("mixed.csv:2", "M1", "We will refund it."), ("mixed.csv:3", "M2", "We will refund it."),
                   ("mixed.csv:6", "M3", "We will refund it."), ("mixed.csv:7", "M4", "We will refund it.")]
    rej = con.execute("select source_row_id, reason, raw_line from ingest_rejects").fetchall()
    assert rej == [("mixed.csv:5", rej[0][1], "M9,C1,2026-01-05,email,north")] and "missing columns" in rej[0][1]
    lines = [json.dumps({"message_id": f"A{i}"}) for i in range(1, 5)]
    j = write(tmp_path / "mixed.jsonl", lines[0] + "\n" + lines[1] + "\r\n\r\n" + lines[2] + "\n" + lines[3] + "\r\n")
    data.ingest(con, [j], table="stg_j")
    assert con.execute("select source_row_id, message_id from stg_j order by source_line").fetchall() == [
        ("mixed.jsonl:1", "A1"), ("mixed.jsonl:2", "A2"), ("mixed.jsonl:4", "A3"), ("mixed.jsonl:5", "A4")]


def test_quote_closed_lines_later_is_one_reject_naming_its_lines(con, tmp_path):
    """A stray quote closed on a later line makes one record of the lines between: one reject that names
    the physical line range and holds every line; every line number is the physical one."""
    lead = "C1,2026-01-05 10:00:00,email,north,30-44"
    body = (HEADER + good(1)
            + f'M0,{lead},"multi\nline text",refund,ok\n'            # a legal two-line record: lines 3-4
            + f'M2,{lead},"opens here,refund,ok\n'                   # line 5: the quote opens ...
            + f"M3,{lead},swallowed,refund,ok\n"                     # line 6
            + f'M4,{lead},closes",x\n'                               # ... and closes on line 7
            + good(5))                                               # line 8
    f = write(tmp_path / "q.csv", body)
    assert data.ingest(con, [f], table="stg")[str(f)] == {"format": "csv", "rows": 3, "rejected": 1}
    (line, reason, raw), = con.execute("select source_line, reason, raw_line from ingest_rejects").fetchall()
    assert line == 5  # the physical line (DuckDB's record number is 4: the two-line record counts once)
    assert "one record over physical lines 5-7" in reason
    assert raw.split("\n") == [f'M2,{lead},"opens here,refund,ok', f"M3,{lead},swallowed,refund,ok", f'M4,{lead},closes",x']
    assert con.execute("select source_line, message_id from stg order by source_line").fetchall() == [
        (2, "M1"), (3, "M0"), (8, "M5")]


class CsvLines:
    """A CSV file built record by record, remembering the physical line each record starts on."""

    def __init__(self):
        self.lines = [HEADER.rstrip("\n")]

    def add(self, record: str) -> int:
        self.lines.extend(record.split("\n"))  # a record over several lines: a quoted field holds \n
        return len(self.lines) - record.count("\n")

    def body(self, eol: str) -> bytes:
        ends = ["\n", "\r\n"] if eol == "mixed" else [eol]  # mixed: alternate, also inside quoted fields
        text = "".join(line + ends[k % len(ends)] for k, line in enumerate(self.lines))
        return text.encode().replace(b"<E9>", b"\xe9")  # <E9>: a Latin-1 byte, invalid UTF-8


@pytest.mark.parametrize("variant", ["lf", "crlf", "mixed", "gz"])
def test_records_over_several_lines_keep_physical_line_numbers(con, tmp_path, variant):
    """Rows and rejects after records whose quoted fields hold line breaks (and blank lines, inside
    and outside them) carry the physical line their record starts on: LF, CRLF, mixed and gzipped."""
    import gzip

    lead = "C1,2026-01-05 10:00:00,email,north,30-44"
    f, rows, rejects = CsvLines(), {}, []
    rows["M1"] = f.add(good(1).rstrip("\n"))
    f.add("")
    rows["M2"] = f.add(f'M2,{lead},"two\nlines",refund,ok')
    rows["M3"] = f.add(f'M3,{lead},"three lines\n\nwith a blank one, and ""quotes""",refund,"ok"')
    f.add("")
    rows["M4"] = f.add(f"M4,{lead},my 5\" screen broke,technical_issue,ok")  # a quote inside an unquoted field
    rejects.append(f.add(f'M5,{lead},"too many\ncolumns",refund,ok,EXTRA'))   # rejected, over 2 lines
    rows["M6"] = f.add(f'M6,{lead}, "spaces around\nthe quotes" ,refund,"reply over\n\nthree lines"')
    f.add("")
    f.add("")
    rejects.append(f.add("M7,C1,2026-01-05,email,north"))                         # missing columns
    rows["M8"] = f.add(good(8).rstrip("\n"))
    rejects.append(f.add(f'M9,{lead},"opens here,refund,ok\nM10,{lead},in it,refund,ok\nM11,{lead},closes",x'))
    rows["M12"] = f.add(f'M12,{lead},"last\nrecord",refund,ok')
    rejects.append(f.add(f'M14,{lead},"caf<E9>\nlatin-1",refund,ok'))  # the reject's raw line loses its \n
    f.add("")
    rows["M13"] = f.add(good(13).rstrip("\n"))
    body = f.body("\r\n" if variant == "crlf" else "mixed" if variant == "mixed" else "\n")
    path = tmp_path / ("m.csv.gz" if variant == "gz" else "m.csv")
    path.write_bytes(gzip.compress(body) if variant == "gz" else body)
    report = data.ingest(con, [path], table="stg_messages")
    assert report[str(path)] == {"format": "csv", "rows": len(rows), "rejected": len(rejects)}
    got = con.execute("select message_id, source_line, source_row_id from stg_messages order by source_line").fetchall()
    assert got == [(m, line, f"{path.name}:{line}") for m, line in sorted(rows.items(), key=lambda kv: kv[1])]
    rej = con.execute("select source_line, source_row_id, reason, raw_line from ingest_rejects order by 1").fetchall()
    assert [(r[0], r[1]) for r in rej] == [(line, f"{path.name}:{line}") for line in rejects]
    assert "too many columns" in rej[0][2] and f"physical lines {rejects[0]}-{rejects[0] + 1}" in rej[0][2]
    assert "missing columns" in rej[1][2] and rej[1][3] == "M7,C1,2026-01-05,email,north"
    assert f"physical lines {rejects[2]}-{rejects[2] + 2}" in rej[2][2] and len(rej[2][3].split("\n")) == 3
    assert "invalid encoding" in rej[3][2] and f"physical lines {rejects[3]}-{rejects[3] + 1}" in rej[3][2]
    text = con.execute("select replace(text, chr(13), '') from stg_messages where message_id = 'M3'").fetchone()[0]
    assert text == 'three lines\n\nwith a blank one, and "quotes"'
    _clean_messages_only(con)  # the accounting: every record one row or one reject
    assert data.check_row_fate(con)["messages"]["input_rows"] == len(rows) + len(rejects)


def test_unterminated_quote_after_records_over_several_lines(con, tmp_path):
    """The lines an unterminated quote swallows are rejects at their physical lines, also when records
    over several lines come before it."""
    lead = "C1,2026-01-05 10:00:00,email,north,30-44"
    f = CsvLines()
    rows = {"M1": f.add(f'M1,{lead},"one\n\nrecord",refund,ok'), "M2": f.add(good(2).rstrip("\n"))}
    f.add("")
    start = f.add(f'M3,{lead},"never closed,refund,ok')
    plain = "M{},C1,2026-01-05 10:00:00,email,north,30-44,plain text {},refund,ok"
    swallowed = [f.add(plain.format(4, 4)), f.add(plain.format(5, 5))]
    f.add("")
    swallowed += [f.add(plain.format(6, 6))]
    path = write(tmp_path / "u.csv", f.body("\n"))
    assert data.ingest(con, [path], table="stg")[str(path)] == {"format": "csv", "rows": 2, "rejected": 4}
    assert sorted(con.execute("select message_id, source_line from stg").fetchall()) == sorted(rows.items())
    rej = con.execute("select source_line, reason from ingest_rejects order by 1").fetchall()
    assert [r[0] for r in rej] == [start, *swallowed]
    assert "unterminated quote" in rej[0][1]
    assert all(r[1] == f"swallowed by the unterminated quoted field that starts at line {start}" for r in rej[1:])


def test_line_shifts_place_rows_on_random_record_layouts():
    """``_line_shifts`` on 3,000 random layouts of one-line and multi-line rows, rejects over 1-3 lines,
    blank lines between records and inside them: each row's line is where the layout put it."""
    import bisect
    import random

    import numpy as np

    rng = random.Random(7)
    for _ in range(3000):
        line, rows, rejects, blanks, ords, extra = 2, [], [], [], [], []
        for _ in range(rng.randint(0, 25)):
            kind, n = rng.choice(["row", "row", "reject", "blank"]), rng.choice([1, 1, 2, 3, 4])
            if kind == "blank":
                n = 1
                blanks.append(line)
            else:  # a blank line may sit inside a record, never on its first or last line
                blanks += [line + k for k in range(1, n - 1) if rng.random() < 0.4]
                if kind == "reject":
                    rejects.append((line, n))
                else:
                    if n > 1:
                        ords.append(len(rows))
                        extra.append(n - 1)
                    rows.append(line)
            line += n
        los, shifts = data._line_shifts(Path("x.csv"), rejects, sorted(blanks),
                                         (np.array(ords, "int64"), np.array(extra, "int64")))
        got = [i + 2 + (int(shifts[k]) if (k := bisect.bisect_right(los, i) - 1) >= 0 else 0)
               for i in range(len(rows))]
        assert got == rows, (rejects, blanks, ords, extra)


def test_jsonl_lines_of_spaces_are_blank(con, tmp_path):
    lines = ["   ", json.dumps({"message_id": "A1"}), "\u00a0\u3000", "  " + json.dumps({"message_id": "A2"}), "\t"]
    f = write(tmp_path / "s.jsonl", "\n".join(lines).encode() + b"\n")
    data.ingest(con, [f], table="stg")
    assert con.execute("select source_row_id, message_id from stg order by source_line").fetchall() == [
        ("s.jsonl:2", "A1"), ("s.jsonl:4", "A2")]
    assert con.execute("select source_line, reason from ingest_rejects").fetchall() == [(5, "malformed JSON")]


def test_cleaning_sql_plans_join_by_hash(con):
    """Every join in the cleaning SQL is an equality (hash) join: a non-equality term in a join
    condition makes DuckDB fall back to a nested-loop join, quadratic in the rows (row_fate's
    'duplicate of' lookup once took 639 CPU s at 1M rows this way, 0.2 s at 100k as a hash join)."""
    import re
    from workbench.workspace import render_sql, sql_file_params, sql_path
    data.build_spine(con, rows=200, seed=3)
    slow = re.compile(r"NESTED_LOOP_JOIN|BLOCKWISE_NL_JOIN|PIECEWISE_MERGE_JOIN")
    joins = 0
    for name in data.CLEAN_SQL + ["06_split_leakage"]:
        params = {k: data.CLEAN_DEFAULTS.get(k, 1) for k in sql_file_params(name)}
        for stmt in con.extract_statements(render_sql(sql_path(name).read_text(), params)):
            plan = "".join(r[1] for r in con.execute("explain " + stmt.query).fetchall())
            assert not slow.search(plan), f"{name}: a nested-loop join in\n{stmt.query[:300]}"
            joins += plan.count("HASH_JOIN")
    assert joins >= 2  # examples' semi join and row_fate's lookups at least


def test_workspace_tables_are_written_in_small_row_groups_unless_the_workspace_sets_its_own(con, tmp_path):
    import duckdb
    import workbench

    path = tmp_path / "m.csv"
    path.write_text(HEADER + "".join(f"m{i},c{i},2026-01-01 10:00:00,email,north,30-44,message number {i},billing,ok\n"
                                     for i in range(ROW_GROUP_SIZE + 10)))
    data.ingest(con, [path], table="stg_messages")
    files = [r[0] for r in con.execute("select data_file from ducklake_list_files('wb', 'stg_messages')").fetchall()]
    groups = con.execute("select distinct file_name, row_group_id, row_group_num_rows from parquet_metadata(?)",
                         [files]).fetchall()
    assert sorted(g[2] for g in groups) == [10, ROW_GROUP_SIZE]
    # a new workspace has the option from its creation, before anything is written
    fresh = workbench.connect(tmp_path / "ws3")
    assert fresh.execute("select value from ducklake_options('wb') where option_name = 'parquet_row_group_size'"
                         ).fetchall() == [(str(ROW_GROUP_SIZE),)]
    fresh.close()
    # a workspace that chose its own size keeps it; a plain DuckDB connection is left alone
    other = workbench.connect(tmp_path / "ws2")
    other.execute("call wb.set_option('parquet_row_group_size', 1000)")
    data.parquet_layout(other)
    assert other.execute("select value from ducklake_options('wb') where option_name = 'parquet_row_group_size'"
                         ).fetchall() == [("1000",)]
    data.parquet_layout(duckdb.connect())


def test_staging_tables_are_uncompressed_other_tables_keep_the_workspace_codec(con, tmp_path):
    from workbench.workspace import run_sql_file, transaction, uncompressed

    def codecs(table):
        files = [r[0] for r in con.execute(f"select data_file from ducklake_list_files('wb', '{table}')").fetchall()]
        return {r[0] for r in con.execute("select distinct compression from parquet_metadata(?)", [files]).fetchall()}

    def option():
        return con.execute("select value from ducklake_options('wb') where option_name = 'parquet_compression'"
                           ).fetchall()

    con.execute("call wb.set_option('parquet_compression', 'zstd')")  # the workspace's own codec
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "".join(f"m{i},c{i},2026-01-01 10:00:00,email,north,30-44,message number {i},billing,ok\n"
                                     for i in range(50)))
    data.ingest(con, [path], table="stg_messages")
    data.ingest(con, [path], table="stg_other")
    run_sql_file(con, "02_int_messages", data.CLEAN_DEFAULTS)
    run_sql_file(con, "02_examples", {})
    assert codecs("stg_messages") == codecs("int_messages_data") == {"UNCOMPRESSED"}
    assert codecs("stg_other") == codecs("examples") == {"ZSTD"}
    assert option() == [("zstd",)]  # set back after each write
    con.execute("select * from int_messages").fetchall()  # and readable

    def fail(c):
        uncompressed(c, lambda: c.execute("select * from no_such_table"))

    with pytest.raises(Exception, match="no_such_table"):
        transaction(con, fail)
    assert option() == [("zstd",)]  # a rollback undoes the switch


def test_staging_compression_can_be_asked_for(con, tmp_path, monkeypatch):
    from workbench.workspace import WorkspaceError

    path = tmp_path / "m.csv"
    path.write_text(HEADER + "".join(f"m{i},c{i},2026-01-01 10:00:00,email,north,30-44,message {i},billing,ok\n"
                                     for i in range(50)))  # over the inlining limit: a Parquet file
    monkeypatch.setenv("WORKBENCH_STAGING_COMPRESSION", "zstd")
    data.ingest(con, [path], table="stg_messages")
    files = [r[0] for r in con.execute("select data_file from ducklake_list_files('wb', 'stg_messages')").fetchall()]
    assert {r[0] for r in con.execute("select distinct compression from parquet_metadata(?)", [files]).fetchall()} \
        == {"ZSTD"}
    monkeypatch.setenv("WORKBENCH_STAGING_COMPRESSION", "zip")
    with pytest.raises(WorkspaceError, match="WORKBENCH_STAGING_COMPRESSION='zip'"):
        data.ingest(con, [path], table="stg_messages")
    assert con.execute("select count(*) from stg_messages").fetchone() == (50,)  # nothing half-written


def test_jsonl_keys_with_backslashes_and_quotes_keep_their_values(con, tmp_path):
    lines = ['{"a\\\\b": "one", "say \\"hi\\"": "two", "plain": "three"}']
    data.ingest(con, [write(tmp_path / "k.jsonl", "\n".join(lines) + "\n")], table="stg")
    cols = [r[0] for r in con.execute("describe stg").fetchall()]
    assert cols[3:] == ["a\\b", 'say "hi"', "plain"]
    assert con.execute('select * exclude (source_row_id, source_file, source_line) from stg').fetchall() == \
        [("one", "two", "three")]


def test_a_source_column_duckdb_lake_reserves_is_renamed_not_a_crash(con, tmp_path):
    """DuckLake reserves row_id, begin_snapshot, end_snapshot (any case): such a source column is
    ingested as <name>_1 (the rule for source_line), and write_table names the column instead of
    DuckDB's advice to turn data inlining off."""
    import pandas as pd

    from workbench.workspace import write_table

    csv = write(tmp_path / "r.csv", 'row_id,Begin_Snapshot,"say ""x""",text\n1,2,3,hello\n')
    jsonl = write(tmp_path / "r.jsonl", '{"END_SNAPSHOT": "e", "row_id_1": "k", "row_id": "r"}\n')
    data.ingest(con, [csv], table="stg_csv")
    data.ingest(con, [jsonl], table="stg_json")
    assert [r[0] for r in con.execute("describe stg_csv").fetchall()][3:] == \
        ["row_id_1", "Begin_Snapshot_1", 'say "x"', "text"]
    assert con.execute('select row_id_1, Begin_Snapshot_1, "say ""x""" from stg_csv').fetchall() == [("1", "2", "3")]
    assert [r[0] for r in con.execute("describe stg_json").fetchall()][3:] == ["END_SNAPSHOT_1", "row_id_1", "row_id_2"]
    assert con.execute("select * exclude (source_row_id, source_file, source_line) from stg_json").fetchall() == \
        [("e", "k", "r")]
    with pytest.raises(WorkspaceError, match="writing t: column 'Row_Id' is a name DuckLake reserves.*'Row_Id_1'"):
        write_table(con, "t", pd.DataFrame({"Row_Id": [1], "x": [2]}))
