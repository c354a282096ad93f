"""One optimizer step's parts: feature-cached accumulation, the LR schedule, weight-decay groups, the config."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses

import open_clip
import pytest
import torch

from wit.shards.options import add_arguments, from_args, to_argv
from wit.trainer.config import TrainConfig
from wit.trainer.train import forward_backward, lr_at, param_groups  # also registers trainer/model_configs


def grads(model, images, texts, valid, accum):
    model.zero_grad(set_to_none=True)
    loss = forward_backward(model, model, images, texts, valid, accum, contextlib.nullcontext())
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("accum", [2, 4])
def test_feature_cached_accumulation_gives_the_gradients_of_one_pass(accum):
    torch.manual_seed(0)
    model = open_clip.create_model("wit-tiny")
    images = torch.randn(8, 3, 32, 32)
    texts = open_clip.get_tokenizer("wit-tiny")([f"a photo of thing {i}" for i in range(8)])
    valid = torch.tensor([True] * 5 + [False] + [True] * 2)
    loss1, g1 = grads(model, images, texts, valid, 1)
    loss2, g2 = grads(model, images, texts, valid, accum)
    assert g1.keys() == g2.keys() and "logit_scale" in g1
    torch.testing.assert_close(loss2, loss1, atol=1e-5, rtol=0)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], atol=1e-5, rtol=1e-4, msg=name)


def test_lr_warms_up_then_decays_as_a_cosine_to_zero():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110)
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[109] < 1e-3
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone after warmup
    assert lrs == [lr_at(s, cfg) for s in range(110)]  # a pure function of the step


def test_no_weight_decay_on_gains_biases_and_temperature():
    model = open_clip.create_model("wit-tiny")
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert "logit_scale" in no and "ln_final.weight" in no and "ln_final.bias" in no
    assert "text_projection" not in no and "visual.conv1.weight" not in no
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_round_trips_through_flags():
    cfg = TrainConfig(data="s3://b/{0..3}.tar", steps=7, lr=0.1, log_samples=True, accum=2)
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    assert from_args(TrainConfig, parser.parse_args(to_argv(cfg))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3


def test_wit_train_reports_user_errors_in_one_line(tmp_path, capsys):
    from wit.cli import main

    assert main(["train", "--data", str(tmp_path / "{00000..00001}.tar"), "--out", str(tmp_path / "run")]) == 2
    assert f"{tmp_path}/00000.tar: shard not found" in capsys.readouterr().err
    assert main(["train", "--data", "x.tar", "--batch-size", "6", "--accum", "4"]) == 2
    assert "--accum 4: must divide --batch-size 6" in capsys.readouterr().err
