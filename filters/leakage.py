"""Evaluation-set leakage: hash the evaluation images once, then probe each pool hash through a band index.

Pigeonhole: two 64-bit hashes within Hamming distance k agree on at least one of k+1 bands, so a probe is k+1
dict lookups plus a popcount per candidate: linear in the pool, whatever the size of the evaluation set.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from wit.shards.phash import band_values, hamming, phash_bytes
from wit.shards import fasttar
from wit.shards.storage import WitError, expand, fs_and_path
from wit.shards.tables import write_parquet

EVAL_INDEX = pa.schema([pa.field("name", pa.string(), nullable=False), pa.field("phash", pa.int64(), nullable=False)])


def iter_eval_images(source: str):
    """Yield (name, bytes) for every image of an evaluation set: a folder (recursive; tars inside it are read
    too, e.g. WebDataset shards), a tar, or a brace pattern of either. The name says where the image came from."""
    for url in expand(source):
        fs, path = fs_and_path(url)
        if not fs.exists(path):
            raise WitError(f"{url}: evaluation set not found")
        if not fs.isdir(path):
            yield from _tar_images(url, path.rstrip("/").rsplit("/", 1)[-1])
            continue
        for p in sorted(fs.find(path)):
            name = p[len(path.rstrip("/")) + 1:]
            if fasttar.is_image_file(p):
                yield name, fs.cat_file(p)
            elif p.endswith(".tar"):
                yield from _tar_images(fs.unstrip_protocol(p) if "://" in url else p, name)


def _tar_images(url: str, stem: str):
    try:
        for name, data in fasttar.read_members(url):
            if fasttar.is_image_file(name):
                yield f"{stem}/{name}", data
    except fasttar.TarError as err:
        raise WitError(f"not a folder of images nor a readable tar: {err}") from None


def hash_eval_sets(sources: list[str]) -> pa.Table:
    """(name, phash) of every decodable evaluation image; undecodable ones are skipped (they cannot leak)."""
    names, hashes = [], []
    for src in sources:
        found = 0
        for name, data in iter_eval_images(src):
            found += 1
            try:
                hashes.append(phash_bytes(data))
            except Exception:  # noqa: BLE001 - a broken eval image is not our pool's problem
                continue
            names.append(name)
        if not found:  # a leakage check against nothing would pass every pair
            raise WitError(f"{src}: no images in this evaluation set (looked in folders and tars for "
                           f"{', '.join(sorted(fasttar.IMAGE_EXTS))})")
    return pa.table({"name": names, "phash": pa.array(hashes, pa.int64())}, schema=EVAL_INDEX)


def write_eval_index(sources: list[str], url: str) -> int:
    table = hash_eval_sets(sources)
    write_parquet(url, table)
    return table.num_rows


@dataclass
class EvalIndex:
    """Band index over evaluation hashes: probe(h) -> name of the closest eval image within distance k, or None."""

    k: int
    names: list[str]
    hashes: list[int]
    _bands: list[dict[int, list[int]]] = field(default_factory=list)

    def __post_init__(self):
        self._bands = [defaultdict(list) for _ in range(self.k + 1)]
        for i, h in enumerate(self.hashes):
            for b, v in enumerate(band_values(h, self.k)):
                self._bands[b][v].append(i)

    @classmethod
    def from_table(cls, table: pa.Table, k: int) -> "EvalIndex":
        return cls(k, table["name"].to_pylist(), table["phash"].to_pylist())

    def probe(self, h: int) -> str | None:
        best, best_d = None, self.k + 1
        for b, v in enumerate(band_values(h, self.k)):
            for i in self._bands[b].get(v, ()):
                d = hamming(h, self.hashes[i])
                # ties go to the smallest name: the same answer whatever the order of the eval sets
                if d < best_d or (d == best_d and best is not None and self.names[i] < self.names[best]):
                    best, best_d = i, d
        return None if best is None else self.names[best]
