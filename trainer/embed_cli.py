"""`wit embed`: image and text embeddings and CLIP scores of shards; with --nproc N > 1 it hands the same flags to
torchrun (one rank per GPU, disjoint shards)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from wit.shards.options import DefaultsHelp, add_arguments, from_args, to_argv


def register(sub) -> None:
    from wit.trainer.embed import EmbedConfig

    p = sub.add_parser(
        "embed", formatter_class=DefaultsHelp,
        help="image and text embeddings + CLIP score per shard, with a trained open_clip model (resumable)",
        description="Embed every row of every finished shard (a crawl or training shards) with an open_clip model and "
        "a local checkpoint: OUT/<shard>.parquet holds uid, image and text (L2-normalised float32 vectors), "
        "clip_score (their cosine) and reason (why a row has none: not_ok_in_ingest, missing_in_tar, tar_unreadable, "
        "no_image, decode_error). OUT/_wit/embed.json lists the shards and the model. A re-run skips the shards "
        "already done by the same model. Next: `wit filter clip-score`, `wit dedup-semantic`.")
    p.add_argument("--nproc", type=int, default=1, help="processes on this node through torchrun (one per GPU)")
    add_arguments(p, EmbedConfig)
    p.set_defaults(run=run)


def run(args) -> int:
    from wit.trainer.embed import EmbedConfig, run_embed

    cfg = from_args(EmbedConfig, args)
    if args.nproc > 1 and "RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               "-m", "wit.trainer.embed", *to_argv(cfg)]
        return subprocess.call(cmd)
    print(json.dumps(run_embed(cfg), indent=2))
    return 0
