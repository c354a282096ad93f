"""wit audit's gallery: thumbnails of what each stage dropped, read from the crawl's tars by key, duplicates beside
the copy that stayed, leaks beside the evaluation image; rendered by headless Chromium, checked in its pixels.
And the audit's SQL takes any folder name: `text-v2`, `images.old`, `a b` are names, never SQL."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.filters_helpers import short_side_256, write_shard
from wit.shards.audit import AuditConfig, audit

DROPPED_BORDER, KEPT_BORDER = (217, 72, 15), (43, 138, 62)  # gallery.CSS


def _verdicts(folder: Path, rows: list[dict], drops: dict[int, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": [r["uid"] for r in rows], "keep": [i not in drops for i in range(len(rows))],
                             "reason": [drops.get(i) for i in range(len(rows))]}), folder / "00000.parquet")


@pytest.fixture()
def pipeline(tmp_path, real_images):
    """A crawl of 8 real photos and one failed row; text, images and dedup verdicts that drop some of them."""
    photos = [short_side_256(real_images[n]) for n in sorted(real_images)[:8]]
    samples = [{"url": f"http://127.0.0.1/{i}.jpg", "caption": f"photo number {i} of the crawl", "image": p}
               for i, p in enumerate(photos)]
    rows = write_shard(tmp_path / "raw", "00000", samples, failed=1)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    Image.open(io.BytesIO(photos[5])).save(eval_dir / "leaked.png")  # photo 5 is in the evaluation set
    v = tmp_path / "verdicts"
    _verdicts(v / "text", rows, {0: "caption_too_short", 8: "not_ok_in_ingest"})
    _verdicts(v / "images", rows, {2: "too_small", 5: "eval_leak:leaked.png", 8: "not_ok_in_ingest"})
    (v / "images" / "_wit").mkdir()
    (v / "images" / "_wit" / "images_summary.json").write_text(json.dumps({"config": {"eval_sets": [str(eval_dir)]}}))
    _verdicts(v / "dedup", rows, {3: f"near_dup_of:{rows[4]['uid']}", 0: "caption_too_short"})
    return tmp_path, rows, photos


def _boxes(rgb: np.ndarray, color: tuple[int, int, int]) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of every figure border of that colour (4 px rings about 144 px wide)."""
    from scipy import ndimage

    mask = np.abs(rgb - color).sum(axis=2) < 40
    labels, _ = ndimage.label(mask)
    out = []
    for sl in ndimage.find_objects(labels):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if 130 <= w <= 160 and h >= 60:
            out.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
    return out


def _shows(rgb: np.ndarray, box, thumb: np.ndarray) -> bool:
    """The thumbnail is drawn at the top of the box, centred: nearly the same pixels (JPEG, no scaling)."""
    top, left, _, right = box
    th, tw = thumb.shape[:2]
    x0 = left + 4 + (right - left - 8 - tw) // 2
    best = min(np.abs(rgb[top + 4 + dy: top + 4 + dy + th, x0 + dx: x0 + dx + tw] - thumb).mean()
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return best < 8


def test_gallery_shows_what_each_stage_dropped(pipeline):
    root, rows, photos = pipeline
    html_path = Path(audit(AuditConfig(root=str(root), gallery=4, memory_limit="256MB")))
    report = json.loads((root / "audit" / "report.json").read_text())
    sections = {(s["stage"], s["reason"]): s for s in report["gallery"]}
    assert set(sections) == {("download", "http_404"), ("text", "caption_too_short"), ("images", "too_small"),
                             ("images", "eval_leak"), ("dedup", "near_dup_of")}
    uid = {r["uid"]: i for i, r in enumerate(rows)}
    assert [uid[s["uid"]] for s in sections[("images", "too_small")]["samples"]] == [2]
    assert all(s["image"] for k, sec in sections.items() if k[0] != "download" for s in sec["samples"])
    assert not sections[("download", "http_404")]["samples"][0]["image"]  # a failed download has no picture
    near = sections[("dedup", "near_dup_of")]["samples"][0]
    assert uid[near["uid"]] == 3 and uid[near["partner"]["uid"]] == 4 and near["partner"]["image"]
    leak = sections[("images", "eval_leak")]["samples"][0]
    assert uid[leak["uid"]] == 5 and leak["partner"] == {"name": "leaked.png", "image": True}

    text = html_path.read_text()
    thumbs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"), dtype=int)
              for b in re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", text)]
    assert len(thumbs) == 6  # too_small, caption_too_short, the leak and its eval image, the near dup and its copy
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium to render the report (.ci/run installs it)")
    shot = root / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    # loopback only: no name resolves and any connection would go to a closed local port
                    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--no-pings",
                    "--disable-domain-reliability", "--disable-breakpad",
                    "--force-device-scale-factor=1", "--hide-scrollbars", f"--user-data-dir={root / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1000,6000", html_path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    dropped, kept = _boxes(rgb, DROPPED_BORDER), _boxes(rgb, KEPT_BORDER)
    assert len(dropped) == 5 and len(kept) == 2, (len(dropped), len(kept))  # the failed download: a box, no picture
    figures = sorted(dropped + kept)  # page order: top to bottom, left to right, as in the HTML
    with_pictures = [b for b in figures if b not in dropped[:1]]  # the first figure is the failed download's
    assert all(_shows(rgb, box, thumb) for box, thumb in zip(with_pictures, thumbs)), "a thumbnail is not drawn"
    assert not _shows(rgb, figures[0], thumbs[0])  # and the check can tell a picture from an empty box


def test_folder_names_are_names_not_sql(pipeline):
    root, rows, _ = pipeline
    for odd in ("text-v2", "images.old", "a b", "it's"):
        shutil.copytree(root / "verdicts" / "text", root / "verdicts" / odd)
    audit(AuditConfig(root=str(root), gallery=0))
    steps = {s["stage"]: s for s in json.loads((root / "audit" / "report.json").read_text())["funnel"]}
    assert {"text-v2", "images.old", "a b", "it's"} <= set(steps)
    assert steps["text"]["dropped"] == {"caption_too_short": 1}
    assert steps["a b"]["rows_in"] == steps["a b"]["kept"]  # the same verdicts again drop nothing more
