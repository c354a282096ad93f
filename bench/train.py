"""Training throughput: `trainer.train` vs `python -m open_clip_train.main`, same model config, shards, batch,
workers and steps, one process each (open_clip_train's DDP does not run on CPU); CPU fp32 or CUDA bf16.

Steady-state steps/s: the mean over logged intervals after the first (startup and warm-up excluded).
`--hog N` runs N busy Python loops beside both runs: a known share of other jobs on the cores.
Usage: python bench/train.py [--samples 4096] [--batch 64] [--workers 2] [--model wit-tiny] [--device cuda] [--hog 2]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from loader import make_shards  # noqa: E402  (the same shards as bench/loader.py)

OPEN_CLIP_TRAIN = ("import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
                   "from open_clip_train.main import main; main(sys.argv[1:])")
# open_clip_train picks Adam's beta2/eps by model name ("vit" in it or not) and clips no gradient by default:
# wit's defaults, given to it explicitly, so that the runs differ in the trainer alone
SAME_OPTIMISER = ("--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--grad-clip-norm", "1.0")


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc.stdout + proc.stderr


def ours(pattern, args, work: Path, env) -> tuple[float, float]:
    out = work / "ours"
    wall, _ = run([sys.executable, "-m", "wit.trainer.train", "--data", pattern, "--model", args.model, "--out", str(out),
                   "--steps", str(args.steps), "--batch-size", str(args.batch), "--workers", str(args.workers),
                   "--log-every", str(args.log_every), "--ckpt-every", str(10 ** 9), "--warmup", "10"], env)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()][1:]
    return sum(r["samples_per_s"] for r in log) / len(log) / args.batch, wall


def theirs(pattern, args, work: Path, env) -> tuple[float, float]:
    wall, text = run([sys.executable, "-c", OPEN_CLIP_TRAIN, str(ROOT / "trainer" / "model_configs"),
                      "--train-data", pattern, "--train-num-samples", str(args.steps * args.batch),
                      "--dataset-type", "webdataset", "--model", args.model, "--batch-size", str(args.batch),
                      "--workers", str(args.workers), "--epochs", "1", "--warmup", "10", *SAME_OPTIMISER,
                      "--precision", "amp_bf16" if args.device == "cuda" else "fp32", "--device", args.device,
                      "--logs", str(work / "theirs"), "--name", "bench", "--report-to", "",
                      "--log-every-n-steps", str(args.log_every), "--save-frequency", "0"], env)
    times = [float(t) for t in re.findall(r"Batch \(t\): ([\d.]+)", text)][1:]
    return 1 / (sum(times) / len(times)), wall


def spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def hogs(n: int):
    """n processes that keep a core busy each, for as long as the block runs."""
    procs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(n)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="wit-tiny")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--hog", type=int, default=0, help="busy loops beside both runs (default: none)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: bf16 autocast for both (ours picks CUDA by itself), e.g. --model ViT-B-32 --batch 256")
    args = parser.parse_args()
    pattern = make_shards(Path(tempfile.gettempdir()) / f"wit-bench-loader-{args.samples}", args.samples)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # both on the CPU even on a GPU machine
    print(f"model={args.model} batch={args.batch} steps={args.steps} workers={args.workers} hogs={args.hog} "
          f"shards={pattern}", flush=True)
    with tempfile.TemporaryDirectory() as work, hogs(args.hog):
        b, b_wall = theirs(pattern, args, Path(work), env)
        print(f"open_clip_train.main: {b:6.2f} steps/s steady ({args.steps} steps in {b_wall:.1f} s wall)", flush=True)
        a, a_wall = ours(pattern, args, Path(work), env)
        print(f"wit.trainer.train:        {a:6.2f} steps/s steady ({args.steps} steps in {a_wall:.1f} s wall)", flush=True)
    if args.device == "cuda":  # samples/s ratio at the same batch equals the steps/s ratio
        print(f"RESULT train_gpu_ratio={a / b:.2f} target>=1.3")
    else:
        print(f"RESULT train_cpu_ratio={a / b:.2f} target>=1.0")


if __name__ == "__main__":
    main()
