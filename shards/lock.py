"""One run at a time in an output folder: `_wit/lock`, naming the run (and its command) that holds it.

Two runs on one output would redo each other's work and delete each other's scratch: the crawl holds the lock of its
output folder, `wit pipeline` the lock of its root for all its stages. Locally the lock is an
`flock` on the file, which the kernel drops when its run ends, however it ends. Object stores have no locks, so
on s3:// the lock is an object created only if absent (a conditional put, `If-None-Match: *`), removed when the
run ends. A run killed on this host leaves it behind; the next run on this host sees that the holder is gone and
takes it over. A lock left by a run on another host is reported with its holder: delete it by hand once that run
is gone (the rule: never two runs on one output, and a lock never removed while its run might still write).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid

from wit.shards.storage import WitError, create_new, fs_and_path, is_local, join

LOCK = ("_wit", "lock")


@contextlib.contextmanager
def output_lock(out: str, command: str):
    """Hold the output's lock for the body; refuse, in one line, an output that another run holds. `command` (such
    as "wit download") is what a refused run is told holds it."""
    url = join(out, *LOCK)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "token": uuid.uuid4().hex, "command": command}
    with _local_lock(url, holder) if is_local(url) else _object_lock(url, holder):
        yield


def _refused(out_lock: str, holder: dict) -> WitError:
    who = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
    command = holder.get("command", "wit download")  # a lock taken before locks named their command: a crawl's
    return WitError(f"{out_lock.rsplit('/', 2)[0]}: another {command} is writing here ({who}); wait for it to end "
                    f"or use another output folder (a lock left by a run that is gone: delete {out_lock})")


@contextlib.contextmanager
def _local_lock(url: str, holder: dict):
    import fcntl

    path = fs_and_path(url)[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refused(url, _parse(os.pread(fd, 4096, 0))) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the flock; the file stays, naming the last holder


@contextlib.contextmanager
def _object_lock(url: str, holder: dict):
    fs, path = fs_and_path(url)
    body = json.dumps(holder).encode()
    for _ in range(2):
        if create_new(url, body):
            break
        current = _parse(fs.cat_file(path))
        if not _gone(current):
            raise _refused(url, current) from None
        fs.rm(path)  # its run ended on this host without removing it: take it over
    else:
        raise _refused(url, _parse(fs.cat_file(path)))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if _parse(fs.cat_file(path)).get("token") == holder["token"]:
                fs.rm(path)


def _parse(data: bytes) -> dict:
    try:
        return json.loads(data)
    except ValueError:
        return {}


def _gone(holder: dict) -> bool:
    """Whether the holder was a process on this host that no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
