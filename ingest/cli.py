"""`wit download`: the command line of the ingest wing."""
from __future__ import annotations

import os

from wit.ingest.guard import parse_nets
from wit.shards.helptext import DefaultsHelp
from wit.shards.storage import WitError


def register(sub) -> None:
    from wit.ingest.config import DownloadConfig

    d = DownloadConfig(lists=())
    p = sub.add_parser(
        "download",
        help="crawl URL-caption lists into WebDataset shards with parquet manifests (resumable)",
        description=(
            "Crawl URL-caption lists into {shard:05d}.tar + {shard}.parquet (wit manifest) + {shard}_stats.json, "
            "using img2dataset. Running the same command again resumes; a shard counts only when its tar, "
            "manifest and stats agree."
        ),
        formatter_class=DefaultsHelp,
    )
    p.add_argument("lists", nargs="+", help="list files or folders: parquet/csv/tsv/jsonl/txt, local, s3:// or https://; "
                   "brace patterns allowed (lists/part-{000..009}.parquet)")
    p.add_argument("--out", default=d.out, help="output folder, local or s3://bucket/prefix (endpoint: AWS_ENDPOINT_URL)")
    p.add_argument("--input-format", choices=["parquet", "csv", "tsv", "jsonl", "txt"], help="list format (default: from the file name)")
    p.add_argument("--url-col", help="URL column (default: first of url, URL, image_url, img_url, link)")
    p.add_argument("--caption-col", help="caption column (default: first of caption, TEXT, text, alt, ALT, alt_text, title)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="resize so the short side is this many pixels")
    p.add_argument("--resize-mode", default=d.resize_mode, choices=["keep_ratio", "center_crop", "border", "no"], help="img2dataset resize mode")
    p.add_argument("--encode-quality", type=int, default=d.encode_quality, help="JPEG quality of stored images")
    p.add_argument("--processes", type=int, default=d.processes, help="download processes")
    p.add_argument("--threads", type=int, default=d.threads, help="download threads per process")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="input rows per shard")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds to wait for a server")
    p.add_argument("--retries", type=int, default=d.retries, help="immediate retries of a failed URL")
    p.add_argument("--distributor", default=d.distributor, choices=["multiprocessing", "pyspark", "ray"], help="how shards are spread over workers")
    p.add_argument("--ray-address", help="Ray cluster address for --distributor ray (default: start Ray locally)")
    p.add_argument("--allow-net", action="append", default=[], metavar="CIDR",
                   help="reach this network even though it is loopback/private/link-local (repeatable), e.g. 127.0.0.1/32")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes, help="largest response body accepted")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest declared image size (decompression-bomb guard)")
    p.add_argument("--user-agent-token", default=d.user_agent_token, help="token in the User-Agent, matched against X-Robots-Tag")
    p.add_argument("--ignore-robots", action="store_true", help="do not honour X-Robots-Tag opt-outs (noai, noimageai, noindex, noimageindex)")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-attempt rows that failed transiently (timeouts, 5xx, 429, resets) into new shards; old rows become superseded")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from wit.ingest.config import DownloadConfig
    from wit.ingest.download import download
    from wit.ingest.retry import retry_failed
    from wit.ingest.summary import format_summary

    try:
        allow = parse_nets(args.allow_net)
    except ValueError as err:
        raise WitError(str(err)) from None
    for flag, value in (("--processes", args.processes), ("--threads", args.threads), ("--shard-size", args.shard_size),
                        ("--image-size", args.image_size)):
        if value < 1:
            raise WitError(f"{flag} must be at least 1 (got {value})")
    cfg = DownloadConfig(
        lists=tuple(args.lists), out=args.out, input_format=args.input_format, url_col=args.url_col,
        caption_col=args.caption_col, image_size=args.image_size, resize_mode=args.resize_mode,
        encode_quality=args.encode_quality, processes=args.processes, threads=args.threads,
        shard_size=args.shard_size, timeout=args.timeout, retries=args.retries, distributor=args.distributor,
        ray_address=args.ray_address, allow_net=allow, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        user_agent_token=args.user_agent_token,
        disallowed_header_directives=() if args.ignore_robots else DownloadConfig.disallowed_header_directives,
        progress=not args.no_progress and "CI" not in os.environ,
    )
    summary = retry_failed(cfg) if args.retry_failed else download(cfg)
    print(format_summary(summary))
    return 1 if summary.get("missing_shards") else 0
