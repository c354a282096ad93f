"""bench-gpu: issue 12's device run in one command: throughput of `wit train --decode gpu`, `--decode cpu` and
`python -m open_clip_train.main` side by side (ViT-B/32, 224 px, batch 256, bf16, same shards), MFU, and a CIFAR-10
zero-shot learning run (train + `wit eval zeroshot --prompts cifar10`, the paper's templates held out of training).

The device machine has no ../shared/data: the CIFAR-10 JPEGs travel packed in one file (`--make-pack`, here: 55 MB of
JPEG bytes, offsets and labels in an .npz, under the device's 64 MiB carry). The throughput shards are 256 px JPEGs
made by bench/loader.py (Flickr8k when present, else generated: the previous H100 run's shards).
MFU counts FLOPs (a multiply-add is 2) of one training sample, forward and backward through both towers, with
torch.utils.flop_counter on the model itself, against the chip's dense bf16 peak (--peak-tflops, H100/H200 SXM 989).

  python bench/gpu.py --make-pack                 # here: writes bench/out/gpu-pack.npz from ../shared/data/cifar10
  bash bench/gpu.sh                               # on the device: this script with the carried pack
  python bench/gpu.py --smoke                     # here, CPU, tiny sizes: every step runs, no figure means anything
Last lines: RESULT train_gpu_samples_per_s, RESULT train_gpu_ratio, RESULT cifar10_zeroshot_top1.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from loader import make_shards  # noqa: E402
from train import ours, run, theirs  # noqa: E402  (bench/train.py: one way to run each trainer)

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
PACK = ROOT / "bench" / "out" / "gpu-pack.npz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Training captions (bench/learn.py's); the evaluation's CLIP-paper templates are held out.
TEMPLATES = ("a picture of a {}", "an image showing a {}", "{} in this shot", "snapshot: {}", "my {}",
             "there is a {} here", "a {} seen up close", "this is a {}", "look at the {}", "a small image of a {}")


# ---------------------------------------------------------------------------------------------- the pack
def make_pack(out: Path) -> None:
    blobs, labels, split = [], [], []
    for part, tar_name in ((0, "train.tar"), (1, "test.tar")):
        with tarfile.open(CIFAR / tar_name) as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".jpg"):
                    blobs.append(tar.extractfile(m).read())
                    labels.append(CLASSES.index(m.name.split("/")[-2]))
                    split.append(part)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, blob=np.frombuffer(b"".join(blobs), np.uint8), ends=np.cumsum([len(b) for b in blobs]),
             label=np.array(labels, np.uint8), split=np.array(split, np.uint8))
    print(f"{out}: {len(blobs):,} JPEGs, {out.stat().st_size / 2**20:.1f} MiB")


def unpack(pack: Path, work: Path, limit: int | None) -> tuple[str, Path]:
    """CIFAR-10 train shards (captions from class names and TEMPLATES) and test.tar as `test/<class>/NNNN.jpg`."""
    z = np.load(pack)
    blob, ends, label, split = z["blob"], z["ends"], z["label"], z["split"]
    starts = np.concatenate([[0], ends[:-1]])
    train, test = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    if limit:  # a spread over all classes (the pack is in class order)
        train, test = train[::len(train) // limit][:limit], test[::len(test) // limit][:limit]
    shards = work / "cifar-train"
    shards.mkdir(parents=True, exist_ok=True)
    per = 5000 if limit is None else max(1, len(train) // 2)
    for s in range(-(-len(train) // per)):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
            for k, i in enumerate(train[s * per:(s + 1) * per]):
                key = f"{s:05d}{k:04d}"
                caption = TEMPLATES[(s * per + k) % len(TEMPLATES)].format(CLASSES[label[i]])
                add(tar, f"{key}.jpg", blob[starts[i]:ends[i]].tobytes())
                add(tar, f"{key}.txt", caption.encode())
    with tarfile.open(work / "cifar-test.tar", "w") as tar:
        for k, i in enumerate(test):
            add(tar, f"test/{CLASSES[label[i]]}/{k:04d}.jpg", blob[starts[i]:ends[i]].tobytes())
    return str(shards / f"{{00000..{-(-len(train) // per) - 1:05d}}}.tar"), work / "cifar-test.tar"


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------- FLOPs
def train_flops_per_sample(model_name: str) -> float:
    """FLOPs (2 per multiply-add) of forward + backward of one sample through both towers, counted by torch."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    open_clip.add_model_config(ROOT / "trainer" / "model_configs")
    model = open_clip.create_model(model_name)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.zeros(2, 3, size, size)
    texts = open_clip.get_tokenizer(model_name)(["a photo", "a dog"])
    with FlopCounterMode(display=False) as counter:
        image_features, text_features, _ = model(images, texts)
        (image_features.sum() + text_features.sum()).backward()
    return counter.get_total_flops() / 2


# ---------------------------------------------------------------------------------------------- the runs
def throughput(args, work: Path, env: dict) -> dict[str, float]:
    pattern = make_shards(work / f"shards-{args.samples}", args.samples)
    flags = ("--no-tensorboard", "--seed", "0")
    rates = {}
    runs = (("wit --decode gpu", ("--decode", "gpu", *args.gpu_flags)), ("wit --decode cpu", ("--decode", "cpu")),
            ("open_clip_train.main", None))
    for name, extra in runs:
        if extra is None:
            steps_per_s, wall = theirs(pattern, args, work, env)
        else:
            steps_per_s, wall = ours(pattern, args, work, env, *flags, *extra, name=name.split()[-1])
        rates[name] = steps_per_s * args.batch
        print(f"{name:<22} {rates[name]:8.0f} samples/s steady ({args.steps} steps in {wall:.0f} s wall)", flush=True)
    return rates


def learn(args, work: Path, env: dict) -> tuple[float, float]:
    pattern, test_tar = unpack(Path(args.pack), work, 256 if args.smoke else None)
    out = work / "learn"
    t0 = time.perf_counter()
    run([sys.executable, "-m", "wit.trainer.train", "--data", pattern, "--model", args.learn_model, "--out", str(out),
         "--steps", str(args.learn_steps), "--batch-size", str(args.learn_batch), "--workers", str(args.workers),
         "--lr", str(args.learn_lr), "--warmup", str(max(1, args.learn_steps // 20)), "--weight-decay", "0.2",
         "--log-every", str(max(1, args.learn_steps // 10)), "--ckpt-every", str(10 ** 9), "--no-tensorboard",
         "--decode", "auto"], env)
    result = work / "zeroshot.json"
    run([sys.executable, "-m", "wit", "eval", "zeroshot", "--data", str(test_tar), "--prompts", "cifar10",
         "--model", args.learn_model, "--checkpoint", str(out / "checkpoints"), "--out", str(result)], env)
    return 100 * json.loads(result.read_text())["top1"], time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-pack", action="store_true", help=f"write --pack from {CIFAR} and stop")
    p.add_argument("--pack", default=str(PACK))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model and sizes: checks that every step runs")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--samples", type=int, default=8192, help="throughput shards (256 px JPEGs)")
    p.add_argument("--steps", type=int, default=60, help="throughput steps per trainer")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--gpu-flags", nargs="*", default=[], help="more flags for the --decode gpu run, e.g. --compile")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the chip (H100/H200 SXM)")
    p.add_argument("--learn-model", default="wit-cifar")
    p.add_argument("--learn-steps", type=int, default=5000)
    p.add_argument("--learn-batch", type=int, default=512)
    p.add_argument("--learn-lr", type=float, default=1e-3)
    p.add_argument("--skip-learn", action="store_true")
    p.add_argument("--work", default=None)
    args = p.parse_args()
    if args.make_pack:
        return make_pack(Path(args.pack))
    if args.smoke:  # every step at a size the 2 shared cores run in a minute or two
        args.model, args.batch, args.samples, args.steps, args.log_every, args.workers = "wit-tiny", 16, 128, 6, 2, 1
        args.learn_model, args.learn_steps, args.learn_batch = "wit-tiny", 4, 32
    args.device = "cpu" if args.smoke else "cuda"
    if not Path(args.pack).exists() and not args.skip_learn:
        sys.exit(f"{args.pack}: no pack; make it with `make gpu-pack` where ../shared/data/cifar10 is")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    if args.smoke:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    work = Path(args.work or tempfile.mkdtemp(prefix="wit-bench-gpu-"))
    rates = throughput(args, work, env)
    flops = train_flops_per_sample(args.model)
    top1, learn_wall = (None, None) if args.skip_learn else learn(args, work, env)

    precision = "CPU fp32 (smoke)" if args.smoke else "bf16"
    print(f"\n{args.model}, batch {args.batch}, {precision}, {args.workers} workers; "
          f"{flops / 1e9:.3g} GFLOP per training sample (forward + backward, both towers, 2 FLOPs per multiply-add)")
    print(f"{'trainer':<22} {'samples/s':>10} {'TFLOP/s':>8} {'MFU':>6}")
    for name, rate in rates.items():
        print(f"{name:<22} {rate:10.0f} {rate * flops / 1e12:8.1f} {rate * flops / 1e12 / args.peak_tflops:6.1%}")
    if top1 is not None:
        print(f"CIFAR-10 zero-shot ({args.learn_model}, {args.learn_steps} steps of {args.learn_batch}): "
              f"top-1 {top1:.2f}% (train + eval {learn_wall:.0f} s)")
    wit_gpu, anchor = rates["wit --decode gpu"], rates["open_clip_train.main"]
    print(f"RESULT train_gpu_samples_per_s={wit_gpu:.0f} target>=6000")
    print(f"RESULT train_gpu_ratio={wit_gpu / anchor:.2f} target>=2.5")
    if top1 is not None:
        print(f"RESULT cifar10_zeroshot_top1={top1:.2f} target>=90")


if __name__ == "__main__":
    main()
