"""CLIP's objective, symmetric InfoNCE over a batch gathered from every rank, and SigLIP's sigmoid loss.

Each rank scores its own images against all texts and its own texts against all images ("local loss"), and the
gathered features keep their gradients, so every rank's features get the gradient of the whole batch.
Equal to `open_clip.ClipLoss(local_loss=True, gather_with_grad=True)`; an optional `valid` mask drops slots that
the loader could not fill (corrupt samples) from both the rows and the columns.

The sigmoid loss (SigLIP, Zhai et al. 2023) scores every (image, text) pair on its own: -log sigmoid(+-(s x + b)),
positive on the diagonal. No rank needs the whole batch: each scores its images against its own texts, then against
the other ranks' texts passed around the ring (open_clip's bidirectional neighbour exchange, with gradients), so
memory stays one local block. Equal to `open_clip.loss.SigLipLoss()`; `valid` masks rows and columns as above.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.nn.functional as F

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)  # the temperature is clamped at 100
SIGLIP_LOGIT_SCALE = math.log(10)  # SigLIP's initial temperature t' = log 10 ...
SIGLIP_LOGIT_BIAS = -10.0  # ... and bias: the loss starts near its value for all-negative pairs


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


def _sigmoid_block(image, text, logit_scale, logit_bias, positives: bool, image_valid=None, text_valid=None):
    """Sum of -log sigmoid(label x logit) over one block of pairs; labels +1 on the diagonal when `positives`."""
    logits = logit_scale * image @ text.T + logit_bias
    labels = -torch.ones_like(logits)
    if positives:
        labels = labels + 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype)
    per_pair = -F.logsigmoid(labels * logits)
    if image_valid is not None:
        per_pair = per_pair * (image_valid[:, None] & text_valid[None, :])
    return per_pair.sum()


def siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """The sigmoid loss of the local images against every rank's texts, over the local (valid) images."""
    from open_clip.loss import (
        neighbour_exchange,
        neighbour_exchange_bidir,
        neighbour_exchange_bidir_with_grad,
        neighbour_exchange_with_grad,
    )

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    mask = None if valid is None else valid.bool()
    loss = _sigmoid_block(image, text, logit_scale, logit_bias, True, mask, mask)
    if world > 1:
        rank = dist.get_rank()
        right, left = (rank + 1) % world, (rank - 1 + world) % world
        to_left = to_right = text
        masks_left = masks_right = None if mask is None else mask.to(image.dtype)
        pairs, odd = divmod(world - 1, 2)
        for _ in range(pairs):  # texts from both neighbours at once, then theirs, ...
            received = neighbour_exchange_bidir_with_grad(left, right, to_left, to_right)
            received_masks = (None, None) if mask is None else neighbour_exchange_bidir(
                left, right, masks_left, masks_right)
            for t, m in zip(received, received_masks):
                loss = loss + _sigmoid_block(image, t, logit_scale, logit_bias, False, mask,
                                             None if m is None else m.bool())
            to_left, to_right = received
            masks_left, masks_right = received_masks
        if odd:  # an even world: the rank opposite is reached from one side only
            t = neighbour_exchange_with_grad(left, right, to_right)
            m = None if mask is None else neighbour_exchange(left, right, masks_right).bool()
            loss = loss + _sigmoid_block(image, t, logit_scale, logit_bias, False, mask, m)
    count = image.shape[0] if mask is None else mask.sum().clamp(min=1)
    return loss / count


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}


def model_kwargs(loss: str) -> dict:
    """What open_clip's model needs for `loss`: SigLIP's initial temperature and a learnable bias (`logit_bias`,
    which then sits in the state_dict), as open_clip's SigLIP configs declare them (`init_logit_bias`)."""
    if loss == "siglip":
        return {"init_logit_scale": SIGLIP_LOGIT_SCALE, "init_logit_bias": SIGLIP_LOGIT_BIAS}
    return {}
