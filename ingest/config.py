"""The typed configuration of `wit download`: every field is also its flag (kept light: `wit --help` imports it,
not img2dataset)."""
from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass

from wit.shards.options import opt

HEADER_OPTOUTS = ("noai", "noimageai", "noindex", "noimageindex")  # X-Robots-Tag directives honoured


def cidr(value: str) -> str:
    """Validate an --allow-net value early, so a typo is a clear error and not a silent block."""
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP network (e.g. 127.0.0.1/32)") from None


@dataclass(frozen=True, kw_only=True)
class DownloadConfig:
    lists: tuple[str, ...] = opt(help="list files or folders: parquet/csv/tsv/jsonl/txt, local, s3:// or https://; "
                                      "brace patterns allowed (lists/part-{000..009}.parquet)", positional=True)
    out: str = opt("data/raw", "output folder, local or s3://bucket/prefix (endpoint: AWS_ENDPOINT_URL)")
    input_format: str | None = opt(None, "list format (default: from the file name)",
                                   choices=("parquet", "csv", "tsv", "jsonl", "txt"))
    url_col: str | None = opt(None, "URL column (default: first of url, URL, image_url, img_url, link)")
    caption_col: str | None = opt(None, "caption column (default: first of caption, TEXT, text, alt, ALT, alt_text, "
                                        "title)")
    save_additional_columns: tuple[str, ...] = opt((), "a list column to carry into the manifest and each sample's "
                                                       ".json (repeatable)", many="append", metavar="COLUMN")
    image_size: int = opt(256, "resize so the short side is this many pixels", minimum=1)
    resize_mode: str = opt("keep_ratio", "img2dataset resize mode (keep_ratio: short side to --image-size, aspect "
                                         "kept)", choices=("keep_ratio", "center_crop", "border", "no"))
    resize_only_if_bigger: bool = opt(False, "never enlarge: an image smaller than --image-size keeps its size")
    encode_quality: int = opt(95, "JPEG quality of stored images", minimum=1)
    processes: int = opt(help="download processes (default: one per core)", factory=lambda: os.cpu_count() or 1,
                         minimum=1)
    threads: int = opt(64, "requests in flight per process (img2dataset's download threads; wit carries them on one "
                           "event loop)", minimum=1)
    shard_size: int = opt(10_000, "input rows per shard", minimum=1)
    timeout: float = opt(10.0, "seconds to wait for a server: connect and response headers together, and the longest "
                               "silence inside a body", minimum=0.001)
    deadline: float | None = opt(None, "seconds one row may take in all: connect, headers, body, redirects, retries "
                                       "and their backoff (default: 2 x --timeout)", minimum=0.001)
    min_rate: float = opt(1024.0, "bytes/s a body must keep up over every 3 s once it started, or it is dropped as "
                                  "too_slow (0: no floor)", minimum=0)
    retries: int = opt(0, "retries of a transient failure (timeout, reset, 5xx, 429, too_slow) within the deadline, "
                          "after an exponential backoff with jitter", minimum=0)
    per_host: int = opt(8, "requests in flight per host, for the whole crawl (every process and node together)",
                        minimum=1)
    per_host_rate: float = opt(0.0, "requests per second per host, for the whole crawl (0: no limit)", minimum=0)
    host_failures: int = opt(5, "consecutive connect failures or timeouts after which a host's remaining rows fail "
                                "fast as host_unreachable (0: never)", minimum=0)
    distributor: str = opt("multiprocessing", "how shards are spread over workers",
                           choices=("multiprocessing", "pyspark", "ray"))
    ray_address: str | None = opt(None, "Ray cluster address for --distributor ray (default: start Ray locally)")
    allow_net: tuple[str, ...] = opt((), "reach this network even though it is loopback/private/link-local "
                                         "(repeatable), e.g. 127.0.0.1/32", many="append", metavar="CIDR", parse=cidr)
    max_bytes: int = opt(20 * 2**20, "largest response body accepted", minimum=1)
    max_pixels: int = opt(89_478_485, "largest declared image size (decompression-bomb guard)", minimum=1)
    max_aspect_ratio: float | None = opt(None, "refuse an image whose long side is more than this many times its "
                                               "short side, before decoding (bad_aspect; default: no limit)", minimum=1)
    allow_userinfo: bool = opt(False, "fetch URLs that carry user:password@ (refused as invalid_url otherwise)")
    user_agent_token: str = opt("wit", "token in the User-Agent, matched against robots.txt and X-Robots-Tag")
    ignore_robots: bool = opt(False, "do not honour robots.txt, the TDMRep header tdm-reservation: 1, nor X-Robots-Tag "
                                     "opt-outs (" + ", ".join(HEADER_OPTOUTS) + ")")
    retry_failed: bool = opt(False, "re-attempt rows that failed transiently (timeouts, 5xx, 429, resets) into new "
                                    "shards; old rows become superseded")
    progress: bool = opt(True, "a progress bar (off when CI is set)")
    # the crawl's global steps (numbering repeated pairs, finding and superseding retried rows) run in DuckDB
    memory_limit: str | None = opt(None, "DuckDB memory limit of the crawl's global steps, e.g. 8GB (default: half "
                                         "the RAM)", group="DuckDB")
    temp_dir: str | None = opt(None, "where those steps spill (default: <out>/_wit/duckdb_tmp, or $TMPDIR when the "
                                     "output is not local)", group="DuckDB")

    @property
    def header_optouts(self) -> tuple[str, ...]:
        return () if self.ignore_robots else HEADER_OPTOUTS

    @property
    def fetch_rules(self) -> dict:
        """The rules that decide which rows may be fetched at all, as the run record keeps them: a run that widens
        them re-attempts the rows the old rules refused (ingest/retry.py)."""
        return {"allow_net": sorted(self.allow_net), "ignore_robots": self.ignore_robots}
