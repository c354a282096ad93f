"""The maths of the three evaluations, on embeddings (torch tensors); no models, no files.

Ranks count ties against the model: a right answer tied with a wrong one is ranked below it, so a model whose
embeddings are all equal scores zero, never a lucky 100%.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_embeddings(text_emb: torch.Tensor) -> torch.Tensor:
    """Prompt ensembling: [classes, templates, dim] -> [classes, dim].

    Each prompt's embedding is L2-normalised, the templates are averaged per class, and the mean re-normalised.
    """
    return F.normalize(F.normalize(text_emb.float(), dim=-1).mean(dim=1), dim=-1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Share of rows whose label is among the k highest logits; k above the class count counts as all."""
    right = logits.gather(1, labels.view(-1, 1))
    wrong_above = (logits >= right).sum(dim=1) - 1  # classes other than the label scoring at least as high
    return {f"top{k}": float((wrong_above < k).float().mean()) for k in ks}


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor,
                     ks=(1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """R@k both ways: `text_image[t]` is the index of the image that caption t describes.

    image->text: a hit when any of the image's captions is in its top k texts. text->image: a hit when the
    caption's own image is in its top k images. Embeddings are compared by cosine similarity.
    """
    img, txt = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    text_image = text_image.long().to(img.device)
    n_img = img.shape[0]
    if text_image.numel() != txt.shape[0] or (text_image.bincount(minlength=n_img)[:n_img] == 0).any():
        raise ValueError("every caption needs its image and every image at least one caption")
    i2t_rank, t2i_rank = [], []
    for start in range(0, n_img, chunk):  # chunks of images keep the similarity matrix small
        sim = img[start:start + chunk] @ txt.T  # [chunk, texts]
        own = text_image.view(1, -1) == torch.arange(start, start + sim.shape[0], device=img.device).view(-1, 1)
        best_own = sim.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values
        i2t_rank.append(((sim >= best_own) & ~own).sum(dim=1))
    for start in range(0, txt.shape[0], chunk):
        sim = txt[start:start + chunk] @ img.T  # [chunk, images]
        own_idx = text_image[start:start + chunk].view(-1, 1)
        right = sim.gather(1, own_idx)
        t2i_rank.append((sim >= right).sum(dim=1) - 1)
    i2t, t2i = torch.cat(i2t_rank), torch.cat(t2i_rank)
    out = {f"image_to_text_R@{k}": float((i2t < k).float().mean()) for k in ks}
    out.update({f"text_to_image_R@{k}": float((t2i < k).float().mean()) for k in ks})
    return out


def accuracy(pred, labels) -> float:
    pred, labels = torch.as_tensor(pred), torch.as_tensor(labels)
    return float((pred == labels).float().mean())
