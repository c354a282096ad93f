"""A crawl's output folder: whose it is, and which of its names the crawl may delete.

The run record (`_wit/run.json`) makes a folder a crawl's own. A crawl refuses a non-empty folder without one,
and it only ever deletes what it wrote itself: its scratch under `_wit/`, and the files of the shards its run
record lists (the crawl's shards and each retry's), never a name that merely starts with digits.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil

from wit.shards.storage import WitError, fs_and_path, join, read_json
from wit.shards.verify import shard_names

RUN_RECORD = ("_wit", "run.json")
SCRATCH = "_wit"
# a shard's published files, and the temporary names write_atomic gives them before the rename
_SHARD_FILE = re.compile(r"(\d{5,})(?:\.tar|\.parquet|_stats\.json)(\.tmp-[0-9a-f]{8})?")


def shard_name(number: int) -> str:
    """img2dataset's `{shard:05d}`; past 99,999 the names grow a digit, so compare shard numbers, never names."""
    return f"{number:05d}"


def run_record_url(out: str) -> str:
    return join(out, *RUN_RECORD)


def entries(out: str) -> list[str]:
    """Names directly under `out` (empty when it does not exist)."""
    fs, path = fs_and_path(out)
    fs.invalidate_cache(path)
    try:
        listing = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    root = path.rstrip("/")
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listing if p.rstrip("/") != root)


def check_own_folder(out: str) -> None:
    """Refuse, before touching anything, a folder that holds files but is not a crawl (no run record).

    A folder holding only `_wit/` is a crawl stopped before it wrote its record: it is ours to go on with.
    """
    names = [n for n in entries(out) if n != SCRATCH]
    if not names:
        return
    fs, path = fs_and_path(run_record_url(out))
    if fs.exists(path):
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise WitError(f"{out}: not empty and not a wit crawl (holds {shown}; no {'/'.join(RUN_RECORD)}); "
                   "give --out an empty or new folder")


def own_shards(record: dict) -> list[range]:
    """The shard numbers the run record lists: the crawl's, then each retry's."""
    crawl = sum(math.ceil(n / record["shard_size"]) for n in record.get("rows", []))
    return [range(crawl)] + [range(first, stop) for first, stop in record.get("retries", [])]


def own_shard_file(name: str, shards: list[range]) -> tuple[int, bool] | None:
    """(shard number, is a leftover temporary) when `name` is a file of one of `shards`, else None."""
    m = _SHARD_FILE.fullmatch(name)
    if not m or shard_name(int(m.group(1))) != m.group(1):
        return None
    number = int(m.group(1))
    return (number, bool(m.group(2))) if any(number in r for r in shards) else None


def read_record(out: str) -> dict:
    return read_json(run_record_url(out))


def crawl_shard_names(out: str, shards: list[range] | None = None) -> list[str]:
    """The crawl's published shards (those with a stats file that the run record lists), in shard order."""
    if shards is None:
        shards = own_shards(read_record(out))
    return [n for n in shard_names(out) if any(int(n) in r for r in shards)]


class DiskFull(OSError):
    """A worker found the disk full: raised to the distributor, which stops the crawl (every shard would fail)."""


def disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from, says the disk (or the user's quota) is full."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFull) or (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        if "No space left on device" in str(err):  # Ray and Spark hand a worker's error back as text
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def one_line_when_disk_full(out: str):
    """A full disk, in the driver or reported by a worker, becomes one line that names the output folder."""
    try:
        yield
    except WitError:
        raise
    except BaseException as err:
        if disk_full(err):
            raise WitError(f"{out}: no space left on device; the shards finished so far are kept: free some space "
                           "and run the same command again") from None
        raise


def disk_full_error(out: str) -> DiskFull:
    return DiskFull(errno.ENOSPC, os.strerror(errno.ENOSPC), out)


@contextlib.contextmanager
def crawl_sql(out: str, memory_limit: str | None = None, temp_dir: str | None = None):
    """A bounded DuckDB connection for the crawl's global steps, reading the output's store; its default spill
    folder (the output's `_wit/duckdb_tmp`) is removed afterwards."""
    from wit.shards.sql import connect, default_temp_dir, register_filesystem

    temp = temp_dir or default_temp_dir(out)
    con = connect(memory_limit, temp, output=out)
    register_filesystem(con, out)
    try:
        yield con
    finally:
        con.close()
        if temp_dir is None:
            shutil.rmtree(temp, ignore_errors=True)
