"""A real crawl of a loopback server over real images, with every fault route: statuses, shards, manifests."""
from __future__ import annotations

import io
import json

from PIL import Image

from tests.conftest import write_csv
from tests.ingest_helpers import FAST, manifests, tar_samples, wit

FAULTS = {
    "/404": "http_404",
    "/500": "http_500",
    "/slow/{img}": "timeout",
    "/endless": "too_large",
    "/reset": "connection_reset",
    "/corrupt.jpg": "decode_error",
    "/page.html": "unsupported_format",  # not an image format whose header was read: no decoder runs
    "/bomb.jpg": "decompression_bomb",
    "/loop": "redirect_loop",
    "/noai/{img}": "robots_optout",
}


def test_crawl_records_every_row_with_its_verdict(tmp_path, image_server, real_images):
    names = sorted(real_images)[:20]
    good = [(f"{image_server.url}/img/{n}", f"a photo number {i}") for i, n in enumerate(names)]
    faults = [(image_server.url + route.format(img=names[0]), f"fault {route}") for route in FAULTS]
    invalid = [("not a url", "bad url"), ("ftp://127.0.0.1/a.jpg", "other scheme")]
    lst = write_csv(tmp_path / "list.csv", good + faults + invalid)
    out = tmp_path / "out"

    # the endless route stops after 8 s, so the cap (not the server) must be what ends the download
    r = wit("download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", "--shard-size", "8",
            "--max-bytes", "2000000", *FAST)
    assert r.returncode == 0, r.stderr
    rows = len(good) + len(FAULTS) + len(invalid)
    assert f"rows          {rows}\n" in r.stdout and f"ok            {len(good)}\n" in r.stdout, r.stdout

    m = manifests(out).to_pylist()
    assert len(m) == len(good) + len(faults) + len(invalid)  # the funnel adds up to the input
    by_caption = {row["caption"]: row for row in m}
    for route, reason in FAULTS.items():
        row = by_caption[f"fault {route}"]
        assert (row["status"], row["reason"]) == ("failed", reason), (route, row["detail"])
    assert by_caption["bad url"]["reason"] == by_caption["other scheme"]["reason"] == "invalid_url"
    assert sorted(row["source_row"] for row in m) == list(range(len(m)))

    samples = tar_samples(out)
    ok_rows = [row for row in m if row["status"] == "ok"]
    assert len(ok_rows) == len(good)
    assert set(samples) == {row["key"] for row in ok_rows}  # the tars hold exactly the good rows
    for row in ok_rows:
        sample = samples[row["key"]]
        assert "." not in row["key"]
        assert sample["txt"].decode() == row["caption"]
        meta = json.loads(sample["json"])
        assert meta["uid"] == row["uid"] and meta["url"] == row["url"]
        img = Image.open(io.BytesIO(sample["jpg"]))
        assert min(img.size) == 256 and img.size == (row["width"], row["height"])
        assert row["sha256"] and len(row["sha256"]) == 64
        orig = Image.open(io.BytesIO(real_images[row["url"].rsplit("/", 1)[-1]]))
        assert (row["original_width"], row["original_height"]) == orig.size

    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["wit"]["verified"] and stats["wit"]["rows"] == 8
    summary = json.loads((out / "_wit" / "summary.json").read_text())
    assert summary["rows"] == rows and summary["ok"] == len(good)
    assert summary["failures_by_reason"]["decode_error"] == 1


def test_uid_is_stable_across_runs_and_lists(tmp_path, image_server, real_images):
    name = sorted(real_images)[0]
    rows = [(f"{image_server.url}/img/{name}", "same pair")]
    a = write_csv(tmp_path / "a.csv", rows)
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"URL": rows[0][0], "TEXT": "same pair"}) + "\n")
    for lst, out in ((a, "oa"), (b, "ob")):
        assert wit("download", str(lst), "--out", str(tmp_path / out), "--allow-net", "127.0.0.1/32", *FAST).returncode == 0
    ua, ub = (manifests(tmp_path / o)["uid"][0].as_py() for o in ("oa", "ob"))
    assert ua == ub


def test_invalid_rows_are_never_fetched_and_the_shard_finishes(tmp_path, image_server, real_images):
    names = sorted(real_images)
    rows = [
        (f"{image_server.url}/img/{names[0]}", "plain 0"),
        (f"{image_server.url}/img/{names[1]}?p={'A' * 2100}", "too long"),  # over 2,048 characters
        (f"{image_server.url}/img/{names[2]}", "plain 2"),
        (f"  {image_server.url}/img/{names[3]}", "padded"),  # urllib would strip the spaces and fetch it
        (f"{image_server.url}/img/{names[4]}", "plain 4"),
    ]
    lst = write_csv(tmp_path / "l.csv", rows)
    out = tmp_path / "out"
    args = ["download", str(lst), "--out", str(out), "--allow-net", "127.0.0.1/32", "--shard-size", "8", *FAST]
    r = wit(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "INCOMPLETE" not in r.stdout and "ok            3\n" in r.stdout, r.stdout
    # the images asked for (the fetcher also reads the host's robots.txt once)
    fetched = {p.split("?")[0].rsplit("/", 1)[-1] for p in image_server.requests if p.startswith("/img/")}
    assert fetched == {names[0], names[2], names[4]}  # the invalid rows never reached the fetcher

    m = manifests(out).to_pylist()
    # every row once, planned by host: the host's rows in list order, then the invalid ones (no host)
    assert [row["source_row"] for row in m] == [0, 2, 4, 1, 3]
    assert [row["key"] for row in m] == [f"{i:06d}" for i in range(5)]  # keyed by position in the shard (8 rows: 1 + 5 digits)
    assert [(row["status"], row["reason"]) for row in m] == [
        ("ok", None), ("ok", None), ("ok", None), ("failed", "invalid_url"), ("failed", "invalid_url")]
    samples = tar_samples(out)
    assert set(samples) == {"000000", "000001", "000002"}
    for row in m:
        if row["status"] == "ok":
            meta = json.loads(samples[row["key"]]["json"])
            assert (meta["key"], meta["caption"], meta["source_row"]) == (row["key"], row["caption"], row["source_row"])
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["count"] == 5 and stats["successes"] == 3 and stats["wit"]["rows"] == 5

    again = wit(*args)  # the shard verifies: nothing is redone
    assert again.returncode == 0 and "this run      0 shards" in again.stdout, again.stdout


def test_a_verification_failure_names_the_samples_that_differ():
    from wit.shards.verify import key_mismatch

    assert key_mismatch(["a", "b"], {"b", "a"}) is None
    problem = key_mismatch(["a", "b", "c", "c"], {"a", "d"})
    assert problem == ("tar holds 4 samples, the manifest 2 ok rows; in the tar but not ok in the manifest: b, c; "
                       "ok in the manifest but not in the tar: d; twice in the tar: c")
    many = key_mismatch([f"{i:03d}" for i in range(8)], set())
    assert many.endswith("000, 001, 002, 003, 004 and 3 more")


def test_wide_and_16_bit_images_in_a_crawl(tmp_path):
    import numpy as np

    from wit.ingest.loopback import LoopbackImageServer

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    deep = Image.fromarray(np.linspace(0, 65535, 300 * 300).reshape(300, 300).astype(np.uint16))  # a 16-bit ramp
    images = {"thin.png": png(Image.new("RGB", (1, 8000))), "wide.png": png(Image.new("RGB", (600, 100))),
              "deep.png": png(deep)}
    with LoopbackImageServer(images, host="127.0.0.13") as server:
        lst = write_csv(tmp_path / "l.csv", [(f"{server.url}/img/{name}", name) for name in images])
        r = wit("download", str(lst), "--out", str(tmp_path / "o"), "--allow-net", "127.0.0.13/32",
                "--max-aspect-ratio", "5", *FAST, "--processes", "1")
    assert r.returncode == 0, r.stderr
    m = {row["caption"]: row for row in manifests(tmp_path / "o").to_pylist()}
    assert m["wide.png"]["reason"] == m["thin.png"]["reason"] == "bad_aspect"
    assert m["wide.png"]["detail"] == "bad_aspect: 600x100, long side / short side 6.0 is over --max-aspect-ratio 5"
    assert m["deep.png"]["status"] == "ok"
    stored = np.asarray(Image.open(io.BytesIO(tar_samples(tmp_path / "o")[m["deep.png"]["key"]]["jpg"])))
    assert abs(stored.mean() - 127.5) < 3  # the ramp, not white
