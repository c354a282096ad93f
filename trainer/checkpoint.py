"""Checkpoints: one file per step, written atomically (temp then rename), to a local dir or s3://.

The file is a dict that `torch.load(..., weights_only=True)` reads and whose "state_dict" open_clip loads
directly: `open_clip.create_model_and_transforms(name, pretrained=<file>)`.
"""
from __future__ import annotations

import io
import random
import re

import torch

from wit.shards.storage import WitError, fs_and_path, join, write_atomic

NAME = re.compile(r"step_(\d{8})\.pt$")


def save(ckpt_dir: str, step: int, state: dict, keep: int = 0) -> str:
    buf = io.BytesIO()
    torch.save(state, buf)
    url = join(ckpt_dir, f"step_{step:08d}.pt")
    fs, path = fs_and_path(ckpt_dir)
    fs.makedirs(path, exist_ok=True)
    write_atomic(url, buf.getvalue())
    if keep:
        for old in list_steps(ckpt_dir)[:-keep]:
            fs.rm(fs_and_path(old)[1])
    return url


def list_steps(ckpt_dir: str) -> list[str]:
    """Checkpoint URLs in the dir, oldest first (temp files are ignored)."""
    fs, path = fs_and_path(ckpt_dir)
    if not fs.exists(path):
        return []
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if NAME.search(p))
    return [join(ckpt_dir, n) for n in names]


def latest(ckpt_dir: str) -> str | None:
    steps = list_steps(ckpt_dir)
    return steps[-1] if steps else None


def load(url: str) -> dict:
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise WitError(f"{url}: no such checkpoint")
    with fs.open(path, "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
