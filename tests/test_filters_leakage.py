"""Evaluation-set leakage: CIFAR-10 test images planted in a crawled shard are removed, and only they."""
from __future__ import annotations

import io
import random
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from wit.filters.images import ImagesConfig, run_images
from wit.filters.leakage import EvalIndex, hash_eval_sets
from wit.shards.phash import to_signed
from wit.shards.storage import WitError
from tests.conftest import shared_data
from tests.filters_helpers import jpeg, short_side_256, write_shard


def _cifar_members(tar_path, n, seed=0) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        picked = random.Random(seed).sample(members, n)
        return [(m.name, tar.extractfile(m).read()) for m in picked]


def test_planted_cifar10_test_images_are_exactly_the_ones_removed(tmp_path):
    cifar = shared_data("cifar10", "test.tar")
    flickr = sorted(shared_data("flickr8k", "images").glob("*.jpg"))[:60]
    planted = _cifar_members(cifar, 20)
    samples = [{"url": f"http://h/f{i}.jpg", "caption": f"photo {i}", "image": short_side_256(f.read_bytes()),
                "orig": (500, 375)} for i, f in enumerate(flickr)]
    for j, (name, data) in enumerate(planted):
        # what a crawl of a page showing the test image stores: upscaled to 256 px, re-encoded at some quality
        stored = short_side_256(data) if j % 2 else jpeg(Image.open(io.BytesIO(short_side_256(data))), 60 + j)
        samples.insert(3 * j + 1, {"url": f"http://h/c{j}.jpg", "caption": f"cifar {j}", "image": stored,
                                   "orig": (256, 256)})
    raw = tmp_path / "raw"
    write_shard(raw, "00000", samples[:40])
    write_shard(raw, "00001", samples[40:])
    summary = run_images(ImagesConfig(raw=str(raw), out=str(tmp_path / "img"), eval_sets=(str(cifar),), workers=1))
    rows = pq.read_table(tmp_path / "img" / "00000.parquet").to_pylist() + \
        pq.read_table(tmp_path / "img" / "00001.parquet").to_pylist()
    urls = [s["url"] for s in samples]
    leaked = {u: r["reason"] for u, r in zip(urls, rows) if r["reason"]}
    assert set(leaked) == {f"http://h/c{j}.jpg" for j in range(20)}
    # the reason names the evaluation image that leaked (within the 64-bit hash: its own name or an identical twin)
    for j, (name, _) in enumerate(planted):
        assert leaked[f"http://h/c{j}.jpg"].startswith("eval_leak:test.tar/test/")
    own = sum(leaked[f"http://h/c{j}.jpg"] == f"eval_leak:test.tar/{name}" for j, (name, _) in enumerate(planted))
    assert own >= 18
    assert summary["eval_images"] == 10_000 and summary["dropped"] == {"eval_leak": 20}


def test_probe_boundary_and_folder_sets(tmp_path):
    folder = tmp_path / "eval" / "sub"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"")  # undecodable: skipped, not fatal
    im = Image.new("RGB", (64, 64))
    im.paste((255, 255, 255), (0, 0, 32, 64))
    (folder / "half.jpg").write_bytes(jpeg(im))
    table = hash_eval_sets([str(tmp_path / "eval")])
    assert table["name"].to_pylist() == ["sub/half.jpg"]
    h = table["phash"][0].as_py()
    index = EvalIndex.from_table(table, 4)
    for d, hit in [(0, True), (4, True), (5, False)]:
        flipped = to_signed((h & (2**64 - 1)) ^ sum(1 << b for b in range(0, 64, 64 // max(d, 1))[:d]))
        assert (index.probe(flipped) == "sub/half.jpg") is hit, d


def test_eval_sets_from_shard_folders_and_patterns_and_empty_ones_refused(tmp_path):
    im = Image.new("RGB", (64, 64))
    im.paste((255, 255, 255), (0, 0, 32, 64))
    (tmp_path / "shards").mkdir()
    for i in range(2):  # a folder of WebDataset shards
        with tarfile.open(tmp_path / "shards" / f"{i:05d}.tar", "w") as tar:
            data = jpeg(im.rotate(90 * i))
            info = tarfile.TarInfo(f"k{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert sorted(hash_eval_sets([str(tmp_path / "shards")])["name"].to_pylist()) == ["00000.tar/k0.jpg",
                                                                                      "00001.tar/k1.jpg"]
    assert hash_eval_sets([str(tmp_path / "shards" / "{00000..00001}.tar")]).num_rows == 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(WitError, match="empty: no images in this evaluation set"):
        hash_eval_sets([str(tmp_path / "empty")])
