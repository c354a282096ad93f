"""wit.trainer.gpu_decode: `--decode gpu`'s code path, run on CPU tensors (torchvision's CPU decode_jpeg), gives the
CPU path's crops, sizes, pixels (within a few levels), masks and skipped counts."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import open_clip
import pytest
import torch

from wit.trainer.data import ShardLoader, crop_plan, crop_rng
from wit.trainer.gpu_decode import DeviceBatches, decode_mode
from wit_trainer_data import write_shards

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CPU = torch.device("cpu")
MEAN, STD = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def real_jpegs() -> list[bytes]:
    """Flickr8k photos (200 and 500 px long side: PIL drafts them at 1/2 and 1/4 for small outputs) and CIFAR-10's
    32 px JPEGs."""
    photos = sorted((DATA / "flickr8k" / "images").glob("*.jpg"))[:10]
    if not photos or not (DATA / "cifar10" / "test.tar").exists():
        pytest.skip(f"real images not found under {DATA} (see its README)")
    out = [p.read_bytes() for p in photos]
    with tarfile.open(DATA / "cifar10" / "test.tar") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                out.append(tar.extractfile(member).read())
                if len(out) == 16:
                    break
    return out


def write_real_shards(folder: Path, jpegs: list[bytes], per_shard: int = 8) -> str:
    for shard in range(len(jpegs) // per_shard):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i, image in enumerate(jpegs[shard * per_shard:(shard + 1) * per_shard]):
                key = f"{shard:05d}{i:04d}"
                for ext, data in (("jpg", image), ("txt", f"photo {key}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{00000..{len(jpegs) // per_shard - 1:05d}}}.tar")


def epoch(pattern: str, tokenizer, jpeg_bytes: bool, size: int, workers: int = 0, batch: int = 4) -> list[dict]:
    loader = ShardLoader(pattern, batch_size=batch, image_size=size, tokenizer=tokenizer, workers=workers, window=5,
                         seed=3, jpeg_bytes=jpeg_bytes)
    it = iter(loader)
    return [next(it) for _ in range(loader.steps_per_epoch)]


def pixels(batch: dict, size: int, on_device: bool) -> torch.Tensor:
    """The trainer's input back in 0..255: what the model sees, either way."""
    images, _, _ = DeviceBatches(size, MEAN, STD, CPU, decode_on_device=on_device)(batch)
    return images * STD[:, None, None] * 255 + MEAN[:, None, None] * 255


@pytest.mark.parametrize("size", [64, 224])
def test_device_path_draws_the_cpu_crop_boxes_and_gives_its_pixels_on_real_images(tmp_path, tokenizer, size):
    jpegs = real_jpegs()
    pattern = write_real_shards(tmp_path, jpegs)
    cpu, gpu = epoch(pattern, tokenizer, False, size), epoch(pattern, tokenizer, True, size)
    factors = set()
    for a, b in zip(cpu, gpu):
        assert a["keys"] == b["keys"] and (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        for n, key in enumerate(b["keys"]):  # the box of (seed 3, epoch 0, sample) in the full-size image
            shard, i = int(key[:5]), int(key[5:])
            _, box, factor = crop_plan(jpegs[shard * 8 + i], size, crop_rng(3, 0, shard, i))
            assert b["boxes"][n].tolist() == [c * factor for c in box], key
            factors.add(factor)
        want, got = pixels(a, size, on_device=False), pixels(b, size, on_device=True)
        assert got.shape == want.shape == (4, 3, size, size)
        diff = (got - want).abs()
        # Same crop, different decoders (libjpeg's scaled IDCT in PIL vs a full decode) and float vs uint8
        # resampling: a few levels on average; a shifted or other box moves real photos by tens of levels.
        assert diff.mean(dim=(1, 2, 3)).max() < 4, diff.mean(dim=(1, 2, 3))
    assert (size == 64) == (factors > {1})  # 64 px: the 500 px photos are drafted at 1/4, and the boxes scaled


def test_corrupt_samples_get_the_same_masks_and_skipped_counts(tmp_path, tokenizer):
    corrupt = {"1": dict(bad_jpeg=(2,), no_caption=(5,), cut_jpeg=(7,), png=(8,), grey=(9,)), "3": dict(truncate=True)}
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [7, 13, 4, 9], **corrupt)
    pattern = str(tmp_path / "{00000..00003}.tar")
    cpu, gpu = epoch(pattern, tokenizer, False, 32, workers=2), epoch(pattern, tokenizer, True, 32, workers=2)
    skipped = {"cpu": [], "gpu": []}
    for a, b in zip(cpu, gpu):
        want, got = pixels(a, 32, on_device=False), pixels(b, 32, on_device=True)  # marks what the device cannot decode
        assert a["keys"] == b["keys"] and torch.equal(a["valid"], b["valid"])
        skipped["cpu"] += sorted(s.split(":")[0] for s in a["skipped"])
        skipped["gpu"] += sorted(s.split(":")[0] for s in b["skipped"])
        for n, key in enumerate(b["keys"]):
            if key == "000010008":  # the PNG: decoded by the worker, as the CPU path does
                assert n in b["decoded_at"].tolist() and torch.allclose(got[n], want[n], atol=1e-3)
            if key == "000010009":  # the grey JPEG: on the device, three equal channels
                assert b["jpeg_sizes"][n] > 0 and torch.allclose(got[n, 0], got[n, 2], atol=1e-3)
    # bad header, no caption, JPEG data cut short, tar cut short: the same samples, counted once each
    assert skipped["cpu"] == skipped["gpu"]
    seen = {k for b in gpu for k in b["keys"]}
    assert set(skipped["gpu"]) == {"000010002", "000010005", "000010007", "000030008"} & seen
    assert "000010007" in skipped["gpu"]


def test_auto_decodes_on_the_device_only_on_cuda():
    assert decode_mode("auto", torch.device("cpu")) == "cpu" and decode_mode("auto", torch.device("cuda", 0)) == "gpu"
    assert decode_mode("gpu", torch.device("cpu")) == "gpu"  # how the tests run the device path on CPU
