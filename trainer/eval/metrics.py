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


def label_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, how many other classes score at least as high as the label (0: the label is the top guess)."""
    right = logits.gather(1, labels.view(-1, 1))
    return (logits >= right).sum(dim=1) - 1


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Share of rows whose label is among the k highest logits; k above the class count counts as all."""
    ranks = label_ranks(logits, labels)
    return {f"top{k}": float((ranks < k).double().mean()) for k in ks}


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 recall of each class that has images, averaged over those classes (scikit-learn's balanced accuracy,
    which CLIP_benchmark and DataComp report): a rare class weighs as much as a common one."""
    hits = (label_ranks(logits, labels) == 0).double()
    classes, per_image_class = labels.unique(return_inverse=True)
    recall = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, per_image_class, hits)
    return float((recall / per_image_class.bincount(minlength=len(classes))).mean())


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
    out = {f"image_to_text_R@{k}": float((i2t < k).double().mean()) for k in ks}
    out.update({f"text_to_image_R@{k}": float((t2i < k).double().mean()) for k in ks})
    return out


def accuracy(pred, labels) -> float:
    pred, labels = torch.as_tensor(pred), torch.as_tensor(labels)
    return float((pred == labels).float().mean())


# The metric names of CLIP_benchmark and DataComp's eval_results.jsonl, which `wit eval suite` writes.
RECALL_KS = (1, 5, 10)
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
RETRIEVAL_METRICS = (*(f"{way}_retrieval_recall@{k}" for way in ("image", "text") for k in RECALL_KS),
                     "mean_recall@1")


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """acc1, acc5 (None under 5 classes, as DataComp writes it) and mean per-class recall."""
    top = topk_accuracy(logits, labels, ks=(1, 5))
    return {"acc1": top["top1"], "acc5": top["top5"] if logits.shape[1] >= 5 else None,
            "mean_per_class_recall": mean_per_class_recall(logits, labels)}


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor) -> dict[str, float]:
    """CLIP_benchmark's names: image retrieval is text->image, text retrieval image->text; DataComp's main metric
    mean_recall@1 is their mean."""
    r = retrieval_recall(image_emb, text_emb, text_image, ks=RECALL_KS)
    out = {f"image_retrieval_recall@{k}": r[f"text_to_image_R@{k}"] for k in RECALL_KS}
    out.update({f"text_retrieval_recall@{k}": r[f"image_to_text_R@{k}"] for k in RECALL_KS})
    out["mean_recall@1"] = (out["image_retrieval_recall@1"] + out["text_retrieval_recall@1"]) / 2
    return out
