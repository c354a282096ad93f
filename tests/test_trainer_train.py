"""`torchrun -m wit.trainer.train` with two real gloo processes over shards in a loopback S3 server."""
from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
import torch

from wit_trainer_data import write_shards

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def put_s3(bucket: str):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)

    def put(name, data):
        with fs.open(f"{bucket}/shards/{name}", "wb") as f:
            f.write(data)
    return put


def train_cmd(data: str, out: Path, *flags: str) -> list[str]:
    return [*TORCHRUN, "-m", "wit.trainer.train", "--data", data, "--out", str(out), "--batch-size", "4",
            "--workers", "2", "--window", "5", "--warmup", "2", "--log-every", "1", "--log-samples", *flags]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(cmd, timeout=180):
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def descendants(pid: int) -> list[int]:
    """Child processes, recursively, from /proc (torchrun starts each rank in its own session)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


def steps(out: Path, rank: int) -> dict[int, dict]:
    """The last record per step of a rank's samples log (a resumed run re-does the steps after its checkpoint)."""
    lines = (out / f"samples-rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


@pytest.mark.timeout(240)
def test_two_ranks_read_every_sample_once_per_epoch_from_s3(s3_bucket, tmp_path):
    # 24 samples = 3 steps x 2 ranks x 4; 3 shards for 4 loader workers; uneven; one bad JPEG, one missing caption,
    # one truncated tar.
    keys = write_shards(put_s3(s3_bucket), [7, 13, 4],
                        **{"1": dict(bad_jpeg=(2,), no_caption=(5,)), "2": dict(truncate=True)})
    out = tmp_path / "run"
    proc = run(train_cmd(f"{s3_bucket}/shards/{{00000..00002}}.tar", out, "--steps", "6", "--seed", "5", "--accum", "2"))
    assert "3 steps/epoch" in proc.stdout
    records = [steps(out, r) for r in (0, 1)]
    epochs = collections.defaultdict(collections.Counter)
    skipped = collections.defaultdict(set)
    for rank_records in records:
        for rec in rank_records.values():
            epochs[rec["epoch"]].update(rec["keys"])
            skipped[rec["epoch"]] |= {s.split(":")[0] for s in rec["skipped"]}
    for epoch in (0, 1):
        assert sorted(epochs[epoch].elements()) == sorted(keys)  # each sample exactly once per epoch
        assert skipped[epoch] == {"000010002", "000010005", "000020003"}  # counted, and only those
    assert [records[0][s]["keys"] for s in range(3)] != [records[0][s]["keys"] for s in range(3, 6)]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r["skipped"] for r in log) == 6 and log[-1]["step"] == 6 and log[-1]["samples_seen"] == 48 - 6
    assert all(r["loss"] > 0 and r["temperature"] > 0.01 for r in log)

    # The final checkpoint loads with weights_only=True and into open_clip.
    ckpt = out / "checkpoints" / "step_00000006.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6 and (state["loader"]["epoch"], state["loader"]["step"]) == (1, 3)
    import open_clip
    open_clip.add_model_config(ROOT / "trainer" / "model_configs")
    model, _, preprocess = open_clip.create_model_and_transforms("wit-tiny", pretrained=str(ckpt))
    torch.testing.assert_close(model.logit_scale.detach(), state["state_dict"]["logit_scale"])


@pytest.mark.timeout(300)
def test_kill_9_and_resume_gives_the_same_next_batches_and_losses(s3_bucket, tmp_path):
    # On the CPU decode path only: what a resume restores (the loader's position and every sample's crop box, chosen
    # in the loader) is the same with --decode gpu, whose pixels test_trainer_gpu_decode.py checks against these.
    decode = "cpu"
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(lambda n, d: (shards / n).write_bytes(d), [11, 17, 6])  # 34 samples: 4 steps/epoch
    data = str(shards / "{00000..00002}.tar")
    flags = ["--steps", "9", "--ckpt-every", "1", "--decode", decode]
    whole = tmp_path / "whole"
    bucket = f"{s3_bucket}/{decode}"
    assert f"decode on {decode}" in run(train_cmd(data, whole, *flags, "--ckpt", f"{bucket}/whole")).stdout

    out, ckpt = tmp_path / "killed", f"{bucket}/killed"
    kill_after = random.Random().randint(2, 6)
    proc = subprocess.Popen(train_cmd(data, out, *flags, "--ckpt", ckpt), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    log = out / "samples-rank0.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun, both ranks (own sessions) and loader workers
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(steps(out, 0))
    assert killed_at < 8

    resumed = run(train_cmd(data, out, *flags, "--ckpt", ckpt, "--resume", "latest"))
    assert f"resuming from {ckpt}/step_" in resumed.stdout
    resumed_at = int(resumed.stdout.split(f"{ckpt}/step_")[1][:8])
    assert 1 <= resumed_at <= killed_at + 1
    for rank in (0, 1):
        a, b = steps(whole, rank), steps(out, rank)
        assert sorted(a) == sorted(b) == list(range(9))
        for s in range(9):  # includes the steps re-done after the checkpoint and those never done before the kill
            assert a[s]["keys"] == b[s]["keys"], (rank, s)
            assert abs(a[s]["loss"] - b[s]["loss"]) < 1e-5, (rank, s, a[s]["loss"], b[s]["loss"])
    # The resumed process really re-did the steps after its checkpoint (the log holds the run before the kill too).
    lines = [json.loads(x)["step"] for x in (out / "samples-rank0.jsonl").read_text().splitlines()]
    assert lines.count(resumed_at) == (2 if resumed_at <= killed_at else 1)


@pytest.mark.timeout(120)
def test_tensorboard_scalars_equal_the_jsonl_log_and_resampled_runs_end_to_end(tmp_path, monkeypatch):
    """In-process, one rank: the event file holds the JSONL values; --resampled --no-tensorboard trains too."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from wit.trainer.train import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [9, 5, 12])  # 26 samples: 6 steps/epoch
    flags = ["--data", str(tmp_path / "{00000..00002}.tar"), "--batch-size", "4", "--workers", "0", "--window", "5",
             "--warmup", "1", "--steps", "6", "--log-every", "2", "--ckpt-every", "100"]
    assert main([*flags, "--out", str(tmp_path / "tb")]) == 0
    log = [json.loads(x) for x in (tmp_path / "tb" / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    for name in ("loss", "lr", "temperature", "samples_per_s", "samples_per_s_per_device", "data_wait", "skipped"):
        scalars = events.Scalars(f"train/{name}")
        assert [e.step for e in scalars] == [r["step"] for r in log] == [2, 4, 6]
        assert [e.value for e in scalars] == pytest.approx([r[name] for r in log], rel=1e-6), name

    out = tmp_path / "resampled"
    assert main([*flags, "--out", str(out), "--resampled", "--no-tensorboard", "--log-samples"]) == 0
    keys = collections.Counter(k for r in steps(out, 0).values() for k in r["keys"])
    assert max(keys.values()) > 1 and not (out / "tensorboard").exists()  # 24 draws with replacement
    assert json.loads((out / "config.json").read_text())["resampled"] is True


@pytest.mark.timeout(120)
def test_checkpoint_time_is_logged_apart_and_not_counted_in_the_next_intervals_samples_per_s(tmp_path, monkeypatch):
    """A checkpoint after each log line: the next line's interval_s (which samples/s divides by) leaves out the
    checkpoint_s it reports, so both fit in the wall time between the two lines."""
    from wit.trainer.train import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [9, 5, 12])
    assert main(["--data", str(tmp_path / "{00000..00002}.tar"), "--batch-size", "4", "--workers", "0", "--steps", "6",
                 "--log-every", "2", "--ckpt-every", "2", "--warmup", "1", "--no-tensorboard",
                 "--out", str(tmp_path / "run")]) == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["checkpoint_s"] == 0 and all(r["checkpoint_s"] > 0 for r in log[1:])
    for before, after in zip(log, log[1:]):
        wall = after["time"] - before["time"]  # time.time(); interval_s is perf_counter's: 1 ms for the clocks
        assert after["interval_s"] + after["checkpoint_s"] <= wall + 1e-3, (before, after)
        assert after["samples_per_s"] == pytest.approx(2 * 4 / after["interval_s"])


def test_on_cuda_cudnn_picks_its_fastest_kernels_and_float32_products_may_use_tf32():
    """As open_clip_train sets them (flags only: setting them needs no GPU)."""
    from wit.trainer.train import fast_cuda_math

    flags = (torch.backends.cudnn, "benchmark"), (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn,
                                                                                              "allow_tf32")
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        for owner, name in flags:
            setattr(owner, name, False)
        fast_cuda_math(torch.device("cpu"))
        assert not any(getattr(owner, name) for owner, name in flags)
        fast_cuda_math(torch.device("cuda", 0))
        assert all(getattr(owner, name) for owner, name in flags)
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)
