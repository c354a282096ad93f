"""CLIP's objective: symmetric InfoNCE over a batch gathered from every rank.

Each rank scores its own images against all texts and its own texts against all images ("local loss"), and the
gathered features keep their gradients, so every rank's features get the gradient of the whole batch.
Equal to `open_clip.ClipLoss(local_loss=True, gather_with_grad=True)`; an optional `valid` mask drops slots that
the loader could not fill (corrupt samples) from both the rows and the columns.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)  # the temperature is clamped at 100


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; `logit_scale` is the exp'ed temperature (<= 100)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    all_image, all_text = gather(image), gather(text)
    logits_per_image = logit_scale * image @ all_text.T  # [local, global]
    logits_per_text = logit_scale * text @ all_image.T
    labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
    if valid is None:
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    all_valid = gather(valid.to(image.dtype)).detach().bool()
    low = torch.finfo(logits_per_image.dtype).min
    logits_per_image = logits_per_image.masked_fill(~all_valid[None], low)
    logits_per_text = logits_per_text.masked_fill(~all_valid[None], low)
    per_row = (F.cross_entropy(logits_per_image, labels, reduction="none")
               + F.cross_entropy(logits_per_text, labels, reduction="none")) / 2
    return torch.where(valid, per_row, 0).sum() / valid.sum().clamp(min=1)
