"""The one training config: a frozen dataclass with sane defaults; every field is also a `--flag`."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""  # shards: brace pattern (local or s3://) or an index .json {"shards": {"00000.tar": n}}
    model: str = "wit-tiny"  # any open_clip model name (ViT-B-32, RN50, ...) or a config in trainer/model_configs
    out: str = "runs/wit"  # local run dir: config.json, log.jsonl (and checkpoints unless --ckpt says elsewhere)
    ckpt: str = ""  # checkpoint dir, local or s3:// (default: <out>/checkpoints)
    resume: str = ""  # "latest" (newest checkpoint in --ckpt, if any) or a checkpoint URL
    steps: int = 1000  # optimizer steps in all (epochs follow from the data size)
    batch_size: int = 64  # per rank; the global batch is batch_size x ranks
    workers: int = 2  # loader worker processes per rank (part of the data order: keep it when resuming)
    window: int = 1000  # samples per shuffle window in each worker
    resampled: bool = False  # draw whole shards with replacement per worker (open_clip's --dataset-resampled)
    seed: int = 0  # seed of the data order, augmentation and initialisation
    lr: float = 5e-4  # peak learning rate (AdamW), after warmup
    warmup: int = 100  # linear warmup steps, then cosine to zero at `steps`
    weight_decay: float = 0.2  # not applied to gains, biases and the temperature
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.98  # AdamW beta2 (CLIP's value for ViTs)
    eps: float = 1e-6  # AdamW epsilon
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    accum: int = 1  # feature-cached gradient accumulation: micro-batches per batch (it must divide batch_size)
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    compile: bool = False  # torch.compile the model
    log_every: int = 10  # steps per log line
    ckpt_every: int = 200  # steps per checkpoint (one is always written at the end)
    ckpt_minutes: float = 0  # also checkpoint when this many minutes passed (checked at log lines; 0: off)
    keep: int = 3  # newest checkpoints kept (0: all)
    log_samples: bool = False  # also write each step's sample keys and local loss to <out>/samples-rank<r>.jsonl
    tensorboard: bool = True  # also write the log scalars to TensorBoard event files in <out>/tensorboard

    @property
    def ckpt_dir(self) -> str:
        return self.ckpt or f"{self.out.rstrip('/')}/checkpoints"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field; its help is the field's comment above."""
        comments = dict(re.findall(r"^    (\w+): .*?  # (.*)$", inspect.getsource(cls), re.M))
        for f in dataclasses.fields(cls):
            flag, help = "--" + f.name.replace("_", "-"), comments.get(f.name, "").replace("%", "%%")
            if f.type == "bool":
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help)
            else:
                parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=f.default,
                                    help=help)

    def to_argv(self) -> list[str]:
        """The flags that rebuild this config (for handing it to torchrun)."""
        argv = []
        for f in dataclasses.fields(self):
            flag, value = "--" + f.name.replace("_", "-"), getattr(self, f.name)
            argv += [flag if value else "--no-" + flag[2:]] if f.type == "bool" else [flag, str(value)]
        return argv

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
