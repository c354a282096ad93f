"""Resharding a real crawl with verdicts and a selection, the index, resume, mismatches, and the audit report."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wit.shards.audit import AuditConfig, audit
from wit.shards.reshard import ReshardConfig, reshard
from wit.shards.storage import WitError
from tests.conftest import write_csv
from tests.ingest_helpers import FAST, manifests, tar_samples, wit


@pytest.fixture(scope="module")
def crawl(tmp_path_factory, real_images):
    """A real crawl of 40 pairs (4 broken) over a loopback server, into 5 shards."""
    from wit.ingest.loopback import LoopbackImageServer

    root = tmp_path_factory.mktemp("pipeline")
    names = sorted(real_images)
    with LoopbackImageServer(real_images) as server:
        rows = [(f"{server.url}/img/{names[i % len(names)]}", f"photo {i} of {names[i % len(names)]}") for i in range(36)]
        rows += [(f"{server.url}/404", f"gone {i}") for i in range(4)]
        r = wit("download", str(write_csv(root / "l.csv", rows)), "--out", str(root / "raw"),
                "--allow-net", "127.0.0.1/32", "--shard-size", "8", *FAST)
        assert r.returncode == 0, r.stderr
    return root


def _stage_outputs(root: Path) -> tuple[set[str], set[str]]:
    """A filter verdict (drop every 5th ok pair) and a selection (drop every 4th), both keyed by uid."""
    m = manifests(root / "raw")
    ok = [u for u, s in zip(m["uid"].to_pylist(), m["status"].to_pylist()) if s == "ok"]
    shutil.rmtree(root / "verdicts", ignore_errors=True)
    shutil.rmtree(root / "balance", ignore_errors=True)
    (root / "verdicts" / "images").mkdir(parents=True)
    (root / "balance" / "selection").mkdir(parents=True)
    uids = m["uid"].to_pylist()
    keep = [u in ok and i % 5 != 0 for i, u in enumerate(uids)]
    pq.write_table(pa.table({"uid": uids, "keep": keep,
                             "reason": [None if k else "too_small" for k in keep], "dup_of": [None] * len(uids)}),
                   root / "verdicts" / "images" / "00000.parquet")
    survivors = [u for u, k in zip(uids, keep) if k]
    chosen = [i % 4 != 0 for i in range(len(survivors))]
    pq.write_table(pa.table({"uid": survivors, "status": ["selected" if c else "dropped" for c in chosen],
                             "reason": [None if c else "not_selected" for c in chosen],
                             "matched": pa.array([[i % 3] for i in range(len(survivors))], pa.list_(pa.int32()))}),
                   root / "balance" / "selection" / "00000.parquet")
    return set(ok), {u for u, c in zip(survivors, chosen) if c}


def _cfg(root: Path, out: str, **kw) -> ReshardConfig:
    return ReshardConfig(raw=str(root / "raw"), out=out, verdicts=(str(root / "verdicts" / "images"),),
                         selection=str(root / "balance" / "selection"), shard_size=7, **kw)


def test_reshard_writes_the_selected_pairs_evenly_and_shuffled(crawl):
    ok, selected = _stage_outputs(crawl)
    summary = reshard(_cfg(crawl, str(crawl / "corpus"), workers=2))
    out = crawl / "corpus"
    index = json.loads((out / "index.json").read_text())
    assert index["total"] == len(selected) == summary["samples"]
    sizes = list(index["shards"].values())
    assert all(n == 7 for n in sizes[:-1]) and 1 <= sizes[-1] <= 7  # even, the last may be short
    samples = tar_samples(out)  # asserts no key twice
    assert {n: sum(1 for k in samples if k.startswith(n[:5] + "_")) for n in index["shards"]} == index["shards"]
    assert all("." not in k for k in samples)
    corpus = manifests(out)
    assert sorted(corpus["uid"].to_pylist()) == sorted(selected)  # every selected uid exactly once
    raw = {r["uid"]: r for r in manifests(crawl / "raw").to_pylist()}
    raw_images = tar_samples(crawl / "raw")
    for row in corpus.to_pylist():
        sample = samples[row["key"]]
        src = raw[row["uid"]]
        assert sample["jpg"] == raw_images[src["key"]]["jpg"]  # bytes copied, not re-encoded
        assert sample["txt"].decode() == src["caption"] == row["caption"]
        assert json.loads(sample["json"])["uid"] == row["uid"] and row["matched"] is not None
    first = [json.loads(samples[k]["json"])["src_shard"] for k in sorted(samples)[:7]]
    assert len(set(first)) > 1  # the first output shard draws from several crawled shards
    wids = json.loads((out / "wids.json").read_text())
    assert sum(s["nsamples"] for s in wids["shardlist"]) == index["total"]


def test_reshard_is_deterministic_and_resumes(crawl, tmp_path):
    _stage_outputs(crawl)
    a, b = tmp_path / "a", tmp_path / "b"
    reshard(_cfg(crawl, str(a), workers=1))
    reshard(_cfg(crawl, str(b), workers=2))
    for tar in sorted(a.glob("*.tar")):
        assert tar.read_bytes() == (b / tar.name).read_bytes()  # same bytes whatever the number of workers
    # the state a kill leaves: a shard without stats and a tar cut short
    (b / "00001_stats.json").unlink()
    (b / "00002.tar").write_bytes((b / "00002.tar").read_bytes()[:1000])
    summary = reshard(_cfg(crawl, str(b), workers=2))
    assert summary["written_now"] == 2
    for tar in sorted(a.glob("*.tar")):
        assert tar.read_bytes() == (b / tar.name).read_bytes()
    assert sorted(p.name for p in (b / "_wit").iterdir()) == ["plan.json"]  # the exchange and the plan removed


def test_reshard_to_s3(crawl, s3_bucket):
    import s3fs

    _, selected = _stage_outputs(crawl)
    summary = reshard(_cfg(crawl, f"{s3_bucket}/corpus"))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    index = json.loads(fs.cat(f"{s3_bucket}/corpus/index.json"))
    assert index["total"] == len(selected) == summary["samples"]
    with fs.open(f"{s3_bucket}/corpus/00000.tar", "rb") as f, tarfile.open(fileobj=f) as tar:
        assert len(tar.getnames()) == 3 * 7


def test_manifest_and_tar_disagreeing_is_a_clear_error(crawl, tmp_path):
    _stage_outputs(crawl)
    raw = tmp_path / "raw"
    shutil.copytree(crawl / "raw", raw)
    with tarfile.open(raw / "00001.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = members[0][0].name.split(".")[0]
    with tarfile.open(raw / "00001.tar", "w") as tar:
        for m, data in members:
            if not m.name.startswith(dropped + "."):
                tar.addfile(m, io.BytesIO(data))
    cfg = ReshardConfig(raw=str(raw), out=str(tmp_path / "c1"), shard_size=7)
    with pytest.raises(WitError, match=rf"00001.tar: sample {dropped} \(uid \w+\) listed in 00001.parquet is missing"):
        reshard(cfg)
    # the reverse: a sample in the tar that the manifest does not list as ok
    t = pq.read_table(crawl / "raw" / "00002.parquet")
    status = ["failed" if k == t["key"][0].as_py() else s for k, s in zip(t["key"].to_pylist(), t["status"].to_pylist())]
    pq.write_table(t.set_column(t.schema.get_field_index("status"), t.schema.field("status"), pa.array(status)),
                   raw / "00002.parquet")
    shutil.copy(crawl / "raw" / "00001.tar", raw / "00001.tar")
    with pytest.raises(WitError, match=r"00002.tar: sample \d+ is not an ok row of 00002.parquet"):
        reshard(ReshardConfig(raw=str(raw), out=str(tmp_path / "c2"), shard_size=7))


def test_audit_funnel_adds_up_and_report_renders(crawl):
    ok, selected = _stage_outputs(crawl)
    (crawl / "balance" / "datacard.json").write_text(json.dumps({"t": 8}))  # the t balance was run with
    reshard(_cfg(crawl, str(crawl / "corpus")))
    html_path = Path(audit(AuditConfig(root=str(crawl))))
    report = json.loads((crawl / "audit" / "report.json").read_text())
    sel = pq.read_table(crawl / "balance" / "selection").to_pylist()
    pool = Counter(e for r in sel for e in r["matched"])
    corpus = Counter(e for r in sel if r["status"] == "selected" for e in r["matched"])
    q = report["queries"]
    assert q["t"] == 8 and q["entries_reaching_t"] == sum(n >= 8 for n in pool.values())
    assert q["tail_share"] == sum(n for e, n in corpus.items() if pool[e] < 8) / sum(corpus.values())
    assert q["count_curves"]["after"][0] == [1, max(corpus.values())]  # the plotted series, in the JSON too
    assert sum(report["image_short_side_histogram"]["counts"]) == len(selected)
    assert "bottom entry" in html_path.read_text() and "entries reached it" in html_path.read_text()
    steps = report["funnel"]
    assert [s["stage"] for s in steps] == ["download", "images", "balance"]
    assert steps[0]["rows_in"] == 40 and steps[0]["dropped"] == {"http_404": 4}
    for s, nxt in zip(steps, steps[1:]):
        assert s["rows_in"] == s["kept"] + sum(s["dropped"].values()) and nxt["rows_in"] == s["kept"]
    assert steps[-1]["kept"] == len(selected) == report["corpus"]["samples"] and report["corpus"]["matches_funnel"]
    assert report["queries"]["entries_in_corpus"] == 3
    for img in ("funnel.png", "image_sizes.png", "query_counts.png"):
        assert f"src='{img}'" in html_path.read_text() and (crawl / "audit" / img).stat().st_size > 1000
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium to render the report (.ci/run installs it)")
    shot = crawl / "audit" / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={crawl / 'chrome-profile'}", f"--screenshot={shot}", "--window-size=1000,2400",
                    html_path.as_uri()], check=True, capture_output=True, timeout=120)
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert rgb.std() > 10  # not blank
    bars = (np.abs(rgb - [59, 125, 216]).sum(axis=2) < 40).mean()  # the funnel plot's blue bars
    assert bars > 0.01, "the funnel plot did not render (a broken image shows no bars)"
