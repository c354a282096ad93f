"""Lists that repeat a pair (common in web-scale lists): every row keeps its own uid, dedup removes the copies, and
crawl -> filters -> dedup -> reshard -> audit runs through with the real commands."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from wit.ingest.config import DownloadConfig
from wit.ingest.inputs import prepare_inputs
from wit.shards.lists import read_list
from wit.shards.schema import pair_uid
from wit.shards.storage import WitError
from tests.conftest import write_csv
from tests.ingest_helpers import FAST, manifests, wit


def test_repeated_pairs_get_own_uids_and_are_deduplicated_end_to_end(tmp_path, image_server, real_images):
    names = sorted(real_images)[:6]
    pairs = [(f"{image_server.url}/img/{n}", f"a photo of the {n.split('.')[0]} scene") for n in names]
    first = write_csv(tmp_path / "a.csv", pairs + [pairs[0], pairs[0]])  # a pair twice more in the same list
    second = write_csv(tmp_path / "b.csv", [pairs[1]])  # and one again in the next list
    raw, v = tmp_path / "raw", tmp_path / "verdicts"
    steps = [
        ("download", str(first), str(second), "--out", str(raw), "--allow-net", "127.0.0.1/32", "--shard-size", "4",
         *FAST),
        ("filter", "text", str(raw), "--out", str(v / "text"), "--no-english"),
        ("filter", "images", str(raw), "--out", str(v / "images"), "--min-side", "32"),
        ("dedup", str(v / "images"), "--out", str(v / "dedup"), "--near-k", "0", "--after", str(v / "text")),
        ("shards", "write", "--raw", str(raw), "--out", str(tmp_path / "corpus"), "--shard-size", "4",
         "--verdicts", str(v / "text"), str(v / "images"), str(v / "dedup")),
        ("audit", str(tmp_path)),
    ]
    for args in steps:
        r = wit(*args)
        assert r.returncode == 0, (args[:2], r.stderr[-2000:])

    m = manifests(raw).to_pylist()
    assert len(m) == 9 and len({row["uid"] for row in m}) == 9  # one uid per row
    assert all(row["status"] == "ok" for row in m)
    by_pair = {}
    for row in sorted(m, key=lambda r: (r["source_file"].endswith("b.csv"), r["source_row"])):
        by_pair.setdefault((row["url"], row["caption"]), []).append(row["uid"])
    assert [len(u) for u in by_pair.values()] == [3, 2, 1, 1, 1, 1]
    for (url, caption), uids in by_pair.items():
        assert uids[0] == pair_uid(url, caption)  # the first occurrence keeps the pair's own uid

    index = json.loads((tmp_path / "corpus" / "index.json").read_text())
    assert index["total"] == 6  # each pair once
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    steps = {s["stage"]: s for s in report["funnel"]}
    # the text filter's pair dedup catches the copies first; the image dedup (after it) agrees on who stays
    assert steps["download"]["rows_in"] == 9 and steps["text"]["dropped"] == {"pair_dup_of": 3}
    text = {r["uid"]: r for r in manifests(v / "text").to_pylist()}
    dedup = {r["uid"]: r for r in manifests(v / "dedup").to_pylist()}
    for uids in by_pair.values():
        assert sum(text[u]["keep"] for u in uids) == 1 and [dedup[u]["keep"] for u in uids] == [text[u]["keep"]
                                                                                               for u in uids]
    assert report["funnel"][-1]["kept"] == 6 and report["corpus"]["matches_funnel"]


def test_fallback_photos_are_distinct():
    """Without ../shared the tests crawl the photos PyPI wheels ship: a photo among them twice would be a real
    duplicate that every dedup stage removes (skimage.data.cat() is chelsea())."""
    from wit.ingest.sample_images import package_photos

    photos = package_photos()
    twice = [name for name, data in photos.items() if list(photos.values()).count(data) > 1]
    assert len(photos) >= 12 and not twice, twice


# ---- the crawl's input, prepared per list file with the repeats numbered in DuckDB ------------------------------

DEAD = "http://127.0.0.1:9"  # a closed port on loopback: every fetch fails at once, the same way on every machine
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "crawl_of_dead_links.json"


def write_fixture_lists(folder: Path) -> list[Path]:
    """Three lists in three formats that repeat pairs within and across lists, with two invalid URLs."""
    p = [(f"{DEAD}/{i}.jpg", f"a photo number {i}") for i in range(6)]
    (folder / "a.csv").write_text("url,caption\n" + "".join(f"{u},{c}\n" for u, c in [
        p[0], p[1], p[2], p[0], ("not a url", "bad"), p[1], ("  " + p[3][0], "padded"), p[0]]))
    (folder / "b.jsonl").write_text("".join(json.dumps({"url": u, "caption": c}) + "\n" for u, c in [p[0], p[4], p[2]]))
    pq.write_table(pa.table({"URL": [p[4][0], p[5][0]], "TEXT": [p[4][1], p[5][1]]}), folder / "c.parquet")
    return [folder / "a.csv", folder / "b.jsonl", folder / "c.parquet"]


def canonical(out: Path) -> dict:
    """What a crawl leaves that must not depend on how it was computed: every manifest row and the summary."""
    rows = []
    for path in sorted(out.glob("[0-9]*.parquet"), key=lambda p: int(p.stem)):
        for r in pq.read_table(path).to_pylist():
            rows.append({k: r[k] for k in ("uid", "url", "caption", "status", "reason", "shard", "key", "source_row")}
                        | {"source_file": r["source_file"].rsplit("/", 1)[-1]})
    summary = json.loads((out / "_wit" / "summary.json").read_text())
    return {"manifests": rows, "summary": {k: summary.get(k) for k in ("shards", "rows", "ok", "failed", "superseded",
                                                                        "failures_by_reason", "missing_shards")}}


def whatever_the_order(crawl: dict) -> dict:
    """A crawl's rows by list and row, without where they sit: since issue 27 the crawl plans its rows into shards by
    host, so a row's shard and key, and the retry shard that holds its new try, are not the ones main gave it."""
    rows = [{k: v for k, v in r.items() if k not in ("shard", "key")} for r in crawl["manifests"]]
    rows = [{**r, "reason": "retried_in:" if (r["reason"] or "").startswith("retried_in:") else r["reason"]}
            for r in rows]
    return {**crawl, "manifests": sorted(rows, key=lambda r: (r["source_file"], r["source_row"], r["status"]))}


def test_crawl_and_retry_give_what_main_gave_on_the_fixture(tmp_path):
    # the expectation was written by main before the input, resume and retry steps moved to per-file tasks and
    # DuckDB: the same uids (repeats numbered across lists), keys, statuses, reasons, superseded rows and summary
    lists = write_fixture_lists(tmp_path)
    args = ["download", *map(str, lists), "--out", str(tmp_path / "out"), "--allow-net", "127.0.0.1/32",
            "--shard-size", "3", *FAST]
    expected = json.loads(FIXTURE.read_text())
    for step, extra in (("crawl", ()), ("retry", ("--retry-failed",))):
        r = wit(*args, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        assert whatever_the_order(canonical(tmp_path / "out")) == whatever_the_order(expected[step]), step


def _config(lists, out, **kw) -> DownloadConfig:
    return DownloadConfig(lists=tuple(map(str, lists)), out=str(out), shard_size=3, **kw)


def test_prepared_uids_are_exactly_row_uids_over_the_lists_in_order(tmp_path):
    lists = write_fixture_lists(tmp_path)
    lists.append(write_csv(tmp_path / "d.csv", [(f"{DEAD}/{i % 3}.jpg", f"a photo number {i % 3}") for i in range(9)]))
    assert prepare_inputs(_config(lists, tmp_path / "out", processes=2)) == [8, 3, 2, 9]  # a pool of 2 workers
    seen = Counter()  # the rule as it was: one Counter carried from list to list
    for i, path in enumerate(lists):
        got = pq.read_table(tmp_path / "out" / "_wit" / "input" / f"{i:05d}.parquet")
        assert got.drop_columns(["host"]).equals(read_list(str(path), seen=seen)), path.name  # the host: planning's
    assert len(set(pc.unique(pq.read_table(tmp_path / "out" / "_wit" / "input")["uid"]).to_pylist())) == 22
    assert sorted(os.listdir(tmp_path / "out" / "_wit")) == ["input", "run.json"]  # no scratch left


def test_a_resume_reuses_the_input_while_the_lists_are_unchanged(tmp_path):
    lists = write_fixture_lists(tmp_path)
    cfg = _config(lists, tmp_path / "out", processes=1)
    prepare_inputs(cfg)
    a = lists[0]
    stat = a.stat()
    a.write_text(a.read_text().replace("number 0", "number 9"))  # same size, other content
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert prepare_inputs(cfg) == [8, 3, 2]  # same size and mtime: reused, the list is not read again
    assert "a photo number 9" not in pq.read_table(tmp_path / "out" / "_wit" / "input" / "00000.parquet")["caption"].to_pylist()
    os.utime(a)  # now it looks changed: it is read, and its new content refused
    with pytest.raises(WitError, match="holds a crawl of other lists"):
        prepare_inputs(cfg)
    assert sorted(os.listdir(tmp_path / "out" / "_wit")) == ["input", "run.json"]
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(WitError, match="another shard size"):  # the lists unchanged, but not the shards
        prepare_inputs(replace(cfg, shard_size=4))


def test_a_run_record_written_before_pairs_sha256_is_still_this_crawl(tmp_path):
    import hashlib

    lists = write_fixture_lists(tmp_path)
    out = tmp_path / "out"
    seen, digest, rows = Counter(), hashlib.sha256(), []
    for path in lists:  # the record main wrote: a digest of every uid, no retries, no fingerprint of the lists
        t = read_list(str(path), seen=seen)
        digest.update("\n".join(t["uid"].to_pylist()).encode())
        rows.append(t.num_rows)
    (out / "_wit" / "retry-00009").mkdir(parents=True)  # and a retry of 4 rows, into shards 9 and 10
    pq.write_table(read_list(str(lists[0])).slice(0, 4), out / "_wit" / "retry-00009" / "00000.parquet")
    (out / "_wit" / "run.json").write_text(json.dumps({"lists": list(map(str, lists)), "rows": rows,
                                                       "uids_sha256": digest.hexdigest(), "shard_size": 3}))
    assert prepare_inputs(_config(lists, out, processes=1)) == rows
    record = json.loads((out / "_wit" / "run.json").read_text())
    assert record["pairs_sha256"] and record["sources_sha256"] and record["retries"] == [[9, 11]]
    record["uids_sha256"] = "0" * 64  # and a record of other lists is refused as before
    del record["pairs_sha256"], record["sources_sha256"]
    (out / "_wit" / "run.json").write_text(json.dumps(record))
    with pytest.raises(WitError, match="holds a crawl of other lists"):
        prepare_inputs(_config(lists, out, processes=1))
