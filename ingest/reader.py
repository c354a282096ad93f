"""The crawl's reader: the rows of one shard, read from the plan by the worker that crawls it.

img2dataset's Reader loads each list whole in the driver and writes every shard to a temporary file before the
first is handed on. Here the driver hands on lanes of shard descriptions (`plan.ShardSpec`), and each worker reads
its shard's rows from the plan file that holds them: the row groups that hold them, a batch at a time. A plan file
holds about 65,536 rows (whole shards), so a remote plan file fetched whole (`tables.open_parquet`) is small.
"""
from __future__ import annotations

import pyarrow as pa

from wit.ingest.plan import ShardSpec
from wit.shards.tables import open_parquet


def shard_rows(spec: ShardSpec, columns: list[str]) -> pa.Table:
    """The shard's rows, `columns` in that order."""
    file = open_parquet(spec.source)
    end = spec.first_row + spec.rows
    groups, start = [], 0
    for g in range(file.metadata.num_row_groups):
        rows = file.metadata.row_group(g).num_rows
        if start < end and start + rows > spec.first_row:
            groups.append((g, start))
        start += rows
    held: list[pa.RecordBatch] = []
    for g, at in groups:
        for batch in file.iter_batches(batch_size=1 << 14, row_groups=[g], columns=columns):
            lo, hi = max(spec.first_row - at, 0), min(end - at, batch.num_rows)
            if hi > lo:
                held.append(batch.slice(lo, hi - lo))
            at += batch.num_rows
    return pa.Table.from_batches(held, schema=file.schema_arrow.empty_table().select(columns).schema)
