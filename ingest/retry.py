"""`wit download --retry-failed`: give transient failures another try, keeping the row count honest. And a
crawl run again with a wider `--allow-net` or with `--ignore-robots` gives the rows that failed only because of
them (`ssrf_blocked`; the opt-outs) another try in the same way (`reattempt_changed_rules`).

Rows are identified by (source_file, source_row). Retried rows go into new shards after the crawl's, planned by
host as the crawl's are (ingest/plan.py, in the retry's folder); the old rows then become `superseded` with the
new shard in their reason. If a retry is killed, the next call first supersedes what the finished retry shards
already hold, so a row is never retried twice into the output. Both global steps are DuckDB queries over the
manifests: the rows to retry stream into the retry's input, and only the manifests that hold a superseded row are
rewritten, one at a time.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from wit.ingest import plan as plans
from wit.ingest.config import DownloadConfig
from wit.ingest.distribute import resume_scan, run_engine
from wit.ingest.inputs import input_names, prepare_inputs
from wit.ingest.lock import crawl_lock
from wit.ingest.output import (
    by_hosts,
    crawl_shard_names,
    crawl_sql,
    one_line_when_disk_full,
    own_shards,
    read_record,
    run_record_url,
)
from wit.ingest.reasons import is_transient
from wit.ingest.summary import manifest_files, summarize
from wit.shards.schema import FAILED, INPUT, SUPERSEDED
from wit.shards.sql import ident, sql_errors
from wit.shards.storage import WitError, absolute, check_writable, exists, join, remove_scratch, write_json_atomic
from wit.shards.tables import read_parquet, read_schema, write_parquet, write_parquet_stream
from wit.shards.verify import mark_verified, marked


def retry_failed(cfg: DownloadConfig) -> dict:
    cfg = replace(cfg, out=absolute(cfg.out))
    check_writable(cfg.out)
    if not exists(run_record_url(cfg.out)):
        raise WitError(f"{cfg.out}: no crawl here to retry (run `wit download` first)")
    with crawl_lock(cfg.out), one_line_when_disk_full(cfg.out):
        return _retry_failed(cfg)


# The reasons a rule of the run's own gives a row, by the flag that changes the rule.
RULE_REASONS = {"allow_net": frozenset({"ssrf_blocked"}),
                "ignore_robots": frozenset({"robots_disallowed", "robots_unavailable", "robots_optout",
                                            "tdm_reserved"})}


def _retry_failed(cfg: DownloadConfig) -> dict:
    prepare_inputs(cfg)  # the same lists, or a clear error
    done = resume_scan(cfg)
    crawl_shards = own_shards(read_record(cfg.out)).ranges[0].stop
    unfinished = crawl_shards - len([i for i in done if i < crawl_shards])
    if unfinished:
        print(f"{unfinished} shard(s) of the crawl are unfinished; `wit download` without --retry-failed finishes them")
    supersede(cfg)
    start = time.time()
    if not retry_rows(cfg, is_transient, "failed transiently"):
        print("no transient failures to retry")
    name = own_shards(read_record(cfg.out)).name
    summary = summarize(cfg.out, started=start, new_shards=set(crawl_shard_names(cfg.out)) - {name(i) for i in done})
    write_json_atomic(join(cfg.out, "_wit", "summary.json"), summary)
    return summary


def reattempt_changed_rules(cfg: DownloadConfig) -> None:
    """Once the crawl's shards are all done: when --allow-net allows a network it did not before, or
    --ignore-robots is now on, the rows that failed only because of the old rule get another try (the rules are
    kept in the run record). A narrower rule re-fetches nothing: what was fetched stays, as `wit pipeline`, which
    redoes the whole crawl then, says."""
    record = read_record(cfg.out)
    rules = cfg.fetch_rules
    before = record.get("fetch_rules")
    reasons: set[str] = set()
    if before is not None:
        if set(rules["allow_net"]) - set(before.get("allow_net", [])):
            reasons |= RULE_REASONS["allow_net"]
        if rules["ignore_robots"] and not before.get("ignore_robots"):
            reasons |= RULE_REASONS["ignore_robots"]
    if reasons:
        supersede(cfg)  # what an earlier re-attempt, killed before it recorded the rules, finished
        flags = " and ".join(f"--{flag.replace('_', '-')}" for flag, why in RULE_REASONS.items() if why & reasons)
        retry_rows(cfg, reasons.__contains__, f"failed only because of the old {flags}")
    write_json_atomic(run_record_url(cfg.out), {**read_record(cfg.out), "fetch_rules": rules})


def retry_rows(cfg: DownloadConfig, wanted, what: str) -> int:
    """Crawl again, into new shards after every finished one, the failed rows whose reason is `wanted`; then
    supersede their old rows. The count of rows retried."""
    record = read_record(cfg.out)
    own = own_shards(record)
    finished = [int(n) for n in crawl_shard_names(cfg.out, own)]
    # after the crawl's own shard numbers, even unfinished ones: a retry shard must never take the number of a
    # crawl shard that a later run still has to write
    first = max(max(finished, default=-1) + 1, own.ranges[0].stop)
    batch = join(cfg.out, "_wit", f"retry-{own.name(first)}")
    todo = transient_failures(cfg, join(batch, "00000.parquet"), wanted)
    if todo:
        print(f"retrying {todo:,} rows that {what}, into shards from {own.name(first)}")
        # list the retry's shards first: a crawl deletes only shards it lists
        retries = record.get("retries", []) + [[first, first + math.ceil(todo / cfg.shard_size)]]
        write_json_atomic(run_record_url(cfg.out), {**record, "retries": retries})
        run_engine(cfg, retry_plan(cfg, batch, todo, first, record), done=set(), total_rows=todo)
        supersede(cfg)
    return todo


def retry_plan(cfg: DownloadConfig, batch: str, rows: int, first: int, record: dict) -> plans.Plan:
    """The retry's rows planned by host, as the crawl's (their hosts from the crawl's normalised input); a crawl
    from before plans retries in its manifests' order."""
    folder = join(batch, "plan")
    inputs = [join(cfg.out, "_wit", "input", f"{n}.parquet") for n in input_names(len(record["rows"]))]
    hosts = by_hosts(record) and "host" in read_schema(inputs[0]).names
    remove_scratch(folder)  # the plan of an earlier retry into these numbers, killed before its shards finished
    if hosts:
        plans.write_plan(cfg, [join(batch, "00000.parquet")], folder, hosts_from=inputs)
    else:
        plans.write_list_order_plan([join(batch, "00000.parquet")], folder, cfg.shard_size)
    files = plans.plan_files(folder, rows)
    if files is None:
        raise WitError(f"{folder}: the retry's plan does not hold its {rows:,} rows; is a list given twice?")
    return plans.load(cfg, files, start=first, by_host=hosts)


def transient_failures(cfg: DownloadConfig, target: str, wanted=is_transient) -> int:
    """Write the failed rows whose reason is `wanted` (transient, by default), in shard then key order, to `target`
    (the INPUT schema, then the saved list columns); their count. Nothing is written when there are none."""
    files = manifest_files(cfg.out)
    if not files:
        return 0
    saved = "".join(f", {ident(c)}" for c in cfg.save_additional_columns)
    with crawl_sql(cfg.out, cfg.memory_limit, cfg.temp_dir) as con, sql_errors(con, "finding rows to retry"):
        reasons = [r for (r,) in con.execute("SELECT DISTINCT reason FROM read_parquet(?) WHERE status = ?",
                                             [files, FAILED]).fetchall() if wanted(r)]
        if not reasons:
            return 0
        rows = con.sql(f"""SELECT uid, url, caption, source_file, source_row, NULL::VARCHAR AS invalid{saved}
                           FROM read_parquet(?) WHERE status = ? AND list_contains(?, reason)
                           ORDER BY shard::BIGINT, key""", params=[files, FAILED, reasons])
        reader = rows.to_arrow_reader(1 << 16)
        schema = pa.schema(list(INPUT) + list(reader.schema)[len(INPUT):])  # INPUT's nullability, then the saved
        return write_parquet_stream(target, schema, reader)


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
