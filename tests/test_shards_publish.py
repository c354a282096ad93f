"""`publish_shard` writes what `verify_shard` trusts, the stats (the done marker) last."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit.shards import fasttar
from wit.shards.schema import FAILED, MANIFEST, OK
from wit.shards.verify import publish_shard, verify_shard


def _shard(n_ok: int = 3, n_failed: int = 1) -> tuple[bytes, pa.Table]:
    keys = [f"00007{i:04d}" for i in range(n_ok + n_failed)]
    tar = fasttar.write_samples((k, {"jpg": b"\xff\xd8" + k.encode(), "txt": b"c"}) for k in keys[:n_ok])
    manifest = pa.Table.from_pylist([{"uid": f"u{i}", "status": OK if i < n_ok else FAILED, "shard": "00007",
                                      "key": k} for i, k in enumerate(keys)], schema=MANIFEST)
    return tar, manifest


def test_published_shard_verifies_with_the_callers_stats_kept(tmp_path):
    tar, manifest = _shard()
    publish_shard(str(tmp_path), "00007", tar, manifest, {"count": 4, "wit": {"reasons": {"http_404": 1}}})
    check = verify_shard(str(tmp_path), "00007")
    assert check.ok and check.samples == 3, check
    stats = json.loads((tmp_path / "00007_stats.json").read_text())
    assert stats["count"] == 4 and stats["wit"]["reasons"] == {"http_404": 1}
    assert (stats["wit"]["rows"], stats["wit"]["samples"], stats["wit"]["verified"]) == (4, 3, True)
    assert pq.read_table(tmp_path / "00007.parquet").equals(manifest)


def test_a_staged_tar_is_moved_into_place(tmp_path):
    tar, manifest = _shard()
    staged = tmp_path / "_wit" / "staging" / "00007.tar"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(tar)
    publish_shard(str(tmp_path), "00007", str(staged), manifest)
    assert not staged.exists() and (tmp_path / "00007.tar").read_bytes() == tar
    assert verify_shard(str(tmp_path), "00007").ok


def test_stats_come_last_so_a_failed_publish_is_never_trusted(tmp_path):
    tar, manifest = _shard()
    (tmp_path / "00007.parquet").mkdir()  # the manifest cannot be written: a folder holds its name
    with pytest.raises(OSError):
        publish_shard(str(tmp_path), "00007", tar, manifest)
    assert (tmp_path / "00007.tar").exists() and not (tmp_path / "00007_stats.json").exists()
    assert not verify_shard(str(tmp_path), "00007").ok
