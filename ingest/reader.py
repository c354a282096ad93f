"""The crawl's reader: img2dataset's Reader, with one row group and one shard of a list in memory at a time.

img2dataset's Reader loads each input file whole (`pq.read_table`) and writes all its shards before the first is
handed on, so the driver holds a whole list: an 18M-row list is a table of a few GB. This one cuts the same shards
(the same numbers, the same rows, the same columns) while it streams the file's row groups, and hands each shard to
the distributor as soon as it is written: it holds one row group (the normalised inputs are written 65,536 rows at a
time) and one shard, whatever the list's size. Its constructor is img2dataset's own.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from img2dataset.reader import Reader

from wit.shards.storage import fs_and_path


class StreamingReader(Reader):
    """Yields (shard number, arrow file) like img2dataset's Reader, over the normalised parquet inputs only."""

    def __iter__(self) -> Iterator[tuple[int, str]]:
        start = self.start_shard_id
        for path in self.input_files:
            with self.fs.open(path, "rb") as f:
                file = pq.ParquetFile(f)
                rows = file.metadata.num_rows
                for i, table in enumerate(shard_tables(file, self.number_sample_per_shard, self.column_list)):
                    if start + i not in self.done_shards:
                        yield start + i, self._write(start + i, table)
            start += math.ceil(rows / self.number_sample_per_shard)  # img2dataset numbers the next file's after

    def _write(self, number: int, table: pa.Table) -> str:
        url = f"{self.tmp_path}/{number}.feather"  # the name and format img2dataset's downloader reads
        fs, path = fs_and_path(url)
        with fs.open(path, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        return url


def shard_tables(file: pq.ParquetFile, rows: int, columns: list[str]) -> Iterator[pa.Table]:
    """The file's rows as consecutive tables of `rows` rows (the last one shorter), with `columns` in that order.

    Batches never span row groups, so they are joined and cut again; at most one shard and one batch are held."""
    held: list[pa.RecordBatch] = []
    n = 0
    for batch in file.iter_batches(batch_size=rows, columns=columns):
        held.append(batch)
        n += batch.num_rows
        while n >= rows:
            table = pa.Table.from_batches(held)
            yield table.slice(0, rows).select(columns)
            rest = table.slice(rows)
            held, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(held).select(columns)
