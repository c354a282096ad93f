"""What a crawl's bookkeeping costs on a large pool: normalising the lists, and the scan a resume starts with.

Anchor and wit run one after the other in one run, each step in a fresh process whose peak RSS is sampled over
its whole process tree (the driver and its pool) from /proc:
  prepare  (anchor) every list read whole (`anchor_read_list`: how `read_list` read one before it streamed) in
           one process with one Counter of every uid, every table held, then written (how `prepare_inputs` worked
           before); (wit) `ingest.inputs.prepare_inputs`: one task per list file, each read and written in
           batches of `BATCH_ROWS` rows, repeats numbered by a DuckDB window; then wit again on the same lists (a
           resume: reused).
  resume   (anchor) `verify_shard` on every shard in turn, every tar read to its end (the old `resume_scan`);
           (wit) `resume_scan` without markers (a per-shard map that reads every tar and marks it), then again
           with the markers (a resume: nothing read but the markers and the files' sizes and mtimes).
The lists are synthetic parquet files (~80-character captions, 5% of the rows repeating an earlier pair, within
and across files); the shards are img2dataset-layout tars of tiny samples (65% ok), so metadata costs dominate.
Both prepares must give the same uids. Run: `make bench-ingest-resume args="--rows 4000000"`; `--rows-per-file`
sets the size of a list file (the default is `--files` files, whatever `--rows`).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

STEPS = ("anchor-prepare", "prepare", "anchor-resume", "resume")


def make_lists(folder: Path, rows: int, files: int, seed: int = 0) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words = [f"{w}{i}" for i, w in enumerate("cat dog red car sun sea old man tree house blue sky".split() * 40)]
    per_file, paths, made = rows // files, [], 0
    for f in range(files):
        urls, captions = [], []
        for _ in range(per_file):
            if made and rng.random() < 0.05:  # a repeat of an earlier pair (this list or an earlier one)
                j = rng.randrange(min(made, 100_000))
                urls.append(f"https://img{j % 97}.example.com/photos/{j:09d}.jpg")
                captions.append(" ".join(words[(j * 7 + k) % len(words)] for k in range(12))[:80])
            else:
                urls.append(f"https://img{made % 97}.example.com/photos/{made:09d}.jpg")
                captions.append(" ".join(words[(made * 7 + k) % len(words)] for k in range(12))[:80])
            made += 1
        path = folder / f"part-{f:03d}.parquet"
        pq.write_table(pa.table({"url": urls, "caption": captions}), path)
        paths.append(str(path))
    return paths


def make_shards(out: Path, rows: int, shard_rows: int) -> int:
    """A finished crawl of `rows` rows (the run record, manifests, stats and tars, as wit writes them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit.shards.schema import MANIFEST

    (out / "_wit").mkdir(parents=True, exist_ok=True)
    (out / "_wit" / "run.json").write_text(json.dumps({"rows": [rows], "shard_size": shard_rows, "lists": []}))
    payload = bytes(200)
    shards = -(-rows // shard_rows)
    for s in range(shards):
        name = f"{s:05d}"
        n = min(shard_rows, rows - s * shard_rows)
        keys = [f"{s:05d}{i:04d}" for i in range(n)]
        ok = [i % 20 < 13 for i in range(n)]
        with tarfile.open(out / f"{name}.tar", "w") as tar:
            for key, good in zip(keys, ok):
                for ext in (("jpg", "txt", "json") if good else ()):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, __import__("io").BytesIO(payload))
        pq.write_table(pa.table({
            "uid": [f"u{k}" for k in keys], "url": [f"https://x.example/{k}.jpg" for k in keys],
            "caption": ["c"] * n, "status": ["ok" if g else "failed" for g in ok],
            "reason": [None if g else "http_404" for g in ok], "detail": [None] * n, "shard": [name] * n, "key": keys,
            "width": [1] * n, "height": [1] * n, "original_width": [1] * n, "original_height": [1] * n,
            "sha256": ["0" * 64 if g else None for g in ok], "source_file": ["l.parquet"] * n,
            "source_row": list(range(s * shard_rows, s * shard_rows + n))}, schema=MANIFEST), out / f"{name}.parquet")
        (out / f"{name}_stats.json").write_text(json.dumps({"wit": {"verified": True, "rows": n, "samples": sum(ok)}}))
    return shards


def anchor_read_list(path: str, seen: Counter):
    """A parquet list read as `read_list` read it before it streamed: the file's bytes whole, one Arrow table, and
    Python lists of every url, caption, uid and reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit.shards.lists import text_values, url_problem
    from wit.shards.schema import INPUT, row_uids
    from wit.shards.tables import arrow_reader

    with open(path, "rb") as f:
        table = pq.read_table(arrow_reader(f.read()))
    urls, captions = text_values(table.column("url")), text_values(table.column("caption"))
    return pa.table({"uid": row_uids(zip(urls, captions), seen), "url": urls, "caption": captions,
                     "source_file": [path] * len(urls), "source_row": list(range(len(urls))),
                     "invalid": [url_problem(u) for u in urls]}, schema=INPUT)


def run_step(step: str, args) -> None:
    """One measured step, in this (fresh) process."""
    from wit.ingest.config import DownloadConfig

    lists = json.loads((Path(args.dir) / "lists.json").read_text())
    if step == "anchor-prepare":
        import io

        import pyarrow.parquet as pq

        from wit.shards.storage import write_atomic

        seen, tables = Counter(), []
        for path in lists:
            tables.append(anchor_read_list(path, seen))
        for i, table in enumerate(tables):
            sink = io.BytesIO()
            pq.write_table(table, sink)
            write_atomic(f"{args.out}/_wit/input/{i:05d}.parquet", sink.getvalue())
    elif step == "prepare":
        from wit.ingest.inputs import prepare_inputs

        prepare_inputs(DownloadConfig(lists=tuple(lists), out=args.out, processes=args.workers, memory_limit="2GB"))
    elif step == "anchor-resume":
        from wit.shards.verify import shard_names, verify_shard

        assert all(verify_shard(args.out, n).ok for n in shard_names(args.out))
    elif step == "resume":
        from wit.ingest.distribute import resume_scan

        assert len(resume_scan(DownloadConfig(lists=(), out=args.out, processes=args.workers))) == args.shards


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/statm") as f:
                    rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, parent in parents.items() if parent == p and c not in tree]
    return sum(rss.get(p, 0) for p in tree)


def measure(step: str, args, out: Path, extra: list[str] = ()) -> tuple[float, int]:
    """(seconds, peak bytes of the process tree) of one step run in a fresh process."""
    cmd = [sys.executable, __file__, "--step", step, "--dir", args.dir, "--out", str(out), "--workers", str(args.workers),
           *extra]
    start = time.time()
    proc = subprocess.Popen(cmd, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.1):
            peak = max(peak, tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if proc.wait() != 0:
        raise SystemExit(f"{step} failed")
    seconds = time.time() - start
    done.set()
    sampler.join()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic lists")
    parser.add_argument("--files", type=int, default=8, help="list files")
    parser.add_argument("--rows-per-file", type=int, help="rows of each list file (then --files is rows / this)")
    parser.add_argument("--resume-rows", type=int, default=500_000, help="rows of the synthetic finished crawl")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return run_step(args.step, args)
    if args.rows_per_file:
        args.files = max(1, -(-args.rows // args.rows_per_file))

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="wit-bench-ingest-resume-") as tmp:
        args.dir = tmp
        t0 = time.time()
        lists = make_lists(Path(tmp), args.rows, args.files)
        (Path(tmp) / "lists.json").write_text(json.dumps(lists))
        crawl = Path(tmp) / "crawl"
        shards = make_shards(crawl, args.resume_rows, args.shard_rows)
        print(f"data: {args.rows:,} list rows in {args.files} files, a crawl of {args.resume_rows:,} rows in {shards} "
              f"shards ({time.time() - t0:.0f} s to make); {args.workers} workers")
        rows = {}
        rows["prepare, anchor"] = measure("anchor-prepare", args, Path(tmp) / "anchor")
        rows["prepare, wit"] = measure("prepare", args, Path(tmp) / "wit")
        rows["prepare, wit, resumed"] = measure("prepare", args, Path(tmp) / "wit")
        uids = [pq.read_table(Path(tmp) / name / "_wit" / "input", columns=["uid"])["uid"] for name in ("anchor", "wit")]
        assert uids[0].equals(uids[1]), "the prepares disagree on uids"
        extra = ["--shards", str(shards)]
        rows["resume scan, anchor"] = measure("anchor-resume", args, crawl, extra)
        rows["resume scan, wit, no markers"] = measure("resume", args, crawl, extra)
        rows["resume scan, wit, markers"] = measure("resume", args, crawl, extra)
    print(f"{'step':32} {'seconds':>8} {'peak RSS (tree)':>16}")
    for name, (seconds, peak) in rows.items():
        print(f"{name:32} {seconds:8.1f} {peak / 2**20:13.0f} MB")
    prepare_rss = rows["prepare, wit"][1] / rows["prepare, anchor"][1]
    resume_speedup = rows["resume scan, anchor"][0] / rows["resume scan, wit, markers"][0]
    print(f"RESULT ingest_prepare_rss_ratio={prepare_rss:.2f} target<=0.75")
    print(f"RESULT ingest_resume_speedup={resume_speedup:.1f} target>=2.0")


if __name__ == "__main__":
    main()
