"""Read a folder of parquet files (manifests, verdicts, selections) as one arrow table, from any fsspec URL."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from shards.storage import WitError, fs_and_path


def parquet_files(folder: str) -> list[str]:
    """Shard-named parquet files in a folder (`00012.parquet`), sorted; not `_wit/` scratch."""
    fs, path = fs_and_path(folder)
    fs.invalidate_cache(path)
    if not fs.isdir(path):
        raise WitError(f"{folder}: no such folder")
    files = sorted(p for p in fs.glob(path.rstrip("/") + "/*.parquet"))
    return [fs.unstrip_protocol(p) if "://" in folder else p for p in files]


def read_folder(folder: str, required: tuple[str, ...] = (), columns: list[str] | None = None) -> pa.Table:
    """All parquet files of a folder, concatenated; a clear error names a file that lacks a required column."""
    files = parquet_files(folder)
    if not files:
        raise WitError(f"{folder}: holds no parquet files")
    tables = []
    for url in files:
        fs, path = fs_and_path(url)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=columns)
        lacking = [c for c in required if c not in t.column_names]
        if lacking:
            raise WitError(f"{url}: no column {lacking[0]!r} (columns: {', '.join(t.column_names)})")
        tables.append(t)
    return pa.concat_tables(tables, promote_options="permissive")
