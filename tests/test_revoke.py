"""`wit revoke`: every kind of request takes out exactly its samples and only rewrites their shards; the ledger; a
kill during the apply; one-line errors."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.ingest_helpers import REPO, manifests, wit
from tests.reshard_helpers import synthetic_crawl
from tests.revoke_helpers import corpus_files, resized_copy, resized_to, shard_keys, write_crawl
from wit.filters.images import ImagesConfig, run_images
from wit.revoke import RevokeConfig, revoke
from wit.shards import revocations
from wit.shards.phash import hamming, phash_bytes
from wit.shards.reshard import ReshardConfig, reshard
from wit.shards.schema import pair_uid

NEAR = 4


@pytest.fixture(scope="module")
def project(tmp_path_factory, real_images):
    """raw/ (15 rows in 3 crawled shards: 13 photos, a resized re-encoded copy of photo 0 on a mirror, and beside it
    a different photo of exactly the copy's size), verdicts/images/ and corpus/ (shards of 3): by the real commands."""
    root = tmp_path_factory.mktemp("revoke") / "root"
    photos = [real_images[n] for n in sorted(real_images)]
    # photo 0: one whose copy (80%, JPEG quality 70) stays within NEAR bits, as a mirror's copy would
    first = next(p for p in photos if hamming(phash_bytes(p), phash_bytes(resized_copy(p, 0.8, 70))) <= 2)
    photos = [first] + [p for p in photos if p is not first]
    copy = resized_copy(photos[0], 0.8, 70)
    other = resized_to(photos[12], Image.open(io.BytesIO(copy)).size)  # a different photo, the copy's very size
    assert hamming(phash_bytes(photos[0]), phash_bytes(other)) > 3 * NEAR
    hosts = ["example.test"] * 4 + ["a.example.test"] * 2 + ["b.a.example.test"] + ["other.test"] * 5
    pairs = [{"url": f"http://{h}/p/{i}.jpg", "caption": f"photo {i}", "image": photos[i]} for i, h in enumerate(hosts)]
    pairs += [{"url": "http://mirror.test/copy.jpg", "caption": "a copy", "image": copy},
              {"url": "http://mirror.test/other.jpg", "caption": "another photo", "image": other},
              {"url": "http://other.test/gone.jpg", "caption": "gone", "image": None}]
    write_crawl(root / "raw", pairs, per_shard=5)
    run_images(ImagesConfig(raw=str(root / "raw"), out=str(root / "verdicts" / "images"), min_side=0, workers=1))
    reshard(_reshard_cfg(root, root / "corpus"))
    uids = [pair_uid(p["url"], p["caption"]) for p in pairs]
    in_corpus = set(manifests(root / "corpus")["uid"].to_pylist())
    assert {uids[0], uids[12], uids[13]} <= in_corpus and len(in_corpus) >= 12
    return {"root": root, "uids": uids, "photo0": photos[0], "in_corpus": in_corpus}


def _reshard_cfg(root: Path, out: Path) -> ReshardConfig:
    return ReshardConfig(raw=str(root / "raw"), out=str(out), verdicts=(str(root / "verdicts" / "images"),),
                         shard_size=3, workers=1)


# (flag, lines of the request file (or None: photo 0 as the image), --near, the pairs it takes back)
CASES = {
    "url": ("urls", ["http://example.test/p/1.jpg"], None, {1}),
    "domains": ("domains", ["# hosts, exactly", "example.test", "A.Example.Test."], None, {0, 1, 2, 3, 4, 5}),
    "subdomains": ("domains", ["*.a.example.test"], None, {4, 5, 6}),
    "uid": ("uids", ["<uid 9>"], None, {9}),
    "sha256": ("images", None, None, {0}),
    "near_copy": ("images", None, NEAR, {0, 12}),  # the copy of photo 0, not the other photo of the copy's size
}


def _request(case: str, project, folder: Path) -> RevokeConfig:
    flag, lines, near, _ = CASES[case]
    if lines is None:
        path = folder / "photo.jpg"
        path.write_bytes(project["photo0"])
    else:
        path = folder / f"{flag}.txt"
        path.write_text("\n".join(project["uids"][9] if x == "<uid 9>" else x for x in lines) + "\n")
    return RevokeConfig(root=str(folder / "root"), reason=f"test {case}", near=near, workers=1, **{flag: str(path)})


@pytest.mark.parametrize("case", list(CASES))
def test_each_request_kind_takes_out_exactly_its_samples_and_rewrites_only_their_shards(project, tmp_path, case):
    shutil.copytree(project["root"], tmp_path / "root")
    root, corpus = tmp_path / "root", tmp_path / "root" / "corpus"
    before, keys_before = corpus_files(corpus), shard_keys(corpus)
    rows_before = manifests(corpus).to_pylist()
    gone = {project["uids"][i] for i in CASES[case][3]} & project["in_corpus"]
    assert gone and len(gone) == len(CASES[case][3])

    summary = revoke(_request(case, project, tmp_path))
    assert summary["added"] and summary["samples_removed"] == len(gone)

    after = manifests(corpus)
    assert sorted(after["uid"].to_pylist()) == sorted(r["uid"] for r in rows_before if r["uid"] not in gone)
    holding = {r["shard"] for r in rows_before if r["uid"] in gone}
    keys_after = shard_keys(corpus)
    now = corpus_files(corpus)
    for shard, keys in keys_before.items():
        dropped = {r["key"] for r in rows_before if r["shard"] == shard and r["uid"] in gone}
        assert keys_after[shard] == [k for k in keys if k not in dropped]  # the rest keep their keys and order
        for suffix in (".tar", ".parquet", "_stats.json"):
            if shard not in holding:  # a shard without a match: not touched at all
                assert now[shard + suffix] == before[shard + suffix], shard + suffix
            else:
                assert now[shard + suffix][0] != before[shard + suffix][0], shard + suffix
    index = json.loads((corpus / "index.json").read_text())
    counts = {}
    for r in after.to_pylist():
        counts[f"{r['shard']}.tar"] = counts.get(f"{r['shard']}.tar", 0) + 1
    assert index["shards"] == counts and index["total"] == after.num_rows
    assert index["sha256"] == {n: hashlib.sha256((corpus / n).read_bytes()).hexdigest() for n in index["shards"]}
    ledger = revocations.load(str(root))
    assert len(set(ledger.requests["request"].to_pylist())) == 1
    assert set(ledger.removed["uid"].to_pylist()) == gone
    assert set(ledger.removed["shard"].to_pylist()) == holding

    # Idempotent: the same command again adds no request and touches nothing.
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "duckdb_tmp" not in str(p))
    index_mtime = os.stat(corpus / "index.json").st_mtime_ns
    again = revoke(_request(case, project, tmp_path))
    assert not again["added"] and again["samples_removed"] == 0 and not again["index_written"]
    assert corpus_files(corpus) == now and os.stat(corpus / "index.json").st_mtime_ns == index_mtime
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "duckdb_tmp" not in str(p)) == files

    # The reshard under the same ledger writes the same corpus: every kept sample in its place, byte for byte.
    reshard(_reshard_cfg(root, root / "again"))
    assert {n: b for n, (b, _) in corpus_files(root / "again").items() if n.endswith(".tar")} == \
        {n: b for n, (b, _) in now.items() if n.endswith(".tar")}
    assert json.loads((root / "again" / "index.json").read_text()) == index


def test_the_ledger_is_append_only_and_applies_to_its_folder_and_every_folder_under_it(tmp_path):
    deep = tmp_path / "project" / "corpus" / "sub"
    deep.mkdir(parents=True)
    rows = [{"kind": "url", "value": "http://x.test/1.jpg"}]
    first, added = revocations.append_request(str(tmp_path / "project"), revocations.request_table(rows, "a reason"))
    assert added
    stamp = os.stat(first).st_mtime_ns, Path(first).read_bytes()
    time.sleep(1.1)  # another second: a request made again would get another date, and so another file name
    again, added = revocations.append_request(str(tmp_path / "project"), revocations.request_table(rows, "a reason"))
    assert (again, added) == (first, False) and (os.stat(first).st_mtime_ns, Path(first).read_bytes()) == stamp
    other, added = revocations.append_request(str(deep), revocations.request_table(rows, "another reason"))
    assert added and other != first
    assert revocations.ledgers(str(deep)) == [str(deep / "_wit" / "revocations"),
                                              str(tmp_path / "project" / "_wit" / "revocations")]
    assert revocations.load(str(deep)).requests.num_rows == 2
    assert revocations.load(str(tmp_path / "project" / "corpus")).requests.num_rows == 1  # not the one below it
    assert not revocations.load(str(tmp_path))  # nor above it
    table = pq.read_table(first)
    assert table.column_names == revocations.REQUEST.names and table["date"][0].as_py().endswith("Z")


def test_the_url_rules_read_the_same_in_arrow_and_in_duckdb():
    """The crawl and the balance match per row (Arrow), the corpus apply and the reshard in DuckDB: same rules."""
    import duckdb
    import pyarrow as pa

    urls = ["http://Example.TEST./a.jpg", "https://user:pw@example.test:8443/b", "http://example.test.evil/c",
            "http://sub.Example.test/d?x=http://example.test/", "ftp://example.test", "http://[::1]:80/e",
            "not a url", "http://b.c.other.test/f", "http://other.test/g", "http://xother.test/h"]
    ledger = revocations.Revocations(revocations.request_table(
        [{"kind": "domain", "value": "example.test"}, {"kind": "subdomains", "value": "other.test"},
         {"kind": "domain", "value": "[::1]"}, {"kind": "url", "value": "not a url"}], "test"))
    arrow = ledger.mask(urls=urls).tolist()
    assert arrow == [True, True, False, False, True, True, True, True, True, False]
    con = duckdb.connect()
    con.register("rows", pa.table({"uid": [f"{i:032x}" for i in range(len(urls))], "url": urls,
                                   "sha256": [None] * len(urls)}))
    revocations.match(con, ledger, "rows")
    revoked = {r[0] for r in con.execute("SELECT uid FROM revoked").fetchall()}
    assert [f"{i:032x}" in revoked for i in range(len(urls))] == arrow


def test_bad_requests_are_one_line_errors_and_add_nothing(project, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(project["root"], root)
    (tmp_path / "urls.txt").write_text("http://example.test/1.jpg\nexample.test/2.jpg\n")
    (tmp_path / "uids.txt").write_text("0123\n")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "hosts.txt").write_text("example.test/path\n")
    cases = [(["--urls", str(tmp_path / "urls.txt")], "urls.txt: line 2: 'example.test/2.jpg' is not a URL"),
             (["--uids", str(tmp_path / "uids.txt")], "uids.txt: line 1: '0123' is not a uid"),
             (["--urls", str(tmp_path / "empty.txt")], "empty.txt: holds no entries"),
             (["--domains", str(tmp_path / "hosts.txt")], "hosts.txt: line 1: 'example.test/path' is not a host name"),
             (["--near", "2"], "--near D matches request images by pHash: give them with --images"),
             (["--urls", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
             (["--corpus", str(tmp_path)], "not under"),
             (["--images", str(tmp_path / "urls.txt"), "--near", "2"], "urls.txt: is no image"),
             (["--images", str(tmp_path), "--near", "2"], "holds no image")]
    for flags, message in cases:
        r = wit("revoke", str(root), *flags, "--reason", "test")
        assert r.returncode == 2, (flags, r.stderr)
        assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (root / "_wit" / "revocations").exists()
    r = wit("revoke", str(root), "--urls", str(tmp_path / "urls.txt"), "--report")
    assert r.returncode == 2 and "--report changes nothing" in r.stderr


def test_a_corpus_without_phashes_refuses_a_near_request_in_one_line(project, tmp_path):
    shutil.copytree(project["root"], tmp_path / "root")
    shutil.rmtree(tmp_path / "root" / "verdicts")
    (tmp_path / "photo.jpg").write_bytes(project["photo0"])
    r = wit("revoke", str(tmp_path / "root"), "--images", str(tmp_path / "photo.jpg"), "--near", "2", "--reason", "x")
    assert r.returncode == 2 and "--phashes" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert manifests(tmp_path / "root" / "corpus").num_rows == len(project["in_corpus"])  # nothing taken out


# ---------------------------------------------------------------------------------------------- kill -9
def _big_project(folder: Path) -> Path:
    """A corpus of 180 shards of 2 (tiny payloads) and a request that takes a sample out of most of them."""
    synthetic_crawl(folder / "raw", shards=3, per_shard=120, failed_every=1000)
    reshard(ReshardConfig(raw=str(folder / "raw"), out=str(folder / "corpus"), shard_size=2, workers=1))
    urls = [f"http://127.0.0.1/{n}.jpg" for n in range(1, 360, 3)]  # row 0 failed in the crawl
    (folder.parent / "urls.txt").write_text("\n".join(urls) + "\n")
    return folder


def _revoke_process(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wit", "revoke", str(root), "--urls", str(root.parent / "urls.txt"),
                             "--reason", "takedown", "--workers", "2"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, "CI": "1"})


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL the whole process group (the command and its pool's workers) as soon as `ready()` holds."""
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, f"wit revoke ended before {what} (rc {proc.returncode}): {proc.stderr.read()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_during_the_apply_and_a_rerun_finish_exactly(tmp_path):
    reference = _big_project(tmp_path / "a" / "root")
    killed = tmp_path / "b" / "root"
    shutil.copytree(reference, killed)
    (tmp_path / "b" / "urls.txt").write_text((tmp_path / "a" / "urls.txt").read_text())
    r = wit("revoke", str(reference), "--urls", str(tmp_path / "a" / "urls.txt"), "--reason", "takedown")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["samples_removed"] == 120 and done["shards_rewritten"] > 50

    staging = killed / "corpus" / "_wit" / "revoke"
    records = killed / "_wit" / "revocations" / "removed"
    # first kill: as soon as the first new shard is staged; second: once some shards are done, others in flight
    _kill_when(_revoke_process(killed), lambda: staging.is_dir() and any(staging.iterdir()), "it staged a shard")
    _kill_when(_revoke_process(killed), lambda: records.is_dir() and len(list(records.iterdir())) >= 5,
               "it finished five shards")
    r = wit("revoke", str(killed), "--urls", str(tmp_path / "b" / "urls.txt"), "--reason", "takedown")
    assert r.returncode == 0, r.stderr
    assert not staging.exists()

    a, b = reference / "corpus", killed / "corpus"
    assert {n: x for n, (x, _) in corpus_files(a).items() if not n.endswith(".parquet")} == \
        {n: x for n, (x, _) in corpus_files(b).items() if not n.endswith(".parquet")}
    assert manifests(a).sort_by("key").equals(manifests(b).sort_by("key"))
    assert json.loads((a / "index.json").read_text()) == json.loads((b / "index.json").read_text())
    assert manifests(b).num_rows == 359 - 120

    def ledger(root: Path) -> list[tuple]:
        removed = revocations.load(str(root)).removed.drop_columns(["date", "corpus"]).to_pylist()
        return sorted(tuple(sorted(r.items())) for r in removed)

    assert ledger(reference) == ledger(killed) and len(ledger(killed)) == 120  # every removal recorded, once
    assert len(list((killed / "_wit" / "revocations" / "requests").iterdir())) == 1


def test_a_rewrite_committed_before_a_kill_is_finished_by_the_next_run(project, tmp_path):
    """The state a kill leaves between moving the new tar over the old one and moving its manifest, made by hand from
    a finished run: the next run finishes the move and records it; it does not match the shard again."""
    done, cut = tmp_path / "done" / "root", tmp_path / "cut" / "root"
    for where in (done, cut):
        shutil.copytree(project["root"], where)
    (tmp_path / "urls.txt").write_text("http://example.test/p/1.jpg\n")
    request = RevokeConfig(root=str(done), urls=str(tmp_path / "urls.txt"), reason="test", workers=1)
    assert revoke(request)["samples_removed"] == 1
    record = next((done / "_wit" / "revocations" / "removed").iterdir())
    shard = pq.read_table(record)["shard"][0].as_py()

    rows = [{"kind": "url", "value": "http://example.test/p/1.jpg"}]
    revocations.append_request(str(cut), revocations.request_table(rows, "test"))
    staging = cut / "corpus" / "_wit" / "revoke" / shard
    staging.mkdir(parents=True)
    for name in (f"{shard}.parquet", f"{shard}_stats.json"):
        shutil.copy(done / "corpus" / name, staging / name)
    shutil.copy(record, staging / "removed.parquet")
    (staging / "ready").write_text(str(cut))
    shutil.copy(done / "corpus" / f"{shard}.tar", cut / "corpus" / f"{shard}.tar")  # the tar already moved

    summary = revoke(RevokeConfig(root=str(cut), workers=1))
    assert summary["samples_removed"] == 0 and summary["shards_rewritten"] == 1 and not staging.parent.exists()
    assert {n: b for n, (b, _) in corpus_files(cut / "corpus").items()} == \
        {n: b for n, (b, _) in corpus_files(done / "corpus").items()}
    assert json.loads((cut / "corpus" / "index.json").read_text()) == \
        json.loads((done / "corpus" / "index.json").read_text())
    removed = [revocations.load(str(r)).removed.drop_columns(["corpus"]).to_pylist() for r in (done, cut)]
    assert removed[0] == removed[1] and len(removed[1]) == 1
