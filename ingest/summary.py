"""The funnel of a crawl, from its manifests: rows, ok, failures by reason, throughput."""
from __future__ import annotations

import time
from collections import Counter


from wit.ingest.crawl_stats import merge, summary_line
from wit.shards.schema import FAILED, OK, SUPERSEDED
from wit.shards.storage import join, read_json
from wit.shards.tables import read_parquet
from wit.shards.verify import shard_names


def read_manifests(out: str, columns: list[str] | None = None, names: list[str] | None = None):
    """Yield (shard name, manifest table) for every finished shard."""
    for name in names if names is not None else shard_names(out):
        yield name, read_parquet(join(out, f"{name}.parquet"), columns)


def summarize(out: str, started: float | None = None, new_shards: set[str] | frozenset = frozenset()) -> dict:
    status, reasons = Counter(), Counter()
    for _, table in read_manifests(out, ["status", "reason"]):
        for s, r in zip(table["status"].to_pylist(), table["reason"].to_pylist()):
            status[s] += 1
            if s == FAILED:
                reasons[r] += 1
    new_stats = [read_json(join(out, f"{n}_stats.json")) for n in new_shards]
    new_ok = sum(stats["wit"]["samples"] for stats in new_stats)
    seconds = time.time() - started if started else None
    return {
        "output": out,
        "shards": len(shard_names(out)),
        "rows": status[OK] + status[FAILED],  # superseded rows were retried: their new row counts instead
        "ok": status[OK],
        "failed": status[FAILED],
        "superseded": status[SUPERSEDED],
        "failures_by_reason": dict(reasons.most_common()),
        "this_run": {"shards": len(new_shards), "samples": new_ok, "seconds": seconds,
                     "samples_per_s": (new_ok / seconds) if seconds else None,
                     "rows": sum(stats["wit"]["rows"] for stats in new_stats),
                     "fetch": merge([stats.get("fetch", {}) for stats in new_stats])},
    }


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
