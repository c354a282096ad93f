"""A project in the pipeline's layout for the revocation tests: raw/ (a crawl in img2dataset's layout, real photos,
never fetched: their URLs name hosts of their own), verdicts/images/ (the real image stage: pHashes), corpus/ (the
real reshard)."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from wit.shards import fasttar
from wit.shards.schema import MANIFEST, pair_uid


def resized_copy(jpeg: bytes, scale: float, quality: int) -> bytes:
    """The photo resized and re-encoded, as a mirror of it would serve it."""
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def resized_to(jpeg: bytes, size: tuple[int, int]) -> bytes:
    img = Image.open(io.BytesIO(jpeg)).convert("RGB").resize(size, Image.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def write_crawl(folder: Path, pairs: list[dict], per_shard: int) -> None:
    """Crawl shards of (url, caption, image bytes or None for a failed row), `per_shard` rows each."""
    folder.mkdir(parents=True)
    for start in range(0, len(pairs), per_shard):
        shard = f"{start // per_shard:05d}"
        rows, samples = [], []
        for i, p in enumerate(pairs[start:start + per_shard]):
            key, ok = f"{shard}{i:04d}", p["image"] is not None
            size = Image.open(io.BytesIO(p["image"])).size if ok else (None, None)
            rows.append({"uid": pair_uid(p["url"], p["caption"]), "url": p["url"], "caption": p["caption"],
                         "status": "ok" if ok else "failed", "reason": None if ok else "http_404",
                         "shard": shard if ok else None, "key": key if ok else None, "width": size[0],
                         "height": size[1], "original_width": size[0], "original_height": size[1],
                         "sha256": hashlib.sha256(p["image"]).hexdigest() if ok else None,
                         "source_file": "list.csv", "source_row": start + i})
            if ok:
                samples.append((key, {"jpg": p["image"], "txt": p["caption"].encode(), "json": b"{}"}))
        (folder / f"{shard}.tar").write_bytes(fasttar.write_samples(iter(samples)))
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST), folder / f"{shard}.parquet")
        (folder / f"{shard}_stats.json").write_text(json.dumps({"wit": {"verified": True, "rows": len(rows),
                                                                         "samples": len(samples)}}))


def corpus_files(corpus: Path) -> dict[str, tuple[bytes, int]]:
    """Every shard file of a corpus: (bytes, mtime in ns)."""
    return {p.name: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in sorted(corpus.iterdir()) if p.is_file()
            and p.name[:1].isdigit()}


def shard_keys(corpus: Path) -> dict[str, list[str]]:
    """Per shard: the keys of its tar, in order."""
    out = {}
    for tar in sorted(corpus.glob("*.tar")):
        with fasttar.open_tar(str(tar)) as t:
            out[tar.stem] = [k for k, _ in t.samples()]
    return out
