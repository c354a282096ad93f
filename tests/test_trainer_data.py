"""wit.trainer.data: the epoch plan reads every sample once; batches are a pure function of the position."""
from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from wit.shards.storage import WitError
from wit.trainer.data import Plan, ShardLoader, decode_image, resolve_shards
from wit_trainer_data import jpeg, write_shards


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture()
def local_shards(tmp_path):
    def put(name, data):
        (tmp_path / name).write_bytes(data)
    keys = write_shards(put, [7, 13, 4, 9], **{"1": dict(bad_jpeg=(2,), no_caption=(5,)), "3": dict(truncate=True)})
    return str(tmp_path / "{00000..00003}.tar"), keys


@pytest.mark.parametrize("counts,world,workers,batch", [
    ((7, 13, 4, 9), 2, 3, 4),      # uneven shards
    ((50,), 2, 4, 3),              # one shard, 8 readers
    ((5, 0, 11, 2, 30), 3, 2, 2),  # an empty shard
    ((1, 1, 1, 1, 1, 1, 1), 1, 5, 1),
])
def test_plan_reads_each_sample_of_the_epoch_once(counts, world, workers, batch):
    for epoch in (0, 1):
        plan = Plan(counts, 7, epoch, world, workers, batch)
        read = collections.Counter()
        for rank in range(world):
            n_rank = 0
            for w in range(workers):
                seg = plan.segment(rank, w)
                n = sum(b - a for _, a, b in seg)
                assert n == len(plan.batches_of(w)) * batch  # each worker reads exactly its batches' samples
                n_rank += n
                read.update((s, i) for s, a, b in seg for i in range(a, b))
            assert n_rank == plan.steps * batch  # every rank makes the same number of steps
        assert max(read.values()) == 1
        assert len(read) == plan.steps * world * batch > sum(counts) - world * batch  # only a tail < 1 global batch


def test_plan_is_a_pure_function_of_seed_and_epoch():
    a = [Plan((9, 9, 9, 9, 9), 1, e, 2, 2, 3).segment(0, 0) for e in range(4)]
    b = [Plan((9, 9, 9, 9, 9), 1, e, 2, 2, 3).segment(0, 0) for e in range(4)]
    assert a == b and len({str(s) for s in a}) > 1  # same for the same epoch, shuffled across epochs


def collect(loader, steps):
    it = iter(loader)
    return [next(it) for _ in range(steps)]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_epoch_over_ranks_reads_every_sample_once_and_counts_corrupt(local_shards, tokenizer, workers):
    pattern, keys = local_shards
    seen, skipped = collections.Counter(), []
    for rank in range(2):
        loader = ShardLoader(pattern, batch_size=4, image_size=32, tokenizer=tokenizer, rank=rank, world=2,
                             workers=workers, window=5)
        assert loader.counts == [7, 13, 4, 9]  # from tar headers, truncated one included
        for batch in collect(loader, loader.steps_per_epoch):
            assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (4, 3, 32, 32)
            assert batch["texts"].shape == (4, 77)
            seen.update(batch["keys"])
            skipped += [s.split(":")[0] for s in batch["skipped"]]
            assert int((~batch["valid"]).sum()) == len(batch["skipped"])
    assert max(seen.values()) == 1 and len(seen) == 32 and set(seen) <= set(keys)  # 33 samples, 32 = 4 x 8 read
    corrupt = {"000010002", "000010005", "000030008"}  # bad jpeg, no caption, truncated image
    assert set(skipped) == corrupt & set(seen)


def test_loader_resumes_with_identical_batches(local_shards, tokenizer):
    pattern, _ = local_shards
    kw = dict(batch_size=3, image_size=32, tokenizer=tokenizer, rank=1, world=2, workers=2, window=4, seed=3)
    full = collect(ShardLoader(pattern, **kw), 9)  # crosses into the second epoch (5 steps per epoch)
    for k in (2, 5, 7):
        first = ShardLoader(pattern, **kw)
        collect(first, k)
        state = json.loads(json.dumps(first.state_dict()))  # survives serialisation
        resumed = ShardLoader(pattern, **kw)
        resumed.load_state_dict(state)
        for a, b in zip(full[k:], collect(resumed, 9 - k)):
            assert a["keys"] == b["keys"] and (a["epoch"], a["step"]) == (b["epoch"], b["step"])
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["texts"], b["texts"])
    assert full[0]["keys"] != full[5]["keys"]  # epoch 1 is a different order
    with pytest.raises(WitError, match="workers"):
        ShardLoader(pattern, **{**kw, "workers": 3}).load_state_dict(state)


def test_index_file_gives_counts_without_listing(tmp_path):
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [3, 5])
    (tmp_path / "index.json").write_text(json.dumps({"shards": {"00001.tar": 5, "00000.tar": 3}}))
    urls, counts = resolve_shards(str(tmp_path / "index.json"))
    assert urls == [f"{tmp_path}/00000.tar", f"{tmp_path}/00001.tar"] and counts == [3, 5]
    with pytest.raises(WitError, match="pipe"):
        resolve_shards("pipe:curl http://x/{0..1}.tar")
    with pytest.raises(WitError, match="not found"):
        resolve_shards(str(tmp_path / "{00005..00006}.tar"))


def test_a_bad_index_is_one_line_naming_it(tmp_path, s3_bucket, capsys):
    from wit.cli import main

    good = json.dumps({"shards": {"00000.tar": 3, "00001.tar": 5}})
    cases = {  # index -> (its bytes, or None for none, what the error says after its name)
        str(tmp_path / "missing.json"): (None, "no such shard index"),
        f"{s3_bucket}/missing/index.json": (None, "no such shard index"),
        "s3://wit-no-such-bucket/index.json": (None, "no such shard index"),
        str(tmp_path / "cut.json"): (good[:20], "not a shard index, or a truncated one (JSONDecodeError: "),
        str(tmp_path / "text.json"): (good.replace("5", '"five"'), 'shard 00001.tar: count "five" is not a whole'),
        str(tmp_path / "float.json"): (good.replace("5", "5.5"), "shard 00001.tar: count 5.5 is not a whole number"),
        str(tmp_path / "negative.json"): (good.replace("5", "-5"), "shard 00001.tar: count -5 is not a whole number"),
        str(tmp_path / "list.json"): ("[1, 2]", 'not a shard index (expected {"shards": '),
    }
    for url, (data, says) in cases.items():
        if data is not None:
            Path(url).write_text(data)
        assert main(["train", "--data", url, "--out", str(tmp_path / "run")]) == 2, url
        err = capsys.readouterr().err
        assert err.startswith(f"wit train: error: {url}: {says}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_decode_large_jpeg_at_reduced_size_and_seeded_crop():
    data = jpeg(1, (1600, 1200))
    a = decode_image(data, 64, random.Random("x"))
    b = decode_image(data, 64, random.Random("x"))
    c = decode_image(data, 64, random.Random("y"))
    assert a.shape == (3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    img = Image.open(__import__("io").BytesIO(data))
    img.draft("RGB", (80, 80))
    assert img.size[0] < 1600  # draft really decodes a smaller image for this size


def test_resampled_draws_shards_with_replacement_deterministically_and_resumes(local_shards, tokenizer):
    pattern, keys = local_shards  # shards of 7, 13, 4 and 9 samples
    kw = dict(batch_size=4, image_size=32, tokenizer=tokenizer, workers=2, window=5, seed=1, resampled=True)
    epoch = ShardLoader(pattern, **kw).steps_per_epoch  # 8 steps: an epoch's worth of 32 samples
    full = collect(ShardLoader(pattern, **kw), epoch + 2)
    seen = collections.Counter(k for b in full[:epoch] for k in b["keys"])
    assert set(seen) <= set(keys) and max(seen.values()) > 1 and len(seen) < 32  # repeats within the "epoch"
    assert [b["keys"] for b in full] == [b["keys"] for b in collect(ShardLoader(pattern, **kw), epoch + 2)]
    exact = collect(ShardLoader(pattern, **{**kw, "resampled": False}), epoch)
    assert max(collections.Counter(k for b in exact for k in b["keys"]).values()) == 1  # the default: once each
    for k in (3, epoch + 1):  # within the first epoch and in the second
        first = ShardLoader(pattern, **kw)
        collect(first, k)
        resumed = ShardLoader(pattern, **kw)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        nxt = collect(resumed, 1)[0]
        assert nxt["keys"] == full[k]["keys"] and torch.equal(nxt["images"], full[k]["images"])
    with pytest.raises(WitError, match="resampled"):
        ShardLoader(pattern, **{**kw, "resampled": False}).load_state_dict(first.state_dict())


def test_resampled_plan_fills_each_worker_from_whole_shards():
    plan = Plan((7, 0, 13, 4), 5, 0, 2, 3, 2, resampled=True)
    for rank in range(2):
        for w in range(3):
            seg = plan.segment(rank, w)
            assert sum(b - a for _, a, b in seg) == len(plan.batches_of(w)) * 2
            assert all(a == 0 and plan.counts[s] > 0 for s, a, b in seg)
    assert plan.segment(0, 0) == Plan((7, 0, 13, 4), 5, 0, 2, 3, 2, resampled=True).segment(0, 0)
    assert plan.segment(0, 0) != plan.segment(1, 0) or plan.segment(0, 1) != plan.segment(1, 1)


def test_a_damaged_header_mid_tar_is_reported_not_silently_shortened(tmp_path, capsys):
    import io
    import tarfile

    from wit.trainer.data import _count_or_zero

    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(10):
            info = tarfile.TarInfo(f"{i:04d}.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(path.read_bytes())
    data[6 * 1024: 6 * 1024 + 512] = b"\x17" * 512  # sample 6's header (each member: 512 header + 512 data)
    path.write_bytes(bytes(data))
    assert _count_or_zero(str(path)) == 6  # what the headers list
    err = capsys.readouterr().err
    assert f"{path}: tar headers stop after 6 samples" in err and "not in the epoch" in err
