"""Train CLIP on WebDataset shards: `torchrun --nproc_per_node N -m wit.trainer.train --data ... [--flags]`.

One process per device; DDP over NCCL on GPUs, gloo on CPU. Read top to bottom: setup, resume, the loop.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import open_clip
import torch
import torch.distributed as dist

from wit.shards import lineage as lineage_records
from wit.shards.options import add_arguments, from_args
from wit.shards.progress import bar as progress_bar
from wit.shards.storage import WitError, check_bucket
from wit.trainer import checkpoint
from wit.trainer.config import TrainConfig
from wit.trainer.data import ShardLoader, resolve_shards
from wit.trainer.gpu_decode import DeviceBatches, choose_decode, prepared_ahead
from wit.trainer.lineage import Lineage, shard_versions
from wit.trainer.loss import LOSSES, MAX_LOGIT_SCALE, clip_loss, model_kwargs

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIGS)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine to zero at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule_note(state: dict, cfg: TrainConfig, step: int) -> str:
    """What resuming with another --steps does to the learning rate, said once: lr_at is a pure function of the step
    and the total, so the run goes on along the new total's cosine from this step (a longer run: back up from where
    the old cosine had come down to, then down to zero at the new total)."""
    config = state.get("config")
    then = config.get("steps") if isinstance(config, dict) else None
    if not isinstance(then, int) or then == cfg.steps:
        return ""
    old = lr_at(step, dataclasses.replace(cfg, steps=then))
    return (f"; --steps {then} -> {cfg.steps}: the learning rate follows the cosine to step {cfg.steps} "
            f"(at step {step}: {lr_at(step, cfg):.2e}, {old:.2e} on the old one)")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on gains, biases, embedding vectors or the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def setup_distributed() -> tuple[int, int, torch.device]:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def fast_cuda_math(device: torch.device) -> None:
    """On CUDA, what open_clip_train sets (so that the two compare fairly): cuDNN times its kernels for each input
    shape once and keeps the fastest (the shapes never change here), and float32 matrix products and convolutions
    (what bf16 autocast leaves in float32, and the device path's crop-resize) may use TF32 tensor cores."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_threads(workers: int) -> int:
    """torch's intra-op threads: the cores left to this rank after its loader workers, at least one, unless
    OMP_NUM_THREADS says otherwise. torch's default, a thread per core, oversubscribes the cores together with the
    workers, and when other jobs share them each op's threads spin waiting for one another's turn: 10x slower per
    step on a loaded 2-core machine (bench/README.md, "Training on a shared machine")."""
    if "OMP_NUM_THREADS" not in os.environ:
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks_here - workers))
    return torch.get_num_threads()


def on_rank0(fn, rank: int, world: int):
    """fn() run on rank 0 alone, its result (or its WitError) sent to every rank, so that all ranks agree."""
    if world == 1:
        return fn()
    box = [None]
    if rank == 0:
        try:
            box = [fn()]
        except WitError as err:
            box = [err]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], WitError):
        raise box[0]
    return box[0]


def all_sum(values: list[float], device, group=None) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, group=group)
    return t.tolist()


def find_resume(cfg: TrainConfig, rank: int, world: int) -> tuple[str | None, dict | None]:
    """(url, state) of the checkpoint to resume from, or (None, None) for a fresh run. For `--resume latest` rank 0
    picks the newest readable checkpoint, saying which unreadable newer ones it skipped, and every rank takes that
    one; a named file that is unreadable, or a checkpoint of another model, is an error."""
    url, state = cfg.resume or None, None
    if cfg.resume == "latest":
        def newest() -> str | None:
            nonlocal state
            url, state = checkpoint.load_latest(cfg.ckpt_dir, warn=skipping) or (None, None)
            return url
        url = on_rank0(newest, rank, world)
    if url and state is None:
        state = checkpoint.load(url)
    config = state.get("config") if state else None
    recorded = config.get("model") if isinstance(config, dict) else None
    if recorded and recorded != cfg.model:
        raise WitError(f"{url}: a checkpoint of --model {recorded}, but this run has --model {cfg.model}")
    return url, state


def refuse_another_run(cfg: TrainConfig) -> None:
    """A fresh run needs folders of its own: in one that holds another run's checkpoints or log, it would overwrite
    some of that run's steps, leave its later ones beside its own (which `--resume latest` and `wit eval` would then
    take) and append to its log."""
    steps = checkpoint.list_steps(cfg.ckpt_dir)
    if steps:
        names = steps[0].rsplit("/", 1)[-1] + (f" .. {steps[-1].rsplit('/', 1)[-1]}" if len(steps) > 1 else "")
        raise WitError(f"{cfg.ckpt_dir}: holds checkpoints of another run ({names}); continue it with --resume "
                       "latest, or start this one in a new --out (or --ckpt)")
    log = Path(cfg.out) / "log.jsonl"
    if log.exists() and log.stat().st_size:
        raise WitError(f"{cfg.out}: holds another run (its log.jsonl); continue it with --resume latest, or start "
                       "this one in a new --out")


def skipping(message: str) -> None:
    print(f"wit train: warning: {message}; trying the one before", file=sys.stderr, flush=True)


def restore(url: str, state: dict, rank: int, model, optimizer, loader) -> tuple[int, int]:
    """Put a checkpoint into this run; (step, samples seen). One that does not fit is an error naming the file."""
    try:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        checkpoint.set_rng_state(state["rng"][rank])
    except WitError as err:
        raise WitError(f"{url}: {err}") from None
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise WitError(f"{url}: does not fit this run ({checkpoint.reason(err)})") from None
    return state["step"], state["samples_seen"]


def train(cfg: TrainConfig) -> int:
    if not cfg.data:
        raise WitError("--data: no shards given (a brace pattern or an index .json)")
    if cfg.accum < 1 or cfg.batch_size % cfg.accum:
        raise WitError(f"--accum {cfg.accum}: must divide --batch-size {cfg.batch_size}")
    # s3fs sends its requests from an asyncio loop of its own: when an endpoint dies mid-upload, aiohttp's orphaned
    # write task is logged there with a traceback, beside the error that reaches the caller (reported in one line)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    rank, world, device = setup_distributed()
    fast_cuda_math(device)
    cpu_group = dist.new_group(backend="gloo") if world > 1 and device.type == "cuda" else None  # sums w/o the GPU
    threads = set_threads(cfg.workers)
    # Rank 0 lists (or reads the index of) the shards and tells the others; fail early on bad data, before building
    # the model, and on a bad checkpoint
    shards = on_rank0(lambda: resolve_shards(cfg.data), rank, world)
    versions = on_rank0(lambda: shard_versions(cfg.data, *shards), rank, world)  # the lineage's names and hashes
    on_rank0(lambda: check_bucket(cfg.ckpt_dir), rank, world)  # before anything is written there
    if not cfg.resume:
        on_rank0(lambda: refuse_another_run(cfg), rank, world)
    resume, state = find_resume(cfg, rank, world)
    torch.manual_seed(cfg.seed)
    logging.disable(logging.WARNING)  # open_clip warns that it loads no pretrained weights: a fresh run has none
    try:
        model = open_clip.create_model(cfg.model, device=device, **model_kwargs(cfg.loss))
    finally:
        logging.disable(logging.NOTSET)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN, device=device)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD, device=device)
    decode, why = choose_decode(cfg.decode, device)  # auto: the device only once its JPEG self-test passed
    loader = ShardLoader(cfg.data, batch_size=cfg.batch_size, image_size=size, rank=rank, world=world,
                         tokenizer=open_clip.get_tokenizer(cfg.model), workers=cfg.workers, seed=cfg.seed,
                         window=cfg.window, resampled=cfg.resampled, shards=shards, jpeg_bytes=decode == "gpu",
                         online_balance=cfg.online_balance)
    prepare = DeviceBatches(size, mean, std, device, decode_on_device=decode == "gpu", channels_last=cfg.channels_last)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  eps=cfg.eps, fused=device.type == "cuda")  # fused: one kernel for all parameters
    lineage = Lineage(loader, cfg.window, cfg.data, versions)
    changed = lineage.resume(state) if resume else ""  # a changed corpus: said in one line, then re-planned
    step, samples_seen = restore(resume, state, rank, model, optimizer, loader) if resume else (0, 0)
    note = schedule_note(state, cfg, step) if resume else ""
    del state  # the checkpoint's tensors are in the model and optimizer now

    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    forward = torch.compile(ddp) if cfg.compile else ddp
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / "config.json").write_text(cfg.to_json() + "\n")
        print(f"wit train: {world} x {device.type} ({threads} threads, {cfg.workers} loader workers each, "
              f"decode on {decode}: {why}), "
              f"{sum(loader.counts)} samples in {len(loader.urls)} shards, "
              f"{loader.steps_per_epoch} steps/epoch; config in {out / 'config.json'}", flush=True)
        print(f"wit train: {'resuming from ' + resume if resume else 'starting fresh'} at step {step}{note}", flush=True)
        if changed:
            print(f"wit train: {changed}", flush=True)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    samples_log = open(out / f"samples-rank{rank}.jsonl", "a") if cfg.log_samples else None
    board = tensorboard_writer(out) if rank == 0 and cfg.tensorboard else None
    evaluation = training_eval(cfg, rank, world, device, out)
    bar = progress_bar(total=cfg.steps, initial=step, desc="train", unit="step", disable=rank != 0)

    batches, last_save, started = prepared_ahead(iter(loader), prepare), time.monotonic(), time.perf_counter()
    interval = new_interval()
    bad_shards: dict[str, str] = {}  # url -> how it is short of its count; tolerated up to --max-bad-shards
    while step < cfg.steps:
        t = time.perf_counter()
        batch, (images, texts, valid) = next(batches)
        interval["wait"] += time.perf_counter() - t
        usable = usable_samples(batch, bad_shards, cfg, step, rank, world, cpu_group)
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(forward, ddp, images, texts, valid, cfg.accum, autocast, LOSSES[cfg.loss])
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step += 1
        samples_seen += usable  # trained on: not the masked slots
        bar.update()

        interval["loss"] += loss  # a tensor: no device sync until the log line
        interval["steps"] += 1
        interval["skipped"] += len(batch["skipped"])
        if samples_log:
            samples_log.write(json.dumps({"step": step - 1, "epoch": batch["epoch"], "keys": batch["keys"],
                                         "skipped": batch["skipped"], "loss": loss.item()}) + "\n")
            samples_log.flush()
        save_now = (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0) or step == cfg.steps
        if step % cfg.log_every == 0 or step == cfg.steps:
            due = rank == 0 and cfg.ckpt_minutes > 0 and time.monotonic() - last_save > cfg.ckpt_minutes * 60
            decoded = prepare.decoder.take_counts() if decode == "gpu" else {}  # where the images were decoded
            loss_sum, wait, skipped, due, *counts = all_sum([float(interval["loss"]), interval["wait"],
                                                             interval["skipped"], float(due), *decoded.values()],
                                                            device)  # rank 0's clock decides for all
            save_now = save_now or due > 0
            elapsed = time.perf_counter() - interval["t0"]
            n = interval["steps"]
            record = {"step": step, "epoch": batch["epoch"], "time": time.time(), "interval_s": elapsed,
                      "loss": loss_sum / n / world, "lr": lr,
                      "temperature": 1 / model.logit_scale.exp().item(), "logit_scale": model.logit_scale.exp().item(),
                      "samples_per_s": n * world * cfg.batch_size / elapsed,
                      "samples_per_s_per_device": n * cfg.batch_size / elapsed,
                      "data_wait": wait / world / elapsed, "skipped": int(skipped), "bad_shards": len(bad_shards),
                      "samples_seen": samples_seen, "checkpoint_s": interval["saving"],
                      **{f"decode_{kind}": int(count) for kind, count in zip(decoded, counts)}}
            if rank == 0:
                log.write(json.dumps(record) + "\n")
                log.flush()
                if board:  # the same scalars, for TensorBoard
                    for name in record.keys() - {"step", "time"}:
                        board.add_scalar(f"train/{name}", record[name], step)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", sps=f"{record['samples_per_s']:.0f}")
                bar.write(log_line(record))  # stdout, above the bar (which is on stderr)
            interval = new_interval()
        if save_now:
            saving = time.perf_counter()
            position = loader.state_dict(after=batch)
            save(cfg, rank, world, model, optimizer, position, step, samples_seen,
                 lineage.record(position) if rank == 0 else None)
            last_save = time.monotonic()
            spent = time.perf_counter() - saving
            interval["saving"] += spent  # logged as checkpoint_s with the next line
            interval["t0"] += spent  # so that its samples/s counts training time, not the saving
        if evaluation:
            evaluation.maybe_run(model, step, final=step == cfg.steps, log=log, board=board, bar=bar)

    bar.close()
    if board:
        board.close()
    if rank == 0:
        print(f"wit train: done at step {step} ({samples_seen:,} samples seen) in {time.perf_counter() - started:.0f} s; "
              f"checkpoints in {cfg.ckpt_dir}, log in {out / 'log.jsonl'}", flush=True)
    return 0


def new_interval() -> dict:
    """What a log line sums over its steps; t0 is when they began, moved on by the time spent saving checkpoints."""
    return {"loss": 0.0, "steps": 0, "wait": 0.0, "skipped": 0, "saving": 0.0, "t0": time.perf_counter()}


def usable_samples(batch: dict, bad_shards: dict[str, str], cfg: TrainConfig, step: int, rank: int, world: int,
                   group) -> int:
    """The number of usable samples in the global batch, once it passes the checks that stop every rank at the same
    step: no more than --max-bad-shards shards holding fewer samples than their count (the loader's `short_shards`),
    and a usable sample at all (on none, AdamW would still move the weights by momentum and decay). One sum per step
    on the CPU (`group`: gloo beside NCCL), so it does not wait for the device."""
    new = {url: why for url, why in batch["short_shards"].items() if url not in bad_shards}
    usable, news = all_sum([int(batch["valid"].sum()), len(new)], torch.device("cpu"), group)
    if news:  # rare: every rank learns every new short shard, so all ranks count alike
        gathered = [None] * world
        if world > 1:
            dist.all_gather_object(gathered, new, group=group)
        else:
            gathered = [new]
        for url, why in (item for shards in gathered for item in shards.items()):
            if url in bad_shards:
                continue  # found by two ranks at once
            bad_shards[url] = why
            if len(bad_shards) > cfg.max_bad_shards:
                raise WitError(f"{why} (step {step + 1}: more than --max-bad-shards {cfg.max_bad_shards} such shards)")
            if rank == 0:
                print(f"wit train: warning: {why}; its missing samples are masked ({len(bad_shards)} of "
                      f"--max-bad-shards {cfg.max_bad_shards})", file=sys.stderr, flush=True)
    if usable == 0:
        raise WitError(f"step {step + 1}: none of the {world * cfg.batch_size} samples of the batch is usable "
                       f"({batch['skipped'][0]}); nothing to train on")
    return int(usable)


def log_line(r: dict) -> str:
    return (f"step {r['step']} epoch {r['epoch']}  loss {r['loss']:.4f}  temperature {r['temperature']:.4f}  "
            f"lr {r['lr']:.2e}  {r['samples_per_s']:.0f} samples/s ({r['samples_per_s_per_device']:.0f}/device)  "
            f"data wait {r['data_wait']:.0%}  skipped {r['skipped']}")


def training_eval(cfg: TrainConfig, rank: int, world: int, device, out: Path):
    """The evaluator of --eval-tasks (trainer/eval/in_training.py), or None."""
    if not cfg.eval_tasks:
        if cfg.eval_every:
            raise WitError("--eval-every: needs --eval-tasks (a task list)")
        return None
    from wit.trainer.eval.in_training import TrainingEval
    return TrainingEval(cfg, rank, world, device, out)


def tensorboard_writer(out: Path):
    """A SummaryWriter on <out>/tensorboard (imported here: tensorboard is slow to import and only rank 0 needs it)."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out / "tensorboard"), flush_secs=10)


def forward_backward(forward, ddp, images, texts, valid, accum: int, autocast, objective=clip_loss) -> torch.Tensor:
    """Loss and gradients of the whole batch. With accum > 1, feature-cached accumulation: features of all
    micro-batches first without gradients, then each micro-batch again with gradients against the cached rest.
    Activations of one micro-batch at a time; the same gradients as one pass over the whole batch."""
    if accum == 1:
        with autocast:
            image_features, text_features, *temperature = forward(images, texts)  # scale (and SigLIP's bias)
        loss = objective(image_features.float(), text_features.float(), *(x.float() for x in temperature), valid)
        loss.backward()
        return loss.detach()
    chunks = list(zip(images.chunk(accum), texts.chunk(accum)))
    with torch.no_grad(), autocast:
        cached = [forward(i, t)[:2] for i, t in chunks]
    no_sync = getattr(ddp, "no_sync", None)  # DDP: reduce gradients once, after the last micro-batch
    for k, (i, t) in enumerate(chunks):
        last = k == accum - 1
        with no_sync() if no_sync and not last else contextlib.nullcontext():
            with autocast:
                image_k, text_k, *temperature = forward(i, t)
            if not last:  # the temperature's gradient once (in the last pass), not once per micro-batch
                temperature = [x.detach() for x in temperature]
            image = torch.cat([c[0] for c in cached[:k]] + [image_k] + [c[0] for c in cached[k + 1:]])
            text = torch.cat([c[1] for c in cached[:k]] + [text_k] + [c[1] for c in cached[k + 1:]])
            loss = objective(image.float(), text.float(), *(x.float() for x in temperature), valid)
            loss.backward()
    return loss.detach()


def save(cfg, rank, world, model, optimizer, loader_state: dict, step, samples_seen,
         lineage: dict | None = None) -> None:
    """Rank 0 writes one file, every rank's RNG state in it, and its lineage (what it read) in it and beside it.
    Every rank waits for it (nobody runs ahead of a checkpoint that may be needed to resume) and stops with rank 0's
    error when it could not be written."""
    rngs = [None] * world
    if world > 1:
        dist.all_gather_object(rngs, checkpoint.rng_state())
    else:
        rngs = [checkpoint.rng_state()]

    def write():
        state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "samples_seen": samples_seen, "rng": rngs, "loader": loader_state,
                 "config": json.loads(cfg.to_json()), "lineage": lineage}
        url = checkpoint.save(cfg.ckpt_dir, step, state, cfg.keep)
        try:
            lineage_records.write(cfg.ckpt_dir, step, lineage)
        except Exception as err:  # noqa: BLE001 - storage errors of every kind, as checkpoint.save says them
            raise WitError(f"{url} written, but not the lineage record beside it ({checkpoint.reason(err)}); "
                           "--resume latest continues from it (its lineage is inside it too)") from None
    on_rank0(write, rank, world)


def main(argv: list[str] | None = None) -> int:
    return rank_main("wit train", __doc__.splitlines()[0], TrainConfig, train, argv)


def rank_main(prog: str, description: str, config_class, run, argv: list[str] | None) -> int:
    """The entry point of a torchrun rank (`-m wit.trainer.train` or `-m wit.trainer.embed` with a command's flags,
    what `wit train|embed --nproc N` starts): the flags into the config, `run` on it (its exit status), a WitError
    as one line, and the process group ended whatever happened."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, config_class)
    try:
        return run(from_args(config_class, parser.parse_args(argv)))
    except WitError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
