"""`wit eval retrieval`: image->text and text->image recall@1/5/10 on a captioned image set."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from wit.trainer.eval import datasets
from wit.shards.options import opt
from wit.trainer.eval.common import ModelOptions, finish, load
from wit.trainer.eval.features import encode_images, encode_texts
from wit.trainer.eval.metrics import retrieval_recall


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig(ModelOptions):
    data: str = opt(help="a folder of images (with --captions), or WebDataset shards of .jpg + .txt samples, brace "
                         "patterns allowed")
    captions: str | None = opt(None, "CSV with columns image,caption (several rows per image allowed); image names "
                                     "are relative to --data")
    limit: int = opt(0, "at most this many images, with all their captions (0: all)", minimum=0)


def run(cfg: RetrievalConfig) -> dict:
    started = time.monotonic()
    source = datasets.captioned(cfg.data, cfg.captions, cfg.limit)
    model, preprocess, tokenizer, device = load(cfg)
    kw = {"batch_size": cfg.batch_size, "device": device, "precision": cfg.precision}
    texts = encode_texts(model, tokenizer, source.captions, desc="captions", **kw)
    images, _ = encode_images(model, preprocess, source.images(), total=source.n_images,
                              workers=cfg.workers, **kw)
    results = {"task": "retrieval", "images": images.shape[0], "captions": len(source.captions),
               **retrieval_recall(images, texts, torch.tensor(source.text_image))}
    return finish(cfg, results, started)
