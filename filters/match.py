"""Match captions against the query list: the ids of every entry that occurs as whole tokens in a caption.

One Aho-Corasick automaton (pyahocorasick) over the spaced entries " entry ", built once per worker process.
Speed comes from batching, not from a cleverer automaton: a batch of captions is spaced with numpy on its UTF-8
bytes (straight from the arrow buffer), as one string with a NUL token between captions (no entry contains
one, so no match spans two captions), and scanned by one `iter` call consumed in C (`np.fromiter`). The NUL
token is itself a key, so its matches mark where each caption's ids end. Per caption, ids are sorted, unique.
"""
from __future__ import annotations

import functools
import json
import pickle
import posixpath
import string
import uuid
from dataclasses import asdict, dataclass

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wit.filters import queries as querylist
from wit.filters.io import make_parent
from wit.filters.spacing import WS_CHARS, space
from wit.shards.lists import list_format, read_list
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, run_map
from wit.shards.schema import MATCHES
from wit.shards.storage import WitError, fs_and_path, move, write_json_atomic
from wit.shards.tables import open_parquet

BATCH_ROWS = 65_536
_MATCH = np.dtype([("end", np.int64), ("id", np.int64)])  # one (end, id) tuple from iter
CARRY_COLUMNS = ("url", "status")  # copied into the match file (with the caption) when the input has them


@dataclass(frozen=True, kw_only=True)
class MatchConfig(EngineOptions):
    inputs: tuple[str, ...] = opt(help="crawl manifests or URL lists in any format the crawl reads (parquet files "
                                       "with uid and caption columns, csv, tsv, jsonl): paths, globs, {a..b} patterns "
                                       "or folders; local or s3://", positional=True)
    queries: str = opt(help="query file from `wit queries build`")
    out: str = opt(help="output folder (local or s3://): one <index>.parquet per input plus match.json")
    caption_column: str = opt("caption", "caption column")
    uid_column: str = opt("uid", "uid column")
    batch_rows: int = opt(BATCH_ROWS, "captions scanned as one string", cli=False)


@dataclass(frozen=True)
class MatchTask:
    """One input file -> one match file. Everything a worker needs, so the task is a pure function."""
    queries: str
    source: str
    target: str
    uid_column: str
    caption_column: str
    batch_rows: int


def build_automaton(entries: list[str]) -> ahocorasick.Automaton:
    """Keys are the spaced entries; values are the query ids. Duplicate keys would hide an id: refuse them.

    One more key, " \\x00 " with value len(entries), marks the boundary between two captions in a batch.
    Keys go in in id order; query lists put frequent entries first, which keeps their nodes and edges early.
    """
    automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
    for i, entry in enumerate(entries):
        key = space(entry)
        if key.strip():
            if key in automaton:
                raise WitError(f"query {i} {entry!r}: same tokens as query {automaton.get(key)}; rebuild the list")
            automaton.add_word(key, i)
    automaton.add_word(SEPARATOR, len(entries))
    automaton.make_automaton()
    # A pickle round trip re-allocates the trie's nodes in traversal order, packed together: the scan then
    # misses the CPU cache less (about 20% faster), for a few seconds once per worker.
    return pickle.loads(pickle.dumps(automaton, protocol=pickle.HIGHEST_PROTOCOL))


@functools.lru_cache(maxsize=2)
def worker_automaton(queries_url: str) -> tuple[ahocorasick.Automaton, int, str]:
    """The automaton for a query file, built once per worker process (pool and Ray workers are reused)."""
    entries, version = querylist.load(queries_url)
    return build_automaton(entries), len(entries), version


# Byte tables for the vectorised spacing rule (filters.spacing is the definition). ASCII bytes never occur
# inside a multi-byte UTF-8 sequence, so the rule can work on UTF-8 bytes directly. bytes.translate applies a
# table several times faster than numpy fancy indexing.
SEPARATOR = " \x00 "  # between two captions of a batch: NUL is whitespace inside captions, so only we write it
_TO_SPACE = bytes(32 if i < 0x80 and chr(i) in WS_CHARS else i for i in range(256))  # ASCII whitespace and NUL -> space
_IS_PUNCT = bytes(int(chr(i) in string.punctuation or i == 0) for i in range(256))  # NUL: our separator
_WIDE = [ch.encode() for ch in WS_CHARS if ord(ch) >= 0x80]  # 2 or 3 bytes each
_IS_WIDE_LEAD = bytes(int(any(w[0] == i for w in _WIDE)) for i in range(256))
_WIDE_CODES = np.array(sorted(int.from_bytes(w.ljust(3, b"\0"), "big") for w in _WIDE), dtype=np.int64)


def _flags(raw: bytes, table: bytes) -> np.ndarray:
    return np.frombuffer(raw.translate(table), dtype=bool)


def _blank_wide_spaces(raw: bytes) -> np.ndarray:
    """The bytes with every byte of a non-ASCII whitespace character (e.g. U+00A0) turned into a space."""
    b = np.frombuffer(raw, dtype=np.uint8)
    lead = np.flatnonzero(_flags(raw, _IS_WIDE_LEAD))
    if not len(lead):
        return b
    last = len(b) - 1
    b0 = b[lead].astype(np.int64)
    three = (b0 << 16) | (b[np.minimum(lead + 1, last)].astype(np.int64) << 8) | b[np.minimum(lead + 2, last)]
    two = three & 0xFFFF00  # 2-byte characters, written with a zero third byte in _WIDE_CODES
    hits = [(lead[np.isin(code, _WIDE_CODES) & ((b0 >= 0xE0) == (n == 3))], n) for code, n in ((three, 3), (two, 2))]
    if sum(len(h) for h, _ in hits):
        b = b.copy()
        for hit, n in hits:
            for k in range(n):
                b[hit + k] = 32
    return b


def spaced_batch(captions: pa.Array) -> str:
    """The spaced captions as one string: " cap0 \x00 cap1 \x00 ... capN "."""
    arr = pc.fill_null(captions.cast(pa.large_string()), "")
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]] if data_buf else np.empty(0, np.uint8)
    b = np.insert(_blank_wide_spaces(data.tobytes().translate(_TO_SPACE)), offsets[1:-1] - offsets[0], 0)
    punct = _flags(b.tobytes(), _IS_PUNCT)
    out = np.repeat(b, 1 + 2 * punct.view(np.uint8))  # each punctuation byte three times ...
    first = np.flatnonzero(punct)
    first += 2 * np.arange(len(first))  # ... at its old place plus 2 per earlier punctuation byte
    out[first] = 32  # ... and the outer two become spaces
    out[first + 2] = 32
    is_space = out == 32
    keep = np.ones(len(out), dtype=bool)
    np.logical_not(is_space[1:] & is_space[:-1], out=keep[1:])  # collapse runs of spaces
    return " " + out[keep].tobytes().decode("utf-8") + " "


def match_captions(automaton: ahocorasick.Automaton, captions: pa.Array, n_entries: int) -> pa.ListArray:
    """list<int32> of matched query ids per caption, sorted and unique (null caption -> empty list)."""
    n = len(captions)
    if n == 0 or n_entries == 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int32()))
    # One C-level pass: iter yields (end, id) in text order; only the ids are kept. Separator matches
    # (id n_entries) count the captions, so the ids need no position arithmetic to find their caption.
    values = np.fromiter(automaton.iter(spaced_batch(captions)), dtype=_MATCH)["id"]
    is_sep = values == n_entries
    rows = np.cumsum(is_sep)[~is_sep]
    keys = np.sort(rows * n_entries + values[~is_sep])  # by row then id (np.unique is far slower in numpy 2.4)
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys  # drop repeats
    rows, ids = keys // n_entries, keys % n_entries
    offsets = np.searchsorted(rows, np.arange(n + 1), side="left").astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids.astype(np.int32), pa.int32()))


def match_file(task: MatchTask) -> dict:
    """Read one input in batches, write its match file (atomically), return its counts.

    The input is a parquet with a uid column (a crawl's manifest) or else a URL list in any format `wit download`
    reads (read whole, with the uids ingest would give), for balancing the text pool before download.
    """
    automaton, n_entries, version = worker_automaton(task.queries)
    fs, path = fs_and_path(task.source)
    if not fs.exists(path):
        raise WitError(f"{task.source}: no such input file")
    uid_column, caption_column = task.uid_column, task.caption_column
    source = _open_manifest(task.source, uid_column)
    if source is None:  # a URL list
        source, uid_column, caption_column = read_list(task.source), "uid", "caption"
    names = source.schema_arrow.names if isinstance(source, pq.ParquetFile) else source.column_names
    if caption_column not in names:
        raise WitError(f"{task.source}: no {caption_column!r} column (columns: {', '.join(names)})")
    carry = [c for c in CARRY_COLUMNS if c in names and c not in (caption_column, uid_column)]
    columns = list(dict.fromkeys([uid_column, *carry, caption_column]))
    schema = MATCHES
    for c in carry:
        schema = schema.append(pa.field(c, pa.string()))
    schema = schema.append(pa.field("caption", pa.string())).with_metadata(
        {"wit.queries": task.queries, "wit.queries.version": version, "wit.queries.entries": str(n_entries),
         "wit.source": task.source}
    )
    out_fs, out_path = fs_and_path(task.target)
    make_parent(task.target)
    tmp = f"{out_path}.tmp-{uuid.uuid4().hex[:8]}"
    rows = matched_rows = matches = 0
    with out_fs.open(tmp, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        if isinstance(source, pq.ParquetFile):
            batches = source.iter_batches(batch_size=task.batch_rows, columns=columns)
        else:
            batches = source.select(columns).to_batches(max_chunksize=task.batch_rows)
        for batch in batches:
            caps = batch.column(caption_column)
            matched = match_captions(automaton, caps, n_entries)
            lens = pc.list_value_length(matched)
            rows += len(batch)
            matched_rows += pc.sum(pc.greater(lens, 0)).as_py() or 0
            matches += pc.sum(lens).as_py() or 0
            arrays = [batch.column(uid_column).cast(pa.string()), matched]
            arrays += [batch.column(c).cast(pa.string()) for c in carry] + [caps.cast(pa.string())]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    move(out_fs, tmp, out_path)
    return {"source": task.source, "target": task.target, "rows": rows, "matched_rows": matched_rows,
            "matches": matches}


def _open_manifest(url: str, uid_column: str) -> pq.ParquetFile | None:
    """The input as a parquet manifest, or None when it is a URL list (another format, or no uid column)."""
    if list_format(url, strict=False) != "parquet":
        return None
    source = open_parquet(url)  # a file that is not parquet: a WitError naming it
    return source if uid_column in source.schema_arrow.names else None


def run(cfg: MatchConfig) -> dict:
    entries, version = querylist.load(cfg.queries)  # fail here, once, on a bad query file
    if not cfg.inputs:
        raise WitError("no input files given")
    tasks = [
        MatchTask(cfg.queries, src, posixpath.join(cfg.out, f"{i:05d}.parquet"), cfg.uid_column,
                  cfg.caption_column, cfg.batch_rows)
        for i, src in enumerate(cfg.inputs)
    ]
    results = run_map(match_file, tasks, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
    rows = sum(r["rows"] for r in results)
    summary = {
        "queries": cfg.queries,
        "queries_version": version,
        "entries": len(entries),
        "rows": rows,
        "matched_rows": sum(r["matched_rows"] for r in results),
        "matches": sum(r["matches"] for r in results),
        "files": results,
        "config": {k: v for k, v in asdict(cfg).items() if k != "inputs"},
    }
    write_json_atomic(posixpath.join(cfg.out, "match.json"), summary)
    print(json.dumps({k: summary[k] for k in ("entries", "rows", "matched_rows", "matches")}), flush=True)
    return summary
