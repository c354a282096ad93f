"""What each stage of `wit pipeline` ran with, and whether that still holds: the stage records.

`<root>/_wit/pipeline/<stage>.json` is written when a stage starts (state `running`) and again when it finishes
(state `done`): its config, the equivalent command line, the fingerprint of every path it reads and, once done, of
every path it wrote, with its figures and time. A fingerprint is a digest of a listing (relative path, size, and
etag or mtime of every file under the path), not of the bytes: one listing per folder, so deciding what to redo
never reads a shard. `_wit/` folders (the commands' own bookkeeping and scratch) and half-written temporaries are
left out of it.
"""
from __future__ import annotations

import hashlib
import json
import time

from wit.shards.storage import exists, expand, fs_and_path, join, read_json, write_json_atomic


def fingerprint(pattern: str) -> dict:
    """{"files": n, "digest": ...} over the files a path (or brace pattern) names; n = 0 when none exist."""
    entries = []
    for url in expand(pattern):
        fs, path = fs_and_path(url)
        fs.invalidate_cache(path)
        if not fs.exists(path):
            continue
        if fs.isdir(path):
            base = path.rstrip("/") + "/"
            for name, info in sorted(fs.find(path, detail=True).items()):
                rel = name[len(base):] if name.startswith(base) else name
                if "_wit" not in rel.split("/") and ".tmp-" not in rel:
                    entries.append((url, rel, info.get("size"), _stamp(info)))
        else:
            info = fs.info(path)
            entries.append((url, "", info.get("size"), _stamp(info)))
    digest = hashlib.sha256(json.dumps(entries, default=str).encode()).hexdigest()[:20]
    return {"files": len(entries), "digest": digest}


def _stamp(info: dict) -> str:
    """What changes when a file is rewritten: the object store's etag, else the modification time."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


class Fingerprints:
    """Fingerprints within one run of the pipeline: a folder that several stages read is listed once, and again
    only after a stage wrote into it."""

    def __init__(self):
        self._cache: dict[str, dict] = {}

    def of(self, paths: list[str]) -> dict[str, dict]:
        for p in paths:
            if p not in self._cache:
                self._cache[p] = fingerprint(p)
        return {p: self._cache[p] for p in paths}

    def forget(self, written: list[str]) -> None:
        for p in list(self._cache):
            if any(overlaps(p, w) for w in written):
                del self._cache[p]


def overlaps(a: str, b: str) -> bool:
    """Is one path inside the other (or the same)?"""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


# ---------------------------------------------------------------------------------------------- records
def record_path(records: str, stage: str) -> str:
    return join(records, f"{stage}.json")


def read(records: str, stage: str) -> dict | None:
    path = record_path(records, stage)
    return read_json(path) if exists(path) else None


def write(records: str, stage: str, record: dict) -> None:
    write_json_atomic(record_path(records, stage), record)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def what(config: dict, runtime: set[str]) -> dict:
    """The part of a config that decides what a stage writes."""
    return {k: v for k, v in config.items() if k not in runtime}


def changes(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key whose value differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key} {_short(old.get(key, '(none)'))} -> {_short(new.get(key, '(none)'))}")
    return out


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def decide(record: dict | None, config: dict, runtime: set[str], inputs: dict, outputs: dict,
           upstream: list[str], forced: bool) -> tuple[str, str]:
    """(action, why) for one stage. Actions: run (no record: a first run, which the command resumes if its output
    is there), redo (clear what it wrote, then run), resume (run again over its output: the commands resume),
    skip."""
    if record is None:
        return "run", "not run before"
    changed = changes(what(record["config"], runtime), what(config, runtime))
    if changed:
        return "redo", "options changed: " + "; ".join(changed)
    if upstream:
        return "redo", f"after {', '.join(upstream)}, which {'runs' if len(upstream) == 1 else 'run'} first"
    moved = [p for p in inputs if record.get("inputs", {}).get(p) != inputs[p]]
    if moved:
        return "redo", "inputs changed: " + ", ".join(moved)
    if record.get("state") != "done":
        return "resume", f"did not finish (started {record.get('started', '?')}); the command resumes"
    gone = [p for p in outputs if record.get("outputs", {}).get(p) != outputs[p]]
    if gone:
        return "resume", "its output changed since it finished: " + ", ".join(gone)
    if forced:
        return "resume", "asked for (--from/--only); the command runs again over its output"
    return "skip", f"finished {record.get('finished', '?')}; options and inputs unchanged"
