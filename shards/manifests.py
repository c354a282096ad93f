"""One shard's parquet file (ingest manifest, filter verdict) by name, read and written whole, from any fsspec URL."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from wit.shards.storage import join, write_atomic
from wit.shards.tables import read_parquet


def read_shard_table(folder: str, name: str, columns: list[str] | None = None) -> pa.Table:
    return read_parquet(join(folder, f"{name}.parquet"), columns)


def write_table_atomic(url: str, table: pa.Table) -> None:
    """One parquet file, written whole under a temporary name and renamed."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_atomic(url, buf.getvalue())
