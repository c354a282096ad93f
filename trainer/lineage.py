"""What a training run has read, per checkpoint: the corpus shards by name and content hash, and which samples.

The exact-once plan (trainer/data.py) knows what every step read: in an epoch, rank r's worker w reads its segment
window by window, each window's slots in the window's own seeded order, so a worker that has delivered p samples of
its segment has read every window before p's and the first (p mod window) slots of p's window. The record at a
checkpoint is that, over every epoch since the run began, as tar positions per shard version (shards/lineage.py
writes and reads it); earlier parts of the run (before a resume over a changed corpus) come from the checkpoint.
Only rank 0 computes it, at checkpoint time; nothing is logged per sample. Complete epochs are folded in once.

A run resumed over a changed corpus (`wit revoke` rewrote shards; another corpus named the same) says so in one
line and goes on over the corpus as it is now: the epoch plan is rebuilt from the same position (epoch, step) with
the new shard counts. That is what a user who took samples back expects (the run goes on without them, and the
lineage keeps what it read before); the price is the current epoch, in which some samples may be read twice or not
at all; exact-once holds again from the next epoch. A checkpoint written before lineage existed cannot tell a
changed corpus from its shard counts alone, and is refused as before when they differ.
"""
from __future__ import annotations

import numpy as np

from wit.shards import lineage as records
from wit.shards import online
from wit.shards.storage import read_json
from wit.trainer.data import Plan, ShardLoader, window_order

Version = tuple[str, str | None, int]  # (shard name, sha256 of its tar or None, samples)


def shard_versions(spec: str, urls: list[str], counts: list[int]) -> list[Version]:
    """Each shard's name, content hash (from index.json's `sha256`, which `wit shards write` and `wit revoke` keep;
    None without one) and sample count."""
    hashes = {}
    if spec.endswith(".json"):
        hashes = read_json(spec).get("sha256") or {}
    names = [u.rstrip("/").rsplit("/", 1)[-1] for u in urls]
    return [(n.removesuffix(".tar"), hashes.get(n), int(c)) for n, c in zip(names, counts)]


class Lineage:
    """The reads of one run: `closed` (everything up to the position `mark`) and the plan of the epochs after it."""

    def __init__(self, loader: ShardLoader, window: int, data: str, versions: list[Version]):
        self.loader, self.window, self.data, self.versions = loader, window, data, versions
        self.closed: dict[tuple, dict] = {}
        self.mark = (0, 0)

    # ------------------------------------------------------------------------------------------ resume
    def resume(self, state: dict) -> str:
        """Take over the checkpoint's lineage; when the corpus changed since, let the loader re-plan (its state gets
        the current counts) and return the line that says so ("" when nothing changed)."""
        before = state.get("lineage")
        if not isinstance(before, dict):
            return ""
        position = (state["loader"]["epoch"], state["loader"]["step"])
        self.closed = {_key(e): e for e in before["shards"]}
        self.mark = position
        then = [tuple(v) for v in before["corpus"]]
        if then == self.versions:
            return ""
        state["loader"] = {**state["loader"], "counts": [v[2] for v in self.versions]}
        return change_line(then, self.versions, position)

    # ------------------------------------------------------------------------------------------ the record
    def record(self, position: dict) -> dict:
        """The lineage at a loader position ({"epoch", "step"}): checkpoint state and the JSON beside it."""
        end = (position["epoch"], position["step"])
        for epoch in range(self.mark[0], end[0]):  # complete epochs, once
            self._add(self.closed, self._reads(epoch, self.mark[1] if epoch == self.mark[0] else 0, None))
            self.mark = (epoch + 1, 0)
        current = {k: {**v, "ranges": list(v["ranges"])} for k, v in self.closed.items()}
        if end[0] == self.mark[0]:
            self._add(current, self._reads(end[0], self.mark[1], end[1]))
        shards = [{**v, "ranges": records.merge(v["ranges"])} for v in current.values()]
        for v in shards:
            v["read"] = sum(b - a for a, b in v["ranges"])
        return {"data": self.data, "corpus": [list(v) for v in self.versions],
                "shards": sorted(shards, key=lambda v: (v["name"], str(v["sha256"])))}

    def _add(self, into: dict, reads: dict[int, list[tuple[int, int]]]) -> None:
        for shard, ranges in reads.items():
            name, sha, n = self.versions[shard]
            entry = into.setdefault(_key({"name": name, "sha256": sha, "samples": n}),
                                    {"name": name, "sha256": sha, "samples": n, "ranges": []})
            entry["ranges"] = records.merge(entry["ranges"] + list(ranges))

    def _reads(self, epoch: int, from_step: int, to_step: int | None) -> dict[int, list[tuple[int, int]]]:
        """{shard: tar ranges} read in `epoch` between two steps (to_step None: its end), over every rank."""
        plan = self.loader.plan(epoch)
        to_step = plan.steps if to_step is None else min(to_step, plan.steps)
        out: dict[int, list[tuple[int, int]]] = {}
        kept: dict[int, np.ndarray] = {}
        for rank in range(plan.world):
            for worker in range(plan.workers):
                p0, p1 = (consumed(plan, worker, s) for s in (min(from_step, to_step), to_step))
                for shard, lo, hi in segment_reads(plan, rank, worker, p0, p1, self.window):
                    out.setdefault(shard, []).extend(self._in_tar(epoch, shard, lo, hi, kept))
        return out

    def _in_tar(self, epoch: int, shard: int, lo: int, hi: int, kept: dict) -> list[tuple[int, int]]:
        """Positions among a shard's samples of the epoch -> tar positions (online balancing keeps some only)."""
        if not self.loader.online:
            return [(lo, hi)]
        if shard not in kept:
            uids, p = online.read_probabilities(self.loader.urls[shard], self.loader.counts[shard])
            kept[shard] = np.flatnonzero(online.kept(self.loader.seed, epoch, uids, p))
        return [(int(i), int(i) + 1) for i in kept[shard][lo:hi]]


def _key(entry: dict) -> tuple:
    return entry["name"], entry["sha256"], entry["samples"]


def consumed(plan: Plan, worker: int, step: int) -> int:
    """Samples of its segment a worker has delivered when the rank has trained `step` batches of the epoch."""
    return sum(1 for j in plan.batches_of(worker) if j < step) * plan.batch


def segment_reads(plan: Plan, rank: int, worker: int, p0: int, p1: int, window: int) -> list[tuple[int, int, int]]:
    """(shard, start, stop) read by one worker between having delivered p0 and p1 samples of its segment."""
    if p1 <= p0:
        return []
    slices = plan.segment(rank, worker)
    total = sum(b - a for _, a, b in slices)
    w0a, w0b = p0 - p0 % window, p1 - p1 % window

    def slots(w0: int, first: int, last: int) -> list[int]:  # segment positions of the window's slots first..last-1
        order = window_order(plan, rank, worker, w0, min(window, total - w0))
        return [w0 + k for k in order[first:last]]

    if w0a == w0b:
        return _positions(slices, slots(w0a, p0 - w0a, p1 - w0a))
    singles = slots(w0a, p0 - w0a, window) if p0 > w0a else []
    full = (w0a + window if p0 > w0a else w0a, w0b)
    if p1 > w0b:
        singles += slots(w0b, 0, p1 - w0b)
    return _ranges(slices, *full) + _positions(slices, singles)


def _ranges(slices, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Segment positions lo..hi-1 as (shard, start, stop) pieces of the slices."""
    out, offset = [], 0
    for shard, a, b in slices:
        start, stop = max(lo, offset), min(hi, offset + b - a)
        if start < stop:
            out.append((shard, a + start - offset, a + stop - offset))
        offset += b - a
    return out


def _positions(slices, positions: list[int]) -> list[tuple[int, int, int]]:
    return [piece for p in positions for piece in _ranges(slices, p, p + 1)]


def change_line(then: list[Version], now: list[Version], position: tuple[int, int]) -> str:
    """One line: what changed in the corpus since the checkpoint, and what the run does about it."""
    before, after = {v[0]: v for v in then}, {v[0]: v for v in now}
    rewritten = sum(1 for n in before.keys() & after.keys() if before[n] != after[n])
    gone, new = len(before.keys() - after.keys()), len(after.keys() - before.keys())
    parts = [f"{rewritten} of {len(before)} shards changed"] + ([f"{gone} gone"] if gone else []) + (
        [f"{new} new"] if new else [])
    epoch, step = position
    return (f"the corpus changed since this checkpoint ({', '.join(parts)}; {sum(v[2] for v in then):,} -> "
            f"{sum(v[2] for v in now):,} samples): the epoch plan is rebuilt over the corpus as it is now, from epoch "
            f"{epoch} batch {step}; exact-once holds again from epoch {epoch + 1}")
