"""Evaluation during training (`wit train --eval-tasks --eval-every`) with two real gloo ranks: the suite's work split
across the ranks gives `wit eval suite`'s numbers on the checkpoint of that step, the results land in log.jsonl,
TensorBoard and a JSONL per checkpoint, and a set that fails on one rank's share neither stalls the other rank nor
stops training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval_sets import classification_set, retrieval_set
from wit.cli import main
from wit.shards.storage import WitError
from wit.trainer.eval.in_training import parse_every
from wit_trainer_data import write_shards

ROOT = Path(__file__).resolve().parents[1]
TASKS = """\
cifar10:
  name: CIFAR-10
broken:
  name: Broken
  path: wds_broken_test
retrieval/flickr:
  name: Flickr
  path: wds_flickr
  main_metric: mean_recall@1
"""


def eval_sets(root: Path) -> Path:
    classification_set(root / "wds_cifar10_test", 40, per_shard=15)
    retrieval_set(root / "wds_flickr", 9)
    broken = classification_set(root / "wds_broken_test", 6)
    # sample 3 is not an image: rank 1 of 2 reads it (sample i goes to rank i % 2), rank 0 never sees it
    from tests.eval_sets import write_shards as write_benchmark_shards
    from wit.trainer.eval.datasets import benchmark_set

    samples = [{"jpg": b"not a jpeg" if n == 3 else data, "cls": str(label).encode()}
               for n, (_, data, label) in enumerate(benchmark_set(str(broken)).labelled().items())]
    for f in (broken / "test").iterdir():
        f.unlink()
    (broken / "test").rmdir()
    write_benchmark_shards(broken / "test", samples, per_shard=6)
    (root / "tasks.yml").write_text(TASKS)
    return root / "tasks.yml"


@pytest.mark.data_fallback
@pytest.mark.timeout(400)
def test_two_ranks_share_the_suite_and_a_failing_set_stalls_nobody(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tasks = eval_sets(tmp_path / "sets")
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [20, 20])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "wit.trainer.train", "--data", str(tmp_path / "{00000..00001}.tar"), "--out", str(out),
           "--batch-size", "4", "--workers", "0", "--warmup", "1", "--steps", "4", "--log-every", "2",
           "--ckpt-every", "2", "--keep", "0", "--eval-tasks", str(tasks), "--eval-every", "2"]
    # a rank left waiting for the other would hang here until gloo's 30-minute timeout: the timeout ends it first
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4] and log[-1]["step"] == 4  # training went on after each
    for r in evals:
        assert set(r["eval"]) == {"CIFAR-10", "Flickr"}
        assert "0.tar:s0000003: cannot decode image" in r["eval_errors"]["Broken"]
        assert r["eval_average"] == pytest.approx(sum(r["eval"].values()) / 2)
    assert proc.stderr.count("evaluation of Broken at step") == 2  # rank 0 says so at each evaluation

    # the ranks' shares put together: wit eval suite's numbers on the checkpoint of that step
    for step in (2, 4):
        per_step = {x["key"]: x for x in map(json.loads, (out / "eval" / f"step_{step:08d}.jsonl").read_text()
                                             .splitlines())}
        (tmp_path / "good.yml").write_text(TASKS.replace("broken:\n  name: Broken\n  path: wds_broken_test\n", ""))
        alone = tmp_path / f"alone-{step}.jsonl"
        assert main(["eval", "suite", "--tasks", str(tmp_path / "good.yml"), "--root", str(tmp_path / "sets"),
                     "--checkpoint", str(out / "checkpoints" / f"step_{step:08d}.pt"), "--device", "cpu",
                     "--out", str(alone)]) == 0
        for line in map(json.loads, alone.read_text().splitlines()):
            got = {k: v for k, v in per_step[line["key"]]["metrics"].items() if k != "seconds"}
            want = {k: v for k, v in line["metrics"].items() if k != "seconds"}
            assert got == pytest.approx(want, abs=1e-6), line["key"]
        assert "error" in per_step["broken"]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/CIFAR-10")] == [2, 4]
    assert [e.value for e in events.Scalars("eval/average")] == pytest.approx([r["eval_average"] for r in evals])


def test_eval_every_takes_steps_or_minutes():
    assert parse_every("500") == (500, "steps") and parse_every("30m") == (30, "minutes")
    for bad in ("", "m", "-3", "0", "5h"):
        with pytest.raises(WitError, match="--eval-every"):
            parse_every(bad)


def test_when_to_evaluate_by_steps_or_by_minutes_at_log_lines(tmp_path):
    from wit.trainer.config import TrainConfig
    from wit.trainer.eval.in_training import TrainingEval

    classification_set(tmp_path / "wds_cifar10_test", 10)
    (tmp_path / "tasks.yml").write_text("cifar10:\n  name: CIFAR-10\n")

    def evaluation(every: str) -> TrainingEval:
        cfg = TrainConfig(eval_tasks=str(tmp_path / "tasks.yml"), eval_every=every, log_every=5)
        return TrainingEval(cfg, 0, 1, "cpu", tmp_path / "run")

    steps = evaluation("4")
    assert [s for s in range(1, 11) if steps.due(s, final=s == 10)] == [4, 8, 10]
    minutes = evaluation("30m")
    assert [s for s in range(1, 11) if minutes.due(s, final=s == 10)] == [10]  # 30 minutes have not passed
    minutes.last -= 3600  # as if the last evaluation was an hour ago: the next log line evaluates
    assert [s for s in range(1, 11) if minutes.due(s, final=False)] == [5, 10]
