"""The funnel of a crawl, from its manifests (one DuckDB group-by): rows, ok, failures by reason, throughput."""
from __future__ import annotations

import time
from collections import Counter


from wit.ingest.crawl_stats import merge, summary_line
from wit.shards.schema import FAILED, OK, SUPERSEDED
from wit.shards.storage import join, read_json
from wit.ingest.output import crawl_shard_names, crawl_sql


def manifest_files(out: str) -> list[str]:
    """The manifest of every finished shard of the crawl, in shard order."""
    return [join(out, f"{name}.parquet") for name in crawl_shard_names(out)]


def summarize(out: str, started: float | None = None, new_shards: set[str] | frozenset = frozenset()) -> dict:
    status, reasons = Counter(), Counter()
    files = manifest_files(out)
    if files:
        with crawl_sql(out) as con:
            counts = con.execute("SELECT status, reason, count(*) FROM read_parquet(?) GROUP BY ALL", [files])
            for s, r, n in counts.fetchall():
                status[s] += n
                if s == FAILED:
                    reasons[r] += n
    new_stats = [read_json(join(out, f"{n}_stats.json")) for n in new_shards]
    new_ok = sum(stats["wit"]["samples"] for stats in new_stats)
    seconds = time.time() - started if started else None
    return {
        "output": out,
        "shards": len(files),
        "rows": status[OK] + status[FAILED],  # superseded rows were retried: their new row counts instead
        "ok": status[OK],
        "failed": status[FAILED],
        "superseded": status[SUPERSEDED],
        "failures_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0] or ""))),
        "this_run": {"shards": len(new_shards), "samples": new_ok, "seconds": seconds,
                     "samples_per_s": (new_ok / seconds) if seconds else None,
                     "rows": sum(stats["wit"]["rows"] for stats in new_stats),
                     "fetch": merge([stats.get("fetch", {}) for stats in new_stats])},
    }


# Failures that the run's own rules caused, and the flag that changes the rule.
RULE_FLAGS = {
    "ssrf_blocked": "--allow-net CIDR (their hosts are loopback, private or link-local addresses)",
    "robots_disallowed": "--ignore-robots (their robots.txt disallows them)",
    "robots_optout": "--ignore-robots (their answers opt out with X-Robots-Tag)",
    "tdm_reserved": "--ignore-robots (their answers reserve text and data mining rights)",
}


def rules_problem(s: dict) -> str | None:
    """A crawl where no row succeeded and every failure came from the run's own rules (and malformed URLs): one
    line that says which flag to pass. None when any row succeeded, or any failed for a reason of the web."""
    reasons = s["failures_by_reason"]
    ruled = {r: n for r, n in reasons.items() if r in RULE_FLAGS}
    if s["ok"] or not ruled or set(reasons) - set(RULE_FLAGS) - {"invalid_url"}:
        return None
    counts = ", ".join(f"{n:,} {r}" for r, n in ruled.items())
    flags = "; ".join(dict.fromkeys(f"to fetch them anyway pass {RULE_FLAGS[r]}" for r in ruled))
    return f"{s['output']}: no row was fetched ({counts}): {flags}; then run the same command again"


def format_summary(s: dict) -> str:
    lines = [
        f"output        {s['output']}",
        f"shards        {s['shards']}",
        f"rows          {s['rows']:,}",
        f"ok            {s['ok']:,}",
        f"failed        {s['failed']:,}",
    ]
    if s["superseded"]:
        lines.append(f"superseded    {s['superseded']:,} (retried; their new rows are counted above)")
    for reason, n in s["failures_by_reason"].items():
        lines.append(f"  {reason:<24}{n:,}")
    run = s["this_run"]
    if run["seconds"] is not None:
        rate = f"{run['samples_per_s']:.1f}" if run["samples_per_s"] is not None else "-"
        lines.append(f"this run      {run['shards']} shards, {run['samples']:,} samples in {run['seconds']:.1f} s ({rate} samples/s)")
        lines.append(summary_line(run["rows"], run["seconds"], run["fetch"]))
    if s.get("missing_shards"):
        lines.append(f"INCOMPLETE    shards not finished: {', '.join(s['missing_shards'][:10])}; run the same command again")
    return "\n".join(lines)
