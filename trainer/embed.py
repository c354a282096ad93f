"""`wit embed`: image and text embeddings of every row of crawl (or training) shards, and their CLIP score.

One task per shard (`embed_shard`, a pure function of the shard and the model) writes `<out>/<shard>.parquet` in the
schema of `wit.shards.schema.embedding_schema`: one row per manifest row, keyed by uid. Parquet with fixed-size list
columns rather than .npy beside a uid file: one file per shard is written atomically and is the shard's done
marker (no pair of files that must agree), its footer carries the row count and the model, and DuckDB and pyarrow
read it with no glue (`image` comes back as one contiguous float32 buffer, so numpy gets it without a copy).

Tasks are mapped by `wit.shards.runner.run_map` (process pool or Ray; the model is loaded once per worker), or,
under torchrun, rank r takes shards r, r + world, ... on its own GPU. A shard is done when its file exists and its
footer agrees with the shard's manifest (row count) and the model; a re-run skips those and redoes the rest.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from wit.shards import fasttar
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, default_workers, run_map
from wit.shards.schema import EMBED_MODEL_KEY, EMBED_PLAN, OK, embedding_schema
from wit.shards.storage import WitError, absolute, exists, join, read_json, write_json_atomic
from wit.shards.tables import open_parquet, read_manifest, write_parquet
from wit.shards.verify import shard_names

NOT_OK = "not_ok_in_ingest"  # the reason the filters give rows the crawl did not deliver


@dataclass(frozen=True, kw_only=True)
class EmbedConfig(EngineOptions):
    shards: str = opt(help="folder of finished shards: a crawl (`wit download --out`) or training shards (`wit shards "
                           "write --out`), local or s3://", positional=True)
    out: str = opt(help="embedding folder, local or s3://: <shard>.parquet per shard")
    checkpoint: str = opt(help="a checkpoint `make train` wrote (step_*.pt, or a checkpoint folder: its newest) or "
                               "a model-only state_dict file; nothing is downloaded")
    model: str | None = opt(None, "open_clip model name or a config in trainer/model_configs; default: the name the "
                                  "training checkpoint records")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...; under torchrun each rank uses its "
                              "local GPU")
    batch_size: int = opt(256, "images or texts per forward pass", minimum=1)
    precision: str = opt("fp32", "bf16 runs under autocast", choices=("fp32", "bf16"))


@dataclass(frozen=True)
class EmbedJob:
    shards: str
    out: str
    shard: str
    model: str
    checkpoint: str
    fingerprint: str  # model name and a hash of its weights: what the file's footer must name to count as done
    device: str
    batch_size: int
    precision: str
    threads: int  # torch threads on CPU; image decoding threads on CUDA


# ---------------------------------------------------------------------------------------------- the model
_MODELS: dict[tuple, tuple] = {}  # one model per worker process, loaded on first use


def model_for(model: str | None, checkpoint: str, device: str):
    """(model, preprocess, tokenizer), cached per process."""
    key = (model, checkpoint, device)
    if key not in _MODELS:
        from wit.trainer.eval.model import load_model

        _MODELS.clear()  # one model at a time per worker
        _MODELS[key] = load_model(model, checkpoint, False, device)
    return _MODELS[key]


def fingerprint(name: str, net: torch.nn.Module) -> str:
    """The model's name and a hash of its weights (not of the file: the same weights in another file are the same
    embedder)."""
    h = hashlib.blake2b(digest_size=16)
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return f"{name}:{h.hexdigest()}"


def width(name: str) -> int:
    """The embedding width of an open_clip model (its config's embed_dim)."""
    import open_clip

    return int(open_clip.get_model_config(name)["embed_dim"])


# ---------------------------------------------------------------------------------------------- one shard
def is_done(job: EmbedJob) -> bool:
    """The shard's embedding file exists, has a row per manifest row and was made by this model (footers only)."""
    target = join(job.out, f"{job.shard}.parquet")
    if not exists(target):
        return False
    try:
        meta = open_parquet(target).metadata
        rows = open_parquet(join(job.shards, f"{job.shard}.parquet")).metadata.num_rows
    except WitError:
        return False
    return meta.num_rows == rows and (meta.metadata or {}).get(EMBED_MODEL_KEY, b"").decode() == job.fingerprint


def _autocast(device: str, precision: str):
    from wit.trainer.eval.features import autocast

    return autocast(device, precision)


def embed_shard(job: EmbedJob) -> dict:
    """Embed one shard's rows (images from its tar, texts from its manifest) and write its embedding file."""
    if is_done(job):
        return {"shard": job.shard, "skipped": True}
    started = time.perf_counter()
    if torch.device(job.device).type == "cpu":
        torch.set_num_threads(job.threads)
    net, preprocess, tokenizer = model_for(job.model, job.checkpoint, job.device)
    manifest = read_manifest(join(job.shards, f"{job.shard}.parquet"), ["uid", "caption", "status", "key"])
    uids, captions = manifest["uid"].to_pylist(), manifest["caption"].to_pylist()
    status, keys = manifest["status"].to_pylist(), manifest["key"].to_pylist()
    n = len(uids)
    reasons: list[str | None] = [None if s == OK else NOT_OK for s in status]
    row_of = {k: i for i, k in enumerate(keys) if reasons[i] is None}
    dim = width(job.model)
    image = np.zeros((n, dim), np.float32)
    text = np.zeros((n, dim), np.float32)
    seen = np.zeros(n, bool)

    from wit.trainer.eval.datasets import read_bytes

    def prepare(item):
        row, data = item
        try:
            return row, preprocess(read_bytes(data))
        except Exception:  # noqa: BLE001 - PIL raises many kinds on bad bytes: the row gets a reason
            return row, None

    decode = ThreadPoolExecutor(job.threads) if torch.device(job.device).type == "cuda" else None
    batch: list[tuple[int, bytes]] = []

    def flush():
        done = list(decode.map(prepare, batch) if decode else map(prepare, batch))
        good = [(row, px) for row, px in done if px is not None]
        for row, px in done:
            if px is None:
                reasons[row] = "decode_error"
        if good:
            pixels = torch.stack([px for _, px in good]).to(job.device)
            with torch.no_grad(), _autocast(job.device, job.precision):
                emb = F.normalize(net.encode_image(pixels).float(), dim=-1).cpu().numpy()
            image[[row for row, _ in good]] = emb
        batch.clear()

    samples = fasttar.ManifestSamples(join(job.shards, f"{job.shard}.tar"))
    for key, sample in samples if row_of else ():
        row = row_of.get(key)
        if row is None or seen[row]:
            continue
        seen[row] = True
        data = fasttar.image_of(sample)
        if data is None:
            reasons[row] = "no_image"
            continue
        batch.append((row, data))
        if len(batch) == job.batch_size:
            flush()
    if batch:
        flush()
    for i in row_of.values():
        if not seen[i]:
            reasons[i] = samples.missing
    todo = [i for i in range(n) if reasons[i] is None]
    for start in range(0, len(todo), job.batch_size):
        rows = todo[start:start + job.batch_size]
        tokens = tokenizer([captions[i] or "" for i in rows]).to(job.device)
        with torch.no_grad(), _autocast(job.device, job.precision):
            text[rows] = F.normalize(net.encode_text(tokens).float(), dim=-1).cpu().numpy()
    has = np.array([r is None for r in reasons], bool)
    score = np.einsum("nd,nd->n", image, text)
    table = embedding_table(uids, image, text, score, has, reasons, dim, job.fingerprint)
    write_parquet(join(job.out, f"{job.shard}.parquet"), table)
    if decode:
        decode.shutdown()
    return {"shard": job.shard, "rows": n, "embedded": int(has.sum()), "seconds": time.perf_counter() - started}


def embedding_table(uids, image, text, score, has, reasons, dim: int, fingerprint: str) -> pa.Table:
    """The embedding file's table: vectors and score null where the row has a reason."""
    mask = pa.array(~has)

    def vectors(a: np.ndarray) -> pa.Array:
        flat = pa.array(a.reshape(-1), pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)

    schema = embedding_schema(dim).with_metadata({EMBED_MODEL_KEY: fingerprint.encode()})
    return pa.table({"uid": pa.array(uids, pa.string()), "image": vectors(image), "text": vectors(text),
                     "clip_score": pa.array(score.astype(np.float32), mask=~has), "reason": pa.array(reasons, pa.string())},
                    schema=schema)


# ---------------------------------------------------------------------------------------------- the command
def _ranks() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def run_embed(cfg: EmbedConfig) -> dict:
    """Check the model once, write the plan (every shard the folder will hold), then embed the shards not done."""
    from wit.trainer.eval.model import pick_device

    cfg = replace(cfg, shards=absolute(cfg.shards), out=absolute(cfg.out))
    if cfg.shards.rstrip("/") == cfg.out.rstrip("/"):
        raise WitError(f"{cfg.out}: the embeddings would overwrite the shards' manifests; choose another --out")
    rank, world, local = _ranks()
    device = pick_device(cfg.device)
    if device == "cuda" and world > 1:
        device = f"cuda:{local}"
    names = shard_names(cfg.shards)
    if not names:
        raise WitError(f"{cfg.shards}: no finished shards (<shard>_stats.json) here")
    net, _, _ = model_for(cfg.model, cfg.checkpoint, device)
    name = cfg.model or _recorded_name(cfg.checkpoint)
    plan = {"shards": names, "model": name, "checkpoint": cfg.checkpoint, "fingerprint": fingerprint(name, net),
            "dim": width(name), "source": cfg.shards}
    plan_url = join(cfg.out, EMBED_PLAN)
    if rank == 0:
        if exists(plan_url) and read_json(plan_url).get("fingerprint") != plan["fingerprint"]:
            old = read_json(plan_url)
            raise WitError(f"{cfg.out}: holds embeddings of another model ({old.get('model')} from "
                           f"{old.get('checkpoint')}); choose another --out")
        write_json_atomic(plan_url, plan)
    cuda = torch.device(device).type == "cuda"
    workers = cfg.workers or (1 if cuda else default_workers())
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun's ranks on this node share its cores
    threads = min(8, os.cpu_count() or 1) if cuda else max(1, default_workers() // (workers * local_world))
    jobs = [EmbedJob(cfg.shards, cfg.out, s, name, cfg.checkpoint, plan["fingerprint"], device, cfg.batch_size,
                     cfg.precision, threads) for s in names]
    if world > 1:  # torchrun: disjoint shards per rank, each on its own device, no communication until the end
        results = [embed_shard(j) for j in jobs[rank::world]]
        results = _gather_results(results, world)
    else:
        results = run_map(embed_shard, jobs, engine=cfg.engine, workers=workers, ray_address=cfg.ray_address)
    summary = {"shards": len(names), "skipped": sum(bool(r.get("skipped")) for r in results),
               "rows": sum(r.get("rows", 0) for r in results), "embedded": sum(r.get("embedded", 0) for r in results),
               "model": name, "dim": plan["dim"], "device": device, "ranks": world}
    if rank == 0:
        write_json_atomic(join(cfg.out, "_wit", "embed_summary.json"), summary)
    return summary


def _recorded_name(checkpoint: str) -> str:
    from wit.trainer.eval.model import read_checkpoint, split_checkpoint

    return split_checkpoint(read_checkpoint(checkpoint))[1]


def _gather_results(results: list[dict], world: int) -> list[dict]:
    """Every rank's results on every rank (gloo: no GPU memory used), after all ranks have finished."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    box: list = [None] * world
    dist.all_gather_object(box, results)
    return [r for part in box for r in part]


def main(argv: list[str] | None = None) -> int:
    """torchrun's entry point: `torchrun --nproc_per_node N -m wit.trainer.embed SHARDS --out ... --checkpoint ...`."""
    from wit.trainer.train import rank_main

    return rank_main("wit embed", __doc__.splitlines()[0], EmbedConfig, _embed_and_show, argv)


def _embed_and_show(cfg: EmbedConfig) -> int:
    summary = run_embed(cfg)
    if _ranks()[0] == 0:
        print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
