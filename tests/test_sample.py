"""The sample data generator: deterministic, messy in every planned way, with the planted bias."""
from __future__ import annotations

import csv
import hashlib
import json

import pytest

from workbench.sample import AGE_BANDS, INTENTS, NEIGHBOURS, STYLES, Hardness, labeled_messages, write_sample


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


def test_malformed_csv_rows_exact_and_near_duplicates_and_nulls(tmp_path):
    """The kinds of mess the raw exports must show, each checked on its own."""
    import collections
    import io

    write_sample(tmp_path, rows=2000, seed=7)
    rows = list(csv.reader(io.StringIO((tmp_path / "messages.csv").read_bytes().decode("utf-8", "replace"))))
    header, body = rows[0], rows[1:]
    assert any(len(r) != len(header) for r in body)                                       # malformed CSV rows
    texts = [r[header.index("text")] for r in body if len(r) == len(header)]
    assert any(n > 1 for n in collections.Counter(texts).values())                        # exact duplicates
    variants = collections.defaultdict(set)
    for t in texts:
        variants[" ".join(t.lower().split())].add(t)
    assert any(len(v) > 1 for v in variants.values())                                     # near duplicates
    nulls = collections.Counter()
    for line in (tmp_path / "messages_app.jsonl").read_bytes().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            nulls.update(k for k, v in obj.items() if v is None)
    assert nulls["text"] > 0 and nulls["intent"] > 0                                      # null fields


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
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="--out .*f: a file, not a folder"):
        write_sample(tmp_path / "f", rows=100)


# --------------------------------------------------------------------------- the planted difficulty

def test_label_noise_is_planted_at_the_documented_rate():
    """About 5% of labels are a neighbouring intent (plus the two-request messages labeled with their
    second request): the label is not always the intent the customer meant, as in real annotation."""
    n = 20000
    h = Hardness()
    m = labeled_messages(n, seed=3)
    wrong = [(t, l, s) for t, l, s in zip(m["true_intent"], m["intent"], m["style"]) if t != l]
    second = h.two_requests * h.second_request_label * (1 - h.label_noise)
    assert abs(len(wrong) / n - (h.label_noise + second)) < 0.008, len(wrong) / n
    assert all(l in NEIGHBOURS[t] for t, l, _ in wrong)                  # a plausible neighbour, never random
    noisy = sum(s != "two_requests" for _, _, s in wrong) / sum(s != "two_requests" for s in m["style"])
    assert abs(noisy - h.label_noise) < 0.006, noisy
    assert sum(r.startswith("Sorry about the trouble") for r, t in zip(m["reply"], m["true_intent"])
               if t == "refund") == m["true_intent"].count("refund")   # replies follow the meant intent
    assert labeled_messages(500, seed=3, hardness=Hardness.easy())["intent"] \
        == labeled_messages(500, seed=3, hardness=Hardness.easy())["true_intent"]


def test_ambiguous_vague_and_overlapping_messages_are_planted():
    n = 12000
    h = Hardness()
    m = labeled_messages(n, seed=5)
    share = {s: m["style"].count(s) / n for s in STYLES}
    for style, want in [("overlap", h.overlap), ("two_intent", h.two_intent), ("two_requests", h.two_requests),
                        ("vague", h.vague), ("vague_generic", h.vague_generic)]:
        assert abs(share[style] - want) < 0.012, (style, share[style])
    assert share["clear"] > 0.5
    # ambiguity: a keyword rule (the simulated annotators' one) reads clear messages right, but is
    # mostly wrong on messages with another intent's words or two intents in them
    from workbench.labeling import keyword_intent

    def keyword_accuracy(styles):
        rows = [(t, l) for t, l, s in zip(m["text"], m["intent"], m["style"]) if s in styles]
        return sum(keyword_intent(t) == l for t, l in rows) / len(rows)

    assert keyword_accuracy({"clear"}) > 0.85
    assert keyword_accuracy({"overlap"}) < 0.6 and keyword_accuracy({"two_intent", "two_requests"}) < 0.5
    for word in ("refund", "cancel", "charge"):   # the same keyword under (nearly) every label
        labels = {l for t, l in zip(m["text"], m["intent"]) if word in t.lower()}
        assert len(labels) >= 5, (word, labels)
    # vague messages are short; the generic ones come with every intent label
    vague = [t for t, s in zip(m["text"], m["style"]) if s.startswith("vague")]
    assert sorted(len(t) for t in vague)[len(vague) // 2] < 45
    generic = {l for l, s in zip(m["intent"], m["style"]) if s == "vague_generic"}
    assert generic == set(INTENTS)
    # the same generic text under different labels: no model can get all of them right
    by_text: dict[str, set] = {}
    for t, l, s in zip(m["text"], m["intent"], m["style"]):
        if s == "vague_generic" and "#" not in t:
            by_text.setdefault(t, set()).add(l)
    assert any(len(v) >= 3 for v in by_text.values())


def test_bias_doc_counts_the_difficulty_and_easy_mode(tmp_path):
    from workbench import cli

    write_sample(tmp_path / "hard", rows=400, seed=7)
    doc = (tmp_path / "hard" / "BIAS.md").read_text()
    assert "## Planted difficulty" in doc and "label noise:" in doc and "(rate 5%" in doc
    assert cli.main(["demo-data", "--rows", "400", "--out", str(tmp_path / "easy"), "--easy"]) == 0
    easy = (tmp_path / "easy" / "BIAS.md").read_text()
    assert "label noise: 0 (0.0%)" in easy and "two requests: 0 (0.0%)" in easy
    assert cli.main(["demo-data", "--rows", "400", "--out", str(tmp_path / "x"), "--label-noise", "1.5"]) == 2
    with pytest.raises(ValueError, match="Hardness"):
        write_sample(tmp_path / "bad", rows=400, hardness=Hardness(overlap=0.9, two_intent=0.5))
    assert not (tmp_path / "bad").exists()
