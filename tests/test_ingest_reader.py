"""The crawl's plan and reader: rows cut into the shards img2dataset's Reader cuts (for a crawl in list order),
lanes that keep a host's shards in at most --per-host lanes, budgets whose sum never passes --per-host, and a
worker that reads its shard's rows from the plan one row group at a time."""
from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from img2dataset.reader import Reader

from wit.ingest.engine import CARRIED_COLUMNS
from wit.ingest.plan import Plan, Span, Spans, budget, lanes, write_list_order_plan
from wit.ingest.reader import shard_rows
from wit.shards.schema import INPUT
from wit.shards.tables import write_parquet_stream


def write_input(path, rows: int, first: int, batch: int, caption_words: int = 3) -> None:
    """A normalised input as `wit download` wrote it before plans: INPUT's columns, a row group per `batch` rows."""
    def batches():
        for start in range(first, first + rows, batch):
            ids = range(start, min(first + rows, start + batch))
            yield pa.RecordBatch.from_pydict({
                "uid": [f"{i:032x}" for i in ids], "url": [f"http://127.0.0.1:9/{i}.jpg" for i in ids],
                "caption": [f"photo {i} " * caption_words for i in ids], "source_file": ["list.csv"] * len(ids),
                "source_row": list(ids), "invalid": ["bad_url" if i % 7 == 3 else None for i in ids]}, schema=INPUT)

    assert write_parquet_stream(str(path), INPUT, batches()) == rows


class _Config:
    per_host, per_host_rate, processes, distributor = 8, 0.0, 2, "multiprocessing"


def test_a_crawl_in_list_order_keeps_img2datasets_shards_and_skips_finished_ones(tmp_path):
    inputs = tmp_path / "input"
    # row groups of 300 rows, so that shards of 256 straddle them; two lists, the second with a short last shard
    write_input(inputs / "00000.parquet", 2_345, 0, 300)
    write_input(inputs / "00001.parquet", 1_000, 10_000, 300)
    done = {4, 12, 13}  # finished shards of an earlier run, in both lists
    columns = [*CARRIED_COLUMNS[3:], "caption", "url", "uid"]
    (tmp_path / "a").mkdir()
    theirs = []
    for number, arrow_file in Reader(str(inputs), "parquet", "url", "caption", None, None, ["uid", *columns[:3]],
                                     256, done, str(tmp_path / "a"), 3):
        with pa.memory_map(arrow_file) as f:
            theirs.append((number, pa.ipc.open_file(f).read_all().select(columns).to_pylist()))

    counts = write_list_order_plan([str(inputs / "00000.parquet"), str(inputs / "00001.parquet")],
                                   str(tmp_path / "plan"), 256)
    plan = Plan([(str(tmp_path / "plan" / f"{i:05d}.parquet"), n) for i, n in enumerate(counts)], 3, 256, [])
    ours = [(spec.number, shard_rows(spec, columns).to_pylist()) for lane in plan.lanes(_Config(), done)
            for spec in lane]
    # 10 shards (3..12) from the first list, 4 (13..16) from the second, less the finished ones; a lane each
    assert [n for n, _ in ours] == [3, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16]
    assert ours == theirs
    assert len(ours[-1][1]) == 1_000 - 3 * 256


def test_a_shard_is_read_one_row_group_at_a_time(tmp_path):
    from wit.ingest.plan import ShardSpec

    write_input(tmp_path / "00000.parquet", 200_000, 0, 65_536, caption_words=40)
    whole = pq.read_table(tmp_path / "00000.parquet").nbytes  # the whole file: ~130 MB
    base = pa.total_allocated_bytes()
    table = shard_rows(ShardSpec(7, str(tmp_path / "00000.parquet"), 130_000, 1_000), ["caption", "url"])
    assert table.column_names == ["caption", "url"] and table.num_rows == 1_000
    assert table["url"][0].as_py() == "http://127.0.0.1:9/130000.jpg"
    assert pa.total_allocated_bytes() - base < whole / 10, whole  # the shard, not the file


def plan_by_hosts(host_rows: dict[str, int], shard_size: int) -> tuple[list[list[str]], list[Span]]:
    """What write_plan's query does, in Python: rows by host (most first), cut into shards; the multi-shard hosts."""
    rows = [h for h, n in sorted(host_rows.items(), key=lambda kv: (-kv[1], kv[0])) for _ in range(n)]
    shards = [rows[i:i + shard_size] for i in range(0, len(rows), shard_size)]
    where: dict[str, list[int]] = {}
    for i, shard in enumerate(shards):
        for h in dict.fromkeys(shard):
            where.setdefault(h, []).append(i)
    spans = sorted((Span(h, s[0], s[-1]) for h, s in where.items() if len(s) > 1), key=lambda s: s.first)
    return shards, spans


def test_a_hot_host_runs_in_at_most_per_host_lanes():
    shards, spans = plan_by_hosts({"hot": 18, "b": 5, "c": 4, "d": 3}, 3)
    assert [(s.host, s.first, s.last) for s in spans] == [("hot", 0, 5), ("b", 6, 7), ("c", 7, 8)]
    assert list(lanes(len(shards), 2, Spans(spans))) == [[0, 2, 4], [1, 3, 5], [6], [7], [8], [9]]


@pytest.mark.parametrize("seed", range(30))
def test_no_host_can_pass_its_budget_however_many_lanes_run_at_once(seed):
    rng = random.Random(seed)
    shard_size, per_host = rng.choice([1, 2, 3, 5, 10]), rng.choice([1, 2, 3, 8])
    # Zipf-like shares: a few hot hosts, many small ones
    host_rows = {f"h{i}": max(1, int(rng.paretovariate(0.8) * 3)) for i in range(rng.randint(1, 30))}
    shards, spans = plan_by_hosts(host_rows, shard_size)
    lane_of = {i: n for n, lane in enumerate(lanes(len(shards), per_host, Spans(spans))) for i in lane}
    assert sorted(lane_of) == list(range(len(shards)))  # every shard in exactly one lane, each lane in order
    span_of = {s.host: s for s in spans}
    for at_once in (1, 2, 3, 64, None):  # the lanes a distributor runs at once (None: all of them)
        for host, n in host_rows.items():
            if host not in span_of:
                continue  # in one shard: the whole budget there
            its = range(span_of[host].first, span_of[host].last + 1)
            host_lanes = {lane_of[i] for i in its}
            assert len(host_lanes) <= per_host  # so at most K of its shards run at once
            running = min(len(host_lanes), at_once or len(host_lanes))
            slots, _ = budget(len(its), per_host, 1.0, at_once)
            assert slots >= 1 and running * slots <= per_host, (host, len(its), per_host, at_once)


def test_budgets_divide_the_rate_among_the_shards_that_can_run_at_once():
    assert budget(1, 8, 4.0, None) == (8, 4.0)
    assert budget(6, 2, 4.0, 3) == (1, 2.0)  # 2 lanes of it at once, each 1 slot and 2 requests/s
    assert budget(3, 8, 6.0, None) == (2, 2.0)
    assert budget(3, 8, 6.0, 1) == (8, 6.0)  # one process: one shard at a time, it may use everything
    assert Counter(budget(n, 8, 0.0, 4)[0] for n in (2, 3, 4, 5, 9)) == Counter({4: 1, 2: 4})


def test_plan_files_are_in_number_order_past_99999(tmp_path):
    # the names are {n:05d}: the 100,001st file's name sorts as text before the 100,000th's, not after it
    from wit.ingest.plan import plan_files

    for name, rows in (("99999", 2), ("100000", 1)):
        pq.write_table(pa.table({"uid": ["x"] * rows}), tmp_path / f"{name}.parquet")
    assert [(f.rsplit("/", 1)[1], n) for f, n in plan_files(str(tmp_path), 3)] == [("99999.parquet", 2),
                                                                                  ("100000.parquet", 1)]


def test_a_robots_claim_left_empty_by_a_killed_process_goes_stale(tmp_path):
    # create_new makes the claim's file, then writes it: a process killed in between leaves it empty, and that
    # claim must be taken over once a fetch could not still be running, or the host's rows wait until their deadline
    import os
    import time

    from wit.ingest.robots import CrawlCache

    cache = CrawlCache(str(tmp_path), stale_after=30)
    assert cache.claim("h:80")
    claim = next(tmp_path.glob("*.claim"))
    claim.write_bytes(b"")
    assert not cache.claim_is_stale("h:80")  # being written, as far as anyone can tell
    os.utime(claim, (time.time() - 60, time.time() - 60))
    assert cache.claim_is_stale("h:80")
