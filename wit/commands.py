"""Every `wit` command, declared once: its words, its config class, the function that runs it, what the command
line prints of that function's result, and its help. wit/cli.py builds the parsers from this list and wit/stages.py
runs a pipeline stage through the same function, so a command and its stage are one code path.

The list lives in the door because it names every wing, and only the door may import them all (the wings import
shards/ alone, and nothing imports the door: tests/test_layout.py). Config classes and functions are named as
"module:name" and imported only when their command is parsed or run: `wit download` parses with the ingest wing
alone, since every wing's configs together load torch and matplotlib (seconds before a crawl can start).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass


def load(name: str):
    """The object a "module:name" string names, its module imported now."""
    module, attr = name.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Command:
    words: str  # "filter text": what follows `wit`, and the key a pipeline stage names its command by
    help: str  # the line in the list of commands
    description: str  # the top of its --help
    run: str  # "module:function": the config -> the result (the summary a pipeline stage records)
    config: str | None = None  # "module:Class", a frozen dataclass whose fields are the options; None: `arguments`
    arguments: str | None = None  # "module:function" adding the parser's own arguments; `run` then takes them
    show: str = "wit.commands:print_json"  # "module:function": the result -> printed, the exit status
    torchrun: str | None = None  # with --nproc N > 1: the module torchrun starts on N ranks, with the same flags

    @property
    def config_class(self) -> type:
        return load(self.config)

    def runs(self, cfg):
        """Run the command on a config, as `wit` and `wit pipeline` both do."""
        return load(self.run)(cfg)


@dataclass(frozen=True)
class Group:
    """A word that holds commands (`wit filter text`, `wit eval zeroshot`)."""
    help: str
    metavar: str = "ACTION"
    description: str | None = None
    epilog: str | None = None  # shown as written


def print_json(result) -> int:
    print(json.dumps(result, indent=2, default=str))
    return 0


def print_nothing(result) -> int:
    """For commands that print their own lines as they go (or a table at the end)."""
    return 0


def exit_status(result) -> int:
    """For a command whose result is its exit status (`wit train`)."""
    return int(result or 0)


def print_report(result: dict) -> int:
    print(f"audit report: {result['report']}")
    return 0


GROUPS = {
    "filter": Group("text and image filters; one verdict file per input file or shard"),
    "queries": Group("build the query list (MetaCLIP metadata)"),
    "curate": Group("match captions against the query list and balance the pool"),
    "shards": Group("final training shards from the curated corpus", metavar="COMMAND"),
    "eval": Group(
        "zero-shot, retrieval and linear-probe evaluation of a CLIP checkpoint", metavar="TASK",
        description="`wit eval zeroshot|retrieval|linear-probe|suite`: evaluate a trained CLIP (or random weights) on "
                    "image datasets.",
        epilog="Prints a short table; --out writes the results as JSON. Examples:\n"
               "  wit eval zeroshot --data ../shared/data/cifar10/test.tar --prompts cifar10 --checkpoint ckpt.pt\n"
               "  wit eval retrieval --data flickr8k/images --captions flickr8k/captions.csv --checkpoint ckpt.pt\n"
               "  wit eval linear-probe --train cifar10/train.tar --test cifar10/test.tar --checkpoint ckpt.pt\n"
               "  wit eval suite --tasks datacomp --root ~/wds --checkpoint ckpt.pt --out eval_results.jsonl"),
}

_COMMANDS = [
    Command(
        "download", config="wit.ingest.config:DownloadConfig", run="wit.ingest.cli:run", show="wit.ingest.cli:show",
        help="crawl URL-caption lists into WebDataset shards with parquet manifests (resumable)",
        description="Crawl URL-caption lists into {shard}.tar + {shard}.parquet (wit manifest) + {shard}_stats.json, "
                    "using img2dataset; shard names have five digits (00000), more when the crawl plans over 10,000 "
                    "shards, one width per crawl. Running the same command again resumes; a shard counts only when "
                    "its tar, manifest and stats agree."),
    Command(
        "filter text", config="wit.filters.text:TextConfig", run="wit.filters.text:run_text",
        help="caption length, junk captions, English, exact URL and (url, caption) dedup",
        description="Judge every row of pool lists or crawl manifests (parquet with uid, url, caption; rows whose "
                    "status is not ok, or that carry an `invalid` reason, become not_ok_in_ingest). Per-row filters "
                    "first (caption_empty, caption_url, caption_filename, caption_boilerplate, caption_too_short, "
                    "caption_too_long, not_english:<lang>), then dedup among the survivors: the same (url, caption) "
                    "keeps its first occurrence (pair_dup_of:<uid>), the same normalised URL keeps its smallest uid "
                    "(url_dup_of:<uid>). Writes OUT/<input stem>.parquet (uid, keep, reason, dup_of, lang, "
                    "lang_prob)."),
    Command(
        "filter images", config="wit.filters.images:ImagesConfig", run="wit.filters.images:run_images",
        help="per shard: decodable, minimum size, aspect ratio, sha256, pHash, evaluation-set leakage",
        description="Judge every row of every finished shard of a crawl (img2dataset layout: <shard>.tar, "
                    "<shard>.parquet manifest, <shard>_stats.json). Reasons: not_ok_in_ingest, tar_missing, "
                    "tar_unreadable (truncated), missing_in_tar, no_image, decode_error, too_small, bad_aspect, "
                    "eval_leak:<eval image>. Writes OUT/<shard>.parquet (uid, keep, reason, dup_of, key, sha256 of "
                    "the stored bytes, phash as int64, short_side, aspect, detail) and OUT/_wit/images_summary.json. "
                    "Run `wit dedup` on OUT next."),
    Command(
        "dedup", config="wit.filters.dedup:DedupConfig", run="wit.filters.dedup:dedup",
        help="global exact and near-duplicate removal over `wit filter images` verdicts (DuckDB)",
        description="Exact duplicates: the same pHash (MetaCLIP's way; covers equal bytes) or, with --exact "
                    "sha256, the same bytes; the smallest uid is kept and the others get dup_of:<uid>. Near "
                    "duplicates: Hamming distance <= --near-k between pHashes, found through k+1 band joins "
                    "(pigeonhole) and verified with popcount; each cluster keeps its smallest uid, the others get "
                    "near_dup_of:<uid>. Rows dropped by the image stage keep its reason, so OUT holds the whole "
                    "funnel. Writes OUT/<shard>.parquet (uid, keep, reason, dup_of, dup_kind, sha256, phash) and "
                    "OUT/_wit/dedup_summary.json."),
    Command(
        "filter clip-score", config="wit.filters.clip_score:ClipScoreConfig",
        run="wit.filters.clip_score:run_clip_score",
        help="keep pairs whose CLIP score (from `wit embed`) is at least --min S, or the --top-fraction F best",
        description="Judge every row of every shard of a `wit embed` folder by its CLIP score (cosine of the image "
                    "and text embedding): clip_score_below:<threshold>, or the reason the row has no embedding "
                    "(not_ok_in_ingest, decode_error, ...). --top-fraction's threshold is the pool's global quantile "
                    "(DuckDB, out of core). Writes OUT/<shard>.parquet (uid, keep, reason, dup_of, clip_score) and "
                    "OUT/_wit/clip_score_summary.json (threshold, counts, the score distribution)."),
    Command(
        "dedup-semantic", config="wit.filters.semantic:SemanticConfig", run="wit.filters.semantic:run_semantic",
        help="SemDeDup: near-duplicate images by embedding (k-means clusters, cosine threshold within each)",
        description="Semantic dedup on `wit embed`'s image embeddings: spherical k-means (faiss) on a sample, every "
                    "image assigned to its nearest centroid, then per cluster the pairs with cosine >= --threshold "
                    "are duplicates; each connected group keeps its smallest uid, the others get "
                    "semantic_dup_of:<uid>. Clusters are grouped into buckets, each an independent task. Finds copies "
                    "that pHash misses (mirrored, recoloured, re-cropped). Rows an --after stage dropped keep its "
                    "reason. Writes OUT/<shard>.parquet (uid, keep, reason, dup_of, cluster) and "
                    "OUT/_wit/semantic_summary.json."),
    Command(
        "queries build", config="wit.filters.queries:QueryBuildConfig", run="wit.filters.queries:build",
        show="wit.commands:print_nothing",
        help="build a versioned query file from WordNet, unigram/bigram counts, titles and user lists",
        description="Build the query list: WordNet synset head lemmas, unigrams with count >= --min-count, bigrams "
                    "with PMI >= --min-pmi, titles with >= --min-views page views, and --extra lists; "
                    "case-sensitive, de-duplicated (by tokens), in that priority order, capped at --cap entries. "
                    "With --languages, one such list per language (English from these sources, the others from "
                    "--lang-unigrams/--lang-bigrams or wordfreq), capped per language. Writes OUT (parquet: id, "
                    "entry, source, score, language) and OUT's .summary.json."),
    Command(
        "curate match", config="wit.filters.match:MatchConfig", run="wit.filters.match:run_match",
        show="wit.commands:print_nothing",
        help="write the matched query ids of every caption",
        description="Whole-token, case-sensitive matching of every caption against every query (Aho-Corasick), by "
                    "MetaCLIP's token rule unless --spacing ascii; with a query list of several languages each "
                    "caption's language is identified (langid.py) and it is matched against its language's entries "
                    "only. Writes OUT/<index>.parquet (uid, matched, url, caption, language) per input file and "
                    "OUT/match.json."),
    Command(
        "curate balance", config="wit.filters.balance:BalanceConfig", run="wit.filters.balance:run",
        show="wit.commands:print_nothing",
        help="keep at most about t pairs per query entry (MetaCLIP Algorithm 1)",
        description="Count pairs per entry over all match files (c_e), then keep each pair with probability "
                    "1 - prod(1 - min(1, t/c_e)) over its entries, drawn from a hash of (seed, uid). With a query "
                    "list of several languages, --t is English's t and every other language's t is the smallest "
                    "whose tail share reaches English's (MetaCLIP 2). Writes OUT/selection/*.parquet (every row: "
                    "status selected|dropped, reason not_in_pool|no_query_match|not_selected; with --online: "
                    "eligible|dropped, every matched pool pair eligible with its keep_prob), OUT/urls/*.parquet "
                    "(selected rows: uid, url, caption; a URL list for `wit download`), OUT/entry_counts.parquet, "
                    "OUT/datacard.json and PNG plots."),
    Command(
        "shards write", config="wit.shards.reshard:ReshardConfig", run="wit.shards.reshard:reshard",
        help="reshard the selected pairs into evenly sized, globally shuffled shards + corpus manifest + index",
        description="Join the crawl manifests with filter verdicts and a balance selection, then write the "
                    "surviving pairs (image bytes unchanged) into evenly sized, globally shuffled shards with a "
                    "corpus manifest per shard and index.json. Running it again resumes."),
    Command(
        "audit", config="wit.shards.audit:AuditConfig", run="wit.shards.audit:run_audit",
        show="wit.commands:print_report",
        help="an HTML + JSON report of a pipeline's manifests: funnel, queries, sizes, domains, duplicates",
        description="Read the manifests of every stage found under a pipeline folder with DuckDB and write "
                    "report.html (with PNG plots, opens offline) and report.json."),
    Command(
        "train", config="wit.trainer.config:TrainConfig", run="wit.trainer.train:train",
        show="wit.commands:exit_status", torchrun="wit.trainer.train",
        help="train CLIP (open_clip model) on WebDataset shards, local or s3://; resumable",
        description="`wit train`: train CLIP on shards; with --nproc N > 1 it hands the same flags to torchrun (one "
                    "node). Multi-node runs call torchrun directly: `torchrun --nnodes ... -m wit.trainer.train "
                    "--data ...` (see trainer/README.md)."),
    Command(
        "embed", config="wit.trainer.embed:EmbedConfig", run="wit.trainer.embed:run_embed",
        torchrun="wit.trainer.embed",
        help="image and text embeddings + CLIP score per shard, with a trained open_clip model (resumable)",
        description="Embed every row of every finished shard (a crawl or training shards) with an open_clip model "
                    "and a local checkpoint: OUT/<shard>.parquet holds uid, image and text (L2-normalised float32 "
                    "vectors), clip_score (their cosine) and reason (why a row has none: not_ok_in_ingest, "
                    "missing_in_tar, tar_unreadable, no_image, decode_error). OUT/_wit/embed.json lists the shards "
                    "and the model. A re-run skips the shards already done by the same model. Next: `wit filter "
                    "clip-score`, `wit dedup-semantic`."),
    Command(
        "eval zeroshot", config="wit.trainer.eval.zeroshot:ZeroShotConfig", run="wit.trainer.eval.zeroshot:run",
        show="wit.commands:print_nothing",
        help="zero-shot top-1/top-5 with prompt ensembles",
        description="Zero-shot classification: every class name in every prompt template, embeddings averaged per "
                    "class; top-1 and top-5 accuracy."),
    Command(
        "eval retrieval", config="wit.trainer.eval.retrieval:RetrievalConfig", run="wit.trainer.eval.retrieval:run",
        show="wit.commands:print_nothing",
        help="image<->text recall@1/5/10",
        description="Image-text retrieval: recall@1/5/10 image->text (a hit when any of the image's captions is in "
                    "the top k) and text->image."),
    Command(
        "eval linear-probe", config="wit.trainer.eval.linear_probe:LinearProbeConfig",
        run="wit.trainer.eval.linear_probe:run", show="wit.commands:print_nothing",
        help="logistic regression on frozen features",
        description="Linear probe: L-BFGS logistic regression on frozen image features; C chosen on a validation "
                    "split of --train, refit on all of it, scored on --test."),
    Command(
        "eval suite", config="wit.trainer.eval.suite:SuiteConfig", run="wit.trainer.eval.suite:run",
        show="wit.commands:print_nothing",
        help="a task list (DataComp's form) in one run",
        description="Zero-shot classification and retrieval over a task list in DataComp's tasklist.yml form, read "
                    "from local copies (CLIP_benchmark's WebDataset layout, or wit's folder/tar/CSV forms); writes "
                    "DataComp's eval_results.jsonl and prints a table with the average."),
    Command(
        "pipeline", arguments="wit.pipeline:add_arguments", run="wit.pipeline:run_command", show="wit.commands:exit_status",
        help="lists -> crawl -> filters -> balance -> training shards -> audit (-> train) from one config file; "
             "resumable stage by stage",
        description="Run the stages a config file names, in the order of a sample's journey (lists -> crawl -> "
                    "filters -> match -> balance -> reshard -> audit -> train -> zero-shot), each through the same "
                    "function as its command, into the folder layout `wit audit` reads. Each stage records its "
                    "options and inputs when it finishes: running the same command again skips what is done and "
                    "unchanged, redoes a stage whose options or inputs changed and every stage after it, and "
                    "resumes an interrupted stage as its command resumes."),
    Command(
        "revoke", config="wit.revoke:RevokeConfig", run="wit.revoke:run", show="wit.revoke:show",
        help="take samples back: record a request in the ledger, rewrite the corpus shards that hold them; --report "
             "says which checkpoints trained on them",
        description="Append a revocation request (URLs, domains, uids, images) to ROOT/_wit/revocations/ and apply "
                    "the ledger to the corpus under ROOT: only the shards that hold a revoked sample are rewritten "
                    "(verified before the old shard is replaced), index.json follows. Crawls (wit download), "
                    "selections (wit curate balance) and reshards under ROOT never take a revoked pair again. "
                    "Running it again changes nothing; with no request it applies the ledger as it is."),
]
COMMANDS: dict[str, Command] = {c.words: c for c in _COMMANDS}  # in the order `wit --help` lists them
