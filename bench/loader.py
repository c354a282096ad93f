"""Loader throughput: trainer.data.ShardLoader vs open_clip_train's get_wds_dataset, same shards, same workers.

Decoded, augmented 224 px samples per CPU-second of the loader's processes (main + workers: "per core"), and
per wall second. Ours hands uint8 tensors to the trainer (normalised on the device); open_clip's, float32. Shards are img2dataset-layout tars of
256 px JPEGs (flickr8k from ../shared/data when present, else generated), made once in a temp dir.
Usage: python bench/loader.py [--samples 4096] [--workers 2] [--batch 64]
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k" / "images"


def source_images(n: int) -> list[bytes]:
    """n JPEGs with a 256 px short side, as img2dataset stores them (resize_mode keep_ratio)."""
    files = sorted(FLICKR.glob("*.jpg"))[:n] if FLICKR.exists() else []
    out = []
    for i in range(n):
        if files:
            img = Image.open(files[i % len(files)]).convert("RGB")
        else:  # smooth gradients plus noise, so that JPEG decoding costs about what a photo costs
            rng = np.random.default_rng(i)
            x = np.linspace(0, 1, 384)[None, :, None] * rng.random(3) * 255
            img = Image.fromarray(np.clip(x + rng.normal(0, 25, (288, 384, 3)), 0, 255).astype(np.uint8))
        scale = 256 / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def make_shards(directory: Path, samples: int, per_shard: int = 512) -> str:
    n_shards = -(-samples // per_shard)
    pattern = str(directory / f"{{00000..{n_shards - 1:05d}}}.tar")
    if (directory / "done.json").exists() and json.loads((directory / "done.json").read_text()) == samples:
        return pattern
    directory.mkdir(parents=True, exist_ok=True)
    images = source_images(min(samples, 1000))
    for s in range(n_shards):
        with tarfile.open(directory / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per_shard, min(samples, (s + 1) * per_shard)):
                key = f"{s:05d}{i:04d}"
                files = {"jpg": images[i % len(images)], "txt": f"a photo number {i} of something".encode(),
                         "json": json.dumps({"key": key}).encode()}
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (directory / "sizes.json").write_text(json.dumps({"shards": {f"{s:05d}.tar": min(per_shard, samples - s * per_shard) for s in range(n_shards)}}))
    (directory / "done.json").write_text(json.dumps(samples))
    return pattern


def children() -> set[int]:
    pids, todo = set(), [os.getpid()]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            pids.update(kids)
            todo += kids
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (its loader workers are still alive when we read it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(make_batches, expected: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of the loader's processes: main + its new workers),
    so other load on the machine changes the per-core figure little."""
    before = children()
    self0 = time.process_time()
    t0, n = time.perf_counter(), 0
    batches = make_batches()
    for batch in batches:
        n += len(batch[1] if isinstance(batch, (list, tuple)) else batch["keys"])
        if n >= expected:
            break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - self0 + sum(cpu_seconds(pid) for pid in children() - before)
    if hasattr(batches, "close"):
        batches.close()
    del batches
    gc.collect()
    return n / wall, n / cpu


def ours(pattern: str, args) -> float:
    import open_clip
    from wit.trainer.data import ShardLoader

    loader = ShardLoader(pattern, batch_size=args.batch, image_size=224, tokenizer=open_clip.get_tokenizer("ViT-B-32"),
                         workers=args.workers)
    return rate(lambda: iter(loader), loader.steps_per_epoch * args.batch)


def open_clip_train(pattern: str, args) -> float:
    import open_clip
    from open_clip_train.data import get_wds_dataset

    ns = argparse.Namespace(train_data=pattern, train_num_samples=args.samples, batch_size=args.batch,
                            workers=args.workers, world_size=1, seed=0, dataset_resampled=False,
                            train_data_upsampling_factors=None, val_data=None, val_num_samples=None)
    preprocess = open_clip.image_transform(224, is_train=True)
    info = get_wds_dataset(ns, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    return rate(lambda: iter(info.dataloader), args.samples // args.batch * args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    pattern = make_shards(Path(tempfile.gettempdir()) / f"wit-bench-loader-{args.samples}", args.samples)
    source = "flickr8k" if FLICKR.exists() else "generated"
    print(f"shards: {pattern} ({args.samples} samples, {source} 256 px JPEGs); workers={args.workers} "
          f"batch={args.batch}; cores={os.cpu_count()}", flush=True)
    theirs_wall, theirs = open_clip_train(pattern, args)
    print(f"open_clip_train get_wds_dataset: {theirs:7.1f} samples/s/core (CPU time)  {theirs_wall:7.1f} samples/s wall",
          flush=True)
    mine_wall, mine = ours(pattern, args)
    print(f"wit.trainer.data.ShardLoader:        {mine:7.1f} samples/s/core (CPU time)  {mine_wall:7.1f} samples/s wall")
    print(f"wall-clock ratio {mine_wall / theirs_wall:.2f} (noisy when other work shares the cores)")
    print(f"RESULT loader_ratio={mine / theirs:.2f} target>=2.0")

if __name__ == "__main__":
    main()
