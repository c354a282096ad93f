"""Lists that repeat a pair (common in web-scale lists): every row keeps its own uid, dedup removes the copies, and
crawl -> filters -> dedup -> reshard -> audit runs through with the real commands."""
from __future__ import annotations

import json

from wit.shards.schema import pair_uid
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
