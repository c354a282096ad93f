"""robots.txt as RFC 9309 says to read it, through Python's parser: a 2xx body is the rules (user-agent groups
matched by token, `*` otherwise; Allow/Disallow path prefixes, the first matching line of the group wins), a 4xx
means no rules, a 5xx means the host is not to be crawled for now. The fetcher fetches it once per host per
worker process through the same guard as the images, and keeps the answer in `Host.robots`."""
from __future__ import annotations

from urllib.robotparser import RobotFileParser

MAX_BYTES = 512 * 1024  # RFC 9309: a crawler must parse at least 500 KiB


class Unavailable(Exception):
    """robots.txt answered 5xx: RFC 9309 says to assume the whole host is disallowed."""


def rules(status: int, body: bytes) -> RobotFileParser:
    parser = RobotFileParser()
    if 200 <= status < 300:
        parser.parse(body[:MAX_BYTES].decode("utf-8", "replace").splitlines())
    elif 400 <= status < 500:
        parser.allow_all = True
    else:
        raise Unavailable(f"robots_unavailable: robots.txt answered {status}")
    return parser


def allowed(parser: RobotFileParser, token: str, url: str) -> bool:
    return parser.can_fetch(token, url)
