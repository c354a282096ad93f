"""The crawl's input: every list normalised into `_wit/input/NNNNN.parquet`, once, without holding the pool.

1. Each list file is read and normalised in its own task (`run_map`: a process pool, or Ray), which writes
   `_wit/prepare/input/NNNNN.parquet` with the pair uid of every row and returns its row count and a digest.
2. Repeated pairs are numbered by DuckDB: a window over the pair, in list then row order, among the rows whose
   pair occurs more than once. Each file's repeats stream to `_wit/prepare/repeats/NNNNN.parquet`, and that
   file's task gives those rows (only those) the uid `schema.repeat_uid` derives, so every uid is what
   `schema.row_uids` gives when it reads the lists in order.
3. The content (list names, row counts, digests, shard size) is compared with the run record; the new input
   then takes the place of `_wit/input/`, and the record keeps the lists' fingerprint (size and mtime or etag
   of every file) and, from the crawl's first run on, the width of its shard names (`output.name_width`). A
   resume whose lists still have that fingerprint reuses the input without reading a list.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from wit.ingest.config import DownloadConfig
from wit.ingest.output import crawl_sql, entries, name_width, planned_shards, read_record, run_record_url
from wit.shards.lists import find_lists, read_list
from wit.shards.runner import run_map
from wit.shards.schema import INPUT, repeat_uid
from wit.shards.sql import sql_errors
from wit.shards.storage import WitError, exists, fs_and_path, join, move, write_json_atomic
from wit.shards.tables import open_parquet, read_parquet, write_parquet

REPEAT = pa.schema([pa.field("source_row", pa.int64()), pa.field("n", pa.int64())])


@dataclass(frozen=True)
class ListTask:
    src: str
    target: str
    fmt: str | None
    url_col: str | None
    caption_col: str | None


def prepare_inputs(cfg: DownloadConfig) -> list[int]:
    """Normalise every list into `_wit/input/`; refuse an output that holds other lists' crawl. Row counts."""
    files = find_lists(list(cfg.lists))
    record = read_record(cfg.out) if exists(run_record_url(cfg.out)) else {}
    record = _upgrade(cfg.out, record)
    names = input_names(len(files))
    final = join(cfg.out, "_wit", "input")
    sources = lists_fingerprint(files)
    if (sources and record.get("sources_sha256") == sources and record.get("shard_size") == cfg.shard_size
            and _holds(final, names)):
        return record["rows"]  # the same lists, untouched since they were normalised

    prepare = join(cfg.out, "_wit", "prepare")
    fs, prepare_path = fs_and_path(prepare)
    _remove(fs, prepare_path)  # a prepare that was cut short
    staged = join(prepare, "input")
    tasks = [ListTask(f, join(staged, f"{n}.parquet"), cfg.input_format, cfg.url_col, cfg.caption_col)
             for f, n in zip(files, names)]
    engine = {"engine": "ray" if cfg.distributor == "ray" else "local", "workers": cfg.processes,
              "ray_address": cfg.ray_address}
    read = run_map(normalise_list, tasks, **engine)
    fingerprint = {"lists": files, "rows": [r["rows"] for r in read], "shard_size": cfg.shard_size,
                   "pairs_sha256": hashlib.sha256("\n".join(r["pairs_sha256"] for r in read).encode()).hexdigest()}
    repeats = number_repeats(cfg, [t.target for t in tasks], join(prepare, "repeats"))
    run_map(apply_repeats, [(tasks[i].target, path) for i, path in repeats], **engine)

    if "uids_sha256" in record and "pairs_sha256" not in record and _legacy_digest(tasks) == record["uids_sha256"]:
        record = {**record, "pairs_sha256": fingerprint["pairs_sha256"]}  # a record from before pairs_sha256
    if record and {k: record.get(k) for k in fingerprint} != fingerprint:
        _remove(fs, prepare_path)
        raise WitError(
            f"{cfg.out}: holds a crawl of other lists or another shard size ({run_record_url(cfg.out)}); "
            "use a new output folder, or delete this one to start over"
        )
    if not (record and _holds(final, names)):  # else the input in place is this very one
        _replace_folder(fs, fs_and_path(staged)[1], fs_and_path(final)[1])
    _remove(fs, prepare_path)
    # the names' width is chosen once, by the crawl's first run; a record without one is from before: five digits
    width = {} if record else {"name_width": name_width(planned_shards(fingerprint["rows"], cfg.shard_size))}
    write_json_atomic(run_record_url(cfg.out), {**record, **fingerprint, **width, "sources_sha256": sources})
    return fingerprint["rows"]


def input_names(n_files: int) -> list[str]:
    """`00000` ... : wide enough that img2dataset's reader, which sorts the names as text, keeps the lists' order."""
    width = max(5, len(str(n_files - 1)))
    return [f"{i:0{width}d}" for i in range(n_files)]


def lists_fingerprint(files: list[str]) -> str | None:
    """A digest of every list's size and mtime (or etag): what tells a resume that the lists are unchanged. None
    when a list has neither (a web server that sends no ETag): then the lists are read again every time."""
    stamps = []
    for url in files:
        fs, path = fs_and_path(url)
        info = fs.info(path)
        changed = info.get("ETag") or info.get("mtime") or info.get("LastModified")
        if changed is None:
            return None
        stamps.append([url, info.get("size"), str(changed)])
    return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()


def normalise_list(task: ListTask) -> dict:
    """One list -> its normalised input (pair uids, numbered later); its row count and a digest of its pairs."""
    table = read_list(task.src, task.fmt, task.url_col, task.caption_col, number_repeats=False)
    write_parquet(task.target, table)
    digest = hashlib.sha256("\n".join(table["uid"].to_pylist()).encode()).hexdigest()
    return {"rows": table.num_rows, "pairs_sha256": digest}


def number_repeats(cfg: DownloadConfig, inputs: list[str], folder: str) -> list[tuple[int, str]]:
    """Number every repeat of a pair (1, 2, ... in list then row order) and write each list's repeats to
    `folder/<i>.parquet` (source_row, n); returns (list index, file) for the lists that have any."""
    pool = "read_parquet(?, filename = true)"
    sql = f"""
        WITH pool AS (SELECT uid, source_row, regexp_extract(filename, '([0-9]+)\\.parquet$', 1)::BIGINT AS f
                      FROM {pool}),
             repeated AS (SELECT uid FROM pool GROUP BY uid HAVING count(*) > 1)
        SELECT f, source_row, n FROM (
            SELECT f, source_row, row_number() OVER (PARTITION BY uid ORDER BY f, source_row) - 1 AS n
            FROM pool SEMI JOIN repeated USING (uid))
        WHERE n > 0 ORDER BY f, source_row"""
    written: list[tuple[int, str]] = []
    with crawl_sql(cfg.out, cfg.memory_limit, cfg.temp_dir) as con, sql_errors(con, "numbering repeated pairs"):
        reader = con.sql(sql, params=[inputs]).to_arrow_reader(1 << 20)
        part: list[pa.RecordBatch] = []
        for batch in reader:  # sorted by list: one list's repeats at a time
            f = batch.column(0)
            for value in pc.unique(f).to_pylist():
                rows = batch.filter(pc.equal(f, value))
                if written and written[-1][0] == value:
                    part.append(rows)
                    continue
                _flush(part, written)
                written.append((value, join(folder, f"{value}.parquet")))
                part = [rows]
        _flush(part, written)
    return written


def _flush(part: list[pa.RecordBatch], written: list[tuple[int, str]]) -> None:
    if part:
        table = pa.Table.from_batches(part).select(["source_row", "n"]).cast(REPEAT)
        write_parquet(written[-1][1], table)


def apply_repeats(task: tuple[str, str]) -> None:
    """Give the repeated rows of one normalised list their derived uids."""
    target, repeats_file = task
    table = read_parquet(target)
    repeats = read_parquet(repeats_file)
    uids = table["uid"].to_pylist()
    for row, n in zip(repeats["source_row"].to_pylist(), repeats["n"].to_pylist()):
        uids[row] = repeat_uid(uids[row], n)
    write_parquet(target, table.set_column(0, INPUT.field("uid"), pa.array(uids, pa.string())))


def _holds(folder: str, names: list[str]) -> bool:
    fs, path = fs_and_path(folder)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return False
    return sorted(p.rsplit("/", 1)[-1] for p in fs.glob(path.rstrip("/") + "/*.parquet")) == [f"{n}.parquet" for n in names]


def _remove(fs, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # an object store has no empty folders
        fs.rm(path, recursive=True)


def _replace_folder(fs, src: str, dst: str) -> None:
    _remove(fs, dst)
    if "file" in fs.protocol:
        move(fs, src, dst)  # one rename
        return
    for path in fs.find(src):  # object stores: every object by itself (a folder is only a prefix there)
        move(fs, path, dst + path[len(src.rstrip("/")):])


def _upgrade(out: str, record: dict) -> dict:
    """A record written before it listed the retries: find them from the retry inputs (`_wit/retry-NNNNN/`)."""
    if not record or "retries" in record:
        return record
    retries = []
    for name in entries(join(out, "_wit")):
        if name.startswith("retry-") and name[6:].isdigit():
            rows = open_parquet(join(out, "_wit", name, "00000.parquet")).metadata.num_rows
            retries.append([int(name[6:]), int(name[6:]) + math.ceil(rows / record["shard_size"])])
    return {**record, "retries": retries}


def _legacy_digest(tasks: list[ListTask]) -> str:
    """The digest records held before `pairs_sha256`: sha256 over each list's uids joined by line breaks."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update("\n".join(read_parquet(task.target, ["uid"])["uid"].to_pylist()).encode())
    return digest.hexdigest()
