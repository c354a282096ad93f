"""Read and write parquet files (manifests, verdicts, selections, lists) on any fsspec URL; read a folder whole.

Every parquet read and every whole-file parquet write in wit goes through here, because Arrow must never be handed
a Python file object: its worker threads then hold Python buffers, and freeing one at interpreter exit needs the
GIL, which aborts the process (SIGABRT, "terminate called without an active exception") after the command has
finished. Local files are read by Arrow natively; remote ones are fetched whole and parsed from a copy in Arrow's
own memory; files are written from Arrow's own buffers, atomically.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from wit.shards.schema import MANIFEST
from wit.shards.storage import WitError, absolute, entries, expand, fs_and_path, is_local, join, move, write_atomic


def arrow_reader(data: bytes) -> pa.BufferReader:
    """A reader over an Arrow-owned copy of `data` (see the module docstring for why not the bytes themselves)."""
    buf = pa.allocate_buffer(len(data))
    pa.FixedSizeBufferWriter(buf).write(data)
    return pa.BufferReader(buf)


def open_parquet(url: str) -> pq.ParquetFile:
    """A parquet file to read whole, by columns or in batches; a file that is not parquet is a WitError naming it."""
    fs, path = fs_and_path(url)
    try:
        if is_local(url):
            return pq.ParquetFile(path)
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(arrow_reader(f.read()))
    except pa.ArrowInvalid as err:
        raise WitError(f"{url}: not a readable parquet file ({err})") from None


def read_row_count(url: str) -> int:
    """A parquet file's row count from its footer alone (as read_schema); an error when the footer is not whole."""
    fs, path = fs_and_path(url)
    if is_local(url):
        return pq.read_metadata(path).num_rows
    tail = fs.cat_file(path, start=-8)
    if len(tail) < 8 or tail[4:] != b"PAR1":
        raise WitError(f"{url}: not a parquet file (no PAR1 at its end)")
    size = int.from_bytes(tail[:4], "little")
    return pq.read_metadata(arrow_reader(b"PAR1" + fs.cat_file(path, start=-(8 + size)))).num_rows


def read_schema(url: str) -> pa.Schema:
    """A parquet file's schema and metadata from its footer alone (two small ranged reads on object stores)."""
    fs, path = fs_and_path(url)
    if is_local(url):
        return pq.read_schema(path)
    tail = fs.cat_file(path, start=-8)
    if len(tail) < 8 or tail[4:] != b"PAR1":
        raise WitError(f"{url}: not a parquet file (no PAR1 at its end)")
    size = int.from_bytes(tail[:4], "little")
    return pq.read_schema(arrow_reader(b"PAR1" + fs.cat_file(path, start=-(8 + size))))


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    try:
        return open_parquet(url).read(columns=columns)
    except pa.ArrowInvalid as err:  # a damaged column chunk
        raise WitError(f"{url}: not a readable parquet file ({err})") from None


def read_manifest(url: str, columns: list[str] | None = None, required: tuple[str, ...] = ()) -> pa.Table:
    """A shard's manifest (the columns asked for, else all), checked against the manifest schema: no such file, a
    file that is not parquet, a column asked for (or `required`) that it lacks, or a column of another type than the
    schema's is a WitError naming the file, not a surprise further on. The one reader of crawl manifests."""
    try:
        table = read_parquet(url, columns)
    except FileNotFoundError:
        raise WitError(f"{url}: no such manifest") from None
    for name in [*(columns or ()), *required]:
        if name not in table.column_names:
            raise WitError(f"{url}: no column {name!r} (columns: {', '.join(open_parquet(url).schema_arrow.names)})")
    for field in table.schema:
        if field.name in MANIFEST.names and not _fits(field.type, MANIFEST.field(field.name).type):
            raise WitError(f"{url}: column {field.name!r} is {field.type}, the manifest schema has "
                           f"{MANIFEST.field(field.name).type}")
    return table


def _fits(got: pa.DataType, want: pa.DataType) -> bool:
    """A column's type where the schema wants another: any integer for an integer, large strings, or all nulls."""
    return (got == want or pa.types.is_null(got) or (pa.types.is_integer(want) and pa.types.is_integer(got))
            or (pa.types.is_string(want) and pa.types.is_large_string(got)))


def write_parquet(url: str, table: pa.Table) -> None:
    """One parquet file, written whole under a temporary name and renamed (the parent folder is made on local
    disks), so a reader never sees half of it."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(url, sink.getvalue().to_pybytes())


def write_parquet_stream(url: str, schema: pa.Schema, batches) -> int:
    """Record batches (a DuckDB result's reader) into one parquet file, never held whole; the row count. Written by
    Arrow itself to a local file (a temporary beside a local target, else one uploaded), then renamed into place."""
    fs, path = fs_and_path(url)
    local = is_local(url)
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    else:
        fd, tmp = tempfile.mkstemp(suffix=".parquet")
        os.close(fd)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in batches:
                writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
                rows += batch.num_rows
        if local:
            os.replace(tmp, path)
        else:
            staged = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            fs.put_file(tmp, staged)
            move(fs, staged, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return rows


def parquet_files(folder: str) -> list[str]:
    """Shard-named parquet files in a folder (`00012.parquet`), in shard number order; not `_wit/` scratch, nor a
    file being written (`.parquet.tmp-*`)."""
    fs, path = fs_and_path(folder)
    fs.invalidate_cache(path)
    if not fs.isdir(path):
        raise WitError(f"{folder}: no such folder")
    base = absolute(folder)
    return sorted((join(base, name) for name in entries(folder) if name.endswith(".parquet")), key=shard_order)


def parquet_inputs(patterns: list[str] | tuple[str, ...]) -> list[str]:
    """The parquet files a command's inputs name: files, brace patterns, globs, or folders (their parquet files, as
    parquet_files lists them); each pattern's files in order, a pattern that names none an error."""
    files: list[str] = []
    for pattern in patterns:
        for url in expand(pattern):
            fs, path = fs_and_path(url)
            if fs.isdir(path):
                found = parquet_files(url)
            elif any(ch in path for ch in "*?["):
                found = [fs.unstrip_protocol(p) if "://" in url else p for p in sorted(fs.glob(path))]
            elif fs.exists(path):
                found = [absolute(url)]
            else:
                raise WitError(f"{url}: not found")
            if not found:
                raise WitError(f"{url}: no parquet files there")
            files += found
    return files


def read_folder(folder: str, required: tuple[str, ...] = (), columns: list[str] | None = None) -> pa.Table:
    """All parquet files of a folder, concatenated; a clear error names a file that lacks a required column."""
    files = parquet_files(folder)
    if not files:
        raise WitError(f"{folder}: holds no parquet files")
    tables = []
    for url in files:
        t = read_parquet(url, columns)
        lacking = [c for c in required if c not in t.column_names]
        if lacking:
            raise WitError(f"{url}: no column {lacking[0]!r} (columns: {', '.join(t.column_names)})")
        tables.append(t)
    return pa.concat_tables(tables, promote_options="permissive")


def shard_order(path: str) -> tuple:
    """Sort key of a shard-named file: by number ("100000" after "99999"), other names after, by name."""
    stem = path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    return (0, int(stem), path) if stem.isdigit() else (1, 0, path)
