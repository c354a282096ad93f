"""Synthetic crawls for the reshard tests: real tars and manifests in the crawl layout, with tiny payloads."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wit.shards import fasttar
from wit.shards.schema import MANIFEST, pair_uid


def synthetic_crawl(folder: Path, shards: int, per_shard: int, payload: int = 64, failed_every: int = 7) -> list[str]:
    """`shards` crawled shards of `per_shard` rows each (every `failed_every`-th row failed); returns the ok uids."""
    folder.mkdir(parents=True, exist_ok=True)
    ok_uids = []
    for s in range(shards):
        shard = f"{s:05d}"
        rows, samples = [], []
        for i in range(per_shard):
            n = s * per_shard + i
            url, caption = f"http://127.0.0.1/{n}.jpg", f"caption {n}"
            key = f"{shard}{i:04d}"
            ok = n % failed_every != 0
            rows.append({"uid": pair_uid(url, caption), "url": url, "caption": caption,
                         "status": "ok" if ok else "failed", "reason": None if ok else "http_404",
                         "shard": shard if ok else None, "key": key if ok else None,
                         "width": 8 if ok else None, "height": 6 if ok else None, "source_file": "list.csv",
                         "source_row": n})
            if ok:
                ok_uids.append(rows[-1]["uid"])
                body = hashlib.sha256(str(n).encode()).digest() * (payload // 32 + 1)
                samples.append((key, {"jpg": body[:payload], "txt": caption.encode(), "json": b"{}"}))
        (folder / f"{shard}.tar").write_bytes(fasttar.write_samples(iter(samples)))
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST), folder / f"{shard}.parquet")
    return ok_uids
