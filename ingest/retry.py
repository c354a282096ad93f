"""`wit download --retry-failed`: give transient failures another try, keeping the row count honest.

Rows are identified by (source_file, source_row). Retried rows go into new shards after the crawl's; the old
rows then become `superseded` with the new shard in their reason. If a retry is killed, the next call first
supersedes what the finished retry shards already hold, so a row is never retried twice into the output.
Both global steps are DuckDB queries over the manifests: the rows to retry stream into the retry's input, and
only the manifests that hold a superseded row are rewritten, one at a time.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from wit.ingest.config import DownloadConfig
from wit.ingest.download import resume_scan, run_engine
from wit.ingest.inputs import prepare_inputs
from wit.ingest.lock import crawl_lock
from wit.ingest.output import (
    crawl_shard_names,
    crawl_sql,
    one_line_when_disk_full,
    own_shards,
    planned_shards,
    read_record,
    run_record_url,
)
from wit.ingest.reasons import is_transient
from wit.ingest.summary import manifest_files, summarize
from wit.shards.schema import FAILED, INPUT, SUPERSEDED
from wit.shards.sql import sql_errors
from wit.shards.storage import WitError, absolute, check_writable, exists, join, write_json_atomic
from wit.shards.tables import read_parquet, write_parquet, write_parquet_stream
from wit.shards.verify import mark_verified, marked


def retry_failed(cfg: DownloadConfig) -> dict:
    cfg = replace(cfg, out=absolute(cfg.out))
    check_writable(cfg.out)
    if not exists(run_record_url(cfg.out)):
        raise WitError(f"{cfg.out}: no crawl here to retry (run `wit download` first)")
    with crawl_lock(cfg.out), one_line_when_disk_full(cfg.out):
        return _retry_failed(cfg)


def _retry_failed(cfg: DownloadConfig) -> dict:
    counts = prepare_inputs(cfg)  # the same lists, or a clear error
    done = resume_scan(cfg)
    crawl_shards = planned_shards(counts, cfg.shard_size)
    unfinished = crawl_shards - len([i for i in done if i < crawl_shards])
    if unfinished:
        print(f"{unfinished} shard(s) of the crawl are unfinished; `wit download` without --retry-failed finishes them")
    supersede(cfg)
    start = time.time()
    # after the crawl's own shard numbers, even unfinished ones: a retry shard must never take the number of a
    # crawl shard that a later run still has to write
    first = max(max(done, default=-1) + 1, crawl_shards)
    record = read_record(cfg.out)
    name = own_shards(record).name  # the crawl's width: retry shards are named as its own
    batch = join(cfg.out, "_wit", f"retry-{name(first)}")
    todo = transient_failures(cfg, join(batch, "00000.parquet"))
    if todo:
        print(f"retrying {todo:,} rows that failed transiently, into shards from {name(first)}")
        # list the retry's shards first: a crawl deletes only shards it lists
        retries = record.get("retries", []) + [[first, first + math.ceil(todo / cfg.shard_size)]]
        write_json_atomic(run_record_url(cfg.out), {**record, "retries": retries})
        run_engine(cfg, input_dir=batch, done=set(), start_shard=first, total_rows=todo)
        supersede(cfg)
    else:
        print("no transient failures to retry")
    summary = summarize(cfg.out, started=start, new_shards=set(crawl_shard_names(cfg.out)) - {name(i) for i in done})
    write_json_atomic(join(cfg.out, "_wit", "summary.json"), summary)
    return summary


def transient_failures(cfg: DownloadConfig, target: str) -> int:
    """Write the rows that failed transiently, in shard then key order, to `target` (the INPUT schema); their count.
    Nothing is written when there are none."""
    files = manifest_files(cfg.out)
    if not files:
        return 0
    with crawl_sql(cfg.out, cfg.memory_limit, cfg.temp_dir) as con, sql_errors(con, "finding rows to retry"):
        reasons = [r for (r,) in con.execute("SELECT DISTINCT reason FROM read_parquet(?) WHERE status = ?",
                                             [files, FAILED]).fetchall() if is_transient(r)]
        if not reasons:
            return 0
        rows = con.sql("""SELECT uid, url, caption, source_file, source_row, NULL::VARCHAR AS invalid
                          FROM read_parquet(?) WHERE status = ? AND list_contains(?, reason)
                          ORDER BY shard::BIGINT, key""", params=[files, FAILED, reasons])
        return write_parquet_stream(target, INPUT, rows.to_arrow_reader(1 << 16))


def supersede(cfg: DownloadConfig) -> int:
    """Mark a failed row superseded when a later shard holds an attempt at the same input row. Shard numbers are
    compared as numbers (a crawl from before the run record kept its names' width has 5-digit names that grow a
    digit past 99,999); the names are the manifests' own."""
    files = manifest_files(cfg.out)
    if not files:
        return 0
    sql = """
        WITH m AS (SELECT shard::BIGINT AS n, shard, key, status, source_file, source_row FROM read_parquet(?)),
             latest AS (SELECT source_file, source_row, max(n) AS latest_n, arg_max(shard, n) AS latest
                        FROM m GROUP BY source_file, source_row HAVING count(*) > 1)
        SELECT m.n, m.shard, m.key, latest.latest FROM m JOIN latest USING (source_file, source_row)
        WHERE m.status = ? AND latest.latest_n > m.n ORDER BY m.n"""
    changed = 0
    with crawl_sql(cfg.out, cfg.memory_limit, cfg.temp_dir) as con, sql_errors(con, "superseding retried rows"):
        pending: list[pa.RecordBatch] = []
        for batch in con.sql(sql, params=[files, FAILED]).to_arrow_reader(1 << 16):  # one shard's rows at a time
            for n in pc.unique(batch.column(0)).to_pylist():
                rows = batch.filter(pc.equal(batch.column(0), n))
                if pending and pending[0].column(0)[0].as_py() != n:
                    changed += _supersede_shard(cfg.out, pa.Table.from_batches(pending))
                    pending = []
                pending.append(rows)
        if pending:
            changed += _supersede_shard(cfg.out, pa.Table.from_batches(pending))
    return changed


def _supersede_shard(out: str, updates: pa.Table) -> int:
    """Rewrite one manifest: the rows named in `updates` (n, shard, key, latest) become superseded."""
    name = updates["shard"][0].as_py()
    trusted = marked(out, name)  # the shard stays verified: only failed rows change
    t = read_parquet(join(out, f"{name}.parquet"))
    at = pc.index_in(t["key"], value_set=updates["key"])
    hit = pc.is_valid(at)
    reasons = pa.array([f"retried_in:{latest}" for latest in updates["latest"].to_pylist()], pa.string())
    for column, value in (("status", pa.scalar(SUPERSEDED)), ("reason", pc.take(reasons, at))):
        i = t.schema.get_field_index(column)
        t = t.set_column(i, t.schema.field(i), pc.if_else(hit, value, t[column]))
    write_parquet(join(out, f"{name}.parquet"), t)
    if trusted:
        mark_verified(out, name, trusted.samples)
    return updates.num_rows
