"""The typed configuration of `wit download` (kept light: `wit --help` imports it, not img2dataset)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

SHARD_DIGITS = 5  # img2dataset's `{shard:05d}.tar`


@dataclass(frozen=True)
class DownloadConfig:
    lists: tuple[str, ...]
    out: str = "data/raw"
    input_format: str | None = None
    url_col: str | None = None
    caption_col: str | None = None
    image_size: int = 256
    resize_mode: str = "keep_ratio"  # short side to image_size, aspect kept
    encode_quality: int = 95
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    threads: int = 64
    shard_size: int = 10_000
    timeout: float = 10.0
    retries: int = 0
    distributor: str = "multiprocessing"  # or "pyspark", "ray"
    ray_address: str | None = None
    allow_net: tuple[str, ...] = ()
    max_bytes: int = 20 * 2**20
    max_pixels: int = 89_478_485
    user_agent_token: str = "wit"
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    progress: bool = True
