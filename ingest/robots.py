"""Opt-outs: robots.txt as RFC 9309 says to read it (through Protego, Scrapy's parser), and X-Robots-Tag.

robots.txt: a 2xx body is the rules (the groups of the token merged, `*` otherwise; the longest matching
Allow/Disallow wins, `*` and `$` in paths), a 4xx means no rules, a 5xx means the host is not to be crawled for
now. The fetcher fetches it through the same guard as the images, once per host per crawl: `CrawlCache` keeps the
2xx and 4xx answers in the crawl's `_wit/robots/` for every process, node and resume of the crawl (for 24 hours at
most, RFC 9309 2.4), and each process keeps the rules in `Host.robots`. A 5xx or a host that does not answer is
not kept there: each process asks again, as before. X-Robots-Tag is read from each image's answer
(`header_optout`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time

from protego import Protego

from wit.shards.storage import create_new, fs_and_path, join, read_json, write_json_atomic

MAX_BYTES = 512 * 1024  # RFC 9309: a crawler must parse at least 500 KiB
# X-Robots-Tag directives that take a value after a colon: `max-snippet: 20` names no user agent
VALUED_DIRECTIVES = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
ALIASES = {"none": ("noindex", "nofollow")}  # Google's and Bing's shorthand


CACHE_SECONDS = 24 * 3600  # RFC 9309 2.4: a robots.txt answer is used for at most 24 hours


class Unavailable(Exception):
    """robots.txt answered 5xx: RFC 9309 says to assume the whole host is disallowed."""


def rules(status: int, body: bytes) -> Protego:
    if 200 <= status < 300:
        # utf-8-sig: a leading byte-order mark is not part of the first line (Google skips it too)
        return Protego.parse(body[:MAX_BYTES].decode("utf-8-sig", "replace"))
    if 400 <= status < 500:
        return Protego.parse("")
    raise Unavailable(f"robots_unavailable: robots.txt answered {status}")


def allowed(parser: Protego, token: str, url: str) -> bool:
    return parser.can_fetch(url, token)


def header_optout(values: list[str], token: str, optouts: tuple[str, ...]) -> bool:
    """Whether X-Robots-Tag header values (one per header line) opt out of `optouts` for the user agent `token`.

    Each value is `[agent:] directive, directive, ...`; without an agent it is for every crawler. Agents and
    directives are matched case-insensitively with the spaces around them dropped (`wit : noai` is for `wit`),
    and `none` stands for `noindex, nofollow`."""
    wanted = set(optouts)
    for value in values:
        agent, directives = _agent_and_directives(value)
        if agent is None or agent == token.lower():
            if wanted & {d for name in directives for d in ALIASES.get(name, (name,))}:
                return True
    return False


def _agent_and_directives(value: str) -> tuple[str | None, list[str]]:
    """(agent or None, directive names in lower case) of one X-Robots-Tag value."""
    head, colon, rest = value.partition(":")
    agent = head.strip().lower()
    if not colon or "," in agent or agent in VALUED_DIRECTIVES:
        agent, rest = None, value
    return agent, [part.partition(":")[0].strip().lower() for part in rest.split(",")]


class CrawlCache:
    """The crawl's robots.txt answers, one file per host in `folder` (`<out>/_wit/robots/`).

    Processes may need a host's answer at the same moment: the first to create the host's claim (a file made only
    if absent: `O_EXCL` locally, a conditional put on S3) fetches and stores it, the others wait for the stored
    answer. A claim outlives its process only if that process died mid-fetch: it is taken over once it is older than
    a fetch can take (`stale_after`), and a new run of the crawl removes every claim before its workers start."""

    def __init__(self, folder: str, stale_after: float):
        self.folder, self.stale_after = folder, stale_after

    def _url(self, key: str, suffix: str) -> str:
        return join(self.folder, hashlib.sha256(key.encode()).hexdigest()[:32] + suffix)

    def read(self, key: str) -> tuple[int, bytes] | None:
        """(status, body) kept for the host, unless there is none or it is older than 24 hours."""
        try:
            kept = read_json(self._url(key, ".json"))
        except (FileNotFoundError, ValueError):  # none yet, or (never written whole) unreadable: fetch again
            return None
        if kept.get("host") != key or time.time() - kept.get("fetched_at", 0) > CACHE_SECONDS:
            return None
        return kept["status"], kept["body"].encode()

    def store(self, key: str, status: int, body: bytes) -> None:
        text = body[:MAX_BYTES].decode("utf-8-sig", "replace")
        write_json_atomic(self._url(key, ".json"), {"host": key, "fetched_at": time.time(), "status": status,
                                                     "body": text})

    def claim(self, key: str) -> bool:
        holder = {"host": key, "at": time.time(), "pid": os.getpid(), "node": socket.gethostname()}
        return create_new(self._url(key, ".claim"), json.dumps(holder).encode())

    def claim_is_stale(self, key: str) -> bool:
        try:
            held = read_json(self._url(key, ".claim"))
        except FileNotFoundError:
            return False  # released: its answer is stored, or its fetch failed (then claim it)
        except ValueError:  # created but not written: being written, or its process was killed in between
            fs, path = fs_and_path(self._url(key, ".claim"))
            try:
                return time.time() - fs.modified(path).timestamp() > self.stale_after
            except FileNotFoundError:
                return False
        return time.time() - held.get("at", time.time()) > self.stale_after

    def release(self, key: str) -> None:
        fs, path = fs_and_path(self._url(key, ".claim"))
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)


def remove_claims(folder: str) -> None:
    """A new run's first step: the claims of a run that ended (killed mid-fetch) hold nothing back."""
    fs, path = fs_and_path(folder)
    with contextlib.suppress(FileNotFoundError):
        for claim in fs.glob(path.rstrip("/") + "/*.claim"):
            fs.rm(claim)
