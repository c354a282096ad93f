"""Where a crawl's time went: per shard, the fetcher's account (slowest hosts, rows each rule cut short, retries),
kept under "fetch" in the shard's stats file; per run, one summary line merged from the new shards' accounts."""
from __future__ import annotations

from collections import Counter

# The rules that end a row early, by the reason they give it.
RULES = ("deadline", "too_slow", "timeout", "host_unreachable", "robots_disallowed", "robots_unavailable",
         "tdm_reserved")
TOP_HOSTS = 20  # hosts kept per shard: the run's five slowest are almost surely among each shard's twenty


class FetchStats:
    """Collected by the fetcher for one shard (bounded by the shard's rows)."""

    def __init__(self):
        self.hosts: dict[str, list] = {}  # host -> [rows, seconds its requests took]
        self.cut_short: Counter = Counter()
        self.retries = 0
        self.recovered = 0  # rows that succeeded after a retry

    def row(self, host: str, reason: str | None) -> None:
        self.hosts.setdefault(host, [0, 0.0])[0] += 1
        if reason in RULES:
            self.cut_short[reason] += 1

    def spent(self, host: str, seconds: float) -> None:
        """A request to host (an image, a redirect hop or robots.txt) took this long, connect to last byte."""
        self.hosts.setdefault(host, [0, 0.0])[1] += seconds

    def to_json(self) -> dict:
        slowest = sorted(self.hosts.items(), key=lambda kv: -kv[1][1])[:TOP_HOSTS]
        return {"slowest_hosts": [{"host": h, "rows": n, "seconds": round(s, 3)} for h, (n, s) in slowest],
                "cut_short": dict(sorted(self.cut_short.items())), "retries": self.retries,
                "recovered_by_retry": self.recovered}


def merge(accounts: list[dict]) -> dict:
    hosts: dict[str, list] = {}
    cut, retries, recovered = Counter(), 0, 0
    for account in accounts:
        for h in account.get("slowest_hosts", []):
            entry = hosts.setdefault(h["host"], [0, 0.0])
            entry[0] += h["rows"]
            entry[1] += h["seconds"]
        cut.update(account.get("cut_short", {}))
        retries += account.get("retries", 0)
        recovered += account.get("recovered_by_retry", 0)
    slowest = sorted(hosts.items(), key=lambda kv: -kv[1][1])[:5]
    return {"slowest_hosts": [{"host": h, "rows": n, "seconds": round(s, 1)} for h, (n, s) in slowest],
            "cut_short": {rule: cut.get(rule, 0) for rule in RULES}, "retries": retries,
            "recovered_by_retry": recovered}


def summary_line(rows: int, seconds: float | None, fetch: dict) -> str:
    """`crawl  123.4 rows/s; slowest hosts: a:80 (30 rows, 95.2 s), ...; cut short: deadline 3, ...`"""
    rate = f"{rows / seconds:.1f} rows/s" if seconds else "- rows/s"
    hosts = ", ".join(f"{h['host']} ({h['rows']} rows, {h['seconds']:.1f} s)" for h in fetch["slowest_hosts"]) or "-"
    cut = ", ".join(f"{rule} {n}" for rule, n in fetch["cut_short"].items())
    return (f"crawl         {rate}; slowest hosts: {hosts}; cut short: {cut}; "
            f"retries {fetch['retries']} ({fetch['recovered_by_retry']} rows recovered)")
