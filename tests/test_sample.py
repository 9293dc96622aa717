"""The sample data generator: deterministic, messy in every planned way, with the planted bias."""
from __future__ import annotations

import csv
import hashlib
import json

import pytest

from workbench.sample import AGE_BANDS, INTENTS, write_sample


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_sample(tmp_path / "a", rows=300, seed=1)
    write_sample(tmp_path / "b", rows=300, seed=1)
    write_sample(tmp_path / "c", rows=300, seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["messages.csv"] != digest(tmp_path / "c")["messages.csv"]


def test_files_and_their_mess(tmp_path):
    files = write_sample(tmp_path, rows=2000, seed=7)
    assert set(files) == {"messages.csv", "messages_app.jsonl", "unlabeled_pool.jsonl", "kb_articles.jsonl",
                          "customers.csv", "BIAS.md"}
    raw = (tmp_path / "messages.csv").read_bytes()
    assert b"\xe9" in raw                                   # non-UTF-8 bytes
    good_lines = [l for l in raw.split(b"\n")[1:] if l.startswith(b'"M')]
    rows = list(csv.DictReader(l.decode() for l in [raw.split(b"\n")[0]] + good_lines))
    texts = [r["text"] for r in rows]
    assert any("@example.com" in t for t in texts) and any("(555)" in t for t in texts)   # PII
    assert any(len(t) > 20000 for t in texts)                                             # very long
    assert any(t.strip() == "" for t in texts)                                            # empty
    norm = [" ".join(t.lower().split()) for t in texts]
    assert len(set(norm)) < len(norm)                                                     # duplicates
    assert any(t != t.strip() or "  " in t for t in texts)                               # whitespace noise
    intents = {r["intent"] for r in rows}
    assert set(INTENTS) <= intents and any(i != i.strip().lower() for i in intents if i)  # label noise
    jl = (tmp_path / "messages_app.jsonl").read_bytes().split(b"\n")
    bad = 0
    for line in jl:
        try:
            assert isinstance(json.loads(line.decode("utf-8")), dict)
        except (ValueError, AssertionError, UnicodeDecodeError):
            bad += bool(line)
    assert bad >= 4


def test_planted_bias(tmp_path):
    write_sample(tmp_path, rows=6000, seed=7)
    with open(tmp_path / "messages.csv", encoding="utf-8", errors="replace") as f:
        rows = [r for r in csv.DictReader(f) if r.get("age_band") in AGE_BANDS and r.get("intent") in INTENTS]
    old = [r for r in rows if r["age_band"] == "65+"]
    rest = [r for r in rows if r["age_band"] != "65+"]
    assert 0.02 < len(old) / len(rows) < 0.07
    share = lambda rs, k: sum(r["intent"] == k for r in rs) / len(rs)
    assert share(rest, "refund") - share(old, "refund") > 0.08
    assert share(old, "technical_issue") - share(rest, "technical_issue") > 0.1
    assert "65+" in (tmp_path / "BIAS.md").read_text()


def test_too_few_rows_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--rows"):
        write_sample(tmp_path, rows=10)
