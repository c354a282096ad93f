"""What one worker process knows about each host it crawls: request pacing, how hard the host asked it to slow
down, the breaker, and its robots.txt. The politeness slots are the shard's (`Budgets`): each shard has its own
part of a host's budget (ingest/plan.py).

A host is `name:port` as the URL names it. The state lives as long as the process (across its shards) and is
bounded: past `size` hosts, the least recently used idle ones are forgotten.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

# A tripped host is left alone this long, then probed again: one more failure trips it at once.
BREAKER_COOLDOWN = 300.0
# A host that answers 429 gets this much time between requests, doubled by each 429 after (up to SLOWEST), and
# shortened a little by each answer that is not a 429, until it is gone: the adaptive rate.
SLOWER = 0.25
SLOWEST = 30.0
RECOVERY = 1.25


class Host:
    __slots__ = ("users", "failures", "tripped_until", "next_request", "spacing", "slowed_at", "robots")

    def __init__(self):
        self.users = 0  # rows holding or waiting for a slot: a host in use is never forgotten
        self.failures = 0  # consecutive connect failures and timeouts
        self.tripped_until = 0.0
        self.next_request = 0.0  # monotonic time before which no request may start
        self.spacing = 0.0  # seconds between requests that the host's 429s asked for (0: none)
        self.slowed_at = 0.0  # when a 429 last slowed it down
        self.robots = None  # a Future of the host's robots rules (robots.py), shared by its rows


class Budgets:
    """One shard's politeness per host: requests in flight (a semaphore) and requests per second. A host the plan
    names gets the part of its budget that belongs to this shard; any other gets the whole --per-host and
    --per-host-rate (its rows sit in this shard alone)."""

    def __init__(self, per_host: int, rate: float, planned: tuple[tuple[str, int, float], ...] = ()):
        self.per_host, self.rate = per_host, rate
        self.planned = {host: (slots, host_rate) for host, slots, host_rate in planned}
        self._slots: dict[str, asyncio.Semaphore] = {}

    def slots(self, key: str) -> asyncio.Semaphore:
        if key not in self._slots:
            self._slots[key] = asyncio.Semaphore(self.planned.get(key, (self.per_host, self.rate))[0])
        return self._slots[key]

    def rate_of(self, key: str) -> float:
        return self.planned.get(key, (self.per_host, self.rate))[1]


class Hosts:
    def __init__(self, trip_after: int = 5, size: int = 50_000):
        self.trip_after, self.size = trip_after, size
        self._hosts: OrderedDict[str, Host] = OrderedDict()

    def get(self, key: str) -> Host:
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = Host()
            self._forget_idle()
        self._hosts.move_to_end(key)
        return host

    def _forget_idle(self) -> None:
        if len(self._hosts) <= self.size:
            return
        for key in [k for k, h in self._hosts.items() if h.users == 0][: len(self._hosts) - self.size]:
            del self._hosts[key]

    @staticmethod
    async def pace(host: Host, rate: float) -> None:
        """Wait for the host's next request turn: `rate` requests per second (none: no wait), slower while the host
        answers 429, and not before a Retry-After it sent has passed."""
        interval = max(1.0 / rate if rate > 0 else 0.0, host.spacing)
        now = time.monotonic()
        start = max(now, host.next_request)
        host.next_request = start + interval
        if start > now:
            await asyncio.sleep(start - now)

    @staticmethod
    def turn_in(host: Host) -> float:
        """Seconds until the host's next request may start."""
        return max(0.0, host.next_request - time.monotonic())

    # the adaptive rate: a 429 slows the host down for all its rows, other answers let it speed up again
    @staticmethod
    def throttled(host: Host, retry_after: float) -> None:
        """A 429: slower, once per spacing (the 429s of requests sent together are one signal, not several)."""
        now = time.monotonic()
        if now - host.slowed_at >= host.spacing:
            host.spacing, host.slowed_at = min(SLOWEST, max(SLOWER, 2 * host.spacing)), now
        host.next_request = max(host.next_request, now + retry_after)

    @staticmethod
    def not_throttled(host: Host) -> None:
        host.spacing = host.spacing / RECOVERY if host.spacing / RECOVERY >= SLOWER else 0.0

    @staticmethod
    def asked_to_wait(host: Host, retry_after: float) -> None:
        """A 503 with Retry-After: no request to the host before it has passed."""
        host.next_request = max(host.next_request, time.monotonic() + retry_after)

    # the breaker: N consecutive connect failures or timeouts trip it; any answer from the host resets it
    def tripped(self, host: Host) -> bool:
        if self.trip_after <= 0 or host.failures < self.trip_after:
            return False
        if time.monotonic() < host.tripped_until:
            return True
        host.failures = self.trip_after - 1  # cooled down: probe again
        return False

    def failed(self, host: Host) -> None:
        host.failures += 1
        if 0 < self.trip_after <= host.failures:
            host.tripped_until = time.monotonic() + BREAKER_COOLDOWN

    def answered(self, host: Host) -> None:
        host.failures = 0
