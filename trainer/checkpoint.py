"""Checkpoints: one file per step, written atomically (temp then rename), to a local dir or s3://.

The file is a dict that `torch.load(..., weights_only=True)` reads and whose "state_dict" open_clip loads
directly: `open_clip.create_model_and_transforms(name, pretrained=<file>)`. A file that is not one (refused
pickle, truncated, empty, another program's) is a one-line `WitError` naming it; `load_latest` skips such files.
"""
from __future__ import annotations

import io
import pickle
import random
import re
import warnings
from collections.abc import Callable

import torch

from wit.shards.storage import WitError, entries, fs_and_path, join, write_atomic

NAME = re.compile(r"step_(\d{8})\.pt$")
# What `wit train` writes and needs to resume (trainer/train.py's save); "config" is optional.
FIELDS = {"state_dict": dict, "optimizer": dict, "step": int, "samples_seen": int, "rng": list, "loader": dict}


def save(ckpt_dir: str, step: int, state: dict, keep: int = 0) -> str:
    """Write the checkpoint of `step`, then remove all but the newest `keep`. A storage error (a full disk, an S3
    endpoint gone) is a one-line WitError naming the file; the file appears whole or not at all (write_atomic), and
    a temporary name left behind is never taken for a checkpoint (NAME)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    url = join(ckpt_dir, f"step_{step:08d}.pt")
    try:
        write_atomic(url, buf.getvalue())  # makes a local folder; on an object store no folder (nor bucket) is made
    except Exception as err:  # noqa: BLE001 - storage errors of every kind (OSError, botocore's) end here
        raise WitError(f"{url}: could not write the checkpoint of step {step} ({reason(err)}); --resume latest "
                       "continues from the last one written") from None
    if keep:
        try:
            for old in list_steps(ckpt_dir)[:-keep]:
                fs, path = fs_and_path(old)
                fs.rm(path)
        except Exception as err:  # noqa: BLE001 - as above
            raise WitError(f"{url} written, but older checkpoints in {ckpt_dir} could not be removed "
                           f"({reason(err)})") from None
    return url


def list_steps(ckpt_dir: str) -> list[str]:
    """Checkpoint URLs in the dir, oldest first (temp files are ignored)."""
    return [join(ckpt_dir, n) for n in entries(ckpt_dir) if NAME.search(n)]


def latest(ckpt_dir: str) -> str | None:
    steps = list_steps(ckpt_dir)
    return steps[-1] if steps else None


def read(url: str):
    """The object in a torch file, loaded with weights_only=True (no code runs); a file that is none is a WitError."""
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise WitError(f"{url}: no such checkpoint")
    with fs.open(path, "rb") as f:
        data = f.read()
    if not data:
        raise WitError(f"{url}: an empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing a file
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = unpickler_detail(err)
        if "GLOBAL" in detail:  # the file names a function to call: what a malicious pickle does
            raise WitError(f"{url}: refused: it holds objects other than tensors and plain data, which could run "
                           f"code ({detail})") from None
        raise WitError(f"{url}: not a torch checkpoint, or a truncated one (UnpicklingError: {detail})") from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and EOF errors of any kind mean "not a checkpoint"
        raise WitError(f"{url}: not a torch checkpoint, or a truncated one ({reason(err)})") from None


def load(url: str) -> dict:
    """A training checkpoint of `wit train` (FIELDS), or a WitError naming the file and what is wrong with it."""
    state = read(url)
    if not isinstance(state, dict):
        raise WitError(f"{url}: holds a {type(state).__name__}, not a training checkpoint")
    wrong = [key for key, kind in FIELDS.items() if not isinstance(state.get(key), kind)]
    if wrong:
        raise WitError(f"{url}: not a training checkpoint of wit train (missing or wrong: {', '.join(wrong)})")
    return state


def load_latest(ckpt_dir: str, warn: Callable[[str], None]) -> tuple[str, dict] | None:
    """(url, state) of the newest readable checkpoint in the dir, or None when it has none. An unreadable newer
    one (a truncated upload, a full disk) is skipped, and `warn` says so; when none is readable, a WitError."""
    steps = list_steps(ckpt_dir)
    for url in reversed(steps):
        try:
            return url, load(url)
        except WitError as err:
            warn(f"skipping {err}")
    if steps:
        raise WitError(f"{ckpt_dir}: none of its {len(steps)} checkpoints is readable")
    return None


def reason(err: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its type and the first sentence of its message (with the line after a
    heading such as "Error(s) in loading state_dict for CLIP:")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines or [""])[0]
    first = first.split(". ")[0].rstrip(".")
    first = first if len(first) <= limit else first[:limit] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def unpickler_detail(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused (its message wraps it in advice to load the file unsafely)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))]
    return detail[-1].rstrip(".") if detail else reason(err)


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
