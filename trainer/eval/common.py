"""What every `wit eval` command shares: model options, the results file and the printed table."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from wit.shards.options import opt
from wit.shards.storage import write_json_atomic

DATA_HELP = ("labelled images: a folder of <class>/<image>, a tar of such folders (e.g. cifar10/test.tar), or "
             "WebDataset shards with a class (.cls member or a .json field), brace patterns allowed")
GROUP = "model and output"


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    model: str | None = opt(None, "open_clip model name or a config in trainer/model_configs (wit-tiny, ViT-B-32, "
                                  "...); default: the name the training checkpoint records", group=GROUP)
    checkpoint: str | None = opt(None, "a checkpoint `make train` wrote (step_*.pt; a checkpoint folder means its "
                                       "newest) or a model-only state_dict file; local path or s3://", group=GROUP)
    random_init: bool = opt(False, "no checkpoint: random weights, a chance baseline", group=GROUP)
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...", group=GROUP)
    batch_size: int = opt(256, "images or texts per forward pass", minimum=1, group=GROUP)
    workers: int = opt(0, "image decoding threads (0: 1 on CPU; on CUDA one per core, at most 8)", minimum=0,
                       group=GROUP)
    precision: str = opt("fp32", "bf16 runs under autocast", choices=("fp32", "bf16"), group=GROUP)
    out: str | None = opt(None, "write the results as JSON here (local path or s3://)", group=GROUP)


@dataclass(frozen=True, kw_only=True)
class LabelledOptions:
    format: str = opt("auto", "how the images are stored; auto looks at the path and the tar's members",
                      choices=("auto", "folder", "tar", "shards"))
    class_field: str = opt("label", "in shards without .cls members: the .json field holding the class (an index "
                                    "or a name)")


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
