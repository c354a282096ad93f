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
Online balancing (--online-balance, MetaCLIP 2) first keeps each sample of the corpus with its keep_prob, drawn from
(seed, epoch, uid) by shards.online, and lays out only the kept samples: a shard's count in the plan is its kept
count that epoch, and a slice (shard, start, stop) runs over its kept samples in tar order.
Resampled mode (open_clip's --dataset-resampled) replaces steps 1-3: each (rank, worker) fills its segment with whole
shards drawn uniformly with replacement, seeded by (seed, epoch, rank, worker); an "epoch" is then just a step count.
A sample that cannot be used (truncated tar, bad image, no caption) keeps its slot with valid=False and is
reported in the batch's `skipped` list; the loss masks the slot, so every rank keeps the same batch shape.
A sample that its shard should hold by its count but does not (the shard ends early, is missing or unreadable) is
masked alike, and the batch's `short_shards` names the shard and both counts: the trainer stops the run on it.
"""
from __future__ import annotations

import io
import json
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

from wit.shards import fasttar, online
from wit.shards.storage import WitError, expand, join, read_json
from wit.trainer.checkpoint import reason

SCALE, RATIO = (0.9, 1.0), (3 / 4, 4 / 3)  # open_clip's training RandomResizedCrop


# ---------------------------------------------------------------------------------------------- shard counts
def resolve_shards(spec: str) -> tuple[list[str], list[int]]:
    """Shard URLs and sample counts from an index (`.../index.json`: {"shards": {"00000.tar": n}}) or a brace
    pattern (`s3://b/{00000..00099}.tar`), counted from tar headers."""
    if spec.endswith(".json"):
        shards = read_index(spec)
        base = spec.rsplit("/", 1)[0] if "/" in spec else "."
        names = sorted(shards)
        return [name if "://" in name else join(base, name) for name in names], [shards[n] for n in names]
    if spec.startswith("pipe:"):
        raise WitError(f"{spec}: pipe: shard URLs are refused (they run shell commands)")
    urls = expand(spec)
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(_count_or_zero, urls))
    return urls, counts


def read_index(spec: str) -> dict[str, int]:
    """{shard name: sample count} of an index file; anything else (missing, unreadable, cut short, a count that is
    not a whole number) is a one-line WitError naming the file (and the shard)."""
    try:
        index = read_json(spec)
    except FileNotFoundError:
        raise WitError(f"{spec}: no such shard index") from None
    except ValueError as err:  # bad JSON (a file cut short) or bad UTF-8
        raise WitError(f"{spec}: not a shard index, or a truncated one ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001 - storage errors of every kind (no bucket, no endpoint) end here
        raise WitError(f"{spec}: cannot read the shard index ({type(err).__name__}: {err})") from None
    if not isinstance(index, dict) or not isinstance(index.get("shards"), dict):
        raise WitError(f'{spec}: not a shard index (expected {{"shards": {{"00000.tar": count, ...}}}})')
    for name, count in index["shards"].items():
        if type(count) is not int or count < 0:  # bool is an int subclass; 12.0 and "12" are refused as well
            raise WitError(f"{spec}: shard {name}: count {json.dumps(count)} is not a whole number of samples")
    return index["shards"]


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


def window_order(plan: Plan, rank: int, worker: int, w0: int, n: int) -> list[int]:
    """The order in which a worker hands out the n slots of its window at segment position w0 (the lineage of a
    checkpoint, trainer/lineage.py, replays it)."""
    order = list(range(n))
    random.Random(f"window-{plan.seed}-{plan.epoch}-{rank}-{worker}-{w0}").shuffle(order)
    return order


# ---------------------------------------------------------------------------------------------- decoding
def crop_rng(seed: int, epoch: int, shard: int, index: int, slot: str = "") -> random.Random:
    """The RNG of one sample's crop: a function of (seed, epoch, sample), so every run and resume draws the same."""
    return random.Random(f"crop-{seed}-{epoch}-{shard}-{index}{slot}")


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


def crop_plan(data: bytes, size: int, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int, int], int]:
    """(image opened and set to decode at reduced size, its crop box, the reduction factor): the one place where a
    sample's crop is drawn, for the CPU path (which decodes the image here) and the device path (which decodes on the
    device the JPEGs that need no reduction, `suits_the_device`). Reads the header only; nothing is decoded."""
    img = Image.open(io.BytesIO(data))
    full = img.size
    need = math.ceil(size / math.sqrt(SCALE[0] / RATIO[1]))  # the smallest crop side must still cover `size`
    img.draft("RGB", (need, need))  # JPEG only: libjpeg's 1/2, 1/4, 1/8 scaled decode
    return img, crop_box(*img.size, rng), round(full[0] / img.size[0])


def decode_image(data: bytes, size: int, rng: random.Random, out: torch.Tensor | None = None) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 [3, size, size] (into `out` when given): decode at reduced size when the image is
    larger than needed (PIL draft), crop, and resize with torch's uint8 antialiased bicubic (3x PIL's speed here;
    within a few levels of PIL's bicubic, which open_clip's transform uses)."""
    img, box, _ = crop_plan(data, size, rng)
    return crop_resized(img, box, size, out)


def crop_resized(img: Image.Image, box: tuple[int, int, int, int], size: int, out: torch.Tensor | None = None):
    left, top, right, bottom = box
    pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None, :, top:bottom, left:right]
    resized = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)[0]
    if out is None:
        return resized
    out.copy_(resized)
    return out


def suits_the_device(img: Image.Image, factor: int) -> bool:
    """Whether `--decode gpu` decodes this image (opened by crop_plan) on the device; the loader workers decode the
    rest. A baseline RGB or grey JPEG, yes. A progressive one (its SOF2 marker, which PIL reads with the header) goes
    through nvJPEG's slow one-at-a-time path, not the batched hardware one; an oversized one (at least twice the side
    its crop needs, so crop_plan's draft `factor` > 1) is decoded here by libjpeg at 1/4 of its pixels or fewer,
    where the device would decode it whole; PNG, CMYK and others nvJPEG does not take."""
    return img.format == "JPEG" and img.mode in ("RGB", "L") and not img.info.get("progressive") and factor == 1


def caption_of(sample: dict[str, bytes]) -> str:
    text = sample.get("txt", b"").decode("utf-8").strip()
    if not text:
        raise ValueError("missing caption")
    return text


# ---------------------------------------------------------------------------------------------- one epoch
class ShortShard(EOFError):
    """A sample its shard should hold by its count but does not: the shard ends early, is missing or unreadable."""

    def __init__(self, url: str, message: str):
        super().__init__(message)
        self.url = url


class EpochStream(torch.utils.data.IterableDataset):
    """One rank's batches of one epoch, from batch `start` on; run by DataLoader workers (or in-process)."""

    def __init__(self, urls, plan: Plan, rank: int, start: int, image_size: int, tokenizer, window: int,
                 jpeg_bytes: bool = False, online_counts: list[int] | None = None):
        self.urls, self.plan, self.rank, self.start = urls, plan, rank, start
        self.online_counts = online_counts  # online balancing: the shards' full sample counts (plan.counts: kept)
        self._kept = {}  # shard -> tar indices of the samples this epoch keeps (the shards being read)
        self.image_size, self.tokenizer, self.window = image_size, tokenizer, window
        self.jpeg_bytes = jpeg_bytes  # leave JPEG decoding and cropping to the device (trainer/gpu_decode.py)
        self._readers = {}  # worker -> (shard, next index, open sample iterator) of the tar it is reading
        self._short: dict[int, str] = {}  # shard -> why it yields fewer samples than its count

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
        windows = (self.in_tar(window_of(slices, w0, w0 + self.window)) for w0 in starts)
        with ThreadPoolExecutor(1) as pool:  # read-ahead: the next window is read while this one is decoded
            ahead = pool.submit(self.read, next(windows, []), worker)
            for w0 in starts:
                window, raw = ahead.result()
                ahead = pool.submit(self.read, next(windows, []), worker)
                yield from self.shuffled(window, raw, worker, w0, position)

    def shuffled(self, window, raw, worker: int, w0: int, position: int):
        """A window's slots in its own seeded order, skipping those before `position`."""
        plan = self.plan
        order = window_order(plan, self.rank, worker, w0, len(window))
        for k in order[max(0, position - w0):]:
            shard, i = window[k]
            key, sample = raw[shard, i]
            slot = f"-{self.rank}-{worker}-{w0 + k}" if plan.resampled else ""  # a repeated sample gets a new crop
            yield key, sample, crop_rng(plan.seed, plan.epoch, shard, i, slot)

    def in_tar(self, window: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """(shard, index among its kept samples) -> (shard, index in its tar); the identity without online balancing."""
        if self.online_counts is None:
            return window
        out = []
        for shard, k in window:
            if shard not in self._kept:
                if len(self._kept) > 1:  # a segment reads its shards in order: keep the last one or two
                    self._kept.pop(next(iter(self._kept)))
                uids, p = online.read_probabilities(self.urls[shard], self.online_counts[shard])
                self._kept[shard] = np.flatnonzero(online.kept(self.plan.seed, self.plan.epoch, uids, p))
            out.append((shard, int(self._kept[shard][k])))
        return out

    def read(self, window, worker: int):
        """(window, raw samples of its (shard, index) pairs); runs of one shard are read in one pass. A sample that
        its shard does not hold (the shard ends early, or stays unreadable) gets the ShortShard error saying so."""
        out, runs = {}, {}
        for shard, i in window:
            runs.setdefault(shard, []).append(i)
        for shard, idx in runs.items():
            lo, hi = min(idx), max(idx) + 1
            got = self.read_slice(shard, lo, hi, worker)
            for i in idx:  # an error of its own per slot: one raised again and again would keep every frame
                out[shard, i] = got.get(i) or (f"{shard}:{i}", ShortShard(self.urls[shard], self._short[shard]))
        return window, out

    def read_slice(self, shard: int, lo: int, hi: int, worker: int) -> dict:
        """Samples lo..hi-1 of a shard. Windows read a segment in order, so the open tar carries on from one
        window to the next instead of listing the shard's headers again (on S3, re-reading it). Fewer than asked
        for: the shard is short (self._short says how)."""
        got, err = {}, None
        for attempt in range(3):
            try:
                state = self._readers.get(worker)
                if state is None or state[0] != shard or state[1] > lo + len(got):
                    state = (shard, lo + len(got), fasttar.slice_samples(self.urls[shard], lo + len(got)))
                reader = state[2]
                for _ in range(lo + len(got) - state[1]):  # samples an online epoch dropped: passed over
                    next(reader, None)
                while lo + len(got) < hi:
                    item = next(reader, None)
                    if item is None:  # the shard ends before its count
                        if shard not in self._short:
                            self.short(shard, self.holding(shard))
                        break
                    got[lo + len(got)] = item
                self._readers[worker] = (shard, lo + len(got), reader)
                return got
            except fasttar.TarMissing:  # gone: not worth another try
                self.short(shard, "is missing")
                return got
            except Exception as e:  # transient storage errors: reopen and go on from where we were
                self._readers[worker], err = None, e
                time.sleep(0.2 * (attempt + 1))
        self.short(shard, f"is unreadable after 3 tries at sample {lo + len(got)} ({reason(err)})")
        return got

    def short(self, shard: int, what: str) -> None:
        """Remember, once per shard, why it yields fewer samples than its count (the plan's, from the index)."""
        if shard not in self._short:
            count = (self.plan.counts if self.online_counts is None else self.online_counts)[shard]
            self._short[shard] = f"{self.urls[shard]}: {what}, but its count is {count}"

    def holding(self, shard: int) -> str:
        """What a short shard holds, from its headers (read again: this is the rare, failing path)."""
        try:
            return f"holds {fasttar.count_samples(self.urls[shard])} samples"
        except fasttar.TarMissing:
            return "is missing"
        except Exception as err:  # noqa: BLE001 - unreadable now, whatever the reason
            return f"cannot be read ({reason(err)})"

    def collate(self, j: int, slots) -> dict:
        """The batch: uint8 `images` [B, 3, size, size]; with `jpeg_bytes`, instead `jpegs` (the stored bytes of the
        RGB or grey JPEGs end to end, one tensor: one shared-memory handle per batch, not per sample) with
        `jpeg_sizes` [B] (0 for other slots), their crop `boxes`, and `images` [K, ...] of the K other samples (PNG,
        CMYK, progressive, oversized: `suits_the_device`), decoded here, at `decoded_at`."""
        size, B = self.image_size, len(slots)
        images = torch.zeros(0 if self.jpeg_bytes else B, 3, size, size, dtype=torch.uint8)
        jpegs, sizes, boxes = [], torch.zeros(B, dtype=torch.int64), torch.zeros(B, 4, dtype=torch.int64)
        decoded, decoded_at = [], []
        texts, keys, valid, skipped, short = [], [], [], [], {}
        for n, (key, sample, rng) in enumerate(slots):
            try:
                if isinstance(sample, ShortShard):
                    short[sample.url] = str(sample)
                if isinstance(sample, Exception):
                    raise sample
                image = fasttar.image_of(sample)
                if image is None:
                    raise ValueError("missing image")
                text = caption_of(sample)
                img, box, factor = crop_plan(image, size, rng)
                if not self.jpeg_bytes:
                    crop_resized(img, box, size, out=images[n])
                elif suits_the_device(img, factor):
                    jpegs.append(image)
                    sizes[n] = len(image)
                    boxes[n] = torch.tensor(box)
                else:
                    decoded.append(crop_resized(img, box, size)), decoded_at.append(n)
                texts.append(text), keys.append(key), valid.append(True)
            except Exception as err:
                texts.append(""), keys.append(key), valid.append(False)
                skipped.append(f"{key}: {type(err).__name__}: {err}")
        batch = {"texts": self.tokenizer(texts), "valid": torch.tensor(valid), "keys": keys, "skipped": skipped,
                 "short_shards": short, "epoch": self.plan.epoch, "step": j}
        if not self.jpeg_bytes:
            return {"images": images, **batch}
        images = torch.stack(decoded) if decoded else images
        joined = bytearray(b"".join(jpegs))
        jpegs = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.zeros(0, dtype=torch.uint8)
        return {"jpegs": jpegs, "jpeg_sizes": sizes, "boxes": boxes, "images": images,
                "decoded_at": torch.tensor(decoded_at, dtype=torch.int64), **batch}


# ---------------------------------------------------------------------------------------------- the loader
class ShardLoader:
    """Endless iterator of one rank's batches, epoch after epoch; `state_dict()` is its exact position."""

    def __init__(self, spec: str, *, batch_size: int, image_size: int, tokenizer, rank: int = 0, world: int = 1,
                 workers: int = 2, seed: int = 0, window: int = 1000, resampled: bool = False,
                 shards: tuple[list, list] | None = None, jpeg_bytes: bool = False, online_balance: bool = False):
        self.urls, self.counts = shards or resolve_shards(spec)  # `shards`: (urls, counts) resolved already
        self.jpeg_bytes = jpeg_bytes  # batches of JPEG bytes and crop boxes, for trainer/gpu_decode.py
        self.batch_size, self.image_size, self.tokenizer = batch_size, image_size, tokenizer
        self.rank, self.world, self.workers, self.seed, self.window = rank, world, workers, seed, window
        self.resampled, self.online = resampled, online_balance
        if resampled and online_balance:
            raise WitError("--online-balance draws from every sample of the corpus each epoch; --resampled draws "
                           "whole shards: use one of them")
        self._kept_counts: dict[int, list[int]] = {}
        self.epoch, self.step = 0, 0
        if self.plan(0).steps == 0:
            raise WitError(f"{spec}: {sum(self.counts)} samples in {len(self.urls)} shards, fewer than one global "
                           f"batch ({world} ranks x {batch_size})")

    def plan(self, epoch: int) -> Plan:
        counts = self.kept_counts(epoch) if self.online else self.counts
        return Plan(tuple(counts), self.seed, epoch, self.world, max(1, self.workers), self.batch_size,
                    self.resampled)

    def kept_counts(self, epoch: int) -> list[int]:
        """Per shard, the samples online balancing keeps in `epoch`: one pass over the corpus manifests' uid and
        keep_prob columns (a shard at a time per thread), remembered for this epoch and the one before."""
        if epoch not in self._kept_counts:
            def count(shard: int) -> int:
                uids, p = online.read_probabilities(self.urls[shard], self.counts[shard])
                return int(online.kept(self.seed, epoch, uids, p).sum())
            with ThreadPoolExecutor(8) as pool:
                self._kept_counts[epoch] = list(pool.map(count, range(len(self.urls))))
            for old in [e for e in self._kept_counts if e < epoch - 1]:
                del self._kept_counts[old]
        return self._kept_counts[epoch]

    @property
    def steps_per_epoch(self) -> int:
        return self.plan(0).steps

    def __iter__(self):
        while True:
            plan = self.plan(self.epoch)
            if self.online and self.rank == 0:
                print(f"wit train: epoch {self.epoch}: online balancing keeps {sum(plan.counts):,} of "
                      f"{sum(self.counts):,} samples, {plan.steps} steps", flush=True)
            stream = EpochStream(self.urls, plan, self.rank, self.step, self.image_size, self.tokenizer, self.window,
                                 self.jpeg_bytes, list(self.counts) if self.online else None)
            loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.workers,
                                                 prefetch_factor=4 if self.workers else None,
                                                 pin_memory=torch.cuda.is_available())
            for batch in loader:
                assert (batch["epoch"], batch["step"]) == (self.epoch, self.step), "loader out of order"
                self.step += 1
                yield batch
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self, after: dict | None = None) -> dict:
        """The position after the last batch handed out, or after the batch `after` (a consumer that holds batches
        ahead, as the device decoder does, saves the position after the last one it trained on)."""
        epoch, step = (after["epoch"], after["step"] + 1) if after else (self.epoch, self.step)
        plan = self.plan(epoch)
        positions = [sum(1 for j in plan.batches_of(w) if j < step) * self.batch_size for w in range(plan.workers)]
        return {"epoch": epoch, "step": step, "seed": self.seed, "world": self.world,
                "workers": plan.workers, "batch_size": self.batch_size, "counts": list(self.counts),
                "resampled": self.resampled, "online_balance": self.online,
                "worker_positions": positions}  # samples each worker has delivered this epoch (for reading)

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        state = {"resampled": False, "online_balance": False, **state}  # checkpoints from before these modes
        for k in ("seed", "world", "workers", "batch_size", "counts", "resampled", "online_balance"):
            if state[k] != mine[k]:
                raise WitError(f"resume: the checkpoint's loader has {k}={state[k]!r}, this run {mine[k]!r}; "
                               "exact resume needs the same data, ranks, workers, batch size, --resampled and "
                               "--online-balance")
        self.epoch, self.step = state["epoch"], state["step"]
