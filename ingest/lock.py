"""The crawl's lock: one `wit download` (or `--retry-failed`) per output folder, through shards/lock.py."""
from __future__ import annotations

from wit.shards.lock import output_lock


def crawl_lock(out: str):
    return output_lock(out, "wit download")
