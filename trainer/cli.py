"""`wit train`: train CLIP on shards; with --nproc N > 1 it hands the same flags to torchrun (one node).

Multi-node runs call torchrun directly: `torchrun --nnodes ... -m wit.trainer.train --data ...` (see trainer/README.md).
"""
from __future__ import annotations

import os
import subprocess
import sys

from wit.shards.options import DefaultsHelp, add_arguments, from_args, to_argv
from wit.trainer.config import TrainConfig


def register(sub) -> None:
    p = sub.add_parser("train", help="train CLIP (open_clip model) on WebDataset shards, local or s3://; resumable",
                       description=__doc__.splitlines()[0], formatter_class=DefaultsHelp)
    p.add_argument("--nproc", type=int, default=1, help="processes on this node (GPUs; on CPU, gloo ranks)")
    add_arguments(p, TrainConfig)
    p.set_defaults(run=run)


def run(args) -> int:
    cfg = from_args(TrainConfig, args)
    if args.nproc > 1 and "RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               "-m", "wit.trainer.train", *to_argv(cfg)]
        return subprocess.call(cmd)
    from wit.trainer.train import train
    return train(cfg)
