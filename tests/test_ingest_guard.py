"""The network guard, on loopback only: refused by default, allow-list honoured, redirects re-checked."""
from __future__ import annotations

import pytest

from wit.ingest.guard import Blocked, GuardPolicy, InvalidURL, Target, is_host_name, parse_target
from wit.ingest.loopback import LoopbackImageServer
from tests.conftest import write_csv
from tests.ingest_helpers import FAST, manifests, wit


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "127.0.0.2", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1",
           "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "192.0.2.1", "2001:db8::1",
           "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a00:1::1", "2001:0:4136:e378:8000:63bf:80ff:fffe",
           # IPv4-compatible, SIIT (IPv4-translated), local-use NAT64 and site-local: deprecated or translated forms
           "::127.0.0.1", "::ffff:0:7f00:1", "64:ff9b:1::7f00:1", "fec0::1", "::8.8.8.8", "64:ff9b:1::808:808",
           # IANA special-purpose ranges Python 3.11 calls global: 6to4 relay anycast, SRv6 SIDs, documentation
           "192.88.99.1", "5f00::1", "3fff::1", "3fff:fff::1"],
)
def test_policy_blocks_non_public_addresses(ip):
    # pure address checks: nothing is sent anywhere
    with pytest.raises(Blocked, match="ssrf_blocked"):
        GuardPolicy().check(ip)


def test_policy_allows_public_and_allow_listed_addresses():
    GuardPolicy().check("93.184.216.34")  # no exception: a public address is fine (only checked, never contacted)
    GuardPolicy().check("2606:4700:4700::1111")
    GuardPolicy().check("64:ff9b::5db8:d822")  # NAT64 of a public IPv4 address
    GuardPolicy(allow_nets=("127.0.0.1/32",)).check("127.0.0.1")
    with pytest.raises(Blocked):
        GuardPolicy(allow_nets=("127.0.0.1/32",)).check("127.0.0.2")


@pytest.mark.parametrize("url, host, port", [
    ("http://127.0.0.1:18080/x.jpg", "127.0.0.1", 18080),
    ("https://Example.COM/a/b.jpg?x=1", "example.com", 443),
    ("http://[2606:4700::1111]/x.jpg", "2606:4700::1111", 80),
    ("http://bücher.de/x.jpg", "bücher.de", 80),
    ("http://img_cdn.example.com./x.jpg", "img_cdn.example.com.", 80),
])
def test_urls_are_read_as_urllib_reads_them(url, host, port):
    # pure parsing: nothing is resolved or sent
    assert parse_target(url) == Target(url.split(":")[0], host, port)


@pytest.mark.parametrize("url, why", [
    ("http://user:pass@127.0.0.1:18080/x.jpg", "userinfo"),
    ("http://user@example.com/x.jpg", "userinfo"),
    ("http://127.0.0.1:18080:18080/", "Port could not be cast"),  # urllib's host would be '127.0.0.1:18080'
    ("http://127.0.0.1:99999/", "out of range"),
    ("ftp://127.0.0.1/a.jpg", "only http and https"),
    ("/relative.jpg", "only http and https"),
    ("http:///x.jpg", "not a host name"),
    ("http://127.1/x.jpg", "not a host name"),  # inet_aton would read these as 127.0.0.1
    ("http://0x7f.0.0.1/x.jpg", "not a host name"),
    ("http://2130706433/x.jpg", "not a host name"),
    ("http://a..b/x.jpg", "not a host name"),
    ("http://-a.example/x.jpg", "not a host name"),
    ("http://a b.example/x.jpg", "not a host name"),
])
def test_urls_that_are_not_fetched_are_invalid_before_any_lookup(url, why):
    with pytest.raises(InvalidURL, match=f"^invalid_url: .*{why}"):
        parse_target(url)


def test_userinfo_only_when_allowed_and_host_names_checked_as_strings():
    assert parse_target("http://user:pass@127.0.0.1:18080/x.jpg", allow_userinfo=True).host == "127.0.0.1"
    assert is_host_name("127.0.0.1") and is_host_name("::1") and is_host_name("xn--bcher-kva.de")
    for bad in ("user:pass@127.0.0.1", "127.0.0.1:18080", "", "a" * 64 + ".com", "x.123"):
        assert not is_host_name(bad), bad


def test_default_crawl_of_loopback_is_refused_and_sends_nothing(tmp_path, image_server, real_images):
    rows = [(f"{image_server.url}/img/{n}", "x") for n in sorted(real_images)[:3]]
    r = wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(tmp_path / "o"), *FAST)
    assert r.returncode == 2 and "pass --allow-net CIDR" in r.stderr, r.stderr  # every row refused: say which flag
    assert set(manifests(tmp_path / "o")["reason"].to_pylist()) == {"ssrf_blocked"}
    assert image_server.requests == []  # the server never saw a request


def test_redirect_to_a_host_outside_the_allow_list_is_refused(tmp_path, image_server, real_images):
    name = sorted(real_images)[0]
    with LoopbackImageServer(real_images, host="127.0.0.2") as other:
        target = f"{other.url}/img/{name}"
        rows = [(f"{image_server.url}/redirect?to={target}", "redirected"), (f"{image_server.url}/img/{name}", "direct")]
        r = wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(tmp_path / "o"),
                "--allow-net", "127.0.0.1/32", *FAST)
        assert r.returncode == 0, r.stderr
        by_caption = {row["caption"]: row for row in manifests(tmp_path / "o").to_pylist()}
        assert by_caption["redirected"]["reason"] == "ssrf_blocked"
        assert by_caption["direct"]["status"] == "ok"
        assert other.requests == []  # the redirect target on 127.0.0.2 was never contacted
        assert any(p.startswith("/redirect") for p in image_server.requests)


def test_bad_allow_net_is_a_clear_error(tmp_path):
    lst = write_csv(tmp_path / "l.csv", [("http://127.0.0.1:9/x.jpg", "x")])
    r = wit("download", str(lst), "--out", str(tmp_path / "o"), "--allow-net", "localhost", *FAST)
    assert r.returncode == 2 and "--allow-net: 'localhost' is not an IP network" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
