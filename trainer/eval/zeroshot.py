"""`wit eval zeroshot`: classify images by their similarity to prompt-ensembled class embeddings."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from wit.shards.storage import WitError
from wit.trainer.eval import datasets
from wit.shards.options import opt
from wit.trainer.eval.common import DATA_HELP, LabelledOptions, ModelOptions, finish, load
from wit.trainer.eval.features import encode_images, encode_texts
from wit.trainer.eval.metrics import class_embeddings, topk_accuracy
from wit.trainer.eval.prompts import clean, prompt_set, prompts_for


@dataclass(frozen=True, kw_only=True)
class ZeroShotConfig(ModelOptions, LabelledOptions):
    data: str = opt(help=DATA_HELP)
    prompts: str = opt("cifar10", "class names + templates: the CLIP paper's sets, or 'folders' (the dataset's folder "
                                  "names with the 18 CIFAR templates)", choices=("cifar10", "cifar100", "imagenet",
                                                                                 "folders"))
    limit: int = opt(0, "at most this many images (0: all); from folders and tars spread evenly over the classes, "
                        "from shards the first ones", minimum=0)


WORDNET_ID = re.compile(r"n\d{8}")


def label_index(labels: list, classnames: list[str], data: str, folders: list[str] | None = None) -> torch.Tensor:
    """Folder/class names or integer labels -> indices into the prompt set's classes.

    Folders named by WordNet id (`n01440764/`, ImageNet's own layout) map to classes by their sorted order, which is
    how ImageNet numbers its classes; that needs every class's folder to be there.
    """
    index = {c: i for i, c in enumerate(classnames)}
    if folders and all(WORDNET_ID.fullmatch(f) for f in folders):
        if len(folders) != len(classnames):
            raise WitError(f"{data}: {len(folders)} WordNet-id folders for {len(classnames)} classes; their sorted "
                           "order gives the class numbers, so every class needs its folder")
        index = {wnid: i for i, wnid in enumerate(sorted(folders))}
    out = []
    for label in labels:
        i = label if isinstance(label, int) else index.get(clean(str(label)))
        if i is None or not 0 <= i < len(classnames):
            raise WitError(f"{data}: class {label!r} is not in the prompt set ({len(classnames)} classes)")
        out.append(i)
    return torch.tensor(out)


def zeroshot_weights(model, tokenizer, classnames, templates, **kw) -> torch.Tensor:
    """[classes, dim]: every class's prompts encoded, then ensembled (metrics.class_embeddings)."""
    texts = [p for c in classnames for p in prompts_for(c, templates)]
    emb = encode_texts(model, tokenizer, texts, desc="prompts", **kw)
    return class_embeddings(emb.view(len(classnames), len(templates), -1))


def run(cfg: ZeroShotConfig) -> dict:
    started = time.monotonic()
    source = datasets.labelled(cfg.data, cfg.format, cfg.class_field, cfg.limit)
    classnames, templates = prompt_set(cfg.prompts, source.classes)
    model, preprocess, tokenizer, device = load(cfg)
    kw = {"batch_size": cfg.batch_size, "device": device, "precision": cfg.precision}
    weights = zeroshot_weights(model, tokenizer, classnames, templates, **kw)
    images, labels = encode_images(model, preprocess, source.items(), total=source.count,
                                     workers=cfg.workers, **kw)
    scores = images @ weights.T
    results = {"task": "zeroshot", "images": len(labels), "classes": len(classnames), "templates": len(templates),
               **topk_accuracy(scores, label_index(labels, classnames, cfg.data, source.classes)),
               "chance_top1": 1 / len(classnames)}
    return finish(cfg, results, started)
