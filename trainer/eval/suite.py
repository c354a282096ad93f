"""`wit eval suite`: a task list (DataComp's form) scored in one run, written as DataComp's eval_results.jsonl.

The model is loaded once. Each dataset's images are encoded once, in batches; each class-template set's prompts
once (sets shared by several tasks, e.g. ImageNet's variants, are encoded once). With several ranks (evaluation
during training), every rank encodes its share of each dataset's images and prompts and all ranks receive the whole,
so no rank waits on another for longer than its own share takes; an error on any rank is raised on every rank at the
same point, never left for the others to wait on until a gloo/NCCL timeout.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from itertools import chain

import torch

from wit.shards.options import opt
from wit.shards.storage import WitError, exists, write_atomic
from wit.trainer.eval import datasets
from wit.trainer.eval.common import GROUP, ModelOptions, load
from wit.trainer.eval.features import encode_images, encode_texts
from wit.trainer.eval.metrics import class_embeddings, classification_metrics, retrieval_metrics
from wit.trainer.eval.prompts import prompt_set, prompts_for
from wit.trainer.eval.tasks import Task, load_tasks
from wit.trainer.eval.zeroshot import label_index


@dataclass(frozen=True, kw_only=True)
class SuiteConfig(ModelOptions):
    tasks: str = opt(help="task list in DataComp's tasklist.yml form (a subset is fine), or 'datacomp' for the "
                          "shipped list of DataComp's 38 tasks")
    root: str = opt(help="folder holding the datasets: each task's `path`, by default wds_<key>_test (DataComp's "
                         "folder names of CLIP_benchmark's sets)")
    limit: int = opt(0, "at most this many images per task, the first ones (0: all)", minimum=0)
    out: str = opt("eval_results.jsonl", "results, one JSON line per task as DataComp writes them (key, dataset, "
                                         "metrics with main_metric); never overwritten", group=GROUP)


class Encoder:
    """One model's features for a suite: each dataset's images once, each prompt set once; shared across ranks."""

    def __init__(self, model, preprocess, tokenizer, *, device, precision="fp32", batch_size=256, workers=0,
                 rank=0, world=1):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.kw = {"batch_size": batch_size, "device": device, "precision": precision}
        self.workers, self.rank, self.world = workers, rank, world
        self.image_cache: dict = {}
        self.text_cache: dict = {}

    def images(self, cache_key, items, total=None) -> tuple[torch.Tensor, list]:
        """(L2-normalised embeddings [N, dim], the items' labels/extras) in item order; item i is encoded by rank
        i % world."""
        if cache_key not in self.image_cache:
            extras = []

            def own_share():
                for i, item in enumerate(items):
                    extras.append(item[2] if len(item) > 2 else None)
                    if i % self.world == self.rank:
                        yield item

            def encode():
                share = own_share()
                first = next(share, None)
                if first is None:  # fewer images than ranks
                    return None
                share_total = None if total is None else math.ceil((total - self.rank) / self.world)
                return encode_images(self.model, self.preprocess, chain([first], share), total=share_total,
                                     workers=self.workers, **self.kw)[0]
            parts = self.exchange(encode)
            if all(p is None for p in parts):
                raise WitError(f"{cache_key[0]}: the dataset has no images")
            self.image_cache[cache_key] = interleave(parts), extras
        return self.image_cache[cache_key]

    def texts(self, texts: list[str], desc="texts") -> torch.Tensor:
        """L2-normalised embeddings of the texts; rank r encodes the r-th contiguous slice."""
        key = tuple(texts)
        if key not in self.text_cache:
            n, r, w = len(texts), self.rank, self.world
            mine = texts[r * n // w:(r + 1) * n // w]
            parts = self.exchange(lambda: encode_texts(self.model, self.tokenizer, mine, desc=desc, **self.kw)
                                  if mine else None)
            self.text_cache[key] = torch.cat([p for p in parts if p is not None])
        return self.text_cache[key]

    def exchange(self, compute) -> list:
        return exchange(compute, self.world)


def exchange(compute, world: int) -> list:
    """compute() on every rank; every rank gets every rank's result, or the same WitError when any failed."""
    if world == 1:
        return [compute()]
    import torch.distributed as dist

    try:
        mine = (compute(), None)
    except Exception as err:  # any failure: the other ranks must hear of it, not wait for this one
        mine = (None, str(err) if isinstance(err, WitError) else f"{type(err).__name__}: {err}")
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    failed = [error for _, error in gathered if error]
    if failed:
        raise WitError(failed[0])
    return [value for value, _ in gathered]


def interleave(parts: list[torch.Tensor | None]) -> torch.Tensor:
    """Rank r's rows are items r, r + world, ...: put them back in item order."""
    present = [p for p in parts if p is not None]
    out = torch.empty(sum(len(p) for p in present), present[0].shape[1], dtype=present[0].dtype)
    for r, part in enumerate(parts):
        if part is not None:
            out[r::len(parts)] = part
    return out


def evaluate_task(task: Task, enc: Encoder, limit: int = 0) -> dict:
    """The task's metrics (CLIP_benchmark's names) and its main metric (None when wit does not compute it)."""
    if task.kind == "classification":
        metrics = classification(task, enc, limit)
    else:
        metrics = retrieval(task, enc, limit)
    metrics["main_metric"] = metrics.get(task.main_metric)
    return metrics


def classification(task: Task, enc: Encoder, limit: int) -> dict:
    if task.benchmark_layout:
        bench = datasets.benchmark_set(task.path, task.split)
        source, classnames, templates = bench.labelled(limit), bench.classes, bench.templates
    else:
        source = datasets.labelled(task.path, limit=limit)
        classnames, templates = prompt_set(task.prompts, source.classes)
    images, labels = enc.images((task.path, task.split, limit), source.items(), source.count)
    prompts = [p for c in classnames for p in prompts_for(c, templates)]
    weights = class_embeddings(enc.texts(prompts, desc="prompts").view(len(classnames), len(templates), -1))
    logits = images @ weights.T
    return {**classification_metrics(logits, label_index(labels, classnames, task.path, source.classes)),
            "images": len(labels), "classes": len(classnames), "templates": len(templates)}


def retrieval(task: Task, enc: Encoder, limit: int) -> dict:
    if task.benchmark_layout:
        source = datasets.benchmark_set(task.path, task.split).captioned(limit)
    else:
        source = datasets.captioned(task.path, task.captions, limit)
    images, _ = enc.images((task.path, task.split, limit), ((k, data) for k, data in source.images()),
                           source.n_images)
    texts = enc.texts(source.captions, desc="captions")
    return {**retrieval_metrics(images, texts, torch.tensor(source.text_image)),
            "images": len(images), "captions": len(source.captions)}


def evaluate_suite(tasks: list[Task], enc: Encoder, limit: int = 0, keep_going: bool = False) -> list[dict]:
    """DataComp's result lines ({key, dataset, metrics}) of the tasks whose main metric wit computes, in order.
    With keep_going (evaluation during training) a task that fails gets a line with its `error` and no metrics, and
    the rest are scored: one unreadable set does not take the others with it."""
    lines = []
    for task in (t for t in tasks if t.computed):
        started = time.monotonic()
        try:
            metrics = evaluate_task(task, enc, limit)
        except WitError as err:  # with several ranks, raised on all of them alike (Encoder.exchange)
            if not keep_going:
                raise
            lines.append({"key": task.key, "dataset": task.name, "metrics": {"main_metric": None},
                          "error": str(err)})
            continue
        metrics["seconds"] = round(time.monotonic() - started, 2)
        lines.append({"key": task.key, "dataset": task.name, "metrics": metrics})
    return lines


def average(lines: list[dict]) -> float | None:
    """DataComp's average: the mean main metric of the tasks that have one."""
    scores = [line["metrics"]["main_metric"] for line in lines if line["metrics"]["main_metric"] is not None]
    return sum(scores) / len(scores) if scores else None


def table(tasks: list[Task], lines: list[dict]) -> str:
    """Task, main metric and score per line, then the average over the tasks scored."""
    width = max(len(t.name) for t in tasks) + 2
    scores = {line["key"]: line["metrics"]["main_metric"] for line in lines}
    rows = [f"{'task':<{width}}{'main metric':<24}score"]
    for task in tasks:
        shown = f"{100 * scores[task.key]:6.2f}%" if task.key in scores else "not computed by wit"
        rows.append(f"{task.name:<{width}}{task.main_metric:<24}{shown}")
    mean = average(lines)
    rows.append(f"{'average':<{width}}{f'{len(lines)} of {len(tasks)} tasks':<24}"
                + (f"{100 * mean:6.2f}%" if mean is not None else "n/a"))
    return "\n".join(rows)


def to_jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def run(cfg: SuiteConfig) -> list[dict]:
    if exists(cfg.out):
        raise WitError(f"{cfg.out}: already exists (another run's results); choose another --out")
    tasks = load_tasks(cfg.tasks, cfg.root)
    model, preprocess, tokenizer, device = load(cfg)
    enc = Encoder(model, preprocess, tokenizer, device=device, precision=cfg.precision, batch_size=cfg.batch_size,
                  workers=cfg.workers)
    lines = evaluate_suite(tasks, enc, cfg.limit)
    print(table(tasks, lines))
    write_atomic(cfg.out, to_jsonl(lines))
    print(f"results: {cfg.out}")
    return lines
