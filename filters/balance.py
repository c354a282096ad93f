"""Balance the pool (MetaCLIP Algorithm 1): at most about t pairs per query entry.

c_e = pool pairs matching entry e (a reduction over all match files); p_e = min(1, t / c_e); a pair matching the
set M is kept with probability 1 - prod_{e in M} (1 - p_e). The draw is a hash of (seed, uid), so the selected
set depends on nothing else: not on sharding, worker count or engine. Two passes over the match files, each a
pure function per file mapped by shards.runner: count, then select.

The pool is the rows that are in it: with `status` (match files of crawled manifests carry it) only ok rows, and
with verdict folders (`--verdicts`, per-shard files named like the match files) only rows every filter kept. Rows
outside the pool are neither counted nor selected (reason `not_in_pool`), so balancing after the filters aims t at
what survives them.

At web scale (160K match files, 500K entries) nothing on the driver grows with the number of files: each count
task returns its file's nonzero entries (a few thousand ids, not a 500K vector), summed as they come; p is written
once to `<out>/_wit/p-<digest>.npy` and each select task reads it by path (once per worker process).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.filters import datacard, languages
from wit.filters.io import read_table
from wit.shards import revocations
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, imap
from wit.shards.schema import DROPPED, ELIGIBLE, NO_QUERY_MATCH, NOT_SELECTED, OK, REVOKED, SELECTED, SELECTION
from wit.shards.storage import WitError, fs_and_path, join, write_atomic
from wit.shards.tables import open_parquet, parquet_inputs, read_parquet, read_schema, write_parquet

NOT_IN_POOL = "not_in_pool"


@dataclass(frozen=True, kw_only=True)
class BalanceConfig(EngineOptions):
    matches: tuple[str, ...] = opt(help="match files or folders from `wit curate match`", positional=True)
    out: str = opt(help="output folder (local or s3://): selection/, urls/, entry_counts.parquet, datacard.json, "
                        "PNG plots")
    t: int = opt(20_000, "pairs per entry to aim for (before download use 2-4x); English's t with a worldwide list", minimum=1)
    seed: int = opt(0, "seed of the per-uid draw")
    verdicts: tuple[str, ...] = opt((), "verdict folders (wit filter text/images, wit dedup) with one file per match "
                                        "file: pairs a filter dropped are not in the pool, neither counted nor "
                                        "selected (not_in_pool); rows whose crawl status is not ok never are. Use "
                                        "them to balance after the filters", metavar="DIR")
    online: bool = opt(False, "online balancing (MetaCLIP 2): mark every matched pool pair eligible with its "
                              "keep_prob instead of drawing one fixed selection; `wit shards write` carries keep_prob "
                              "into the corpus and `wit train --online-balance` draws anew each epoch")


@dataclass(frozen=True)
class SelectTask:
    source: str
    target: str  # selection file (every row, with status and reason)
    urls: str  # selected rows only (uid, url, caption): a URL list for `wit download`
    seed: int
    p: str  # the .npy file of p_e per entry, written once by the driver
    verdicts: tuple[str, ...] = ()
    online: bool = False  # status eligible for every matched pool pair (the draw decides nothing here)
    out: str = ""  # the output folder, whose revocation ledgers (shards/revocations.py) say which pairs are revoked


def draw(seed: int, uid: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, uid)."""
    digest = hashlib.blake2b(f"{seed}\x00{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def entry_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    return np.minimum(1.0, t / np.maximum(counts, 1)).astype(np.float64)


def keep_probabilities(matched: pa.ListArray, p: np.ndarray) -> np.ndarray:
    """1 - prod(1 - p_e) per row, multiplied in each row's list order; a tail entry (p_e = 1) makes it exactly 1.

    Only IEEE-754 subtractions and multiplications, each correctly rounded on every CPU, in a fixed order: the
    bits are the same on every machine. (log1p/expm1 were not: numpy's AVX-512 versions round differently from its
    other ones, so a selection written on one machine hashed differently on another.)"""
    lengths = pc.fill_null(pc.list_value_length(matched), 0).to_numpy(zero_copy_only=False)
    starts = matched.offsets.to_numpy()[:-1].astype(np.int64)  # into .values, which ignores a slice's offset
    ids = matched.values.to_numpy(zero_copy_only=False)
    q = np.ones(len(matched))
    for j in range(int(lengths.max(initial=0))):  # the j-th entry of every row that has one
        rows = np.flatnonzero(lengths > j)
        q[rows] *= 1.0 - p[ids[starts[rows] + j]]
    return 1.0 - q


def in_pool(table: pa.Table, source: str, verdicts: tuple[str, ...]) -> np.ndarray:
    """Which rows of a match file are in the pool: ok (when it carries `status`) and kept by every verdict folder."""
    ok = np.ones(table.num_rows, dtype=bool)
    if "status" in table.column_names:
        ok &= pc.fill_null(pc.equal(table["status"], OK), False).to_numpy(zero_copy_only=False)
    uids = table["uid"]
    for folder in verdicts:
        vfile = join(folder, source.rstrip("/").rsplit("/", 1)[-1])
        try:
            v = read_parquet(vfile, ["uid", "keep"])
        except FileNotFoundError:
            raise WitError(f"{vfile}: no verdicts for {source} (verdict files are named like the match files)") from None
        v = v.take(pa.array(np.arange(v.num_rows)[::-1]))  # a uid listed twice: its last verdict counts
        at = pc.index_in(uids, value_set=v["uid"])
        missing = np.flatnonzero(pc.is_null(at).to_numpy(zero_copy_only=False) & ok)
        if len(missing):
            raise WitError(f"{vfile}: no verdict for uid {uids[int(missing[0])].as_py()} of {source}")
        ok &= pc.fill_null(v["keep"].take(at), False).to_numpy(zero_copy_only=False)
    return ok


def revoked(table: pa.Table, out: str) -> np.ndarray:
    """The rows the revocation ledgers of the output folder revoke (by uid, and by URL where the file has one):
    out of the pool, never counted nor selected."""
    ledger = revocations.load_cached(out)
    if not ledger:
        return np.zeros(table.num_rows, dtype=bool)
    return ledger.mask(uids=table["uid"], urls=table["url"] if "url" in table.column_names else None)


def _sparse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(entry ids, pairs per id) of the entries that occur: what a file adds to a 500K-long count vector."""
    unique, n = np.unique(ids, return_counts=True)
    return unique.astype(np.int32), n.astype(np.int64)


def count_file(task: tuple[str, tuple[str, ...], str]) -> tuple[np.ndarray, np.ndarray, int]:
    """c_e over the pool rows of one match file (each pair counts once per entry), as (ids, counts), and its pool
    row count."""
    url, verdicts, out = task
    source = open_parquet(url)
    table = source.read(columns=[c for c in ("uid", "url", "status", "matched") if c in source.schema_arrow.names])
    pool = in_pool(table, url, verdicts) & ~revoked(table, out)
    matched = table.column("matched").combine_chunks().filter(pa.array(pool))
    ids, n = _sparse(matched.flatten().to_numpy(zero_copy_only=False))
    entries = _entries(url, source.schema_arrow)
    if len(ids) and (ids[0] < 0 or ids[-1] >= entries):
        raise WitError(f"{url}: query id {ids[-1] if ids[-1] >= entries else ids[0]} is not one of the {entries} "
                       "entries of its query list")
    return ids, n, int(pool.sum())


@functools.lru_cache(maxsize=2)
def _probabilities(url: str) -> np.ndarray:
    """p_e, read once per worker process (the name holds a digest of the content, so it never goes stale)."""
    fs, path = fs_and_path(url)
    return np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)


def select_file(task: SelectTask) -> dict:
    p = _probabilities(task.p)
    table = read_table(task.source)
    gone = revoked(table, task.out)
    pool = in_pool(table, task.source, task.verdicts) & ~gone
    matched = table.column("matched").combine_chunks()
    keep_prob = keep_probabilities(matched, p) * pool
    uids = table.column("uid").to_pylist()
    u = np.fromiter((draw(task.seed, x) for x in uids), dtype=np.float64, count=len(uids))
    has_match = pc.list_value_length(matched).to_numpy(zero_copy_only=False) > 0
    keep = pool & has_match & (u < keep_prob)
    chosen = pool & has_match if task.online else keep  # online: the trainer draws per epoch from keep_prob
    status = np.where(chosen, ELIGIBLE if task.online else SELECTED, DROPPED)
    reason = np.where(chosen, None, np.where(gone, REVOKED, np.where(~pool, NOT_IN_POOL,
                                                                    np.where(has_match, NOT_SELECTED, NO_QUERY_MATCH))))
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
        write_parquet(task.urls, selection.filter(pa.array(chosen)).select(
            [c for c in ("uid", "url", "caption") if c in selection.column_names]))
    return {
        "after": _sparse(matched.filter(pa.array(keep)).flatten().to_numpy(zero_copy_only=False)),
        "rows": len(uids),
        "selected": int(keep.sum()),  # online: what the seed's one draw would select (the data card's figures)
        ELIGIBLE: int(chosen.sum()) if task.online else 0,
        NOT_IN_POOL: int((~pool & ~gone).sum()),
        REVOKED: int(gone.sum()),
        NO_QUERY_MATCH: int((pool & ~has_match).sum()),
        NOT_SELECTED: int((pool & has_match & ~keep).sum()),
        "expected_selected": float(keep_prob.sum()),
    }


def _entries(url: str, schema: pa.Schema) -> int:
    meta = schema.metadata or {}
    if b"wit.queries.entries" not in meta:
        raise WitError(f"{url}: not a match file (no wit.queries.entries; write it with `wit curate match`)")
    return int(meta[b"wit.queries.entries"])


def _check_same_queries(files: list[str]) -> tuple[str, str, int]:
    """(version, query file, entries) shared by every match file, from their parquet footers alone."""
    seen = {}
    for url in files:
        schema = read_schema(url)
        n = _entries(url, schema)
        meta = schema.metadata or {}
        version = meta.get(b"wit.queries.version", b"").decode()
        seen.setdefault((version, n), (url, meta.get(b"wit.queries", b"").decode()))
    if len(seen) != 1:
        ((v1, _), (f1, _)), ((v2, _), (f2, _)) = list(seen.items())[:2]
        raise WitError(f"{f2}: matched against query list {v2}, but {f1} used {v1}; match all files with one list")
    (version, n), (_, queries) = next(iter(seen.items()))
    return version, queries, n


def _add(total: np.ndarray, part: tuple[np.ndarray, np.ndarray]) -> None:
    ids, n = part
    total[ids] += n  # ids are unique within a part


def write_probabilities(out: str, p: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, p, allow_pickle=False)
    data = buf.getvalue()
    url = join(out, "_wit", f"p-{hashlib.sha256(data).hexdigest()[:16]}.npy")
    write_atomic(url, data)
    return url


def _spacing(files: list[str]) -> str:
    """The spacing rule the match files were written with (files from before the rule was recorded: ascii)."""
    rules = {(read_schema(url).metadata or {}).get(b"wit.spacing", b"ascii").decode(): url for url in files}
    if len(rules) != 1:
        (r1, f1), (r2, f2) = list(rules.items())[:2]
        raise WitError(f"{f2}: matched with --spacing {r2}, but {f1} with --spacing {r1}; match all files alike")
    return next(iter(rules))


def run(cfg: BalanceConfig) -> dict:
    files = parquet_inputs(cfg.matches) if cfg.matches else []
    if not files:
        raise WitError("no match files given")
    if cfg.t < 1:
        raise WitError(f"--t {cfg.t}: must be at least 1")
    version, queries, n_entries = _check_same_queries(files)
    spacing = _spacing(files)
    engine = {"engine": cfg.engine, "workers": cfg.workers, "ray_address": cfg.ray_address}
    counts = np.zeros(n_entries, np.int64)
    for ids, n, _ in imap(count_file, [(f, tuple(cfg.verdicts), cfg.out) for f in files], **engine):
        _add(counts, (ids, n))
    t_entry, t_lang = languages.balance_t(queries, counts, cfg.t)  # a worldwide list: t per language (tail rule)
    p = entry_probabilities(counts, t_entry)
    p_url = write_probabilities(cfg.out, p)
    names = [posixpath.basename(f).rsplit(".", 1)[0] for f in files]
    if len(set(names)) != len(names):
        names = [f"{i:05d}" for i in range(len(files))]  # the same base name in two folders
    tasks = [
        SelectTask(f, posixpath.join(cfg.out, "selection", f"{n}.parquet"),
                   posixpath.join(cfg.out, "urls", f"{n}.parquet"), cfg.seed, p_url, tuple(cfg.verdicts), cfg.online,
                   cfg.out)
        for f, n in zip(files, names)
    ]
    after = np.zeros(n_entries, np.int64)
    funnel = dict.fromkeys(("rows", "selected", NOT_IN_POOL, NO_QUERY_MATCH, NOT_SELECTED), 0)
    expected, eligible, gone = 0.0, 0, 0
    for r in imap(select_file, tasks, **engine):
        eligible += r[ELIGIBLE]
        _add(after, r["after"])
        for k in funnel:
            funnel[k] += r[k]
        gone += r[REVOKED]
        expected += r["expected_selected"]  # in file order, as a sum over the list gave it
    funnel["expected_selected"] = round(expected, 3)
    if gone:  # only a pool that a revocation touched shows the key (a data card is compared as a whole)
        funnel[REVOKED] = gone
    if cfg.online:
        funnel[ELIGIBLE] = eligible
    per_language = None
    if t_lang:
        parts = imap(languages.report_file, [(f, t.target) for f, t in zip(files, tasks)], **engine)
        per_language = languages.report(parts, counts, after, queries, t_lang)
    card = datacard.write(cfg.out, counts=counts, after=after, t=cfg.t, seed=cfg.seed, funnel=funnel,
                          t_per_entry=t_entry, languages=per_language,
                          queries=queries, queries_version=version, spacing=spacing,
                          config={k: v for k, v in asdict(cfg).items() if k != "matches"} | {"files": len(files)})
    print(json.dumps(funnel), flush=True)
    return card

