"""`wit download`: the ingest wing's command, as the `wit` door declares it (wit/commands.py) and `wit pipeline` runs
it: one function from the config to the crawl's summary, and how the command line shows that summary."""
from __future__ import annotations

import os
from dataclasses import replace

from wit.ingest.config import DownloadConfig


def run(cfg: DownloadConfig) -> dict:
    """The crawl, or with --retry-failed its transient failures again; the summary."""
    from wit.ingest.download import download
    from wit.ingest.retry import retry_failed

    cfg = replace(cfg, progress=cfg.progress and "CI" not in os.environ)  # a CI log gets lines, not a bar
    return retry_failed(cfg) if cfg.retry_failed else download(cfg)


def show(summary: dict) -> int:
    from wit.ingest.summary import format_summary, rules_problem
    from wit.shards.storage import WitError

    print(format_summary(summary))
    if summary.get("missing_shards"):
        return 1
    if problem := rules_problem(summary):  # a finished crawl that fetched nothing, by the run's own rules
        raise WitError(problem)
    return 0
