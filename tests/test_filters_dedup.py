"""Global dedup: the band join finds exactly the pairs within k (brute force agrees), and on real photos every
resized / re-encoded / slightly cropped copy joins its original while 1,000 distinct photos stay apart."""
from __future__ import annotations

import io
import random

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wit.filters.dedup import dedup_core
from wit.shards.phash import bands, hamming, phash_bytes, to_signed
from tests.conftest import shared_data
from tests.filters_helpers import jpeg

NEAR_K = 8  # the Hamming threshold these tests vouch for on real photos (distinct Flickr8k pairs: >= 12 apart)


def _pool(con, uids, hashes, shas=None):
    shas = shas or [f"sha-{u}" for u in uids]
    con.register("src", pa.table({"rid": pa.array(range(len(uids)), pa.int64()), "uid": uids, "sha256": shas,
                                  "phash": pa.array(hashes, pa.int64())}))
    con.execute("CREATE OR REPLACE TABLE pool AS SELECT * FROM src")


def _final_keeper(con, uids) -> dict[str, str]:
    dup = dict(con.execute("SELECT p.uid, d.dup_of FROM dups d JOIN pool p USING (rid)").fetchall())
    return {u: dup.get(u, u) for u in uids}


def _flip(h: int, bits: list[int]) -> int:
    u = h & (2**64 - 1)
    for b in bits:
        u ^= 1 << b
    return to_signed(u)


def test_bands_cover_64_bits():
    for k in range(0, 10):
        bs = bands(k)
        assert len(bs) == k + 1 and sum(w for _, w in bs) == 64 and bs[-1][0] + bs[-1][1] == 64


@pytest.mark.parametrize("k", [1, 2, 4])
def test_band_join_finds_exactly_the_pairs_within_k(k):
    rng = random.Random(k)
    base = [to_signed(rng.getrandbits(64)) for _ in range(400)]
    hashes, uids = list(base), [f"u{i:05d}" for i in range(len(base))]
    # plant copies at distance 1..k+2 from random bases: those at <= k must join, those above must not
    for d in range(1, k + 3):
        for j in range(30):
            hashes.append(_flip(base[rng.randrange(len(base))], rng.sample(range(64), d)))
            uids.append(f"v{d}-{j:03d}")
    con = duckdb.connect()
    _pool(con, uids, hashes)
    stats = dedup_core(con, k)
    # brute force: components of the graph "distance <= k" over distinct hashes
    n = len(hashes)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = 0
    for i in range(n):
        for j in range(i + 1, n):
            if hamming(hashes[i], hashes[j]) <= k:
                pairs += hashes[i] != hashes[j]
                parent[find(i)] = find(j)
    groups: dict[int, list[str]] = {}
    for i, u in enumerate(uids):
        groups.setdefault(find(i), []).append(u)
    expected = {u: min(g) for g in groups.values() for u in g}
    assert _final_keeper(con, uids) == expected
    assert stats["verified_pairs"] == pairs and stats["candidate_pairs"] >= pairs


def test_exact_groups_keep_the_smallest_uid_and_repeated_uids_follow_their_first():
    con = duckdb.connect()
    uids = ["c", "a", "b", "a", "d"]
    _pool(con, uids, [7, 7, 7, 7, 9], ["s1", "s1", "s2", "s1", "s3"])
    stats = dedup_core(con, 0)
    rows = dict(con.execute("SELECT rid, dup_of || '/' || dup_kind FROM dups").fetchall())
    assert rows == {0: "a/exact", 2: "a/exact", 3: "a/uid"}
    assert stats["exact_dups"] == 2 and stats["uid_dups"] == 1
    # sha256 as the key: equal pHash with different bytes is no longer a duplicate
    con.execute("DROP TABLE dups")
    dedup_core(con, 0, exact="sha256")
    assert dict(con.execute("SELECT rid, dup_of FROM dups WHERE dup_kind = 'exact'").fetchall()) == {0: "a"}


def _variants(data: bytes) -> dict[str, bytes]:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    dx, dy = max(1, w // 100), max(1, h // 100)
    return {
        "half": jpeg(im.resize((w // 2, h // 2), Image.BICUBIC), 90),
        "q50": jpeg(im, 50),
        "q95": jpeg(im, 95),
        "crop1": jpeg(im.crop((dx, dy, w, h)), 85),
        "crop1c": jpeg(im.crop((dx // 2, dy // 2, w - dx // 2, h - dy // 2)), 75),
    }


def test_near_dup_recall_and_no_false_positives_on_flickr8k():
    files = sorted(shared_data("flickr8k", "images").glob("*.jpg"))
    assert len(files) >= 1000
    uids, hashes, origin = [], [], {}
    for i, f in enumerate(files):
        uids.append(f"p{i:04d}")
        hashes.append(phash_bytes(f.read_bytes()))
        origin[uids[-1]] = i
    for i, f in enumerate(files[:120]):  # copies of 120 photos
        for name, data in _variants(f.read_bytes()).items():
            uids.append(f"{name}-{i:04d}")  # sorts before "p": the keeper may be a copy, as in real pools
            hashes.append(phash_bytes(data))
            origin[uids[-1]] = i
    con = duckdb.connect()
    _pool(con, uids, hashes)
    dedup_core(con, NEAR_K)
    keeper = _final_keeper(con, uids)
    by_photo: dict[int, set[str]] = {}
    for u in uids:
        by_photo.setdefault(origin[u], set()).add(keeper[u])
    assert all(len(k) == 1 for k in by_photo.values()), "a copy did not join its original"
    assert len({next(iter(k)) for k in by_photo.values()}) == len(files), "two distinct photos were merged"
    assert np.mean([keeper[u] != u for u in uids]) > 0  # sanity: something was dropped


def test_rows_an_earlier_stage_dropped_never_stand_for_their_group(tmp_path):
    # three copies of one image; the text filter dropped "a", the smallest uid: "b" must stay, not nobody
    from wit.filters.dedup import DedupConfig, dedup

    (tmp_path / "images").mkdir()
    (tmp_path / "text").mkdir()
    uids = ["a", "b", "c", "d"]
    pq.write_table(pa.table({"uid": uids, "keep": [True] * 4, "reason": [None] * 4, "sha256": ["s", "s", "s", "t"],
                             "phash": pa.array([7, 7, 7, 9], pa.int64())}), tmp_path / "images" / "00000.parquet")
    pq.write_table(pa.table({"uid": uids, "keep": [False, True, True, True],
                             "reason": ["caption_filename", None, None, None]}), tmp_path / "text" / "00000.parquet")
    summary = dedup(DedupConfig(images=str(tmp_path / "images"), out=str(tmp_path / "out"), near_k=0,
                                after=(str(tmp_path / "text"),)))
    got = {r["uid"]: (r["keep"], r["reason"]) for r in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()}
    assert got == {"a": (False, "caption_filename"), "b": (True, None), "c": (False, "dup_of:b"), "d": (True, None)}
    # its own drops only: the text filter's is counted apart (the pipeline's line showed it as the dedup's)
    assert summary["dropped"] == {"dup_of": 1} and summary["dropped_before"] == 1 and summary["kept"] == 2


def _components_brute_force(uids, hashes, k) -> dict[str, str]:
    """uid -> smallest uid of its component in the graph 'Hamming distance <= k' (exact copies included)."""
    parent = list(range(len(hashes)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if hamming(hashes[i], hashes[j]) <= k:
                parent[find(i)] = find(j)
    groups: dict[int, list[str]] = {}
    for i, u in enumerate(uids):
        groups.setdefault(find(i), []).append(u)
    return {u: min(g) for g in groups.values() for u in g}


def test_hot_band_buckets_are_joined_by_sub_bands_and_find_the_same_pairs():
    # 600 hashes share band 0 (a hot bucket, as blank images make), with near copies among them, plus a chain of
    # 40 hashes one bit apart (one cluster whose ends are 39 bits apart: labels must travel the whole chain)
    k = 2
    rng = random.Random(5)
    shift, width = bands(k)[0]
    band0 = rng.getrandbits(width) << shift
    other = ((1 << 64) - 1) ^ (((1 << width) - 1) << shift)
    hot = [to_signed(band0 | (rng.getrandbits(64) & other)) for _ in range(600)]
    hot += [_flip(hot[rng.randrange(600)], rng.sample([b for b in range(63) if not shift <= b < shift + width], d))
            for d in (1, 2, 3) for _ in range(20)]
    chain = [to_signed(rng.getrandbits(64))]
    for b in rng.sample(range(63), 39):
        chain.append(_flip(chain[-1], [b]))
    hashes = hot + chain + [to_signed(rng.getrandbits(64)) for _ in range(300)]
    uids = [f"u{rng.getrandbits(40):012x}" for _ in hashes]
    expected = _components_brute_force(uids, hashes, k)
    results = {}
    for cap in (50, 10**9):  # sub-bands for the hot bucket, and the plain band join
        con = duckdb.connect()
        _pool(con, uids, hashes)
        results[cap] = (dedup_core(con, k, bucket_cap=cap), _final_keeper(con, uids))
    (hot_stats, hot_keepers), (plain_stats, plain_keepers) = results[50], results[10**9]
    assert hot_keepers == plain_keepers == expected
    assert len({expected[u] for u in uids[660:700]}) == 1  # the chain is one cluster
    assert hot_stats["hot_buckets"] >= 1 and hot_stats["hot_rows"] >= 660 and plain_stats["hot_buckets"] == 0
    assert hot_stats["verified_pairs"] == plain_stats["verified_pairs"]
    assert hot_stats["hot_candidate_pairs"] < 660 * 659 // 2 / 10  # far fewer candidates than the bucket's pairs
    assert hot_stats["largest_bucket"] >= 660 and hot_stats["cluster_rounds"] >= 2
