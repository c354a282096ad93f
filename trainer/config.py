"""The one training config: a frozen dataclass with sane defaults; every field is also a `--flag` (shards.options)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from wit.shards.options import opt


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data: str = opt("", "shards: brace pattern (local or s3://) or an index .json {\"shards\": {\"00000.tar\": n}}")
    model: str = opt("wit-tiny", "any open_clip model name (ViT-B-32, RN50, ...) or a config in trainer/model_configs")
    out: str = opt("runs/wit", "local run dir: config.json, log.jsonl (and checkpoints unless --ckpt says elsewhere)")
    ckpt: str = opt("", "checkpoint dir, local or s3:// (default: <out>/checkpoints)")
    resume: str = opt("", "\"latest\" (newest checkpoint in --ckpt, if any) or a checkpoint URL")
    steps: int = opt(1000, "optimizer steps in all (epochs follow from the data size)", minimum=1)
    batch_size: int = opt(64, "per rank; the global batch is batch_size x ranks", minimum=1)
    workers: int = opt(2, "loader worker processes per rank (0: in the training process; part of the data order: "
                          "keep it when resuming)", minimum=0)
    window: int = opt(1000, "samples per shuffle window in each worker", minimum=1)
    resampled: bool = opt(False, "draw whole shards with replacement per worker (open_clip's --dataset-resampled)")
    online_balance: bool = opt(False, "online balancing (MetaCLIP 2): each epoch keeps each sample with the keep_prob "
                                      "of its corpus manifest (`wit curate balance --online`, then `wit shards write`), "
                                      "drawn from (seed, epoch, uid); the epoch lays out only the kept samples")
    max_bad_shards: int = opt(0, "shards holding fewer samples than their count (index.json, or the tar headers at "
                                 "start: cut short, missing, unreadable) that the run tolerates, their missing samples "
                                 "masked and each shard reported once; one more stops it (0: the first stops it)",
                              minimum=0)
    seed: int = opt(0, "seed of the data order, augmentation and initialisation")
    loss: str = opt("clip", "clip: symmetric InfoNCE (softmax); siglip: the sigmoid loss, with a learnable bias "
                            "(temperature starts at 10, bias at -10), exchanged between neighbouring ranks",
                    choices=("clip", "siglip"))
    lr: float = opt(5e-4, "peak learning rate (AdamW), after warmup")
    warmup: int = opt(100, "linear warmup steps, then cosine to zero at `steps`", minimum=0)
    weight_decay: float = opt(0.2, "not applied to gains, biases and the temperature", minimum=0)
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.98, "AdamW beta2 (CLIP's value for ViTs)")
    eps: float = opt(1e-6, "AdamW epsilon")
    grad_clip: float = opt(1.0, "max global gradient norm (0: off)", minimum=0)
    accum: int = opt(1, "feature-cached gradient accumulation: micro-batches per batch (it must divide batch_size)",
                     minimum=1)
    grad_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, more time")
    compile: bool = opt(False, "torch.compile the model")
    decode: str = opt("auto", "where JPEGs are decoded and cropped: gpu (nvJPEG on the device, the loader workers only "
                              "read and tokenise), cpu (PIL in the loader workers), auto (gpu on CUDA once its JPEG "
                              "self-test passes, else cpu)",
                      choices=("auto", "gpu", "cpu"))
    channels_last: bool = opt(False, "images and model in channels-last memory format (helps convolutions on GPUs)")
    log_every: int = opt(10, "steps per log line", minimum=1)
    ckpt_every: int = opt(200, "steps per checkpoint (one is always written at the end; 0: by time only)",
                          minimum=0)
    ckpt_minutes: float = opt(5.0, "also checkpoint when this many minutes passed since the last one (checked at "
                                   "log lines; 0: off), so that a kill loses minutes whatever a step costs",
                              minimum=0)
    keep: int = opt(3, "newest checkpoints kept (0: all)", minimum=0)
    log_samples: bool = opt(False, "also write each step's sample keys and local loss to <out>/samples-rank<r>.jsonl")
    tensorboard: bool = opt(True, "also write the log scalars to TensorBoard event files in <out>/tensorboard")
    eval_tasks: str = opt("", "evaluate during training: a task list in DataComp's form (`wit eval suite`); results "
                              "in log.jsonl, TensorBoard and <out>/eval/step_XXXXXXXX.jsonl")
    eval_every: str = opt("", "with --eval-tasks: every N steps (500) or minutes (30m), and at the end")
    eval_root: str = opt("", "with --eval-tasks: the folder of the datasets (default: the task list's folder)")

    @property
    def ckpt_dir(self) -> str:
        return self.ckpt or f"{self.out.rstrip('/')}/checkpoints"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)
