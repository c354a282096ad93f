"""Apply the revocation ledger to a training corpus: rewrite only the shards that hold a revoked sample.

  match    one DuckDB query over the corpus manifests (uid, url, sha256; pHashes from the image verdicts, by uid)
           against every request of the ledgers that apply to the corpus (shards/revocations.py): the samples to
           take out, per shard. Only what is still in the corpus matches, so a second run finds nothing to do.
  rewrite  per shard holding a match (a task each): the tar copied without those samples (members byte for byte,
           fasttar.copy_without: the kept samples' bytes, keys and order do not change), the corpus manifest without
           their rows, published in `<corpus>/_wit/revoke/<shard>/` tar first and stats last (verify.publish_shard)
           and verified there (verify.verify_shard); then what it removes is written beside it and a `ready` marker
           last. Only then are the new files moved over the old shard (tar, manifest, stats last), the removal
           record goes to the ledger, and the staging folder is removed. A kill before `ready` leaves the old shard
           untouched (its staging is scratch); after it, the next run finishes the moves first (`finish_staged`).
  index    index.json and wids.json from the corpus manifests' counts and the shards' content hashes, written when
           they changed.
The result is what `wit shards write` writes with the same ledger: it numbers the survivors before it leaves out the
revoked ones, so a shard keeps its samples' keys and bytes (reshard_plan.build_plan).
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from wit.shards import fasttar, revocations
from wit.shards.reshard import shard_hash
from wit.shards.reshard import write_index as write
from wit.shards.layout import Layout
from wit.shards.runner import run_map
from wit.shards.schema import OK
from wit.shards.sql import literal
from wit.shards.storage import (
    WitError, entries, exists, fs_and_path, join, move, read_json, remove_scratch, write_atomic,
)
from wit.shards.tables import parquet_files, read_parquet, write_parquet
from wit.shards.verify import MARKERS, publish_shard, verify_shard

STAGING = ("_wit", "revoke")
READY = "ready"
REMOVED_ROWS = "removed.parquet"


@dataclass(frozen=True)
class Rewrite:
    """One shard's rewrite: which samples go (key -> the requests that revoke it), for the ledger at `root`."""
    corpus: str
    shard: str
    drop: dict[str, list[str]]
    urls: dict[str, str | None]
    uids: dict[str, str]
    root: str
    date: str


# ---------------------------------------------------------------------------------------------- the command's steps
def apply(root: str, corpus: str, con, *, phashes: str | None = None, engine: str = "local",
          workers: int | None = None, ray_address: str | None = None) -> dict:
    """Take every sample the ledgers of `corpus` revoke out of it; the ledger at `root` records what went where."""
    finished = finish_staged(corpus)
    ledger = revocations.load(corpus)
    index = read_json(join(corpus, "index.json"))
    hashes = dict(index.get("sha256") or {})
    matched = find_matches(con, ledger, corpus, phashes) if ledger else pa.table({"shard": pa.array([], pa.string())})
    tasks = _tasks(corpus, matched, root, revocations.now())
    run_map(rewrite_shard, tasks, engine=engine, workers=workers, ray_address=ray_address, desc="revoke: shards")
    remove_scratch(join(corpus, *STAGING))  # every rewrite is in: the staging folder is empty
    # the hash of every shard the ledger says was rewritten (now, or by a run killed after it finished some), from
    # its stats: the index may be older than the shard (by name: a moved corpus's records name its old folder)
    for shard in set(revocations.load(corpus).removed["shard"].to_pylist()):
        if f"{shard}.tar" in index["shards"]:
            hashes[f"{shard}.tar"] = shard_hash((corpus, shard))[1]
    changed = write_index(con, corpus, index, hashes)
    return {"corpus": corpus, "requests": len(set(ledger.requests["request"].to_pylist())),
            "samples_removed": sum(len(t.drop) for t in tasks), "shards_rewritten": len(tasks) + len(finished),
            "shards_holding_a_match": len(tasks), "index_written": changed}


def find_matches(con, ledger: revocations.Revocations, corpus: str, phashes: str | None) -> pa.Table:
    """(shard, key, uid, url, request) of every corpus sample a request matches, ordered by shard and key."""
    files = parquet_files(corpus)
    if not files:
        raise WitError(f"{corpus}: holds no corpus manifests")
    sources = "[" + ", ".join(literal(f) for f in files) + "]"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE corpus_rows AS
                    SELECT uid, url, sha256, shard, key FROM read_parquet({sources}, union_by_name = true)""")
    near = pc.any(pc.equal(ledger.requests["kind"], "phash")).as_py()
    if near and not phashes:
        raise WitError(f"{corpus}: the ledger holds image requests matched by pHash, and the corpus manifests hold no "
                       "pHash: name the image verdicts of its crawl (`wit filter images --out`) with --phashes")
    if near:
        verdicts = "[" + ", ".join(literal(f) for f in _files(phashes)) + "]"
        con.execute(f"""CREATE OR REPLACE TEMP TABLE corpus_ph AS SELECT c.uid, v.phash FROM corpus_rows c
                        JOIN (SELECT uid, any_value(phash) AS phash FROM read_parquet({verdicts}, union_by_name = true)
                              GROUP BY uid) v USING (uid)""")
    revocations.match(con, ledger, "corpus_rows", "corpus_ph" if near else None)
    return con.sql("""SELECT c.shard, c.key, c.uid, c.url, r.request FROM revoked r JOIN corpus_rows c USING (uid)
                      ORDER BY c.shard, c.key, r.request""").to_arrow_table()


def _files(folder: str) -> list[str]:
    files = parquet_files(folder)
    if not files:
        raise WitError(f"{folder}: holds no image verdicts (--phashes)")
    return files


def _tasks(corpus: str, matched: pa.Table, root: str, date: str) -> list[Rewrite]:
    """A rewrite per shard holding a match (`matched` is ordered by shard)."""
    tasks: dict[str, Rewrite] = {}
    for r in matched.to_pylist():
        task = tasks.setdefault(r["shard"], Rewrite(corpus, r["shard"], {}, {}, {}, root, date))
        task.drop.setdefault(r["key"], []).append(r["request"])
        task.urls[r["key"]], task.uids[r["key"]] = r["url"], r["uid"]
    return list(tasks.values())


# ---------------------------------------------------------------------------------------------- one shard
def rewrite_shard(task: Rewrite) -> tuple[str, str]:
    """(shard, new tar's sha256): stage, verify and commit the shard without its revoked samples, then move it in."""
    staging = join(task.corpus, *STAGING, task.shard)
    remove_scratch(staging)  # not ready (finish_staged took those): a kill's leftovers, or nothing
    name = task.shard
    tar = join(task.corpus, f"{name}.tar")
    staged_tar = join(staging, f"{name}.tar.new")
    fs, path = fs_and_path(staged_tar)
    fs.makedirs(fs_and_path(staging)[1], exist_ok=True)
    with fs.open(path, "wb") as f:
        hashing = _Hashing(f)
        try:
            keys = fasttar.copy_without(tar, set(task.drop), hashing)
        except fasttar.TarError as err:
            raise WitError(str(err)) from None
    missing = sorted(set(task.drop) - set(keys))
    if missing:
        raise WitError(f"{tar}: sample {missing[0]} listed in {name}.parquet is missing from the tar")
    manifest = read_parquet(join(task.corpus, f"{name}.parquet"))
    kept = manifest.filter(pc.invert(pc.is_in(manifest["key"], value_set=pa.array(sorted(task.drop), pa.string()))))
    n = kept.num_rows
    stats = {"count": n, "successes": n, "wit": {"sha256": hashing.hexdigest()}}
    publish_shard(staging, name, staged_tar, kept, stats)
    check = verify_shard(staging, name)
    if not check.ok or check.samples != len(keys) - len(task.drop):
        raise WitError(f"{staging}: the rewritten shard {name} does not verify ({check.problem or 'sample count'}); "
                       "the shard in the corpus is untouched")
    old = shard_hash((task.corpus, name))[1]  # from its stats: the version a trainer's lineage names
    index = {key: i for i, key in enumerate(keys)}
    write_parquet(join(staging, REMOVED_ROWS), pa.Table.from_pylist([
        {"request": request, "corpus": task.corpus, "shard": name, "key": key, "uid": task.uids[key],
         "url": task.urls[key], "index": index[key], "old_sha256": old, "new_sha256": stats["wit"]["sha256"],
         "date": task.date} for key, requests in sorted(task.drop.items()) for request in requests],
        schema=revocations.REMOVED))
    write_atomic(join(staging, READY), task.root.encode())  # the commit point: from here on the shard is replaced
    return name, _finish(task.corpus, name)


def finish_staged(corpus: str) -> list[tuple[str, str]]:
    """Finish the rewrites a killed run had committed (`ready`), and drop the staging of the others: [(shard, sha)]."""
    done = []
    for shard in entries(join(corpus, *STAGING)):
        if exists(join(corpus, *STAGING, shard, READY)):
            done.append((shard, _finish(corpus, shard)))
        else:
            remove_scratch(join(corpus, *STAGING, shard))
    return done


def _finish(corpus: str, name: str) -> str:
    """Move a committed rewrite into the corpus (tar, manifest, stats last), record it in the ledger, clear its
    staging; each step skips what an earlier, killed finish did. Returns the new tar's sha256."""
    staging = join(corpus, *STAGING, name)
    removed = read_parquet(join(staging, REMOVED_ROWS))
    root = read_text(join(staging, READY))
    fs, _ = fs_and_path(corpus)
    for suffix in (".tar", ".parquet", "_stats.json"):
        src = join(staging, name + suffix)
        if exists(src):
            move(fs, fs_and_path(src)[1], fs_and_path(join(corpus, name + suffix))[1])
    with contextlib.suppress(FileNotFoundError):
        fs.rm(fs_and_path(join(corpus, *MARKERS, f"{name}.json"))[1])  # a verified marker of the old files
    sha = removed["new_sha256"][0].as_py()
    stamp = removed["date"][0].as_py().replace("-", "").replace(":", "")
    revocations.write_removed(root, removed, f"{stamp}-{name}-{sha[:16]}.parquet")
    remove_scratch(staging)
    return sha


def read_text(url: str) -> str:
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        return f.read().decode()


class _Hashing:
    """A writable that hashes what passes through it."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.f.write(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


# ---------------------------------------------------------------------------------------------- the index
def write_index(con, corpus: str, index: dict, hashes: dict[str, str]) -> bool:
    """index.json (and wids.json) with the corpus manifests' counts and the shards' hashes, when they changed."""
    files = parquet_files(corpus)
    sources = "[" + ", ".join(literal(f) for f in files) + "]"
    # a shard whose every sample was revoked leaves the index (as `wit shards write` leaves it out)
    counts = dict(con.execute(f"SELECT shard, count(*) FROM read_parquet({sources}, union_by_name = true) "
                              f"WHERE coalesce(status, {literal(OK)}) = {literal(OK)} GROUP BY 1").fetchall())
    hashes = {f"{n}.tar": hashes.get(f"{n}.tar") or shard_hash((corpus, n))[1] for n in counts}
    shards = {f"{n}.tar": c for n, c in sorted(counts.items())}
    if shards == index["shards"] and hashes == index.get("sha256"):
        return False
    write(corpus, counts, index.get("seed", 0), hashes)
    return True


def corpus_of(root: str, given: str | None) -> str | None:
    """The corpus `wit revoke ROOT` applies to: --corpus (under ROOT), else ROOT or ROOT/corpus, whichever holds an
    index.json; None when neither does (a crawl's root: the ledger alone is written)."""
    if given:
        if not (given == root or given.startswith(root.rstrip("/") + "/")):
            raise WitError(f"--corpus {given}: not under {root}; a revocation applies to its root and the folders "
                           "under it, so revoke at a folder that holds the corpus")
        if not exists(join(given, "index.json")):
            raise WitError(f"--corpus {given}: no index.json (a corpus is what `wit shards write` writes)")
        return given
    for candidate in (root, Layout(root).corpus):
        if exists(join(candidate, "index.json")):
            return candidate
    return None


def phashes_of(root: str, given: str | None) -> str | None:
    """The image verdicts holding the corpus samples' pHashes: --phashes, else ROOT/verdicts/images if there."""
    if given:
        return given
    default = Layout(root).verdicts("images")
    return default if exists(default) else None
