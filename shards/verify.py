"""A shard is done only when its tar, manifest and stats all exist and agree: `publish_shard` writes them so,
`verify_shard` checks it.

Resume trusts nothing else: a tar cut short by a kill, a manifest without its tar or a tar whose samples do not
match the manifest's `ok` rows all fail here and the shard is redone.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from wit.shards import fasttar
from wit.shards.schema import OK, SCHEMA_VERSION
from wit.shards.storage import fs_and_path, join, move, read_json, write_atomic, write_json_atomic
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
    if len(keys) != len(set(keys)) or set(keys) != ok_keys:
        return ShardCheck(name, False, f"tar holds {len(keys)} samples, manifest {len(ok_keys)}")
    return ShardCheck(name, True, samples=len(keys))


def shard_names(folder: str) -> list[str]:
    """Names of the shards that have a stats file (the last file a shard gets)."""
    fs, path = fs_and_path(folder)
    fs.invalidate_cache(path)  # other processes write shards here; a cached listing would hide them
    if not fs.exists(path):
        return []
    names = [p.rsplit("/", 1)[-1].removesuffix("_stats.json") for p in fs.glob(path.rstrip("/") + "/*_stats.json")]
    return sorted(n for n in names if n.isdigit())
