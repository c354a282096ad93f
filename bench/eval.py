"""bench-eval: `wit eval suite` against `clip_benchmark eval` (1.6.2, the reference), one after the other in one run.

The same tasks, model and sets for both: CIFAR-10 test images with the CLIP repo's 18 templates, the same images with
German class names and templates from the set's own files, and Flickr8k retrieval (5 captions per image), all in
CLIP_benchmark's WebDataset layout built from ../shared/data (without it: scikit-learn's digits, as the tests do).
The model is a random-init `--model` (wit-tiny by default) saved as a wit checkpoint, which clip_benchmark loads
through open_clip's `pretrained=`. Both run on the CPU in fp32 (clip_benchmark with `--no_amp`: its default autocast
would run in bf16 here), with the same batch size, each as its own process from start to results file.

clip_benchmark runs as its CLI (`clip_benchmark.cli.main`) in a subprocess of this script, which first registers
wit's model configs with open_clip (wit-tiny is not one of open_clip's) and gives
`zeroshot_classification.accuracy` a NumPy-2.4-safe body with the same definition (1.6.2's `float()` of a
one-element array raises "only 0-dimensional arrays can be converted to Python scalars" under NumPy >= 2.4).

Last lines: RESULT eval_max_abs_diff=<largest difference of any metric> target<=1e-4
            RESULT eval_speed_ratio=<clip_benchmark seconds / wit seconds> target>=2.0
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.eval_sets import classification_set, have_shared, retrieval_set  # noqa: E402

TASKS = {  # wit's task list; clip_benchmark gets the same folders as wds/<name>
    "cifar10": ("CIFAR-10", "acc1"),
    "cifar10_de": ("CIFAR-10 (German)", "acc1"),
    "flickr8k": ("Flickr8k", "mean_recall@1"),
}


def build_sets(root: Path, images: int, captioned: int) -> None:
    classification_set(root / "wds_cifar10_test", images, per_shard=1000)
    classification_set(root / "wds_cifar10_de_test", images, german=True, per_shard=1000)
    retrieval_set(root / "wds_flickr8k_test", captioned, per_shard=500)
    lines = []
    for key, (name, metric) in TASKS.items():
        task = f"retrieval/{key}" if metric == "mean_recall@1" else key
        lines.append(f"{task}:\n  name: {name}\n  path: wds_{key}_test\n  main_metric: {metric}\n")
    (root / "tasks.yml").write_text("".join(lines))


def save_model(name: str, path: Path) -> None:
    import open_clip
    import torch

    from wit.trainer.eval.model import MODEL_CONFIGS

    open_clip.add_model_config(MODEL_CONFIGS)
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    torch.save({"state_dict": model.state_dict(), "step": 0, "config": {"model": name}}, path)


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"bench-eval: {' '.join(cmd[:4])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds


def run_wit(root: Path, ckpt: Path, out: Path, args) -> tuple[float, dict]:
    out.mkdir()
    results = out / "eval_results.jsonl"
    seconds = timed([str(Path(sys.executable).parent / "wit"), "eval", "suite", "--tasks", str(root / "tasks.yml"),
                     "--root", str(root), "--checkpoint", str(ckpt), "--device", "cpu",
                     "--batch-size", str(args.batch_size), "--out", str(results)])
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    return seconds, {line["key"].removeprefix("retrieval/"): line["metrics"] for line in lines}


def run_clip_benchmark(root: Path, ckpt: Path, out: Path, args) -> tuple[float, dict]:
    out.mkdir()
    cmd = [sys.executable, __file__, "--as-clip-benchmark", "eval", "--dataset", *(f"wds/{k}" for k in TASKS),
           "--dataset_root", f"{root}/wds_{{dataset_cleaned}}_test", "--model", args.model, "--pretrained", str(ckpt),
           "--no_amp", "--batch_size", str(args.batch_size), "--recall_k", "1", "5", "10",
           "--output", f"{out}/cb_{{dataset}}.json", "--quiet"]
    seconds = timed(cmd)
    return seconds, {key: json.loads((out / f"cb_{key}.json").read_text())["metrics"] for key in TASKS}


def as_clip_benchmark(argv: list[str]) -> None:
    """clip_benchmark's CLI with wit's model configs known to open_clip and accuracy() working under NumPy 2.4."""
    import open_clip
    from clip_benchmark.metrics import zeroshot_classification

    from wit.trainer.eval.model import MODEL_CONFIGS

    def accuracy(output, target, topk=(1,)):  # 1.6.2's definition; `.item()` where it calls float() on an array
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

    open_clip.add_model_config(MODEL_CONFIGS)
    zeroshot_classification.accuracy = accuracy
    from clip_benchmark.cli import main

    sys.argv = ["clip_benchmark", *argv]
    main()


def differences(wit: dict, cb: dict) -> dict[str, float]:
    """|wit - clip_benchmark| for every metric both report (acc5 of the 10-class sets included)."""
    out = {}
    for key in TASKS:
        for name, value in cb[key].items():
            if isinstance(value, float) and name in wit[key] and wit[key][name] is not None:
                out[f"{key}/{name}"] = abs(wit[key][name] - value)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--as-clip-benchmark"]:
        return as_clip_benchmark(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wit-tiny", help="open_clip model or a config in trainer/model_configs")
    p.add_argument("--images", type=int, default=2000, help="CIFAR-10 test images per classification set")
    p.add_argument("--captioned", type=int, default=1000, help="Flickr8k images (5 captions each)")
    p.add_argument("--batch-size", type=int, default=64, help="for both (clip_benchmark's default)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; each tool's best time counts")
    args = p.parse_args()
    cb = wit = None
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        tmp = Path(tmp)
        build_sets(tmp / "sets", args.images, args.captioned)
        ckpt = tmp / "model.pt"
        save_model(args.model, ckpt)
        print(f"sets: {args.images} CIFAR-10 images twice (English, German), {args.captioned} Flickr8k images x 5 "
              f"captions{'' if have_shared() else ' (no ../shared/data: digits instead)'}; model {args.model}, "
              f"batch {args.batch_size}, fp32 on CPU, {os.cpu_count()} cores", flush=True)
        times = {"clip_benchmark": [], "wit": []}
        for n in range(args.rounds):  # alternate the order: the machine's load moves during a run
            for tool in (("clip_benchmark", "wit") if n % 2 == 0 else ("wit", "clip_benchmark")):
                run = run_clip_benchmark if tool == "clip_benchmark" else run_wit
                seconds, metrics = run(tmp / "sets", ckpt, tmp / f"{tool}-{n}", args)
                times[tool].append(seconds)
                cb, wit = (metrics, wit) if tool == "clip_benchmark" else (cb, metrics)
                print(f"round {n + 1}: {tool:<15} {seconds:6.1f} s", flush=True)
        cb_seconds, wit_seconds = min(times["clip_benchmark"]), min(times["wit"])
    print(f"best: clip_benchmark eval {cb_seconds:.1f} s, wit eval suite {wit_seconds:.1f} s")
    diffs = differences(wit, cb)
    for name, diff in sorted(diffs.items()):
        print(f"  {name:<45} wit {wit[name.split('/')[0]][name.split('/')[1]]:.6f}  |diff| {diff:.2e}")
    print(f"RESULT eval_max_abs_diff={max(diffs.values()):.2e} target<=1e-4")
    print(f"RESULT eval_speed_ratio={cb_seconds / wit_seconds:.2f} target>=2.0")


if __name__ == "__main__":
    main()
