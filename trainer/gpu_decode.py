"""Batches onto the device: `--decode gpu` decodes the loader's JPEG bytes there (nvJPEG through torchvision's
`decode_jpeg` on a list of byte tensors) and crops, resizes and normalises there; `--decode cpu` only normalises the
loader's uint8 images. On CUDA the next batch is prepared on a side stream while the current one trains.

The crop boxes come from the loader workers (`data.crop_plan`, the CPU path's own function, scaled to the full-size
image), so a sample gets the same crop in both modes and resume stays exact. A JPEG the device cannot decode is
decoded by torchvision on the CPU instead; one that does not decode there either is masked and listed in the batch's
`skipped`, as the CPU path does. Every step here is the same code on a CPU tensor, which is how the tests run it.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg


def decode_mode(mode: str, device: torch.device) -> str:
    """--decode auto: on the device when it is a GPU."""
    return ("gpu" if device.type == "cuda" else "cpu") if mode == "auto" else mode


class DeviceBatches:
    """Turns loader batches into (images, texts, valid) on `device`: float images normalised with mean/std."""

    def __init__(self, size: int, mean: torch.Tensor, std: torch.Tensor, device: torch.device, *,
                 decode_on_device: bool, channels_last: bool = False):
        self.size, self.device, self.decode_on_device = size, device, decode_on_device
        self.mean, self.std = mean.to(device)[:, None, None], std.to(device)[:, None, None]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

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
        slots = [n for n, length in enumerate(sizes) if length]
        jpegs = batch["jpegs"].split([sizes[n] for n in slots])  # views, each contiguous
        for n, image in zip(slots, self.decode_all(list(jpegs))):
            if isinstance(image, Exception):
                batch["valid"][n] = False
                batch["skipped"].append(f"{batch['keys'][n]}: {type(image).__name__}: {image}")
                continue
            left, top, right, bottom = batch["boxes"][n].tolist()
            crop = image[None, :, top:bottom, left:right].float()  # slicing clips the box to the decoded size
            resized = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)[0]
            out[n] = resized.clamp_(0, 255).round_()  # as the CPU path's uint8 resize saturates and rounds
        return out

    def decode_all(self, jpegs: list[torch.Tensor]) -> list:
        """Decoded uint8 [3, H, W] on the device, or the exception, per JPEG: one batched call, and one call per
        image only when the batch fails (one bad image fails the whole call)."""
        if not jpegs:
            return []
        try:
            return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device))
        except (RuntimeError, ValueError):
            return [self.decode_one(data) for data in jpegs]

    def decode_one(self, data: torch.Tensor):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except (RuntimeError, ValueError) as err:
            if self.device.type == "cpu":
                return err
        try:  # a JPEG that nvJPEG refuses: libjpeg-turbo on the CPU
            return decode_jpeg(data, mode=ImageReadMode.RGB).to(self.device)
        except (RuntimeError, ValueError) as err:
            return err


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
