"""A crawl's output folder: whose it is, and which of its names the crawl may delete.

The run record (`_wit/run.json`) makes a folder a crawl's own. A crawl refuses a non-empty folder without one,
and it only ever deletes what it wrote itself: its scratch under `_wit/`, and the files of the shards its run
record lists (the crawl's shards and each retry's), never a name that merely starts with digits. The record also
keeps the width of the crawl's shard names, and `shard_name` is the one place a name is made.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
from dataclasses import dataclass

from wit.shards.storage import WitError, entries, fs_and_path, join, read_json
from wit.shards.verify import shard_names

RUN_RECORD = ("_wit", "run.json")
SCRATCH = "_wit"
# a shard's published files, and the temporary names write_atomic gives them before the rename
_SHARD_FILE = re.compile(r"(\d{5,})(?:\.tar|\.parquet|_stats\.json)(\.tmp-[0-9a-f]{8})?")


NAME_WIDTH = 5  # img2dataset's `{shard:05d}`, and the width of every crawl whose run record names none


def name_width(planned: int) -> int:
    """Digits of a new crawl's shard names, chosen once from its planned shards and kept in its run record.

    Every name a crawl writes should have one length, so that `ls` and any tool that sorts names as text list
    them in shard order. Retries number their shards after the crawl's, and one retry re-crawls at most every row,
    so it adds at most as many shards as the crawl plans: room for ten times the plan leaves nine full retries
    before a name could grow a digit (readers compare shard numbers, so even that stays right). At least five:
    a crawl of up to 10,000 shards is named as img2dataset names it, and as every crawl was named before.
    """
    return max(NAME_WIDTH, len(str(10 * planned - 1)))


def planned_shards(rows: list[int], shard_size: int, by_hosts: bool) -> int:
    """The crawl's own shards: all its rows cut into shards of `shard_size` once they are planned by host
    (ingest/plan.py), else each list's rows by themselves (img2dataset's reader; crawls from before plans)."""
    if by_hosts:
        return math.ceil(sum(rows) / shard_size)
    return sum(math.ceil(n / shard_size) for n in rows)


def by_hosts(record: dict) -> bool:
    """Whether the crawl's rows are planned into shards by host (every crawl since plans), not in list order."""
    return record.get("plan") == "hosts"


def shard_name(number: int, width: int) -> str:
    """The one place a crawl shard's name is made: its number, zero-padded to the crawl's width."""
    return f"{number:0{width}d}"


@dataclass(frozen=True)
class OwnShards:
    """The shard numbers a run record lists (the crawl's, then each retry's) and the width of their names."""
    ranges: tuple[range, ...]
    width: int = NAME_WIDTH

    def name(self, number: int) -> str:
        return shard_name(number, self.width)

    def number(self, name: str) -> int | None:
        """The number of a name this crawl wrote for one of its shards, else None (`00004` is not `000004`)."""
        if not (name.isascii() and name.isdigit()) or self.name(int(name)) != name:
            return None
        return int(name) if any(int(name) in r for r in self.ranges) else None


def run_record_url(out: str) -> str:
    return join(out, *RUN_RECORD)


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


def own_shards(record: dict) -> OwnShards:
    """The shards the run record lists, named at the width it keeps (five for a record from before it kept one)."""
    crawl = planned_shards(record.get("rows", []), record["shard_size"], by_hosts(record))
    ranges = [range(crawl)] + [range(first, stop) for first, stop in record.get("retries", [])]
    return OwnShards(tuple(ranges), record.get("name_width", NAME_WIDTH))


def own_shard_file(name: str, shards: OwnShards) -> tuple[int, bool] | None:
    """(shard number, is a leftover temporary) when `name` is a file of one of `shards`, else None."""
    m = _SHARD_FILE.fullmatch(name)
    number = shards.number(m.group(1)) if m else None
    return None if number is None else (number, bool(m.group(2)))


def read_record(out: str) -> dict:
    """The run record; a garbled one is a one-line error, not a guess: it says which shards are the crawl's own."""
    url = run_record_url(out)
    try:
        record = read_json(url)
        own_shards(record).name(0)  # what every run reads of it: the crawl's shards and how they are named
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as err:  # JSON's errors are ValueErrors
        raise WitError(f"{url}: not a readable run record ({type(err).__name__}: {err}); put the crawl's record "
                       "back, or crawl into a new folder") from None
    return record


def crawl_shard_names(out: str, shards: OwnShards | None = None) -> list[str]:
    """The crawl's published shards (those with a stats file, named as the run record's shards), in shard order."""
    if shards is None:
        shards = own_shards(read_record(out))
    return [n for n in shard_names(out) if shards.number(n) is not None]


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
