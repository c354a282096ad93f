"""Evaluation during training: `wit train --eval-tasks tasks.yml --eval-every N` (steps) or `--eval-every 30m`.

Every rank takes part: each encodes its share of every dataset's images and prompts (suite.Encoder), so the work is
split and no rank idles at a collective while another evaluates alone (open_clip's evaluation on rank 0 stalls the
others into an NCCL timeout on long suites). A failure (an unreadable image, say) is raised on every rank at the same
point; that task's line then holds the error, the rest are scored, and training goes on. Rank 0 writes the results:
a record in log.jsonl, TensorBoard scalars `eval/<task>`, and `<out>/eval/step_XXXXXXXX.jsonl` in DataComp's form
(named by the step, as the checkpoint written at that step is).
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from wit.shards.storage import WitError, write_atomic
from wit.trainer.eval.suite import Encoder, average, evaluate_suite, exchange, to_jsonl
from wit.trainer.eval.tasks import load_tasks

EVERY = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>m?)")


def parse_every(text: str) -> tuple[float, str]:
    """`500` -> (500, "steps"); `30m` -> (30, "minutes")."""
    match = EVERY.fullmatch(text.strip())
    if not match or float(match["n"]) <= 0:
        raise WitError(f"--eval-every {text}: a number of steps (500) or of minutes (30m)")
    return float(match["n"]), "minutes" if match["unit"] else "steps"


class TrainingEval:
    """Decides when to evaluate (all ranks alike), runs the suite on all ranks, and records the results."""

    def __init__(self, cfg, rank: int, world: int, device, out: Path):
        self.every, self.unit = parse_every(cfg.eval_every or "")
        root = cfg.eval_root or str(Path(cfg.eval_tasks).parent)
        # every rank reads the list and checks the data; a failure on any is raised on all (none waits on the others)
        self.tasks = exchange(lambda: load_tasks(cfg.eval_tasks, root), world)[0]
        self.cfg, self.rank, self.world, self.device, self.out = cfg, rank, world, device, out
        self.last = time.monotonic()

    def due(self, step: int, final: bool) -> bool:
        """Steps: every N steps and at the end. Minutes: checked at log lines, rank 0's clock deciding for all."""
        if final:
            return True
        if self.unit == "steps":
            return step % int(self.every) == 0
        if step % self.cfg.log_every:
            return False
        late = torch.tensor([float(time.monotonic() - self.last >= self.every * 60)], device=self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(late, src=0)
        return bool(late.item())

    def maybe_run(self, model, step: int, *, final: bool, log=None, board=None, bar=None) -> None:
        if not self.due(step, final):
            return
        started = time.monotonic()
        model.eval()
        try:
            lines = evaluate_suite(self.tasks, self.encoder(model), keep_going=True)
        finally:
            model.train()
            self.last = time.monotonic()
        if self.rank != 0:
            return
        write_atomic(str(self.out / "eval" / f"step_{step:08d}.jsonl"), to_jsonl(lines))
        scores = {line["dataset"]: line["metrics"]["main_metric"] for line in lines if "error" not in line}
        errors = {line["dataset"]: line["error"] for line in lines if "error" in line}
        record = {"step": step, "eval": scores, "eval_average": average(lines),
                  "eval_seconds": round(time.monotonic() - started, 2), **({"eval_errors": errors} if errors else {})}
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if board:
            for name, score in [*scores.items(), ("average", record["eval_average"])]:
                if score is not None:
                    board.add_scalar(f"eval/{name}", score, step)
        for name, error in errors.items():  # the same error reached every rank: all of them train on
            print(f"wit train: warning: evaluation of {name} at step {step} failed: {error}", file=sys.stderr,
                  flush=True)
        if bar:
            mean = record["eval_average"]
            bar.write(f"eval at step {step}: average {'n/a' if mean is None else f'{mean:.4f}'} over "
                      f"{len(scores)} tasks ({record['eval_seconds']:.0f} s)")

    def encoder(self, model) -> Encoder:
        # the transform `wit eval` gets from open_clip.create_model_and_transforms for this model
        preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        cuda = torch.device(self.device).type == "cuda"
        return Encoder(model, preprocess, open_clip.get_tokenizer(self.cfg.model), device=self.device,
                       precision="bf16" if cuda else "fp32", batch_size=self.cfg.batch_size, rank=self.rank,
                       world=self.world)
