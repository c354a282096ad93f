"""The image stage on real photos in img2dataset-layout shards: thresholds, corrupt input, the funnel, the CLI,
and the Ray engine (local mode) giving the same verdicts as the process pool."""
from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from wit.filters.images import ImagesConfig, read_tar_images, run_images
from tests.conftest import shared_data
from tests.filters_helpers import short_side_256, write_shard
from wit.cli import main as wit_main


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    files = sorted(shared_data("flickr8k", "images").glob("*.jpg"))[:24]
    return [short_side_256(f.read_bytes()) for f in files]


def _crawl(tmp_path, photos):
    raw = tmp_path / "raw"
    s = lambda i, **kw: {"url": f"http://h/{i}.jpg", "caption": f"photo {i}", "image": photos[i], **kw}  # noqa: E731
    expected = {}
    shard0 = [
        s(0, orig=(200, 300)), s(1, orig=(199, 300)),  # min side boundary
        s(2, orig=(600, 200)), s(3, orig=(601, 200)),  # aspect boundary: 3.0 kept, 3.005 dropped
        s(4, orig=(None, None)),  # no original size: the stored 256 px image is judged
        {"url": "http://h/bad.jpg", "caption": "bad", "image": b"\xff\xd8\xff\xe0 not a jpeg"},
        {"url": "http://h/cut.jpg", "caption": "cut", "image": photos[5][: len(photos[5]) // 3]},  # truncated JPEG
        {"url": "http://h/none.jpg", "caption": "none", "image": None},  # sample without an image member
        s(6, orig=(800, 600)),
        {**s(0, orig=(640, 480)), "url": "http://h/copy0.jpg"},  # the same bytes again: an exact duplicate
    ]
    expected["00000"] = [None, "too_small", None, "bad_aspect", None, "decode_error", "decode_error", "no_image",
                         None, None, "not_ok_in_ingest", "not_ok_in_ingest"]
    write_shard(raw, "00000", shard0, failed=2)
    write_shard(raw, "00001", [s(i, orig=(500, 400)) for i in range(7, 19)], failed=1)
    tar = raw / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # cut mid-member
    write_shard(raw, "00002", [s(i, orig=(500, 400)) for i in range(19, 22)])
    (raw / "00002.tar").unlink()
    expected["00002"] = ["tar_missing"] * 3
    return raw, expected


def test_thresholds_corrupt_input_and_funnel(tmp_path, photos):
    raw, expected = _crawl(tmp_path, photos)
    summary = run_images(ImagesConfig(raw=str(raw), out=str(tmp_path / "img"), workers=1))
    v0 = pq.read_table(tmp_path / "img" / "00000.parquet").to_pylist()
    assert [r["reason"] for r in v0] == expected["00000"]
    assert all(r["keep"] == (r["reason"] is None) for r in v0)
    assert v0[5]["detail"] and v0[6]["detail"]  # the raw decode errors are kept for humans
    assert v0[0]["sha256"] == v0[9]["sha256"] and v0[0]["phash"] == v0[9]["phash"]
    assert v0[4]["short_side"] == 256
    # truncated tar: the samples before the cut are judged, the rest are tar_unreadable, nothing raises
    v1 = [r["reason"] for r in pq.read_table(tmp_path / "img" / "00001.parquet").to_pylist()]
    assert v1[0] is None and v1[-2] == "tar_unreadable" and v1[-1] == "not_ok_in_ingest"
    assert set(v1) <= {None, "tar_unreadable", "not_ok_in_ingest"} and "tar_unreadable" in v1
    assert [r["reason"] for r in pq.read_table(tmp_path / "img" / "00002.parquet").to_pylist()] == expected["00002"]
    # the funnel adds up: one verdict per manifest row, same uids in the same order
    for name in ("00000", "00001", "00002"):
        m = pq.read_table(raw / f"{name}.parquet", columns=["uid"])["uid"].to_pylist()
        assert pq.read_table(tmp_path / "img" / f"{name}.parquet", columns=["uid"])["uid"].to_pylist() == m
    assert summary["rows"] == 12 + 13 + 3 == summary["kept"] + sum(summary["dropped"].values())


def test_read_tar_images_on_garbage(tmp_path):
    bad = tmp_path / "x.tar"
    bad.write_bytes(b"this is not a tar file at all" * 40)
    images, problem = read_tar_images(str(bad))
    assert images == {} and problem.startswith("tar_unreadable")


def test_cli_images_then_dedup(tmp_path, photos):
    raw, _ = _crawl(tmp_path, photos)
    assert wit_main(["filter", "images", str(raw), "--out", str(tmp_path / "img"), "--workers", "2"]) == 0
    assert wit_main(["dedup", str(tmp_path / "img"), "--out", str(tmp_path / "dd"), "--near-k", "4"]) == 0
    rows = [r for n in ("00000", "00001", "00002") for r in pq.read_table(tmp_path / "dd" / f"{n}.parquet").to_pylist()]
    img = [r for n in ("00000", "00001", "00002") for r in pq.read_table(tmp_path / "img" / f"{n}.parquet").to_pylist()]
    assert [r["uid"] for r in rows] == [r["uid"] for r in img]
    dups = [r for r in rows if r["dup_of"]]
    # row 0 and row 9 of shard 00000 hold the same bytes: the smaller uid stays, the other points at it
    pair = sorted([img[0]["uid"], img[9]["uid"]])
    assert [(r["uid"], r["dup_of"], r["reason"]) for r in dups] == [(pair[1], pair[0], f"dup_of:{pair[0]}")]
    # upstream reasons carry over, so the last stage's files are the whole funnel
    reasons = Counter((r["reason"] or "kept").split(":")[0] for r in rows)
    assert sum(reasons.values()) == len(img) and reasons["dup_of"] == 1
    assert reasons["kept"] == sum(r["keep"] for r in img) - 1


def test_ray_engine_gives_the_same_verdicts(tmp_path, photos):
    ray = pytest.importorskip("ray")
    raw, _ = _crawl(tmp_path, photos)
    run_images(ImagesConfig(raw=str(raw), out=str(tmp_path / "local"), workers=2))
    try:
        run_images(ImagesConfig(raw=str(raw), out=str(tmp_path / "ray"), engine="ray", workers=2))
    finally:
        ray.shutdown()
    for name in ("00000", "00001", "00002"):
        assert pq.read_table(tmp_path / "ray" / f"{name}.parquet").equals(
            pq.read_table(tmp_path / "local" / f"{name}.parquet"))


@pytest.mark.parametrize("argv", [["filter", "images"], ["filter", "text"], ["dedup"]])
def test_help_explains_every_option(argv):
    import argparse

    from wit.cli import build_parser

    parser = build_parser()
    for word in argv:  # walk down to the subcommand's parser
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    assert parser.description
    bare = [a.dest for a in parser._actions if a.dest != "help" and not (a.help and len(a.help) > 10)]
    assert bare == [], f"options without an explanation: {bare}"


def test_images_and_dedup_on_s3(tmp_path, photos, s3_bucket):
    """Every path is an fsspec URL: crawl, verdicts and dedup all on a real S3 server on 127.0.0.1."""
    import s3fs

    raw = tmp_path / "raw"
    samples = [{"url": f"http://h/{i}.jpg", "caption": "c", "image": photos[i % 3], "orig": (300, 300)}
               for i in range(5)]
    write_shard(raw, "00000", samples, failed=1)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(f"{raw}/", f"{s3_bucket[5:]}/raw/", recursive=True)
    assert wit_main(["filter", "images", f"{s3_bucket}/raw", "--out", f"{s3_bucket}/img", "--workers", "1"]) == 0
    assert wit_main(["dedup", f"{s3_bucket}/img", "--out", f"{s3_bucket}/dd"]) == 0
    with fs.open(f"{s3_bucket[5:]}/dd/00000.parquet", "rb") as f:
        reasons = [(r or "kept").split(":")[0] for r in pq.read_table(f)["reason"].to_pylist()]
    assert reasons[2] == "kept" and reasons[5] == "not_ok_in_ingest"
    assert sorted([reasons[0], reasons[3]]) == sorted([reasons[1], reasons[4]]) == ["dup_of", "kept"]


def test_refuses_to_overwrite_its_input(tmp_path, photos, capsys):
    raw, _ = _crawl(tmp_path, photos)
    assert wit_main(["filter", "images", str(raw), "--out", str(raw)]) == 2
    assert wit_main(["dedup", str(raw), "--out", str(raw)]) == 2
    assert wit_main(["filter", "text", str(raw), "--out", str(raw)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert pq.read_table(raw / "00000.parquet").schema.names[:2] == ["uid", "url"]  # the manifest is untouched


def test_a_cut_anywhere_in_a_tar_never_reads_as_a_sample_without_image(tmp_path, photos):
    write_shard(tmp_path, "00000", [{"url": f"u{i}", "caption": "c", "image": photos[i]} for i in range(4)])
    full = (tmp_path / "00000.tar").read_bytes()
    whole, problem = read_tar_images(str(tmp_path / "00000.tar"))
    assert problem is None and len(whole) == 4
    for cut in range(512, len(full), 1531):  # headers, image bytes, text members, padding
        (tmp_path / "cut.tar").write_bytes(full[:cut])
        images, problem = read_tar_images(str(tmp_path / "cut.tar"))
        assert images == whole or problem.startswith("tar_unreadable"), cut  # a loss is always reported
        assert all(images[k] == whole[k] for k in images), cut  # what is returned is whole and right
