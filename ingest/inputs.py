"""The crawl's input: every list normalised into `_wit/input/NNNNN.parquet`, once, without holding the pool.

1. Each list file is read and normalised in its own task (`run_map`: a process pool, or Ray), which writes
   `_wit/prepare/input/NNNNN.parquet` with the pair uid of every row and returns its row count and a digest. It
   reads, writes and digests a batch of `lists.BATCH_ROWS` rows at a time, so no task holds a whole list.
2. Repeated pairs are numbered by DuckDB: a window over the pair, in list then row order, among the rows whose
   pair occurs more than once. Each file's repeats stream to `_wit/prepare/repeats/NNNNN.parquet`, and that
   file's task (again a batch at a time) gives those rows (only those) the uid `schema.repeat_uid` derives, so every uid is what
   `schema.row_uids` gives when it reads the lists in order.
3. The content (list names, row counts, digests, shard size) is compared with the run record; the new input
   then takes the place of `_wit/input/`, and the record keeps the lists' fingerprint (size and mtime or etag
   of every file) and, from the crawl's first run on, the width of its shard names (`output.name_width`). A
   resume whose lists still have that fingerprint reuses the input without reading a list.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from wit.ingest.config import DownloadConfig
from wit.ingest.guard import host_key
from wit.ingest.output import crawl_sql, entries, name_width, planned_shards, read_record, run_record_url
from wit.shards.lists import BATCH_ROWS, find_lists, iter_list_batches
from wit.shards.runner import run_map
from wit.shards.schema import INPUT, MANIFEST, repeat_uid
from wit.shards.sql import sql_errors
from wit.shards.storage import WitError, exists, fs_and_path, join, move, write_json_atomic
from wit.shards.tables import open_parquet, read_row_count, write_parquet, write_parquet_stream

REPEAT = pa.schema([pa.field("source_row", pa.int64()), pa.field("n", pa.int64())])


HOST = pa.field("host", pa.string())  # after INPUT's columns: the key of the host's politeness (guard.host_key)


@dataclass(frozen=True)
class ListTask:
    src: str
    target: str
    fmt: str | None
    url_col: str | None
    caption_col: str | None
    extra: tuple[str, ...] = ()  # --save-additional-columns


def prepare_inputs(cfg: DownloadConfig) -> list[int]:
    """Normalise every list into `_wit/input/`; refuse an output that holds other lists' crawl. Row counts."""
    for name in cfg.save_additional_columns:
        if name in MANIFEST.names or name in (HOST.name, "invalid"):
            raise WitError(f"--save-additional-columns {name}: wit writes a column of that name itself; save the "
                           "list's column under another name")
    files = find_lists(list(cfg.lists))
    record = read_record(cfg.out) if exists(run_record_url(cfg.out)) else {}
    record = _upgrade(cfg.out, record)
    names = input_names(len(files))
    final = join(cfg.out, "_wit", "input")
    sources = lists_fingerprint(files)
    if (sources and record.get("sources_sha256") == sources and record.get("shard_size") == cfg.shard_size
            and record.get("additional_columns", []) == list(cfg.save_additional_columns)
            and _holds(final, names, record["rows"])):
        return record["rows"]  # the same lists, untouched since they were normalised

    prepare = join(cfg.out, "_wit", "prepare")
    fs, prepare_path = fs_and_path(prepare)
    _remove(fs, prepare_path)  # a prepare that was cut short
    staged = join(prepare, "input")
    tasks = [ListTask(f, join(staged, f"{n}.parquet"), cfg.input_format, cfg.url_col, cfg.caption_col,
                      cfg.save_additional_columns) for f, n in zip(files, names)]
    engine = {"engine": "ray" if cfg.distributor == "ray" else "local", "workers": cfg.processes,
              "ray_address": cfg.ray_address}
    read = run_map(normalise_list, tasks, **engine)
    fingerprint = {"lists": files, "rows": [r["rows"] for r in read], "shard_size": cfg.shard_size,
                   "pairs_sha256": hashlib.sha256("\n".join(r["pairs_sha256"] for r in read).encode()).hexdigest()}
    if cfg.save_additional_columns or record.get("additional_columns"):  # absent from records of crawls without
        fingerprint["additional_columns"] = list(cfg.save_additional_columns)
    repeats = number_repeats(cfg, [t.target for t in tasks], join(prepare, "repeats"))
    run_map(apply_repeats, [(tasks[i].target, path) for i, path in repeats], **engine)

    if "uids_sha256" in record and "pairs_sha256" not in record and _legacy_digest(tasks) == record["uids_sha256"]:
        record = {**record, "pairs_sha256": fingerprint["pairs_sha256"]}  # a record from before pairs_sha256
    # the lists' content decides, not their paths: a project folder copied or moved elsewhere is the same crawl
    content = [k for k in fingerprint if k != "lists"]
    if record and {k: record.get(k) for k in content} != {k: fingerprint[k] for k in content}:
        _remove(fs, prepare_path)
        raise WitError(
            f"{cfg.out}: holds a crawl of other lists, another shard size or other --save-additional-columns "
            f"({run_record_url(cfg.out)}); use a new output folder, or delete this one to start over"
        )
    if not (record and _holds(final, names, fingerprint["rows"])):  # else the input in place is this very one
        _replace_folder(fs, fs_and_path(staged)[1], fs_and_path(final)[1])
    _remove(fs, prepare_path)
    # the names' width and the order of rows into shards are chosen once, by the crawl's first run; a record
    # without them is from before: five digits, and the lists' order
    # and the fetch rules of the first run, so that a resume with a wider rule knows which rows met the narrower one
    first = {} if record else {"plan": "hosts", "fetch_rules": cfg.fetch_rules,
                               "name_width": name_width(planned_shards(fingerprint["rows"], cfg.shard_size, True))}
    write_json_atomic(run_record_url(cfg.out), {**record, **fingerprint, **first, "sources_sha256": sources})
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
    """One list -> its normalised input (pair uids, numbered later; each row's host), written batch by batch as it
    is read (never the whole list in memory); its row count and a digest of its pairs."""
    digest = LineDigest()
    batches = (with_hosts(batch) for batch in iter_list_batches(task.src, task.fmt, task.url_col, task.caption_col,
                                                                 extra=task.extra))
    first = next(batches)  # a list is never empty (iter_list_batches says so in one line): its schema

    def digested():
        for batch in itertools.chain([first], batches):
            digest.update(batch.column(0).to_pylist())
            yield batch

    rows = write_parquet_stream(task.target, first.schema, digested())
    return {"rows": rows, "pairs_sha256": digest.hexdigest()}


def with_hosts(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with each row's host (null where the URL is invalid: it is never fetched) after INPUT's columns."""
    hosts = [None if bad else host_key(url) for url, bad in zip(batch.column("url").to_pylist(),
                                                                batch.column("invalid").to_pylist())]
    at = len(INPUT)
    return pa.RecordBatch.from_arrays([*batch.columns[:at], pa.array(hosts, pa.string()), *batch.columns[at:]],
                                      schema=batch.schema.insert(at, HOST))


class LineDigest:
    """sha256 of strings joined by line breaks, fed a batch at a time: the digest of `"\n".join(all of them)`, as
    the run records of every crawl since the first hold it."""

    def __init__(self, digest=None):
        self.digest, self.first = digest or hashlib.sha256(), True

    def update(self, values: list[str]) -> None:
        if values:
            self.digest.update((("" if self.first else "\n") + "\n".join(values)).encode())
            self.first = False

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


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
    """Give the repeated rows of one normalised list their derived uids, a batch at a time: the repeats file
    (source_row, n), sorted by row, is read alongside, and each batch takes the repeats of its rows."""
    target, repeats_file = task
    repeats = _Repeats(open_parquet(repeats_file).iter_batches(batch_size=BATCH_ROWS))

    def batches():
        for batch in open_parquet(target).iter_batches(batch_size=BATCH_ROWS):
            start = batch.column("source_row")[0].as_py()  # a normalised list's source_row is its row number
            rows, ns = repeats.before(start + batch.num_rows)
            if len(rows):
                uids = batch.column(0)
                mask = pc.is_in(pa.array(range(start, start + batch.num_rows), pa.int64()), rows)
                new = [repeat_uid(u, n) for u, n in zip(pc.filter(uids, mask).to_pylist(), ns.to_pylist())]
                batch = batch.set_column(0, INPUT.field("uid"), pc.replace_with_mask(uids, mask, pa.array(new)))
            yield batch

    write_parquet_stream(target, open_parquet(target).schema_arrow, batches())


class _Repeats:
    """The rows of a repeats file in order, handed out by source_row range."""

    def __init__(self, batches):
        self.batches, self.held = batches, pa.table({"source_row": pa.array([], pa.int64()), "n": pa.array([], pa.int64())})

    def before(self, end: int) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
        """The (source_row, n) of the repeats whose source_row < end, not handed out before."""
        while not self.held.num_rows or self.held["source_row"][-1].as_py() < end:
            batch = next(self.batches, None)
            if batch is None:
                break
            self.held = pa.concat_tables([self.held, pa.Table.from_batches([batch]).cast(REPEAT)])
        cut = pc.sum(pc.less(self.held["source_row"], end)).as_py() or 0
        taken, self.held = self.held.slice(0, cut), self.held.slice(cut)
        return taken["source_row"], taken["n"]


def _holds(folder: str, names: list[str], rows: list[int]) -> bool:
    """Whether `folder` holds the normalised inputs `names`, each whole with its `rows`: a file cut short (a disk
    that filled, a copy stopped half-way) has no footer, and the input is then built again, never trusted."""
    fs, path = fs_and_path(folder)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return False
    found = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(path.rstrip("/") + "/*.parquet"))
    if found != [f"{n}.parquet" for n in names]:
        return False
    try:
        return [read_row_count(join(folder, f"{n}.parquet")) for n in names] == list(rows)
    except Exception:  # noqa: BLE001 - whatever keeps a footer from being read: not an input to trust
        return False


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
        lines = LineDigest(digest)
        for batch in open_parquet(task.target).iter_batches(batch_size=BATCH_ROWS, columns=["uid"]):
            lines.update(batch.column(0).to_pylist())
    return digest.hexdigest()
