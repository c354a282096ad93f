"""Balancing (MetaCLIP Algorithm 1): realised counts, statuses and reasons, the per-uid draw, the data card."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wit.filters.balance import BalanceConfig, draw, entry_probabilities, keep_probabilities, run
from wit.shards.schema import MATCHES, pair_uid
from wit.shards.storage import WitError


def write_matches(path, matched: list[list[int]], n_entries: int, start: int = 0, urls: bool = True) -> str:
    """A match file as `wit curate match` writes it (schema and metadata), for a generated pool."""
    uids = [pair_uid(f"http://img/{start + i}.jpg", f"caption {start + i}") for i in range(len(matched))]
    cols = {"uid": uids, "matched": pa.array(matched, pa.list_(pa.int32()))}
    schema = MATCHES
    if urls:
        cols |= {"url": [f"http://img/{start + i}.jpg" for i in range(len(matched))],
                 "caption": [f"caption {start + i}" for i in range(len(matched))]}
        schema = schema.append(pa.field("url", pa.string())).append(pa.field("caption", pa.string()))
    table = pa.table(cols, schema=schema.with_metadata(
        {"wit.queries": "nowhere.parquet", "wit.queries.version": "v-test", "wit.queries.entries": str(n_entries)}))
    pq.write_table(table, path)
    return str(path)


def test_realised_counts_within_binomial_bounds(tmp_path):
    t = 1000
    counts = [20_000, 5_000, 1_500, 1_000, 300, 1]  # head entries and tail entries
    matched = [[e] for e, c in enumerate(counts) for _ in range(c)]
    matched += [[] for _ in range(700)]
    path = write_matches(tmp_path / "m.parquet", matched, n_entries=len(counts) + 1)
    card = run(BalanceConfig(matches=(path,), out=str(tmp_path / "out"), t=t, seed=7, workers=1))
    sel = pq.read_table(tmp_path / "out" / "selection" / "m.parquet").to_pylist()
    after = np.zeros(len(counts), dtype=int)
    for row in sel:
        if row["status"] == "selected":
            after[row["matched"][0]] += 1
    for e, c in enumerate(counts):
        p = min(1.0, t / c)
        sd = math.sqrt(c * p * (1 - p))
        assert abs(after[e] - c * p) <= 5 * sd, (e, after[e], c * p)  # 5 sigma: a false alarm ~1 in 3 million
        if c <= t:
            assert after[e] == c  # the tail is kept whole
    assert after[0] != counts[0] and after[1] != counts[1]  # the head really was sampled down
    funnel = card["pairs"]
    assert funnel["rows"] == len(matched) == funnel["selected"] + funnel["no_query_match"] + funnel["not_selected"]
    assert funnel["no_query_match"] == 700
    entries = card["entries"]
    assert entries["entries_reaching_t"] == 4 and entries["entries_over_t"] == 3 and entries["entries_matched"] == 6
    assert entries["head_share_before"] == (20_000 + 5_000 + 1_500) / sum(counts)
    assert [e["before"] for e in card["top_entries"]] == counts
    assert [e["after"] for e in card["top_entries"]] == after.tolist()


def test_multi_entry_pairs_keep_probability(tmp_path):
    # 4,000 pairs match {0, 1}; entry 0 also has 16,000 pairs of its own, entry 1 has 6,000: c = 20,000 and 10,000.
    t = 2000
    matched = [[0, 1]] * 4000 + [[0]] * 16_000 + [[1]] * 6000
    path = write_matches(tmp_path / "m.parquet", matched, n_entries=2, urls=False)
    run(BalanceConfig(matches=(path,), out=str(tmp_path / "out"), t=t, seed=1, workers=1))
    sel = pq.read_table(tmp_path / "out" / "selection" / "m.parquet").to_pandas()
    both = sel[sel["matched"].map(len) == 2]
    q = 1 - (1 - 0.1) * (1 - 0.2)
    assert np.allclose(both["keep_prob"], q)
    kept = int((both["status"] == "selected").sum())
    assert abs(kept - 4000 * q) <= 5 * math.sqrt(4000 * q * (1 - q))
    assert not (tmp_path / "out" / "urls").exists()  # no url column: no URL list to write


def test_statuses_reasons_and_url_list(tmp_path):
    matched = [[0]] * 50 + [[]] * 10 + [[1]] * 3000
    path = write_matches(tmp_path / "m.parquet", matched, n_entries=2)
    run(BalanceConfig(matches=(path,), out=str(tmp_path / "out"), t=100, seed=0, workers=1))
    sel = pq.read_table(tmp_path / "out" / "selection" / "m.parquet").to_pandas()
    assert len(sel) == len(matched) and sel["uid"].is_unique  # no row silently dropped
    assert set(sel[sel["matched"].map(len) == 0]["reason"]) == {"no_query_match"}
    assert set(sel[sel["status"] == "dropped"]["reason"]) == {"no_query_match", "not_selected"}
    assert sel[sel["status"] == "selected"]["reason"].isna().all()
    assert ((sel["draw"] < sel["keep_prob"]) == (sel["status"] == "selected")).all()
    urls = pq.read_table(tmp_path / "out" / "urls" / "m.parquet")
    assert urls.column_names == ["uid", "url", "caption"]
    assert set(urls.column("uid").to_pylist()) == set(sel[sel["status"] == "selected"]["uid"])
    assert all(u.startswith("http://img/") for u in urls.column("url").to_pylist())


def test_draw_depends_on_seed_and_uid_only(tmp_path):
    uids = [pair_uid(f"u{i}", "c") for i in range(2000)]
    a = [draw(0, u) for u in uids]
    assert a == [draw(0, u) for u in uids]
    assert all(0.0 <= x < 1.0 for x in a)
    assert abs(np.mean(a) - 0.5) < 0.05  # roughly uniform
    b = [draw(1, u) for u in uids]
    assert sum(x != y for x, y in zip(a, b)) > 1990
    # a different seed selects a different set from the same pool
    matched = [[0]] * 3000
    path = write_matches(tmp_path / "m.parquet", matched, n_entries=1)
    sets = []
    for seed in (0, 0, 1):
        out = tmp_path / f"out{len(sets)}"
        run(BalanceConfig(matches=(path,), out=str(out), t=500, seed=seed, workers=1))
        s = pq.read_table(out / "selection" / "m.parquet").to_pandas()
        sets.append(set(s[s["status"] == "selected"]["uid"]))
    assert sets[0] == sets[1] and sets[0] != sets[2]


def test_data_card_files(tmp_path):
    matched = [[0]] * 300 + [[1, 2]] * 40 + [[2]] * 5
    path = write_matches(tmp_path / "m.parquet", matched, n_entries=4)
    run(BalanceConfig(matches=(path,), out=str(tmp_path / "out"), t=100, seed=0, workers=1))
    card = json.loads((tmp_path / "out" / "datacard.json").read_text())
    assert card["t"] == 100 and card["queries_version"] == "v-test"
    assert card["entries"]["entries"] == 4 and card["entries"]["entries_matched"] == 3
    counts = pq.read_table(tmp_path / "out" / "entry_counts.parquet").to_pydict()
    assert counts["before"] == [300, 40, 45, 0] and counts["entry"] == ["#0", "#1", "#2", "#3"]
    for name in card["plots"]:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mixed_query_versions_are_refused(tmp_path):
    import pytest

    from wit.shards.storage import WitError

    a = write_matches(tmp_path / "a.parquet", [[0]], n_entries=1)
    b = tmp_path / "b.parquet"
    t = pq.read_table(a)
    pq.write_table(t.replace_schema_metadata(t.schema.metadata | {b"wit.queries.version": b"other"}), b)
    with pytest.raises(WitError, match="match all files with one list"):
        run(BalanceConfig(matches=(a, str(b)), out=str(tmp_path / "out"), workers=1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), max_size=4, unique=True), min_size=1, max_size=20),
       st.lists(st.integers(0, 50), min_size=6, max_size=6), st.integers(1, 30))
def test_property_keep_probability(matched, counts, t):
    p = entry_probabilities(np.array(counts), t)
    got = keep_probabilities(pa.array(matched, pa.list_(pa.int32())), p)
    for row, ids in zip(got, matched):
        expected = 1 - math.prod(1 - p[e] for e in ids)
        assert row == np.float64(expected) or abs(row - expected) < 1e-12
        assert 0.0 <= row <= 1.0
        if any(p[e] == 1.0 for e in ids):
            assert row == 1.0  # a tail entry keeps the pair for sure
        if not ids:
            assert row == 0.0


def test_only_the_pool_is_counted_and_selected(tmp_path):
    # 300 pairs of entry 0: 100 failed to download, 100 more a filter dropped; t=50 must aim at the 100 left
    path = write_matches(tmp_path / "00000.parquet", [[0]] * 300, n_entries=1)
    table = pq.read_table(path)
    status = ["failed" if i < 100 else "ok" for i in range(300)]
    pq.write_table(table.append_column("status", pa.array(status)).replace_schema_metadata(table.schema.metadata),
                   path)
    uids = table["uid"].to_pylist()
    (tmp_path / "v").mkdir()
    pq.write_table(pa.table({"uid": uids, "keep": [i >= 200 for i in range(300)]}), tmp_path / "v" / "00000.parquet")
    card = run(BalanceConfig(matches=(path,), out=str(tmp_path / "out"), t=50, workers=1,
                             verdicts=(str(tmp_path / "v"),)))
    sel = pq.read_table(tmp_path / "out" / "selection" / "00000.parquet").to_pylist()
    assert {r["reason"] for r in sel[:200]} == {"not_in_pool"}
    assert card["top_entries"][0]["before"] == 100  # c_e counts the pool only
    chosen = sum(r["status"] == "selected" for r in sel)
    assert abs(chosen - 50) <= 5 * math.sqrt(100 * 0.5 * 0.5) and chosen < 100
    assert card["pairs"]["not_in_pool"] == 200
    with pytest.raises(WitError, match="no verdicts for"):
        run(BalanceConfig(matches=(path,), out=str(tmp_path / "out2"), t=50, workers=1,
                          verdicts=(str(tmp_path / "nowhere"),)))
