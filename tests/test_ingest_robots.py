"""Opt-outs as the RFCs and the search engines read them: robots.txt (RFC 9309) and X-Robots-Tag. Parsing is
checked in process; the fetcher's use of both against a loopback server."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from wit.ingest import robots
from wit.ingest.crawl_stats import FetchStats
from wit.ingest.fetch import FetchSettings, fetcher
from wit.ingest.guard import GuardPolicy
from wit.ingest.loopback import LoopbackImageServer

MERGED = "User-agent: wit\nDisallow: /a/\n\nUser-agent: other\nDisallow: /\n\nUser-agent: wit\nDisallow: /b/\n"
WILDCARDS = "User-agent: *\nDisallow: /*.png$\nDisallow: /private*/\nAllow: /private-ok/\n"


def allowed(text: str | bytes, path: str) -> bool:
    body = text if isinstance(text, bytes) else text.encode()
    return robots.allowed(robots.rules(200, body), "wit", f"http://127.0.0.1:8080{path}")


def test_a_byte_order_mark_does_not_hide_the_first_line():
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /img/\n"
    assert not allowed(body, "/img/cat.jpg")
    assert allowed(body, "/other/cat.jpg")


def test_groups_of_one_agent_are_merged():
    # RFC 9309 2.2.1: the rules of every group that names the crawler apply as one group
    assert not allowed(MERGED, "/a/x.jpg")
    assert not allowed(MERGED, "/b/x.jpg")
    assert allowed(MERGED, "/c/x.jpg")  # the `other` group is not ours


@pytest.mark.parametrize("path, ok", [
    ("/img/cat.png", False), ("/img/cat.png?size=2", True),  # `$` ends the path
    ("/img/cat.jpg", True), ("/private-stuff/cat.jpg", False),  # `*` is any run of characters
    ("/private-ok/cat.jpg", True),  # the longest match wins: Allow /private-ok/ over Disallow /private*/
])
def test_wildcards_and_the_longest_match(path, ok):
    # RFC 9309 2.2.3
    assert allowed(WILDCARDS, path) is ok


def test_status_decides_before_the_body():
    assert robots.allowed(robots.rules(404, b"User-agent: *\nDisallow: /\n"), "wit", "http://h/x.jpg")
    with pytest.raises(robots.Unavailable, match="robots_unavailable: robots.txt answered 503"):
        robots.rules(503, b"")


@pytest.mark.parametrize("values, opted_out", [
    (["noai"], True), (["NoImageAI"], True), (["noindex, nofollow"], True),
    (["none"], True),  # = noindex, nofollow
    (["wit: noai"], True), (["wit : noai"], True), (["WIT:noindex"], True),
    (["otherbot: noai"], False), (["otherbot: none", "wit: nofollow"], False), (["otherbot: all", "noai"], True),
    (["max-snippet: 20, noindex"], True), (["max-image-preview: large"], False),
    (["unavailable_after: 25 Jun 2030 15:00:00 PST"], False), (["nofollow, noarchive"], False), ([], False),
])
def test_x_robots_tag(values, opted_out):
    assert robots.header_optout(values, "wit", ("noai", "noimageai", "noindex", "noimageindex")) is opted_out


def test_the_fetcher_honours_both(real_images):
    names = sorted(real_images)
    body = "\ufeffUser-agent: wit\nDisallow: /*?x=1$\n\nUser-agent: *\nDisallow: /\n\nUser-agent: wit\nDisallow: /tdm/\n"
    with LoopbackImageServer(real_images, host="127.0.0.12", robots_txt=body) as server:
        fetch = fetcher(FetchSettings(policy=GuardPolicy(allow_nets=("127.0.0.12/32",)), concurrency=2))
        urls = {
            "allowed": f"{server.url}/img/{names[0]}",
            "wildcard": f"{server.url}/img/{names[1]}?x=1",
            "merged group": f"{server.url}/tdm/{names[2]}",
            "none": f"{server.url}/tagged/{names[3]}?tag=none",
            "spaced agent": f"{server.url}/tagged/{names[4]}?tag={quote('wit : noai')}",
            "other agent": f"{server.url}/tagged/{names[5]}?tag={quote('otherbot: noai')}",
        }
        rows = list(enumerate(urls.values()))
        got = {key: error for key, _, error in fetch.fetch_rows(rows, FetchStats())}
    reasons = {what: (got[i] or "ok").split(":")[0] for i, what in enumerate(urls)}
    assert reasons == {"allowed": "ok", "wildcard": "robots_disallowed", "merged group": "robots_disallowed",
                       "none": "robots_optout", "spaced agent": "robots_optout", "other agent": "ok"}
