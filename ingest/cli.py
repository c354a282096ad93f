"""`wit download`: the command line of the ingest wing."""
from __future__ import annotations

import os

from wit.shards.options import DefaultsHelp, add_arguments, from_args


def register(sub) -> None:
    from wit.ingest.config import DownloadConfig

    p = sub.add_parser(
        "download",
        help="crawl URL-caption lists into WebDataset shards with parquet manifests (resumable)",
        description=(
            "Crawl URL-caption lists into {shard}.tar + {shard}.parquet (wit manifest) + {shard}_stats.json, "
            "using img2dataset; shard names have five digits (00000), more when the crawl plans over 10,000 "
            "shards, one width per crawl. Running the same command again resumes; a shard counts only when its "
            "tar, manifest and stats agree."
        ),
        formatter_class=DefaultsHelp,
    )
    add_arguments(p, DownloadConfig)
    p.set_defaults(run=run)


def run(args) -> int:
    from wit.ingest.config import DownloadConfig
    from wit.ingest.download import download
    from wit.ingest.retry import retry_failed
    from wit.ingest.summary import format_summary, rules_problem
    from wit.shards.storage import WitError

    cfg = from_args(DownloadConfig, args, progress=args.progress and "CI" not in os.environ)
    summary = retry_failed(cfg) if cfg.retry_failed else download(cfg)
    print(format_summary(summary))
    if summary.get("missing_shards"):
        return 1
    if problem := rules_problem(summary):  # a finished crawl that fetched nothing, by the run's own rules
        raise WitError(problem)
    return 0
