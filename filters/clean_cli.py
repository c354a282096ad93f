"""`wit filter text`, `wit filter images`, `wit dedup`: clean a pool or a crawl, with every verdict in parquet."""
from __future__ import annotations

import json

from wit.shards.runner import add_engine_args


def register(sub) -> None:
    f = sub.add_parser("filter", help="text and image filters; one verdict file per input file or shard")
    fsub = f.add_subparsers(dest="filter_command", metavar="ACTION", required=True)

    t = fsub.add_parser(
        "text",
        help="caption length, junk captions, English, exact URL and (url, caption) dedup",
        description="Judge every row of pool lists or crawl manifests (parquet with uid, url, caption; rows whose "
        "status is not ok, or that carry an `invalid` reason, become not_ok_in_ingest). Per-row filters first "
        "(caption_empty, caption_url, caption_filename, caption_boilerplate, caption_too_short, "
        "caption_too_long, not_english:<lang>), then dedup among the survivors: the same (url, caption) keeps "
        "its first occurrence (pair_dup_of:<uid>), the same normalised URL keeps its smallest uid "
        "(url_dup_of:<uid>). Writes OUT/<input stem>.parquet (uid, keep, reason, dup_of, lang, lang_prob).",
    )
    t.add_argument("inputs", nargs="+", help="parquet files, folders, globs or {a..b} patterns; local or s3://")
    t.add_argument("--out", required=True, help="verdict folder (local or s3://)")
    t.add_argument("--min-chars", type=int, default=5, help="shortest caption kept, in characters after "
                   "stripping (default: %(default)s)")
    t.add_argument("--max-chars", type=int, default=1000, help="longest caption kept (default: %(default)s)")
    t.add_argument("--no-english", dest="english", action="store_false",
                   help="skip language identification (langid.py, whose model ships in its PyPI package)")
    t.add_argument("--lang-min-prob", type=float, default=0.9,
                   help="drop a caption when a language other than English wins with at least this probability; "
                   "short ambiguous captions stay (default: %(default)s)")
    t.add_argument("--no-url-dedup", dest="url_dedup", action="store_false",
                   help="keep every row of a repeated URL (normalised: lowercase scheme and host, no fragment, "
                   "no default port)")
    t.add_argument("--no-pair-dedup", dest="pair_dedup", action="store_false",
                   help="keep every occurrence of a repeated (url, caption) pair")
    add_engine_args(t)
    t.set_defaults(run=_text)

    i = fsub.add_parser(
        "images",
        help="per shard: decodable, minimum size, aspect ratio, sha256, pHash, evaluation-set leakage",
        description="Judge every row of every finished shard of a crawl (img2dataset layout: <shard>.tar, "
        "<shard>.parquet manifest, <shard>_stats.json). Reasons: not_ok_in_ingest, tar_missing, tar_unreadable "
        "(truncated), missing_in_tar, no_image, decode_error, too_small, bad_aspect, eval_leak:<eval image>. "
        "Writes OUT/<shard>.parquet (uid, keep, reason, dup_of, key, sha256 of the stored bytes, phash as int64, "
        "short_side, aspect, detail) and OUT/_wit/images_summary.json. Run `wit dedup` on OUT next.",
    )
    i.add_argument("raw", help="crawl output folder from `wit download` (local or s3://)")
    i.add_argument("--out", required=True, help="verdict folder (local or s3://)")
    i.add_argument("--min-side", type=int, default=200, help="smallest short side of the ORIGINAL image, in "
                   "pixels (manifest original_width/height; DataComp's basic filter) (default: %(default)s)")
    i.add_argument("--max-aspect", type=float, default=3.0,
                   help="largest long side / short side ratio (default: %(default)s)")
    i.add_argument("--eval", dest="eval_sets", action="append", default=[], metavar="SET",
                   help="evaluation images: a folder (searched recursively, tars in it too), a tar, or a brace "
                   "pattern of shards; repeatable. Pool images within --eval-k of one of them are dropped as "
                   "eval_leak:<name>")
    i.add_argument("--eval-k", type=int, default=4,
                   help="Hamming distance (of 64 pHash bits) that counts as leakage. Crawled copies of CIFAR-10 "
                   "test images (upscaled, re-encoded) land within 2; at 4 none of 1,000 Flickr8k photos matched "
                   "any of CIFAR-10's 10,000 test images, at 8 one did (default: %(default)s)")
    add_engine_args(i)
    i.set_defaults(run=_images)

    d = sub.add_parser(
        "dedup",
        help="global exact and near-duplicate removal over `wit filter images` verdicts (DuckDB)",
        description="Exact duplicates: the same pHash (MetaCLIP's way; covers equal bytes) or, with --exact "
        "sha256, the same bytes; the smallest uid is kept and the others get dup_of:<uid>. Near duplicates: "
        "Hamming distance <= --near-k between pHashes, found through k+1 band joins (pigeonhole) and verified "
        "with popcount; each cluster keeps its smallest uid, the others get near_dup_of:<uid>. Rows dropped by "
        "the image stage keep its reason, so OUT holds the whole funnel. Writes OUT/<shard>.parquet (uid, keep, "
        "reason, dup_of, dup_kind, sha256, phash) and OUT/_wit/dedup_summary.json.",
    )
    d.add_argument("images", help="verdict folder of `wit filter images` (local or s3://)")
    d.add_argument("--out", required=True, help="verdict folder (local or s3://)")
    d.add_argument("--near-k", type=int, default=2,
                   help="Hamming threshold for near duplicates; 0 = exact only. Candidate pairs grow as "
                   "N^2/2^(64/(k+1)): k <= 2 stays practical at 10M rows on one machine (default: %(default)s)")
    d.add_argument("--exact", choices=("phash", "sha256"), default="phash",
                   help="key of exact dedup (default: %(default)s)")
    d.add_argument("--memory-limit", default=None, help="DuckDB memory limit, e.g. 8GB; it spills to disk "
                   "beyond it (default: DuckDB's, 80%% of RAM)")
    d.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    d.add_argument("--after", nargs="+", default=[], metavar="DIR",
                   help="verdict folders of earlier stages (e.g. `wit filter text`): rows they dropped keep that "
                   "reason here and are never the copy that stays, so no group loses every copy")
    d.set_defaults(run=_dedup)



def _print(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str))


def _text(args) -> int:
    from wit.filters.text import TextConfig, run_text

    cfg = TextConfig(tuple(args.inputs), args.out, args.min_chars, args.max_chars, args.english,
                     args.lang_min_prob, args.url_dedup, args.pair_dedup, args.engine, args.workers, args.ray_address)
    _print(run_text(cfg))
    return 0


def _images(args) -> int:
    from wit.filters.images import ImagesConfig, run_images

    cfg = ImagesConfig(args.raw, args.out, args.min_side, args.max_aspect, tuple(args.eval_sets), args.eval_k,
                       args.engine, args.workers, args.ray_address)
    _print(run_images(cfg))
    return 0


def _dedup(args) -> int:
    from wit.filters.dedup import DedupConfig, dedup
    from wit.shards.storage import absolute, join, write_json_atomic

    cfg = DedupConfig(absolute(args.images), absolute(args.out), args.near_k, args.exact, args.memory_limit,
                      args.threads, tuple(absolute(a) for a in args.after))
    summary = dedup(cfg)
    write_json_atomic(join(cfg.out, "_wit", "dedup_summary.json"), summary)
    _print(summary)
    return 0
