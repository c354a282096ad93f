"""The local exchange of `wit shards write`: sample bytes from crawled shards to output shards, in O(tasks) files.

Two levels. The output shards are cut into K groups of consecutive shards (K about sqrt(output shards)). A crawled
shard writes at most K files, one per group that receives a sample from it: `<exchange>/<group>/<crawled>.arrow`,
an Arrow IPC file with one record batch per output shard of that group, in shard order, listed in the file's
schema metadata. An output shard then reads, from each crawled shard that sends it a sample (the plan says which),
only its own record batch (Arrow IPC files are random access). Files: at most K per crawled shard, plus one done
marker, however many samples; the old one-bucket-per-(crawled, output)-pair layout made ~1 file per sample at scale.

The exchange lives on a local disk (the local engine runs on one machine); on a cluster the Ray engine moves the
bytes instead (shards/reshard_ray.py).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from wit.shards.storage import WitError

SAMPLES = pa.schema([pa.field("pos", pa.int64()), pa.field("key", pa.string()), pa.field("jpg", pa.binary())])
_SHARDS = b"wit.shards"  # schema metadata: the output shard numbers of the file's record batches, in order
DONE = "_done"


def group_count(shards: int, groups: int | None = None) -> int:
    """K: files per crawled shard at most; about sqrt(output shards) unless given."""
    return max(1, min(shards, groups or math.isqrt(max(shards - 1, 0)) + 1))


def shards_per_group(shards: int, groups: int) -> int:
    return -(-shards // groups)


def group_path(folder: str, group: int, src: str) -> str:
    return os.path.join(folder, f"{group:05d}", f"{src}.arrow")


def write_groups(folder: str, src: str, samples: pa.Table, shard_size: int, per_group: int) -> int:
    """Write one crawled shard's samples (pos, key, jpg; sorted by pos) as at most K group files; then its marker."""
    out_no = samples["pos"].to_numpy() // shard_size
    cuts = np.flatnonzero(np.diff(out_no)) + 1
    starts, stops = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(out_no)]])
    written = 0
    by_group: dict[int, list[int]] = {}
    for i, start in enumerate(starts):
        by_group.setdefault(int(out_no[start]) // per_group, []).append(i)
    for group, runs in by_group.items():
        shards = ",".join(str(int(out_no[starts[i]])) for i in runs)
        schema = SAMPLES.with_metadata({_SHARDS: shards.encode()})
        path = group_path(folder, group, src)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for i in runs:
                writer.write_table(samples.slice(starts[i], stops[i] - starts[i]).cast(schema))
        os.replace(tmp, path)
        written += 1
    marker = os.path.join(folder, DONE, src)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "wb"):
        pass
    return written


def read_shard(folder: str, group: int, src: str, out_no: int) -> pa.Table:
    """The samples crawled shard `src` sends to output shard `out_no`: its record batch only."""
    path = group_path(folder, group, src)
    try:
        with pa.OSFile(path) as f:
            reader = pa.ipc.open_file(f)
            shards = reader.schema.metadata[_SHARDS].decode().split(",")
            if str(out_no) not in shards:
                raise WitError(f"{path}: holds no samples for output shard {out_no:05d}, the plan says it does")
            return pa.Table.from_batches([reader.get_batch(shards.index(str(out_no)))])
    except FileNotFoundError:
        raise WitError(f"{path}: missing from the exchange (remove {folder} and run again)") from None


def done_sources(folder: str, plan: dict) -> set[str]:
    """The crawled shards whose files are all in place; an exchange left by another plan is removed first."""
    stamp = os.path.join(folder, "plan.json")
    try:
        with open(stamp) as f:
            same = json.load(f) == plan
    except (OSError, ValueError):
        same = False
    if not same:
        remove(folder)
        os.makedirs(folder)
        with open(stamp, "w") as f:
            json.dump(plan, f)
    marks = os.path.join(folder, DONE)
    return set(os.listdir(marks)) if os.path.isdir(marks) else set()


def count_files(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder)) if os.path.isdir(folder) else 0


def remove(folder: str, workers: int = 8) -> None:
    """Delete the exchange one group folder per thread (by prefix), not file by file."""
    if not os.path.isdir(folder):
        return
    shutil.rmtree(os.path.join(folder, DONE), ignore_errors=True)  # first: no marker may outlive its files
    parts = [os.path.join(folder, p) for p in os.listdir(folder)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: shutil.rmtree(p, ignore_errors=True), parts))
    shutil.rmtree(folder, ignore_errors=True)
