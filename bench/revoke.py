"""bench-revoke: `wit revoke` on a synthetic corpus, against the only alternative a user has without it: re-running
the reshard over the whole corpus without the revoked rows.

The corpus: bench/scale.py's generator (a pool of --rows rows: 10,000 per crawled shard, 65% ok, 1 KB payloads, the
image stage's verdicts with pHashes), resharded by the real `wit shards write --verdicts verdicts/images` into
10,000-sample shards (about 59% of the rows survive). Not timed for the result, but printed.
The requests, 10,000 keys (--keys) in three requests appended to the root's ledger as `wit revoke` appends them:
8,980 URLs of the pool (about 59% of them in the corpus), 20 domains of its 20,000 hosts, and 1,000 near copies
(pHashes of corpus samples with one or two bits flipped, matched within 2 bits; the images a user would send are
stood in for by their hashes, as synthetic pHashes have no image).
Timed, each in its own process, with the peak RSS of its whole process tree (bench/_proc.py):
  revoke   wit revoke ROOT --memory-limit 2GB   (match in DuckDB, rewrite the shards holding a match, index)
  reshard  wit shards write ... --out ROOT/again  (the whole corpus again, the ledger leaving out the revoked rows;
           its tars are deleted as they appear, to fit the disk)
Last lines: RESULT revoke_seconds=<x>
            RESULT revoke_shards_rewritten_share=<tars changed / shards the ledger says held a match> target<=1.0
            RESULT revoke_peak_rss_gib=<x> target<=4.0
            RESULT revoke_vs_reshard=<reshard seconds / revoke seconds> target>=10

    python bench/revoke.py [--rows 16000000] [--keys 10000] [--memory-limit 2GB] [--workdir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/scale.py, bench/_proc.py
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scale import generate, measure  # noqa: E402

KEYS, NEAR = 10_000, 2


def append_requests(root: Path, keys: int = KEYS) -> dict[str, int]:
    """The three requests, drawn from the pool and the corpus by hash (the same ones on every run): of 10,000 keys
    8,980 URLs, 20 domains and 1,000 near copies, in the same shares for another number of keys."""
    domains, near_copies = max(1, keys // 500), keys // 10
    urls_n = keys - domains - near_copies
    import duckdb

    from wit.shards import revocations
    from wit.shards.sql import literal

    con = duckdb.connect()
    raw, corpus = literal(str(root / "raw" / "*.parquet")), literal(str(root / "corpus" / "*.parquet"))
    urls = [r[0] for r in con.execute(f"SELECT DISTINCT url FROM read_parquet({raw}) ORDER BY hash(url, 'revoke') "
                                      f"LIMIT {urls_n}").fetchall()]
    hosts = [f"img{k}.example.com" for k in range(0, 20_000, 20_000 // domains)]
    verdicts = literal(str(root / "verdicts" / "images" / "*.parquet"))
    phashes = [r[0] for r in con.execute(f"""
        SELECT xor(v.phash, (1::BIGINT << (hash(c.uid, 'b1') % 62)::INT) | (1::BIGINT << (hash(c.uid, 'b2') % 62)::INT))
        FROM read_parquet({corpus}) c JOIN read_parquet({verdicts}) v USING (uid)
        ORDER BY hash(c.uid, 'near') LIMIT {near_copies}""").fetchall()]
    con.close()
    kinds = {"url": [{"kind": "url", "value": u} for u in urls],
             "domain": [{"kind": "domain", "value": h} for h in hosts],
             "near": [{"kind": "phash", "value": f"copy-{i}.jpg", "phash": p, "near": NEAR}
                      for i, p in enumerate(phashes)]}
    for kind, rows in kinds.items():
        revocations.append_request(str(root), revocations.request_table(rows, f"bench: {kind}"))
    return {k: len(v) for k, v in kinds.items()}


def tar_stamps(corpus: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in corpus.glob("*.tar")}


def holding(root: Path) -> set[str]:
    """The shards the ledger says held a match (its removal records)."""
    from wit.shards import revocations

    return set(revocations.load(str(root)).removed["shard"].to_pylist())


def drop_finished_tars(out: Path):
    """A tick for `measure`: delete each output tar once its shard is done (its stats file is there)."""
    seen: set[str] = set()

    def tick() -> None:
        for stats in out.glob("*_stats.json") if out.is_dir() else []:
            tar = out / stats.name.replace("_stats.json", ".tar")
            if stats.name not in seen and tar.exists():
                seen.add(stats.name)
                tar.unlink()
    return tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16_000_000, help="rows of the synthetic pool (the issue's 16M)")
    ap.add_argument("--keys", type=int, default=KEYS, help="keys of the requests (the issue's 10,000: every corpus "
                                                           "shard holds one at these sizes)")
    ap.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit of every command")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "wit-bench-revoke"))
    ap.add_argument("--keep", action="store_true", help="keep the generated pool and corpus")
    args = ap.parse_args()
    py, limit = sys.executable, ["--memory-limit", args.memory_limit]
    root = Path(args.workdir) / f"pool-{args.rows}"
    shutil.rmtree(root, ignore_errors=True)
    made = generate(root, args.rows, len(os.sched_getaffinity(0)))
    for unused in ("matches", "lists"):  # the generator's other folders: not read here, and the disk is small
        shutil.rmtree(root / unused)
    print(f"N={args.rows:,}: pool generated in {made:.0f} s", flush=True)
    write = [py, "-m", "wit", "shards", "write", "--raw", str(root / "raw"), "--verdicts",
             str(root / "verdicts" / "images"), *limit]
    seconds, peak, rc = measure([*write, "--out", str(root / "corpus")], root / "reshard-first.log")
    if rc:
        sys.exit(f"the first reshard failed (rc {rc}): {(root / 'reshard-first.log').read_text()[-1500:]}")
    shards = len(list((root / "corpus").glob("*.tar")))
    print(f"  corpus   {seconds:8.1f} s  peak RSS {peak / 2**30:5.2f} GiB  ({shards} shards; not part of the result)",
          flush=True)
    keys = append_requests(root, args.keys)
    print(f"  requests {keys}", flush=True)

    before = tar_stamps(root / "corpus")
    time.sleep(0.01)
    revoke_s, revoke_peak, rc = measure([py, "-m", "wit", "revoke", str(root), *limit], root / "revoke.log")
    if rc:
        sys.exit(f"wit revoke failed (rc {rc}): {(root / 'revoke.log').read_text()[-1500:]}")
    after = tar_stamps(root / "corpus")
    changed = {n.removesuffix(".tar") for n in before if after.get(n) != before[n]}
    held = holding(root)
    print(f"  revoke   {revoke_s:8.1f} s  peak RSS {revoke_peak / 2**30:5.2f} GiB  ({len(changed)} tars rewritten, "
          f"{len(held)} shards held a match, of {shards})", flush=True)
    print((root / "revoke.log").read_text()[-600:], flush=True)

    again = root / "again"
    reshard_s, reshard_peak, rc = measure([*write, "--out", str(again)], root / "reshard-again.log",
                                          tick=drop_finished_tars(again))
    if rc:
        sys.exit(f"the reshard without the revoked rows failed (rc {rc})")
    print(f"  reshard  {reshard_s:8.1f} s  peak RSS {reshard_peak / 2**30:5.2f} GiB  (the anchor)", flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print(f"RESULT revoke_seconds={revoke_s:.1f}")
    print(f"RESULT revoke_shards_rewritten_share={len(changed) / max(1, len(held)):.3f} target<=1.0")
    print(f"RESULT revoke_peak_rss_gib={revoke_peak / 2**30:.2f} target<=4.0")
    print(f"RESULT revoke_vs_reshard={reshard_s / revoke_s:.2f} target>=10")


if __name__ == "__main__":
    main()
