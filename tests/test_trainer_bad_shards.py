"""`wit train` on shards that do not hold what their count says (index.json cut short, emptied, overwritten, deleted,
counts inflated): one line naming the shard and both counts, unless --max-bad-shards tolerates it; a batch with no
usable sample stops the run; samples_seen counts only the samples trained on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wit.cli import main
from wit_trainer_data import write_shards

SIZES = [9, 5, 12]  # 26 samples


@pytest.fixture()
def shards(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), SIZES)
    return tmp_path


def index(folder, counts) -> str:
    path = folder / "index.json"
    path.write_text(json.dumps({"shards": {f"{i:05d}.tar": n for i, n in enumerate(counts)}}))
    return str(path)


def train(data: str, out, *flags: str) -> int:
    return main(["train", "--data", data, "--out", str(out), "--batch-size", "4", "--warmup", "1", "--log-every", "1",
                 "--no-tensorboard", "--log-samples", *flags])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.rstrip("\n")


@pytest.mark.timeout(240)
def test_a_shard_short_of_its_count_stops_the_run_in_one_line(shards, capsys):
    tar = shards / "00000.tar"
    damage = {  # what happens to 00000.tar (9 samples) -> its count in the index, what the error says of it
        "inflated": (lambda: None, 27, "holds 9 samples"),
        "emptied": (lambda: tar.write_bytes(b""), 9, "holds 0 samples"),
        "overwritten": (lambda: tar.write_bytes(os.urandom(40_000)), 9, "holds 0 samples"),
        "deleted": (lambda: tar.unlink(), 9, "is missing"),
    }
    for name, (do, count, says) in damage.items():
        do()
        workers = "2" if name == "inflated" else "0"  # found in a loader process, or in the training process
        assert train(index(shards, [count, *SIZES[1:]]), shards / name, "--steps", "7", "--workers", workers) == 2
        assert error_line(capsys).startswith(
            f"wit train: error: {tar}: {says}, but its count is {count} (step "), name
        assert not (shards / name / "checkpoints").exists(), name


@pytest.mark.timeout(180)
def test_max_bad_shards_masks_what_a_tolerated_shard_lacks_and_counts_only_what_trained(shards, capsys):
    out = shards / "run"
    data = index(shards, [9, 7, 12])  # 00001.tar holds 5: two samples missing; 28 = one epoch of 7 steps
    assert train(data, out, "--steps", "7", "--workers", "2", "--max-bad-shards", "1") == 0
    err = capsys.readouterr().err
    assert err.count(f"wit train: warning: {shards / '00001.tar'}: holds 5 samples, but its count is 7; its missing "
                     "samples are masked (1 of --max-bad-shards 1)") == 1, err
    steps = [json.loads(line) for line in (out / "samples-rank0.jsonl").read_text().splitlines()]
    missing = [s for r in steps for s in r["skipped"] if "ShortShard" in s]
    assert len(missing) == 2 and len(steps) == 7
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["bad_shards"] == 1 and log[-1]["samples_seen"] == 26 == sum(len(r["keys"]) - len(r["skipped"])
                                                                              for r in steps)
    assert train(index(shards, [10, 6, 12]), shards / "two", "--steps", "7", "--max-bad-shards", "1") == 2
    assert "more than --max-bad-shards 1 such shards)" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.timeout(120)
def test_a_batch_with_no_usable_sample_stops_the_run(tmp_path, monkeypatch, capsys):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [8], **{"0": dict(bad_jpeg=range(8))})  # whole tars
    assert train(str(tmp_path / "00000.tar"), tmp_path / "run", "--steps", "2", "--workers", "0") == 2
    line = error_line(capsys)
    assert line.startswith("wit train: error: step 1: none of the 4 samples of the batch is usable (00000000")
    assert line.endswith("); nothing to train on") and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.timeout(240)
def test_two_ranks_stop_together_at_a_short_shard(shards):
    """Real gloo ranks: the rank that reads the short shard tells the other, and both stop at the same step (no rank
    left waiting in a collective); the samples log shows neither trained on the batch that found it."""
    out = shards / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "wit.trainer.train", "--data", index(shards, [9, 5, 24]), "--out", str(out), "--batch-size", "2",
           "--workers", "1", "--warmup", "1", "--log-every", "1", "--no-tensorboard", "--log-samples", "--steps", "9"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    expected = f"wit train: error: {shards / '00002.tar'}: holds 12 samples, but its count is 24 (step "
    assert proc.returncode != 0 and proc.stderr.count(expected) == 2, proc.stderr[-3000:]
    stopped = int(proc.stderr.split(expected)[1].split(":")[0])
    for rank in (0, 1):  # steps 0 .. stopped-2 trained on both ranks, the one that found the shard on neither
        lines = (out / f"samples-rank{rank}.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(stopped - 1))
