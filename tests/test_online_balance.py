"""Online balancing end to end on a constructed corpus: `curate balance --online`, the corpus column, the loader's
per-epoch draw (binomial bounds per entry, the same draws for any ranks and workers and after a resume)."""
from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reshard_helpers import synthetic_crawl
from wit.filters.balance import BalanceConfig, run
from wit.shards import online
from wit.shards.reshard import ReshardConfig, reshard
from wit.shards.schema import MATCHES, pair_uid
from wit.shards.storage import WitError
from wit.trainer.data import ShardLoader

# Of every 16 crawled pairs, 10 match entry 0, 3 entry 1, 1 both, 1 entry 2 (the tail: fewer than t pairs), 1 none.
T = 200
PER_SHARD = 1050
PATTERN = [[0]] * 10 + [[1]] * 3 + [[0, 1], [2], []]


def entries_of(n: int) -> list[int]:
    return PATTERN[n % 16]


def tokenize(texts):
    return torch.zeros(len(texts), 4, dtype=torch.int64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A crawl of 3 shards, its match files, `curate balance --online`, and `shards write` of it: (corpus, balance)."""
    root = tmp_path_factory.mktemp("online")
    synthetic_crawl(root / "raw", shards=3, per_shard=PER_SHARD, payload=32)
    (root / "matches").mkdir()
    for s in range(3):
        m = pq.read_table(root / "raw" / f"{s:05d}.parquet")
        matched = [entries_of(s * PER_SHARD + i) for i in range(m.num_rows)]
        table = pa.table({"uid": m["uid"], "matched": pa.array(matched, pa.list_(pa.int32())), "status": m["status"]},
                         schema=MATCHES.append(pa.field("status", pa.string())).with_metadata(
                             {"wit.queries": "nowhere.parquet", "wit.queries.version": "v", "wit.queries.entries": "3"}))
        pq.write_table(table, root / "matches" / f"{s:05d}.parquet")
    matches = tuple(str(root / "matches" / f"{s:05d}.parquet") for s in range(3))
    card = run(BalanceConfig(matches=matches, out=str(root / "balance"), t=T, seed=5, workers=1, online=True))
    reshard(ReshardConfig(raw=str(root / "raw"), out=str(root / "corpus"), selection=str(root / "balance" / "selection"),
                          shard_size=500, workers=1))
    return root / "corpus", root / "balance", card


def test_balance_online_marks_every_matched_pool_pair_eligible_and_the_corpus_carries_keep_prob(corpus):
    out, balance, card = corpus
    sel = pq.read_table(balance / "selection").to_pandas()
    eligible = sel[sel["status"] == "eligible"]
    assert set(sel["status"]) == {"eligible", "dropped"}
    assert (eligible["matched"].map(len) > 0).all() and eligible["reason"].isna().all()
    assert set(sel[sel["status"] == "dropped"]["reason"]) == {"not_in_pool", "no_query_match"}
    assert card["pairs"]["eligible"] == len(eligible)
    c = np.array([e["before"] for e in card["top_entries"]])
    p = np.minimum(1, T / c)
    q = eligible["matched"].map(lambda m: 1 - np.prod([1 - p[e] for e in m]))
    assert np.allclose(eligible["keep_prob"], q) and (eligible["keep_prob"] < 1).sum() > 1000
    manifest = corpus_manifest(out).to_pandas()
    assert len(manifest) == len(eligible) == json.loads((out / "index.json").read_text())["total"]
    by_uid = eligible.set_index("uid")
    assert np.allclose(manifest["keep_prob"], by_uid.loc[manifest["uid"], "keep_prob"])
    assert [list(m) for m in manifest["matched"]] == [list(m) for m in by_uid.loc[manifest["uid"], "matched"]]


def corpus_manifest(out) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("*.parquet")))


def loader(out, **kw):
    kw = {"batch_size": 4, "image_size": 16, "tokenizer": tokenize, "workers": 0, "seed": 3, "window": 64,
          "online_balance": True, **kw}
    return ShardLoader(str(out / "index.json"), **kw)


def epoch_keys(ld: ShardLoader, epochs: int = 1, start: int = 0) -> list[list[str]]:
    """The keys each epoch's batches hold (in order), epochs start.. of one rank's loader."""
    steps = sum(ld.plan(e).steps for e in range(start, start + epochs))
    it, keys = iter(ld), [[] for _ in range(epochs)]
    for _ in range(steps):
        batch = next(it)
        keys[batch["epoch"] - start] += batch["keys"]
    return keys


def corpus_rows(out) -> dict[str, dict]:
    return {r["key"]: r for r in corpus_manifest(out).select(["key", "uid", "keep_prob", "matched"]).to_pylist()}


def kept_keys(out, seed: int, epoch: int) -> set[str]:
    rows = list(corpus_rows(out).values())
    k = online.kept(seed, epoch, [r["uid"] for r in rows], np.array([r["keep_prob"] for r in rows]))
    return {r["key"] for r, keep in zip(rows, k) if keep}


def test_kept_counts_per_entry_within_binomial_bounds_over_epochs(corpus, capsys):
    out, _, _ = corpus
    rows = corpus_rows(out)
    ld = loader(out, batch_size=1)  # one rank, batch 1: the epoch is all its kept samples, no tail
    per_epoch = epoch_keys(ld, epochs=4)
    expected, var = np.zeros(3), np.zeros(3)
    for r in rows.values():
        for e in r["matched"]:
            expected[e] += r["keep_prob"]
            var[e] += r["keep_prob"] * (1 - r["keep_prob"])
    for keys in per_epoch:
        assert len(keys) == len(set(keys))  # exact once over the epoch's draw
        got = np.zeros(3)
        for k in keys:
            for e in rows[k]["matched"]:
                got[e] += 1
        assert (np.abs(got - expected) <= 5 * np.sqrt(var) + 1e-9).all(), (got, expected)  # 5 sigma
        assert got[2] == expected[2] > 100  # the tail entry (p = 1) is kept whole every epoch
        assert got[0] < 400  # the head really is sampled down, not everything kept
    assert len({frozenset(k) for k in per_epoch}) == 4  # a new draw every epoch
    logged = [line for line in capsys.readouterr().out.splitlines() if "online balancing keeps" in line]
    assert [int(line.split("keeps ")[1].split(" of")[0].replace(",", "")) for line in logged] == \
        [len(k) for k in per_epoch]


def test_online_draws_identical_for_1_and_2_ranks_and_0_and_2_workers(corpus):
    out, _, _ = corpus
    for epoch in (0, 1):
        truth = kept_keys(out, 3, epoch)
        for world, workers in ((1, 0), (2, 0), (2, 2), (1, 2)):
            seen = collections.Counter()
            for rank in range(world):
                ld = loader(out, world=world, rank=rank, workers=workers)
                ld.load_state_dict({**ld.state_dict(), "epoch": epoch})
                seen.update(epoch_keys(ld, start=epoch)[0])
            assert max(seen.values()) == 1 and set(seen) <= truth, (world, workers)  # once, and only kept ones
            assert len(truth) - len(seen) < world * 4  # all of them but a tail shorter than one global batch


def test_online_resume_rebuilds_the_same_batches(corpus):
    out, _, _ = corpus
    kw = {"world": 2, "rank": 1, "workers": 2}
    full = loader(out, **kw)
    per_epoch = [full.plan(e).steps for e in range(3)]
    steps = per_epoch[0] + per_epoch[1] + 3  # into the third epoch
    it = iter(full)
    batches = [next(it)["keys"] for _ in range(steps)]
    assert len({len(b) for b in batches}) == 1 and len(set(per_epoch)) > 1  # epochs of their own kept counts
    for k in (5, per_epoch[0] + 1, per_epoch[0] + per_epoch[1] + 1):  # resumed in epochs 0, 1 and 2
        first = loader(out, **kw)
        it = iter(first)
        for _ in range(k):
            next(it)
        resumed = loader(out, **kw)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        it = iter(resumed)
        assert [next(it)["keys"] for _ in range(steps - k)] == batches[k:]
    with pytest.raises(WitError, match="online_balance"):
        loader(out, **{**kw, "online_balance": False}).load_state_dict(first.state_dict())


def test_report_counts_distinct_pairs_over_epochs_against_a_fixed_selection(corpus, capsys):
    out, _, _ = corpus
    urls = sorted(str(p) for p in out.glob("*.tar"))
    r = online.report(urls, seed=3, epochs=8)
    assert r["kept_per_epoch"] == [len(kept_keys(out, 3, e)) for e in range(8)]
    assert r["distinct_fixed"] == r["kept_per_epoch"][0]
    assert r["distinct_online"] == len(set().union(*(kept_keys(out, 3, e) for e in range(8))))
    assert r["distinct_online"] > 2 * r["distinct_fixed"]
    assert online.main([str(out / "index.json"), "--epochs", "8", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == r


def test_the_draw_is_uniform_and_independent_across_epochs_and_seeds():
    uids = [pair_uid(f"u{i}", "c") for i in range(20_000)]
    a, b, c = online.epoch_draws(0, 0, uids), online.epoch_draws(0, 1, uids), online.epoch_draws(1, 0, uids)
    assert (a == online.epoch_draws(0, 0, list(uids))).all() and ((a >= 0) & (a < 1)).all()
    assert np.histogram(a, bins=10, range=(0, 1))[0].min() > 1800  # each decile about 2000
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05 and abs(np.corrcoef(a, c)[0, 1]) < 0.05
    for bad in ("not-hex", None, "g" * 32):
        with pytest.raises(WitError, match="not a wit uid"):
            online.epoch_draws(0, 0, [uids[0], bad])


def test_a_fixed_corpus_under_online_balance_is_a_one_line_error(tmp_path):
    synthetic_crawl(tmp_path / "raw", shards=1, per_shard=20, payload=32)
    reshard(ReshardConfig(raw=str(tmp_path / "raw"), out=str(tmp_path / "corpus"), shard_size=50, workers=1))
    with pytest.raises(WitError, match=r"00000\.parquet: no column 'keep_prob'"):
        loader(tmp_path / "corpus")
    assert loader(tmp_path / "corpus", online_balance=False).steps_per_epoch == 4  # the fixed path as before


@pytest.mark.timeout(300)
def test_train_online_balance_stopped_and_resumed_sees_the_same_batches(tmp_path, monkeypatch, capsys):
    """`wit train --online-balance` in-process on real JPEGs: a run stopped at its checkpoint and resumed trains on the
    same samples as one run straight through (not the same losses: --steps sets the LR schedule); and only samples of
    each epoch's draw."""
    from wit.trainer.train import main
    from wit_trainer_data import write_shards

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    keys = write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [40, 30])
    probs = {k: (0.25, 0.6, 1.0)[i % 3] for i, k in enumerate(keys)}
    for s, n in enumerate([40, 30]):
        mine = keys[:40] if s == 0 else keys[40:]
        pq.write_table(pa.table({"uid": [pair_uid(k, "") for k in mine], "key": mine,
                                 "keep_prob": [probs[k] for k in mine]}), tmp_path / f"{s:05d}.parquet")
    (tmp_path / "index.json").write_text(json.dumps({"shards": {"00000.tar": 40, "00001.tar": 30}}))
    flags = ["--data", str(tmp_path / "index.json"), "--online-balance", "--batch-size", "4", "--workers", "2",
             "--window", "5", "--warmup", "1", "--log-every", "1", "--log-samples", "--no-tensorboard", "--seed", "2"]
    assert main([*flags, "--steps", "28", "--out", str(tmp_path / "full")]) == 0
    assert main([*flags, "--steps", "24", "--out", str(tmp_path / "cut"), "--ckpt", str(tmp_path / "ckpt")]) == 0
    assert main([*flags, "--steps", "28", "--out", str(tmp_path / "cut"), "--ckpt", str(tmp_path / "ckpt"),
                 "--resume", "latest"]) == 0
    full = [json.loads(x) for x in (tmp_path / "full" / "samples-rank0.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "samples-rank0.jsonl").read_text().splitlines()]
    assert [r["keys"] for r in cut] == [r["keys"] for r in full] and len(full) == 28
    assert full[24]["epoch"] == full[23]["epoch"] >= 2  # resumed inside the third epoch (10-12 steps each)
    epochs = {r["epoch"] for r in full}
    assert len(epochs) >= 2  # it crossed into a new epoch, and a new draw
    uid = {k: pair_uid(k, "") for k in keys}
    for e in epochs:
        seen = [k for r in full if r["epoch"] == e for k in r["keys"]]
        drawn = {k for k, keep in zip(keys, online.kept(2, e, [uid[k] for k in keys],
                                                          np.array([probs[k] for k in keys]))) if keep}
        assert len(seen) == len(set(seen)) and set(seen) <= drawn
    assert "online balancing keeps" in capsys.readouterr().out
