"""Near-duplicate detection in SQL: MinHash signatures, LSH banding, Jaccard verification.

    python -c "from workbench.near_dup import near_dup_ctes as c; print(c('t', 'nd', ['id', 'text'], column='text'))"

Used by the flow step ``near_dedup`` and by the quality report. Texts are normalized (whitespace
collapsed, optionally lowercased); identical texts collapse to one ``_tid`` (the position of their
first row). Each text becomes a set of shingles (character or word n-grams), each shingle an
integer (first 8 hex digits of its md5), and ``bands * rows_per_band`` hash functions
``(a * x + b) mod (2^31 - 1)`` give its MinHash signature. Texts sharing a band are candidates;
to stay linear in the number of rows even when a band holds thousands of near-identical texts,
each text is compared with the first member of its bucket and its ``neighbours`` predecessors
only. A candidate pair is kept when its Jaccard similarity (exact on shingles, or estimated from
the signatures) reaches the threshold. A row is a near-duplicate when its text equals, or is
near, an earlier row's text.

Character shingles are portable to Spark; word shingles use DuckDB list functions.
"""
from __future__ import annotations

import random

from .flow_steps import hex8_int, normalize_expr, qi

MERSENNE = 2147483647  # 2^31 - 1; with x < 2^32 and a < 2^30 every product fits a signed 64-bit integer


def minhash_coefficients(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(1, 1 << 30), rng.randrange(0, MERSENNE)) for _ in range(n)]


def near_dup_ctes(prev: str, name: str, cols: list[str], *, column: str, threshold: float = 0.8,
                  ngram: int = 5, unit: str = "chars", bands: int = 16, rows_per_band: int = 4, seed: int = 42,
                  order_by: list[str] | None = None, lowercase: bool = True, neighbours: int = 4,
                  verify: str = "exact", output: str = "rows", normalize: bool = True,
                  band_hash: bool = False) -> list[tuple[str, str]]:
    """CTEs ending in ``name``: the rows of ``prev`` that are not near-duplicates of an earlier row.

    ``output="pairs"`` ends instead in ``name`` = verified pairs ``(_tid, _other, _similarity)``, for
    reports that join them with ``name__rows`` (every row, ``_text`` and ``_pos``) and ``name__texts``.
    ``normalize=False`` takes ``column`` as already normalized. ``neighbours=0`` compares each text
    with its buckets' first members only (a hash aggregate instead of a window sort: the cheapest
    plan for millions of rows). ``band_hash=True`` keys a band by DuckDB's ``hash()`` of its values
    instead of their text (DuckDB-only; a report's memory on millions of rows).
    """
    n, k = f"{name}__", bands * rows_per_band
    order = ", ".join([qi(c) for c in (order_by or [])] + [qi(c) for c in cols if c not in (order_by or [])])
    text = normalize_expr(column, lowercase=lowercase) if normalize else qi(column)
    ctes = [
        (f"{n}rows", f"select\n    {', '.join(qi(c) for c in cols)},\n    {text} as _text,\n"
                     f"    row_number() over (order by {order}) as _pos\nfrom {prev}"),
        (f"{n}texts", f"select _text, min(_pos) as _tid\nfrom {n}rows\nwhere _text is not null\ngroup by _text"),
    ]
    coef = minhash_coefficients(k, seed)
    if unit == "chars":
        grams = (f"select t._tid, md5(substr(t._text, g.i, {ngram})) as _h\n    from {n}texts as t,\n"
                 f"        unnest(generate_series(1, greatest(length(t._text) - {ngram - 1}, 1))) as g(i)")
    else:
        grams = (f"select t._tid, md5(array_to_string(list_slice(t._words, g.i, g.i + {ngram - 1}), ' ')) as _h\n"
                 f"    from (select _tid, string_split(_text, ' ') as _words from {n}texts) as t,\n"
                 f"        unnest(generate_series(1, greatest(len(t._words) - {ngram - 1}, 1))) as g(i)")
    # One shingle = the first 8 hex digits of its md5 as an integer (distinct per text: exact Jaccard
    # needs set sizes; a MinHash is the same with or without repeats)
    distinct = "distinct" if verify == "exact" else ""
    ctes.append((f"{n}shingles",
                 f"select {distinct}\n    _tid,\n    {hex8_int('_h')} as _x\nfrom (\n    {grams}\n) as grams"))
    mins = ",\n    ".join(f"min((_x * {a} + {b}) % {MERSENNE}) as m{j}" for j, (a, b) in enumerate(coef))
    ctes.append((f"{n}signatures", f"select\n    _tid,\n    {mins}\nfrom {n}shingles\ngroup by _tid"))
    def sig(b: int) -> str:
        ms = [f"m{b * rows_per_band + r}" for r in range(rows_per_band)]
        return f"hash({', '.join(ms)})" if band_hash else " || ':' || ".join(f"cast({m} as varchar)" for m in ms)

    band_sql = "\nunion all\n".join(f"select _tid, {b} as band, {sig(b)} as sig from {n}signatures"
                                     for b in range(bands))
    ctes.append((f"{n}bands", band_sql))
    if neighbours == 0:
        ctes += [
            (f"{n}buckets",
             f"select band, sig, min(_tid) as _first\nfrom {n}bands\ngroup by band, sig\nhaving count(*) > 1"),
            (f"{n}candidates",
             f"select distinct\n    b._tid,\n    k._first as _other\nfrom {n}bands as b\n"
             f"inner join {n}buckets as k on k.band = b.band and k.sig = b.sig\nwhere k._first < b._tid"),
        ]
    else:
        ctes += [
            (f"{n}buckets",
             f"select\n    _tid, band, sig,\n    row_number() over (partition by band, sig order by _tid) as _rk\n"
             f"from {n}bands"),
            # Compare with the bucket's first member (offset 0) and the `neighbours` members just before.
            (f"{n}candidates",
             f"select distinct\n    r._tid,\n    o._tid as _other\nfrom {n}buckets as r\n"
             f"cross join (values {', '.join(f'({i})' for i in range(neighbours + 1))}) as d(_offset)\n"
             f"inner join {n}buckets as o\n    on o.band = r.band\n    and o.sig = r.sig\n"
             f"    and o._rk = case when d._offset = 0 then 1 else r._rk - d._offset end\n"
             f"where r._rk > 1"),
        ]
    if verify == "exact":
        ctes += [
            (f"{n}sizes", f"select _tid, count(*) as _size\nfrom {n}shingles\ngroup by _tid"),
            (f"{n}overlap",
             f"select c._tid, c._other, count(*) as _inter\nfrom {n}candidates as c\n"
             f"inner join {n}shingles as a on a._tid = c._tid\n"
             f"inner join {n}shingles as b on b._tid = c._other and b._x = a._x\ngroup by c._tid, c._other"),
            (f"{n}pairs",
             f"select\n    o._tid,\n    o._other,\n    o._inter / (a._size + b._size - o._inter) as _similarity\n"
             f"from {n}overlap as o\ninner join {n}sizes as a on a._tid = o._tid\n"
             f"inner join {n}sizes as b on b._tid = o._other\n"
             f"where o._inter >= {threshold} * (a._size + b._size - o._inter)"),
        ]
    else:  # estimated from the signatures: the fraction of equal MinHash values
        same = " + ".join(f"(case when a.m{j} = b.m{j} then 1 else 0 end)" for j in range(k))
        ctes.append((f"{n}pairs",
                     f"select * from (\n    select c._tid, c._other, ({same}) / {float(k)} as _similarity\n"
                     f"    from {n}candidates as c\n    inner join {n}signatures as a on a._tid = c._tid\n"
                     f"    inner join {n}signatures as b on b._tid = c._other\n) as s\n"
                     f"where _similarity >= {threshold}"))
    if output == "pairs":
        ctes[-1] = (name, ctes[-1][1])
        ctes[0] = (f"{n}rows", ctes[0][1])
        return ctes
    ctes += [
        (f"{n}dropped", f"select distinct _tid\nfrom {n}pairs"),
        (name,
         f"select\n    {', '.join('r.' + qi(c) for c in cols)}\nfrom {n}rows as r\n"
         f"left join {n}texts as t on t._text = r._text\nleft join {n}dropped as d on d._tid = t._tid\n"
         f"where r._text is null\n    or (r._pos = t._tid and d._tid is null)"),
    ]
    return ctes
