"""Match + balance end to end through the CLI: the selection does not depend on sharding, workers or engine."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit.shards.runner import run_map
from wit.shards.schema import pair_uid
from wit.cli import main

VOCAB = ["a", "dog", "cat", "red", "car", "on", "the", "beach", "New", "York", "hot", "sun", "man", "x1", "zq"]


def _pool(tmp_path, rows: int = 6000):
    """A generated pool (no data needed): captions of random words with punctuation, some empty or null."""
    rng = np.random.default_rng(3)
    # skewed word frequencies so some entries are far above t and others below
    weights = np.array([40, 20, 12, 8, 6, 5, 4, 3, 2, 2, 1, 1, 1, 1, 1], dtype=float)
    captions = []
    for i in range(rows):
        n = int(rng.integers(0, 7))
        words = rng.choice(VOCAB, size=n, p=weights / weights.sum())
        text = " ".join(words) + (rng.choice(["", ".", "!", " -"]) if n else "")
        captions.append(None if i % 97 == 0 else text)
    urls = [f"http://img.test/{i}.jpg" for i in range(rows)]
    uids = [pair_uid(u, c) for u, c in zip(urls, captions)]
    table = pa.table({"uid": uids, "url": urls, "caption": captions})
    one = tmp_path / "one"
    four = tmp_path / "four"
    one.mkdir()
    four.mkdir()
    pq.write_table(table, one / "pool.parquet")
    bounds = np.linspace(0, rows, 5).astype(int)
    for k in range(4):
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), four / f"part-{k}.parquet")
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(VOCAB + ["New York", "hot sun", "red car", "dog ."]) + "\n")
    return one, four, queries


def _selection(out) -> dict[str, tuple[str, str | None, tuple[int, ...]]]:
    rows = pq.read_table(out / "selection").to_pylist()
    return {r["uid"]: (r["status"], r["reason"], tuple(r["matched"])) for r in rows}


def test_selection_independent_of_shards_workers_and_engine(tmp_path):
    one, four, extra = _pool(tmp_path)
    q = str(tmp_path / "q.parquet")
    assert main(["queries", "build", "--out", q, "--extra", str(extra), "--unigrams", "none",
                 "--bigrams", "none", "--wordnet", "none"]) == 0
    runs = {"1 shard, 1 worker": (one, ["--workers", "1"]), "4 shards, 1 worker": (four, ["--workers", "1"]),
            "4 shards, 2 workers": (four, ["--workers", "2"])}
    try:
        import ray

        runs["4 shards, ray"] = (four, ["--engine", "ray", "--workers", "2"])
    except ImportError:
        pass
    results = {}
    try:
        for name, (src, engine) in runs.items():
            m = tmp_path / f"m-{len(results)}"
            b = tmp_path / f"b-{len(results)}"
            assert main(["curate", "match", str(src), "--queries", q, "--out", str(m), *engine]) == 0
            assert main(["curate", "balance", str(m), "--out", str(b), "--t", "300", "--seed", "5", *engine]) == 0
            results[name] = (_selection(b), json.loads((b / "datacard.json").read_text()))
    finally:
        if "4 shards, ray" in runs:
            import ray

            ray.shutdown()  # free the local Ray instance for the rest of the session
    first, card = results["1 shard, 1 worker"]
    statuses = [s for s, _, _ in first.values()]
    assert len(first) == 6000 and 500 < statuses.count("selected") < 5500  # balancing really sampled
    assert {r for _, r, _ in first.values()} == {None, "no_query_match", "not_selected"}
    for name, (sel, c) in results.items():
        assert sel == first, name
        assert c["entries"] == card["entries"] and c["pairs"] == card["pairs"], name
    if "4 shards, ray" not in results:
        pytest.skip("ray is not installed (pip install 'wit[ray]'): the local engines agree, ray was not run")


def _square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_runner_keeps_order_and_uses_workers():
    assert run_map(_square, range(7), workers=1) == [(x * x, os.getpid()) for x in range(7)]
    got = run_map(_square, range(20), workers=2)
    assert [v for v, _ in got] == [x * x for x in range(20)]
    assert os.getpid() not in {pid for _, pid in got}  # really ran in worker processes
    with pytest.raises(ValueError, match="unknown engine"):
        run_map(_square, [1], engine="spark")


def test_match_and_balance_on_s3(tmp_path, s3_bucket):
    """Inputs, match files and the selection all on a real S3 endpoint (moto server on 127.0.0.1)."""
    import s3fs

    _, four, extra = _pool(tmp_path, rows=800)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for f in sorted(four.iterdir()):
        fs.put(str(f), f"{s3_bucket}/pool/{f.name}")
    q = f"{s3_bucket}/queries.parquet"
    assert main(["queries", "build", "--out", q, "--extra", str(extra), "--unigrams", "none",
                 "--bigrams", "none", "--wordnet", "none"]) == 0
    assert main(["curate", "match", f"{s3_bucket}/pool/part-{{0..3}}.parquet", "--queries", q,
                 "--out", f"{s3_bucket}/m", "--workers", "1"]) == 0
    assert main(["curate", "balance", f"{s3_bucket}/m", "--out", f"{s3_bucket}/b", "--t", "50", "--workers", "1"]) == 0
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{s3_bucket}/b/selection"))
    assert names == ["00000.parquet", "00001.parquet", "00002.parquet", "00003.parquet"]
    card = json.loads(fs.cat(f"{s3_bucket}/b/datacard.json"))
    assert card["pairs"]["rows"] == 800 and fs.exists(f"{s3_bucket}/b/counts.png")
    assert not [p for p in fs.find(s3_bucket) if ".tmp" in p]  # no temporary leftovers


def test_balance_a_url_list_before_download_then_crawl_the_selection(tmp_path, image_server, real_images):
    # MetaCLIP's order: balance the text pool, then fetch only the selection. The pool is a plain CSV URL list.
    from tests.conftest import write_csv
    from tests.ingest_helpers import FAST, manifests, wit

    names = sorted(real_images)[:12]
    # 30 dog pairs at t = 10: the uids hold the server's port, so the draw differs per run, and none or all of them
    # selected must be out of reach ((2/3)^30 = 5e-6; with 10 pairs at t = 4 it was 0.6^10 = 0.6%)
    rows = [(f"{image_server.url}/img/{names[i % 10]}", f"a dog photo {i}") for i in range(30)]
    rows += [(f"{image_server.url}/img/{n}", f"a cat photo {i}") for i, n in enumerate(names[10:12])]
    pool = write_csv(tmp_path / "pool.csv", rows)
    (tmp_path / "q.txt").write_text("dog\ncat\n")
    q = str(tmp_path / "q.parquet")
    assert main(["queries", "build", "--out", q, "--extra", str(tmp_path / "q.txt"), "--unigrams", "none",
                 "--bigrams", "none", "--wordnet", "none"]) == 0
    assert main(["curate", "match", str(pool), "--queries", q, "--out", str(tmp_path / "m"), "--workers", "1"]) == 0
    assert main(["curate", "balance", str(tmp_path / "m"), "--out", str(tmp_path / "b"), "--t", "10",
                 "--workers", "1"]) == 0
    chosen = pq.read_table(tmp_path / "b" / "urls").to_pylist()
    captions = [r["caption"] for r in chosen]
    assert sum("cat" in c for c in captions) == 2  # the tail entry whole
    assert 0 < sum("dog" in c for c in captions) < 30  # the head entry sampled down
    r = wit("download", str(tmp_path / "b" / "urls"), "--out", str(tmp_path / "raw"), "--allow-net", "127.0.0.1/32",
            *FAST)
    assert r.returncode == 0, r.stderr
    crawled = manifests(tmp_path / "raw").to_pylist()
    assert sorted(x["uid"] for x in crawled) == sorted(x["uid"] for x in chosen)  # the same uids through the crawl
    assert all(x["status"] == "ok" for x in crawled)
