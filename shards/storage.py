"""fsspec helpers: every path in wit is a URL (local path, s3://, https://)."""
from __future__ import annotations

import json
import os
import uuid

import braceexpand
import fsspec


class WitError(Exception):
    """A user-facing error: one line that names the file (and row) and what is wrong."""


def fs_and_path(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def expand(pattern: str) -> list[str]:
    """Brace-expand a pattern (`lists/part-{000..009}.parquet`), with a clear error when malformed."""
    if pattern.count("{") != pattern.count("}"):
        raise WitError(f"{pattern}: bad brace pattern (unbalanced braces)")
    try:
        return list(braceexpand.braceexpand(pattern))
    except Exception as err:  # braceexpand raises its own UnbalancedBracesError
        raise WitError(f"{pattern}: bad brace pattern ({err})") from None


def write_atomic(url: str, data: bytes) -> None:
    """Write to a temporary name beside the target, then rename: readers never see half a file."""
    fs, path = fs_and_path(url)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    if is_local(url):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open(tmp, "wb") as f:
        f.write(data)
    move(fs, tmp, path)


def write_json_atomic(url: str, obj) -> None:
    write_atomic(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def create_new(url: str, data: bytes) -> bool:
    """Write `data` at `url` only if nothing is there: True when this call made it. Exclusive on local disks and on
    S3 (a conditional put); other stores check, then write."""
    fs, path = fs_and_path(url)
    if is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    try:
        if "s3" in protocols:
            fs.pipe_file(path, data, mode="create")  # atomic on S3 (and moto); stores that ignore it lose the guarantee
        elif fs.exists(path):
            return False
        else:
            fs.pipe_file(path, data)
    except FileExistsError:
        return False
    return True


def move(fs, src: str, dst: str) -> None:
    if "file" in fs.protocol:  # fsspec's protocol is a name or a tuple of names
        os.replace(src, dst)  # atomic on POSIX
    else:
        fs.mv(src, dst)  # object stores: copy then delete; the new key appears whole


def remove_scratch(url: str) -> None:
    """Remove a folder wit itself wrote (its scratch under `<out>/_wit/`), if it is there; never a user's folder."""
    fs, path = fs_and_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def read_json(url: str):
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        return json.load(f)


def absolute(url: str) -> str:
    """Local paths become absolute (worker processes may not share our idea of '.'); URLs stay as they are."""
    return os.path.abspath(url) if "://" not in url else url


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def entries(url: str) -> list[str]:
    """Names directly under a folder, sorted (empty when it does not exist): the one flat listing in wit, freshly
    read (other processes write shards here; a cached listing would hide them). tables.parquet_files and
    verify.shard_names pick from it; a recursive walk is shards.lists.find_lists (URL lists) or fs.find."""
    fs, path = fs_and_path(url)
    fs.invalidate_cache(path)
    try:
        listing = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    root = path.rstrip("/")
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listing if p.rstrip("/") != root)


def check_writable(url: str) -> None:
    """Fail early, in one line, when the output cannot be written (or is in a bucket that does not exist)."""
    fs, path = fs_and_path(url)
    check_bucket(url)
    probe = f"{path.rstrip('/')}/.wit-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as err:
        raise WitError(f"{url}: output is not writable ({type(err).__name__}: {err})") from None


BUCKET_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")  # object stores whose first path part is a bucket


def check_bucket(url: str) -> None:
    """Refuse, in one line, an object-store URL whose bucket does not exist: s3fs would create it on the first
    write, and a bucket is the user's to make (who pays, where it lives, who may read it), never wit's."""
    fs, path = fs_and_path(url)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if not set(protocols) & set(BUCKET_STORES):
        return
    bucket = path.strip("/").split("/", 1)[0]
    try:
        found = fs.exists(bucket)
    except Exception as err:
        raise WitError(f"{url}: cannot reach bucket {bucket!r} ({type(err).__name__}: {err})") from None
    if not found:
        raise WitError(f"{url}: bucket {bucket!r} does not exist; wit does not create buckets: create it first")
