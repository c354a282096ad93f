"""The image stage over one shard: decodable, big enough, not too elongated, hashed, not an evaluation image.

`filter_shard(job)` is a pure function of the shard's files and the job, mapped over shards by
`shards.runner.run_map`. It writes `<out>/<shard>.parquet`: one verdict row per manifest row, in manifest order,
with the hashes the global dedup needs. Broken input (a truncated tar, a sample without an image, an unreadable
JPEG) becomes a reason on its rows, never an exception.
"""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
from PIL import Image

from wit.filters.leakage import EvalIndex
from wit.shards.phash import gray32, phash_gray
from wit.shards import fasttar
from wit.shards.options import opt
from wit.shards.runner import EngineOptions
from wit.shards.schema import OK, VERDICT
from wit.shards.storage import join
from wit.shards.tables import read_manifest, read_parquet, write_parquet

NOT_OK = "not_ok_in_ingest"
IMAGE_VERDICT = pa.schema(
    list(VERDICT)
    + [
        pa.field("key", pa.string()),
        pa.field("sha256", pa.string()),  # of the stored bytes (the manifest's sha256 is of the downloaded ones)
        pa.field("phash", pa.int64()),  # 64-bit pHash, bits as signed int64
        pa.field("short_side", pa.int32()),  # of the original image when the manifest knows it
        pa.field("aspect", pa.float32()),  # long side / short side
        pa.field("detail", pa.string()),  # the raw error, for humans
    ]
)


@dataclass(frozen=True)
class ImageJob:
    raw: str  # folder with <shard>.tar and <shard>.parquet (img2dataset layout, wit manifest)
    out: str  # folder for <shard>.parquet verdicts
    shard: str
    min_side: int = 200
    max_aspect: float = 3.0
    eval_index: str | None = None  # parquet (name, phash) from filters.leakage.write_eval_index
    eval_k: int = 4


def read_tar_images(url: str) -> tuple[dict[str, bytes | None], str | None]:
    """{key: image bytes, or None when the sample has no image}, and what kept the tar from being read to its end
    (fasttar.ManifestSamples.detail; what was read before the problem is kept)."""
    samples = fasttar.ManifestSamples(url)
    return {key: fasttar.image_of(sample) for key, sample in samples}, samples.detail


_EVAL_CACHE: dict[tuple[str, int], EvalIndex] = {}  # one index per worker process, built on first use


def _eval_index(url: str, k: int) -> EvalIndex:
    if (url, k) not in _EVAL_CACHE:
        _EVAL_CACHE[(url, k)] = EvalIndex.from_table(read_parquet(url), k)
    return _EVAL_CACHE[(url, k)]


def judge_image(data: bytes | None, orig: tuple[int | None, int | None], job: ImageJob, index: EvalIndex | None):
    """(reason or None, row extras) for one stored image."""
    if data is None:
        return "no_image", {}
    extras: dict = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        extras["phash"] = phash_gray(gray32(im))
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad bytes
        extras["detail"] = f"{type(err).__name__}: {err}"[:300]
        return "decode_error", extras
    ow, oh = orig
    if not ow or not oh:
        ow, oh = w, h  # no original size in the manifest: judge the stored image
    short, long_ = min(ow, oh), max(ow, oh)
    extras["short_side"], extras["aspect"] = short, long_ / max(short, 1)
    if short < job.min_side:
        return "too_small", extras
    if extras["aspect"] > job.max_aspect:
        return "bad_aspect", extras
    if index is not None:
        hit = index.probe(extras["phash"])
        if hit is not None:
            return f"eval_leak:{hit}", extras
    return None, extras


def filter_shard(job: ImageJob) -> dict:
    """Judge every row of one shard's manifest; write the verdict file; return counts by reason."""
    cols = ["uid", "status", "key", "original_width", "original_height"]
    manifest = read_manifest(join(job.raw, f"{job.shard}.parquet"), cols).to_pylist()
    samples = fasttar.ManifestSamples(join(job.raw, f"{job.shard}.tar"))
    images = {key: fasttar.image_of(s) for key, s in samples} if any(r["status"] == OK for r in manifest) else {}
    index = _eval_index(job.eval_index, job.eval_k) if job.eval_index else None
    rows = []
    for r in manifest:
        row = {"uid": r["uid"], "key": r["key"], "dup_of": None}
        if r["status"] != OK:
            reason = NOT_OK
        elif r["key"] not in images:
            reason, row["detail"] = samples.missing, samples.detail
        else:
            reason, extras = judge_image(images[r["key"]], (r["original_width"], r["original_height"]), job, index)
            row.update(extras)
        row["keep"], row["reason"] = reason is None, reason
        rows.append(row)
    write_parquet(join(job.out, f"{job.shard}.parquet"), pa.Table.from_pylist(rows, schema=IMAGE_VERDICT))
    reasons = Counter((r["reason"] or "kept").split(":", 1)[0] for r in rows)
    return {"shard": job.shard, "rows": len(rows), "kept": reasons.pop("kept", 0), "dropped": dict(reasons)}


@dataclass(frozen=True, kw_only=True)
class ImagesConfig(EngineOptions):
    raw: str = opt(help="crawl output folder from `wit download` (local or s3://)", positional=True)
    out: str = opt(help="verdict folder (local or s3://)")
    min_side: int = opt(200, "smallest short side of the ORIGINAL image, in pixels (manifest original_width/height; "
                             "DataComp's basic filter)", minimum=0)
    max_aspect: float = opt(3.0, "largest long side / short side ratio", minimum=1)
    eval_sets: tuple[str, ...] = opt((), "evaluation images: a folder (searched recursively, tars in it too), a tar, "
                                         "or a brace pattern of shards; repeatable. Pool images within --eval-k of "
                                         "one of them are dropped as eval_leak:<name>", flag="--eval", many="append",
                                     metavar="SET")
    eval_k: int = opt(4, "Hamming distance (of 64 pHash bits) that counts as leakage. Crawled copies of CIFAR-10 test "
                         "images (upscaled, re-encoded) land within 2; at 4 none of 1,000 Flickr8k photos matched any "
                         "of CIFAR-10's 10,000 test images, at 8 one did", minimum=0)


def run_images(cfg: ImagesConfig) -> dict:
    """Hash the evaluation sets once, then judge every finished shard of the crawl (one task per shard)."""
    from wit.filters.leakage import write_eval_index
    from wit.shards.runner import run_map
    from wit.shards.storage import WitError, absolute, write_json_atomic
    from wit.shards.verify import shard_names

    raw, out = absolute(cfg.raw), absolute(cfg.out)
    if raw.rstrip("/") == out.rstrip("/"):
        raise WitError(f"{cfg.out}: the verdicts would overwrite the crawl's manifests; choose another --out")
    names = shard_names(raw)
    if not names:
        raise WitError(f"{cfg.raw}: no finished shards (<shard>_stats.json) here")
    index, n_eval = None, 0
    if cfg.eval_sets:
        index = join(out, "_wit", "eval_index.parquet")  # not *.parquet at the top: globs see verdicts only
        n_eval = write_eval_index([absolute(s) for s in cfg.eval_sets], index)
    jobs = [ImageJob(raw, out, n, cfg.min_side, cfg.max_aspect, index, cfg.eval_k) for n in names]
    results = run_map(filter_shard, jobs, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
    dropped: Counter = Counter()
    for r in results:
        dropped.update(r["dropped"])
    summary = {"shards": len(names), "rows": sum(r["rows"] for r in results), "kept": sum(r["kept"] for r in results),
               "dropped": dict(dropped.most_common()), "eval_images": n_eval,
               "config": cfg.__dict__ | {"eval_sets": [absolute(s) for s in cfg.eval_sets]}}
    write_json_atomic(join(out, "_wit", "images_summary.json"), summary)
    return summary
