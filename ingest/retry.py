"""`wit download --retry-failed`: give transient failures another try, keeping the row count honest.

Rows are identified by (source_file, source_row). Retried rows go into new shards after the crawl's; the old
rows then become `superseded` with the new shard in their reason. If a retry is killed, the next call first
supersedes what the finished retry shards already hold, so a row is never retried twice into the output.
"""
from __future__ import annotations

import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from wit.ingest.config import DownloadConfig
from wit.ingest.download import expected_shards, prepare_inputs, resume_scan, run_engine
from wit.ingest.reasons import is_transient
from wit.ingest.summary import read_manifests, summarize
from wit.shards.schema import FAILED, INPUT, SUPERSEDED
from wit.shards.storage import WitError, absolute, check_writable, exists, join, write_json_atomic
from wit.shards.tables import write_parquet
from wit.shards.verify import shard_names


def retry_failed(cfg: DownloadConfig) -> dict:
    cfg = replace(cfg, out=absolute(cfg.out))
    check_writable(cfg.out)
    if not exists(join(cfg.out, "_wit", "run.json")):
        raise WitError(f"{cfg.out}: no crawl here to retry (run `wit download` first)")
    counts = prepare_inputs(cfg)  # the same lists, or a clear error
    done = resume_scan(cfg.out)
    crawl_shards = expected_shards(counts, cfg.shard_size)
    unfinished = crawl_shards - len([i for i in done if i < crawl_shards])
    if unfinished:
        print(f"{unfinished} shard(s) of the crawl are unfinished; `wit download` without --retry-failed finishes them")
    supersede(cfg.out)
    todo = transient_failures(cfg.out)
    start = time.time()
    if todo.num_rows:
        # after the crawl's own shard numbers, even unfinished ones: a retry shard must never take the number of a
        # crawl shard that a later run still has to write
        first = max(max(done, default=-1) + 1, crawl_shards)
        batch = join(cfg.out, "_wit", f"retry-{first:05d}")
        write_parquet(join(batch, "00000.parquet"), todo)
        print(f"retrying {todo.num_rows:,} rows that failed transiently, into shards from {first:05d}")
        run_engine(cfg, input_dir=batch, done=set(), start_shard=first, total_rows=todo.num_rows)
        supersede(cfg.out)
    else:
        print("no transient failures to retry")
    summary = summarize(cfg.out, started=start, new_shards=set(shard_names(cfg.out)) - {f"{i:05d}" for i in done})
    write_json_atomic(join(cfg.out, "_wit", "summary.json"), summary)
    return summary


def transient_failures(out: str) -> pa.Table:
    rows = []
    for _, t in read_manifests(out, ["uid", "url", "caption", "status", "reason", "source_file", "source_row"]):
        mask = pc.and_(pc.equal(t["status"], FAILED), pa.array([is_transient(r) for r in t["reason"].to_pylist()]))
        rows.append(t.filter(mask))
    if not rows:
        return INPUT.empty_table()
    t = pa.concat_tables(rows)
    return pa.table(
        {"uid": t["uid"], "url": t["url"], "caption": t["caption"], "source_file": t["source_file"],
         "source_row": t["source_row"], "invalid": pa.nulls(t.num_rows, pa.string())},
        schema=INPUT,
    )


def supersede(out: str) -> int:
    """Mark a failed row superseded when a later shard holds an attempt at the same input row."""
    latest: dict[tuple, str] = {}
    for name, t in read_manifests(out, ["source_file", "source_row"]):
        for key in zip(t["source_file"].to_pylist(), t["source_row"].to_pylist()):
            latest[key] = max(latest.get(key, name), name)
    changed = 0
    for name, t in read_manifests(out):
        status, reason = t["status"].to_pylist(), t["reason"].to_pylist()
        hits = 0
        for i, key in enumerate(zip(t["source_file"].to_pylist(), t["source_row"].to_pylist())):
            if status[i] == FAILED and latest[key] > name:
                status[i], reason[i] = SUPERSEDED, f"retried_in:{latest[key]}"
                hits += 1
        if hits:
            for col, values in (("status", status), ("reason", reason)):
                i = t.schema.get_field_index(col)
                t = t.set_column(i, t.schema.field(i), pa.array(values, pa.string()))
            write_parquet(join(out, f"{name}.parquet"), t)
            changed += hits
    return changed
