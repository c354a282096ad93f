"""The reshard as a shuffle: engine vs local bytes, a kill in the middle of the exchange, bounded intermediate
files, inputs on s3://, and one-line errors for broken inputs."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit.shards.reshard import ReshardConfig, reshard
from wit.shards.storage import WitError
from tests.ingest_helpers import REPO, manifests, tar_samples
from tests.reshard_helpers import synthetic_crawl


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder but the run's own `_wit/` notes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[str]]:
    """12 crawled shards of 60 rows (1 in 7 failed), a verdict dropping 1 in 5, a selection dropping 1 in 4 and
    naming 3 uids the crawl does not have."""
    root = tmp_path_factory.mktemp("pool")
    uids = synthetic_crawl(root / "raw", shards=12, per_shard=60)
    (root / "verdicts").mkdir()
    (root / "selection").mkdir()
    pq.write_table(pa.table({"uid": uids, "keep": [i % 5 != 0 for i in range(len(uids))]}),
                   root / "verdicts" / "00000.parquet")
    strangers = [f"{i:032x}" for i in range(3)]
    everyone = uids + strangers
    pq.write_table(pa.table({"uid": everyone, "status": ["dropped" if i % 4 == 0 else "selected"
                                                        for i in range(len(everyone))],
                             "matched": pa.array([[i % 9] for i in range(len(everyone))], pa.list_(pa.int32()))}),
                   root / "selection" / "00000.parquet")
    selected = [u for i, u in enumerate(uids) if i % 5 != 0 and i % 4 != 0]
    return root, selected


def _cfg(root: Path, out: Path | str, **kw) -> ReshardConfig:
    return ReshardConfig(raw=str(root / "raw"), out=str(out), verdicts=(str(root / "verdicts"),),
                         selection=str(root / "selection"), shard_size=kw.pop("shard_size", 9), seed=5, **kw)


def test_the_ray_engine_writes_the_same_bytes_as_the_local_exchange(pool, tmp_path):
    root, selected = pool
    local = reshard(_cfg(root, tmp_path / "local", workers=2))
    engine = reshard(_cfg(root, tmp_path / "ray", engine="ray", workers=2))
    assert local["samples"] == engine["samples"] == len(selected)
    a, b = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert len(a) == 3 * local["shards"] + 2 and a.keys() == b.keys()  # tar, manifest, stats per shard + 2 indexes
    assert [n for n in a if a[n] != b[n]] == []  # tars, manifests, stats, index.json, wids.json: byte for byte
    assert sorted(manifests(tmp_path / "ray")["uid"].to_pylist()) == sorted(selected)


def test_unknown_selected_uids_are_counted_in_the_summary_and_on_stderr(pool, tmp_path, capsys):
    root, _ = pool
    summary = reshard(_cfg(root, tmp_path / "c", workers=1))
    assert summary["selected_not_in_crawl"] == 3
    assert "3 selected uids are not ok in" in capsys.readouterr().err


def test_intermediate_files_grow_with_shards_not_samples(pool, tmp_path):
    root, selected = pool
    crawled = 12
    for groups in (None, 2):
        summary = reshard(_cfg(root, tmp_path / f"k{groups}", workers=1, shard_size=3, groups=groups))
        outputs = summary["shards"]
        k = groups or math.isqrt(outputs - 1) + 1
        assert outputs == math.ceil(len(selected) / 3) and k < outputs
        # at most K group files and one done marker per crawled shard, however many output shards there are
        assert 0 < summary["exchange_files"] <= crawled * (k + 1) + 1  # + the stamp naming the plan
        # one bucket per (crawled, output) pair, as before, would have been many more
        pairs = {(json.loads(s["json"])["src_shard"], key[:5]) for key, s in tar_samples(tmp_path / f"k{groups}").items()}
        assert len(pairs) > 2 * crawled * (k + 1)
        assert summary["intermediate_files"] == summary["exchange_files"] + crawled * 2 + outputs  # + ranked, plan
        assert sorted(p.name for p in (tmp_path / f"k{groups}" / "_wit").iterdir()) == ["plan.json"]


def test_output_names_have_one_width_that_sorts_as_numbers_past_99999_shards():
    from wit.shards.reshard_plan import name_width

    for shards in (1, 100_000, 100_001, 2_500_000):
        names = [f"{n:0{name_width(shards - 1)}d}" for n in (0, 9, 10, 99_999, 100_000, shards - 1) if n < shards]
        assert sorted(names) == names and len({len(n) for n in names}) == 1
    assert name_width(0) == 5 and name_width(99_999) == 5 and name_width(100_000) == 6  # img2dataset's 5 as before


def test_a_kill_in_the_middle_of_the_exchange_then_a_rerun_finishes_exactly(tmp_path):
    raw = tmp_path / "raw"
    uids = synthetic_crawl(raw, shards=40, per_shard=150, payload=512)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wit", "shards", "write", "--raw", str(raw), "--out", str(out),
           "--shard-size", "25", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    markers = out / "_wit" / "exchange" / "_done"
    deadline = time.monotonic() + 600
    while not (markers.is_dir() and any(markers.iterdir())):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the exchange never started"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the process group: the command and its pool workers
    proc.wait(timeout=60)
    assert not (out / "index.json").exists()  # killed mid-way, not after
    finished_before = len(list(markers.iterdir()))
    assert 0 < finished_before < 40

    summary = reshard(ReshardConfig(raw=str(raw), out=str(out), shard_size=25, workers=2))
    samples = tar_samples(out)  # asserts that no key appears twice
    corpus = manifests(out)
    assert sorted(corpus["uid"].to_pylist()) == sorted(uids) and summary["samples"] == len(uids)
    assert sorted(samples) == sorted(corpus["key"].to_pylist())
    clean = tmp_path / "clean"
    reshard(ReshardConfig(raw=str(raw), out=str(clean), shard_size=25, workers=1))
    assert _outputs(out) == _outputs(clean)  # exactly what an uninterrupted run writes


def test_inputs_and_output_on_s3(pool, tmp_path, s3_bucket):
    import s3fs

    root, selected = pool
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for part in ("raw", "verdicts", "selection"):
        fs.put(str(root / part) + "/", f"{s3_bucket}/in/{part}/", recursive=True)
    cfg = ReshardConfig(raw=f"{s3_bucket}/in/raw", out=f"{s3_bucket}/corpus", verdicts=(f"{s3_bucket}/in/verdicts",),
                        selection=f"{s3_bucket}/in/selection", shard_size=9, seed=5, workers=2)
    summary = reshard(cfg)
    assert summary["samples"] == len(selected)
    reshard(_cfg(root, tmp_path / "local", workers=1))
    local = _outputs(tmp_path / "local")
    remote = {p.rsplit("/", 1)[-1]: fs.cat(p) for p in fs.find(f"{s3_bucket}/corpus") if "/_wit/" not in p}
    assert remote == local
    assert fs.find(f"{s3_bucket}/corpus/_wit") == [f"{s3_bucket[5:]}/corpus/_wit/plan.json"]


def _broken_copy(root: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in (root / "raw").iterdir():
        (raw / p.name).write_bytes(p.read_bytes())
    return raw


def test_a_broken_manifest_or_a_missing_tar_is_one_line_naming_the_file(pool, tmp_path):
    root, _ = pool
    raw = _broken_copy(root, tmp_path)
    cfg = ReshardConfig(raw=str(raw), out=str(tmp_path / "out"), shard_size=9, workers=1)

    (raw / "00003.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(WitError, match=r"00003\.parquet: not a readable parquet") as err:
        reshard(cfg)
    assert "\n" not in str(err.value)

    (raw / "00003.parquet").write_bytes((root / "raw" / "00003.parquet").read_bytes())
    t = pq.read_table(raw / "00004.parquet")
    pq.write_table(t.set_column(t.schema.get_field_index("width"), "width", t["width"].cast(pa.string())),
                   raw / "00004.parquet")
    with pytest.raises(WitError, match=r"00004\.parquet: column 'width' is string, the manifest schema has int32"):
        reshard(cfg)

    (raw / "00004.parquet").write_bytes((root / "raw" / "00004.parquet").read_bytes())
    (raw / "00005.tar").unlink()
    with pytest.raises(WitError, match=r"00005\.tar: missing \(its manifest lists ok samples\)"):
        reshard(cfg)
    assert not (tmp_path / "out" / "index.json").exists()


def test_sample_json_is_json_dumps_of_the_row_byte_for_byte():
    from wit.shards.reshard_samples import sample_json

    t = pa.table({"uid": ["a", None, 'é"\\\n\u2028😀'], "width": pa.array([1, None, -3], pa.int32()),
                  "matched": pa.array([[1, 2], None, []], pa.list_(pa.int32())), "sha256": pa.array([None, None, "x"])})
    assert sample_json(t) == [json.dumps(r) for r in t.to_pylist()]


def _sigint_ignored(_) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_the_reshards_own_pool_leaves_ctrl_c_to_the_driver(tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the reshard's pool workers ignore it, as the runner's
    do, so the user reads the driver's one line and not a KeyboardInterrupt traceback per worker."""
    from wit.shards.reshard import _mapper

    cfg = ReshardConfig(raw=str(tmp_path / "raw"), out=str(tmp_path / "out"), verdicts=(), selection=None,
                        workers=2)
    with _mapper(cfg) as map_:
        assert map_(_sigint_ignored, [0, 1, 2, 3]) == [True] * 4
