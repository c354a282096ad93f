"""Balance the pool (MetaCLIP Algorithm 1): at most about t pairs per query entry.

c_e = pool pairs matching entry e (a reduction over all match files); p_e = min(1, t / c_e); a pair matching the
set M is kept with probability 1 - prod_{e in M} (1 - p_e). The draw is a hash of (seed, uid), so the selected
set depends on nothing else: not on sharding, worker count or engine. Two passes over the match files, each a
pure function per file mapped by shards.runner: count, then select.

The pool is the rows that are in it: with `status` (match files of crawled manifests carry it) only ok rows, and
with verdict folders (`--verdicts`, per-shard files named like the match files) only rows every filter kept. Rows
outside the pool are neither counted nor selected (reason `not_in_pool`), so balancing after the filters aims t at
what survives them.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.filters import datacard
from wit.filters.io import read_schema, read_table
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, run_map
from wit.shards.schema import DROPPED, NO_QUERY_MATCH, NOT_SELECTED, OK, SELECTED, SELECTION
from wit.shards.storage import WitError, join
from wit.shards.tables import open_parquet, read_parquet, write_parquet

NOT_IN_POOL = "not_in_pool"


@dataclass(frozen=True, kw_only=True)
class BalanceConfig(EngineOptions):
    matches: tuple[str, ...] = opt(help="match files or folders from `wit curate match`", positional=True)
    out: str = opt(help="output folder (local or s3://): selection/, urls/, entry_counts.parquet, datacard.json, "
                        "PNG plots")
    t: int = opt(20_000, "pairs per entry to aim for (before download use 2-4x)", minimum=1)
    seed: int = opt(0, "seed of the per-uid draw")
    verdicts: tuple[str, ...] = opt((), "verdict folders (wit filter text/images, wit dedup) with one file per match "
                                        "file: pairs a filter dropped are not in the pool, neither counted nor "
                                        "selected (not_in_pool); rows whose crawl status is not ok never are. Use "
                                        "them to balance after the filters", metavar="DIR")


@dataclass(frozen=True)
class SelectTask:
    source: str
    target: str  # selection file (every row, with status and reason)
    urls: str  # selected rows only (uid, url, caption): a URL list for `wit download`
    seed: int
    p: np.ndarray  # p_e per entry
    verdicts: tuple[str, ...] = ()


def draw(seed: int, uid: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, uid)."""
    digest = hashlib.blake2b(f"{seed}\x00{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def entry_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    return np.minimum(1.0, t / np.maximum(counts, 1)).astype(np.float64)


def keep_probabilities(matched: pa.ListArray, p: np.ndarray) -> np.ndarray:
    """1 - prod(1 - p_e) per row, summed in log space; a tail entry (p_e = 1) makes it exactly 1."""
    ids = matched.flatten().to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(matched)), pc.list_value_length(matched).to_numpy(zero_copy_only=False))
    with np.errstate(divide="ignore"):
        log_q = np.log1p(-p[ids])  # -inf where p_e == 1
    total = np.bincount(rows, weights=log_q, minlength=len(matched))
    return -np.expm1(total)


def in_pool(table: pa.Table, source: str, verdicts: tuple[str, ...]) -> np.ndarray:
    """Which rows of a match file are in the pool: ok (when it carries `status`) and kept by every verdict folder."""
    ok = np.ones(table.num_rows, dtype=bool)
    if "status" in table.column_names:
        ok &= pc.fill_null(pc.equal(table["status"], OK), False).to_numpy(zero_copy_only=False)
    uids = table["uid"].to_pylist()
    for folder in verdicts:
        vfile = join(folder, source.rstrip("/").rsplit("/", 1)[-1])
        try:
            v = read_parquet(vfile, ["uid", "keep"])
        except FileNotFoundError:
            raise WitError(f"{vfile}: no verdicts for {source} (verdict files are named like the match files)") from None
        keep = dict(zip(v["uid"].to_pylist(), v["keep"].to_pylist()))
        missing = next((u for u, o in zip(uids, ok) if o and u not in keep), None)
        if missing is not None:
            raise WitError(f"{vfile}: no verdict for uid {missing} of {source}")
        ok &= np.array([bool(keep.get(u)) for u in uids], dtype=bool)
    return ok


def count_file(task: tuple[str, tuple[str, ...]]) -> tuple[np.ndarray, int]:
    """c_e over the pool rows of one match file (each pair counts once per entry), and its pool row count."""
    url, verdicts = task
    source = open_parquet(url)  # once: the schema, its metadata and the columns
    n_entries = _entries(url, source.schema_arrow)
    table = source.read(columns=[c for c in ("uid", "status", "matched") if c in source.schema_arrow.names])
    pool = in_pool(table, url, verdicts)
    matched = table.column("matched").combine_chunks().filter(pa.array(pool))
    ids = matched.flatten().to_numpy(zero_copy_only=False)
    return np.bincount(ids, minlength=n_entries).astype(np.int64), int(pool.sum())


def select_file(task: SelectTask) -> dict:
    table = read_table(task.source)
    pool = in_pool(table, task.source, task.verdicts)
    matched = table.column("matched").combine_chunks()
    keep_prob = keep_probabilities(matched, task.p) * pool
    uids = table.column("uid").to_pylist()
    u = np.fromiter((draw(task.seed, x) for x in uids), dtype=np.float64, count=len(uids))
    has_match = pc.list_value_length(matched).to_numpy(zero_copy_only=False) > 0
    keep = pool & has_match & (u < keep_prob)
    status = np.where(keep, SELECTED, DROPPED)
    reason = np.where(keep, None, np.where(~pool, NOT_IN_POOL, np.where(has_match, NOT_SELECTED, NO_QUERY_MATCH)))
    cols = {"uid": table.column("uid"), "status": pa.array(status, pa.string()), "reason": pa.array(reason, pa.string()),
            "keep_prob": pa.array(keep_prob), "draw": pa.array(u), "matched": matched}
    schema = SELECTION
    for extra in ("url", "caption"):
        if extra in table.column_names:
            cols[extra] = table.column(extra)
            schema = schema.append(pa.field(extra, pa.string()))
    selection = pa.table(cols, schema=schema)
    write_parquet(task.target, selection)
    if "url" in table.column_names:
        write_parquet(task.urls, selection.filter(pa.array(keep)).select(
            [c for c in ("uid", "url", "caption") if c in selection.column_names]))
    sel_ids = matched.filter(pa.array(keep)).flatten().to_numpy(zero_copy_only=False)
    return {
        "after": np.bincount(sel_ids, minlength=len(task.p)).astype(np.int64),
        "rows": len(uids),
        "selected": int(keep.sum()),
        NOT_IN_POOL: int((~pool).sum()),
        NO_QUERY_MATCH: int((pool & ~has_match).sum()),
        NOT_SELECTED: int((pool & has_match & ~keep).sum()),
        "expected_selected": float(keep_prob.sum()),
    }


def _entries(url: str, schema: pa.Schema) -> int:
    meta = schema.metadata or {}
    if b"wit.queries.entries" not in meta:
        raise WitError(f"{url}: not a match file (no wit.queries.entries; write it with `wit curate match`)")
    return int(meta[b"wit.queries.entries"])


def _check_same_queries(files: list[str]) -> tuple[str, str]:
    seen = {}
    for url in files:
        meta = read_schema(url).metadata or {}
        version = meta.get(b"wit.queries.version", b"").decode()
        seen.setdefault(version, (url, meta.get(b"wit.queries", b"").decode()))
    if len(seen) != 1:
        (v1, (f1, _)), (v2, (f2, _)) = list(seen.items())[:2]
        raise WitError(f"{f2}: matched against query list {v2}, but {f1} used {v1}; match all files with one list")
    version, (_, queries) = next(iter(seen.items()))
    return version, queries


def run(cfg: BalanceConfig) -> dict:
    files = list(cfg.matches)
    if not files:
        raise WitError("no match files given")
    if cfg.t < 1:
        raise WitError(f"--t {cfg.t}: must be at least 1")
    version, queries = _check_same_queries(files)
    parts = run_map(count_file, [(f, tuple(cfg.verdicts)) for f in files], engine=cfg.engine, workers=cfg.workers,
                    ray_address=cfg.ray_address)
    counts = np.sum([c for c, _ in parts], axis=0)
    p = entry_probabilities(counts, cfg.t)
    names = [posixpath.basename(f).rsplit(".", 1)[0] for f in files]
    if len(set(names)) != len(names):
        names = [f"{i:05d}" for i in range(len(files))]  # the same base name in two folders
    tasks = [
        SelectTask(f, posixpath.join(cfg.out, "selection", f"{n}.parquet"),
                   posixpath.join(cfg.out, "urls", f"{n}.parquet"), cfg.seed, p, tuple(cfg.verdicts))
        for f, n in zip(files, names)
    ]
    results = run_map(select_file, tasks, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
    after = np.sum([r["after"] for r in results], axis=0)
    funnel = {k: sum(r[k] for r in results) for k in ("rows", "selected", NOT_IN_POOL, NO_QUERY_MATCH, NOT_SELECTED)}
    funnel["expected_selected"] = round(sum(r["expected_selected"] for r in results), 3)
    card = datacard.write(cfg.out, counts=counts, after=after, t=cfg.t, seed=cfg.seed, funnel=funnel,
                          queries=queries, queries_version=version,
                          config={k: v for k, v in asdict(cfg).items() if k != "matches"} | {"files": len(files)})
    print(json.dumps(funnel), flush=True)
    return card

