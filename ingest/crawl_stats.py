"""Where a crawl's time went: per shard, the fetcher's account (slowest hosts, rows each rule cut short, retries,
429 answers), kept under "fetch" in the shard's stats file; per run, one summary line merged from the new shards'
accounts. A host's seconds are those of its requests, summed over its rows: requests in flight at once each count,
so they can be more than the run's wall time."""
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
        self.too_many: Counter = Counter()  # host -> 429 answers (each slowed the host down: hosts.py)

    def row(self, host: str, reason: str | None) -> None:
        self.hosts.setdefault(host, [0, 0.0])[0] += 1
        if reason in RULES:
            self.cut_short[reason] += 1

    def throttled(self, host: str) -> None:
        self.too_many[host] += 1

    def spent(self, host: str, seconds: float) -> None:
        """A request to host (an image, a redirect hop or robots.txt) took this long, connect to last byte."""
        self.hosts.setdefault(host, [0, 0.0])[1] += seconds

    def to_json(self) -> dict:
        slowest = sorted(self.hosts.items(), key=lambda kv: -kv[1][1])[:TOP_HOSTS]
        return {"slowest_hosts": [{"host": h, "rows": n, "seconds": round(s, 3)} for h, (n, s) in slowest],
                "cut_short": dict(sorted(self.cut_short.items())), "retries": self.retries,
                "recovered_by_retry": self.recovered, "http_429": dict(self.too_many.most_common(TOP_HOSTS)),
                "http_429_answers": sum(self.too_many.values())}


def merge(accounts: list[dict]) -> dict:
    hosts: dict[str, list] = {}
    cut, retries, recovered, too_many, answers = Counter(), 0, 0, Counter(), 0
    for account in accounts:
        too_many.update(account.get("http_429", {}))
        answers += account.get("http_429_answers", 0)
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
            "recovered_by_retry": recovered, "http_429_answers": answers, "http_429_hosts": len(too_many)}


def summary_line(rows: int, seconds: float | None, fetch: dict) -> str:
    """`crawl  123.4 rows/s; slowest hosts (request seconds summed over rows): a:80 (30 rows, 95.2 s), ...; cut
    short: deadline 3, ...; retries 2 (1 rows recovered); 429 answers 7 (2 hosts slowed down)`"""
    rate = f"{rows / seconds:.1f} rows/s" if seconds else "- rows/s"
    hosts = ", ".join(f"{h['host']} ({h['rows']} rows, {h['seconds']:.1f} s)" for h in fetch["slowest_hosts"]) or "-"
    cut = ", ".join(f"{rule} {n}" for rule, n in fetch["cut_short"].items())
    return (f"crawl         {rate}; slowest hosts (request seconds summed over rows): {hosts}; cut short: {cut}; "
            f"retries {fetch['retries']} ({fetch['recovered_by_retry']} rows recovered); "
            f"429 answers {fetch.get('http_429_answers', 0)} ({fetch.get('http_429_hosts', 0)} hosts slowed down)")
