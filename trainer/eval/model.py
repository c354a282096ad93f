"""Load a CLIP for evaluation: any checkpoint `make train` writes, a model-only state_dict, or random weights.

A training checkpoint is a dict with the weights under "state_dict" (trainer/checkpoint.py; "model" is accepted
too) and the run's config, whose "model" names the architecture when `--model` is not given.
"""
from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch

from wit.shards.storage import WitError, fs_and_path
from wit.trainer import checkpoint as ckpt

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"  # the trainer's configs (wit-tiny, ...)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrap the names


def read_checkpoint(url: str) -> dict:
    """A checkpoint file, or the newest `step_*.pt` in a checkpoint dir."""
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise WitError(f"{url}: no such checkpoint")
    if fs.isdir(path):
        newest = ckpt.latest(url)
        if newest is None:
            raise WitError(f"{url}: a folder with no step_*.pt checkpoints")
        url = newest
    obj = ckpt.read(url)
    if not isinstance(obj, dict):
        raise WitError(f"{url}: holds a {type(obj).__name__}, not a state_dict or a checkpoint dict")
    return obj


def split_checkpoint(obj: dict) -> tuple[dict, str | None]:
    """(weights, model name recorded by the trainer or None) from either kind of file."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
            return obj[key], config.get("model")
    return obj, None


def strip_prefixes(state: dict) -> dict:
    out = {}
    for name, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        out[name] = value
    return out


def load_model(model: str | None, checkpoint: str | None, random_init: bool, device: str = "cpu"):
    """(model in eval mode, image preprocess, tokenizer)."""
    if bool(checkpoint) == bool(random_init):
        raise WitError("give exactly one of --checkpoint FILE and --random-init")
    open_clip.add_model_config(MODEL_CONFIGS)
    state, recorded = None, None
    if checkpoint:
        state, recorded = split_checkpoint(read_checkpoint(checkpoint))
    name = model or recorded
    if not name:
        raise WitError(f"{checkpoint}: records no model name; give --model (e.g. wit-tiny, ViT-B-32)")
    if name not in open_clip.list_models():
        raise WitError(f"--model {name}: unknown to open_clip and not in {MODEL_CONFIGS}")
    logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights": we load them ourselves below
    try:
        # a SigLIP-trained checkpoint holds the sigmoid loss's bias: the model needs the parameter to load it
        bias = {"init_logit_bias": 0.0} if state is not None and "logit_bias" in strip_prefixes(state) else {}
        net, _, preprocess = open_clip.create_model_and_transforms(name, device="cpu", **bias)
    finally:
        logging.disable(logging.NOTSET)
    if state is not None:
        try:
            net.load_state_dict(strip_prefixes(state))
        except (RuntimeError, TypeError, ValueError, AttributeError) as err:
            raise WitError(f"{checkpoint}: weights do not fit model {name} ({ckpt.reason(err)})") from None
    return net.to(device).eval(), preprocess, open_clip.get_tokenizer(name)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise WitError(f"--device {name}: no CUDA device here")
    return name
