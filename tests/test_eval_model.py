"""Checkpoint loading, the chance baseline of a random tiny CLIP on real CIFAR-10 images, and the CLI."""
from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch

from wit.shards.storage import WitError
from tests.conftest import shared_data
from wit.trainer.eval.model import MODEL_CONFIGS, load_model
from wit.cli import main

TINY = "wit-tiny"  # trainer/model_configs/wit-tiny.json: 32 px, 64-dim embeddings


@pytest.fixture(scope="module")
def tiny():
    open_clip.add_model_config(MODEL_CONFIGS)
    torch.manual_seed(1)
    return open_clip.create_model(TINY).eval()


def image_embedding(model) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model.encode_image(torch.randn(2, 3, 32, 32))


def test_loads_training_checkpoints_and_model_only_files(tiny, tmp_path):
    want = image_embedding(tiny)
    state = tiny.state_dict()
    training = tmp_path / "step_00000010.pt"  # the trainer's layout: weights under "state_dict", its config
    torch.save({"state_dict": state, "step": 10, "config": {"model": TINY}, "optimizer": {}}, training)
    model_only = tmp_path / "model.pt"
    torch.save(state, model_only)
    wrapped = tmp_path / "ddp.pt"  # "model" key and DDP's "module." prefix
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, wrapped)

    older = tmp_path / "step_00000005.pt"  # a checkpoint folder means its newest step file
    torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in state.items()}, "config": {"model": TINY}}, older)

    for path, name in ((training, None), (model_only, TINY), (wrapped, TINY), (tmp_path, None)):
        model, _, _ = load_model(name, str(path), random_init=False)
        assert torch.allclose(image_embedding(model), want), path.name
    # the contract with the trainer: a model-only file loads through open_clip's own `pretrained=`
    model, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=str(model_only))
    assert torch.allclose(image_embedding(model.eval()), want)


def test_batched_threaded_encoding_keeps_the_order(tiny):
    from wit.trainer.eval.datasets import labelled
    from wit.trainer.eval.features import encode_images

    src = labelled(str(shared_data("cifar10", "test.tar")), limit=40)
    preprocess = open_clip.image_transform(32, is_train=False)
    one, labels_one = encode_images(tiny, preprocess, src.items(), batch_size=40, workers=1)
    many, labels_many = encode_images(tiny, preprocess, src.items(), batch_size=16, workers=3)
    assert one.shape == (40, 64) and torch.allclose(one, many, atol=1e-5)
    assert labels_one == labels_many == [label for _, _, label in src.items()]
    assert torch.allclose(one.norm(dim=-1), torch.ones(40), atol=1e-5)


def test_loader_errors(tmp_path):
    with pytest.raises(WitError, match="exactly one"):
        load_model(TINY, None, random_init=False)
    with pytest.raises(WitError, match="no such checkpoint"):
        load_model(TINY, str(tmp_path / "nope.pt"), random_init=False)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(WitError, match="junk.pt: not a torch checkpoint"):
        load_model(TINY, str(tmp_path / "junk.pt"), random_init=False)
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(WitError, match="do not fit model wit-tiny"):
        load_model(TINY, str(tmp_path / "other.pt"), random_init=False)
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(WitError, match="records no model name"):
        load_model(None, str(tmp_path / "empty.pt"), random_init=False)


def test_random_tiny_clip_scores_at_chance_on_cifar10(tmp_path):
    """A random model's guesses do not depend on the class: top-1 ~ Binomial(n, 1/10) / n."""
    data = shared_data("cifar10", "test.tar")
    out = tmp_path / "zs.json"
    torch.manual_seed(0)
    code = main(["eval", "zeroshot", "--data", str(data), "--prompts", "cifar10", "--model", TINY, "--random-init",
                 "--limit", "500", "--device", "cpu", "--batch-size", "128", "--out", str(out)])
    got = json.loads(out.read_text())
    assert code == 0 and got["images"] == 500 and got["classes"] == 10 and got["templates"] == 18
    bound = 5 * math.sqrt(0.1 * 0.9 / 500)  # five standard deviations: 0.033 .. 0.167
    assert abs(got["top1"] - 0.1) < bound, got
    assert got["top5"] >= got["top1"]


def test_cli_retrieval_and_linear_probe_run_end_to_end(tmp_path, capsys):
    flickr = shared_data("flickr8k")
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--data", str(flickr / "images"), "--captions", str(flickr / "captions.csv"),
                 "--limit", "20", "--model", TINY, "--random-init", "--device", "cpu", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["images"] == 20 and got["captions"] == 100
    assert all(0 <= got[f"{d}_R@{k}"] <= 1 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))
    assert got["image_to_text_R@1"] <= got["image_to_text_R@5"] <= got["image_to_text_R@10"]

    cifar = shared_data("cifar10", "test.tar")
    out = tmp_path / "lp.json"
    assert main(["eval", "linear-probe", "--train", str(cifar), "--test", str(cifar), "--limit-train", "100",
                 "--limit-test", "50", "--c-steps", "3", "--c-min", "0.01", "--c-max", "1", "--model", TINY,
                 "--random-init", "--device", "cpu", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["train_images"] == 100 and got["test_images"] == 50 and got["best_C"] in (0.01, 0.1, 1.0)
    assert len(got["sweep"]) == 3 and 0 <= got["test_accuracy"] <= 1
    assert "test_accuracy" in capsys.readouterr().out  # the printed table


def test_cli_user_error_is_one_line(tmp_path, capsys):
    code = main(["eval", "zeroshot", "--data", str(tmp_path / "missing"), "--random-init", "--model", TINY])
    assert code == 2 and "missing: no such file or folder" in capsys.readouterr().err


def test_text_features_on_the_positions_that_count_equal_open_clips(tiny):
    """The text tower run up to the batch's last end-of-text token gives open_clip's encode_text features; a caption
    with '!' (token id 0, the padding id) and one cut at 77 tokens included. A tower not pooled at the end-of-text
    token runs as open_clip runs it."""
    from wit.trainer.eval.features import text_features

    tokens = open_clip.get_tokenizer(TINY)(["a cat!", "Wow! a dog!! on the grass !", "a dog " * 60, "x"])
    with torch.no_grad():
        want = tiny.encode_text(tokens)
        assert torch.allclose(text_features(tiny, tokens), want, atol=1e-5)
        short = tokens[[0, 1, 3]]  # 9 positions instead of 77
        assert torch.allclose(text_features(tiny, short), tiny.encode_text(short), atol=1e-5)
        tiny.text_pool_type = "last"
        try:
            assert torch.equal(text_features(tiny, short), tiny.encode_text(short))
        finally:
            tiny.text_pool_type = "argmax"
