"""What one worker process knows about each host it crawls: politeness slots, request pacing and the breaker.

A host is `name:port` as the URL names it. The state lives as long as the process (across its shards) and is
bounded: past `size` hosts, the least recently used idle ones are forgotten.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

# A tripped host is left alone this long, then probed again: one more failure trips it at once.
BREAKER_COOLDOWN = 300.0


class Host:
    __slots__ = ("slots", "users", "failures", "tripped_until", "next_request", "robots")

    def __init__(self, per_host: int):
        self.slots = asyncio.Semaphore(per_host)
        self.users = 0  # rows holding or waiting for a slot: a host in use is never forgotten
        self.failures = 0  # consecutive connect failures and timeouts
        self.tripped_until = 0.0
        self.next_request = 0.0
        self.robots = None  # a Future of the host's robots rules (robots.py), shared by its rows


class Hosts:
    def __init__(self, per_host: int, rate: float = 0.0, trip_after: int = 5, size: int = 50_000):
        self.per_host, self.rate, self.trip_after, self.size = per_host, rate, trip_after, size
        self._hosts: OrderedDict[str, Host] = OrderedDict()

    def get(self, key: str) -> Host:
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = Host(self.per_host)
            self._forget_idle()
        self._hosts.move_to_end(key)
        return host

    def _forget_idle(self) -> None:
        if len(self._hosts) <= self.size:
            return
        for key in [k for k, h in self._hosts.items() if h.users == 0][: len(self._hosts) - self.size]:
            del self._hosts[key]

    async def pace(self, host: Host) -> None:
        """Wait for the host's next request slot under --per-host-rate (no wait without a rate)."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(now, host.next_request)
        host.next_request = start + 1.0 / self.rate
        if start > now:
            await asyncio.sleep(start - now)

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
