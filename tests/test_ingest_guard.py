"""The network guard, on loopback only: refused by default, allow-list honoured, redirects re-checked."""
from __future__ import annotations

import pytest

from wit.ingest.guard import Blocked, GuardPolicy
from wit.ingest.loopback import LoopbackImageServer
from tests.conftest import write_csv
from tests.ingest_helpers import FAST, manifests, wit


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "127.0.0.2", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1",
           "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "192.0.2.1", "2001:db8::1",
           "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a00:1::1", "2001:0:4136:e378:8000:63bf:80ff:fffe"],
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


def test_default_crawl_of_loopback_is_refused_and_sends_nothing(tmp_path, image_server, real_images):
    rows = [(f"{image_server.url}/img/{n}", "x") for n in sorted(real_images)[:3]]
    r = wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(tmp_path / "o"), *FAST)
    assert r.returncode == 0, r.stderr
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
