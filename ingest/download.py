"""`wit download`: URL-caption lists -> verified WebDataset shards with wit manifests, resumable.

The run, top to bottom: read and normalise the lists -> check the output holds a crawl of the same lists -> plan
the rows into shards by host (ingest/plan.py; once per crawl) -> keep the verified shards, clear anything
half-written -> a distributor (wit's process pool, or img2dataset's Ray and Spark ones) maps WitDownloader over the
plan's lanes -> re-attempt the rows that failed only because of an --allow-net or --ignore-robots that has changed
since -> summarise the manifests.
"""
from __future__ import annotations

import time
from dataclasses import replace

from wit.ingest import plan as plans
from wit.ingest.config import DownloadConfig
from wit.ingest.distribute import resume_scan, run_engine
from wit.ingest.inputs import input_names, prepare_inputs
from wit.ingest.lock import crawl_lock
from wit.ingest.output import (
    by_hosts,
    check_own_folder,
    crawl_shard_names,
    one_line_when_disk_full,
    own_shards,
    read_record,
)
from wit.ingest.retry import reattempt_changed_rules
from wit.ingest.summary import summarize
from wit.shards.storage import absolute, check_writable, join, remove_scratch, write_json_atomic


def download(cfg: DownloadConfig) -> dict:
    """Crawl cfg.lists into cfg.out; a second call with the same arguments resumes. Returns the summary."""
    cfg = replace(cfg, out=absolute(cfg.out))
    check_own_folder(cfg.out)  # before anything is written there
    check_writable(cfg.out)
    with crawl_lock(cfg.out), one_line_when_disk_full(cfg.out):
        return _download(cfg)


def _download(cfg: DownloadConfig) -> dict:
    inputs = prepare_inputs(cfg)
    plan = crawl_plan(cfg, inputs)
    done = resume_scan(cfg)
    start = time.time()
    run_engine(cfg, plan, done=done, total_rows=sum(inputs))
    shards = own_shards(read_record(cfg.out))
    finished = {int(n) for n in crawl_shard_names(cfg.out, shards)}
    missing = [shards.name(i) for i in range(plan.shards) if i not in finished]
    if not missing:
        reattempt_changed_rules(cfg)
    shards = own_shards(read_record(cfg.out))
    new = set(crawl_shard_names(cfg.out, shards)) - {shards.name(i) for i in done}
    summary = summarize(cfg.out, started=start, new_shards=new)
    summary["missing_shards"] = missing
    write_json_atomic(join(cfg.out, "_wit", "summary.json"), summary)
    return summary


def crawl_plan(cfg: DownloadConfig, rows: list[int]) -> plans.Plan:
    """The crawl's plan (`_wit/plan/`): made once, by hosts (or in list order for a crawl from before plans), and
    read again by every resume. Prints what the hottest host means for the crawl's time."""
    folder, record = join(cfg.out, "_wit", "plan"), read_record(cfg.out)
    files = plans.plan_files(folder, sum(rows))
    if files is None:
        remove_scratch(folder)  # none, or one cut short
        inputs = [join(cfg.out, "_wit", "input", f"{n}.parquet") for n in input_names(len(rows))]
        if by_hosts(record):
            plans.write_plan(cfg, inputs, folder)
        else:
            plans.write_list_order_plan(inputs, folder, cfg.shard_size)
        files = plans.plan_files(folder, sum(rows))
    return plans.load(cfg, files, start=0, by_host=by_hosts(record))
