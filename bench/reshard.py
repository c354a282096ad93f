"""bench-reshard: `wit shards write` vs a plain webdataset read+write loop over the same real 256 px shards.

Input: crawl-layout shards made from the 1,000 Flickr8k photos (../shared/data; else the photos PyPI wheels ship),
resized to a 256 px short side, with their real captions, 5,000 samples in 10 shards, and a manifest per shard.
wit reshards all of them (global shuffle, corpus manifest, index); the anchor copies them with
`webdataset.WebDataset` -> `webdataset.ShardWriter` (no shuffle, no manifest). Both run in one process.
Last line: RESULT reshard_ratio=<wit samples/s / anchor samples/s> target>=1.0
"""
from __future__ import annotations

import csv
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import webdataset as wds  # noqa: E402

from wit.shards.reshard import ReshardConfig, reshard  # noqa: E402
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


def main() -> None:
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
    ratio = best["wit"] / best["webdataset"]
    print(f"best: wit {best['wit']:.0f} samples/s/core, webdataset loop {best['webdataset']:.0f} samples/s/core")
    print(f"RESULT reshard_ratio={ratio:.2f} target>=1.0")


if __name__ == "__main__":
    main()
