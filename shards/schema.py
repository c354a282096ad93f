"""The manifest schema: the one place that names the columns every stage writes and reads.

A manifest row is one input pair. Stages never drop a row: they set `status` and `reason`,
so counting rows by status is the audit's funnel and adds up to the input.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

SCHEMA_VERSION = 1

# Row statuses.
OK = "ok"  # the pair is in the shard beside this manifest
FAILED = "failed"  # the pair is not in any shard; `reason` says why
SUPERSEDED = "superseded"  # a later shard holds the retried attempt; `reason` names it
# The reason of a row a revocation took back (shards/revocations.py): a crawl never fetches it (status failed), a
# balance never selects it (status dropped), the audit's funnel counts the samples `wit revoke` took out of a corpus.
REVOKED = "revoked"

MANIFEST = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),  # stable hash of (url, caption)
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # null when status == ok
        pa.field("detail", pa.string()),  # the raw error message, for humans
        pa.field("shard", pa.string()),  # shard name, e.g. "00012"
        pa.field("key", pa.string()),  # sample key inside the tar (no dots)
        pa.field("width", pa.int32()),  # stored image size
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("sha256", pa.string()),  # sha256 of the downloaded image bytes
        pa.field("source_file", pa.string()),  # the URL list the row came from
        pa.field("source_row", pa.int64()),  # 0-based row in that list
    ]
)

# The normalised input that ingest hands to the downloader: one row per list row.
INPUT = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("invalid", pa.string()),  # a reason when the row was bad before download
    ]
)


def pair_uid(url: str | None, caption: str | None) -> str:
    """Stable id of a pair: the same (url, caption) gets the same uid in every run and stage."""
    h = hashlib.blake2b(digest_size=16)
    h.update((url or "").encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    h.update((caption or "").encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def row_uids(pairs: Iterable[tuple[str | None, str | None]], seen: Counter | None = None) -> list[str]:
    """uids for the rows of a crawl, unique even when a list repeats a pair.

    The first occurrence of a pair gets `pair_uid`; its n-th repeat a uid derived from that and n. Every row then
    has its own key through filters, balance, reshard and the audit, and dedup (same bytes) is what removes the
    copy, with `dup_of` naming the first. `seen` carries the counts from list to list of one crawl.
    """
    return number_uids((pair_uid(url, caption) for url, caption in pairs), Counter() if seen is None else seen)


def number_uids(pair_uids: Iterable[str], seen: Counter) -> list[str]:
    """`row_uids` from the pairs' uids: the n-th repeat (counted in `seen`, which it updates) gets `repeat_uid`."""
    uids = []
    for uid in pair_uids:
        n, seen[uid] = seen[uid], seen[uid] + 1
        uids.append(repeat_uid(uid, n) if n else uid)
    return uids


def repeat_uid(uid: str, n: int) -> str:
    """The uid of the n-th repeat (n >= 1) of the pair whose `pair_uid` is `uid`."""
    return hashlib.blake2b(f"{uid}:{n}".encode(), digest_size=16, person=b"wit.repeat").hexdigest()


def empty_manifest() -> pa.Table:
    return MANIFEST.empty_table()


# ---- Query-based curation (filters/: queries, curate match, curate balance) ----------------------------------

# The query list: id is the position (0..n-1); source is one of QUERY_SOURCES; score is the source's own
# strength (count, PMI, page views, synsets; null for user lists); language is the entry's language.
QUERY_SOURCES = ("extra", "wordnet", "unigram", "bigram", "title")
QUERIES = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("entry", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("language", pa.string(), nullable=False),  # ISO 639-1 code (filters.languages); "en" before it
    ]
)

# One match file per input file: the query ids whose entry occurs as whole tokens in the caption (sorted,
# unique). url and caption are carried over when the input has them, so a selection can be a URL list.
MATCHES = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("matched", pa.list_(pa.int32()), nullable=False),
    ]
)

# Selection statuses and reasons (curate balance). Every match row appears once in the selection.
SELECTED = "selected"
DROPPED = "dropped"
NO_QUERY_MATCH = "no_query_match"
NOT_SELECTED = "not_selected"
# `curate balance --online`: every matched pool pair, each epoch of `wit train --online-balance` keeps it with its
# keep_prob (shards.online). `wit shards write` then carries KEEP_PROB and `matched` into the corpus manifest
# beside each output shard (the crawl manifest's columns, shards.reshard_plan.CORPUS_FIELDS, plus these two).
ELIGIBLE = "eligible"
KEEP_PROB = "keep_prob"

SELECTION = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # selected | dropped (online: eligible | dropped)
        pa.field("reason", pa.string()),  # null when selected
        pa.field(KEEP_PROB, pa.float64(), nullable=False),  # 1 - prod(1 - p_e) over matched entries
        pa.field("draw", pa.float64(), nullable=False),  # uniform in [0, 1) from (seed, uid); kept iff draw < keep_prob
        pa.field("matched", pa.list_(pa.int32()), nullable=False),
    ]
)


# ---- Filter verdicts (filters/: text and image filters, dedup, leakage) ---------------------------------------

# Every filter stage writes one verdict file per input shard, `<stage dir>/<shard>.parquet`, with one row per
# manifest row of that shard (uid is the join key; the ingest manifest is never rewritten). A stage may add its own
# columns after these (e.g. phash, sha256). `keep` is false exactly when `reason` is set.
VERDICT = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # e.g. too_small, near_dup_of:<uid>, eval_leak:<eval image>, not_ok_in_ingest
        pa.field("dup_of", pa.string()),  # uid of the kept copy, for exact and near duplicates
    ]
)


# ---- Model embeddings (trainer/embed.py writes them; filters: clip-score, semantic dedup read them) -------------

# `wit embed` writes one file per input shard, `<embed dir>/<shard>.parquet`, one row per manifest row in manifest
# order. `image` and `text` are the model's L2-normalised embeddings (float32, a fixed-size list as long as the
# model's width) and `clip_score` is their cosine; all three are null exactly when `reason` says why the row has
# none (not_ok_in_ingest, missing_in_tar, tar_unreadable, decode_error). The file's schema metadata names the model
# that made it (EMBED_MODEL_KEY: name and a hash of its weights), so a resumed run never mixes two models.
# `<embed dir>/_wit/embed.json` (EMBED_PLAN) is written first and lists every shard the folder must hold.
EMBED_PLAN = "_wit/embed.json"
EMBED_MODEL_KEY = b"wit.embedder"


def embedding_schema(dim: int) -> pa.Schema:
    vector = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("image", vector),
            pa.field("text", vector),
            pa.field("clip_score", pa.float32()),
            pa.field("reason", pa.string()),  # null when the row has embeddings
        ]
    )


def embedding_problem(schema: pa.Schema) -> str | None:
    """What keeps `schema` from being an embedding file's (None when it is one)."""
    names = schema.names
    for name in ("uid", "image", "text", "clip_score", "reason"):
        if name not in names:
            return f"no column {name!r} (columns: {', '.join(names)})"
    for name in ("image", "text"):
        if not pa.types.is_fixed_size_list(schema.field(name).type):
            return f"column {name!r} is {schema.field(name).type}, not a fixed-size list of float32"
    return None
