"""The crawl's plan: which rows make each shard, which shards run one after another, and what each shard may ask of
a host, so that `--per-host K` and `--per-host-rate R` hold for the whole crawl, however many processes or nodes
run it and whichever distributor.

- Rows by host (`write_plan`, one DuckDB query): the normalised input's rows ordered by their host's row count (most
  first), then host, list and row, written to `_wit/plan/NNNNN.parquet` (a retry's in its own folder), files of
  whole shards (about 65,536 rows: what a worker reads for its shard). Cut into shards of `--shard-size` rows, a
  host's rows sit in as few shards as they fill (one more where they straddle a boundary). Rows with no host
  (invalid URLs) come last. Written once and read again by every resume.
- Lanes (`lanes`): a lane is what the distributor runs as one task: shards one after another, in one process.
  Shard s + K follows shard s in its lane when one host has rows in both (and so in every shard between), so the
  shards of any host sit in at most K lanes: at most K of them run at once, whatever runs the lanes.
- Budgets (`budget`): a host with rows in n shards, at most m = min(n, K, W) of which run at once (W: the lanes that
  run at once: `--processes` for the multiprocessing distributor; unbounded for Ray and Spark, whose clusters may
  run every lane at once), gets K // m requests in flight and R / m requests per second in each of its shards, so
  m x (K // m) <= K and m x R / m = R. A host whose rows sit in one shard gets K and R there.
A crawl normalised before plans existed (no `plan` in its run record) keeps its lists' order (`write_list_order_plan`)
and a worker process's budget per host, as it was crawled.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass

from wit.ingest.output import crawl_sql
from wit.shards.sql import sql_errors
from wit.shards.storage import entries, join
from wit.shards.tables import open_parquet, read_row_count, write_parquet_stream

PLAN_FILE_ROWS = 1 << 16  # rows of a plan file, rounded down to whole shards: what a worker reads for its shard


@dataclass(frozen=True)
class ShardSpec:
    """One shard of a lane: its number, the rows it crawls (`rows` rows of `source` from `first_row`) and its part
    of the budget of each host that has rows in other shards too: (host, requests in flight, requests per second)."""
    number: int
    source: str
    first_row: int
    rows: int
    budgets: tuple[tuple[str, int, float], ...] = ()


@dataclass(frozen=True)
class Span:
    """A host whose rows sit in more than one shard: its first and last shard (counted from the plan's first)."""
    host: str
    first: int
    last: int

    @property
    def shards(self) -> int:
        return self.last - self.first + 1


def shards_per_file(shard_size: int) -> int:
    return max(1, PLAN_FILE_ROWS // shard_size)


def write_plan(cfg, inputs: list[str], folder: str, hosts_from: list[str] | None = None) -> list[int]:
    """The rows of `inputs` ordered by host into plan files in `folder` (streamed, never held whole); their row
    counts. `hosts_from`: normalised inputs to take each row's host from, by (source_file, source_row), for inputs
    that have none (a retry's rows, read from manifests)."""
    rows = "read_parquet(?, filename = true, union_by_name = true)"
    params: list = [inputs]
    if hosts_from:
        rows = f"""(SELECT r.*, h.host FROM {rows} r LEFT JOIN
                    (SELECT source_file, source_row, host FROM read_parquet(?, union_by_name = true)) h
                    USING (source_file, source_row))"""
        params.append(hosts_from)
    sql = f"""
        SELECT * EXCLUDE (filename, host_rows) FROM (
            SELECT *, count(*) OVER (PARTITION BY host) AS host_rows FROM {rows})
        ORDER BY host IS NULL, host_rows DESC, host, filename, source_row"""
    with crawl_sql(cfg.out, cfg.memory_limit, cfg.temp_dir) as con, sql_errors(con, "planning hosts into shards"):
        reader = con.sql(sql, params=params).to_arrow_reader(1 << 16)
        return write_files(reader, folder, shards_per_file(cfg.shard_size) * cfg.shard_size)


def write_list_order_plan(inputs: list[str], folder: str, shard_size: int) -> list[int]:
    """The plan of a crawl from before plans: each normalised list in its own order, its own files (a list starts
    a new shard, as img2dataset's reader cuts them)."""
    counts: list[int] = []
    for url in inputs:
        batches = open_parquet(url).iter_batches(batch_size=1 << 16)
        counts += write_files(batches, folder, shards_per_file(shard_size) * shard_size, first=len(counts))
    return counts


def write_files(batches, folder: str, rows_per_file: int, first: int = 0) -> list[int]:
    """Record batches into `folder/NNNNN.parquet` files of `rows_per_file` rows (the last fewer), from number
    `first`; each file written atomically. Their row counts."""
    source = _Cutter(iter(batches))
    counts = []
    while source.more():
        url = join(folder, f"{first + len(counts):05d}.parquet")
        counts.append(write_parquet_stream(url, source.schema, source.take(rows_per_file)))
    return counts


class _Cutter:
    """Batches handed out up to a number of rows at a time, a batch split where a count ends."""

    def __init__(self, batches):
        self.batches, self.held = batches, None
        self.schema = None

    def more(self) -> bool:
        while self.held is None or not self.held.num_rows:
            self.held = next(self.batches, None)
            if self.held is None:
                return False
            self.schema = self.held.schema
        return True

    def take(self, rows: int):
        while rows and self.more():
            batch, self.held = self.held.slice(0, rows), self.held.slice(rows)
            rows -= batch.num_rows
            yield batch


def plan_files(folder: str, rows: int) -> list[tuple[str, int]] | None:
    """The plan's files and their row counts, or None when they do not hold `rows` rows whole (a plan cut short
    is planned again)."""
    names = [n for n in entries(folder) if n.endswith(".parquet") and n[:-8].isdigit()]
    try:
        # by number, as host_spans numbers the rows: past 99,999 files the names' text order is not it
        files = [(join(folder, n), read_row_count(join(folder, n))) for n in sorted(names, key=lambda n: int(n[:-8]))]
    except Exception:  # noqa: BLE001 - whatever keeps a footer from being read: plan again
        return None
    return files if files and sum(n for _, n in files) == rows else None


def host_spans(cfg, files: list[str], shard_size: int) -> list[Span]:
    """Every host of a plan by hosts whose rows sit in more than one shard, by first shard. At most one host
    crosses each boundary between two shards, so there are fewer than there are shards."""
    file_rows = shards_per_file(shard_size) * shard_size
    sql = """
        SELECT host, min(i) // $size AS first, max(i) // $size AS last
        FROM (SELECT host, regexp_extract(filename, '([0-9]+)\\.parquet$', 1)::BIGINT * $file_rows
                           + file_row_number AS i
              FROM read_parquet($files, filename = true, file_row_number = true))
        WHERE host IS NOT NULL GROUP BY host HAVING first < last ORDER BY first"""
    with crawl_sql(cfg.out, cfg.memory_limit, cfg.temp_dir) as con, sql_errors(con, "finding hosts' shards"):
        found = con.execute(sql, {"size": shard_size, "file_rows": file_rows, "files": files}).fetchall()
    return [Span(*row) for row in found]


def hottest_host(cfg, files: list[str]) -> tuple[str, int] | None:
    """The host with the most rows in a plan by hosts, and its rows (the plan starts with it)."""
    head = open_parquet(files[0]).read_row_group(0, columns=["host"])["host"]
    if not len(head) or head[0].as_py() is None:
        return None
    host = head[0].as_py()
    with crawl_sql(cfg.out, cfg.memory_limit, cfg.temp_dir) as con, sql_errors(con, "counting the hottest host"):
        (rows,) = con.execute("SELECT count(*) FROM read_parquet(?) WHERE host = ?", [files, host]).fetchone()
    return host, rows


class Spans:
    """The multi-shard hosts, looked up by shard."""

    def __init__(self, spans: list[Span]):
        self.spans, self.firsts = spans, [s.first for s in spans]

    def holding(self, shard: int) -> list[Span]:
        """The hosts of `shard` that have rows in other shards too: at most two (the one that crosses into it and
        the one that crosses out), the last two spans that start at or before it."""
        at = bisect.bisect_right(self.firsts, shard)
        return [s for s in self.spans[max(0, at - 2):at] if s.last >= shard]

    def linked(self, shard: int, step: int) -> bool:
        """Whether one host has rows in both `shard` and `shard + step`: then they belong to one lane."""
        return any(s.last >= shard + step for s in self.holding(shard))


def lanes(shards: int, per_host: int, spans: Spans) -> Iterator[list[int]]:
    """The plan's shards (0 .. shards - 1) as lanes, in the order of their first shard (the hottest hosts' first)."""
    for i in range(shards):
        if i >= per_host and spans.linked(i - per_host, per_host):
            continue  # it follows shard i - K in that shard's lane
        lane = [i]
        while lane[-1] + per_host < shards and spans.linked(lane[-1], per_host):
            lane.append(lane[-1] + per_host)
        yield lane


def budget(host_shards: int, per_host: int, rate: float, lanes_at_once: int | None) -> tuple[int, float]:
    """(requests in flight, requests per second) one shard may use on a host whose rows sit in `host_shards`
    shards: K and R shared by the most of them that can run at once."""
    at_once = min(host_shards, per_host, lanes_at_once or host_shards)
    return per_host // at_once, rate / at_once


@dataclass(frozen=True)
class Plan:
    """A plan as the driver reads it: its files with their row counts (each holds whole shards), the number of its
    first shard, and its multi-shard hosts (none for a plan in list order)."""
    files: list[tuple[str, int]]
    start: int
    shard_size: int
    spans: list[Span]

    def shard_specs(self) -> Iterator[tuple[int, str, int, int]]:
        """(shard index in the plan, file, first row there, rows) of every shard, in order."""
        i = 0
        for url, rows in self.files:
            for first in range(0, rows, self.shard_size):
                yield i, url, first, min(self.shard_size, rows - first)
                i += 1

    @property
    def shards(self) -> int:
        return sum(math.ceil(rows / self.shard_size) for _, rows in self.files)

    def lanes(self, cfg, done: set[int]) -> Iterator[tuple[ShardSpec, ...]]:
        """The lanes the distributor runs, each with its shards' budgets; finished shards left out."""
        spans = Spans(self.spans)
        at_once = cfg.processes if cfg.distributor == "multiprocessing" else None
        where = {i: (url, first, rows) for i, url, first, rows in self.shard_specs()} if self.spans else None
        specs = self.shard_specs()
        for lane in lanes(self.shards, cfg.per_host, spans):
            if where is None:  # no host spans two shards: every lane is one shard, in order
                lane_specs = [next(specs)]
            else:
                lane_specs = [(i, *where[i]) for i in lane]
            chosen = []
            for i, url, first, rows in lane_specs:
                if self.start + i in done:
                    continue
                budgets = tuple((s.host, *budget(s.shards, cfg.per_host, cfg.per_host_rate, at_once))
                                for s in spans.holding(i))
                chosen.append(ShardSpec(self.start + i, url, first, rows, budgets))
            if chosen:
                yield tuple(chosen)


def describe(plan: Plan, host: str, rows: int, cfg) -> str:
    """One line on the plan and its hottest host, whose rows bound the crawl's time: they get at most --per-host
    requests in flight (and --per-host-rate per second) whatever the number of processes."""
    total = sum(n for _, n in plan.files)
    spans = {s.host: s.shards for s in plan.spans}
    line = (f"plan          {total:,} rows in {plan.shards:,} shards; hottest host {host}: {rows:,} rows "
            f"({rows / total:.0%}) in {spans.get(host, 1)} shard(s), at most {cfg.per_host} requests in flight")
    if cfg.per_host_rate > 0:
        line += f" and {cfg.per_host_rate:g}/s (at least {rows / cfg.per_host_rate:,.0f} s for its rows)"
    return line


def load(cfg, files: list[tuple[str, int]], start: int, by_host: bool) -> Plan:
    """The plan of `files` ((url, rows) of its files, shard `start` first); a plan by host prints what its hottest
    host means for the crawl's time."""
    urls = [url for url, _ in files]
    spans = host_spans(cfg, urls, cfg.shard_size) if by_host else []
    plan = Plan(files, start, cfg.shard_size, spans)
    if by_host and (hottest := hottest_host(cfg, urls)):
        print(describe(plan, *hottest, cfg))
    return plan
