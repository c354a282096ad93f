"""Match captions against the query list: the ids of every entry that occurs as whole tokens in a caption.

`wit curate match`: each input file (a crawl manifest or a URL list) is read in batches and matched by
filters.worldwide's matcher (per caption language; filters.tokenmatch and filters.automaton do the scanning), built
once per worker process; one match file per input.
"""
from __future__ import annotations

import functools
import json
import posixpath
import uuid
from dataclasses import asdict, dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wit.filters import languages as langs
from wit.filters import queries as querylist
from wit.filters.io import make_parent
from wit.filters.spacing import RULES
from wit.filters.worldwide import WorldwideMatcher
from wit.shards.lists import list_format, read_list
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, run_map
from wit.shards.schema import MATCHES
from wit.shards.storage import WitError, fs_and_path, move, write_json_atomic
from wit.shards.tables import open_parquet, parquet_inputs

BATCH_ROWS = 65_536
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
    spacing: str = opt("metaclip", "whole-token rule: 'metaclip' = MetaCLIP's (the marks , . ; : ? ! ` spaced, tab "
                                   "and newline to spaces, case-sensitive); 'ascii' = every ASCII punctuation mark "
                                   "spaced, whitespace runs collapsed (wit's earlier rule)", choices=RULES)
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
    spacing: str = "metaclip"


@functools.lru_cache(maxsize=2)
def worker_matcher(queries_url: str, spacing: str = "metaclip"):
    """The matcher for a query file (filters.worldwide: one automaton per language), built once per worker
    process (pool and Ray workers are reused), and the file's version."""
    entries, version = querylist.load(queries_url)
    return WorldwideMatcher(entries, langs.load_languages(queries_url), spacing), version


def match_file(task: MatchTask) -> dict:
    """Read one input in batches, write its match file (atomically), return its counts.

    The input is a parquet with a uid column (a crawl's manifest) or else a URL list in any format `wit download`
    reads (read whole, with the uids ingest would give), for balancing the text pool before download.
    """
    matcher, version = worker_matcher(task.queries, task.spacing)
    n_entries = matcher.n_entries
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
    schema = schema.append(pa.field("caption", pa.string())).append(pa.field("language", pa.string())).with_metadata(
        {"wit.queries": task.queries, "wit.queries.version": version, "wit.queries.entries": str(n_entries),
         "wit.source": task.source, "wit.spacing": task.spacing, "wit.languages": ",".join(matcher.languages)}
    )
    out_fs, out_path = fs_and_path(task.target)
    make_parent(task.target)
    tmp = f"{out_path}.tmp-{uuid.uuid4().hex[:8]}"
    rows = matched_rows = matches = 0
    per_language: dict[str, dict[str, int]] = {}
    with out_fs.open(tmp, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        if isinstance(source, pq.ParquetFile):
            batches = source.iter_batches(batch_size=task.batch_rows, columns=columns)
        else:
            batches = source.select(columns).to_batches(max_chunksize=task.batch_rows)
        for batch in batches:
            caps = batch.column(caption_column)
            matched, caption_languages = matcher.match(caps)
            lens = pc.list_value_length(matched)
            _count_languages(per_language, caption_languages, lens)
            rows += len(batch)
            matched_rows += pc.sum(pc.greater(lens, 0)).as_py() or 0
            matches += pc.sum(lens).as_py() or 0
            arrays = [batch.column(uid_column).cast(pa.string()), matched]
            arrays += [batch.column(c).cast(pa.string()) for c in carry] + [caps.cast(pa.string()), caption_languages]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    move(out_fs, tmp, out_path)
    return {"source": task.source, "target": task.target, "rows": rows, "matched_rows": matched_rows,
            "matches": matches, "languages": per_language}


def _count_languages(per_language: dict, caption_languages: pa.Array, lens: pa.Array) -> None:
    """Per caption language: captions (the pool), matched captions and matches."""
    table = pa.table({"language": caption_languages, "n": pc.cast(lens, pa.int64())})
    table = table.append_column("matched", pc.cast(pc.greater(table["n"], 0), pa.int64()))
    for row in table.group_by("language").aggregate([("n", "count"), ("matched", "sum"), ("n", "sum")]).to_pylist():
        s = per_language.setdefault(row["language"], {"rows": 0, "matched_rows": 0, "matches": 0})
        s["rows"] += row["n_count"]
        s["matched_rows"] += row["matched_sum"]
        s["matches"] += row["n_sum"]


def _sum_languages(results: list[dict]) -> dict:
    total: dict[str, dict[str, int]] = {}
    for r in results:
        for lang, s in r["languages"].items():
            t = total.setdefault(lang, {"rows": 0, "matched_rows": 0, "matches": 0})
            for k in t:
                t[k] += s[k]
    return dict(sorted(total.items(), key=lambda kv: -kv[1]["rows"]))


def _open_manifest(url: str, uid_column: str) -> pq.ParquetFile | None:
    """The input as a parquet manifest, or None when it is a URL list (another format, or no uid column)."""
    if list_format(url, strict=False) != "parquet":
        return None
    source = open_parquet(url)  # a file that is not parquet: a WitError naming it
    return source if uid_column in source.schema_arrow.names else None


def run_match(cfg: MatchConfig) -> dict:
    """`wit curate match`: the parquet files its inputs name (tables.parquet_inputs), matched by `run`."""
    return run(replace(cfg, inputs=tuple(parquet_inputs(cfg.inputs))))


def run(cfg: MatchConfig) -> dict:
    entries, version = querylist.load(cfg.queries)  # fail here, once, on a bad query file
    if not cfg.inputs:
        raise WitError("no input files given")
    tasks = [
        MatchTask(cfg.queries, src, posixpath.join(cfg.out, f"{i:05d}.parquet"), cfg.uid_column,
                  cfg.caption_column, cfg.batch_rows, cfg.spacing)
        for i, src in enumerate(cfg.inputs)
    ]
    results = run_map(match_file, tasks, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
    rows = sum(r["rows"] for r in results)
    summary = {
        "queries": cfg.queries,
        "queries_version": version,
        "entries": len(entries),
        "spacing": cfg.spacing,
        "rows": rows,
        "matched_rows": sum(r["matched_rows"] for r in results),
        "matches": sum(r["matches"] for r in results),
        "languages": _sum_languages(results),
        "files": results,
        "config": {k: v for k, v in asdict(cfg).items() if k != "inputs"},
    }
    write_json_atomic(posixpath.join(cfg.out, "match.json"), summary)
    print(json.dumps({k: summary[k] for k in ("entries", "rows", "matched_rows", "matches")}), flush=True)
    return summary
