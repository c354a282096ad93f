"""A crawl under stress: a worker killed by the kernel, a deadline that covers every robots.txt a row waits for, the
rate floor and small images, URLs and answers that name no place to go, and outputs, records and inputs that are
not what they should be (one line each, nothing of the user's touched)."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_csv
from tests.ingest_helpers import FAST, REPO, manifests, wit
from wit.ingest.guard import InvalidURL, parse_target
from wit.ingest.loopback import LoopbackImageServer

DEAD = "http://127.0.0.1:9"  # a closed port on loopback: every fetch fails at once, a crawl takes no time


def by_caption(out):
    return {row["caption"]: row for row in manifests(out).to_pylist()}


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _pool_workers(pid: int) -> list[int]:
    def cmdline(kid):
        try:
            return Path(f"/proc/{kid}/cmdline").read_bytes()
        except OSError:
            return b""

    return [kid for kid in _children(pid) if b"spawn_main" in cmdline(kid)]


@pytest.mark.timeout(240)
def test_a_worker_killed_by_the_kernel_loses_no_shard_and_hangs_nothing(tmp_path, real_images):
    names = sorted(real_images)
    with LoopbackImageServer(real_images, host="127.0.0.12", delay_seconds=0.5) as server:
        rows = [(f"{server.url}/delay/{names[i % len(names)]}", f"photo {i}") for i in range(12)]
        out = tmp_path / "out"
        args = ["download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(out), "--allow-net",
                "127.0.0.12/32", "--shard-size", "3", "--processes", "2", "--threads", "1", "--no-progress"]
        proc = subprocess.Popen([sys.executable, "-m", "wit", *args], cwd=REPO, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for _ in range(1200):  # until a worker is fetching a shard's images (bounded: 120 s)
                if any(p.startswith("/delay/") for p in server.requests) and _pool_workers(proc.pid):
                    break
                time.sleep(0.1)
            victim = _pool_workers(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)  # what the out-of-memory killer does
            try:
                stdout, stderr = proc.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the crawl still runs 150 s after worker {victim} was killed: it hangs")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, stderr
    assert "a worker process died (killed?): starting the pool again" in stderr, stderr
    got = by_caption(out)
    assert len(got) == 12 and all(row["status"] == "ok" for row in got.values()), got
    assert "this run      4 shards" in stdout, stdout


def test_the_deadline_covers_the_robots_txt_of_every_hop(tmp_path, real_images):
    name = sorted(real_images)[0]
    with LoopbackImageServer(real_images, host="127.0.0.13", robots_delay=2.0) as first, \
            LoopbackImageServer(real_images, host="127.0.0.14", robots_delay=2.0) as second:
        rows = [(f"{first.url}/redirect?to={second.url}/img/{name}", "two slow robots.txt")]
        out = tmp_path / "out"
        r = wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(out), "--allow-net",
                "127.0.0.0/8", "--timeout", "10", "--deadline", "3", "--processes", "1", "--no-progress")
        assert r.returncode == 0, r.stderr
        row = by_caption(out)["two slow robots.txt"]
        # each robots.txt alone fits in 3 s, both do not: the row ends at its deadline, waiting for the second
        assert (row["status"], row["reason"]) == ("failed", "deadline"), row["detail"]
        assert f"robots.txt of {second.host}:{second.port}" in row["detail"], row["detail"]
        assert f"/img/{name}" not in second.requests


def test_a_robots_txt_no_row_waits_for_any_more_fails_without_a_lost_error(real_images, caplog):
    """In process: the row gives up on the second host's robots.txt at its deadline; that fetch, left to run, then
    fails on its own deadline. Its error is read where it is kept, not logged as a task's error nobody retrieved
    (a traceback in a worker's output when the task is collected)."""
    import asyncio
    import gc

    from wit.ingest.crawl_stats import FetchStats
    from wit.ingest.fetch import FetchSettings, fetcher
    from wit.ingest.guard import GuardPolicy

    name = sorted(real_images)[0]
    with LoopbackImageServer(real_images, host="127.0.0.16", robots_delay=1.0) as first, \
            LoopbackImageServer(real_images, host="127.0.0.17", robots_delay=6.0) as second:
        fetch = fetcher(FetchSettings(policy=GuardPolicy(allow_nets=("127.0.0.16/31",)), timeout=10, deadline=2))
        url = f"{first.url}/redirect?to={second.url}/img/{name}"
        [(_, body, error)] = list(fetch.fetch_rows([(0, url)], FetchStats()))
        assert body is None and error.startswith("deadline: robots.txt of 127.0.0.17"), error

        async def robots_done():
            host = fetch.hosts.get(f"{second.host}:{second.port}")
            while not host.robots.done():  # its own deadline (2 s) ends it
                await asyncio.sleep(0.05)
            host.robots = None  # forgotten, as a host that no row needs any more

        asyncio.run_coroutine_threadsafe(robots_done(), fetch.loop).result(timeout=60)
        with caplog.at_level("ERROR", logger="asyncio"):
            gc.collect()
    assert "exception was never retrieved" not in caplog.text, caplog.text


def test_the_rate_floor_lets_a_small_image_finish_that_ends_well_inside_the_deadline(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((40, 40), 60).convert("RGB").save(buf, "JPEG", quality=90)
    small = buf.getvalue()
    assert len(small) < 3 * 1024  # under one 3 s window of the 1,024 bytes/s floor
    with LoopbackImageServer({"small.jpg": small}, host="127.0.0.15", slowok_delay=0.1, slowok_seconds=4.0) as server:
        rows = [(f"{server.url}/slowok/small.jpg", "small and slow")]
        out = tmp_path / "out"
        r = wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(out), "--allow-net",
                "127.0.0.15/32", "--min-rate", "1024", "--timeout", "10", "--deadline", "30", "--processes", "1",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    row = by_caption(out)["small and slow"]
    assert row["status"] == "ok", row["detail"]


def test_port_zero_and_a_redirect_without_location_are_no_answer(tmp_path, image_server, real_images):
    name = sorted(real_images)[0]
    rows = [("http://127.0.0.1:0/img/x.jpg", "port 0"),
            (f"{image_server.url}/redirect?to=http://127.0.0.1:0/img/x.jpg", "redirect to port 0"),
            (f"{image_server.url}/nolocation/{name}", "302 without Location"),
            (f"{image_server.url}/img/{name}", "good")]
    out = tmp_path / "out"
    r = wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(out), "--allow-net", "127.0.0.1/32",
            *FAST)
    assert r.returncode == 0, r.stderr
    got = {caption: (row["status"], row["reason"]) for caption, row in by_caption(out).items()}
    assert got == {"port 0": ("failed", "invalid_url"), "redirect to port 0": ("failed", "invalid_url"),
                   "302 without Location": ("failed", "bad_response"), "good": ("ok", None)}


def test_port_zero_is_not_the_default_port():
    with pytest.raises(InvalidURL, match="port 0"):
        parse_target("http://127.0.0.1:0/x.jpg")
    assert parse_target("http://127.0.0.1:/x.jpg").port == 80  # an empty port is the default one


def test_an_output_in_a_bucket_that_does_not_exist_is_refused_and_not_created(tmp_path, s3_server):
    import s3fs

    lst = write_csv(tmp_path / "l.csv", [(f"{DEAD}/x.jpg", "cat")])
    r = wit("download", str(lst), "--out", "s3://wit-no-such-bucket/raw", "--allow-net", "127.0.0.1/32", *FAST,
            "--processes", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bucket 'wit-no-such-bucket' does not exist" in lines[0], r.stderr
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    assert not fs.exists("wit-no-such-bucket")


def test_a_crawl_whose_out_is_inside_its_lists_folder_resumes(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    write_csv(lists / "part-0.csv", [(f"{DEAD}/{i}.jpg", f"cat {i}") for i in range(3)])
    args = ["download", str(lists), "--out", str(lists / "raw"), "--allow-net", "127.0.0.1/32", "--shard-size", "2",
            *FAST, "--processes", "1"]
    assert wit(*args).returncode == 0
    r = wit(*args)  # the crawl's own manifests and input are not read as lists
    assert r.returncode == 0 and "this run      0 shards" in r.stdout, r.stdout + r.stderr


def _dead_crawl(folder: Path) -> list[str]:
    """The arguments of a crawl of three rows on a closed port, in one process (no pool to start: quick)."""
    lst = write_csv(folder / "l.csv", [(f"{DEAD}/{i}.jpg", f"cat {i}") for i in range(3)])
    return ["download", str(lst), "--out", str(folder / "out"), "--allow-net", "127.0.0.1/32", "--shard-size", "2",
            *FAST, "--processes", "1"]


@pytest.fixture(scope="module")
def dead_crawl(tmp_path_factory):
    """A finished crawl to copy: (its folder, the arguments that made it)."""
    folder = tmp_path_factory.mktemp("dead")
    args = _dead_crawl(folder)
    assert wit(*args).returncode == 0
    return folder, args


def _copy(dead_crawl, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the crawl's output, and the arguments that resume it (the same list: the record names it)."""
    folder, args = dead_crawl
    out = shutil.copytree(folder / "out", tmp_path / "out")
    return out, [str(out) if a == str(folder / "out") else a for a in args]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "lock"}  # the lock names the last run that held it


GARBLED = {"garbage": b"\x00\x01 not json", "empty": b"", "a list": b"[1, 2]"}


@pytest.mark.parametrize("record", GARBLED.values(), ids=GARBLED.keys())
def test_a_garbled_run_record_is_one_line_and_nothing_is_touched(tmp_path, dead_crawl, record):
    out, args = _copy(dead_crawl, tmp_path)
    (out / "_wit" / "run.json").write_bytes(record)
    before = _tree(out)
    r = wit(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out / '_wit' / 'run.json'}: not a readable run record" in lines[0], r.stderr
    assert _tree(out) == before


def test_a_half_written_input_is_built_again_not_trusted(tmp_path, dead_crawl):
    out, args = _copy(dead_crawl, tmp_path)
    normalised = out / "_wit" / "input" / "00000.parquet"
    normalised.write_bytes(normalised.read_bytes()[: normalised.stat().st_size // 2])
    (out / "00001_stats.json").unlink()  # a shard to redo, so the crawl reads its input again
    r = wit(*args)
    assert r.returncode == 0, r.stderr
    assert "this run      1 shards" in r.stdout, r.stdout
    assert sorted(row["source_row"] for row in manifests(out).to_pylist()) == [0, 1, 2]
