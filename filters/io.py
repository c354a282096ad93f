"""Small parquet/JSON helpers over shards.storage: parent folders are made, every write is atomic (parquet files
are written by `wit.shards.tables.write_parquet`)."""
from __future__ import annotations

import posixpath

import pyarrow as pa

from wit.shards.storage import fs_and_path, write_json_atomic
from wit.shards.tables import open_parquet, read_parquet


def make_parent(url: str) -> None:
    fs, path = fs_and_path(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)  # a no-op on object stores


def write_json(url: str, obj) -> None:
    make_parent(url)
    write_json_atomic(url, obj)


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    return read_parquet(url, columns)


def read_schema(url: str) -> pa.Schema:
    return open_parquet(url).schema_arrow
