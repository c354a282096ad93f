"""The crawl on img2dataset's other distributors, with wit's fetcher: Ray (local) and pyspark (local[2]) give the
same manifests as multiprocessing, row for row."""
from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import write_csv
from tests.ingest_helpers import manifests, wit

COLUMNS = ["source_row", "uid", "status", "reason", "shard", "key", "width", "height", "sha256"]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory, real_images):
    """One list (photos, a robots.txt opt-out, faults) over loopback servers; crawl(distributor) -> its rows."""
    from wit.ingest.loopback import LoopbackImageServer

    names = sorted(real_images)
    with LoopbackImageServer(real_images) as server, \
            LoopbackImageServer(real_images, host="127.0.0.2", robots_txt="User-agent: wit\nDisallow: /img/\n") as opted:
        rows = [(f"{server.url}/img/{n}", f"photo {i}") for i, n in enumerate(names[:7])]
        rows += [(f"{server.url}/404", "gone"), (f"{server.url}/cut/{names[0]}", "cut"),
                 (f"{server.url}/tdm/{names[1]}", "reserved"), (f"{opted.url}/img/{names[2]}", "robots")]
        lst = write_csv(tmp_path_factory.mktemp("list") / "l.csv", rows)

        def run(distributor: str, env: dict | None = None) -> list[dict]:
            out = tmp_path_factory.mktemp(distributor) / "out"
            r = wit("download", str(lst), "--out", str(out), "--allow-net", "127.0.0.0/8", "--shard-size", "4",
                    "--timeout", "5", "--processes", "2", "--threads", "4", "--no-progress",
                    "--distributor", distributor, timeout=900, env=env)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
            return sorted(manifests(out).select(COLUMNS).to_pylist(), key=lambda row: row["source_row"])

        reference = run("multiprocessing")
        reasons = {row["reason"] for row in reference}
        assert sum(row["status"] == "ok" for row in reference) == 7
        assert reasons == {None, "http_404", "connection_reset", "tdm_reserved", "robots_disallowed"}
        yield run, reference


def test_ray_gives_the_multiprocessing_manifests(crawl):
    pytest.importorskip("ray", reason="needs ray (pip install 'wit[ray]')")
    run, reference = crawl
    assert run("ray", {"RAY_AUTH_MODE": "disabled"}) == reference


@pytest.mark.spark  # `make test-spark`: a JVM and pyspark (the `spark` extra), kept out of `make test`
def test_pyspark_gives_the_multiprocessing_manifests(crawl):
    pytest.importorskip("pyspark", reason="needs pyspark (pip install 'wit[spark]') and Java")
    run, reference = crawl
    env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "JAVA_TOOL_OPTIONS": os.environ.get("JAVA_TOOL_OPTIONS", "")}
    assert run("pyspark", env) == reference
