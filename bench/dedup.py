"""Benchmark of the image stage's hashing and of the global dedup join (see bench/README.md, `## dedup`).

(a) decode + 64-bit pHash per core on real 256 px JPEGs (the 1,000 Flickr8k photos resized as the crawler stores
    them, read from a tar shard), wit vs the `imagehash` package's pHash on the same bytes, one process each.
(b) `filters.dedup.dedup_core` on N generated rows (random 64-bit hashes, uid = md5) with planted exact copies and
    near copies at Hamming distance 1..k: wall time of exact dedup and of the Hamming <= k join, peak memory,
    candidate and verified pairs, recall of the planted pairs.

    python bench/dedup.py [--rows 10000000] [--near-k 2] [--rounds 2]
Last line: RESULT hash_vs_imagehash=<x> target>=2.0
"""
from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402
from PIL import Image  # noqa: E402

from wit.filters.dedup import dedup_core  # noqa: E402
from wit.filters.images import read_tar_images  # noqa: E402
from wit.shards.phash import phash_bytes  # noqa: E402

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"


def shard_256(tmp: Path) -> list[bytes]:
    import webdataset as wds

    if not FLICKR.is_dir():
        sys.exit(f"needs {FLICKR} (real photos); missing here")
    with wds.TarWriter(str(tmp / "00000.tar")) as tw:
        for i, f in enumerate(sorted(FLICKR.glob("*.jpg"))):
            im = Image.open(f).convert("RGB")
            s = 256 / min(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            tw.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": "x"})
    images, problem = read_tar_images(str(tmp / "00000.tar"))
    assert problem is None
    return list(images.values())


def rate(fn, images: list[bytes], rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for data in images:
            fn(data)
        best = max(best, len(images) / (time.perf_counter() - t))
    return best


def bench_hash(rounds: int) -> float:
    import imagehash

    with tempfile.TemporaryDirectory() as tmp:
        images = shard_256(Path(tmp))
    ours = rate(phash_bytes, images, rounds)
    theirs = rate(lambda d: imagehash.phash(Image.open(io.BytesIO(d))), images, rounds)
    print(f"(a) {len(images)} real 256 px JPEGs, one core, best of {rounds}: wit decode+pHash {ours:,.0f} images/s, "
          f"imagehash.phash {theirs:,.0f} images/s, ratio {ours / theirs:.2f} (targets >= 1,000/s, >= 2x)")
    return ours / theirs


def bench_join(rows: int, k: int, threads: int | None) -> None:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    n_exact = n_near = rows // 100  # 1% exact copies, 1% near copies at distance 1..k
    base = rows - n_exact - n_near
    t = time.perf_counter()
    con.execute(f"""
        CREATE TABLE base AS SELECT i AS rid, md5(i::VARCHAR) AS uid, (hash(i, 'wit')::HUGEINT - 9223372036854775808)::BIGINT AS phash
        FROM range({base}) t(i)""")
    # near copies flip 1..k of bits 0..62 of a random base row (BIGINT shifts stop at 62); exact copies repeat it
    flips = " | ".join(f"(1::BIGINT << ((hash(p.rid, {b}) % 63 + {b} * 7) % 63)::INT)" for b in range(k))
    con.execute(f"""
        CREATE TABLE planted AS
        SELECT {base} + j AS rid, md5('e' || j::VARCHAR) AS uid, (hash(j, 'src') % {base})::BIGINT AS src, 'exact' AS kind
        FROM range({n_exact}) t(j)
        UNION ALL
        SELECT {base} + {n_exact} + j, md5('n' || j::VARCHAR), (hash(j, 'nsrc') % {base})::BIGINT, 'near'
        FROM range({n_near}) t(j)""")
    con.execute(f"""
        CREATE TABLE pool AS
        SELECT rid, uid, NULL::VARCHAR AS sha256, phash FROM base
        UNION ALL
        SELECT p.rid, p.uid, NULL, CASE WHEN p.kind = 'exact' THEN b.phash ELSE xor(b.phash, ({flips})) END
        FROM planted p JOIN base b ON b.rid = p.src""")
    pairs_far = con.execute(f"""SELECT count(*) FILTER (WHERE bit_count(xor(p.phash, b.phash)) > {k}),
        count(*) FILTER (WHERE q.kind = 'near' AND bit_count(xor(p.phash, b.phash)) = 0)
        FROM pool p JOIN planted q USING (rid) JOIN base b ON b.rid = q.src""").fetchone()
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    stats = dedup_core(con, k)
    total_s = time.perf_counter() - t
    recall = con.execute("""
        WITH fin AS (SELECT p.rid, coalesce(d.dup_of, p.uid) AS keeper FROM pool p LEFT JOIN dups d USING (rid))
        SELECT q.kind, avg((a.keeper = b.keeper)::INT), count(*) FROM planted q
        JOIN fin a ON a.rid = q.rid JOIN fin b ON b.rid = q.src GROUP BY q.kind ORDER BY 1""").fetchall()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"(b) {rows:,} rows ({n_exact:,} exact copies, {n_near:,} near copies at distance 1..{k}; generated in "
          f"{gen_s:.1f} s; planted pairs beyond k: {pairs_far[0]}, collapsed to 0: {pairs_far[1]})")
    print(f"    exact dedup: {stats['exact_s']:.1f} s, {stats['exact_dups']:,} dropped")
    print(f"    Hamming <= {k}: {stats['near_s']:.1f} s (join {stats['near_join_s']:.1f} s), candidate pairs "
          f"{stats['candidate_pairs']:,}, verified {stats['verified_pairs']:,}, dropped {stats['near_dups']:,}")
    print(f"    total {total_s:.1f} s, peak RSS {peak_gib:.2f} GiB; recall of planted pairs: "
          + ", ".join(f"{kind} {r:.4f} of {n:,}" for kind, r, n in recall))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="generated rows for (b) (default: %(default)s)")
    ap.add_argument("--near-k", type=int, default=2, help="Hamming threshold for (b) (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (a), best kept (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads for (b) (default: all cores)")
    ap.add_argument("--skip-join", action="store_true", help="only (a)")
    args = ap.parse_args()
    ratio = bench_hash(args.rounds)
    if not args.skip_join:
        bench_join(args.rows, args.near_k, args.threads)
    print(f"RESULT hash_vs_imagehash={ratio:.2f} target>=2.0")


if __name__ == "__main__":
    main()
