"""Streaming loader of img2dataset-layout shards (local or s3://) that reads each sample once per epoch.

The epoch is a plan, a pure function of (shard counts, seed, epoch, world, workers, batch size):
  1. shuffle the shard order and lay all samples end to end;
  2. rank r takes the r-th run of `steps * batch` samples (the tail, less than one global batch, waits for a
     later epoch, which shuffles differently);
  3. the rank's batch j is built by loader worker j % W, and each worker reads one contiguous segment of sample
     slices (shard, start, stop), so shards fewer than ranks x workers and uneven shards need no special case;
  4. a worker shuffles its segment in windows of `window` samples, each window with its own seeded permutation,
     and each sample's crop is drawn from its own seeded RNG.
So a position (epoch, batches consumed) is the whole loader state: a resumed loader rebuilds the same batches.
Resampled mode (open_clip's --dataset-resampled) replaces steps 1-3: each (rank, worker) fills its segment with whole
shards drawn uniformly with replacement, seeded by (seed, epoch, rank, worker); an "epoch" is then just a step count.
A sample that cannot be used (truncated tar, bad image, no caption) keeps its slot with valid=False and is
reported in the batch's `skipped` list; the loss masks the slot, so every rank keeps the same batch shape.
"""
from __future__ import annotations

import io
import math
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wit.shards import fasttar
from wit.shards.storage import WitError, expand, join, read_json

SCALE, RATIO = (0.9, 1.0), (3 / 4, 4 / 3)  # open_clip's training RandomResizedCrop


# ---------------------------------------------------------------------------------------------- shard counts
def resolve_shards(spec: str) -> tuple[list[str], list[int]]:
    """Shard URLs and sample counts from an index (`.../index.json`: {"shards": {"00000.tar": n}}) or a brace
    pattern (`s3://b/{00000..00099}.tar`), counted from tar headers."""
    if spec.endswith(".json"):
        index = read_json(spec)
        if not isinstance(index, dict) or not isinstance(index.get("shards"), dict):
            raise WitError(f'{spec}: not a shard index (expected {{"shards": {{"00000.tar": count, ...}}}})')
        base = spec.rsplit("/", 1)[0] if "/" in spec else "."
        names = sorted(index["shards"])
        return [name if "://" in name else join(base, name) for name in names], [int(index["shards"][n]) for n in names]
    if spec.startswith("pipe:"):
        raise WitError(f"{spec}: pipe: shard URLs are refused (they run shell commands)")
    urls = expand(spec)
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(_count_or_zero, urls))
    return urls, counts


def _count_or_zero(url: str) -> int:
    for attempt in range(3):
        try:
            return fasttar.count_samples(url, strict=True)
        except fasttar.TarMissing:
            raise WitError(f"{url}: shard not found") from None
        except fasttar.Truncated as err:  # the samples it lists are used; the rest are reported, not silently gone
            print(f"wit train: warning: {err}; the samples after that are not in the epoch", file=sys.stderr)
            return err.count
        except Exception as err:  # unreadable shard: reported, counted as empty
            if attempt == 2:
                print(f"wit train: warning: {url}: unreadable shard, 0 samples ({type(err).__name__}: {err})",
                      file=sys.stderr)
            time.sleep(0.2 * (attempt + 1))
    return 0


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    counts: tuple[int, ...]
    seed: int
    epoch: int
    world: int
    workers: int  # logical loader workers per rank (>= 1)
    batch: int  # per rank
    resampled: bool = False  # segments of shards drawn with replacement instead of the exact-once order

    @property
    def steps(self) -> int:
        return sum(self.counts) // (self.world * self.batch)

    def batches_of(self, worker: int) -> range:
        """Indices j (within the epoch) of the batches this worker builds."""
        return range(worker, self.steps, self.workers)

    def segment(self, rank: int, worker: int) -> list[tuple[int, int, int]]:
        """The (shard, start, stop) slices this (rank, worker) reads, in order."""
        if self.resampled:
            return self.resampled_segment(rank, worker)
        first = rank * self.steps * self.batch + sum(len(self.batches_of(w)) for w in range(worker)) * self.batch
        last = first + len(self.batches_of(worker)) * self.batch
        order = list(range(len(self.counts)))
        random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(order)
        slices, offset = [], 0
        for shard in order:
            lo, hi = max(first, offset), min(last, offset + self.counts[shard])
            if lo < hi:
                slices.append((shard, lo - offset, hi - offset))
            offset += self.counts[shard]
        return slices

    def resampled_segment(self, rank: int, worker: int) -> list[tuple[int, int, int]]:
        """Whole non-empty shards drawn uniformly with replacement until the worker's batches are filled."""
        rng = random.Random(f"resample-{self.seed}-{self.epoch}-{rank}-{worker}")
        shards = [s for s, n in enumerate(self.counts) if n > 0]
        need, slices = len(self.batches_of(worker)) * self.batch, []
        while need > 0:
            shard = rng.choice(shards)
            take = min(need, self.counts[shard])
            slices.append((shard, 0, take))
            need -= take
        return slices


def window_of(slices: list[tuple[int, int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """(shard, index) of positions lo..hi-1 of a segment given as slices (never the whole segment in memory)."""
    out, offset = [], 0
    for shard, a, b in slices:
        start, stop = max(lo, offset), min(hi, offset + b - a)
        out += [(shard, a + p - offset) for p in range(start, stop)]
        offset += b - a
    return out


# ---------------------------------------------------------------------------------------------- decoding
def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (scale, ratio as open_clip's train transform), drawn from `rng`."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    w, h = width, height  # fallback: the largest centred crop within the ratio range
    if w / h < RATIO[0]:
        h = round(w / RATIO[0])
    elif w / h > RATIO[1]:
        w = round(h * RATIO[1])
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode_image(data: bytes, size: int, rng: random.Random, out: torch.Tensor | None = None) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 [3, size, size] (into `out` when given): decode at reduced size when the image is
    larger than needed (PIL draft), crop, and resize with torch's uint8 antialiased bicubic (3x PIL's speed here;
    within a few levels of PIL's bicubic, which open_clip's transform uses)."""
    img = Image.open(io.BytesIO(data))
    need = math.ceil(size / math.sqrt(SCALE[0] / RATIO[1]))  # the smallest crop side must still cover `size`
    img.draft("RGB", (need, need))
    img = img.convert("RGB")
    left, top, right, bottom = crop_box(*img.size, rng)
    pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None, :, top:bottom, left:right]
    resized = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)[0]
    if out is None:
        return resized
    out.copy_(resized)
    return out


def caption_of(sample: dict[str, bytes]) -> str:
    text = sample.get("txt", b"").decode("utf-8").strip()
    if not text:
        raise ValueError("missing caption")
    return text


# ---------------------------------------------------------------------------------------------- one epoch
class EpochStream(torch.utils.data.IterableDataset):
    """One rank's batches of one epoch, from batch `start` on; run by DataLoader workers (or in-process)."""

    def __init__(self, urls, plan: Plan, rank: int, start: int, image_size: int, tokenizer, window: int):
        self.urls, self.plan, self.rank, self.start = urls, plan, rank, start
        self.image_size, self.tokenizer, self.window = image_size, tokenizer, window
        self._readers = {}  # worker -> (shard, next index, open sample iterator) of the tar it is reading

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        W = self.plan.workers
        if info is None:  # in-process: merge all logical workers round robin, as DataLoader does
            streams = [self.worker_batches((self.start + p) % W) for p in range(W)]
            while streams:
                for s in list(streams):
                    try:
                        yield next(s)
                    except StopIteration:
                        streams.remove(s)
        else:  # DataLoader asks physical workers round robin; rotate so that worker 0 builds batch `start`
            assert info.num_workers == W, "loader workers must equal the plan's workers"
            yield from self.worker_batches((self.start + info.id) % W)

    def worker_batches(self, worker: int):
        plan, B = self.plan, self.plan.batch
        batches = [j for j in plan.batches_of(worker) if j >= self.start]
        if not batches:
            return
        position = (len(plan.batches_of(worker)) - len(batches)) * B  # samples of the segment already consumed
        slots = self.slots(worker, position)
        for j in batches:
            yield self.collate(j, [next(slots) for _ in range(B)])

    def slots(self, worker: int, position: int):
        """The worker's segment as (key, sample or error, rng) slots, window-shuffled, from `position` on."""
        plan = self.plan
        slices = plan.segment(self.rank, worker)
        starts = range(position - position % self.window, sum(b - a for _, a, b in slices), self.window)
        windows = (window_of(slices, w0, w0 + self.window) for w0 in starts)
        with ThreadPoolExecutor(1) as pool:  # read-ahead: the next window is read while this one is decoded
            ahead = pool.submit(self.read, next(windows, []), worker)
            for w0 in starts:
                window, raw = ahead.result()
                ahead = pool.submit(self.read, next(windows, []), worker)
                yield from self.shuffled(window, raw, worker, w0, position)

    def shuffled(self, window, raw, worker: int, w0: int, position: int):
        """A window's slots in its own seeded order, skipping those before `position`."""
        plan = self.plan
        order = list(range(len(window)))
        random.Random(f"window-{plan.seed}-{plan.epoch}-{self.rank}-{worker}-{w0}").shuffle(order)
        for k in order[max(0, position - w0):]:
            shard, i = window[k]
            key, sample = raw[shard, i]
            slot = f"-{self.rank}-{worker}-{w0 + k}" if plan.resampled else ""  # a repeated sample gets a new crop
            yield key, sample, random.Random(f"crop-{plan.seed}-{plan.epoch}-{shard}-{i}{slot}")

    def read(self, window, worker: int):
        """(window, raw samples of its (shard, index) pairs); runs of one shard are read in one pass."""
        out, runs = {}, {}
        for shard, i in window:
            runs.setdefault(shard, []).append(i)
        for shard, idx in runs.items():
            lo, hi = min(idx), max(idx) + 1
            got = self.read_slice(shard, lo, hi, worker)
            for i in idx:
                out[shard, i] = got.get(i, (f"{shard}:{i}", EOFError("sample missing (truncated shard?)")))
        return window, out

    def read_slice(self, shard: int, lo: int, hi: int, worker: int) -> dict:
        """Samples lo..hi-1 of a shard. Windows read a segment in order, so the open tar carries on from one
        window to the next instead of listing the shard's headers again (on S3, re-reading it)."""
        got, err = {}, None
        for attempt in range(3):
            try:
                state = self._readers.get(worker)
                if state is None or state[:2] != (shard, lo + len(got)):
                    state = (shard, lo + len(got), fasttar.slice_samples(self.urls[shard], lo + len(got)))
                reader = state[2]
                while lo + len(got) < hi:
                    item = next(reader, None)
                    if item is None:  # the shard ended early (truncated)
                        break
                    got[lo + len(got)] = item
                self._readers[worker] = (shard, lo + len(got), reader)
                return got
            except Exception as e:  # transient storage errors: reopen and go on from where we were
                self._readers[worker], err = None, e
                time.sleep(0.2 * (attempt + 1))
        print(f"wit train: warning: {self.urls[shard]}: read failed after 3 tries ({type(err).__name__}: {err})",
              file=sys.stderr)
        return got

    def collate(self, j: int, slots) -> dict:
        size = self.image_size
        images = torch.zeros(len(slots), 3, size, size, dtype=torch.uint8)
        texts, keys, valid, skipped = [], [], [], []
        for n, (key, sample, rng) in enumerate(slots):
            try:
                if isinstance(sample, Exception):
                    raise sample
                image = fasttar.image_of(sample)
                if image is None:
                    raise ValueError("missing image")
                text = caption_of(sample)
                decode_image(image, size, rng, out=images[n])
                texts.append(text), keys.append(key), valid.append(True)
            except Exception as err:
                texts.append(""), keys.append(key), valid.append(False)
                skipped.append(f"{key}: {type(err).__name__}: {err}")
        return {"images": images, "texts": self.tokenizer(texts), "valid": torch.tensor(valid),
                "keys": keys, "skipped": skipped, "epoch": self.plan.epoch, "step": j}


# ---------------------------------------------------------------------------------------------- the loader
class ShardLoader:
    """Endless iterator of one rank's batches, epoch after epoch; `state_dict()` is its exact position."""

    def __init__(self, spec: str, *, batch_size: int, image_size: int, tokenizer, rank: int = 0, world: int = 1,
                 workers: int = 2, seed: int = 0, window: int = 1000, resampled: bool = False,
                 shards: tuple[list, list] | None = None):
        self.urls, self.counts = shards or resolve_shards(spec)  # `shards`: (urls, counts) resolved already
        self.batch_size, self.image_size, self.tokenizer = batch_size, image_size, tokenizer
        self.rank, self.world, self.workers, self.seed, self.window = rank, world, workers, seed, window
        self.resampled = resampled
        self.epoch, self.step = 0, 0
        if self.plan(0).steps == 0:
            raise WitError(f"{spec}: {sum(self.counts)} samples in {len(self.urls)} shards, fewer than one global "
                           f"batch ({world} ranks x {batch_size})")

    def plan(self, epoch: int) -> Plan:
        return Plan(tuple(self.counts), self.seed, epoch, self.world, max(1, self.workers), self.batch_size,
                    self.resampled)

    @property
    def steps_per_epoch(self) -> int:
        return self.plan(0).steps

    def __iter__(self):
        while True:
            stream = EpochStream(self.urls, self.plan(self.epoch), self.rank, self.step, self.image_size,
                                 self.tokenizer, self.window)
            loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.workers,
                                                 prefetch_factor=4 if self.workers else None,
                                                 pin_memory=torch.cuda.is_available())
            for batch in loader:
                assert (batch["epoch"], batch["step"]) == (self.epoch, self.step), "loader out of order"
                self.step += 1
                yield batch
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        plan = self.plan(self.epoch)
        positions = [sum(1 for j in plan.batches_of(w) if j < self.step) * self.batch_size for w in range(plan.workers)]
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "world": self.world,
                "workers": plan.workers, "batch_size": self.batch_size, "counts": list(self.counts),
                "resampled": self.resampled,
                "worker_positions": positions}  # samples each worker has delivered this epoch (for reading)

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        state = {"resampled": False, **state}  # checkpoints from before resampled mode
        for k in ("seed", "world", "workers", "batch_size", "counts", "resampled"):
            if state[k] != mine[k]:
                raise WitError(f"resume: the checkpoint's loader has {k}={state[k]!r}, this run {mine[k]!r}; "
                               "exact resume needs the same data, ranks, workers, batch size and --resampled")
        self.epoch, self.step = state["epoch"], state["step"]
