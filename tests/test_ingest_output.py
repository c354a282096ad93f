"""The output folder belongs to the user until a crawl's run record says otherwise; a crawl deletes only its own."""
from __future__ import annotations

from pathlib import Path

from wit.ingest.output import name_width, own_shard_file, own_shards, shard_name
from tests.conftest import write_csv
from tests.ingest_helpers import FAST, wit

# a closed port on loopback: every fetch fails at once, so a crawl takes no time and needs no server
DEAD = "http://127.0.0.1:9"


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _user_files(folder: Path) -> None:
    for name, body in (("2024_taxes.pdf", b"t"), ("7.png", b"i"), ("notes.txt", b"k"), ("1.txt", b"1"),
                       ("0042.jpg", b"j"), ("00099.tar", b"another dataset"), ("00099_stats.json", b"{}")):
        (folder / name).write_bytes(body)
    (folder / "2023").mkdir()
    (folder / "2023" / "photo.jpg").write_bytes(b"p")


def test_a_folder_that_is_not_a_crawl_is_refused_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _user_files(out)
    (out / "00000.tar").write_bytes(b"another dataset's shard")
    (out / "00000_stats.json").write_bytes(b"{}")
    before = _tree(out)
    lst = write_csv(tmp_path / "l.csv", [(f"{DEAD}/x.jpg", "cat")])
    r = wit("download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", *FAST)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty and not a wit crawl" in lines[0] and str(out) in lines[0], r.stderr
    assert _tree(out) == before  # nothing deleted, nothing written


def test_a_crawl_deletes_only_the_shards_its_run_record_lists(tmp_path):
    lst = write_csv(tmp_path / "l.csv", [(f"{DEAD}/{i}.jpg", f"cat {i}") for i in range(3)])
    out = tmp_path / "out"
    args = ["download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", "--shard-size", "2", *FAST]
    assert wit(*args).returncode == 0
    _user_files(out)  # the user keeps other things beside the crawl, with names that start with digits
    user = {k: v for k, v in _tree(out).items() if not k.startswith(("0000", "_wit"))}
    (out / "00001.parquet.tmp-0123abcd").write_bytes(b"left by a killed write")  # ours: removed
    (out / "00001_stats.json").unlink()  # shard 1 unfinished: its tar and manifest are ours to redo

    r = wit(*args)
    assert r.returncode == 0, r.stderr
    after = _tree(out)
    assert {k: v for k, v in after.items() if k in user} == user  # every user file and folder is still there
    assert "00001.parquet.tmp-0123abcd" not in after
    assert {"00000.tar", "00001.tar", "00001_stats.json"} <= set(after)
    assert "this run      1 shards" in r.stdout


def test_own_shard_file_knows_its_names():
    shards = own_shards({"rows": [5, 3], "shard_size": 2, "retries": [[100_000, 100_002]]})
    assert shards.ranges == (range(5), range(100_000, 100_002))
    assert shards.width == 5  # a record from before the width was kept: img2dataset's five digits
    assert own_shard_file("00004.tar", shards) == (4, False)
    assert own_shard_file("00004_stats.json.tmp-0123abcd", shards) == (4, True)
    assert own_shard_file("100001.parquet", shards) == (100_001, False)  # six digits past 99,999
    for name in ("00005.tar", "4.tar", "0004.tar", "000004.tar", "00004.png", "00004", "00004.tar.bak",
                 "2023", "099999.tar", "100002.tar", "0000\u00b2.tar"):
        assert own_shard_file(name, shards) is None, name

    wide = own_shards({"rows": [5], "shard_size": 1, "retries": [[5, 7]], "name_width": 6})
    assert own_shard_file("000004.tar", wide) == (4, False) and own_shard_file("000006_stats.json", wide) == (6, False)
    for name in ("00004.tar", "0000004.tar", "000007.tar"):  # another width's name is not this crawl's
        assert own_shard_file(name, wide) is None, name


def test_the_name_width_leaves_room_for_nine_full_retries():
    assert [name_width(p) for p in (0, 1, 9_999, 10_000)] == [5, 5, 5, 5]  # img2dataset's names, as always
    assert [name_width(p) for p in (10_001, 100_000, 100_001, 160_000)] == [6, 6, 7, 7]
    for planned in (1, 7, 10_000, 10_001, 123_456, 160_000, 10**9):
        width = name_width(planned)
        last = planned + 9 * planned - 1  # the crawl's shards, then nine retries as large as the crawl
        names = [shard_name(n, width) for n in (0, planned - 1, planned, last)]
        assert {len(n) for n in names} == {width}, (planned, names)
        assert sorted(names) == names  # so they list in shard order as text


def test_a_second_run_on_a_locked_output_is_refused_in_one_line(tmp_path):
    from wit.ingest.lock import crawl_lock

    lst = write_csv(tmp_path / "l.csv", [(f"{DEAD}/x.jpg", "cat")])
    out = tmp_path / "out"
    args = ["download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", *FAST]
    assert wit(*args).returncode == 0  # the lock of a run that ended is free again
    before = _tree(out)
    with crawl_lock(str(out)):  # another run holds it (a real flock, seen across processes)
        for extra in ((), ("--retry-failed",)):
            r = wit(*args, *extra)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, r.stderr
            assert "another wit download is writing here (pid " in lines[0] and str(out) in lines[0], r.stderr
    assert {k: v for k, v in _tree(out).items() if k != "_wit/lock"} == {
        k: v for k, v in before.items() if k != "_wit/lock"}  # the refused runs touched nothing


def test_object_store_lock_is_a_conditional_put(s3_bucket):
    import json
    import os
    import socket
    import subprocess
    import sys

    import pytest
    import s3fs

    from wit.ingest.lock import crawl_lock
    from wit.shards.storage import WitError

    out = f"{s3_bucket}/raw"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    with crawl_lock(out):
        with pytest.raises(WitError, match="another wit download is writing here"):
            with crawl_lock(out):
                pass
        assert json.loads(fs.cat_file(f"{out}/_wit/lock"))["pid"] == os.getpid()
    assert not fs.exists(f"{out}/_wit/lock")  # removed when the run ends

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"pid": int(gone.stdout), "host": socket.gethostname(), "since": "then", "token": "x"}
    fs.pipe_file(f"{out}/_wit/lock", json.dumps(dead).encode())  # left by a run killed on this host
    with crawl_lock(out):
        assert json.loads(fs.cat_file(f"{out}/_wit/lock"))["pid"] == os.getpid()  # taken over
    elsewhere = {**dead, "host": "another-host"}
    fs.pipe_file(f"{out}/_wit/lock", json.dumps(elsewhere).encode())  # a run elsewhere: it may still be writing
    with pytest.raises(WitError, match=r"another-host.*delete s3://"):
        with crawl_lock(out):
            pass
