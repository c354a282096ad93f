"""Never again: a crawl (`wit download`, and `wit pipeline`'s download stage) never requests a revoked URL or a URL
on a revoked domain, and `wit curate balance` never selects a revoked pair."""
from __future__ import annotations

import pyarrow.parquet as pq

from tests.conftest import write_csv
from tests.ingest_helpers import FAST, manifests, wit
from tests.test_curate_balance import write_matches
from wit.filters.balance import BalanceConfig, run
from wit.shards.schema import pair_uid


def _requested(server) -> set[str]:
    return {p for p in server.requests if p.startswith("/img/")}


def test_a_crawl_never_requests_a_revoked_url_or_a_url_on_a_revoked_domain(image_server, tmp_path):
    names = sorted(image_server.images)[:6]
    rows = [(f"{image_server.url}/img/{n}", f"photo {n}") for n in names[:4]]
    rows += [(f"http://localhost:{image_server.port}/img/{n}", f"local photo {n}") for n in names[4:]]
    lists = write_csv(tmp_path / "list.csv", rows)
    (tmp_path / "urls.txt").write_text(rows[1][0] + "\n")
    (tmp_path / "hosts.txt").write_text("LOCALHOST\n")
    revoked = {f"/img/{names[i]}" for i in (1, 4, 5)}

    # a crawl's own folder: `wit revoke OUT` before (or after) `wit download --out OUT`
    out = tmp_path / "crawl"
    r = wit("revoke", str(out), "--urls", str(tmp_path / "urls.txt"), "--domains", str(tmp_path / "hosts.txt"),
            "--reason", "site owner asked")
    assert r.returncode == 0, r.stderr
    r = wit("download", str(lists), "--out", str(out), "--allow-net", "127.0.0.1/32", *FAST)
    assert r.returncode == 0, r.stderr
    assert _requested(image_server) == {f"/img/{n}" for n in names} - revoked
    m = {row["url"]: row for row in manifests(out).to_pylist()}
    assert {u for u, row in m.items() if row["reason"] == "revoked"} == {rows[i][0] for i in (1, 4, 5)}
    assert all(m[rows[i][0]]["status"] == "failed" for i in (1, 4, 5))
    assert all(m[rows[i][0]]["status"] == "ok" for i in (0, 2, 3))

    # a pipeline's root: its download stage reads the ledger of the pipeline's out
    image_server.requests.clear()
    root = tmp_path / "project"
    r = wit("revoke", str(root), "--urls", str(tmp_path / "urls.txt"), "--domains", str(tmp_path / "hosts.txt"),
            "--reason", "site owner asked")
    assert r.returncode == 0, r.stderr
    config = tmp_path / "pipeline.toml"
    config.write_text(f'[pipeline]\nlists = ["{lists}"]\nout = "{root}"\nstages = ["download"]\n\n'
                      '[download]\nallow_net = ["127.0.0.1/32"]\ntimeout = 2\nprocesses = 2\nthreads = 8\n'
                      'progress = false\n')
    r = wit("pipeline", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _requested(image_server) == {f"/img/{n}" for n in names} - revoked
    assert sorted(row["reason"] for row in manifests(root / "raw").to_pylist() if row["reason"]) == ["revoked"] * 3


def test_balance_never_selects_a_revoked_pair(tmp_path):
    matches = tmp_path / "project" / "matches"
    matches.mkdir(parents=True)
    path = write_matches(matches / "00000.parquet", [[0]] * 8 + [[1]] * 4, n_entries=2)  # the tail: all selected
    (tmp_path / "uids.txt").write_text(pair_uid("http://img/2.jpg", "caption 2") + "\n")
    (tmp_path / "urls.txt").write_text("http://img/9.jpg\n")
    r = wit("revoke", str(tmp_path / "project"), "--uids", str(tmp_path / "uids.txt"), "--urls",
            str(tmp_path / "urls.txt"), "--reason", "takedown")
    assert r.returncode == 0, r.stderr
    card = run(BalanceConfig(matches=(path,), out=str(tmp_path / "project" / "balance"), t=1000, workers=1))
    selection = pq.read_table(tmp_path / "project" / "balance" / "selection" / "00000.parquet").to_pylist()
    assert [(i, s["status"], s["reason"]) for i, s in enumerate(selection) if s["status"] != "selected"] == [
        (2, "dropped", "revoked"), (9, "dropped", "revoked")]
    urls = pq.read_table(tmp_path / "project" / "balance" / "urls" / "00000.parquet")["url"].to_pylist()
    assert "http://img/2.jpg" not in urls and "http://img/9.jpg" not in urls and len(urls) == 10
    assert card["pairs"]["revoked"] == 2 and card["pairs"]["selected"] == 10
    # counted out of the pool too: entry 1 matched 4 pairs, one of them revoked
    assert {e["id"]: e["before"] for e in card["top_entries"]} == {0: 7, 1: 3}
