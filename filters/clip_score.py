"""`wit filter clip-score`: keep pairs whose CLIP score (cosine of image and text embedding, from `wit embed`) is high.

DataComp's strongest simple baselines: a fixed threshold (`--min`, e.g. 0.25 with OpenAI's ViT-B/32) or the top
fraction of the pool (`--top-fraction`, e.g. 0.3 with ViT-L/14). The fraction's threshold is a global quantile,
found out of core: DuckDB counts the scores into bins of 2^-20 (a bounded hash aggregate whatever the pool size), and
the threshold is the lower edge of the bin where the count from the top reaches the fraction (ties in a bin of
width 1e-6 are kept together). Then one task per shard writes its verdicts (wit.shards.schema.VERDICT + clip_score):
`clip_score_below:<threshold>`, or the reason the row has no embedding (not_ok_in_ingest, decode_error, ...).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from wit.filters.embedded import check_embedding_file, embedding_files
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, run_map
from wit.shards.schema import VERDICT
from wit.shards.sql import SQLOptions, run_sql
from wit.shards.storage import WitError, absolute, join, write_json_atomic
from wit.shards.tables import read_parquet, write_parquet

BINS_PER_UNIT = 1 << 20  # score bins of the global quantile: 2^-20 wide, at most 2^21 of them over [-1, 1]
CLIP_VERDICT = pa.schema(list(VERDICT) + [pa.field("clip_score", pa.float32())])


@dataclass(frozen=True, kw_only=True)
class ClipScoreConfig(EngineOptions, SQLOptions):
    embeddings: str = opt(help="folder of `wit embed` (local or s3://)", positional=True)
    out: str = opt(help="verdict folder (local or s3://)")
    min_score: float | None = opt(None, "keep pairs whose CLIP score is at least S (DataComp: 0.25 for OpenAI's "
                                        "ViT-B/32; a model of your own has its own scale)", flag="--min",
                                  metavar="S")
    top_fraction: float | None = opt(None, "keep the best F of the pool's scored pairs (DataComp: 0.3); the "
                                           "threshold is the pool's global quantile", metavar="F")


def bin_of(score: np.ndarray) -> np.ndarray:
    """The quantile bin of each score; the same formula as the SQL, so 'at or above the threshold' agrees."""
    return np.floor(score.astype(np.float64) * BINS_PER_UNIT).astype(np.int64)


def top_fraction_threshold(cfg: ClipScoreConfig, urls: list[str]) -> tuple[int, int]:
    """(lowest kept bin, scored rows): the bin where the count from the top first reaches F of the scored rows."""
    con = cfg.connect(output=cfg.out)
    if any("://" in u for u in urls):
        from fsspec import filesystem

        con.register_filesystem(filesystem(urls[0].split("://", 1)[0]))
    bins = run_sql(con, f"""
        SELECT floor(clip_score::DOUBLE * {BINS_PER_UNIT})::BIGINT AS b, count(*) AS n
        FROM read_parquet($files) WHERE reason IS NULL AND clip_score IS NOT NULL GROUP BY b ORDER BY b DESC""",
                   {"files": urls}, what="clip-score quantile").fetchnumpy()
    total = int(bins["n"].sum())
    if not total:
        raise WitError(f"{cfg.embeddings}: no row has a CLIP score")
    want = math.ceil(cfg.top_fraction * total)
    at = int(np.searchsorted(np.cumsum(bins["n"]), want))
    return int(bins["b"][min(at, len(bins["b"]) - 1)]), total


@dataclass(frozen=True)
class ScoreJob:
    url: str  # the shard's embedding file
    out: str
    shard: str
    lowest_bin: int | None  # --top-fraction: keep bins >= this
    min_score: float | None  # --min: keep scores >= this
    label: str  # the threshold as written in reasons


def judge_shard(job: ScoreJob) -> dict:
    t = read_parquet(job.url, ["uid", "clip_score", "reason"])
    score = t["clip_score"].to_numpy(zero_copy_only=False).astype(np.float32)  # nulls -> nan
    have = np.array([r is None for r in t["reason"].to_pylist()], bool) & ~np.isnan(score)
    passed = bin_of(np.nan_to_num(score, nan=-2)) >= job.lowest_bin if job.lowest_bin is not None \
        else np.nan_to_num(score, nan=-2) >= job.min_score
    keep = have & passed
    reasons = [r if not h else (None if k else f"clip_score_below:{job.label}")
               for r, h, k in zip(t["reason"].to_pylist(), have, keep)]
    table = pa.table({"uid": t["uid"], "keep": pa.array(keep), "reason": pa.array(reasons, pa.string()),
                      "dup_of": pa.nulls(t.num_rows, pa.string()), "clip_score": t["clip_score"]},
                     schema=CLIP_VERDICT)
    write_parquet(join(job.out, f"{job.shard}.parquet"), table)
    return {"rows": t.num_rows, "kept": int(keep.sum()),
            "dropped": dict(Counter((r or "").split(":", 1)[0] for r, k in zip(reasons, keep) if not k))}


def run_clip_score(cfg: ClipScoreConfig) -> dict:
    from dataclasses import replace

    from wit.shards.score_audit import clip_score_report

    cfg = replace(cfg, embeddings=absolute(cfg.embeddings), out=absolute(cfg.out))
    if (cfg.min_score is None) == (cfg.top_fraction is None):
        raise WitError("give exactly one of --min S and --top-fraction F")
    if cfg.top_fraction is not None and not 0 < cfg.top_fraction <= 1:
        raise WitError(f"--top-fraction must be in (0, 1] (got {cfg.top_fraction})")
    if cfg.embeddings.rstrip("/") == cfg.out.rstrip("/"):
        raise WitError(f"{cfg.out}: would overwrite the embeddings it reads; choose another --out")
    files, plan = embedding_files(cfg.embeddings)
    for _, url in files:  # footers only: a folder of something else fails here, before any work
        check_embedding_file(url)
    lowest, scored, threshold = None, None, cfg.min_score
    if cfg.top_fraction is not None:
        lowest, scored = top_fraction_threshold(cfg, [u for _, u in files])
        threshold = lowest / BINS_PER_UNIT
    label = f"{threshold:.6g}"
    jobs = [ScoreJob(url, cfg.out, shard, lowest, cfg.min_score, label) for shard, url in files]
    results = run_map(judge_shard, jobs, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
    dropped: Counter = Counter()
    for r in results:
        dropped.update(r["dropped"])
    summary = {"shards": len(files), "rows": sum(r["rows"] for r in results), "kept": sum(r["kept"] for r in results),
               "dropped": dict(dropped.most_common()), "threshold": threshold, "scored_rows": scored,
               "model": plan.get("model"), "scores": clip_score_report(cfg.embeddings, cfg.connect(output=cfg.out)),
               "config": {"min": cfg.min_score, "top_fraction": cfg.top_fraction}}
    write_json_atomic(join(cfg.out, "_wit", "clip_score_summary.json"), summary)
    return summary
