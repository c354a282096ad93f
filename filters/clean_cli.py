"""`wit filter text|images|clip-score`, `wit dedup`, `wit dedup-semantic`: clean a pool or a crawl, with every verdict
in parquet."""
from __future__ import annotations

import json

from wit.shards.options import DefaultsHelp, add_arguments, from_args


def register(sub) -> None:
    from wit.filters.clip_score import ClipScoreConfig
    from wit.filters.dedup import DedupConfig
    from wit.filters.images import ImagesConfig
    from wit.filters.semantic import SemanticConfig
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

    c = fsub.add_parser(
        "clip-score", formatter_class=DefaultsHelp,
        help="keep pairs whose CLIP score (from `wit embed`) is at least --min S, or the --top-fraction F best",
        description="Judge every row of every shard of a `wit embed` folder by its CLIP score (cosine of the image "
        "and text embedding): clip_score_below:<threshold>, or the reason the row has no embedding "
        "(not_ok_in_ingest, decode_error, ...). --top-fraction's threshold is the pool's global quantile (DuckDB, "
        "out of core). Writes OUT/<shard>.parquet (uid, keep, reason, dup_of, clip_score) and "
        "OUT/_wit/clip_score_summary.json (threshold, counts, the score distribution).",
    )
    add_arguments(c, ClipScoreConfig)
    c.set_defaults(run=_clip_score)

    sem = sub.add_parser(
        "dedup-semantic", formatter_class=DefaultsHelp,
        help="SemDeDup: near-duplicate images by embedding (k-means clusters, cosine threshold within each)",
        description="Semantic dedup on `wit embed`'s image embeddings: spherical k-means (faiss) on a sample, every "
        "image assigned to its nearest centroid, then per cluster the pairs with cosine >= --threshold are "
        "duplicates; each connected group keeps its smallest uid, the others get semantic_dup_of:<uid>. Clusters "
        "are grouped into buckets, each an independent task. Finds copies that pHash misses (mirrored, recoloured, "
        "re-cropped). Rows an --after stage dropped keep its reason. Writes OUT/<shard>.parquet (uid, keep, reason, "
        "dup_of, cluster) and OUT/_wit/semantic_summary.json.",
    )
    add_arguments(sem, SemanticConfig)
    sem.set_defaults(run=_semantic)



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


def _clip_score(args) -> int:
    from wit.filters.clip_score import ClipScoreConfig, run_clip_score

    _print(run_clip_score(from_args(ClipScoreConfig, args)))
    return 0


def _semantic(args) -> int:
    from wit.filters.semantic import SemanticConfig, run_semantic

    _print(run_semantic(from_args(SemanticConfig, args)))
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
