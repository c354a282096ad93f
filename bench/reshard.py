"""bench-reshard: `wit shards write` side by side with a webdataset loop, then at scale on synthetic pools.

Side by side: crawl-layout shards made from the 1,000 Flickr8k photos (../shared/data; else the photos PyPI wheels
ship), resized to a 256 px short side, with their real captions, 5,000 samples in 10 shards, and a manifest per
shard. wit reshards all of them (global shuffle, corpus manifest, index); the anchor copies them with
`webdataset.WebDataset` -> `webdataset.ShardWriter` (no shuffle, no manifest). Both run in one process.

Scale (`scale_part`, also called by bench/scale.py): synthetic pools of N samples with tiny payloads (so the costs
per sample and per file dominate) in crawled shards of 10,000, with a verdict folder and a selection, resharded by
the real command in its own process into 10,000-sample shards under a DuckDB memory limit: wall time, peak RSS of
the process tree, files written (output and intermediate). The output tars are removed as soon as each shard is
done (their stats file appears): at 16M samples their tar headers alone are 48 GB, more than this disk has free.

Last lines: RESULT reshard_ratio=<wit samples/s / anchor samples/s> target>=2.0
            RESULT reshard_files_per_sample=<intermediate files / samples at the largest N> target<=0.01
            RESULT reshard_peak_rss_gib=<largest peak RSS over the scale part> target<=4.0
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_proc.py, shared by the benchmarks
from _proc import tree_rss  # noqa: E402
import webdataset as wds  # noqa: E402

from wit.shards.reshard import ReshardConfig, reshard  # noqa: E402
from wit.shards import fasttar  # noqa: E402
from wit.shards.schema import MANIFEST, pair_uid  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def photos_and_captions() -> list[tuple[bytes, str]]:
    folder = SHARED / "flickr8k"
    if (folder / "captions.csv").exists():
        with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        cache: dict[str, bytes] = {}
        out = []
        for r in rows:
            if r["image"] not in cache:
                cache[r["image"]] = (folder / "images" / r["image"]).read_bytes()
            out.append((cache[r["image"]], r["caption"]))
        return out
    from wit.ingest.sample_images import package_photos

    return [(b, f"a photo of {n}") for n, b in package_photos().items()] * 300


def resized(jpeg: bytes) -> bytes:
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    scale = 256 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_crawl(folder: Path, samples: list[tuple[bytes, str]], per_shard: int) -> None:
    folder.mkdir(parents=True)
    cache: dict[int, bytes] = {}
    for s in range(0, len(samples), per_shard):
        shard = f"{s // per_shard:05d}"
        rows = []
        with wds.TarWriter(str(folder / f"{shard}.tar")) as tar:
            for i, (jpeg, caption) in enumerate(samples[s:s + per_shard]):
                key = f"{shard}{i:04d}"
                img = cache.setdefault(id(jpeg), resized(jpeg))
                url = f"http://127.0.0.1/{s + i}.jpg"
                tar.write({"__key__": key, "jpg": img, "txt": caption, "json": b"{}"})
                w, h = Image.open(io.BytesIO(img)).size
                rows.append({"uid": pair_uid(url, caption), "url": url, "caption": caption, "status": "ok",
                             "shard": shard, "key": key, "width": w, "height": h, "original_width": w,
                             "original_height": h, "source_file": "bench", "source_row": s + i})
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST), folder / f"{shard}.parquet")


def anchor(src: Path, out: Path, per_shard: int) -> int:
    out.mkdir(parents=True)
    n = 0
    urls = [str(p) for p in sorted(src.glob("*.tar"))]
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in wds.WebDataset(urls, shardshuffle=False):
            sink.write({"__key__": sample["__key__"], "jpg": sample["jpg"], "txt": sample["txt"], "json": sample["json"]})
            n += 1
    return n


def side_by_side() -> float:
    """wit vs the webdataset loop on 5,000 real samples, best of two alternating rounds: wit samples/s / loop's."""
    work = Path(tempfile.mkdtemp(prefix="bench-reshard-"))
    samples = photos_and_captions()[:5000]
    make_crawl(work / "raw", samples, per_shard=500)
    best = {"wit": 0.0, "webdataset": 0.0}
    for round_ in range(2):
        for name in ("webdataset", "wit"):
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            if name == "wit":
                n = reshard(ReshardConfig(raw=str(work / "raw"), out=str(out), shard_size=500, workers=1))["samples"]
            else:
                n = anchor(work / "raw", out, per_shard=500)
            seconds = time.perf_counter() - start
            best[name] = max(best[name], n / seconds)
            print(f"round {round_ + 1} {name:<11} {n} samples in {seconds:5.2f} s = {n / seconds:8.1f} samples/s/core")
    shutil.rmtree(work, ignore_errors=True)
    print(f"best: wit {best['wit']:.0f} samples/s/core, webdataset loop {best['webdataset']:.0f} samples/s/core")
    return best["wit"] / best["webdataset"]


# ---- scale ------------------------------------------------------------------------------------------------------

PER_CRAWLED_SHARD = 10_000
OUTPUT_SHARD = 10_000


def synthetic_tar(keys: list[str], payloads: np.ndarray) -> bytes:
    """A tar of one `KEY.jpg` member per key (keys of equal length, 16-byte payloads), headers built in numpy:
    the same bytes as `fasttar.member` writes, at a fraction of the cost, so making 16M samples takes minutes."""
    n, name_len = len(keys), len(keys[0]) + 4
    template = np.frombuffer(fasttar.member("x" * name_len, bytes(16))[:fasttar.BLOCK], np.uint8).copy()
    template[148:156] = ord(" ")
    names = np.frombuffer("".join(k + ".jpg" for k in keys).encode(), np.uint8).reshape(n, name_len)
    blocks = np.zeros((n, 2 * fasttar.BLOCK), np.uint8)
    blocks[:, :fasttar.BLOCK] = template
    blocks[:, :name_len] = names
    checksum = int(template.sum()) - ord("x") * name_len + names.sum(axis=1, dtype=np.int64)
    for i in range(6):  # "%06o\0 "
        blocks[:, 148 + i] = ord("0") + (checksum >> (3 * (5 - i))) % 8
    blocks[:, 154], blocks[:, 155] = 0, ord(" ")
    blocks[:, fasttar.BLOCK:fasttar.BLOCK + 16] = payloads
    return blocks.tobytes() + bytes(2 * fasttar.BLOCK)


def _synthetic_shard(task: tuple[str, int, int]) -> None:
    """One crawled shard: `n` ok rows, a 16-byte image each (one tar member: the reshard reads only .jpg), its
    manifest, a verdict file (keep all) and a selection file (select all, query ids spread over 500K entries)."""
    folder, s, n = task
    root, shard = Path(folder), f"{s:05d}"
    start = s * PER_CRAWLED_SHARD
    urls = [f"http://127.0.0.1/{i}.jpg" for i in range(start, start + n)]
    captions = [f"a synthetic caption number {i} with some words in it" for i in range(start, start + n)]
    uids = [f"{i:032x}" for i in range(start, start + n)]  # unique; the rank hashes them anyway
    keys = [f"{shard}{i:05d}" for i in range(n)]
    payloads = np.arange(start, start + n, dtype=">u8").view(np.uint8).reshape(n, 8).repeat(2, axis=0).reshape(n, 16)
    (root / "raw" / f"{shard}.tar").write_bytes(synthetic_tar(keys, payloads))
    ints = pa.array([8] * n, pa.int32())
    manifest = pa.table({"uid": uids, "url": urls, "caption": captions, "status": ["ok"] * n, "reason": [None] * n,
                         "detail": [None] * n, "shard": [shard] * n, "key": keys, "width": ints, "height": ints,
                         "original_width": ints, "original_height": ints, "sha256": [None] * n,
                         "source_file": ["synthetic.parquet"] * n,
                         "source_row": pa.array(range(start, start + n), pa.int64())}, schema=MANIFEST)
    pq.write_table(manifest, root / "raw" / f"{shard}.parquet")
    pq.write_table(pa.table({"uid": uids, "keep": [True] * n}), root / "verdicts" / f"{shard}.parquet")
    matched = pa.array([[(i * 7919) % (1 + i % 500_000)] for i in range(start, start + n)], pa.list_(pa.int32()))
    pq.write_table(pa.table({"uid": uids, "status": ["selected"] * n, "matched": matched}),
                   root / "selection" / f"{shard}.parquet")


def synthetic_pool(folder: Path, samples: int, workers: int) -> None:
    for part in ("raw", "verdicts", "selection"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    tasks = [(str(folder), s, min(PER_CRAWLED_SHARD, samples - s * PER_CRAWLED_SHARD))
             for s in range(-(-samples // PER_CRAWLED_SHARD))]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_synthetic_shard, tasks, chunksize=4))




_RUN = """
import json, sys
from wit.shards.reshard import ReshardConfig, reshard
a = json.loads(sys.argv[1])
print("SUMMARY " + json.dumps(reshard(ReshardConfig(raw=a["raw"], out=a["out"], verdicts=(a["verdicts"],),
      selection=a["selection"], shard_size=a["shard_size"], engine=a["engine"], workers=a["workers"],
      memory_limit=a["memory_limit"]))))
"""


def run_reshard(pool: Path, out: Path, engine: str, workers: int | None, memory_limit: str) -> dict:
    """The real reshard in its own process: wall time, peak RSS of its process tree, and its summary.

    Finished output tars (their stats file exists) are deleted while it runs, to fit the disk (see the docstring).
    """
    args = {"raw": str(pool / "raw"), "out": str(out), "verdicts": str(pool / "verdicts"),
            "selection": str(pool / "selection"), "shard_size": OUTPUT_SHARD, "engine": engine, "workers": workers,
            "memory_limit": memory_limit}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RUN, json.dumps(args)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    peak, outputs, stop = [0], set(), threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], tree_rss(proc.pid))
            if out.is_dir():
                for stats in out.glob("*_stats.json"):
                    tar = out / stats.name.replace("_stats.json", ".tar")
                    if tar.exists() and stats.name not in outputs:
                        outputs.add(stats.name)
                        tar.unlink()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, _ = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"reshard failed with exit {proc.returncode}")
    summary = json.loads(next(line for line in stdout.splitlines() if line.startswith("SUMMARY "))[8:])
    return {"seconds": seconds, "peak_rss_gib": peak[0] / 2**30, "summary": summary}


def scale_part(sizes: list[int], work: Path | None = None, engine: str = "local", workers: int | None = None,
               memory_limit: str = "2GB", log=print) -> list[dict]:
    """Reshard synthetic pools of each size; one row per size (bench/scale.py calls this)."""
    work = Path(work or tempfile.mkdtemp(prefix="bench-reshard-scale-"))
    rows = []
    for n in sizes:
        pool = work / f"pool-{n}"
        start = time.perf_counter()
        synthetic_pool(pool, n, workers or os.cpu_count() or 1)
        made = time.perf_counter() - start
        r = run_reshard(pool, work / f"out-{n}", engine, workers, memory_limit)
        s = r["summary"]
        row = {"samples": n, "engine": engine, "seconds": r["seconds"], "samples_per_s": n / r["seconds"],
               "peak_rss_gib": r["peak_rss_gib"], "output_shards": s["shards"], "crawled_shards": s["from_crawled_shards"],
               "intermediate_files": s["intermediate_files"], "exchange_files": s["exchange_files"],
               "files_written": s["intermediate_files"] + 3 * s["shards"] + 3,
               "files_per_sample": s["intermediate_files"] / n, "pool_seconds": made}
        log(f"scale {engine} N={n:>10,}: {row['seconds']:8.1f} s ({row['samples_per_s']:9,.0f} samples/s), "
            f"peak RSS {row['peak_rss_gib']:.2f} GiB, {row['crawled_shards']} crawled -> {row['output_shards']} shards, "
            f"intermediate files {row['intermediate_files']:,} ({row['files_per_sample']:.5f}/sample; exchange "
            f"{row['exchange_files']:,}), files written {row['files_written']:,}  [pool made in {made:.0f} s]")
        assert s["samples"] == n, s
        shutil.rmtree(pool, ignore_errors=True)
        shutil.rmtree(work / f"out-{n}", ignore_errors=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,4000000,16000000", help="samples per scale point, comma separated")
    parser.add_argument("--engine", default="local", choices=("local", "ray"), help="engine of the scale part")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit of the plan")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new one under $TMPDIR)")
    parser.add_argument("--no-side-by-side", action="store_true", help="only the scale part")
    args = parser.parse_args()
    ratio = None if args.no_side_by_side else side_by_side()
    rows = scale_part([int(x) for x in args.sizes.split(",")], Path(args.work) if args.work else None,
                      args.engine, args.workers, args.memory_limit)
    if ratio is not None:
        print(f"RESULT reshard_ratio={ratio:.2f} target>=2.0")
    print(f"RESULT reshard_files_per_sample={rows[-1]['files_per_sample']:.5f} target<=0.01")
    print(f"RESULT reshard_peak_rss_gib={max(r['peak_rss_gib'] for r in rows):.2f} target<=4.0")


if __name__ == "__main__":
    main()
