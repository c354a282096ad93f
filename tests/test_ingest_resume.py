"""Resume: a crawl killed with SIGKILL, or a shard damaged on disk, is finished by running the command again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import write_csv
from tests.ingest_helpers import REPO, manifests, tar_samples, wit


def _rows(server, images, n_shards=6, per_shard=4):
    names = sorted(images)
    rows = []
    for s in range(n_shards):
        rows += [(f"{server.url}/img/{names[(s * 3 + i) % len(names)]}", f"shard {s} photo {i}") for i in range(per_shard - 1)]
        rows.append((f"{server.url}/slow/{names[s % len(names)]}", f"shard {s} slow"))  # makes each shard take ~2 s
    return rows


def _check_complete(out, rows):
    m = manifests(out).to_pylist()
    assert sorted(r["source_row"] for r in m) == list(range(len(rows)))  # no row missing or doubled
    samples = tar_samples(out)  # reads every tar to its end; asserts no key twice
    ok = {r["key"] for r in m if r["status"] == "ok"}
    assert set(samples) == ok
    assert all(s.keys() == {"jpg", "txt", "json"} and len(s["jpg"]) > 1000 for s in samples.values())
    return m


def test_sigkill_mid_crawl_then_rerun_finishes_exactly(tmp_path, image_server, real_images):
    rows = _rows(image_server, real_images)
    lst = write_csv(tmp_path / "l.csv", rows)
    out = tmp_path / "out"
    args = ["download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", "--shard-size", "4",
            "--timeout", "2", "--processes", "1", "--threads", "4", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "wit", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*_stats.json")):
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, workers included, as a scheduler would
    proc.wait()
    finished = len(list(out.glob("*_stats.json")))
    assert 1 <= finished < 6, "the kill should land mid-crawl"

    r = wit(*args)
    assert r.returncode == 0, r.stderr
    assert f"this run      {6 - finished} shards" in r.stdout  # finished shards were trusted, not redone
    m = _check_complete(out, rows)
    assert sum(r["status"] == "ok" for r in m) == 18
    assert not (out / "_wit" / "staging").exists()


def test_damaged_shard_is_redone(tmp_path, image_server, real_images):
    rows = [(f"{image_server.url}/img/{n}", f"photo {i}") for i, n in enumerate(sorted(real_images)[:8])]
    lst = write_csv(tmp_path / "l.csv", rows)
    out = tmp_path / "out"
    args = ["download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", "--shard-size", "4",
            "--processes", "1", "--no-progress"]
    assert wit(*args).returncode == 0
    tar = out / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # cut short, as a crash of the disk would
    (out / "00000_stats.json").unlink()  # a tar and manifest with no stats, as a kill leaves them: never trusted
    (out / "00002.tar").write_bytes(b"not this crawl's")  # a shard the run record does not list: never touched

    r = wit(*args)
    assert r.returncode == 0, r.stderr
    assert "redoing shard 00001" in r.stdout and "this run      2 shards" in r.stdout
    assert (out / "00002.tar").read_bytes() == b"not this crawl's"
    (out / "00002.tar").unlink()
    _check_complete(out, rows)


def test_rerun_with_other_lists_is_refused(tmp_path, image_server, real_images):
    names = sorted(real_images)
    a = write_csv(tmp_path / "a.csv", [(f"{image_server.url}/img/{names[0]}", "a")])
    b = write_csv(tmp_path / "b.csv", [(f"{image_server.url}/img/{names[1]}", "b")])
    out = str(tmp_path / "out")
    assert wit("download", str(a), "--out", out, "--allow-net", "127.0.0.1/32", "--no-progress").returncode == 0
    r = wit("download", str(b), "--out", out, "--allow-net", "127.0.0.1/32", "--no-progress")
    assert r.returncode == 2 and "holds a crawl of other lists" in r.stderr


def test_a_project_folder_moved_elsewhere_is_the_same_crawl(tmp_path, image_server, real_images):
    """The run record names the lists by where they were; the content decides: a project moved (or copied) with its
    lists resumes in place, with no request made again."""
    rows = [(f"{image_server.url}/img/{n}", f"photo {i}") for i, n in enumerate(sorted(real_images)[:8])]
    project = tmp_path / "before"
    project.mkdir()
    write_csv(project / "l.csv", rows)

    def crawl(where):
        return wit("download", str(where / "l.csv"), "--out", str(where / "raw"), "--allow-net", "127.0.0.1/32",
                   "--shard-size", "4", "--processes", "1", "--no-progress")

    assert crawl(project).returncode == 0
    asked = len(image_server.requests)
    moved = project.rename(tmp_path / "after")
    r = crawl(moved)
    assert r.returncode == 0, r.stderr
    assert "this run      0 shards" in r.stdout and len(image_server.requests) == asked, r.stdout
    _check_complete(moved / "raw", rows)


def _private_tmpfs_shell(probe) -> list[str]:
    """A shell in its own mount namespace, where it may mount a small tmpfs; skip when this machine allows none."""
    import shutil

    for cmd in (["unshare", "--mount", "--map-root-user"], ["unshare", "--mount"]):
        if shutil.which("unshare") and subprocess.run(
                [*cmd, "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"], capture_output=True).returncode == 0:
            return [*cmd, "sh", "-c"]
    import pytest

    pytest.skip("needs a tmpfs that fills up: `unshare --mount` (a private mount namespace) is not allowed here")


def test_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, image_server, real_images):
    names = sorted(real_images)
    rows = [(f"{image_server.url}/img/{names[i % len(names)]}", f"photo {i}") for i in range(200)]
    lst = write_csv(tmp_path / "l.csv", rows)
    disk, report = tmp_path / "disk", tmp_path / "report"
    disk.mkdir()
    report.mkdir()
    # shards larger than img2dataset's 2 x threads samples in flight: a worker must not leave its loop early
    crawl = (f"{sys.executable} -m wit download {lst} --out {disk}/out --allow-net 127.0.0.1/32 --shard-size 50 "
             "--processes 2 --threads 2 --no-progress")
    # all inside one private mount namespace: a 3 MB disk fills up after a few shards, then it grows and the same
    # command runs again; the tmpfs (and the crawl on it) ends with the namespace, so it is checked in there
    script = f"""
        mount -t tmpfs -o size=3m tmpfs {disk} || exit 99
        {crawl} > {report}/full.out 2> {report}/full.err; echo $? > {report}/full.rc
        ls {disk}/out > {report}/full.ls
        mount -o remount,size=256m {disk}
        {crawl} > {report}/again.out 2> {report}/again.err; echo $? > {report}/again.rc
        {sys.executable} -c "from wit.shards.verify import shard_names, verify_shard
names = shard_names('{disk}/out'); print(len(names), all(verify_shard('{disk}/out', n).ok for n in names))" \
            > {report}/verified
    """
    r = subprocess.run([*_private_tmpfs_shell(disk), script], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    full_err = (report / "full.err").read_text().strip().splitlines()
    assert (report / "full.rc").read_text().strip() == "2"
    assert len(full_err) == 1 and "no space left on device" in full_err[0] and f"{disk}/out" in full_err[0], full_err
    assert "Traceback" not in (report / "full.out").read_text()
    assert "_wit" in (report / "full.ls").read_text()
    assert (report / "again.rc").read_text().strip() == "0", (report / "again.err").read_text()[-2000:]
    assert "ok            200\n" in (report / "again.out").read_text()
    assert (report / "verified").read_text().split() == ["4", "True"]


def test_a_resume_trusts_a_shards_verified_marker_until_its_files_change(tmp_path, image_server, real_images):
    from wit.shards.verify import check_shards, verify_shard

    rows = [(f"{image_server.url}/img/{n}", f"photo {i}") for i, n in enumerate(sorted(real_images)[:8])]
    out = tmp_path / "out"
    assert wit("download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(out), "--allow-net",
               "127.0.0.1/32", "--shard-size", "4", "--processes", "1", "--no-progress").returncode == 0
    markers = out / "_wit" / "verified"
    assert sorted(p.name for p in markers.iterdir()) == ["00000.json", "00001.json"]  # written by finish_shard

    tar = out / "00000.tar"
    stat = tar.stat()
    data = bytearray(tar.read_bytes())
    data[0:8] = b"garbage!"  # the first header no longer sums to its checksum: unreadable
    tar.write_bytes(bytes(data))
    os.utime(tar, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert not verify_shard(str(out), "00000").ok
    checks = check_shards((str(out), ["00000", "00001"]))
    assert [(c.name, c.ok, c.samples) for c in checks] == [("00000", True, 4), ("00001", True, 4)]  # not read

    os.utime(tar)  # the tar changed since it was verified: read in full, and refused
    (markers / "00001.json").unlink()  # no marker: read in full, passed, and marked again
    first, second = check_shards((str(out), ["00000", "00001"]))
    assert not first.ok and "tar unreadable" in first.problem and "bad header checksum" in first.problem
    assert second.ok and (markers / "00001.json").exists()
