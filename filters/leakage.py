"""Evaluation-set leakage: hash the evaluation images once, then probe each pool hash through a band index.

Pigeonhole: two 64-bit hashes within Hamming distance k agree on at least one of k+1 bands, so a probe is k+1
dict lookups plus a popcount per candidate: linear in the pool, whatever the size of the evaluation set.
"""
from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from filters.phash import band_values, hamming, phash_bytes
from shards.manifests import write_table_atomic
from shards.storage import WitError, fs_and_path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
EVAL_INDEX = pa.schema([pa.field("name", pa.string(), nullable=False), pa.field("phash", pa.int64(), nullable=False)])


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTS


def iter_eval_images(source: str):
    """Yield (name, bytes) for every image in a folder (recursive) or a tar; the name says where it came from."""
    fs, path = fs_and_path(source)
    if not fs.exists(path):
        raise WitError(f"{source}: evaluation set not found")
    if fs.isdir(path):
        for p in sorted(fs.find(path)):
            if _is_image(p):
                yield p[len(path.rstrip("/")) + 1:], fs.cat_file(p)
        return
    stem = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:
                if m.isfile() and _is_image(m.name):
                    yield f"{stem}/{m.name}", tar.extractfile(m).read()
                tar.members = []
    except tarfile.TarError as err:
        raise WitError(f"{source}: not a folder of images nor a readable tar ({err})") from None


def hash_eval_sets(sources: list[str]) -> pa.Table:
    """(name, phash) of every decodable evaluation image; undecodable ones are skipped (they cannot leak)."""
    names, hashes = [], []
    for src in sources:
        for name, data in iter_eval_images(src):
            try:
                hashes.append(phash_bytes(data))
            except Exception:  # noqa: BLE001 - a broken eval image is not our pool's problem
                continue
            names.append(name)
    return pa.table({"name": names, "phash": pa.array(hashes, pa.int64())}, schema=EVAL_INDEX)


def write_eval_index(sources: list[str], url: str) -> int:
    table = hash_eval_sets(sources)
    write_table_atomic(url, table)
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
