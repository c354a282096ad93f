"""`write_parquet` is whole-or-nothing, locally (the folder made) and on S3."""
from __future__ import annotations

import pyarrow as pa

from wit.shards.tables import read_parquet, write_parquet


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
