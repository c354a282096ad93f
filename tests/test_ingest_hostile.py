"""The hostile web on loopback: slow and dead hosts, opt-outs, politeness, retries; every row's reason, and what the
servers saw (how long a slow route was held, how many connections were open at once, when each try came)."""
from __future__ import annotations

import contextlib
import re

import pytest

from wit.ingest.loopback import LoopbackImageServer, closed_port
from tests.conftest import write_csv
from tests.ingest_helpers import manifests, wit

SLACK = 3.0  # seconds a loaded 2-core machine may add to a limit (the process, not the rule, is late)


@pytest.fixture()
def servers(real_images):
    """Loopback hosts, each playing one part (a host is an address and a port)."""
    big = max(real_images, key=lambda n: len(real_images[n]))
    with contextlib.ExitStack() as stack:
        def serve(host, **kw):
            return stack.enter_context(LoopbackImageServer(real_images, host=host, **kw))

        yield {
            "big": big,
            "main": serve("127.0.0.1", slowok_delay=0.5, slowok_seconds=2.0),
            "slow": serve("127.0.0.6", trickle_seconds=30, hang_seconds=30),
            # the whole image in 20 pieces over 20 s: above a 100 bytes/s floor, far beyond a 6 s deadline
            "long": serve("127.0.0.7", slowok_delay=0.2, slowok_seconds=20),
            "robots_wit": serve("127.0.0.5", robots_txt="User-agent: *\nDisallow: /\n\nUser-agent: wit\nDisallow: /noai/\n"),
            "robots_any": serve("127.0.0.9", robots_txt="User-agent: *\nDisallow: /img/\n"),
            "polite": serve("127.0.0.8", delay_seconds=0.3),
            "flaky": serve("127.0.0.10", flaky_failures=3),
        }


def by_caption(out):
    return {row["caption"]: row for row in manifests(out).to_pylist()}


def test_slow_dead_and_opted_out_hosts_get_their_reasons_within_their_limits(tmp_path, servers):
    s, names = servers, sorted(servers["main"].images)
    big = s["big"]
    dead = f"http://127.0.0.3:{closed_port('127.0.0.3')}"
    expect = {
        "slow ok": (f"{s['main'].url}/slowok/{big}", None),
        "cut at 70%": (f"{s['main'].url}/cut/{big}?at=0.7", "connection_reset"),
        "cut at 95%": (f"{s['main'].url}/cut/{big}?at=0.95", "connection_reset"),
        "empty": (f"{s['main'].url}/empty", "empty_body"),
        "tdm": (f"{s['main'].url}/tdm/{names[1]}", "tdm_reserved"),
        "trickle": (f"{s['slow'].url}/trickle/{big}", "too_slow"),
        "dribbled headers": (f"{s['slow'].url}/dribble", "timeout"),
        "hang": (f"{s['slow'].url}/hang", "timeout"),
        "long body": (f"{s['long'].url}/slowok/{big}", "deadline"),
        "robots allow wit": (f"{s['robots_wit'].url}/img/{names[2]}", None),
        "robots deny wit": (f"{s['robots_wit'].url}/noai/{names[2]}", "robots_disallowed"),
        "robots deny all": (f"{s['robots_any'].url}/img/{names[3]}", "robots_disallowed"),
        **{f"good {i}": (f"{s['main'].url}/img/{n}", None) for i, n in enumerate(names[4:10])},
        **{f"polite {i}": (f"{s['polite'].url}/delay/{names[i]}", None) for i in range(12)},
        **{f"dead {i}": (f"{dead}/img/{i}.jpg", "dead") for i in range(10)},
    }
    lst = write_csv(tmp_path / "l.csv", [(url, caption) for caption, (url, _) in expect.items()])
    out = tmp_path / "out"
    r = wit("download", str(lst), "--out", str(out), "--allow-net", "127.0.0.0/8", "--timeout", "2",
            "--deadline", "6", "--min-rate", "100", "--per-host", "2", "--host-failures", "3", "--processes", "1",
            "--threads", "8", "--shard-size", "16", "--no-progress")
    assert r.returncode == 0, r.stderr

    rows = by_caption(out)
    assert len(rows) == len(expect)
    for caption, (_, reason) in expect.items():
        if reason != "dead":
            assert (rows[caption]["status"], rows[caption]["reason"]) == ("ok" if reason is None else "failed", reason), \
                (caption, rows[caption]["detail"])
    # the dead host: after 3 failures in a row (each robots.txt fetch, shared by the up to 2 rows in flight) the
    # breaker trips and the remaining rows fail at once, without a connect
    dead_reasons = [rows[f"dead {i}"]["reason"] for i in range(10)]
    failed = dead_reasons.count("connection_error")
    assert 3 <= failed <= 6 and dead_reasons.count("host_unreachable") == 10 - failed, dead_reasons

    # each slow route was let go within its limit: --timeout for headers, the rate window, the deadline
    held = dict(s["slow"].held + s["long"].held)
    assert held["/dribble"] <= 2 + SLACK and held["/hang"] <= 2 + SLACK, held
    assert held[f"/trickle/{big}"] <= 3 + SLACK, held
    assert 5 <= held[f"/slowok/{big}"] <= 6 + SLACK, held

    # politeness: never more than --per-host requests in flight on a host, though 8 could be. (Not open TCP
    # connections: a kept-alive socket the client has closed still counts on the server until its thread reads the
    # end, so that count can briefly read one more than the client ever used; it failed CI once that way.)
    assert 1 <= s["polite"].max_in_flight <= 2, s["polite"].max_in_flight
    # robots.txt: once per host for the whole crawl in this process (3 shards), and only where rows went
    for name in ("robots_wit", "robots_any", "polite", "main", "slow"):
        assert s[name].requests.count("/robots.txt") == 1, name
    assert f"/noai/{names[2]}" not in s["robots_wit"].requests
    assert f"/img/{names[3]}" not in s["robots_any"].requests  # disallowed rows are never fetched

    line = next(x for x in r.stdout.splitlines() if x.startswith("crawl "))
    slowest = re.findall(r"(127\.0\.0\.\d+):\d+ \(\d+ rows", line)
    assert re.search(r"\d+\.\d rows/s", line) and set(slowest[:2]) == {"127.0.0.6", "127.0.0.7"}, line
    for rule, n in (("deadline", 1), ("too_slow", 1), ("timeout", 2), ("robots_disallowed", 2), ("tdm_reserved", 1),
                    ("host_unreachable", 10 - failed)):
        assert re.search(rf"\b{rule} {n}\b", line), (rule, n, line)


def test_retries_back_off_and_robots_can_be_ignored(tmp_path, servers):
    s, names = servers, sorted(servers["main"].images)
    rows = [(f"{s['flaky'].url}/flaky/{names[0]}", "flaky"), (f"{s['flaky'].url}/500", "always 500"),
            (f"{s['flaky'].url}/404", "gone"), (f"{s['robots_any'].url}/img/{names[3]}", "robots would deny"),
            (f"{s['robots_any'].url}/tdm/{names[4]}", "tdm would deny"),
            (f"{s['robots_wit'].url}/noai/{names[5]}", "noai header")]
    out = tmp_path / "out"
    r = wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(out), "--allow-net", "127.0.0.0/8",
            "--timeout", "5", "--retries", "3", "--ignore-robots", "--processes", "1", "--threads", "4", "--no-progress")
    assert r.returncode == 0, r.stderr
    got = by_caption(out)
    assert got["flaky"]["status"] == "ok"  # three 503s, then the image
    assert got["always 500"]["reason"] == "http_500" and got["gone"]["reason"] == "http_404"
    assert got["robots would deny"]["status"] == got["tdm would deny"]["status"] == got["noai header"]["status"] == "ok"
    assert all("/robots.txt" not in srv.requests for srv in s.values() if isinstance(srv, LoopbackImageServer))

    def gaps(path):
        times = [t for t, p in s["flaky"].request_times if p == path]
        return [b - a for a, b in zip(times, times[1:])]

    # exponential backoff with jitter: the n-th retry waits 0.5 * 2**(n-1) * [0.5, 1) s (server clock, some slack)
    for path in (f"/flaky/{names[0]}", "/500"):
        g = gaps(path)
        assert len(g) == 3, (path, g)
        assert g[0] >= 0.15 and g[1] >= 0.4 and g[2] >= 0.9 and sum(g) >= 1.6, (path, g)
    assert gaps("/404") == []  # not transient: tried once
    assert "retries 6 (1 rows recovered)" in r.stdout, r.stdout


def test_bodies_waiting_for_the_resizer_are_bounded(real_images):
    """In process: a consumer that stops taking bodies stops the fetching, a shard never piles up in memory."""
    import time

    from wit.ingest.crawl_stats import FetchStats
    from wit.ingest.fetch import FetchSettings, fetcher
    from wit.ingest.guard import GuardPolicy

    names = sorted(real_images)
    with LoopbackImageServer(real_images, host="127.0.0.11") as server:
        fetch = fetcher(FetchSettings(policy=GuardPolicy(allow_nets=("127.0.0.11/32",)), concurrency=2, robots=False))
        rows = [(i, f"{server.url}/img/{names[i % len(names)]}") for i in range(40)]
        results = fetch.fetch_rows(rows, FetchStats())
        first = next(results)
        time.sleep(2.0)  # the consumer is busy: the fetcher may fill its 2 x 2 memory slots, no more
        seen_while_busy = len(server.requests)
        rest = list(results)
    assert first[1] is not None and all(body for _, body, _ in rest) and len(rest) == 39
    assert seen_while_busy <= 1 + 4 + 2, seen_while_busy  # taken + buffered + in flight waiting for a slot
    assert len(server.requests) == 40
