"""Lineage: which corpus samples a checkpoint was trained on, and how many of them were later revoked.

`wit train` writes, beside each checkpoint, `<checkpoints>/lineage/step_<8 digits>.json` (trainer/lineage.py
computes it from the exact-once epoch plan, never from a log of every sample):

    {"format": 1, "step": 200, "checkpoint": "step_00000200.pt", "data": ".../corpus/index.json",
     "shards": [{"name": "00012", "sha256": "<of its tar>", "samples": 10000, "read": 6400,
                 "ranges": [[0, 6400]]}, ...]}

one entry per version of a shard the run read (a corpus rewritten by `wit revoke` mid-run gives two), with the
tar positions of the samples read so far as [start, stop) ranges and their number. `seen` matches them against the
ledger's removal records: a sample removed from a shard is at its recorded index in the version the rewrite
started from, and at an index found by putting back the samples of earlier rewrites in any older version.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa

from wit.shards.storage import WitError, entries, join, read_json, write_json_atomic

FORMAT = 1
FOLDER = "lineage"


def merge(ranges) -> list[list[int]]:
    """[start, stop) ranges, sorted and joined where they touch or overlap."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def covers(ranges: list[list[int]], i: int) -> bool:
    k = bisect.bisect_right([a for a, _ in ranges], i) - 1
    return k >= 0 and ranges[k][0] <= i < ranges[k][1]


def path_of(ckpt_dir: str, step: int) -> str:
    return join(ckpt_dir, FOLDER, f"step_{step:08d}.json")


def write(ckpt_dir: str, step: int, record: dict) -> str:
    url = path_of(ckpt_dir, step)
    write_json_atomic(url, {"format": FORMAT, "step": step, "checkpoint": f"step_{step:08d}.pt", **record})
    return url


def records(ckpt_dir: str) -> list[dict]:
    """The lineage records of a checkpoint folder, oldest first (each with its `file`)."""
    out = []
    for name in entries(join(ckpt_dir, FOLDER)):
        if name.startswith("step_") and name.endswith(".json"):
            url = join(ckpt_dir, FOLDER, name)
            try:
                record = read_json(url)
            except (ValueError, UnicodeDecodeError):
                raise WitError(f"{url}: not a lineage record (not JSON)") from None
            shards = record.get("shards") if isinstance(record, dict) else None
            if not isinstance(shards, list) or record.get("format") != FORMAT:
                raise WitError(f"{url}: not a lineage record of this wit (format {FORMAT})")
            out.append({**record, "file": url})
    return out


# ---------------------------------------------------------------------------------------------- revoked samples seen
@dataclass
class _Rewrite:
    old: str | None
    new: str
    removed: list[tuple[int, str]]  # (index in the old version, key), sorted


class Removals:
    """The ledger's removal records, per shard as chains of rewrites (old hash -> new hash)."""

    def __init__(self, removed: pa.Table):
        by: dict[tuple[str, str | None, str], list[tuple[int, str]]] = defaultdict(list)
        for r in removed.select(["shard", "old_sha256", "new_sha256", "index", "key"]).to_pylist():
            by[r["shard"], r["old_sha256"], r["new_sha256"]].append((r["index"], r["key"]))
        self.shards: dict[str, list[_Rewrite]] = defaultdict(list)
        for (shard, old, new), rows in by.items():
            self.shards[shard].append(_Rewrite(old, new, sorted(set(rows))))
        self.total = len({(r["shard"], r["key"]) for r in removed.select(["shard", "key"]).to_pylist()})

    def present(self, shard: str, sha256: str | None) -> dict[str, int] | None:
        """{key: index} of the revoked samples still in this version of the shard; None when the ledger does not know
        the version (a shard it rewrote, seen in a version none of its rewrites started from or ended in)."""
        chain = self._chain(shard, sha256)
        if chain is None:
            return None
        found: dict[str, int] = {}
        for j, rewrite in enumerate(chain):
            for index, key in rewrite.removed:
                for earlier in reversed(chain[:j]):  # put back what the earlier rewrites took out
                    index = _before(earlier.removed, index)
                found[key] = index
        return found

    def _chain(self, shard: str, sha256: str | None) -> list[_Rewrite] | None:
        """The rewrites from this version on, in order: [] for a version that holds no revoked sample (the shard
        was never rewritten, or this is its latest version), None for one the ledger does not know."""
        rewrites = self.shards.get(shard, [])
        starts = {r.old: r for r in rewrites}
        if sha256 in starts:
            chain, at = [], sha256
            while at in starts:
                chain.append(starts[at])
                at = starts[at].new
            return chain
        if not rewrites or any(r.new == sha256 for r in rewrites):
            return []
        return None


def _before(removed: list[tuple[int, str]], index: int) -> int:
    """The index, in the version a rewrite started from, of the sample at `index` in the version it wrote."""
    for r, _ in removed:
        if r <= index:
            index += 1
        else:
            break
    return index


def seen(record: dict, removals: Removals) -> dict:
    """How many revoked samples one checkpoint's lineage read: {"revoked_seen", "keys", "unknown_versions"}."""
    keys, unknown = set(), 0
    for entry in record["shards"]:
        present = removals.present(entry["name"], entry.get("sha256"))
        if present is None:
            unknown += 1
            continue
        ranges = entry["ranges"]
        keys.update((entry["name"], k) for k, i in present.items() if covers(ranges, i))
    return {"revoked_seen": len(keys), "keys": sorted(keys), "unknown_versions": unknown,
            "samples_read": sum(e["read"] for e in record["shards"])}


def report(removed: pa.Table, runs: list[str]) -> list[dict]:
    """Per run (a checkpoint folder) and checkpoint: the revoked samples its lineage read."""
    removals = Removals(removed)
    out = []
    for run in runs:
        for record in records(run):
            out.append({"run": run, "checkpoint": record["checkpoint"], "step": record["step"],
                        "revoked_total": removals.total, **seen(record, removals)})
    return out


def show(rows: list[dict]) -> list[str]:
    """The report as lines, a run's checkpoints under it."""
    lines, run = [], None
    for r in rows:
        if r["run"] != run:
            run = r["run"]
            lines.append(f"run {run}")
        unknown = (f"; {r['unknown_versions']} shard versions the ledger does not know" if r["unknown_versions"]
                   else "")
        lines.append(f"  {r['checkpoint']} (step {r['step']}): trained on {r['revoked_seen']} of the "
                     f"{r['revoked_total']} revoked samples ({r['samples_read']:,} samples read){unknown}")
    return lines
