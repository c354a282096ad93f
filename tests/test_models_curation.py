"""Model-in-the-loop curation with the project's own model: wit-tiny is trained briefly on real photos (Flickr8k,
or the photos inside scikit-image/-learn when ../shared/data is missing), then `wit embed` embeds a crawl of them,
`wit filter clip-score` drops mismatched captions, `wit dedup-semantic` finds mirrored and recoloured copies that
pHash dedup misses, and the audit's funnel still adds up over every verdict folder."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance, ImageOps

from tests.conftest import SHARED_DATA
from tests.filters_helpers import jpeg, write_shard
from tests.ingest_helpers import wit

TRAIN = 100  # photos the model is trained on (each with its mirror image)
POOL = 40  # of them, distinct photos in the crawl
SWAPPED = 8  # of them, the last SWAPPED have their captions rotated among themselves (mismatched pairs)
COPIES = 10  # mirrored and recoloured copies of the first COPIES photos are planted in the crawl
# The module's first test also pays for the fixture's training run: minutes on a shared 2-core machine
pytestmark = [pytest.mark.timeout(2400), pytest.mark.data_fallback]  # its photos differ without ../shared/data


def small(im: Image.Image, side: int = 64) -> Image.Image:
    s = side / min(im.size)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)


def photos() -> list[tuple[str, Image.Image, list[str]]]:
    """(name, image, captions) of real photos: Flickr8k's human captions, or the package photos named."""
    folder = SHARED_DATA / "flickr8k"
    if (folder / "captions.csv").exists():
        caps: dict[str, list[str]] = {}
        with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                caps.setdefault(row["image"], []).append(row["caption"])
        names = sorted(caps)[:TRAIN]
        return [(n, small(Image.open(folder / "images" / n).convert("RGB")), caps[n]) for n in names]
    from wit.ingest.sample_images import package_photos

    out = []
    for name, data in sorted(package_photos().items()):
        word = name.rsplit(".", 1)[0].replace("_", " ")
        out.append((name, small(Image.open(io.BytesIO(data)).convert("RGB")),
                    [f"a photo of {word}", f"the {word}", f"{word}, a picture", f"an image of {word}"]))
    return out


def copy_of(im: Image.Image) -> Image.Image:
    """What pHash cannot see through: mirrored, and recoloured on top."""
    return ImageEnhance.Brightness(ImageEnhance.Color(ImageOps.mirror(im)).enhance(1.3)).enhance(1.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained wit-tiny checkpoint and a crawl of the photos with swapped captions and planted copies."""
    root = tmp_path_factory.mktemp("models")
    data = photos()
    # Training data: every photo and its mirror image (the flip augmentation CLIP models have seen) with the same
    # caption: with two captions the loss pushes a photo and its mirror apart whenever they share a batch, and the
    # model then tells mirrored copies from their photos.
    # 200 steps at lr 2e-3 (~30 s) make it strong enough for the planted-copy test: 9-10 of 10 copies at cosine 0.9
    # and no distinct photo with a distinct neighbour that close, over seeds 0-3. At 60 steps and 5e-4 it found 5 of
    # 10, and 5 of 40 distinct photos had such a neighbour.
    train = [{"url": f"http://127.0.0.1/train/{i}/{m}", "caption": caps[0],
              "image": jpeg(ImageOps.mirror(im) if m else im)}
             for i, (_, im, caps) in enumerate(data) for m in (0, 1)]
    half = len(train) // 2
    write_shard(root / "train", "00000", train[:half])
    write_shard(root / "train", "00001", train[half:])
    r = wit("train", "--data", str(root / "train" / "{00000..00001}.tar"), "--model", "wit-tiny", "--out",
            str(root / "run"), "--steps", "200", "--lr", "2e-3", "--warmup", "20", "--workers", "0", "--no-tensorboard",
            "--batch-size", str(min(64, len(train))),  # 30 samples without ../shared/data
            "--log-every", "50", timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    # The crawl: POOL photos (the last SWAPPED with each other's captions), COPIES planted copies, 1 failed row each.
    n = min(POOL, len(data) - 2)
    swapped = max(2, min(SWAPPED, n // 4))
    captions = [caps[0] for _, _, caps in data[:n]]
    captions[n - swapped:] = captions[n - swapped + 1:] + captions[n - swapped:n - swapped + 1]
    pool = [{"url": f"http://127.0.0.1/pool/{name}", "caption": captions[i], "image": jpeg(im), "kind": "photo"}
            for i, (name, im, _) in enumerate(data[:n])]
    copies = [{"url": f"http://127.0.0.1/copy/{name}", "caption": caps[2 % len(caps)], "image": jpeg(copy_of(im)),
               "kind": "copy", "of": i} for i, (name, im, caps) in enumerate(data[:min(COPIES, n // 4)])]
    shards = [pool[: n // 2] + copies[::2], pool[n // 2:] + copies[1::2]]
    rows = []
    for s, samples in enumerate(shards):
        written = write_shard(root / "raw", f"{s:05d}", samples, failed=1)
        rows += [{**sample, **row} for sample, row in zip(samples, written)]
        rows += written[len(samples):]
    return {"root": root, "ckpt": root / "run" / "checkpoints", "rows": rows, "swapped": swapped}


def embed(world, out: str, *extra: str):
    r = wit("embed", str(world["root"] / "raw"), "--out", out, "--checkpoint", str(world["ckpt"]), "--workers", "1",
            "--batch-size", "32", *extra, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def embedded(world):
    out = world["root"] / "embeddings"
    embed(world, str(out))
    return out


def table(folder) -> dict:
    rows = {}
    for f in sorted(folder.glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["uid"]] = r
    return rows


def test_embeddings_of_the_trained_model_match_open_clip_and_resume_skips_finished_shards(world, embedded):
    import open_clip
    import torch

    import wit.trainer.train  # noqa: F401  registers trainer/model_configs (wit-tiny)

    got = table(embedded)
    assert len(got) == len(world["rows"])
    failed = [r for r in world["rows"] if r["status"] != "ok"]
    assert failed and all(got[r["uid"]]["reason"] == "not_ok_in_ingest" and got[r["uid"]]["image"] is None
                          for r in failed)
    ok = [r for r in world["rows"] if r["status"] == "ok"]
    image = np.array([got[r["uid"]]["image"] for r in ok], np.float32)
    text = np.array([got[r["uid"]]["text"] for r in ok], np.float32)
    assert image.shape == (len(ok), 64)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose([got[r["uid"]]["clip_score"] for r in ok], (image * text).sum(1), atol=1e-5)
    # The same vectors as open_clip's own loading of the checkpoint and its preprocessing.
    ckpt = next(world["ckpt"].glob("step_*.pt"))
    model, _, preprocess = open_clip.create_model_and_transforms("wit-tiny", pretrained=str(ckpt))
    model.eval()
    with torch.no_grad():
        ref = model.encode_image(torch.stack([preprocess(Image.open(io.BytesIO(r["image"])).convert("RGB"))
                                              for r in ok[:8]]))
        tokens = open_clip.get_tokenizer("wit-tiny")([r["caption"] for r in ok[:8]])
        ref_text = model.encode_text(tokens)
    np.testing.assert_allclose(image[:8], torch.nn.functional.normalize(ref, dim=-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(text[:8], torch.nn.functional.normalize(ref_text, dim=-1).numpy(), atol=1e-4)
    # Resume: a second run skips both shards and leaves them untouched; a lost shard is redone alone.
    mtimes = {f.name: f.stat().st_mtime_ns for f in embedded.glob("*.parquet")}
    assert embed(world, str(embedded))["skipped"] == 2
    assert {f.name: f.stat().st_mtime_ns for f in embedded.glob("*.parquet")} == mtimes
    (embedded / "00001.parquet").unlink()
    summary = embed(world, str(embedded))
    assert summary["skipped"] == 1 and (embedded / "00001.parquet").exists()
    assert table(embedded).keys() == got.keys()


def test_clip_score_ranks_true_pairs_above_shuffled_and_the_filter_drops_mismatched_captions(world, embedded):
    got = table(embedded)
    photos_ = [r for r in world["rows"] if r.get("kind") == "photo"]
    true_ = photos_[: len(photos_) - world["swapped"]]  # photos with their own caption
    image = np.array([got[r["uid"]]["image"] for r in true_])
    text = np.array([got[r["uid"]]["text"] for r in true_])
    score = (image * text).sum(1)
    shuffled = (image * np.roll(text, 7, axis=0)).sum(1)  # each photo against another photo's caption
    assert (score > shuffled).mean() >= 0.8, (score > shuffled).mean()

    out = world["root"] / "verdicts" / "clip_score"
    scored = sum(r["status"] == "ok" for r in world["rows"])
    r = wit("filter", "clip-score", str(embedded), "--out", str(out), "--top-fraction", "0.8", "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    verdicts = table(out)
    assert len(verdicts) == len(world["rows"]) and summary["scores"]["scored"] == scored
    threshold = summary["threshold"]
    for row in world["rows"]:
        v = verdicts[row["uid"]]
        if row["status"] != "ok":
            assert (v["keep"], v["reason"]) == (False, "not_ok_in_ingest")
        else:
            assert v["keep"] == (got[row["uid"]]["clip_score"] >= threshold - 1e-6)
            assert v["keep"] or v["reason"] == f"clip_score_below:{threshold:.6g}"
    kept = sum(v["keep"] for v in verdicts.values())
    assert 0.8 * scored <= kept <= 0.8 * scored + 2  # the global quantile (ties in a 1e-6 bin stay together)
    # the mismatched captions are what the filter removes first
    mismatched = [row for row in photos_[len(photos_) - world["swapped"]:]]
    dropped = sum(not verdicts[row["uid"]]["keep"] for row in mismatched)
    assert dropped >= 0.6 * len(mismatched), (dropped, len(mismatched))

    fixed = wit("filter", "clip-score", str(embedded), "--out", str(world["root"] / "v_min"), "--min", "0.3",
                "--workers", "1")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    by_min = table(world["root"] / "v_min")
    assert all(v["keep"] == (v["clip_score"] is not None and v["clip_score"] >= 0.3) for v in by_min.values())


def test_semantic_dedup_finds_copies_phash_misses_and_keeps_distinct_photos_apart(world, embedded):
    root = world["root"]
    for cmd in (("filter", "images", str(root / "raw"), "--out", str(root / "verdicts" / "images"), "--min-side",
                 "16", "--workers", "1"),
                ("dedup", str(root / "verdicts" / "images"), "--out", str(root / "verdicts" / "dedup"))):
        r = wit(*cmd)
        assert r.returncode == 0, r.stderr[-2000:]
    phash = table(root / "verdicts" / "dedup")
    copies = [r for r in world["rows"] if r.get("kind") == "copy"]
    assert copies and all(phash[c["uid"]]["keep"] for c in copies)  # pHash dedup (Hamming <= 2) misses them all

    out = root / "verdicts" / "semantic"
    r = wit("dedup-semantic", str(embedded), "--out", str(out), "--threshold", "0.9", "--clusters", "3",
            "--after", str(root / "verdicts" / "dedup"), "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    sem = table(out)
    assert len(sem) == len(world["rows"])
    photos_ = [r for r in world["rows"] if r.get("kind") == "photo"]
    group = {u: u if v["keep"] else v["dup_of"] for u, v in sem.items()}  # the uid each row's group kept
    copy_of_photo = {photos_[c["of"]]["uid"]: c["uid"] for c in copies}
    found = sum(group[c["uid"]] == group[photos_[c["of"]]["uid"]] for c in copies)
    # a distinct photo is lost when it is dropped as the duplicate of anything but its own copy
    lost = [p for p in photos_ if sem[p["uid"]]["reason"] and sem[p["uid"]]["reason"].startswith("semantic")
            and sem[p["uid"]]["dup_of"] != copy_of_photo.get(p["uid"])]
    n_lost = len(lost)
    assert found >= 0.7 * len(copies), (found, len(copies))
    assert n_lost <= 0.15 * len(photos_), (n_lost, len(photos_))
    for row in world["rows"]:  # earlier stages' drops keep their reason; every row has a verdict
        if not phash[row["uid"]]["keep"]:
            assert sem[row["uid"]]["reason"] == phash[row["uid"]]["reason"]


def test_semantic_dedup_equals_all_pairs_components_with_one_cluster(world, embedded):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    out = world["root"] / "v_sem1"
    r = wit("dedup-semantic", str(embedded), "--out", str(out), "--threshold", "0.9", "--clusters", "1",
            "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    got = table(embedded)
    uids = sorted(u for u, v in got.items() if v["reason"] is None)
    x = np.array([got[u]["image"] for u in uids])
    a, b = np.nonzero(np.triu(x @ x.T >= 0.9, 1))
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(uids),) * 2), directed=False)
    keeper = {c: uids[min(np.flatnonzero(comp == c))] for c in set(comp)}
    expected = {u: keeper[c] for u, c in zip(uids, comp) if keeper[c] != u}
    sem = table(out)
    assert {u: v["dup_of"] for u, v in sem.items() if v["reason"] and v["reason"].startswith("semantic")} == expected


def test_semantic_dedup_into_an_older_output_judges_only_this_run(world, embedded, tmp_path):
    """A second run into the same --out over fewer shards must not read the first run's scratch files."""
    out = tmp_path / "again"
    first = wit("dedup-semantic", str(embedded), "--out", str(out), "--threshold", "0.9", "--clusters", "1",
                "--workers", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    one = tmp_path / "one_shard"
    (one / "_wit").mkdir(parents=True)
    plan = json.loads((embedded / "_wit" / "embed.json").read_text())
    (one / "_wit" / "embed.json").write_text(json.dumps({**plan, "shards": ["00000"]}))
    (one / "00000.parquet").write_bytes((embedded / "00000.parquet").read_bytes())
    r = wit("dedup-semantic", str(one), "--out", str(out), "--threshold", "0.9", "--clusters", "1", "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    here = set(table(one))
    verdicts = pq.read_table(out / "00000.parquet").to_pylist()
    assert {v["uid"] for v in verdicts} == here
    assert all(v["dup_of"] in here for v in verdicts if v["dup_of"])  # never the copy kept in the other shard
    assert json.loads(r.stdout)["assigned"] == sum(v["reason"] is None for v in table(one).values())


def test_every_verdict_folder_adds_up_in_the_audit_funnel_and_the_audit_shows_the_scores(world, embedded):
    root = world["root"]
    needed = ("images", "dedup", "clip_score", "semantic")
    if not all((root / "verdicts" / s).is_dir() for s in needed):
        pytest.skip("runs after the tests that write the verdict folders (run the whole module)")
    r = wit("audit", str(root))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((root / "audit" / "report.json").read_text())
    stages = [s["stage"] for s in report["funnel"]]
    assert set(needed) <= set(stages)
    for step in report["funnel"]:
        assert step["rows_in"] == step["kept"] + sum(step["dropped"].values()), step
        assert "no verdict" not in step["dropped"], step
    assert report["funnel"][0]["rows_in"] == len(world["rows"])
    assert stages.index("dedup") < stages.index("semantic")
    section = report["clip_scores"]  # the audit finds <root>/embeddings
    assert section["scored"] == sum(r["status"] == "ok" for r in world["rows"])
    assert section["unscored"] == len(world["rows"]) - section["scored"]
    assert sum(section["histogram"]["counts"]) == section["scored"]
    scores = [v["clip_score"] for v in table(embedded).values() if v["clip_score"] is not None]
    assert section["min"] == pytest.approx(min(scores)) and section["max"] == pytest.approx(max(scores))
    assert (root / "audit" / "clip_scores.png").stat().st_size > 0
    assert "CLIP scores" in (root / "audit" / "report.html").read_text()


def test_bad_input_is_one_line(world, embedded, tmp_path):
    root = world["root"]
    r = wit("embed", str(root / "raw"), "--out", str(tmp_path / "e"), "--checkpoint", str(world["ckpt"]),
            "--model", "ViT-B-32", "--workers", "1")
    assert r.returncode == 2 and "do not fit model ViT-B-32" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "_wit").mkdir()
    (partial / "_wit" / "embed.json").write_bytes((embedded / "_wit" / "embed.json").read_bytes())
    (partial / "00000.parquet").write_bytes((embedded / "00000.parquet").read_bytes())
    for cmd in (("filter", "clip-score", str(partial), "--out", str(tmp_path / "v"), "--min", "0.2"),
                ("dedup-semantic", str(partial), "--out", str(tmp_path / "s"))):
        r = wit(*cmd)
        assert r.returncode == 2 and "00001.parquet: missing" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = wit("filter", "clip-score", str(root / "raw"), "--out", str(tmp_path / "v2"), "--min", "0.2")
    assert r.returncode == 2 and "not a `wit embed` output folder" in r.stderr, r.stderr


def test_embed_under_torchrun_splits_the_shards_between_ranks_and_writes_the_same(world, embedded, tmp_path):
    out = tmp_path / "ranks"
    r = wit("embed", str(world["root"] / "raw"), "--out", str(out), "--checkpoint", str(world["ckpt"]), "--nproc", "2",
            "--batch-size", "32", timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "_wit" / "embed_summary.json").read_text())
    assert summary["ranks"] == 2 and summary["shards"] == 2 and summary["skipped"] == 0
    one, two = table(embedded), table(out)
    assert one.keys() == two.keys()
    for uid, row in one.items():
        assert row["reason"] == two[uid]["reason"]
        if row["image"] is not None:
            np.testing.assert_allclose(row["image"], two[uid]["image"], atol=1e-5)
