"""Batches onto the device: `--decode gpu` decodes the loader's JPEG bytes there (nvJPEG through torchvision's
`decode_jpeg` on a list of byte tensors) and crops, resizes and normalises there; `--decode cpu` only normalises the
loader's uint8 images. On CUDA the next batch is prepared on a side stream while the current one trains.

The crop boxes come from the loader workers (`data.crop_plan`, the CPU path's own function), so a sample gets the same
crop in both modes and resume stays exact. The workers decode what suits the device badly (not a baseline RGB or grey
JPEG, progressive, oversized: `data.EpochStream.collate`). When the batched decode fails, the batch is decoded one
image at a time; a JPEG the device refuses is decoded by torchvision on the CPU; one that does not decode there
either is masked and listed in the batch's `skipped`, as the CPU path does. Each image's path is counted
(`JpegDecoder.counts`, in log.jsonl as decode_*), and the first fallback of each kind is said in one line.
`--decode auto` picks the device only after `self_test` passed on it. Every step here is the same code on a CPU
tensor, which is how the tests run it; the CUDA-only lines are `wait_for_stream` and the side stream.
"""
from __future__ import annotations

import contextlib
import io
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from wit.trainer.checkpoint import reason

# Where the images of a --decode gpu batch were decoded; log.jsonl has one decode_<kind> count per kind and interval
DECODE_KINDS = ("batched", "per_image", "cpu_fallback", "in_workers")
FALLBACKS = {"per_image": "the device's batched JPEG decode failed ({}); decoding that batch one image at a time",
             "cpu_fallback": "the device refused a JPEG ({}); decoding such JPEGs on the CPU, in the training process"}
# The self-test's bound on the mean absolute difference (levels of 255) between the device's pixels and libjpeg-turbo's
# for each reference JPEG: decoders differ by about a level (IDCT and chroma upsampling); a wrong decode (shifted,
# garbled, another image's memory) differs by tens. torchvision's own test of its CUDA decoder holds it to the same.
SELF_TEST_TOLERANCE = 2.0


def choose_decode(mode: str, device: torch.device) -> tuple[str, str]:
    """(where JPEGs are decoded, why): --decode auto takes the device only when it is CUDA and passes `self_test`."""
    if mode != "auto":
        return mode, f"--decode {mode}"
    if device.type != "cuda":
        return "cpu", f"--decode auto: on the CPU, as the device is {device.type}, not CUDA"
    failed = self_test(device)
    if failed:
        return "cpu", f"--decode auto: on the CPU, as the device's JPEG self-test failed: {failed}"
    return "gpu", f"--decode auto: on the device, its JPEG self-test passed (mean difference <= {SELF_TEST_TOLERANCE})"


def reference_jpegs() -> list[bytes]:
    """Small JPEGs made here (no file needed): 4:2:0 and 4:4:4 colour, grey, odd sizes; smooth content with detail."""
    rng = np.random.default_rng(0)
    out = []
    for (height, width), subsampling, mode in (((96, 128), 2, "RGB"), ((61, 83), 0, "RGB"), ((64, 48), 2, "L")):
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        planes = [np.sin(6 * x + 2 * c) * np.cos(5 * y - c) for c in range(3)]
        pixels = np.stack(planes, -1) * 100 + 128 + rng.normal(0, 4, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90, subsampling=subsampling)
        out.append(buffer.getvalue())
    return out


def self_test(device: torch.device, tolerance: float = SELF_TEST_TOLERANCE) -> str:
    """'' when the device decodes the reference JPEGs in one batched call, each within `tolerance` (mean absolute
    difference) of libjpeg-turbo's pixels on the CPU; else why not, in one line."""
    jpegs = reference_jpegs()
    decoder = JpegDecoder(device, quiet=True)
    try:
        images = decoder([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs])
    except Exception as err:  # noqa: BLE001 - the device cannot decode at all (no nvJPEG, a broken driver, ...)
        return reason(err)
    if decoder.counts["batched"] != len(jpegs):
        return f"the batched decoder did not decode them ({dict(decoder.counts)})"
    for k, (data, image) in enumerate(zip(jpegs, images)):
        want = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if image.shape != want.shape:
            return f"reference JPEG {k}: shape {tuple(image.shape)}, the CPU's {tuple(want.shape)}"
        diff = (image.cpu().float() - want.float()).abs().mean().item()
        if not diff <= tolerance:
            return f"reference JPEG {k}: mean difference {diff:.2f} from the CPU's pixels, over {tolerance}"
    return ""


class JpegDecoder:
    """JPEG byte tensors -> uint8 [3, H, W] on `device` (or the exception), in one batched call when it works;
    `counts` says how each image was decoded (DECODE_KINDS)."""

    def __init__(self, device: torch.device, quiet: bool = False):
        self.device, self.quiet = device, quiet
        self.counts: Counter = Counter()
        self.warned: set[str] = set()

    def __call__(self, jpegs: list[torch.Tensor]) -> list:
        if not jpegs:
            return []
        try:
            self.wait_for_stream()
            images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device)
        except (RuntimeError, ValueError) as err:  # one bad image fails the whole call
            self.fell_back("per_image", err)
            return [self.decode_one(data) for data in jpegs]
        self.counts["batched"] += len(images)
        return list(images)

    def decode_one(self, data: torch.Tensor):
        try:
            self.wait_for_stream()
            image = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            self.counts["per_image"] += 1
            return image
        except (RuntimeError, ValueError) as err:
            if self.device.type == "cpu":  # the device's decoder was the CPU's already
                return err
            self.fell_back("cpu_fallback", err)
        try:  # a JPEG that nvJPEG refuses: libjpeg-turbo on the CPU
            image = decode_jpeg(data, mode=ImageReadMode.RGB).to(self.device)
            self.counts["cpu_fallback"] += 1
            return image
        except (RuntimeError, ValueError) as err:
            return err

    def wait_for_stream(self) -> None:
        """nvJPEG writes its outputs from a stream of its own (and its hardware engine ignores the stream it is
        given), into memory that PyTorch's caching allocator hands out on the current stream as soon as it was freed
        there: possibly while kernels queued on this stream (the previous batch's crops) have yet to read it, which
        the decode then overwrites. torchvision's decode_jpeg does not wait for them (pytorch/vision PR #9606);
        torchcodec's fix (PR #1634) synchronises the caller's stream before the decode writes, and so do we, from
        outside: once this stream's queued work has run, no block it can hand out is still in use. (Blocks used on
        other streams are safe: `record_stream` keeps them until that use is done.) It costs no throughput: the
        decode host-synchronises its stream anyway, and this stream only holds batch preparation."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def fell_back(self, kind: str, err: Exception) -> None:
        if kind not in self.warned and not self.quiet:
            self.warned.add(kind)
            print(f"wit train: warning: {FALLBACKS[kind].format(reason(err))} (counted as decode_{kind} in "
                  "log.jsonl; said once)", file=sys.stderr, flush=True)

    def take_counts(self) -> dict[str, int]:
        """The counts since the last call, one per kind, and zero them."""
        counts = {kind: self.counts[kind] for kind in DECODE_KINDS}
        self.counts.clear()
        return counts


def resize_weights(lengths: torch.Tensor, padded: int, size: int) -> torch.Tensor:
    """[N, size, padded]: for image n of `lengths[n]` pixels along one axis (zero padding beyond), the weight of each
    input pixel in each of `size` output pixels under antialiased bicubic resizing, as F.interpolate(mode="bicubic",
    antialias=True) and PIL compute them: Keys' cubic with a = -0.5, widened by the scale when shrinking, each row
    normalised over the pixels that exist."""
    lengths = lengths.to(torch.float64)[:, None, None]
    scale = lengths / size
    centre = scale * (torch.arange(size, dtype=torch.float64, device=lengths.device)[None, :, None] + 0.5)
    pixel = torch.arange(padded, dtype=torch.float64, device=lengths.device)[None, None, :]
    x = ((pixel + 0.5 - centre) / scale.clamp(min=1)).abs()
    a = -0.5
    cubic = torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))
    cubic = cubic * (pixel < lengths)
    return (cubic / cubic.sum(-1, keepdim=True)).float()


def crop_resize(images: list[torch.Tensor], boxes: list[list[int]], size: int) -> torch.Tensor:
    """uint8 [3, H, W] images and their crop boxes (left, top, right, bottom, clipped to the image as slicing does)
    -> float [N, 3, size, size] in 0..255, rounded as the CPU path's uint8 resize. All crops at once: one copy per
    image into a zero-padded stack, then two batched matrix products with `resize_weights` (F.interpolate's
    antialiased bicubic: the same pixels within float rounding, or TF32's on CUDA, a fraction of a level), where
    resizing each image alone took about five kernels per image."""
    crops = [image[:, top:bottom, left:right] for image, (left, top, right, bottom) in zip(images, boxes)]
    heights = torch.tensor([c.shape[1] for c in crops], device=images[0].device)
    widths = torch.tensor([c.shape[2] for c in crops], device=images[0].device)
    stack = torch.zeros(len(crops), 3, int(heights.max()), int(widths.max()), dtype=torch.uint8,
                        device=images[0].device)
    for n, crop in enumerate(crops):
        stack[n, :, :crop.shape[1], :crop.shape[2]] = crop
    rows = resize_weights(heights, stack.shape[2], size)[:, None]  # [N, 1, size, H]
    cols = resize_weights(widths, stack.shape[3], size)[:, None]  # [N, 1, size, W]
    resized = rows @ stack.float() @ cols.transpose(-1, -2)
    return resized.clamp_(0, 255).round_()


class DeviceBatches:
    """Turns loader batches into (images, texts, valid) on `device`: float images normalised with mean/std."""

    def __init__(self, size: int, mean: torch.Tensor, std: torch.Tensor, device: torch.device, *,
                 decode_on_device: bool, channels_last: bool = False):
        self.size, self.device, self.decode_on_device = size, device, decode_on_device
        self.mean, self.std = mean.to(device)[:, None, None], std.to(device)[:, None, None]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.decoder = JpegDecoder(device)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.decode_on_device:
            pixels = self.decoded(batch)  # marks the samples that do not decode in batch["valid"], ["skipped"]
        else:
            pixels = batch["images"].to(self.device, non_blocking=True).float()
        images = ((pixels / 255 - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        texts, valid = (batch[k].to(self.device, non_blocking=True) for k in ("texts", "valid"))
        return images, texts, valid

    def decoded(self, batch: dict) -> torch.Tensor:
        """Float [B, 3, size, size] in 0..255: the JPEGs decoded and cropped here, the loader's other images placed."""
        size = self.size
        sizes = batch["jpeg_sizes"].tolist()
        out = torch.zeros(len(sizes), 3, size, size, device=self.device)
        if len(batch["decoded_at"]):
            out[batch["decoded_at"].to(self.device)] = batch["images"].to(self.device, non_blocking=True).float()
            self.decoder.counts["in_workers"] += len(batch["decoded_at"])
        slots = [n for n, length in enumerate(sizes) if length]
        jpegs = batch["jpegs"].split([sizes[n] for n in slots])  # views, each contiguous
        images, placed = [], []
        for n, image in zip(slots, self.decoder(list(jpegs))):
            if isinstance(image, Exception):
                batch["valid"][n] = False
                batch["skipped"].append(f"{batch['keys'][n]}: {type(image).__name__}: {image}")
            else:
                images.append(image), placed.append(n)
        if placed:
            out[torch.tensor(placed, device=self.device)] = crop_resize(images, batch["boxes"][placed].tolist(), size)
        return out


def prepared_ahead(batches, prepare: DeviceBatches):
    """(batch, prepared) pairs in order, batch k+1 prepared before batch k is handed out (so the loader is one batch
    ahead of training: checkpoints save the position after the batch trained, `ShardLoader.state_dict(after=)`).
    On CUDA batch k+1's copies and decode run on a side stream, beside step k's kernels."""
    side = torch.cuda.Stream(prepare.device) if prepare.device.type == "cuda" else None

    def launch(batch):
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            return batch, prepare(batch)

    pending = launch(next(batches))
    for batch in batches:
        ready = pending
        if side is not None:
            main = torch.cuda.current_stream(prepare.device)
            main.wait_stream(side)
            for t in ready[1]:
                t.record_stream(main)  # made on the side stream, used and freed on the main one
        pending = launch(batch)
        yield ready
