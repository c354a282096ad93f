"""--retry-failed on transient failures, and the same crawl to and from a real S3 server on 127.0.0.1."""
from __future__ import annotations

import pyarrow.parquet as pq

from wit.shards.verify import shard_names, verify_shard
from tests.conftest import write_csv
from tests.ingest_helpers import FAST, manifests, wit


def test_retry_failed_supersedes_transient_failures(tmp_path, image_server, real_images):
    names = sorted(real_images)
    rows = [(f"{image_server.url}/img/{names[0]}", "good"), (f"{image_server.url}/flaky/{names[1]}", "flaky"),
            (f"{image_server.url}/404", "gone"), (f"{image_server.url}/flaky/{names[2]}", "flaky too")]
    lst = write_csv(tmp_path / "l.csv", rows)
    out = tmp_path / "out"
    args = ["download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", *FAST]
    assert wit(*args).returncode == 0
    first = {r["caption"]: r for r in manifests(out).to_pylist()}
    assert first["flaky"]["reason"] == "http_503" and first["gone"]["reason"] == "http_404"

    r = wit(*args, "--retry-failed")
    assert r.returncode == 0, r.stderr
    assert "retrying 2 rows" in r.stdout
    m = manifests(out).to_pylist()
    live = [row for row in m if row["status"] != "superseded"]
    assert sorted(row["source_row"] for row in live) == [0, 1, 2, 3]  # the row count still adds up
    by_caption = {row["caption"]: row for row in live}
    assert by_caption["flaky"]["status"] == by_caption["flaky too"]["status"] == "ok"
    assert by_caption["flaky"]["shard"] == "00001"
    assert by_caption["gone"]["reason"] == "http_404"  # not transient: not retried
    old = [row for row in m if row["status"] == "superseded"]
    assert {row["caption"] for row in old} == {"flaky", "flaky too"}
    assert all(row["reason"] == "retried_in:00001" for row in old)
    assert all(verify_shard(str(out), n).ok for n in shard_names(str(out)))

    again = wit(*args, "--retry-failed")  # nothing transient left: nothing happens
    assert again.returncode == 0 and "no transient failures to retry" in again.stdout
    assert len(manifests(out)) == len(m)


def test_crawl_from_and_to_s3(tmp_path, s3_bucket, image_server, real_images):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    rows = [(f"{image_server.url}/img/{n}", f"photo {i}") for i, n in enumerate(sorted(real_images)[:6])]
    rows.append((f"{image_server.url}/404", "gone"))
    fs.put(str(write_csv(tmp_path / "l.csv", rows)), f"{s3_bucket}/lists/l.csv")
    out = f"{s3_bucket}/raw"
    args = ["download", f"{s3_bucket}/lists/l.csv", "--out", out, "--allow-net", "127.0.0.1/32",
            "--shard-size", "4", *FAST]
    r = wit(*args)
    assert r.returncode == 0, r.stderr
    assert shard_names(out) == ["00000", "00001"]
    assert all(verify_shard(out, n).ok for n in shard_names(out))
    with fs.open(f"{out}/00001.parquet", "rb") as f:
        t = pq.read_table(f)
    assert t.num_rows == 3 and t["status"].to_pylist().count("ok") == 2
    assert not fs.exists(f"{out}/_wit/staging")

    r = wit(*args)  # resume on object storage: both shards are trusted
    assert r.returncode == 0 and "this run      0 shards" in r.stdout


def _crawl_in_two_shards(tmp_path, server, last: list[str], names: list[str]):
    """A finished crawl of 4 rows in 2 shards (a good image, a flaky one, a good one, then `last`: path, caption)."""
    rows = [(f"{server.url}/img/{names[0]}", "good 0"), (f"{server.url}/flaky/{names[1]}", "flaky"),
            (f"{server.url}/img/{names[2]}", "good 2"), (f"{server.url}/{last[0]}", last[1])]
    out = tmp_path / "out"
    args = ["download", str(write_csv(tmp_path / "l.csv", rows)), "--out", str(out), "--allow-net", "127.0.0.1/32",
            "--shard-size", "2", *FAST]
    assert wit(*args).returncode == 0
    return out, args


def test_retry_before_the_crawl_finished_loses_no_row(tmp_path, image_server, real_images):
    names = sorted(real_images)
    out, args = _crawl_in_two_shards(tmp_path, image_server, [f"img/{names[3]}", "good 3"], names)
    (out / "00001_stats.json").unlink()  # the crawl's second shard is unfinished

    r = wit(*args, "--retry-failed")
    assert r.returncode == 0, r.stderr
    assert "1 shard(s) of the crawl are unfinished" in r.stdout and "into shards from 00002" in r.stdout
    assert wit(*args).returncode == 0  # finishes shard 00001, which the retry must not have taken
    live = [row for row in manifests(out).to_pylist() if row["status"] != "superseded"]
    assert sorted(row["source_row"] for row in live) == [0, 1, 2, 3]
    assert all(row["status"] == "ok" for row in live)


def test_shard_numbers_past_99999_compare_as_numbers(tmp_path):
    import json

    import pyarrow as pa

    from wit.ingest.config import DownloadConfig
    from wit.ingest.retry import supersede, transient_failures
    from wit.shards.schema import MANIFEST

    out = tmp_path / "out"
    (out / "_wit").mkdir(parents=True)
    (out / "_wit" / "run.json").write_text(json.dumps({"rows": [], "shard_size": 2, "retries": [[99_999, 100_001]]}))
    shards = {"99999": [(0, "failed", "timeout"), (1, "failed", "http_503")],  # row 0 was retried in 100000
              "100000": [(0, "failed", "timeout"), (2, "failed", "http_429")]}
    for name, rows in shards.items():
        pq.write_table(pa.Table.from_pylist([
            {"uid": f"u{row}-{name}", "url": f"http://h.example/{row}.jpg", "caption": "c", "status": status,
             "reason": reason, "shard": name, "key": f"{name}{i:04d}", "source_file": "l.csv", "source_row": row}
            for i, (row, status, reason) in enumerate(rows)], schema=MANIFEST), out / f"{name}.parquet")
        (out / f"{name}.tar").write_bytes(bytes(1024))
        (out / f"{name}_stats.json").write_text(json.dumps({"wit": {"verified": True, "rows": 2, "samples": 0}}))
    cfg = DownloadConfig(lists=(), out=str(out))
    assert supersede(cfg) == 1
    old = pq.read_table(out / "99999.parquet").to_pylist()
    assert [(r["status"], r["reason"]) for r in old] == [("superseded", "retried_in:100000"), ("failed", "http_503")]
    assert transient_failures(cfg, str(tmp_path / "todo.parquet")) == 3
    todo = pq.read_table(tmp_path / "todo.parquet")
    assert todo["source_row"].to_pylist() == [1, 0, 2]  # shard 99999 before shard 100000


def test_a_run_record_with_six_digit_names_makes_resume_and_retry_write_six_digits(tmp_path, real_images):
    from wit.ingest.loopback import LoopbackImageServer

    with LoopbackImageServer(real_images, flaky_failures=2) as server:  # fails the crawl and its resume
        _six_digits(tmp_path, server, sorted(real_images))


def _six_digits(tmp_path, server, names):
    import json

    out, args = _crawl_in_two_shards(tmp_path, server, ["404", "gone"], names)
    record = json.loads((out / "_wit" / "run.json").read_text())
    assert record["name_width"] == 5 and shard_names(str(out)) == ["00000", "00001"]  # a small crawl: as always
    # the record of a crawl whose plan needs six digits (over 10,000 shards), stopped before its first shard: the
    # width is the record's, which resume and --retry-failed must keep
    for p in [*out.glob("0000[01]*"), *(out / "_wit" / "verified").glob("*")]:
        p.unlink()
    (out / "_wit" / "run.json").write_text(json.dumps({**record, "name_width": 6}))

    r = wit(*args)
    assert r.returncode == 0, r.stderr
    assert shard_names(str(out)) == ["000000", "000001"] and "this run      2 shards" in r.stdout
    r = wit(*args, "--retry-failed")
    assert r.returncode == 0, r.stderr
    assert "into shards from 000002" in r.stdout
    published = sorted(p.name for p in out.iterdir() if p.name != "_wit")
    assert published == [f"00000{i}{ext}" for i in range(3) for ext in (".parquet", ".tar", "_stats.json")]
    m = manifests(out).to_pylist()
    assert all(row["key"] is None or row["key"].startswith(row["shard"]) for row in m)  # img2dataset's keys too
    assert {row["shard"] for row in m} == {"000000", "000001", "000002"}
    old = [row for row in m if row["status"] == "superseded"]
    assert [(row["caption"], row["reason"]) for row in old] == [("flaky", "retried_in:000002")]
    live = [row for row in m if row["status"] != "superseded"]
    assert sorted(row["source_row"] for row in live) == [0, 1, 2, 3]
    assert all(verify_shard(str(out), n).ok for n in shard_names(str(out)))
    assert wit(*args).returncode == 0 and shard_names(str(out)) == ["000000", "000001", "000002"]  # all trusted
