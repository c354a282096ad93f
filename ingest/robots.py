"""Opt-outs: robots.txt as RFC 9309 says to read it (through Protego, Scrapy's parser), and X-Robots-Tag.

robots.txt: a 2xx body is the rules (the groups of the token merged, `*` otherwise; the longest matching
Allow/Disallow wins, `*` and `$` in paths), a 4xx means no rules, a 5xx means the host is not to be crawled for
now. The fetcher fetches it once per host per worker process through the same guard as the images, and keeps the
answer in `Host.robots`. X-Robots-Tag is read from each image's answer (`header_optout`).
"""
from __future__ import annotations

from protego import Protego

MAX_BYTES = 512 * 1024  # RFC 9309: a crawler must parse at least 500 KiB
# X-Robots-Tag directives that take a value after a colon: `max-snippet: 20` names no user agent
VALUED_DIRECTIVES = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
ALIASES = {"none": ("noindex", "nofollow")}  # Google's and Bing's shorthand


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
