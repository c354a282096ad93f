"""Lineage: `wit revoke --report` counts per checkpoint exactly the revoked samples the trainer's log says it read;
a run resumed over a rewritten corpus says so in one line and goes on over it; the audit shows the ledger."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ingest_helpers import manifests
from tests.revoke_helpers import write_crawl
from wit_trainer_data import jpeg
from wit.revoke import RevokeConfig, report, revoke
from wit.shards.audit import AuditConfig, audit
from wit.shards.reshard import ReshardConfig, reshard


def _train(root: Path, steps: int, *extra: str) -> int:
    from wit.trainer.train import main

    return main(["--data", str(root / "corpus" / "index.json"), "--out", str(root / "train"), "--batch-size", "4",
                 "--workers", "2", "--window", "3", "--warmup", "1", "--steps", str(steps), "--ckpt-every", "1",
                 "--keep", "0", "--log-every", "4", "--log-samples", "--no-tensorboard", *extra])


def _read_before(root: Path) -> dict[int, set[str]]:
    """Per checkpoint step S: the keys the log says steps 0..S-1 read."""
    last = {}
    for line in (root / "train" / "samples-rank0.jsonl").read_text().splitlines():
        r = json.loads(line)
        last[r["step"]] = r["keys"]  # a resumed run's record of a step replaces the one before it
    steps = sorted(int(p.stem[5:]) for p in (root / "train" / "checkpoints").glob("step_*.pt"))
    return {s: {k for step, keys in last.items() if step < s for k in keys} for s in steps}


def _brute_force(root: Path, revoked_keys: set[str]) -> dict[int, int]:
    """Per checkpoint: the distinct revoked samples among the keys its steps read."""
    return {s: len(keys & revoked_keys) for s, keys in _read_before(root).items()}


def _lineage_reads(root: Path, step: int) -> set[tuple[str, int]]:
    record = json.loads((root / "train" / "checkpoints" / "lineage" / f"step_{step:08d}.json").read_text())
    return {(e["name"], i) for e in record["shards"] for a, b in e["ranges"] for i in range(a, b)}


@pytest.mark.timeout(600)
def test_report_counts_match_the_samples_log_and_a_resume_over_the_rewritten_corpus_goes_on(tmp_path, monkeypatch,
                                                                                             capsys):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "project"
    pairs = [{"url": f"http://t.test/{i}.jpg", "caption": f"a photo of sample {i}",
              "image": jpeg(i, (64 + 8 * (i % 5), 48 + 4 * (i % 3)))} for i in range(30)]
    write_crawl(root / "raw", pairs, per_shard=10)
    reshard(ReshardConfig(raw=str(root / "raw"), out=str(root / "corpus"), shard_size=5, workers=1))
    assert _train(root, 12) == 0  # 30 samples, 7 steps an epoch, a checkpoint every step

    corpus = manifests(root / "corpus").to_pylist()
    revoked = [r for r in corpus if int(r["url"].rsplit("/", 1)[1][:-4]) % 7 == 3]  # 3, 10, 17, 24
    keys = {r["key"] for r in revoked}
    (tmp_path / "urls.txt").write_text("\n".join(r["url"] for r in revoked) + "\n")
    done = revoke(RevokeConfig(root=str(root), urls=str(tmp_path / "urls.txt"), reason="takedown", workers=1))
    assert done["samples_removed"] == 4

    rows = report(RevokeConfig(root=str(root), report=True))
    truth = _brute_force(root, keys)
    assert {r["step"]: r["revoked_seen"] for r in rows} == truth and sorted(truth) == list(range(1, 13))
    assert truth[12] == 4 and 0 < truth[4] < 4  # a partial epoch saw some, two epochs every one
    assert all(r["unknown_versions"] == 0 for r in rows)
    for step, read in _read_before(root).items():  # the lineage is exactly what the log says was read
        # (a corpus key is <shard>_<its place in the shard as resharded>, the tar's order)
        assert _lineage_reads(root, step) == {(k.split("_")[0], int(k.split("_")[1])) for k in read}, step

    capsys.readouterr()
    assert _train(root, 20, "--resume", "latest") == 0  # 26 samples now: 6 steps an epoch
    out = capsys.readouterr().out
    changed = [line for line in out.splitlines() if "the corpus changed since this checkpoint" in line]
    assert len(changed) == 1 and "samples" in changed[0] and "exact-once holds again from epoch 2" in changed[0]
    log = [json.loads(x) for x in (root / "train" / "samples-rank0.jsonl").read_text().splitlines()]
    after = [r for r in log if r["step"] >= 12]
    assert [r["step"] for r in after] == list(range(12, 20)) and not {k for r in after for k in r["keys"]} & keys
    epoch2 = [k for r in after if r["epoch"] == 2 for k in r["keys"]]
    assert len(epoch2) == len(set(epoch2)) == 24  # the re-planned epoch: exact once over the 26 samples left

    rows = report(RevokeConfig(root=str(root), report=True))
    assert {r["step"]: r["revoked_seen"] for r in rows} == _brute_force(root, keys)
    lineage = json.loads((root / "train" / "checkpoints" / "lineage" / "step_00000020.json").read_text())
    rewritten = {r["shard"] for r in revoked}
    names = [e["name"] for e in lineage["shards"]]
    assert all(names.count(n) == 2 for n in rewritten)  # read in both versions
    assert sorted(e[0] for e in lineage["corpus"]) == sorted({r["shard"] for r in corpus})

    report_file = audit(AuditConfig(root=str(root), gallery=0))
    audited = json.loads((Path(report_file).parent / "report.json").read_text())
    section = audited["revocations"]
    assert section["samples_removed"] == 4 and section["shards_rewritten"] == len(rewritten)
    assert [r["samples_removed"] for r in section["requests"]] == [4]
    assert {c["step"]: c["revoked_seen"] for c in section["checkpoints"]} == _brute_force(root, keys)
    assert section["checkpoints_affected"] == sum(1 for n in _brute_force(root, keys).values() if n)
    assert audited["funnel"][-1]["stage"] == "revoked" and audited["funnel"][-1]["dropped"] == {"revoked": 4}
    assert audited["corpus"]["matches_funnel"]
    assert "Revocations" in Path(report_file).read_text()
