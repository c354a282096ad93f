"""What each stage of `wit pipeline` ran with, and whether that still holds: the stage records.

`<root>/_wit/pipeline/<stage>.json` is written when a stage starts (state `running`) and again when it finishes
(state `done`): its config, the equivalent command line, the output root, the folders it made (`created`: the only
ones a redo may clear), the fingerprint of every path it reads and, once done, of every path it wrote, with its
figures and time. A fingerprint is a digest of a listing (path relative to the one named, size, and etag or mtime of
every file under the path), not of the bytes: one listing per folder, so deciding what to redo never reads a shard.
A listing says what a folder holds, not where it is, and options naming paths under the root are compared relative
to it: a project folder renamed (or copied with its modification times) is the same pipeline. `_wit/` folders (the
commands' own bookkeeping and scratch) and half-written temporaries are left out of it.
"""
from __future__ import annotations

import hashlib
import json
import time

from wit.shards.storage import exists, expand, fs_and_path, join, read_json, write_json_atomic

UNREADABLE = "unreadable"  # the state of a record that is not a JSON object: treated as a stage that did not finish


def fingerprint(pattern: str, legacy: bool = False) -> dict:
    """{"files": n, "digest": ...} over the files a path (or brace pattern) names; n = 0 when none exist. `legacy`:
    the digest of records written before listings left out where the files are (they hold absolute paths)."""
    entries = []
    for i, url in enumerate(expand(pattern)):
        where = url if legacy else i  # the i-th path of the pattern, wherever the project folder is now
        fs, path = fs_and_path(url)
        fs.invalidate_cache(path)
        if not fs.exists(path):
            continue
        if fs.isdir(path):
            base = path.rstrip("/") + "/"
            for name, info in sorted(fs.find(path, detail=True).items()):
                rel = name[len(base):] if name.startswith(base) else name
                if "_wit" not in rel.split("/") and ".tmp-" not in rel:
                    entries.append((where, rel, info.get("size"), _stamp(info)))
        else:
            info = fs.info(path)
            entries.append((where, "", info.get("size"), _stamp(info)))
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
        self._cache: dict[tuple[str, bool], dict] = {}

    def of(self, paths: list[str], legacy: bool = False) -> list[dict]:
        """[{"path", "files", "digest"}] in the order of `paths` (a record compares them in that order)."""
        for p in paths:
            if (p, legacy) not in self._cache:
                self._cache[p, legacy] = fingerprint(p, legacy)
        return [{"path": p, **self._cache[p, legacy]} for p in paths]

    def forget(self, written: list[str]) -> None:
        for p, legacy in list(self._cache):
            if any(overlaps(p, w) for w in written):
                del self._cache[p, legacy]


def overlaps(a: str, b: str) -> bool:
    """Is one path inside the other (or the same)?"""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


# ---------------------------------------------------------------------------------------------- records
def record_path(records: str, stage: str) -> str:
    return join(records, f"{stage}.json")


def read(records: str, stage: str) -> dict | None:
    """The stage's record, None when it has none. A file that is no record (truncated, not a JSON object) reads as
    a stage that did not finish (state UNREADABLE, with the problem), so the command resumes over what it wrote."""
    path = record_path(records, stage)
    if not exists(path):
        return None
    try:
        record = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:  # a JSONDecodeError is a ValueError
        return {"state": UNREADABLE, "problem": f"{path}: not JSON ({type(err).__name__}: {err})"}
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return {"state": UNREADABLE, "problem": f"{path}: not a stage record (no config object)"}
    return record


def write(records: str, stage: str, record: dict) -> None:
    write_json_atomic(record_path(records, stage), record)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def legacy(record: dict | None) -> bool:
    """A record from before records named their root: its listings hold absolute paths, its options are compared
    as they are, and it does not say which folders the pipeline made."""
    return record is not None and record.get("state") != UNREADABLE and "root" not in record


def portable(value, root: str | None, config: str | None = None):
    """`value` with every path under `root` written as `<out>/...` and every other path under the config file's
    folder as `<config>/...` (in lists too): what a record compares, so that a moved project is the same one."""
    if isinstance(value, list):
        return [portable(v, root, config) for v in value]
    for anchor, name in ((root, "<out>"), (config, "<config>")):
        if anchor and isinstance(value, str) and (value == anchor or value.startswith(anchor.rstrip("/") + "/")):
            return name + value[len(anchor):]
    return value


def option_changes(record: dict, config: dict, root: str, ignore: set[str],
                   config_folder: str | None = None) -> list[tuple[str, object, object]]:
    """(option, then, now) for every option outside `ignore` that changed since the record (none when the record
    is unreadable); paths under the root, and else under the config file's folder, are compared relative to them."""
    if record.get("state") == UNREADABLE:
        return []
    then_at = (None, None) if legacy(record) else (record["root"], record.get("config_folder"))
    now_at = (None, None) if legacy(record) else (root, config_folder if then_at[1] else None)
    then = {k: portable(v, *then_at) for k, v in record["config"].items() if k not in ignore}
    now_ = {k: portable(v, *now_at) for k, v in config.items() if k not in ignore}
    return [(k, then.get(k, NONE), now_.get(k, NONE)) for k in sorted(then.keys() | now_.keys())
            if then.get(k, NONE) != now_.get(k, NONE)]


NONE = "(none)"


def show_changes(changed: list[tuple[str, object, object]]) -> str:
    return "; ".join(f"{key} {_short(then)} -> {_short(now_)}" for key, then, now_ in changed)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def listing_changes(recorded, listings: list[dict]) -> list[str]:
    """The paths whose listing differs from the record's, compared in order ([] when the record has none)."""
    if recorded is None:
        return []
    if isinstance(recorded, dict):  # a legacy record: listings keyed by absolute path
        return [x["path"] for x in listings if recorded.get(x["path"]) != {"files": x["files"], "digest": x["digest"]}]
    if not isinstance(recorded, list) or len(recorded) != len(listings):
        return [x["path"] for x in listings] or ["(none now)"]
    return [x["path"] for old, x in zip(recorded, listings)
            if not isinstance(old, dict) or (old.get("files"), old.get("digest")) != (x["files"], x["digest"])]


def _grew(then, now_) -> bool:
    return isinstance(then, int) and isinstance(now_, int) and now_ > then


def decide(record: dict | None, changed: list[tuple[str, object, object]], inputs: list[dict], outputs: list[dict],
           upstream: list[str], *, runtime: set[str] = frozenset(), grows: set[str] = frozenset(),
           rerun: list[str] = (), forced: bool = False) -> tuple[str, str]:
    """(action, why) for one stage. Actions: run (no record: a first run), redo (clear what it wrote, then run),
    resume (run again over its output: the commands resume), skip. `changed`: option_changes; those of `runtime`
    options (how it runs, or how a crawl fetches) redo nothing; a larger value of a `grows` option (train's steps)
    continues the run; `rerun`: the options set that run a finished stage again (the crawl's retry_failed)."""
    if record is None:
        return "run", "not run before"
    decisive = [c for c in changed if c[0] not in runtime]
    longer = bool(decisive) and all(key in grows and _grew(then, now_) for key, then, now_ in decisive)
    if decisive and not longer:
        return "redo", "options changed: " + show_changes(decisive)
    if upstream:
        return "redo", f"after {', '.join(upstream)}, which {'runs' if len(upstream) == 1 else 'run'} first"
    moved = listing_changes(record.get("inputs"), inputs)
    if moved:
        return "redo", "inputs changed: " + ", ".join(moved)
    if longer:
        return "resume", show_changes(decisive) + ": the command goes on from where it ended"
    if record.get("state") == UNREADABLE:
        return "resume", f"{record['problem']}; taken as not finished: the command resumes"
    if record.get("state") != "done":
        return "resume", f"did not finish (started {record.get('started', '?')}); the command resumes"
    gone = listing_changes(record.get("outputs"), outputs)
    if gone:
        return "resume", "its output changed since it finished: " + ", ".join(gone)
    if forced:
        return "resume", "asked for (--from/--only); the command runs again over its output"
    if rerun:
        return "resume", f"{', '.join(rerun)} set: the command runs again over its output"
    how = [c for c in changed if c[0] in runtime]
    return "skip", (f"finished {record.get('finished', '?')}; options and inputs unchanged"
                    + (f" (but for how it runs: {show_changes(how)}; that applies to work not yet done, and none is left)"
                       if how else ""))
