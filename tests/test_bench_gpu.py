"""bench/gpu.sh, the prepared device runs of issues 25 and 26, in their --smoke form on CPU (tiny model and sizes), so
that they cannot rot between device runs: every phase runs, through the same script, the same tree of links that
stands in for installing wit, and the same RESULT lines and logs land in $OUT. No figure here means anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]


def smoke(tmp_path: Path, *flags: str) -> tuple[dict, Path, str]:
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "bench/gpu.sh", "--smoke", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout and "stopped at its budget" not in proc.stdout, proc.stdout[-3000:]
    return json.loads((out / "results.json").read_text()), out, proc.stdout


@pytest.mark.timeout(300)
def test_device_call_1_throughput_runs_every_phase_in_smoke_form(tmp_path):
    results, out, stdout = smoke(tmp_path)
    for name in ("gpu_decode_images_per_s", "loss_step0", "compute_ceiling_samples_per_s",
                 "samples_per_s[wit --decode gpu]", "samples_per_s[wit --decode cpu]", "samples_per_s[open_clip_train]",
                 "mfu[wit --decode gpu]", "train_gpu_samples_per_s", "train_gpu_ratio"):
        assert float(results[name]) > 0, name
    assert results["gpu_decode_fallbacks"] == results["train_gpu_decode_fallbacks"] == "0"
    assert results["gpu_decode_self_test"] == "passed" and float(results["gpu_decode_mean_abs_diff"]) == 0
    assert {p.name for p in out.iterdir()} == {"gpu.log", "results.json", "wit-gpu-log.jsonl", "wit-cpu-log.jsonl",
                                               "open_clip-out.log"}
    assert "wit from " + str(tmp_path) in stdout  # wit ran from gpu.sh's tree of links, not from an install
    assert not list(tmp_path.glob("wit-bench-gpu-[!o]*"))  # the run's own work folder is gone; the logs are in $OUT


@pytest.mark.timeout(300)
def test_device_call_2_learning_runs_in_smoke_form_through_wit_shards_write(tmp_path):
    shared_data("cifar10", "train.tar")
    results, out, _ = smoke(tmp_path, "--phase", "learn")
    assert {"cifar10_zeroshot_top1", "cifar10_open_clip_top1", "cifar10_gap_vs_open_clip"} <= results.keys()
    assert float(results["cifar10_gap_vs_open_clip"]) == pytest.approx(
        float(results["cifar10_zeroshot_top1"]) - float(results["cifar10_open_clip_top1"]), abs=0.01)
    assert {"learn-wit-log.jsonl", "learn-open_clip-out.log"} <= {p.name for p in out.iterdir()}


def test_gpu_pack_refuses_a_folder_holding_files_it_did_not_write(tmp_path):
    # --pack names any folder: a user's files there are never replaced (and nothing is fetched before that check)
    (tmp_path / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--make-pack", "--pack", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert proc.returncode != 0 and "holds files gpu-pack did not write (notes.txt)" in proc.stderr, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"
