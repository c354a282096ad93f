"""`write_parquet` (whole or streamed) is whole-or-nothing, locally (the folder made) and on S3; shard files are
listed in number order."""
from __future__ import annotations

import pyarrow as pa

from wit.shards.tables import parquet_files, read_parquet, write_parquet, write_parquet_stream


def test_write_parquet_makes_the_folder_and_leaves_no_temporary_file(tmp_path):
    table = pa.table({"uid": ["a", "b"], "n": [1, 2]})
    url = str(tmp_path / "verdicts" / "images" / "00000.parquet")
    write_parquet(url, table)
    assert read_parquet(url).equals(table)
    assert [p.name for p in (tmp_path / "verdicts" / "images").iterdir()] == ["00000.parquet"]


def test_write_parquet_on_s3(s3_bucket):
    table = pa.table({"uid": ["a"], "keep": [True]})
    write_parquet(f"{s3_bucket}/v/00000.parquet", table)
    assert read_parquet(f"{s3_bucket}/v/00000.parquet").equals(table)


def test_write_parquet_stream_writes_every_batch_and_nothing_on_failure(tmp_path, s3_bucket):
    table = pa.table({"uid": ["a", "b", "c"], "n": [1, 2, 3]})
    for url in (str(tmp_path / "todo" / "00000.parquet"), f"{s3_bucket}/todo/00000.parquet"):
        assert write_parquet_stream(url, table.schema, table.to_batches(max_chunksize=1)) == 3
        assert read_parquet(url).equals(table)
    assert [p.name for p in (tmp_path / "todo").iterdir()] == ["00000.parquet"]

    def broken():
        yield table.to_batches()[0]
        raise OSError("the query failed")

    try:
        write_parquet_stream(str(tmp_path / "half" / "00000.parquet"), table.schema, broken())
    except OSError:
        pass
    assert list((tmp_path / "half").iterdir()) == []  # no file, and no temporary, that a later run could trust


def test_shard_files_are_listed_by_number_past_99999(tmp_path):
    for name in ("99999", "100000", "00007"):
        write_parquet(str(tmp_path / f"{name}.parquet"), pa.table({"n": [1]}))
    assert [p.rsplit("/", 1)[-1] for p in parquet_files(str(tmp_path))] == ["00007.parquet", "99999.parquet",
                                                                            "100000.parquet"]
