"""bench-filter: does the CLIP-score filter help? And SigLIP's sigmoid loss against the softmax loss.

A pool of real images (CIFAR-10 training JPEGs from ../shared/data, captions from the class name and varied
templates) with 30% of the captions swapped between images. A first wit-tiny is trained on the whole pool, `wit embed`
scores the pool with it, `wit filter clip-score --top-fraction 0.7` keeps the best 70%, and models are trained again
for the same steps on those pairs and on random 70% subsets (one per seed), through `wit shards write` both, then
scored zero-shot on held-out CIFAR-10 test images with the CLIP paper's templates (`wit eval zeroshot`).
Also: `--loss siglip` against `--loss clip` at batch 64 and 256 on the whole pool (figures, no target).
Last line: RESULT clip_score_gain_points=<mean filtered top-1 minus mean random top-1, points> target>=2.0
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from wit.shards import fasttar  # noqa: E402
from wit.shards.schema import MANIFEST, OK, VERDICT, pair_uid  # noqa: E402
from wit.shards.tables import read_parquet, write_parquet  # noqa: E402
from wit.shards.verify import publish_shard  # noqa: E402

CIFAR = REPO.parent / "shared" / "data" / "cifar10"
TEMPLATES = ("a picture of a {}", "an image showing a {}", "{} in this shot", "snapshot: {}", "my {}",
             "there is a {} here", "a {} seen up close", "this is a {}", "look at the {}", "a small image of a {}")


def run(name: str, cmd: list[str], env: dict) -> float:
    print(f"--- {name}", flush=True)
    start = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        sys.exit(f"bench-filter: {name} failed:\n{r.stdout[-3000:]}")
    print(f"    {time.time() - start:.0f} s", flush=True)
    return time.time() - start


def wit(*args: str) -> list[str]:
    return [sys.executable, "-m", "wit", *args]


def pool_images(n: int) -> list[tuple[bytes, str]]:
    """n CIFAR-10 training JPEGs spread evenly over the classes, with their class names."""
    with tarfile.open(CIFAR / "train.tar") as tar:
        members = sorted((m for m in tar if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        step = len(members) / n
        picked = [members[int(i * step)] for i in range(n)]
        return [(tar.extractfile(m).read(), m.name.split("/")[-2]) for m in picked]


def write_pool(out: Path, images, swap: float, shard_size: int, seed: int) -> dict[str, bool]:
    """Crawl-layout shards (tar, manifest, stats); returns {uid: caption is mismatched}."""
    rng = np.random.default_rng(seed)
    # Shuffled, as a crawl of the web is: in class order each shard would hold one or two classes, and the first
    # model, which streams the pool shard by shard, would learn from a shuffle buffer of one class at a time.
    images = [images[i] for i in rng.permutation(len(images))]
    labels = [label for _, label in images]
    captions = [TEMPLATES[i % len(TEMPLATES)].format(label) for i, label in enumerate(labels)]
    swapped = rng.choice(len(images), int(swap * len(images)), replace=False)
    moved = [captions[i] for i in np.roll(swapped, 1)]  # rotate the chosen captions among themselves
    for i, c in zip(swapped, moved):
        captions[i] = c
    mismatched = {}
    for s in range(0, len(images), shard_size):
        name = f"{s // shard_size:05d}"
        rows, samples = [], []
        for i in range(s, min(s + shard_size, len(images))):
            url = f"http://127.0.0.1/cifar/{i}.jpg"
            uid, key = pair_uid(url, captions[i]), f"{name}{i - s:05d}"
            mismatched[uid] = labels[i] not in captions[i]
            rows.append({"uid": uid, "url": url, "caption": captions[i], "status": OK, "shard": name, "key": key,
                         "width": 32, "height": 32, "original_width": 32, "original_height": 32})
            samples.append((key, {"jpg": images[i][0], "txt": captions[i].encode(),
                                  "json": json.dumps({"url": url}).encode()}))
        publish_shard(str(out), name, fasttar.write_samples(samples), pa.Table.from_pylist(rows, schema=MANIFEST))
    return mismatched


def random_verdicts(raw: Path, out: Path, fraction: float, seed: int) -> None:
    """Keep a uniformly random `fraction` of every shard (the filter's baseline); VERDICT files."""
    rng = np.random.default_rng(seed)
    for manifest in sorted(raw.glob("*.parquet")):
        uids = read_parquet(str(manifest), ["uid"])["uid"].to_pylist()
        keep = np.zeros(len(uids), bool)
        keep[rng.choice(len(uids), round(fraction * len(uids)), replace=False)] = True
        write_parquet(str(out / manifest.name), pa.table({
            "uid": uids, "keep": keep, "reason": [None if k else "random_subset" for k in keep],
            "dup_of": pa.nulls(len(uids), pa.string())}, schema=VERDICT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=10_000, help="CIFAR-10 training images in the pool")
    p.add_argument("--swap", type=float, default=0.3, help="fraction of captions swapped between images")
    p.add_argument("--keep", type=float, default=0.7, help="fraction kept by the filter and by the random subset")
    p.add_argument("--steps", type=int, default=900, help="training steps of every compared model")
    p.add_argument("--scorer-steps", type=int, default=None,
                   help="training steps of the first (scoring) model; default: --steps")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-images", type=int, default=2000, help="held-out CIFAR-10 test images (0: all 10,000)")
    p.add_argument("--siglip-batches", default="64,256", help="batch sizes of the SigLIP vs softmax runs ('' skips)")
    p.add_argument("--siglip-steps", type=int, default=300, help="training steps of the SigLIP vs softmax runs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    args = p.parse_args()
    if not (CIFAR / "train.tar").exists():
        raise SystemExit(f"needs {CIFAR} (../shared/data)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-filter-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    started = time.time()
    print(f"load before: {os.getloadavg()}", flush=True)

    mismatched = write_pool(work / "raw", pool_images(args.pool), args.swap, max(500, args.pool // 8), seed=0)
    n_shards = len(list((work / "raw").glob("*.tar")))
    pool = str(work / "raw" / f"{{00000..{n_shards - 1:05d}}}.tar")

    def train(name: str, data: str, seed: int = 0, batch: int | None = None, loss: str = "clip",
              steps: int | None = None) -> str:
        steps = steps or args.steps
        run(f"train {name}", wit("train", "--data", data, "--model", "wit-tiny", "--out", str(work / name),
                                 "--steps", str(steps), "--batch-size", str(batch or args.batch), "--seed",
                                 str(seed), "--workers", str(args.workers), "--warmup", str(max(1, steps // 10)),
                                 "--loss", loss, "--log-every", "50", "--no-tensorboard"), env)
        return str(work / name / "checkpoints")

    def zeroshot(name: str, ckpt: str) -> float:
        out = work / f"zeroshot-{name}.json"
        run(f"zero-shot {name}", wit("eval", "zeroshot", "--data", str(CIFAR / "test.tar"), "--prompts", "cifar10",
                                     "--checkpoint", ckpt, "--limit", str(args.eval_images), "--out", str(out)), env)
        return 100 * json.loads(out.read_text())["top1"]

    def corpus(name: str, verdicts: Path) -> str:
        run(f"shards write {name}", wit("shards", "write", "--raw", str(work / "raw"), "--out", str(work / name),
                                        "--verdicts", str(verdicts), "--shard-size", "1000", "--workers", "2"), env)
        return str(work / name / "index.json")

    first = train("first", pool, steps=args.scorer_steps)
    scores = {"first (whole pool)": [zeroshot("first", first)]}
    run("embed the pool", wit("embed", str(work / "raw"), "--out", str(work / "embeddings"), "--checkpoint", first,
                              "--workers", "2"), env)
    run("filter clip-score", wit("filter", "clip-score", str(work / "embeddings"), "--out",
                                 str(work / "v_clip"), "--top-fraction", str(args.keep), "--workers", "2"), env)
    kept = {u for f in (work / "v_clip").glob("*.parquet") for u, k in
            zip(*(read_parquet(str(f), ["uid", "keep"])[c].to_pylist() for c in ("uid", "keep"))) if k}
    bad_before = sum(mismatched.values()) / len(mismatched)
    bad_after = sum(mismatched[u] for u in kept) / len(kept)
    filtered_data = corpus("corpus_filtered", work / "v_clip")
    scores["filtered 70%"], scores["random 70%"] = [], []
    for seed in range(args.seeds):
        (work / f"v_random{seed}").mkdir(exist_ok=True)
        random_verdicts(work / "raw", work / f"v_random{seed}", args.keep, seed=100 + seed)
        random_data = corpus(f"corpus_random{seed}", work / f"v_random{seed}")
        scores["filtered 70%"].append(zeroshot(f"filtered{seed}", train(f"filtered{seed}", filtered_data, seed)))
        scores["random 70%"].append(zeroshot(f"random{seed}", train(f"random{seed}", random_data, seed)))
    for batch in [int(b) for b in args.siglip_batches.split(",") if b]:
        for loss in ("clip", "siglip"):
            name = f"{loss}-b{batch}"
            scores[f"{loss} batch {batch} (whole pool)"] = [zeroshot(name, train(name, pool, 0, batch, loss,
                                                                                  args.siglip_steps))]

    print(f"\npool: {args.pool:,} CIFAR-10 training images, {bad_before:.0%} of captions mismatched; the filter kept "
          f"{len(kept):,} pairs, {bad_after:.1%} of them mismatched")
    print(f"scoring model: {args.scorer_steps or args.steps} steps on the whole pool; the others "
          f"{args.steps} steps")
    print(f"wit-tiny, {args.steps} steps of batch {args.batch} (SigLIP rows: {args.siglip_steps} steps of their "
          f"batch), CPU; zero-shot top-1 on "
          f"{args.eval_images or 10_000} CIFAR-10 test images, 18 CLIP templates")
    for name, values in scores.items():
        spread = f" ± {statistics.stdev(values):.2f} (sd over {len(values)} seeds: " \
                 f"{', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""
        print(f"  {name:<28} {statistics.mean(values):6.2f}%{spread}")
    print(f"wall {time.time() - started:.0f} s; load after: {os.getloadavg()}")
    gain = statistics.mean(scores["filtered 70%"]) - statistics.mean(scores["random 70%"])
    print(f"RESULT clip_score_gain_points={gain:.2f} target>=2.0")


if __name__ == "__main__":
    main()
