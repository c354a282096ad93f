"""What every `wit eval` command shares: model options, the results file and the printed table."""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, fields

from wit.shards.storage import write_json_atomic


@dataclass(frozen=True)
class ModelOptions:
    model: str | None = None  # open_clip name or a config in trainer/model_configs; default: the checkpoint's
    checkpoint: str | None = None
    random_init: bool = False
    device: str = "auto"
    batch_size: int = 256
    workers: int = 0  # image decoding threads (0: 1 on CPU, one per core up to 8 on CUDA)
    precision: str = "fp32"
    out: str | None = None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and output")
    g.add_argument("--model", help="open_clip model name or a config in trainer/model_configs (wit-tiny, "
                                   "ViT-B-32, ...); default: the name the training checkpoint records")
    g.add_argument("--checkpoint", help="a checkpoint `make train` wrote (step_*.pt; a checkpoint folder means "
                                        "its newest) or a model-only state_dict file; local path or s3://")
    g.add_argument("--random-init", action="store_true", help="no checkpoint: random weights, a chance baseline")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    g.add_argument("--batch-size", type=int, default=256, help="images or texts per forward pass")
    g.add_argument("--workers", type=int, default=0,
                   help="image decoding threads (0: 1 on CPU; on CUDA one per core, at most 8)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 runs under autocast")
    g.add_argument("--out", help="write the results as JSON here (local path or s3://)")


def options_of(cls, args: argparse.Namespace):
    """Build a frozen config dataclass from the parsed flags of the same names."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def load(cfg):
    from wit.trainer.eval.model import load_model, pick_device  # torch + open_clip: seconds, so not for `wit --help`

    device = pick_device(cfg.device)
    model, preprocess, tokenizer = load_model(cfg.model, cfg.checkpoint, cfg.random_init, device)
    return model, preprocess, tokenizer, device


def finish(cfg, results: dict, started: float) -> dict:
    """Add the run's settings, print a short table, write the JSON when --out is set."""
    results = {**results, "config": asdict(cfg), "seconds": round(time.monotonic() - started, 2)}
    width = max(len(k) for k in results)
    for key, value in results.items():
        if not isinstance(value, (dict, list)):  # the config and the C sweep go to the JSON only
            shown = f"{100 * value:6.2f}%" if isinstance(value, float) and key not in ("seconds", "best_C") else value
            print(f"{key:<{width}}  {shown}")
    if cfg.out:
        write_json_atomic(cfg.out, results)
        print(f"results: {cfg.out}")
    return results
