"""64-bit perceptual hash (pHash: low frequencies of a 2-D DCT against their median), Hamming helpers, and the band
join that finds every pair of hashes within k bits in DuckDB.

Decoding is the cost, not the DCT: JPEGs are decoded at reduced scale (`draft`, libjpeg's DCT scaling) to about
64 px, then resized to 32x32 grayscale. Hashes are stored as signed int64 (DuckDB BIGINT, parquet int64) so that
`bit_count(xor(a, b))` is the Hamming distance in SQL. It lives on the ground floor because two wings' worth of
commands hash and match images with it: `wit filter images` and `wit dedup` (filters/), and `wit revoke`, whose
near match of a request image is the same band join as dedup's (`near_pairs`).

The band join: split each hash into k+1 bands; a pair within distance k shares a band (pigeonhole), so candidates
come from k+1 equi-joins on (band value) and are verified with `bit_count(xor(a, b)) <= k`. A band bucket holding
more than `cap` rows (blank images, logos: a hot bucket) would make a join of n^2/2 candidates; its rows are joined
on the bucket plus one of k+1 sub-bands of the other bits instead (pigeonhole again: the same pairs, far fewer
candidates). Candidate volume is about (k+1) * N^2 / 2^(64/(k+1) + 1) for random hashes.
"""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
from PIL import Image

SIZE = 32  # the image is reduced to SIZE x SIZE before the DCT
LOW = 8  # LOW x LOW lowest frequencies make the 64 bits


def _dct_matrix(n: int, k: int) -> np.ndarray:
    """The first k rows of the orthonormal DCT-II matrix of size n (so D @ x is the DCT of x, truncated)."""
    i = np.arange(n)
    d = np.cos(np.pi * (2 * i[None, :] + 1) * np.arange(k)[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_D = _dct_matrix(SIZE, LOW)
_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def gray32(im: Image.Image) -> np.ndarray:
    """32x32 float grayscale of an opened (not yet loaded) image; uses JPEG draft mode when it can."""
    if im.format == "JPEG":
        im.draft("L", (2 * SIZE, 2 * SIZE))  # decode at 1/2..1/8 scale: most of the speed
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=2.0), dtype=np.float32)


def phash_gray(g: np.ndarray) -> int:
    """pHash of 32x32 grayscale pixels: bit set where a low DCT coefficient exceeds their median."""
    low = _D @ g.astype(np.float64) @ _D.T
    bits = (low > np.median(low)).ravel()
    return to_signed(int(_WEIGHTS[bits].sum()))


def phash_image(im: Image.Image) -> int:
    return phash_gray(gray32(im))


def phash_bytes(data: bytes) -> int:
    return phash_image(Image.open(io.BytesIO(data)))


def to_signed(u: int) -> int:
    """uint64 -> int64 with the same bits."""
    return u - (1 << 64) if u >= 1 << 63 else u


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count()


def bands(k: int) -> list[tuple[int, int]]:
    """(shift, width) of k+1 bands covering 64 bits: two hashes within distance k agree on one band (pigeonhole)."""
    n = k + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def band_values(h: int, k: int) -> list[int]:
    u = h & 0xFFFFFFFFFFFFFFFF
    return [(u >> s) & ((1 << w) - 1) for s, w in bands(k)]


def band_columns(k: int) -> str:
    """SQL select items `b0, ..., bk`: the k+1 band values of a BIGINT column `phash`."""
    return ", ".join(f"(phash >> {s}) & {(1 << w) - 1} AS b{i}" for i, (s, w) in enumerate(bands(k)))


def sub_bands(k: int, band: int) -> list[list[int]]:
    """The bits outside band `band`, in k+1 runs: two hashes in the same band bucket within distance k agree on
    every bit of at least one run."""
    shift, width = bands(k)[band]
    rest = [b for b in range(64) if not shift <= b < shift + width]
    return [list(part) for part in np.array_split(rest, k + 1)]


def _mask(bits: list[int]) -> str:
    """A BIGINT constant with `bits` set (bit 63 makes it negative)."""
    value = sum(1 << b for b in bits)
    return f"CAST({value - (1 << 64) if value >= 1 << 63 else value} AS BIGINT)"


def near_pairs(sql, k: int, cap: int, left: str, right: str | None = None) -> dict:
    """Fill table `edges(a, b)` with every pair within k bits: a row `a` of table `left` and `b` of `right`, each
    table `(rid BIGINT, phash BIGINT, b0..bk)` (band_columns). Without `right`, the pairs within `left` (a < b), as
    `wit dedup` needs; with it, every (left, right) pair, as `wit revoke` matches request hashes against a corpus.
    A pair sharing two bands (or sub-bands) is one edge. `sql(text)` runs a statement (with the caller's error
    wording). Returns the join's figures: candidates, hot buckets, the bucket-size histogram (of `right`)."""
    self_join = right is None
    right = left if self_join else right
    verify = ("a.rid < b.rid AND " if self_join else "") + f"bit_count(xor(a.phash, b.phash)) <= {k}"
    pairs_of = "n * (n - 1) // 2" if self_join else "n * nl"
    sql("CREATE OR REPLACE TEMP TABLE edges (a BIGINT, b BIGINT)")
    stats = {"near_k": k, "candidate_pairs": 0, "bucket_cap": cap, "hot_buckets": 0, "hot_rows": 0,
             "hot_candidate_pairs": 0, "largest_bucket": 0}
    histogram: Counter = Counter()
    for i in range(k + 1):
        # the bucket sizes of band i (of `right`; against `left`'s, when they differ): candidates and hot buckets
        left_sizes = "" if self_join else f" JOIN (SELECT b{i} AS v, count(*) AS nl FROM {left} GROUP BY 1) USING (v)"
        sql(f"CREATE OR REPLACE TEMP TABLE sizes AS SELECT * FROM (SELECT b{i} AS v, count(*) AS n FROM {right} "
            f"GROUP BY 1){left_sizes}")
        pairs, largest, hot, hot_rows = sql(f"""
            SELECT coalesce(sum({pairs_of}), 0), coalesce(max(n), 0), count(*) FILTER (WHERE n > {cap}),
                   coalesce(sum(n) FILTER (WHERE n > {cap}), 0) FROM sizes""").fetchone()
        histogram.update(dict(sql("SELECT (2 ** floor(log2(n)))::BIGINT, count(*) FROM sizes GROUP BY 1").fetchall()))
        stats["candidate_pairs"] += int(pairs)
        stats["largest_bucket"] = max(stats["largest_bucket"], int(largest))
        sql(f"CREATE OR REPLACE TEMP TABLE hot AS SELECT v FROM sizes WHERE n > {cap}")
        sql(f"""
            INSERT INTO edges SELECT a.rid, b.rid FROM {left} a JOIN {right} b ON a.b{i} = b.b{i}
            WHERE {verify} AND a.b{i} NOT IN (SELECT v FROM hot)""")
        if not hot:
            continue
        stats["hot_buckets"] += int(hot)
        stats["hot_rows"] += int(hot_rows)
        for side, table in (("hot_left", left),) if self_join else (("hot_left", left), ("hot_right", right)):
            sql(f"CREATE OR REPLACE TEMP TABLE {side} AS SELECT * FROM {table} WHERE b{i} IN (SELECT v FROM hot)")
        hot_right = "hot_left" if self_join else "hot_right"
        for bits in sub_bands(k, i):
            m = _mask(bits)
            counts = (f"SELECT count(*) AS n FROM hot_left GROUP BY b{i}, phash & {m}" if self_join else
                      f"SELECT n * nl AS n FROM (SELECT b{i} AS v, phash & {m} AS w, count(*) AS n FROM hot_right "
                      f"GROUP BY 1, 2) JOIN (SELECT b{i} AS v, phash & {m} AS w, count(*) AS nl FROM hot_left "
                      "GROUP BY 1, 2) USING (v, w)")
            stats["hot_candidate_pairs"] += int(sql(
                f"SELECT coalesce(sum({pairs_of if self_join else 'n'}), 0) FROM ({counts})").fetchone()[0])
            sql(f"""
                INSERT INTO edges SELECT a.rid, b.rid FROM hot_left a JOIN {hot_right} b
                ON a.b{i} = b.b{i} AND (a.phash & {m}) = (b.phash & {m}) WHERE {verify}""")
    sql("CREATE OR REPLACE TEMP TABLE edges AS SELECT DISTINCT a, b FROM edges")
    stats["bucket_sizes"] = {str(size): n for size, n in sorted(histogram.items())}
    return stats
