"""bench-gpu: the prepared device runs of issues 25 (throughput) and 26 (learning), one `bash bench/gpu.sh` call each.

  make gpu-pack                       # here: .gpuwheels/ (the wheels the device image lacks) and bench/out/gpu-pack/
                                      # (CIFAR-10 through `wit shards write`, gzipped); prints the carry's size
  bash bench/gpu.sh                   # device call 1, issue 25: preflight, compute ceiling, three trainers (~5 min)
  bash bench/gpu.sh --phase learn     # device call 2, issue 26: CIFAR-10 zero-shot, wit vs open_clip_train (~8 min)
  make bench-gpu args=--smoke         # here, CPU, tiny sizes: every phase of call 1 runs (tests/test_bench_gpu.py)
  make bench-gpu args="--smoke --phase learn"   # the same for call 2

Each phase runs in its own process with its own budget (BUDGET, LEARN_BUDGET: seconds on an H100, summing to less
than the call's 570 s); one that fails or overruns is reported and the others still run. Every RESULT line is printed
as soon as its figure exists; all of them, and the logs, land in --out ($OUT on the device). A fresh work folder per
run. Throughput: one estimator for all three trainers, samples / seconds over the same steady steps (after --skip
steps), from wit's log.jsonl (interval_s of each log line) and open_clip_train's log ("Batch (t)": its own mean wall
time per step over each logged interval, x the steps in it: its timestamps have whole seconds only). The shards hold
more samples than the steps read, so no epoch boundary (where wit starts its loader workers again) falls inside.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from loader import make_shards  # noqa: E402
from train import OPEN_CLIP_TRAIN, SAME_OPTIMISER  # noqa: E402  (bench/train.py: one way to run open_clip_train)

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
PACK = ROOT / "bench" / "out" / "gpu-pack"
WHEELS = ROOT / ".gpuwheels"
# What the device image lacks (its python3 is 3.12 with torch, torchvision, timm, huggingface_hub, safetensors, regex,
# pyyaml, pandas, fsspec, pyarrow, tensorboard): pure-python wheels, at requirements.lock's versions
DEVICE_LACKS = ("open_clip_torch", "webdataset", "braceexpand", "ftfy", "wcwidth")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Training captions (bench/learn.py's); the evaluation's CLIP-paper templates are held out.
TEMPLATES = ("a picture of a {}", "an image showing a {}", "{} in this shot", "snapshot: {}", "my {}",
             "there is a {} here", "a {} seen up close", "this is a {}", "look at the {}", "a small image of a {}")
PEAK_TFLOPS = 989.0  # H100 / H200 SXM dense bf16
# Wall-time budget of each phase on an H100, in seconds: a phase still running at its budget is stopped, the next
# one starts. Each call's sum stays under the 570 s that bench/README.md gives the call (its limit is 600 s); the
# expected times (estimates from the 2026-11-23 H100 run and the CPU costs in ENVIRONMENT.md, not measured) are about
# half of that, so that a call plus its machine's start leaves room for one rerun in 15 minutes of device time.
BUDGET = {"shards": 60, "preflight": 60, "ceiling": 60, "wit --decode gpu": 110, "wit --decode cpu": 110,
          "open_clip_train": 130}  # 530 s; expected ~200 s (shards 20, preflight 20, ceiling 20, trainers 35-45 each)
LEARN_BUDGET = {"unpack": 20, "wit train": 180, "wit eval": 45, "open_clip_train": 200,
                "open_clip eval": 45}  # 490 s; expected ~250 s (3,000 steps of 512: 1.5M samples per trainer)


# ---------------------------------------------------------------------------------------------- running phases
RESULTS: dict[str, str] = {}


def result(name: str, value, target: str = "", note: str = "") -> None:
    """One RESULT line, printed now and kept for results.json."""
    text = (f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}") if isinstance(value, float) else str(value)
    RESULTS[name] = text
    print(f"RESULT {name}={text}" + (f" {target}" if target else "") + (f"  ({note})" if note else ""), flush=True)


def phase(name: str, cmd: list[str], budget: float, env: dict, watch_memory: bool = False) -> bool:
    """Run one phase in its own process group, echo its output as it comes, stop it after `budget` seconds.
    True when it exited 0; with watch_memory, the device's peak memory while it ran is a RESULT."""
    print(f"--- {name} (budget {budget:.0f} s): {' '.join(cmd[-12:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    timer = threading.Timer(budget, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    memory = MemoryWatch() if watch_memory else None
    for line in proc.stdout:
        if line.startswith("RESULT "):  # a phase's own figure: shown as is, kept for results.json
            figure, _, value = line[7:].partition("=")
            RESULTS[figure] = value.split()[0] if value.split() else ""
            print(line, end="", flush=True)
        else:
            print(f"    {line}", end="", flush=True)
    proc.wait()
    timer.cancel()
    peak = memory.stop() if memory else None
    seconds = time.perf_counter() - start
    ok = proc.returncode == 0
    why = "done" if ok else ("stopped at its budget" if seconds >= budget else f"FAILED (exit {proc.returncode})")
    print(f"--- {name}: {why} in {seconds:.0f} s", flush=True)
    if peak is not None:
        result(f"peak_memory_gib[{name}]", peak / 1024, note="nvidia-smi, the device's used memory at its highest")
    return ok


class MemoryWatch:
    """The device's used memory (MiB, nvidia-smi, every 0.5 s) at its highest; None where there is no nvidia-smi."""

    def __init__(self):
        self.peak, self.done = None, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.done.wait(0.5):
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=5).stdout.split()
            except (OSError, subprocess.TimeoutExpired):
                return
            if used:
                self.peak = max(self.peak or 0, float(used[0]))

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.peak


def copy_out(source: Path, out: Path, name: str) -> None:
    """A log into --out (flat names: the device returns at most 8 files, two folders deep)."""
    if source.exists():
        shutil.copyfile(source, out / name)


# ---------------------------------------------------------------------------------------------- estimators
def wit_window(log: Path, batch: int, first: int, last: int) -> tuple[float, float]:
    """(samples/s, data-wait share) over steps first+1..last: the log lines that end in that range, each covering
    the steps since the line before, over the sum of their interval_s."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = seconds = wait = 0.0
    for before, record in zip([{"step": 0}] + records, records):
        if first < record["step"] <= last:
            steps += record["step"] - before["step"]
            seconds += record["interval_s"]
            wait += record["data_wait"] * record["interval_s"]
    return steps * batch / seconds, wait / seconds


OPEN_CLIP_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+.*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)")


def open_clip_window(log: Path, batch: int, first: int, last: int) -> tuple[float, float]:
    """The same from open_clip_train's out.log: each line's mean step time ("Batch (t)") and data time ("Data (t)")
    times the steps since the line before. It logs after steps 1, 1 + L, 1 + 2L, ... (wit after L, 2L, ...): the
    window is the same length, one step later."""
    steps = seconds = wait = 0.0
    previous = 0
    for done, data_t, batch_t in OPEN_CLIP_LINE.findall(log.read_text()):
        step = int(done) // batch
        if first + 1 < step <= last + 1:
            steps += step - previous
            seconds += (step - previous) * float(batch_t)
            wait += (step - previous) * float(data_t)
        previous = step
    return steps * batch / seconds, wait / seconds


# ---------------------------------------------------------------------------------------------- call 1: throughput
def throughput(args, work: Path, out: Path, env: dict) -> None:
    shards = work / "shards"
    samples = samples_needed(args)
    me = [sys.executable, __file__, "--work", str(work), *(["--smoke"] if args.smoke else []),
          "--model", args.model, "--batch", str(args.batch), "--samples", str(samples)]
    if not phase("shards", [*me, "--run-phase", "shards"], BUDGET["shards"], env):
        return
    pattern = (shards / "pattern").read_text()
    phase("preflight", [*me, "--run-phase", "preflight"], BUDGET["preflight"], env)
    phase("ceiling", [*me, "--run-phase", "ceiling"], BUDGET["ceiling"], env)
    ceiling = read_json(work / "ceiling.json")
    flops = ceiling.get("flops_per_sample") or 43.4e9  # ViT-B/32's, counted (bench/README.md)
    common = ["--model", args.model, "--batch-size", str(args.batch), "--workers", str(args.workers),
              "--steps", str(args.steps), "--log-every", str(args.log_every), "--ckpt-every", str(10 ** 9),
              "--warmup", "10", "--seed", "0", "--no-tensorboard", "--data", pattern]
    rates = {}
    for decode in ("gpu", "cpu"):
        name, run = f"wit --decode {decode}", work / f"wit-{decode}"
        cmd = [sys.executable, "-m", "wit.trainer.train", *common, "--decode", decode, "--out", str(run),
               *(args.gpu_flags if decode == "gpu" else [])]
        ok = phase(name, cmd, BUDGET[name], env, watch_memory=True)
        copy_out(run / "log.jsonl", out, f"wit-{decode}-log.jsonl")
        if ok:
            rates[name], wait = wit_window(run / "log.jsonl", args.batch, args.skip, args.steps)
            report_rate(name, rates[name], wait, flops, ceiling, args)
        if ok and decode == "gpu":
            fallbacks = sum(r.get("decode_per_image", 0) + r.get("decode_cpu_fallback", 0)
                            for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()))
            result("train_gpu_decode_fallbacks", fallbacks, "target<=0", "decode_per_image + decode_cpu_fallback")
    logs = work / "open_clip"
    cmd = [sys.executable, "-c", OPEN_CLIP_TRAIN, str(ROOT / "trainer" / "model_configs"), "--train-data", pattern,
           "--train-num-samples", str((args.steps + 1) * args.batch), "--dataset-type", "webdataset",
           "--model", args.model, "--batch-size", str(args.batch), "--workers", str(args.workers), "--epochs", "1",
           "--warmup", "10", *SAME_OPTIMISER, "--precision", "fp32" if args.smoke else "amp_bf16",
           "--device", args.device, "--logs", str(logs), "--name", "throughput", "--report-to", "",
           "--log-every-n-steps", str(args.log_every), "--save-frequency", "0", "--seed", "0"]
    ok = phase("open_clip_train", cmd, BUDGET["open_clip_train"], env, watch_memory=True)
    copy_out(logs / "throughput" / "out.log", out, "open_clip-out.log")
    if ok:
        name = "open_clip_train"
        rates[name], wait = open_clip_window(logs / "throughput" / "out.log", args.batch, args.skip, args.steps)
        report_rate(name, rates[name], wait, flops, ceiling, args)
    if "wit --decode gpu" in rates:
        result("train_gpu_samples_per_s", rates["wit --decode gpu"], "target>=6000")
        if "open_clip_train" in rates:
            result("train_gpu_ratio", rates["wit --decode gpu"] / rates["open_clip_train"], "target>=2.5")


def samples_needed(args) -> int:
    """Enough that the steps read, the batch prepared ahead and the loader's read-ahead stay in epoch 0: in shards
    of 512."""
    return -(-(args.steps + 2 * args.log_every + 8) * args.batch // 512) * 512


def report_rate(name: str, rate: float, wait: float, flops: float, ceiling: dict, args) -> None:
    window = f"steps {args.skip + 1}-{args.steps}, batch {args.batch}"
    result(f"samples_per_s[{name}]", rate, note=window)
    result(f"data_wait[{name}]", wait, note="share of the window's wall time spent waiting for data")
    result(f"mfu[{name}]", rate * flops / (args.peak_tflops * 1e12), note=f"of {args.peak_tflops:.0f} TFLOP/s, "
           f"{flops / 1e9:.1f} GFLOP per sample")
    if ceiling.get("tflops"):
        result(f"of_ceiling[{name}]", rate * flops / (ceiling["tflops"] * 1e12), note="of the measured ceiling")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------------------------------------- the phases' bodies
def run_shards(args, work: Path) -> None:
    pattern = make_shards(work / "shards", args.samples)
    (work / "shards" / "pattern").write_text(pattern)
    print(f"{args.samples:,} samples of 256 px JPEGs (bench/loader.py's) in {pattern}", flush=True)


def benchmark_jpegs(work: Path, n: int) -> list[bytes]:
    out = []
    with tarfile.open(work / "shards" / "00000.tar") as tar:
        for member in tar:
            if member.name.endswith(".jpg") and len(out) < n:
                out.append(tar.extractfile(member).read())
    return out


def run_preflight(args, work: Path) -> None:
    """Batched device decode of benchmark JPEGs (images/s, fallbacks, difference from the CPU's pixels), the
    self-test, the stream hazard with and without the decoder's wait, and the loss at step 0."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from wit.trainer.gpu_decode import JpegDecoder, self_test

    device = torch.device(args.device)
    jpegs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in benchmark_jpegs(work, args.batch)]
    decoder = JpegDecoder(device)
    decoder(jpegs)  # the first call sets nvJPEG up
    decoder.take_counts()
    sync(device)
    start, reps = time.perf_counter(), 3
    for _ in range(reps):
        images = decoder(jpegs)
    sync(device)
    result("gpu_decode_images_per_s", reps * len(jpegs) / (time.perf_counter() - start),
           note=f"{len(jpegs)} JPEGs of 256 px per batched call")
    counts = decoder.take_counts()
    result("gpu_decode_fallbacks", counts["per_image"] + counts["cpu_fallback"], "target<=0", str(counts))
    diffs = [(image.cpu().float() - decode_jpeg(data, mode=ImageReadMode.RGB).float()).abs().mean().item()
             for image, data in zip(images, jpegs)]
    result("gpu_decode_mean_abs_diff", sum(diffs) / len(diffs), "target<=2", f"max over images {max(diffs):.3f}")
    result("gpu_decode_self_test", self_test(device) or "passed")
    if device.type == "cuda":
        raw = [im.shape for im in images]
        result("stream_corruptions_without_wait", stream_hazard(lambda: decode_jpeg(jpegs, device=device), raw),
               note="torchvision's decode_jpeg alone: the hazard, if this driver shows it")
        result("stream_corruptions_with_wait", stream_hazard(lambda: decoder(jpegs), raw), "target<=0")
    loss = step0_loss(args, work, device)
    result("loss_step0", loss, f"expected~{math.log(args.batch):.3f}", "ln(batch): a model that knows nothing")


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream_hazard(decode, shapes, rounds: int = 10) -> int:
    """pytorch/vision PR #9606's check: blocks the size of the decoded images, filled with known values, summed by
    kernels queued behind a long chain of products, freed, then a decode (handed those blocks): how many sums went
    wrong, i.e. were overwritten before they were read."""
    import torch
    wrong = 0
    with torch.cuda.stream(torch.cuda.Stream()):
        for _ in range(rounds):
            blocks = [torch.full(shape, k % 200 + 1, dtype=torch.uint8, device="cuda") for k, shape in enumerate(shapes)]
            torch.cuda.synchronize()
            x = torch.randn(4096, 4096, device="cuda")
            for _ in range(30):
                x = torch.tanh(x @ x) / 64  # tens of ms queued before the sums
            sums = [b.sum(dtype=torch.int64) for b in blocks]
            del blocks
            decode()
            torch.cuda.synchronize()
            wrong += sum(int(s) != (k % 200 + 1) * math.prod(shape) for k, (s, shape) in enumerate(zip(sums, shapes)))
    return wrong


def step0_loss(args, work: Path, device) -> float:
    """The CLIP loss of the first batch of the shards through the device path (decoded there), before any step."""
    import open_clip
    import torch

    from wit.trainer.data import ShardLoader
    from wit.trainer.gpu_decode import DeviceBatches
    from wit.trainer.loss import clip_loss
    from wit.trainer.train import MODEL_CONFIGS

    open_clip.add_model_config(MODEL_CONFIGS)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, device=device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    loader = ShardLoader((work / "shards" / "pattern").read_text(), batch_size=args.batch, image_size=size,
                         tokenizer=open_clip.get_tokenizer(args.model), workers=2, jpeg_bytes=True)
    prepare = DeviceBatches(size, torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD),
                            device, decode_on_device=True)
    images, texts, valid = prepare(next(iter(loader)))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        image_features, text_features, scale = model(images, texts)
    return clip_loss(image_features.float(), text_features.float(), scale.float(), valid).item()


def run_ceiling(args, work: Path) -> None:
    """The model's training step alone on synthetic tensors: bf16 autocast forward, backward, fused AdamW."""
    import open_clip
    import torch

    from wit.trainer.loss import clip_loss
    from wit.trainer.train import MODEL_CONFIGS, fast_cuda_math

    open_clip.add_model_config(MODEL_CONFIGS)
    flops = train_flops_per_sample(args.model)
    result("gflop_per_sample", flops / 1e9, note=f"{args.model}, forward + backward, torch.utils.flop_counter")
    device = torch.device(args.device)
    fast_cuda_math(device)
    model = open_clip.create_model(args.model, device=device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(args.batch, 3, size, size, device=device)
    texts = open_clip.get_tokenizer(args.model)([f"a photo of thing {i}" for i in range(args.batch)]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            image_features, text_features, scale = model(images, texts)
        clip_loss(image_features.float(), text_features.float(), scale.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm, timed = (2, 3) if args.smoke else (10, 30)
    for _ in range(warm):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(timed):
        step()
    sync(device)
    rate = timed * args.batch / (time.perf_counter() - start)
    result("compute_ceiling_samples_per_s", rate, note=f"batch {args.batch}, synthetic tensors")
    result("compute_ceiling_tflops", rate * flops / 1e12, note=f"{rate * flops / 1e12 / args.peak_tflops:.1%} of "
           f"{args.peak_tflops:.0f}")
    (work / "ceiling.json").write_text(json.dumps({"flops_per_sample": flops, "tflops": rate * flops / 1e12}))


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


# ---------------------------------------------------------------------------------------------- call 2: learning
def learn(args, work: Path, out: Path, env: dict) -> None:
    pack = Path(args.pack) / "cifar10.tar.gz"
    if args.smoke:  # a pack of a few hundred images, made now through the same code as make gpu-pack's
        if not (CIFAR / "train.tar").exists():
            sys.exit(f"bench-gpu --smoke --phase learn: needs {CIFAR} (../shared/data)")
        pack = make_cifar_pack(work / "pack", env, limit=512)
    if not phase("unpack", ["tar", "-xzf", str(pack), "-C", str(work)], LEARN_BUDGET["unpack"], env):
        return
    index = json.loads((work / "corpus" / "index.json").read_text())
    names = sorted(index["shards"])
    pattern = str(work / "corpus" / f"{{{names[0][:-4]}..{names[-1][:-4]}}}.tar")
    print(f"CIFAR-10 train: {sum(index['shards'].values()):,} samples in {len(names)} shards (wit shards write); "
          f"{args.learn_model}, {args.learn_steps} steps of {args.learn_batch}, lr {args.learn_lr}", flush=True)
    schedule = ["--lr", str(args.learn_lr), "--warmup", str(max(1, args.learn_steps // 20))]
    wit_run = work / "wit-learn"
    if phase("wit train", [sys.executable, "-m", "wit", "train", "--data", str(work / "corpus" / "index.json"),
                           "--model", args.learn_model, "--out", str(wit_run), "--steps", str(args.learn_steps),
                           "--batch-size", str(args.learn_batch), "--workers", str(args.workers), *schedule,
                           "--weight-decay", "0.2", "--log-every", str(max(1, args.learn_steps // 50)),
                           "--ckpt-every", str(10 ** 9), "--no-tensorboard", "--decode", "cpu"],
             LEARN_BUDGET["wit train"], env):
        ours = zeroshot("wit eval", wit_run / "checkpoints", work / "zeroshot-wit.json", args, work, env)
        if ours is not None:
            result("cifar10_zeroshot_top1", ours, "target>=90", f"wit train, {args.learn_steps} steps")
    copy_out(wit_run / "log.jsonl", out, "learn-wit-log.jsonl")
    logs = work / "open_clip"
    if phase("open_clip_train", [
            sys.executable, "-c", OPEN_CLIP_TRAIN, str(ROOT / "trainer" / "model_configs"), "--train-data", pattern,
            "--train-num-samples", str(args.learn_steps * args.learn_batch), "--dataset-type", "webdataset",
            "--model", args.learn_model, "--batch-size", str(args.learn_batch), "--workers", str(args.workers),
            "--epochs", "1", "--lr", str(args.learn_lr), "--wd", "0.2", "--warmup", str(max(1, args.learn_steps // 20)),
            *SAME_OPTIMISER, "--precision", "fp32" if args.smoke else "amp_bf16", "--device", args.device,
            "--logs", str(logs), "--name", "learn", "--report-to", "", "--save-frequency", "1",
            "--log-every-n-steps", str(max(1, args.learn_steps // 50)), "--seed", "0"],
            LEARN_BUDGET["open_clip_train"], env):
        theirs = zeroshot("open_clip eval", logs / "learn" / "checkpoints" / "epoch_1.pt",
                          work / "zeroshot-open_clip.json", args, work, env)
        if theirs is not None:
            result("cifar10_open_clip_top1", theirs, note="open_clip_train, the same model, shards, batch, steps, lr")
            if "cifar10_zeroshot_top1" in RESULTS:
                result("cifar10_gap_vs_open_clip", float(RESULTS["cifar10_zeroshot_top1"]) - theirs, "target>=-1.0")
    copy_out(logs / "learn" / "out.log", out, "learn-open_clip-out.log")


def zeroshot(name: str, checkpoint: Path, result_file: Path, args, work: Path, env: dict) -> float | None:
    """Top-1 (points) of `wit eval zeroshot --prompts cifar10` (the CLIP paper's 18 templates) on the test images."""
    ok = phase(name, [sys.executable, "-m", "wit", "eval", "zeroshot", "--data", str(work / "cifar-test.tar"),
                      "--prompts", "cifar10", "--model", args.learn_model, "--checkpoint", str(checkpoint),
                      "--out", str(result_file)], LEARN_BUDGET[name], env)
    return 100 * json.loads(result_file.read_text())["top1"] if ok else None


# ---------------------------------------------------------------------------------------------- make gpu-pack
PACK_FILES = {"cifar10.tar.gz", "SIZE", "work"}  # what make_pack writes in its folder


def make_pack(args, env: dict) -> None:
    """.gpuwheels/ and bench/out/gpu-pack/cifar10.tar.gz; prints (and writes to bench/out/gpu-pack/SIZE) the size of
    what a device call carries, the working tree included, against the 64 MiB limit."""
    pack = Path(args.pack)
    # --pack may name any folder: only what an earlier gpu-pack wrote there is ever replaced, and its scratch lives
    # inside it
    theirs = sorted(p.name for p in pack.iterdir() if p.name not in PACK_FILES) if pack.is_dir() else []
    if theirs:
        sys.exit(f"gpu-pack: {pack} holds files gpu-pack did not write ({', '.join(theirs[:3])}); give a new folder")
    download_wheels(WHEELS)
    pack.mkdir(parents=True, exist_ok=True)
    built = make_cifar_pack(pack / "work", env)
    built.replace(pack / "cifar10.tar.gz")
    shutil.rmtree(pack / "work")
    tree = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                          capture_output=True, check=True).stdout.split(b"\0")
    sizes = {"working tree": sum((ROOT / f.decode()).stat().st_size for f in tree if f and (ROOT / f.decode()).is_file()),
             ".gpuwheels": sum(f.stat().st_size for f in WHEELS.iterdir()),
             "bench/out/gpu-pack": (pack / "cifar10.tar.gz").stat().st_size}
    line = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
    summary = f"gpu-pack: {line}; {sum(sizes.values()) / 2**20:.1f} MiB carried in all (limit 64 MiB)"
    (pack / "SIZE").write_text(summary + "\n")
    print(summary)
    if sum(sizes.values()) > 64 * 2**20:
        sys.exit("gpu-pack: over the device's 64 MiB carry")


def download_wheels(folder: Path) -> None:
    """The wheels the device image lacks, at requirements.lock's versions, for its Python 3.12 (all pure python)."""
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    wanted = [f"{name}=={lock[name]}" for name in DEVICE_LACKS]
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "-d", str(folder), *wanted], check=True)
    print(f"{folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")


def make_cifar_pack(folder: Path, env: dict, limit: int | None = None) -> Path:
    """CIFAR-10 through wit's own path: the training JPEGs as a crawl's shards (captions from the class name in
    TEMPLATES), `wit shards write` (global shuffle, index.json) into corpus/, and the test JPEGs as cifar-test.tar;
    both gzipped in one file (the tars' headers and padding are most of their size). `limit`: that many of each."""
    shutil.rmtree(folder, ignore_errors=True)
    raw, corpus = folder / "raw", folder / "corpus"
    raw.mkdir(parents=True)
    write_crawl(raw, read_cifar("train.tar", limit), per_shard=5000 if limit is None else limit // 2)
    subprocess.run([sys.executable, "-m", "wit", "shards", "write", "--raw", str(raw), "--out", str(corpus),
                    "--shard-size", "5000" if limit is None else str(limit // 4)], cwd=ROOT, env=env, check=True)
    test = read_cifar("test.tar", limit)
    with tarfile.open(folder / "cifar10.tar.gz", "w:gz") as pack:
        for path in sorted(corpus.glob("*.tar")) + [corpus / "index.json"]:
            pack.add(path, f"corpus/{path.name}")
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(Path(tmp) / "cifar-test.tar", "w") as tar:
                for name, data in test:
                    add(tar, name, data)
            pack.add(Path(tmp) / "cifar-test.tar", "cifar-test.tar")
    return folder / "cifar10.tar.gz"


def read_cifar(tar_name: str, limit: int | None) -> list[tuple[str, bytes]]:
    """(name, JPEG) of ../shared/data/cifar10/<tar_name> (`train/<class>/NNNN.jpg`); `limit` spread over all classes."""
    with tarfile.open(CIFAR / tar_name) as tar:
        items = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and m.name.endswith(".jpg")]
    return items[::len(items) // limit][:limit] if limit else items


def write_crawl(raw: Path, images: list[tuple[str, bytes]], per_shard: int) -> None:
    """The images as a finished crawl's shards (tar, manifest, stats), as `wit download` leaves them."""
    import pyarrow as pa

    from wit.shards import fasttar
    from wit.shards.schema import MANIFEST, pair_uid
    from wit.shards.verify import publish_shard

    for s in range(-(-len(images) // per_shard)):
        rows, samples = [], []
        for i, (name, data) in enumerate(images[s * per_shard:(s + 1) * per_shard]):
            n, label = s * per_shard + i, name.split("/")[-2]
            url, caption, key = f"cifar10:{name}", TEMPLATES[n % len(TEMPLATES)].format(label), f"{s:05d}{i:04d}"
            rows.append({"uid": pair_uid(url, caption), "url": url, "caption": caption, "status": "ok",
                         "shard": f"{s:05d}", "key": key, "width": 32, "height": 32, "source_file": "cifar10",
                         "source_row": n})
            samples.append((key, {"jpg": data, "txt": caption.encode(), "json": json.dumps({"key": key}).encode()}))
        publish_shard(str(raw), f"{s:05d}", fasttar.write_samples(iter(samples)),
                      pa.Table.from_pylist(rows, schema=MANIFEST))


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=("throughput", "learn"), default="throughput",
                   help="throughput: device call 1 (issue 25); learn: device call 2 (issue 26)")
    p.add_argument("--make-pack", action="store_true", help="write .gpuwheels/ and --pack, print the carry's size")
    p.add_argument("--pack", default=str(PACK))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model and sizes: checks that every phase runs")
    p.add_argument("--out", default=None, help="results.json and the logs (default: a new temporary folder)")
    p.add_argument("--work", default=None, help="an empty or new working folder (default: a temporary one, deleted "
                                                "at the end)")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=160, help="steps of each trainer")
    p.add_argument("--skip", type=int, default=40, help="steps before the steady window (start-up, warm-up)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=12, help="loader workers (the device has 16 cores)")
    p.add_argument("--gpu-flags", nargs="*", default=[], help="more flags for the --decode gpu run, e.g. --compile")
    p.add_argument("--samples", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="dense bf16 peak of the chip")
    p.add_argument("--learn-model", default="wit-cifar")
    p.add_argument("--learn-steps", type=int, default=3000)
    p.add_argument("--learn-batch", type=int, default=512)
    p.add_argument("--learn-lr", type=float, default=1e-3)
    p.add_argument("--run-phase", choices=("shards", "preflight", "ceiling"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:  # every phase at a size the 2 shared cores run in well under a minute each
        args.model, args.batch, args.steps, args.skip, args.log_every, args.workers = "wit-tiny", 8, 6, 2, 2, 1
        args.learn_model, args.learn_steps, args.learn_batch = "wit-tiny", 4, 32
    args.device = "cpu" if args.smoke else "cuda"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    if args.smoke:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    if args.make_pack:
        return make_pack(args, env)
    if args.run_phase:  # inside one phase's own process
        phases = {"shards": run_shards, "preflight": run_preflight, "ceiling": run_ceiling}
        return phases[args.run_phase](args, Path(args.work))
    if args.work and Path(args.work).exists() and any(Path(args.work).iterdir()):
        sys.exit(f"bench-gpu: --work {args.work} is not empty (another run's?); give a new folder")
    work = Path(args.work or tempfile.mkdtemp(prefix="wit-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or tempfile.mkdtemp(prefix="wit-bench-gpu-out-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.phase == "learn" and not args.smoke and not (Path(args.pack) / "cifar10.tar.gz").exists():
        sys.exit(f"{args.pack}/cifar10.tar.gz: no pack; make it with `make gpu-pack` where ../shared/data/cifar10 is")
    print(f"bench-gpu --phase {args.phase}{' --smoke' if args.smoke else ''}: work in {work}, results in {out}",
          flush=True)
    start = time.perf_counter()
    (learn if args.phase == "learn" else throughput)(args, work, out, env)
    (out / "results.json").write_text(json.dumps(RESULTS, indent=1) + "\n")
    print(f"\nbench-gpu: {len(RESULTS)} results in {time.perf_counter() - start:.0f} s ({out / 'results.json'}):")
    for name, value in RESULTS.items():  # again at the end, where a device call's output tail shows them
        print(f"  {name}={value}")
    if not args.work:  # the shards and checkpoints of this run (gigabytes on the device); the logs are in `out`
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
