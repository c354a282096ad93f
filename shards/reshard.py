"""`wit shards write`: the curated corpus as evenly sized, globally shuffled training shards, with an index.

Three steps, each resumable:
  plan     (global, metadata only) join the crawl manifests with the filter verdicts and the balance selection,
           give every surviving sample a rank from hash(seed, uid), and cut the ranking into shards.
  scatter  (per crawled shard) read the tar once, copy each selected sample's bytes, unchanged, into a bucket per
           output shard.
  gather   (per output shard) read its buckets, order the samples by rank, write tar, corpus manifest and stats
           (last, the done marker), checked against the plan.
The shuffle is global because the ranks are: an output shard draws from every crawled shard, so no shard is one
domain or one query, and the result does not depend on the number of workers or the engine.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.shards import fasttar
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, run_map
from wit.shards.schema import OK, SCHEMA_VERSION
from wit.shards.storage import (
    WitError,
    absolute,
    exists,
    fs_and_path,
    join,
    read_json,
    write_atomic,
    write_json_atomic,
)
from wit.shards.tables import arrow_reader, read_folder, read_parquet
from wit.shards.verify import publish_shard, shard_names, verify_shard


@dataclass(frozen=True, kw_only=True)
class ReshardConfig(EngineOptions):
    raw: str = opt(help="folder of crawled shards and their manifests (wit download --out)")
    out: str = opt(help="output folder, local or s3://")
    verdicts: tuple[str, ...] = opt((), "folders of filter verdicts (uid, keep, reason), one file per crawled shard")
    selection: str | None = opt(None, "folder of balance selections (uid, status, matched), e.g. <balance "
                                      "out>/selection")
    shard_size: int = opt(10_000, "samples per output shard (the last may be short)", minimum=1)
    seed: int = opt(0, "seed of the global shuffle")


CORPUS_FIELDS = ["uid", "url", "caption", "width", "height", "original_width", "original_height", "sha256",
                 "source_file", "source_row", "src_shard", "src_key"]


def rank(seed: int, uids: list[str]) -> np.ndarray:
    """A 64-bit pseudo-random rank per uid: a pure function of (seed, uid)."""
    prefix = f"{seed}:".encode()
    return np.array([int.from_bytes(hashlib.blake2b(prefix + u.encode(), digest_size=8).digest(), "big") >> 1
                     for u in uids], dtype=np.int64)


def make_plan(cfg: ReshardConfig) -> pa.Table:
    """Every sample that survives ingest, all filters and the selection, with its output shard and key."""
    manifest = read_folder(cfg.raw, required=("uid", "status", "shard", "key"))
    ok = manifest.filter(pc.equal(manifest["status"], OK))
    ok = ok.rename_columns(["src_shard" if c == "shard" else "src_key" if c == "key" else c for c in ok.column_names])
    keep = np.ones(ok.num_rows, dtype=bool)
    extra: dict[str, pa.Array] = {}
    uids = ok["uid"].to_pylist()
    if len(set(uids)) != len(uids):
        dup = Counter(uids).most_common(1)[0][0]
        raise WitError(f"{cfg.raw}: uid {dup} is ok in more than one manifest row (dedup before resharding)")
    for folder in cfg.verdicts:
        v = read_folder(folder, required=("uid", "keep"))
        verdict = dict(zip(v["uid"].to_pylist(), v["keep"].to_pylist()))
        missing = [u for u in uids if u not in verdict]
        if missing:
            raise WitError(f"{folder}: no verdict for uid {missing[0]} (ok in {cfg.raw}); run that filter on every shard")
        keep &= np.array([bool(verdict[u]) for u in uids])
    if cfg.selection:
        s = read_folder(cfg.selection, required=("uid", "status"))
        chosen = {u: m for u, st, m in zip(s["uid"].to_pylist(), s["status"].to_pylist(),
                                             s["matched"].to_pylist() if "matched" in s.column_names else [None] * s.num_rows)
                  if st == "selected"}
        keep &= np.array([u in chosen for u in uids])
        extra["matched"] = pa.array([chosen.get(u) for u in uids], pa.list_(pa.int32()))
    table = ok.select([c for c in CORPUS_FIELDS if c in ok.column_names])
    for name, column in extra.items():
        table = table.append_column(name, column)
    table = table.filter(pa.array(keep))
    order = np.argsort(rank(cfg.seed, table["uid"].to_pylist()), kind="stable")
    table = table.take(pa.array(order))
    n = table.num_rows
    out_shard = np.arange(n) // cfg.shard_size
    table = table.append_column("shard", pa.array([f"{s:05d}" for s in out_shard]))
    table = table.append_column("key", pa.array([f"{s:05d}_{i % cfg.shard_size:06d}" for i, s in enumerate(out_shard)]))
    return table


def scatter(task: tuple[str, str, str, pa.Table]) -> int:
    """Copy the selected samples of one crawled shard into per-output-shard buckets (bytes unchanged).

    A bucket is an Arrow IPC file of (key, jpg, txt, json) columns: cheaper to write and read back than a tar.
    """
    raw, buckets, src, rows = task
    wanted = {k: r for k, r in zip(rows["src_key"].to_pylist(), rows.to_pylist())}
    manifest_keys = set(read_parquet(join(raw, f"{src}.parquet"), ["key", "status"])
                        .filter(pc.equal(pc.field("status"), OK))["key"].to_pylist())
    outs: dict[str, dict[str, list]] = defaultdict(lambda: {"key": [], "jpg": [], "txt": [], "json": []})
    seen = set()
    for key, sample in _read_tar(join(raw, f"{src}.tar")):
        seen.add(key)
        if key not in manifest_keys:
            raise WitError(f"{join(raw, src + '.tar')}: sample {key} is not an ok row of {src}.parquet")
        row = wanted.get(key)
        if row is None:
            continue
        bucket = outs[row["shard"]]
        bucket["key"].append(row["key"])
        image = fasttar.image_of(sample)
        if image is None:
            raise WitError(f"{join(raw, src + '.tar')}: sample {key} has no image member")
        bucket["jpg"].append(image)
        bucket["txt"].append((row["caption"] or "").encode())
        bucket["json"].append(json.dumps({k: v for k, v in row.items() if k != "src_key"}).encode())
    lost = sorted(set(wanted) - seen)
    if lost:
        raise WitError(f"{join(raw, src + '.tar')}: sample {lost[0]} (uid {wanted[lost[0]]['uid']}) listed in "
                       f"{src}.parquet is missing from the tar")
    for shard, columns in outs.items():
        table = pa.table({"key": columns["key"], **{c: pa.array(columns[c], pa.binary()) for c in ("jpg", "txt", "json")}})
        sink = io.BytesIO()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        write_atomic(join(buckets, shard, f"{src}.arrow"), sink.getvalue())
    write_atomic(join(buckets, "_done", src), b"")
    return len(wanted)


def gather(task: tuple[str, str, str, pa.Table]) -> int:
    """Write one output shard from its buckets, in rank order, and its corpus manifest; stats last."""
    out, buckets, shard, rows = task
    fs, root = fs_and_path(join(buckets, shard))
    parts = []
    for path in sorted(fs.glob(root.rstrip("/") + "/*.arrow")):
        with fs.open(path, "rb") as f:
            parts.append(pa.ipc.open_file(arrow_reader(f.read())).read_all())
    got = pa.concat_tables(parts).sort_by("key") if parts else None
    keys = rows["key"].to_pylist()
    if got is None or got["key"].to_pylist() != keys:
        raise WitError(f"{join(buckets, shard)}: buckets hold {0 if got is None else got.num_rows} samples, "
                       f"the plan {len(keys)}")
    columns = {c: got[c].to_pylist() for c in ("jpg", "txt", "json")}
    tar = fasttar.write_samples(
        (key, {c: columns[c][i] for c in columns}) for i, key in enumerate(keys))
    publish_shard(out, shard, tar, rows.append_column("status", pa.array([OK] * rows.num_rows)),
                  {"count": rows.num_rows, "successes": rows.num_rows})
    return rows.num_rows


def write_index(out: str, counts: dict[str, int], seed: int) -> dict:
    """index.json (shard -> samples, total) and a wids shard index, so readers need no listing."""
    index = {"schema_version": SCHEMA_VERSION, "total": sum(counts.values()), "seed": seed,
             "shards": {f"{name}.tar": n for name, n in sorted(counts.items())}}
    write_json_atomic(join(out, "index.json"), index)
    write_json_atomic(join(out, "wids.json"), {
        "__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "wit-corpus",
        "shardlist": [{"url": f"{name}.tar", "nsamples": n} for name, n in sorted(counts.items())],
    })
    return index


def reshard(cfg: ReshardConfig) -> dict:
    cfg = replace(cfg, raw=absolute(cfg.raw), out=absolute(cfg.out))
    if cfg.shard_size < 1:
        raise WitError(f"--shard-size must be at least 1 (got {cfg.shard_size})")
    plan = make_plan(cfg)
    if plan.num_rows == 0:
        raise WitError(f"{cfg.raw}: no sample survives the verdicts and the selection; nothing to write")
    digest = hashlib.sha256("\n".join(plan["uid"].to_pylist()).encode()).hexdigest()
    plan_file = join(cfg.out, "_wit", "plan.json")
    fingerprint = {"raw": cfg.raw, "uids_sha256": digest, "shard_size": cfg.shard_size, "seed": cfg.seed}
    if exists(plan_file) and read_json(plan_file) != fingerprint:
        raise WitError(f"{cfg.out}: holds a reshard of other inputs ({plan_file}); use a new folder or delete it")
    write_json_atomic(plan_file, fingerprint)

    buckets = join(cfg.out, "_wit", "buckets")
    done_src = set(_listing(join(buckets, "_done")))
    by_src = _split(plan, "src_shard")
    todo = [(cfg.raw, buckets, src, rows) for src, rows in sorted(by_src.items()) if src not in done_src]
    run_map(scatter, todo, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)

    by_out = _split(plan, "shard")
    done_out = {n for n in shard_names(cfg.out) if verify_shard(cfg.out, n).ok}
    todo = [(cfg.out, buckets, shard, rows) for shard, rows in sorted(by_out.items()) if shard not in done_out]
    run_map(gather, todo, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)

    index = write_index(cfg.out, {s: r.num_rows for s, r in by_out.items()}, cfg.seed)
    fs, _ = fs_and_path(buckets)
    fs.rm(fs_and_path(buckets)[1], recursive=True)
    return {"output": cfg.out, "shards": len(by_out), "samples": index["total"], "written_now": len(todo),
            "from_crawled_shards": len(by_src)}


def _split(table: pa.Table, column: str) -> dict[str, pa.Table]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(table[column].to_pylist()):
        groups[v].append(i)
    return {k: table.take(pa.array(ix)) for k, ix in groups.items()}


def _listing(folder: str) -> list[str]:
    fs, path = fs_and_path(folder)
    fs.invalidate_cache(path)
    return [p.rsplit("/", 1)[-1] for p in fs.glob(path.rstrip("/") + "/*")] if fs.exists(path) else []


def _read_tar(url: str):
    """All samples of a crawled tar; a damaged tar is a one-line error naming it."""
    try:
        yield from fasttar.read_samples(url)
    except fasttar.TarError as err:
        raise WitError(str(err)) from None


