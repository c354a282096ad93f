"""wit.trainer.gpu_decode: `--decode gpu`'s code path, run on CPU tensors (torchvision's CPU decode_jpeg), gives the
CPU path's crops, sizes, pixels (within a few levels), masks and skipped counts."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wit.trainer.data import ShardLoader, crop_plan, crop_rng
from wit.trainer.gpu_decode import DeviceBatches, choose_decode, crop_resize, reference_jpegs, self_test
from wit_trainer_data import jpeg, write_shards

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
            if factor > 1:  # oversized: the worker decodes it at reduced size (PIL draft), as the CPU path does
                assert n in b["decoded_at"].tolist() and b["jpeg_sizes"][n] == 0, key
            else:
                assert b["boxes"][n].tolist() == list(box) and b["jpeg_sizes"][n] > 0, key
            factors.add(factor)
        want, got = pixels(a, size, on_device=False), pixels(b, size, on_device=True)
        assert got.shape == want.shape == (4, 3, size, size)
        diff = (got - want).abs()
        # Same crop, different decoders (libjpeg's scaled IDCT in PIL vs a full decode) and float vs uint8
        # resampling: a few levels on average; a shifted or other box moves real photos by tens of levels.
        assert diff.mean(dim=(1, 2, 3)).max() < 4, diff.mean(dim=(1, 2, 3))
    assert (size == 64) == (factors > {1})  # 64 px: the Flickr photos are oversized (drafted at 1/2 or 1/4)


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


def test_the_batched_crop_resize_gives_the_pixels_of_interpolate_image_by_image():
    """crop_resize (one padded stack, two batched products) against F.interpolate's antialiased bicubic per image,
    shrinking and enlarging, boxes clipped by the image as slicing clips them."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
              for h, w in ((256, 384), (32, 32), (500, 333), (30, 29))]
    boxes = [[10, 5, 300, 250], [1, 2, 31, 32], [0, 0, 333, 500], [3, 1, 40, 40]]
    for size in (224, 64, 32):
        got = crop_resize(images, boxes, size)
        for n, (image, (left, top, right, bottom)) in enumerate(zip(images, boxes)):
            crop = image[None, :, top:bottom, left:right].float()
            want = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)[0].clamp(0, 255).round()
            diff = (got[n] - want).abs()
            assert diff.max() <= 1 and diff.mean() < 0.01, (size, n)  # float rounding: a level, rarely


def saved(image: bytes, **options) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(image)).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def test_progressive_and_oversized_jpegs_are_decoded_by_the_workers_with_the_cpu_paths_pixels(tmp_path, tokenizer):
    progressive = saved(jpeg(1, (96, 72)), progressive=True)
    oversized = jpeg(2, (200, 160))  # 32 px output: drafted at 1/4 by the CPU path
    plain = [jpeg(3 + k, (40, 36)) for k in range(6)]
    assert Image.open(io.BytesIO(progressive)).info.get("progressive")
    pattern = write_real_shards(tmp_path, [progressive, oversized, *plain])
    cpu, gpu = epoch(pattern, tokenizer, False, 32), epoch(pattern, tokenizer, True, 32)
    in_workers = set()
    for a, b in zip(cpu, gpu):
        in_workers |= {b["keys"][n] for n in b["decoded_at"].tolist()}
        assert torch.allclose(pixels(a, 32, on_device=False)[b["decoded_at"]],
                              pixels(b, 32, on_device=True)[b["decoded_at"]], atol=1e-3)
    assert in_workers == {"000000000", "000000001"}


def test_wit_train_counts_where_each_image_was_decoded_and_says_a_fallback_once(tmp_path, capsys, monkeypatch):
    """A JPEG cut short (its header reads) fails its batch's batched decode (the rest of that batch: one image at a
    time); a progressive JPEG and a PNG are decoded by the workers. Three steps of 4 over 8 samples prepare 4 batches
    (one ahead): every sample twice."""
    from wit.trainer.train import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    images = [jpeg(0)[:1571], saved(jpeg(1), progressive=True), *(jpeg(2 + k) for k in range(6))]
    png = io.BytesIO()
    Image.open(io.BytesIO(jpeg(9))).save(png, "PNG")
    images[2] = png.getvalue()  # PIL opens it whatever the .jpg name says
    pattern = write_real_shards(tmp_path, images)
    flags = ["--data", pattern, "--batch-size", "4", "--workers", "0", "--window", "8", "--warmup", "1",
             "--steps", "3", "--log-every", "1", "--ckpt-every", "100", "--no-tensorboard", "--decode", "gpu"]
    assert main([*flags, "--out", str(tmp_path / "run")]) == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    total = {kind: sum(r[f"decode_{kind}"] for r in log) for kind in ("batched", "per_image", "cpu_fallback",
                                                                    "in_workers")}
    assert total["in_workers"] == 2 * 2 and total["batched"] + total["per_image"] == 2 * 5
    assert total["per_image"] >= 2 and total["cpu_fallback"] == 0  # the CPU is the device here: nothing to fall to
    err = capsys.readouterr().err
    assert err.count("decoding that batch one image at a time") == 1, err  # two such batches, said once

    assert main([*flags[:-2], "--steps", "1", "--out", str(tmp_path / "auto")]) == 0
    assert "decode on cpu: --decode auto: on the CPU, as the device is cpu, not CUDA" in capsys.readouterr().out
    assert not any(k.startswith("decode_") for k in json.loads((tmp_path / "auto" / "log.jsonl").read_text()))


def test_the_self_test_passes_on_the_cpu_and_says_in_one_line_why_it_fails():
    assert self_test(torch.device("cpu")) == ""  # the CPU's decoder, batched, against itself
    assert len(reference_jpegs()) == 3
    failed = self_test(torch.device("cpu"), tolerance=-1)
    assert failed.startswith("reference JPEG 0: mean difference 0.00 from the CPU's pixels") and "\n" not in failed
    assert choose_decode("auto", torch.device("cpu")) == ("cpu", "--decode auto: on the CPU, as the device is cpu, "
                                                                  "not CUDA")
    assert choose_decode("gpu", torch.device("cpu"))[0] == "gpu"  # how the tests run the device path on CPU
