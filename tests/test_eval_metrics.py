"""The evaluation maths against results worked out by hand on small fixed embeddings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wit.shards.storage import WitError
from wit.trainer.eval.linear_probe import probe
from wit.trainer.eval.metrics import (
    class_embeddings,
    classification_metrics,
    mean_per_class_recall,
    retrieval_metrics,
    retrieval_recall,
    topk_accuracy,
)
from wit.trainer.eval.prompts import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR_TEMPLATES,
    prompt_set,
    prompts_for,
)
from wit.trainer.eval.zeroshot import label_index


def test_topk_on_four_images_three_classes():
    logits = torch.tensor([[0.9, 0.1, 0.0],    # label 0: ranked 1st
                           [0.2, 0.5, 0.7],    # label 1: ranked 2nd (behind class 2)
                           [0.6, 0.3, 0.1],    # label 2: ranked 3rd
                           [0.1, 0.8, 0.4]])   # label 1: ranked 1st
    labels = torch.tensor([0, 1, 2, 1])
    # by hand: top-1 hits images 0 and 3 -> 2/4; top-2 adds image 1 -> 3/4; top-5 (>= 3 classes) -> 4/4
    assert topk_accuracy(logits, labels, ks=(1, 2, 5)) == {"top1": 0.5, "top2": 0.75, "top5": 1.0}


def test_topk_ties_count_against_the_model():
    logits = torch.zeros(4, 3)  # every class tied: no lucky hits
    assert topk_accuracy(logits, torch.tensor([0, 1, 2, 0]), ks=(1, 2, 3)) == {"top1": 0.0, "top2": 0.0,
                                                                               "top3": 1.0}


def test_mean_per_class_recall_weighs_every_class_alike():
    # class 0: 3 images, 2 right; class 1: 1 image, right; class 2 has no images (not averaged). By hand:
    # (2/3 + 1) / 2 = 5/6, where top-1 accuracy is 3/4. A tie (image 3) counts against the model, as in top-k.
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.3, 0.1], [0.5, 0.5, 0.1], [0.1, 0.7, 0.2]])
    labels = torch.tensor([0, 0, 0, 1])
    assert mean_per_class_recall(logits, labels) == pytest.approx(5 / 6)
    # labels 1, 0, 0, 1: class 0 gets image 1 right and image 2 tied (against): 1/2; class 1 image 3 only: 1/2
    assert mean_per_class_recall(logits, torch.tensor([1, 0, 0, 1])) == pytest.approx(0.5)


def test_the_fields_metric_names():
    """CLIP_benchmark's and DataComp's names; acc5 is None under 5 classes (DataComp writes it so)."""
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.7]])
    assert classification_metrics(logits, torch.tensor([0, 1])) == {"acc1": 0.5, "acc5": None,
                                                                    "mean_per_class_recall": 0.5}
    five = torch.eye(5)
    assert classification_metrics(five, torch.arange(5))["acc5"] == 1.0
    images, texts = torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])  # image 1's 2nd caption is bad
    got = retrieval_metrics(images, texts, torch.tensor([0, 1, 1]))
    # image retrieval = text->image: captions 0 and 1 find their image, caption 2 (of image 1) finds image 0: 2/3.
    # text retrieval = image->text: each image's best own caption (cosine 1.0) is its top text: 1.
    assert got["image_retrieval_recall@1"] == pytest.approx(2 / 3) and got["text_retrieval_recall@1"] == 1.0
    assert got["mean_recall@1"] == pytest.approx((2 / 3 + 1) / 2) and got["image_retrieval_recall@10"] == 1.0


def test_prompt_ensembling_normalises_averages_renormalises():
    # 2 classes x 2 templates in 2-D. Class 0: [3,4] -> [.6,.8] and [0,2] -> [0,1]; mean [.3,.9] -> /sqrt(.9).
    # Class 1: [1,0] and [0,1]; mean [.5,.5] -> [1,1]/sqrt(2). A plain mean of the raw vectors would differ.
    emb = torch.tensor([[[3.0, 4.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 5.0]]])
    want = torch.tensor([[0.3 / math.sqrt(0.9), 0.9 / math.sqrt(0.9)], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    assert torch.allclose(class_embeddings(emb), want, atol=1e-6)


def test_retrieval_recall_both_directions_with_several_captions_per_image():
    images = torch.eye(3)  # so similarity(image i, text t) is text t's i-th coordinate
    texts = torch.tensor([[0.6, 0.8, 0.0],   # caption of image 0
                          [1.0, 0.0, 0.0],   # caption of image 0
                          [0.0, 0.0, 1.0],   # caption of image 1 (a bad one: it matches image 2)
                          [0.0, 0.6, 0.8],   # caption of image 2
                          [0.8, 0.0, 0.6]])  # caption of image 2
    text_image = torch.tensor([0, 0, 1, 2, 2])
    # image->text: image 0's best own caption (t1, 1.0) beats all: rank 0. Image 1's own t2 scores 0, and the
    # four other captions score >= 0 (ties count against): rank 4. Image 2's best own t3 (.8) is beaten by t2 (1.0):
    # rank 1. So R@1 = 1/3, R@2 = 2/3, R@5 = 3/3.
    # text->image: t0 own .6 < image 1's .8: rank 1; t1 rank 0; t2 own 0, image 0 ties at 0 and image 2 is 1.0:
    # rank 2; t3 rank 0; t4 own .6 < image 0's .8: rank 1. So R@1 = 2/5, R@2 = 4/5, R@5 = 5/5.
    got = retrieval_recall(images, texts, text_image, ks=(1, 2, 5), chunk=2)  # chunking must not matter
    want = {"image_to_text_R@1": 1 / 3, "image_to_text_R@2": 2 / 3, "image_to_text_R@5": 1.0,
            "text_to_image_R@1": 0.4, "text_to_image_R@2": 0.8, "text_to_image_R@5": 1.0}
    assert got == pytest.approx(want)


def test_retrieval_needs_a_caption_for_every_image():
    with pytest.raises(ValueError):
        retrieval_recall(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))


def test_linear_probe_on_hand_made_features():
    rng = np.random.default_rng(0)
    # two well separated clusters on the x axis; the test set has one point placed in the wrong cluster
    train_x = np.concatenate([rng.normal([-3, 0], 0.3, (20, 2)), rng.normal([3, 0], 0.3, (20, 2))])
    train_y = np.array(["a"] * 20 + ["b"] * 20)
    test_x = np.array([[-3.0, 0.1], [-2.5, -0.2], [3.1, 0.0], [-3.2, 0.3]])
    test_y = np.array(["a", "a", "b", "b"])  # the last one sits in cluster "a": 3 of 4 right, by hand
    cs = [1e-2, 1e0, 1e2]
    out = probe(train_x, train_y, test_x, test_y, cs, val_fraction=0.25, seed=0)
    assert out["test_accuracy"] == 0.75
    assert out["best_C"] in cs and out["val_accuracy"] == 1.0
    assert [s["C"] for s in out["sweep"]] == cs


def test_linear_probe_needs_two_classes():
    with pytest.raises(WitError):
        probe(np.zeros((4, 2)), np.array(["a"] * 4), np.zeros((1, 2)), np.array(["a"]), [1.0])


def test_prompt_sets_are_the_papers():
    assert len(CIFAR10_CLASSES) == 10 and len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100
    assert len(CIFAR_TEMPLATES) == 18 and all(t.count("{}") == 1 for t in CIFAR_TEMPLATES)
    assert prompts_for("cat", CIFAR_TEMPLATES[:2]) == ["a photo of a cat.", "a blurry photo of a cat."]
    names, templates = prompt_set("imagenet")
    assert len(names) == 1000 and len(templates) == 80 and all(t.count("{}") == 1 for t in templates)
    assert prompt_set("folders", ["maple_tree"])[0] == ["maple tree"]
    with pytest.raises(WitError):
        prompt_set("mnist")


def test_labels_map_to_prompt_classes():
    assert label_index(["cat", "Maple_Tree", 3], ["cat", "maple tree", "dog", "x"], "d").tolist() == [0, 1, 3]
    with pytest.raises(WitError, match="unicorn"):
        label_index(["unicorn"], ["cat"], "d")


def test_wordnet_id_folders_map_by_sorted_order():
    # ImageNet's val layout: folders named by WordNet id, class k = the k-th id in sorted order
    folders = ["n02000000", "n01000000", "n03000000"]
    got = label_index(["n03000000", "n01000000", "n02000000"], ["tench", "goldfish", "shark"], "val", folders)
    assert got.tolist() == [2, 0, 1]
    with pytest.raises(WitError, match="2 WordNet-id folders for 3 classes"):
        label_index(["n01000000"], ["tench", "goldfish", "shark"], "val", folders[:2])
