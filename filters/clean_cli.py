"""`wit filter text`, `wit filter images`, `wit dedup`: clean a pool or a crawl, with every verdict in parquet."""
from __future__ import annotations

import json

from wit.shards.options import DefaultsHelp, add_arguments, from_args


def register(sub) -> None:
    from wit.filters.dedup import DedupConfig
    from wit.filters.images import ImagesConfig
    from wit.filters.text import TextConfig

    f = sub.add_parser("filter", help="text and image filters; one verdict file per input file or shard")
    fsub = f.add_subparsers(dest="filter_command", metavar="ACTION", required=True)

    t = fsub.add_parser(
        "text", formatter_class=DefaultsHelp,
        help="caption length, junk captions, English, exact URL and (url, caption) dedup",
        description="Judge every row of pool lists or crawl manifests (parquet with uid, url, caption; rows whose "
        "status is not ok, or that carry an `invalid` reason, become not_ok_in_ingest). Per-row filters first "
        "(caption_empty, caption_url, caption_filename, caption_boilerplate, caption_too_short, "
        "caption_too_long, not_english:<lang>), then dedup among the survivors: the same (url, caption) keeps "
        "its first occurrence (pair_dup_of:<uid>), the same normalised URL keeps its smallest uid "
        "(url_dup_of:<uid>). Writes OUT/<input stem>.parquet (uid, keep, reason, dup_of, lang, lang_prob).",
    )
    add_arguments(t, TextConfig)
    t.set_defaults(run=_text)

    i = fsub.add_parser(
        "images", formatter_class=DefaultsHelp,
        help="per shard: decodable, minimum size, aspect ratio, sha256, pHash, evaluation-set leakage",
        description="Judge every row of every finished shard of a crawl (img2dataset layout: <shard>.tar, "
        "<shard>.parquet manifest, <shard>_stats.json). Reasons: not_ok_in_ingest, tar_missing, tar_unreadable "
        "(truncated), missing_in_tar, no_image, decode_error, too_small, bad_aspect, eval_leak:<eval image>. "
        "Writes OUT/<shard>.parquet (uid, keep, reason, dup_of, key, sha256 of the stored bytes, phash as int64, "
        "short_side, aspect, detail) and OUT/_wit/images_summary.json. Run `wit dedup` on OUT next.",
    )
    add_arguments(i, ImagesConfig)
    i.set_defaults(run=_images)

    d = sub.add_parser(
        "dedup", formatter_class=DefaultsHelp,
        help="global exact and near-duplicate removal over `wit filter images` verdicts (DuckDB)",
        description="Exact duplicates: the same pHash (MetaCLIP's way; covers equal bytes) or, with --exact "
        "sha256, the same bytes; the smallest uid is kept and the others get dup_of:<uid>. Near duplicates: "
        "Hamming distance <= --near-k between pHashes, found through k+1 band joins (pigeonhole) and verified "
        "with popcount; each cluster keeps its smallest uid, the others get near_dup_of:<uid>. Rows dropped by "
        "the image stage keep its reason, so OUT holds the whole funnel. Writes OUT/<shard>.parquet (uid, keep, "
        "reason, dup_of, dup_kind, sha256, phash) and OUT/_wit/dedup_summary.json.",
    )
    add_arguments(d, DedupConfig)
    d.set_defaults(run=_dedup)



def _print(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str))


def _text(args) -> int:
    from wit.filters.text import TextConfig, run_text

    _print(run_text(from_args(TextConfig, args)))
    return 0


def _images(args) -> int:
    from wit.filters.images import ImagesConfig, run_images

    _print(run_images(from_args(ImagesConfig, args)))
    return 0


def _dedup(args) -> int:
    from wit.filters.dedup import DedupConfig, dedup
    from wit.shards.storage import absolute, join, write_json_atomic

    cfg = from_args(DedupConfig, args, images=absolute(args.images), out=absolute(args.out),
                    after=tuple(absolute(a) for a in args.after))
    summary = dedup(cfg)
    write_json_atomic(join(cfg.out, "_wit", "dedup_summary.json"), summary)
    _print(summary)
    return 0
