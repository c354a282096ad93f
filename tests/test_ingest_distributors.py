"""The crawl on img2dataset's other distributors, with wit's fetcher: Ray (local) and pyspark (local[2]) give the
same normalised inputs, run record, manifests and tars as multiprocessing, row for row. Under Ray the per-file
steps (prepare_inputs' normalising and repeat numbering, the resume's verify_shards) run through run_map on Ray."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_csv
from tests.ingest_helpers import manifests, tar_samples, wit

COLUMNS = ["source_file", "source_row", "uid", "status", "reason", "shard", "key", "width", "height", "sha256"]
RECORD = ["lists", "rows", "shard_size", "pairs_sha256", "name_width"]


def snapshot(out: Path) -> dict:
    """What a crawl leaves: its normalised inputs, run record, manifest rows, uids and tar samples."""
    record = json.loads((out / "_wit" / "run.json").read_text())
    rows = sorted(manifests(out).select(COLUMNS).to_pylist(), key=lambda r: (r["source_file"], r["source_row"]))
    return {
        "inputs": {p.name: pq.read_table(p).to_pylist() for p in sorted((out / "_wit" / "input").glob("*.parquet"))},
        "record": {k: record[k] for k in RECORD},
        "manifests": rows,
        "uids": {r["uid"] for r in rows},
        "samples": {key: {ext: hashlib.sha256(data).hexdigest() for ext, data in sample.items()}
                    for key, sample in tar_samples(out).items()},
    }


@pytest.fixture(scope="module")
def crawl(tmp_path_factory, real_images):
    """Two lists (photos, a pair repeated across them, a robots.txt opt-out, faults) over loopback servers.
    Yields (args of the crawl, servers' lists, the multiprocessing crawl's snapshot)."""
    from wit.ingest.loopback import LoopbackImageServer

    names = sorted(real_images)
    with LoopbackImageServer(real_images) as server, \
            LoopbackImageServer(real_images, host="127.0.0.2", robots_txt="User-agent: wit\nDisallow: /img/\n") as opted:
        rows = [(f"{server.url}/img/{n}", f"photo {i}") for i, n in enumerate(names[:7])]
        rows += [(f"{server.url}/404", "gone"), (f"{server.url}/cut/{names[0]}", "cut"),
                 (f"{server.url}/tdm/{names[1]}", "reserved"), (f"{opted.url}/img/{names[2]}", "robots")]
        folder = tmp_path_factory.mktemp("lists")
        lists = [write_csv(folder / "l.csv", rows),
                 write_csv(folder / "m.csv", [rows[3], (f"{server.url}/img/{names[7]}", "photo 7")])]  # a repeat

        def run(distributor: str, env: dict | None = None) -> Path:
            out = tmp_path_factory.mktemp(distributor) / "out"
            r = wit("download", *map(str, lists), "--out", str(out), "--allow-net", "127.0.0.0/8",
                    "--shard-size", "4", "--timeout", "5", "--processes", "2", "--threads", "4", "--no-progress",
                    "--distributor", distributor, timeout=900, env=env)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
            return out

        reference = snapshot(run("multiprocessing"))
        reasons = {row["reason"] for row in reference["manifests"]}
        assert sum(row["status"] == "ok" for row in reference["manifests"]) == 9
        assert reasons == {None, "http_404", "connection_reset", "tdm_reserved", "robots_disallowed"}
        assert len(reference["uids"]) == 13  # the repeated pair has a uid of its own
        yield run, lists, reference


def test_ray_gives_the_process_pools_inputs_manifests_and_shards_and_resumes_through_ray(crawl, tmp_path):
    ray = pytest.importorskip("ray", reason="needs ray (pip install 'wit[ray]')")
    from wit.ingest.config import DownloadConfig
    from wit.ingest.download import download

    _, lists, reference = crawl
    out = tmp_path / "out"
    cfg = DownloadConfig(lists=tuple(map(str, lists)), out=str(out), allow_net=("127.0.0.0/8",), shard_size=4,
                         timeout=5, processes=2, threads=4, progress=False, distributor="ray")
    try:  # one local Ray session for both runs: prepare_inputs starts it, the fetch and the resume join it
        assert not download(cfg)["missing_shards"]
        assert snapshot(out) == reference
        # the resume's verify_shards on Ray: no markers, so every tar is read there, and shard 00001 is cut short;
        # the lists look changed (mtime), so prepare_inputs normalises them on Ray again and finds the same content
        for marker in (out / "_wit" / "verified").glob("*.json"):
            marker.unlink()
        tar = out / "00001.tar"
        tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
        for lst in lists:
            os.utime(lst)
        summary = download(cfg)
        assert summary["this_run"]["shards"] == 1 and not summary["missing_shards"]  # only 00001 was redone
        assert sorted(p.name for p in (out / "_wit" / "verified").glob("*.json")) == [
            f"0000{i}.json" for i in range(4)]  # the three that passed were marked on Ray
        assert snapshot(out) == reference
    finally:
        ray.shutdown()


@pytest.mark.spark  # `make test-spark`: a JVM and pyspark (the `spark` extra), kept out of `make test`
def test_pyspark_gives_the_multiprocessing_manifests(crawl):
    pytest.importorskip("pyspark", reason="needs pyspark (pip install 'wit[spark]') and Java")
    run, _, reference = crawl
    env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "JAVA_TOOL_OPTIONS": os.environ.get("JAVA_TOOL_OPTIONS", "")}
    assert snapshot(run("pyspark", env)) == reference
