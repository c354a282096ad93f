"""The anchor: `wit eval suite` gives clip_benchmark's numbers (1.6.2, the reference implementation, called as a
library) on the same open_clip model, the same sets in CLIP_benchmark's layout and the same templates.

The model is a random wit-tiny saved as a wit checkpoint; clip_benchmark loads that file through open_clip's own
`pretrained=`. Sets: CIFAR-10 test images with the CLIP repo's 18 templates, the same images with German class names
and templates from the set's own files, and Flickr8k with 5 captions per image (without ../shared/data: scikit-learn's
digits, captioned). wit counts rank ties against the model where clip_benchmark's torch.topk/argmax break them by
index; on float embeddings no two scores tie, so every metric agrees to 1e-6.

clip_benchmark 1.6.2's `zeroshot_classification.accuracy` fails under NumPy >= 2.4 (`float()` of a 1-element array:
"only 0-dimensional arrays can be converted to Python scalars"), and so does its `evaluate` for classification. So
the classification side runs its own `zero_shot_classifier` and `run_classification` (the class embeddings, template
averaging, normalisation and logits) and scores the logits by its definitions: top-k of torch.topk as its `accuracy`
does, mean per-class recall as scikit-learn's balanced accuracy of the argmax, as its `evaluate` does.
"""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from tests.eval_sets import classification_set, retrieval_set
from wit.cli import main
from wit.trainer.eval.model import MODEL_CONFIGS

pytestmark = pytest.mark.data_fallback  # the sets differ without ../shared/data
TASKS = """\
cifar10:
  name: CIFAR-10
cifar10_de:
  name: CIFAR-10 (German)
  path: wds_cifar10_de
  main_metric: mean_per_class_recall
retrieval/flickr8k:
  name: Flickr8k
  path: wds_flickr8k
  main_metric: mean_recall@1
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    classification_set(root / "wds_cifar10_test", 300)
    classification_set(root / "wds_cifar10_de", 300, german=True)
    retrieval_set(root / "wds_flickr8k", 80)
    (root / "tasks.yml").write_text(TASKS)
    open_clip.add_model_config(MODEL_CONFIGS)
    torch.manual_seed(3)
    model = open_clip.create_model("wit-tiny")
    checkpoint = root / "step_00000000.pt"  # the trainer's layout: weights under "state_dict", the run's config
    torch.save({"state_dict": model.state_dict(), "step": 0, "config": {"model": "wit-tiny"}}, checkpoint)
    out = root / "eval_results.jsonl"
    assert main(["eval", "suite", "--tasks", str(root / "tasks.yml"), "--root", str(root), "--checkpoint",
                 str(checkpoint), "--device", "cpu", "--batch-size", "64", "--out", str(out)]) == 0
    results = {line["key"]: line["metrics"] for line in map(json.loads, out.read_text().splitlines())}
    return root, checkpoint, results


def clip_benchmark_metrics(folder, checkpoint, retrieval: bool) -> dict:
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms("wit-tiny", pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer("wit-tiny")
    dataset = build_dataset(dataset_name="wds/set", root=str(folder), transform=transform, split="test",
                            download=False, task="zeroshot_retrieval" if retrieval else "zeroshot_classification")
    loader = torch.utils.data.DataLoader(dataset.batched(64), batch_size=None, shuffle=False, num_workers=0)
    if retrieval:
        return zeroshot_retrieval.evaluate(model, loader, tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10])
    classifier = zeroshot_classification.zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates,
                                                              "cpu", amp=False)
    logits, target = zeroshot_classification.run_classification(model, classifier, loader, "cpu", amp=False)
    return {**{f"acc{k}": topk_hits(logits, target, k) for k in (1, 5)},
            "mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(axis=1))}


def topk_hits(logits, target, k: int) -> float:
    """clip_benchmark's `accuracy`: the share of rows whose target is among torch.topk's k indices."""
    pred = logits.topk(k, 1, True, True)[1]
    return float((pred == target.view(-1, 1)).any(dim=1).sum()) / len(target)


@pytest.mark.parametrize("key,folder", [("cifar10", "wds_cifar10_test"), ("cifar10_de", "wds_cifar10_de")])
def test_zero_shot_classification_equals_clip_benchmark(suite, key, folder):
    root, checkpoint, results = suite
    want = clip_benchmark_metrics(root / folder, checkpoint, retrieval=False)
    got = results[key]
    assert got["images"] == 300 and got["classes"] == 10
    for name in ("acc1", "acc5", "mean_per_class_recall"):
        assert got[name] == pytest.approx(want[name], abs=1e-6), (name, got, want)


def test_retrieval_with_five_captions_per_image_equals_clip_benchmark(suite):
    root, checkpoint, results = suite
    want = clip_benchmark_metrics(root / "wds_flickr8k", checkpoint, retrieval=True)
    got = results["retrieval/flickr8k"]
    assert got["images"] == 80 and got["captions"] == 400
    for way in ("image", "text"):
        for k in (1, 5, 10):
            name = f"{way}_retrieval_recall@{k}"
            assert got[name] == pytest.approx(want[name], abs=1e-6), (name, got, want)
    # DataComp's main metric for retrieval: the mean of the two recall@1
    assert got["main_metric"] == pytest.approx((want["image_retrieval_recall@1"] + want["text_retrieval_recall@1"]) / 2)
