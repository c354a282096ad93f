"""The audit's revocation section: the ledger's requests, what each took out of the corpus, the shards rewritten,
and the checkpoints of the project's training run that read a revoked sample (from their lineage records)."""
from __future__ import annotations

import html
from collections import Counter, defaultdict

from wit.shards import lineage
from wit.shards.layout import Layout
from wit.shards.revocations import Revocations
from wit.shards.storage import exists


def section(ledger: Revocations, root: str) -> dict:
    """The figures of the section: per request its keys and removed samples; shards rewritten; checkpoints."""
    keys: dict[str, Counter] = defaultdict(Counter)
    first: dict[str, dict] = {}
    for r in ledger.requests.select(["request", "date", "reason", "kind"]).to_pylist():
        keys[r["request"]][r["kind"]] += 1
        first.setdefault(r["request"], r)
    removed = ledger.removed.select(["request", "corpus", "shard", "uid", "new_sha256"]).to_pylist()
    per_request = Counter(r["request"] for r in removed)
    runs = [run for run in [Layout(root).checkpoints] if exists(run)]
    checkpoints = [{k: v for k, v in row.items() if k != "keys"} for row in lineage.report(ledger.removed, runs)]
    return {
        "ledgers": ledger.sources,
        "requests": [{"request": r, "date": first[r]["date"], "reason": first[r]["reason"], "keys": dict(keys[r]),
                      "samples_removed": per_request.get(r, 0)} for r in sorted(first, key=lambda r: first[r]["date"])],
        "samples_removed": len({(r["corpus"], r["uid"]) for r in removed}),
        "shards_rewritten": len({(r["corpus"], r["shard"]) for r in removed}),
        "rewrites": len({(r["corpus"], r["shard"], r["new_sha256"]) for r in removed}),
        "checkpoints": checkpoints,
        "checkpoints_affected": sum(1 for c in checkpoints if c["revoked_seen"]),
    }


def render(s: dict) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['date'])}</td><td>{e(r['request'])}</td><td>{e(r['reason'])}</td>"
        f"<td>{e(', '.join(f'{k}: {n:,}' for k, n in sorted(r['keys'].items())))}</td>"
        f"<td>{r['samples_removed']:,}</td></tr>" for r in s["requests"])
    parts = [f"<h2>Revocations</h2><p>{len(s['requests']):,} requests; {s['samples_removed']:,} samples taken out of "
             f"the corpus from {s['shards_rewritten']:,} shards ({s['rewrites']:,} rewrites); "
             f"{s['checkpoints_affected']:,} checkpoints trained on a revoked sample.</p>",
             "<table><tr><th>date</th><th>request</th><th>reason</th><th>keys</th><th>samples removed</th></tr>",
             rows, "</table>"]
    if s["checkpoints"]:
        parts.append("<table><tr><th>run</th><th>checkpoint</th><th>revoked samples it read</th>"
                     "<th>samples read</th></tr>" + "".join(
                         f"<tr><td>{e(c['run'])}</td><td>{e(c['checkpoint'])}</td><td>{c['revoked_seen']:,}</td>"
                         f"<td>{c['samples_read']:,}</td></tr>" for c in s["checkpoints"]) + "</table>")
    return "\n".join(parts)
