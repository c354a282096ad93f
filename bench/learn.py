"""bench-learn: does the whole pipeline learn? wit's trainer vs open_clip_train on the same curated shards.

The 50,000 CIFAR-10 training images (../shared/data/cifar10/train.tar) are served on a loopback HTTP server with
captions made from the class name and varied templates (none of them the CLIP paper's CIFAR-10 templates, which the
evaluation uses). Then: wit download -> filter images -> dedup -> queries, match, balance -> shards write ->
`wit train` and `python -m open_clip_train.main` on the same shards with the same tiny config, batch, steps and
optimiser settings, once per seed (3 by default: one run's noise is about a point) -> zero-shot on the 10,000
CIFAR-10 test images with the CLIP paper's 18 CIFAR templates.
Last line: RESULT learn_gap_points=<mean top-1 of ours minus open_clip's, in points> target>=-1.0, then the
standard error of that difference and each trainer's standard deviation over the seeds.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from wit.ingest.loopback import LoopbackImageServer  # noqa: E402

sys.path.append(str(REPO / "bench"))  # after the repo: bench/ingest.py must not shadow the ingest package
from train import OPEN_CLIP_TRAIN, SAME_OPTIMISER  # noqa: E402  (bench/train.py: one way to run open_clip_train)

CIFAR = REPO.parent / "shared" / "data" / "cifar10"
# Training captions; the evaluation's templates ("a photo of a {}.", "a blurry photo of the {}.", ...) are held out.
TEMPLATES = ("a picture of a {}", "an image showing a {}", "{} in this shot", "snapshot: {}", "my {}",
             "there is a {} here", "a {} seen up close", "this is a {}", "look at the {}", "a small image of a {}")


def step(name: str, cmd: list[str], env: dict) -> float:
    print(f"--- {name}", flush=True)
    start = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode:
        sys.exit(f"bench-learn: {name} failed:\n{r.stdout[-3000:]}")
    seconds = time.time() - start
    print(f"    {seconds:.0f} s", flush=True)
    return seconds


def wit(*args: str) -> list[str]:
    return [sys.executable, "-m", "wit", *args]


def load_train_images() -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    images, rows = {}, []
    with tarfile.open(CIFAR / "train.tar") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg"):
                _, label, fname = m.name.split("/")[-3:]
                name = f"{label}-{fname}"
                images[name] = tar.extractfile(m).read()
                rows.append((name, label))
    return images, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3, help="runs of each trainer, seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    args = p.parse_args()
    if not (CIFAR / "train.tar").exists():
        raise SystemExit(f"needs {CIFAR} (../shared/data)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-learn-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # One intra-op thread for both trainers (wit's own choice on 2 cores with 2 workers): torch's default, one per
    # core, spins when other jobs share the cores, and then the wall times measure the load, not the trainers.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": ""}
    images, rows = load_train_images()
    times = {}
    with LoopbackImageServer(images) as server:
        with open(work / "list.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["url", "caption"])
            for i, (name, label) in enumerate(rows):
                w.writerow([f"{server.url}/img/{name}", TEMPLATES[i % len(TEMPLATES)].format(label)])
        times["download"] = step("download (50,000 CIFAR-10 training images over loopback)", wit(
            "download", str(work / "list.csv"), "--out", str(work / "raw"), "--allow-net", "127.0.0.1/32",
            "--resize-mode", "no", "--shard-size", "5000", "--no-progress"), env)
    step("filter images", wit("filter", "images", str(work / "raw"), "--out", str(work / "verdicts" / "images"),
                              "--min-side", "16"), env)
    step("dedup", wit("dedup", str(work / "verdicts" / "images"), "--out", str(work / "verdicts" / "dedup"),
                      "--near-k", "0"), env)
    step("queries", wit("queries", "build", "--out", str(work / "queries.parquet")), env)
    step("match", wit("curate", "match", str(work / "raw"), "--queries", str(work / "queries.parquet"),
                      "--out", str(work / "matches")), env)
    step("balance", wit("curate", "balance", str(work / "matches"), "--out", str(work / "balance")), env)
    step("reshard", wit("shards", "write", "--raw", str(work / "raw"), "--out", str(work / "corpus"),
                        "--verdicts", str(work / "verdicts" / "images"), str(work / "verdicts" / "dedup"),
                        "--selection", str(work / "balance" / "selection"), "--shard-size", "5000"), env)
    index = json.loads((work / "corpus" / "index.json").read_text())
    pattern = str(work / "corpus" / f"{{00000..{len(index['shards']) - 1:05d}}}.tar")
    top1 = {"ours": [], "open_clip": []}
    for seed in range(args.seeds):
        for name, result in train_and_evaluate(seed, work, pattern, args, env, times).items():
            top1[name].append(result)
    print(f"\ncorpus: {index['total']:,} pairs in {len(index['shards'])} shards; {args.steps} steps of batch "
          f"{args.batch}, tiny CLIP (wit-tiny, 32 px), CPU, seeds 0..{args.seeds - 1}")
    for name, scores in top1.items():
        print(f"{name:<10} zero-shot top-1 on 10,000 CIFAR-10 test images: mean {statistics.fmean(scores):5.2f}%, "
              f"sd {sd(scores):.2f} ({', '.join(f'{x:.2f}' for x in scores)}); "
              f"train wall {', '.join(map(str, times[name]))} s")
    print("chance     10.00%")
    gap = statistics.fmean(top1["ours"]) - statistics.fmean(top1["open_clip"])
    se = (sd(top1["ours"]) ** 2 / args.seeds + sd(top1["open_clip"]) ** 2 / args.seeds) ** 0.5
    print(f"RESULT learn_gap_points={gap:.2f} target>=-1.0  (standard error {se:.2f}; sd over {args.seeds} seeds: "
          f"ours {sd(top1['ours']):.2f}, open_clip {sd(top1['open_clip']):.2f})")


def train_and_evaluate(seed: int, work: Path, pattern: str, args, env: dict, times: dict) -> dict[str, float]:
    """Both trainers with one seed (init, data order, augmentation); zero-shot top-1 of each, in points."""
    common = dict(lr="5e-4", wd="0.2", warmup="50")
    ours, theirs = work / f"ours-seed{seed}", work / "theirs"
    times.setdefault("ours", []).append(round(step(f"train: wit train, seed {seed}", wit(
        "train", "--data", str(work / "corpus" / "index.json"), "--model", "wit-tiny", "--out", str(ours),
        "--steps", str(args.steps), "--batch-size", str(args.batch), "--workers", str(args.workers), "--seed", str(seed),
        "--lr", common["lr"], "--weight-decay", common["wd"], "--warmup", common["warmup"], "--log-every", "100"), env)))
    times.setdefault("open_clip", []).append(round(step(f"train: open_clip_train.main, seed {seed}", [
        sys.executable, "-c", OPEN_CLIP_TRAIN, str(REPO / "trainer" / "model_configs"), "--train-data", pattern,
        "--train-num-samples", str(args.steps * args.batch), "--dataset-type", "webdataset", "--model", "wit-tiny",
        "--batch-size", str(args.batch), "--workers", str(args.workers), "--epochs", "1", "--lr", common["lr"],
        "--wd", common["wd"], "--warmup", common["warmup"], *SAME_OPTIMISER, "--precision", "fp32", "--device", "cpu",
        "--logs", str(theirs), "--name", f"learn-seed{seed}", "--report-to", "", "--save-frequency", "1",
        "--log-every-n-steps", "100", "--seed", str(seed)], env)))
    theirs_ckpt = next((theirs / f"learn-seed{seed}" / "checkpoints").glob("epoch_*.pt"))
    results = {}
    for name, ckpt in (("ours", ours / "checkpoints"), ("open_clip", theirs_ckpt)):
        out = work / f"zeroshot-{name}-seed{seed}.json"
        step(f"zero-shot: {name}, seed {seed}", wit("eval", "zeroshot", "--data", str(CIFAR / "test.tar"), "--prompts",
                                                    "cifar10", "--model", "wit-tiny", "--checkpoint", str(ckpt),
                                                    "--out", str(out)), env)
        results[name] = 100 * json.loads(out.read_text())["top1"]
    print(f"    seed {seed}: ours {results['ours']:.2f}%, open_clip {results['open_clip']:.2f}%", flush=True)
    return results


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


if __name__ == "__main__":
    main()
