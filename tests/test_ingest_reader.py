"""The crawl's reader cuts the shards img2dataset's Reader cuts (numbers, rows, columns), skipping the finished ones,
while it holds one row group and one shard of a list rather than the whole list."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from img2dataset.reader import Reader

from wit.ingest.engine import CARRIED_COLUMNS
from wit.ingest.reader import StreamingReader, shard_tables
from wit.shards.schema import INPUT
from wit.shards.tables import write_parquet_stream


def write_input(path, rows: int, first: int, batch: int, caption_words: int = 3) -> None:
    """A normalised input as `wit download` writes it: INPUT's columns, one row group per batch of `batch` rows."""
    def batches():
        for start in range(first, first + rows, batch):
            ids = range(start, min(first + rows, start + batch))
            yield pa.RecordBatch.from_pydict({
                "uid": [f"{i:032x}" for i in ids], "url": [f"http://127.0.0.1:9/{i}.jpg" for i in ids],
                "caption": [f"photo {i} " * caption_words for i in ids], "source_file": ["list.csv"] * len(ids),
                "source_row": list(ids), "invalid": ["bad_url" if i % 7 == 3 else None for i in ids]}, schema=INPUT)

    assert write_parquet_stream(str(path), INPUT, batches()) == rows


def shards(reader) -> list[tuple[int, list[str], list[dict]]]:
    out = []
    for number, arrow_file in reader:
        with pa.memory_map(arrow_file) as f:
            table = pa.ipc.open_file(f).read_all()
        out.append((number, table.column_names, table.to_pylist()))
    return out


def test_shards_are_img2datasets_numbers_rows_and_columns_and_finished_ones_are_skipped(tmp_path):
    inputs = tmp_path / "input"
    # row groups of 300 rows, so that shards of 256 straddle them; two lists, the second with a short last shard
    write_input(inputs / "00000.parquet", 2_345, 0, 300)
    write_input(inputs / "00001.parquet", 1_000, 10_000, 300)
    done = {4, 12, 13}  # finished shards of an earlier run, in both lists
    args = (str(inputs), "parquet", "url", "caption", None, None, CARRIED_COLUMNS, 256, done)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    theirs = shards(Reader(*args, str(tmp_path / "a"), 3))
    ours = shards(StreamingReader(*args, str(tmp_path / "b"), 3))
    # 10 shards (3..12) from the first list, 4 (13..16) from the second, less the finished ones
    assert [n for n, _, _ in ours] == [3, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16]
    assert ours == theirs
    assert len(ours[-1][2]) == 1_000 - 3 * 256


def test_a_list_is_held_one_row_group_and_one_shard_at_a_time(tmp_path):
    write_input(tmp_path / "00000.parquet", 200_000, 0, 65_536, caption_words=40)
    whole = pq.read_table(tmp_path / "00000.parquet").nbytes  # what img2dataset's Reader holds: ~130 MB
    file = pq.ParquetFile(tmp_path / "00000.parquet")
    base, held, total = pa.total_allocated_bytes(), 0, 0
    for table in shard_tables(file, 1_000, ["caption", "url"]):
        held = max(held, pa.total_allocated_bytes() - base)
        total += table.num_rows
        assert table.column_names == ["caption", "url"]
    assert total == 200_000
    assert held < whole / 4, (held, whole)  # one 65,536-row group (~21 MB) and a shard, not the list
