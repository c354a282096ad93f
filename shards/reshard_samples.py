"""The per-shard steps both exchanges of `wit shards write` share (the local one in shards/reshard.py and
shards/reshard_exchange.py, Ray's in shards/reshard_ray.py): a crawled shard's selected samples out of its tar
(`read_source`), and an output shard written from its samples in plan order (`write_output`), so the bytes are the
same whichever engine moved them.
"""
from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring_ascii

import pyarrow as pa
import pyarrow.compute as pc

from wit.shards import fasttar
from wit.shards import reshard_exchange as exchange
from wit.shards.reshard_plan import read_partition
from wit.shards.schema import OK
from wit.shards.storage import WitError, join
from wit.shards.tables import read_parquet
from wit.shards.verify import publish_shard


def read_source(raw: str, src: str, plan: str, only: set[int] | None = None, shard_size: int = 0) -> pa.Table:
    """The selected samples of one crawled shard as (pos, key, jpg), sorted by pos; bytes as they are in the tar.

    Checks the tar against its manifest both ways: a tar sample that is not an ok row, or an ok row the plan wants
    that the tar lacks, is a one-line error naming the tar and the sample.
    """
    rows = read_partition(plan, "by_src", "src_shard", src)
    if only is not None:
        rows = rows.filter(pc.is_in(pc.divide(rows["pos"], shard_size), pa.array(sorted(only), pa.int64())))
    wanted = {k: i for i, k in enumerate(rows["src_key"].to_pylist())}
    manifest = read_parquet(join(raw, f"{src}.parquet"), ["key", "status"])
    ok_keys = set(manifest.filter(pc.equal(manifest["status"], OK))["key"].to_pylist())
    tar = join(raw, f"{src}.tar")
    jpg: list[bytes | None] = [None] * len(wanted)
    samples = fasttar.ManifestSamples(tar)
    for key, sample in samples:
        if key not in ok_keys:
            raise WitError(f"{tar}: sample {key} is not an ok row of {src}.parquet")
        i = wanted.get(key)
        if i is not None:
            image = fasttar.image_of(sample)
            if image is None:
                raise WitError(f"{tar}: sample {key} has no image (members: {', '.join(sorted(sample))})")
            jpg[i] = image
    if samples.problem == fasttar.TAR_MISSING:
        raise WitError(f"{tar}: missing (its manifest lists ok samples)")
    if samples.problem:
        raise WitError(samples.error)
    lost = [k for k, i in wanted.items() if jpg[i] is None]
    if lost:
        uid = rows["uid"][wanted[lost[0]]].as_py()
        raise WitError(f"{tar}: sample {lost[0]} (uid {uid}) listed in {src}.parquet is missing from the tar")
    return pa.table({"pos": rows["pos"], "key": rows["key"], "jpg": pa.array(jpg, pa.binary())},
                    schema=exchange.SAMPLES)


def write_output(out: str, shard: str, rows: pa.Table, samples: pa.Table, where: str) -> int:
    """Write output shard `shard`: its plan rows in position order, its samples' bytes in any order."""
    keys = rows["key"].to_pylist()
    index = {k: i for i, k in enumerate(samples["key"].to_pylist())}
    if len(index) != samples.num_rows or len(index) != len(keys) or any(k not in index for k in keys):
        raise WitError(f"{where}: the exchange holds {samples.num_rows} samples for shard {shard}, the plan {len(keys)}")
    jpg = samples["jpg"].take(pa.array([index[k] for k in keys], pa.int64())).to_pylist()
    fields = [c for c in rows.column_names if c not in ("pos", "key")]
    manifest = pa.table({**{c: rows[c] for c in fields}, "shard": pa.array([shard] * len(keys)), "key": rows["key"],
                         "status": pa.array([OK] * len(keys))})
    captions = manifest["caption"].to_pylist()
    texts = sample_json(manifest.drop_columns(["status", "src_key"]))
    tar = fasttar.write_samples(
        (key, {"jpg": jpg[i], "txt": (captions[i] or "").encode(), "json": texts[i].encode()})
        for i, key in enumerate(keys))
    _publish(out, shard, tar, manifest)
    return len(keys)


def sample_json(table: pa.Table) -> list[str]:
    """`json.dumps(row)` of every row, byte for byte, built a column at a time (a dict per row cost more than
    writing the sample)."""
    template = "{" + ", ".join(encode_basestring_ascii(c) + ": %s" for c in table.column_names) + "}"
    columns = [_json_column(table[c]) for c in table.column_names]
    return [template % row for row in zip(*columns)]


def _json_column(column: pa.ChunkedArray) -> list[str]:
    values, t = column.to_pylist(), column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ["null" if v is None else encode_basestring_ascii(v) for v in values]
    if pa.types.is_integer(t):
        return ["null" if v is None else str(v) for v in values]
    if pa.types.is_list(t) and pa.types.is_integer(t.value_type):
        return ["null" if v is None else "[" + ", ".join(map(str, v)) + "]" for v in values]
    return [json.dumps(v) for v in values]


def _publish(out: str, shard: str, tar: bytes, manifest: pa.Table) -> None:
    stats = {"count": manifest.num_rows, "successes": manifest.num_rows,
             "wit": {"sha256": hashlib.sha256(tar).hexdigest()}}  # the content hash a trainer's lineage names
    publish_shard(out, shard, tar, manifest, stats)
