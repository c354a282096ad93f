"""`wit shards write`: the curated corpus as evenly sized, globally shuffled training shards, with an index.

Four steps, each resumable, none holding more than one shard's rows in Python:
  plan     (shards/reshard_plan.py) rank the ok rows of every crawled manifest, per shard; then in DuckDB join
           them with the filter verdicts and the balance selection, number the survivors by rank hash(seed, uid),
           cut them into output shards and write the plan as parquet partitioned by crawled and by output shard.
  scatter  (per crawled shard) read the tar once and send each selected sample's bytes, unchanged, towards its
           output shard: into the local exchange (shards/reshard_exchange.py: at most K files per crawled shard),
           or, with `--engine ray`, into a Ray Data shuffle (shards/reshard_ray.py).
  gather   (per output shard) collect its samples, order them by rank, write tar, corpus manifest and stats (last,
           the done marker), checked against the plan.
(Both exchanges read and write a shard through shards/reshard_samples.py.)
  finish   index.json and wids.json; the intermediates are removed in parallel, by prefix.
The shuffle is global because the ranks are: an output shard draws from every crawled shard, so no shard is one
domain or one query, and the bytes do not depend on the number of workers or the engine.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context

import pyarrow as pa
import pyarrow.compute as pc

from wit.shards import reshard_ray, revocations
from wit.shards import reshard_exchange as exchange
from wit.shards.reshard_plan import CORPUS_FIELDS, Plan, build_plan, rank_shard, read_partition, sources_for
from wit.shards.reshard_samples import read_source, write_output
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, default_workers, ignore_sigint, run_map
from wit.shards.schema import SCHEMA_VERSION
from wit.shards.sql import SQLOptions, connect
from wit.shards.storage import (
    WitError,
    absolute,
    exists,
    fs_and_path,
    is_local,
    join,
    read_json,
    write_json_atomic,
)
from wit.shards.tables import parquet_files
from wit.shards.verify import shard_names, verify_shard

__all__ = ["CORPUS_FIELDS", "ReshardConfig", "reshard", "write_index"]


@dataclass(frozen=True, kw_only=True)
class ReshardConfig(EngineOptions, SQLOptions):
    raw: str = opt(help="folder of crawled shards and their manifests (wit download --out)")
    out: str = opt(help="output folder, local or s3://")
    verdicts: tuple[str, ...] = opt((), "folders of filter verdicts (uid, keep, reason), one file per crawled shard")
    selection: str | None = opt(None, "folder of balance selections (uid, status, matched), e.g. <balance "
                                      "out>/selection")
    shard_size: int = opt(10_000, "samples per output shard (the last may be short)", minimum=1)
    seed: int = opt(0, "seed of the global shuffle")
    groups: int | None = opt(None, "K: exchange files per crawled shard at most (default: about sqrt(output shards)); "
                                   "the local exchange writes at most K x crawled shards files", minimum=1)


# ---- per-shard tasks (module level: process pools and Ray import them by name) ------------------------------------

def scatter(task: tuple[str, str, str, str, int, int]) -> int:
    """Level one of the local exchange: one crawled shard's samples into at most K group files."""
    raw, src, plan, folder, shard_size, per_group = task
    return exchange.write_groups(folder, src, read_source(raw, src, plan), shard_size, per_group)


def gather(task: tuple[str, str, str, str, int]) -> int:
    """Level two: one output shard from its record batch in each group file that holds its samples."""
    out, shard, plan, folder, per_group = task
    rows = read_partition(plan, "by_out", "shard", shard)
    out_no = int(shard)
    parts = [exchange.read_shard(folder, out_no // per_group, src, out_no)
             for src in pc.unique(rows["src_shard"]).to_pylist()]
    return write_output(out, shard, rows, pa.concat_tables(parts), where=folder)


def shard_hash(task: tuple[str, str]) -> tuple[str, str]:
    """(shard, sha256 of its tar): from its stats, or (a shard written before stats kept it) from the tar."""
    out, name = task
    sha = (read_json(join(out, f"{name}_stats.json")).get("wit") or {}).get("sha256")
    if not sha:
        fs, path = fs_and_path(join(out, f"{name}.tar"))
        h = hashlib.sha256()
        with fs.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        sha = h.hexdigest()
    return name, sha


def verify(task: tuple[str, str]) -> tuple[str, int]:
    """(shard, samples) when the output shard is complete, else (shard, -1)."""
    out, name = task
    check = verify_shard(out, name)
    return name, check.samples if check.ok else -1


def write_index(out: str, counts: dict[str, int], seed: int, hashes: dict[str, str] | None = None) -> dict:
    """index.json (shard -> samples, total; shard -> sha256 of its tar, the content a trainer's lineage names) and a
    wids shard index, so readers need no listing."""
    index = {"schema_version": SCHEMA_VERSION, "total": sum(counts.values()), "seed": seed,
             "shards": {f"{name}.tar": n for name, n in sorted(counts.items())}}
    if hashes:
        index["sha256"] = dict(sorted(hashes.items()))
    write_json_atomic(join(out, "index.json"), index)
    write_json_atomic(join(out, "wids.json"), {
        "__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "wit-corpus",
        "shardlist": [{"url": f"{name}.tar", "nsamples": n} for name, n in sorted(counts.items())],
    })
    return index


# ---- the command ----------------------------------------------------------------------------------------------

def reshard(cfg: ReshardConfig) -> dict:
    cfg = ReshardConfig(**{**cfg.__dict__, "raw": absolute(cfg.raw), "out": absolute(cfg.out)})
    if cfg.shard_size < 1:
        raise WitError(f"--shard-size must be at least 1 (got {cfg.shard_size})")
    scratch = _scratch(cfg)  # local: DuckDB's spill files and the exchange
    shared = join(cfg.out, "_wit") if cfg.engine == "ray" and not is_local(cfg.out) else scratch  # read by tasks
    with connect(cfg.memory_limit, os.path.join(scratch, "duckdb_tmp"), cfg.threads) as con, _mapper(cfg) as map_:
        sources = [p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in parquet_files(cfg.raw)]
        if not sources:
            raise WitError(f"{cfg.raw}: holds no crawl manifests")
        ranked = join(shared, "ranked")
        map_(rank_shard, [(cfg.raw, s, cfg.seed, ranked) for s in sources])
        plan = build_plan(con, [join(ranked, f"{s}.parquet") for s in sources], cfg.verdicts, cfg.selection,
                          cfg.shard_size, cfg.raw, join(shared, "plan"), revocations.load(cfg.out))
        if plan.samples == 0:
            raise WitError(f"{cfg.raw}: no sample survives the verdicts and the selection; nothing to write")
        if plan.not_in_crawl:
            print(f"wit shards write: {plan.not_in_crawl} selected uids are not ok in {cfg.raw} (failed or never "
                  "crawled); ignored", file=sys.stderr)
        _check_fingerprint(cfg, plan)
        names = [n for n in shard_names(cfg.out) if n in plan.counts]
        done = {n for n, k in map_(verify, [(cfg.out, n) for n in names]) if k == plan.counts[n]}
        todo = [s for s in plan.counts if s not in done]
        if todo:
            senders = plan.sources if len(todo) == len(plan.counts) else sources_for(plan.folder, todo)
            if cfg.engine == "ray":
                reshard_ray.exchange(cfg, plan, senders, todo)
            else:
                _local_exchange(cfg, plan, senders, todo, join(scratch, "exchange"), map_)
        hashes = dict(map_(shard_hash, [(cfg.out, n) for n in plan.counts]))
        index = write_index(cfg.out, plan.counts, cfg.seed, {f"{n}.tar": h for n, h in hashes.items()})
        exchanged = _count_files(join(scratch, "exchange"))
        intermediates = exchanged + _count_files(ranked) + _count_files(plan.folder)
    _clean_up(cfg, scratch, shared)
    return {"output": cfg.out, "shards": len(plan.counts), "samples": index["total"], "written_now": len(todo),
            "from_crawled_shards": len(plan.sources), "intermediate_files": intermediates,
            "exchange_files": exchanged, "selected_not_in_crawl": plan.not_in_crawl}


def _local_exchange(cfg: ReshardConfig, plan: Plan, senders: list[str], todo: list[str], folder: str,
                    map_) -> None:
    groups = exchange.group_count(len(plan.counts), cfg.groups)
    per_group = exchange.shards_per_group(len(plan.counts), groups)
    finished = exchange.done_sources(folder, {**plan.fingerprint, "seed": cfg.seed, "per_group": per_group})
    map_(scatter, [(cfg.raw, s, plan.folder, folder, cfg.shard_size, per_group) for s in senders if s not in finished])
    map_(gather, [(cfg.out, s, plan.folder, folder, per_group) for s in todo])


@contextmanager
def _mapper(cfg: ReshardConfig):
    """`map_(fn, items)` for every step of one run: the local engine keeps one process pool for all of them
    (starting a pool of spawned workers costs seconds); Ray keeps its own workers."""
    n = cfg.workers or default_workers()
    if cfg.engine != "local" or n <= 1:
        yield lambda fn, items: run_map(fn, items, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
        return
    # Ctrl-C is the driver's to answer, as in every pool of shards/runner.py: one line, no traceback per worker
    with ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"), initializer=ignore_sigint) as pool:
        yield lambda fn, items: list(pool.map(fn, items, chunksize=1)) if len(items) > 1 else [fn(x) for x in items]


def _scratch(cfg: ReshardConfig) -> str:
    if cfg.temp_dir is None and is_local(cfg.out):
        return os.path.join(cfg.out.removeprefix("file://"), "_wit")
    tag = hashlib.sha256(cfg.out.encode()).hexdigest()[:16]  # the same folder again on a resume of this output
    return os.path.join(os.path.abspath(cfg.temp_dir or tempfile.gettempdir()), f"wit-reshard-{tag}")


def _check_fingerprint(cfg: ReshardConfig, plan: Plan) -> None:
    plan_file = join(cfg.out, "_wit", "plan.json")
    fingerprint = {**plan.fingerprint, "seed": cfg.seed}
    if exists(plan_file) and read_json(plan_file) != fingerprint:
        raise WitError(f"{cfg.out}: holds a reshard of other inputs ({plan_file}); use a new folder or delete it")
    write_json_atomic(plan_file, fingerprint)


def _count_files(url: str) -> int:
    if is_local(url):
        return exchange.count_files(url)
    fs, path = fs_and_path(url)
    return len(fs.find(path)) if fs.exists(path) else 0


def _clean_up(cfg: ReshardConfig, scratch: str, shared: str) -> None:
    """Remove the intermediates by prefix, in parallel; keep only `_wit/plan.json` beside the output."""
    exchange.remove(join(scratch, "exchange"))
    for part in ("ranked", "plan"):
        where = join(shared, part)
        if is_local(where):
            exchange.remove(where)
        else:
            fs, path = fs_and_path(where)
            if fs.exists(path):
                fs.rm(path, recursive=True)  # s3fs deletes by prefix, in batches of a thousand keys
    shutil.rmtree(os.path.join(scratch, "duckdb_tmp"), ignore_errors=True)
    if scratch != os.path.join(cfg.out.removeprefix("file://"), "_wit"):
        shutil.rmtree(scratch, ignore_errors=True)
