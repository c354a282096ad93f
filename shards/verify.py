"""A shard is done only when its tar, manifest and stats all exist and agree: `publish_shard` writes them so,
`verify_shard` checks it.

Resume trusts nothing else: a tar cut short by a kill, a manifest without its tar or a tar whose samples do not
match the manifest's `ok` rows all fail here and the shard is redone. Reading every tar to its end on every resume
would re-read the whole crawl, so a verified shard gets a marker (`_wit/verified/<name>.json`) holding the size
and mtime (or etag) of its three files; `check_shards` trusts a shard whose files still have them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from wit.shards import fasttar
from wit.shards.schema import OK, SCHEMA_VERSION
from wit.shards.storage import entries, fs_and_path, join, move, read_json, write_atomic, write_json_atomic
from wit.shards.tables import read_parquet, write_parquet


@dataclass(frozen=True)
class ShardCheck:
    name: str
    ok: bool
    problem: str = ""
    samples: int = 0


def tar_keys(url: str, ext: str = "jpg") -> list[str]:
    """Keys of the members with extension `ext`; reads the tar to its end, so truncation raises."""
    keys = []
    for name, _ in fasttar.read_members(url):
        key, suffix = fasttar.split_name(name)
        if suffix == ext:
            keys.append(key)
    return keys


def key_mismatch(tar: list[str], ok: set[str], shown: int = 5) -> str | None:
    """None when the tar holds exactly the manifest's ok rows, each once; else which samples differ."""
    repeated = sorted(k for k, n in Counter(tar).items() if n > 1)
    only_tar, only_manifest = sorted(set(tar) - ok), sorted(ok - set(tar))
    if not (repeated or only_tar or only_manifest):
        return None

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")

    parts = [f"tar holds {len(tar)} samples, the manifest {len(ok)} ok rows"]
    parts += [f"{what}: {some(keys)}" for what, keys in (("in the tar but not ok in the manifest", only_tar),
                                                          ("ok in the manifest but not in the tar", only_manifest),
                                                          ("twice in the tar", repeated)) if keys]
    return "; ".join(parts)


def publish_shard(folder: str, name: str, tar: bytes | str, manifest: pa.Table, stats: dict | None = None) -> None:
    """Make `name` a finished shard of `folder`: the tar, then the manifest, then the stats (the done marker) last,
    each written atomically, so a kill at any point leaves nothing that `verify_shard` would pass.

    `tar` is the tar's bytes, or the URL of a tar staged on the same filesystem, which is moved into place. `stats`
    (e.g. img2dataset's) gets the `wit` block that verify_shard checks against the manifest and the tar; the
    caller has checked that the tar holds exactly the manifest's `ok` rows.
    """
    stats = dict(stats or {})
    stats["wit"] = {**stats.get("wit", {}), "verified": True, "schema_version": SCHEMA_VERSION,
                    "rows": manifest.num_rows, "samples": pc.sum(pc.equal(manifest["status"], OK)).as_py() or 0}
    target = join(folder, f"{name}.tar")
    if isinstance(tar, str):
        fs, staged = fs_and_path(tar)
        move(fs, staged, fs_and_path(target)[1])
    else:
        write_atomic(target, tar)
    write_parquet(join(folder, f"{name}.parquet"), manifest)
    write_json_atomic(join(folder, f"{name}_stats.json"), stats)


def verify_shard(folder: str, name: str) -> ShardCheck:
    """Check `{name}.tar`, `{name}.parquet` and `{name}_stats.json` in `folder` against each other."""
    try:
        stats = read_json(join(folder, f"{name}_stats.json"))
    except Exception as err:
        return ShardCheck(name, False, f"stats unreadable ({type(err).__name__})")
    wit = stats.get("wit") or {}
    if not wit.get("verified"):
        return ShardCheck(name, False, "stats lack wit's verification")
    try:
        manifest = read_parquet(join(folder, f"{name}.parquet"), ["key", "status"])
    except Exception as err:
        return ShardCheck(name, False, f"manifest unreadable ({type(err).__name__})")
    ok_keys = {k for k, s in zip(manifest["key"].to_pylist(), manifest["status"].to_pylist()) if s == OK}
    if manifest.num_rows != wit.get("rows") or len(ok_keys) != wit.get("samples"):
        return ShardCheck(name, False, "manifest and stats disagree")
    try:
        keys = tar_keys(join(folder, f"{name}.tar"))
    except Exception as err:
        return ShardCheck(name, False, f"tar unreadable to its end ({type(err).__name__}: {err})")
    if problem := key_mismatch(keys, ok_keys):
        return ShardCheck(name, False, problem)
    return ShardCheck(name, True, samples=len(keys))


MARKERS = ("_wit", "verified")


def file_stamps(folder: str, name: str) -> list:
    """Size and mtime (local) or etag (object stores) of the shard's tar, manifest and stats."""
    fs, _ = fs_and_path(folder)
    stamps = []
    for suffix in (".tar", ".parquet", "_stats.json"):
        info = fs.info(fs_and_path(join(folder, name + suffix))[1])
        stamps.append([info.get("size"), info.get("ETag") or info.get("mtime") or str(info.get("LastModified"))])
    return stamps


def mark_verified(folder: str, name: str, samples: int) -> None:
    """Record that the shard, as its files are now, was verified."""
    write_json_atomic(join(folder, *MARKERS, f"{name}.json"), {"files": file_stamps(folder, name), "samples": samples})


def marked(folder: str, name: str) -> ShardCheck | None:
    """The shard's check from its marker, when its files are as they were when it was verified; else None."""
    try:
        marker = read_json(join(folder, *MARKERS, f"{name}.json"))
        if marker["files"] == file_stamps(folder, name):
            return ShardCheck(name, True, samples=marker["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def check_shards(task: tuple[str, list[str]]) -> list[ShardCheck]:
    """(folder, names) -> each shard's check: trusted by its marker, or verified in full and then marked. A pure
    per-shard function, for `shards.runner.run_map`."""
    folder, names = task
    checks = []
    for name in names:
        check = marked(folder, name)
        if check is None:
            check = verify_shard(folder, name)
            if check.ok:
                mark_verified(folder, name, check.samples)
        checks.append(check)
    return checks


def shard_names(folder: str) -> list[str]:
    """Names of the shards that have a stats file (the last file a shard gets), in shard number order."""
    names = [n.removesuffix("_stats.json") for n in entries(folder) if n.endswith("_stats.json")]
    return sorted((n for n in names if n.isdigit()), key=int)  # "100000" comes after "99999"
