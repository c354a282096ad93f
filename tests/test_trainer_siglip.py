"""`wit train --loss siglip`: the sigmoid loss equals open_clip.loss.SigLipLoss in values and gradients, in one
process and across gloo processes (neighbour exchange), masks like the batch without the sample, accumulates like
one pass, and a SigLIP checkpoint (which holds the bias) loads for evaluation."""
from __future__ import annotations

import contextlib
import open_clip
import pytest
import torch
import torch.nn.functional as F

from tests import siglip_ranks
from tests.ingest_helpers import wit
from wit.trainer.loss import SIGLIP_LOGIT_BIAS, SIGLIP_LOGIT_SCALE, model_kwargs, siglip_loss
from wit.trainer.train import forward_backward  # also registers trainer/model_configs

from tests.siglip_ranks import BIAS, SCALE, both_losses, features


def test_sigmoid_loss_matches_open_clip_in_one_process():
    ours, theirs = both_losses(*features(0))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert ours[0].item() > 0 and ours[3].abs().item() > 0 and ours[4].abs().item() > 0


def test_masked_sample_is_the_batch_without_it():
    image, text = features(1)
    valid = torch.tensor([True, False, True, True, True, True])
    masked = siglip_loss(image, text, torch.tensor(5.0), torch.tensor(-2.0), valid)
    dropped = siglip_loss(image[valid], text[valid], torch.tensor(5.0), torch.tensor(-2.0))
    torch.testing.assert_close(masked, dropped, atol=1e-6, rtol=0)


def test_siglip_model_starts_at_siglip_temperature_and_bias_and_accumulates_like_one_pass():
    torch.manual_seed(0)
    model = open_clip.create_model("wit-tiny", **model_kwargs("siglip"))
    assert model.logit_scale.item() == pytest.approx(SIGLIP_LOGIT_SCALE)
    assert model.logit_bias.item() == pytest.approx(SIGLIP_LOGIT_BIAS)
    images, texts = torch.randn(8, 3, 32, 32), torch.randint(1, 400, (8, 32))
    valid = torch.ones(8, dtype=torch.bool)
    grads = []
    for accum in (1, 2):
        model.zero_grad()
        forward_backward(model, model, images, texts, valid, accum, contextlib.nullcontext(), siglip_loss)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert "logit_bias" in grads[0] and grads[0]["logit_bias"].abs().item() > 0
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------- many processes
def _world_view(world: int, masked: bool):
    """The same objective in one process: each rank's images against every rank's texts, over its valid images."""
    parts = [siglip_ranks.rank_features(r) for r in range(world)]
    image = torch.cat([p[0] for p in parts]).requires_grad_(True)
    text = torch.cat([p[1] for p in parts]).requires_grad_(True)
    valid = torch.cat([siglip_ranks.rank_valid(r, masked) for r in range(world)])
    n = len(valid) // world
    logits = torch.tensor(SCALE).exp() * image @ text.T + BIAS
    labels = 2 * torch.eye(len(valid)) - 1
    per_pair = -F.logsigmoid(labels * logits) * (valid[:, None] & valid[None, :])
    total = sum(per_pair[r * n:(r + 1) * n].sum() / valid[r * n:(r + 1) * n].sum() for r in range(world))
    total.backward()
    return image.grad, text.grad


@pytest.mark.timeout(400)
@pytest.mark.parametrize("world", [2, 3])  # 2: one one-way exchange; 3: the bidirectional exchange
def test_sigmoid_loss_matches_open_clip_across_gloo_processes(tmp_path, world):
    results = siglip_ranks.run_ranks(tmp_path, world)
    for r in results:
        for a, b in zip(r["ours"], r["theirs"]):
            torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)
    # The gradient reaches each rank's texts through the other ranks' losses (with the exchange detached it would
    # differ), and masks travel with the texts: both against the world's view computed in one process.
    for key, masked in (("ours", False), ("masked", True)):
        image_grad, text_grad = _world_view(world, masked)
        n = image_grad.shape[0] // world
        for rank, r in enumerate(results):
            torch.testing.assert_close(torch.tensor(r[key][1]), image_grad[rank * n:(rank + 1) * n], atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.tensor(r[key][2]), text_grad[rank * n:(rank + 1) * n], atol=1e-5, rtol=0)


def test_wit_train_loss_siglip_writes_a_checkpoint_with_the_bias_that_evaluation_loads(tmp_path):
    from wit.ingest.sample_images import digits
    from wit.trainer.eval.model import load_model
    from tests.test_eval_learns import _write_shards

    index = _write_shards(tmp_path / "shards", digits()[:64], per_shard=32)
    r = wit("train", "--data", index, "--model", "wit-tiny", "--out", str(tmp_path / "run"), "--steps", "3",
            "--batch-size", "16", "--warmup", "1", "--workers", "0", "--loss", "siglip", "--no-tensorboard",
            timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    state = torch.load(next((tmp_path / "run" / "checkpoints").glob("step_*.pt")), weights_only=True)["state_dict"]
    assert abs(state["logit_bias"].item() - SIGLIP_LOGIT_BIAS) < 0.1  # learnable, started at -10
    model, _, _ = load_model(None, str(tmp_path / "run" / "checkpoints"), False)
    assert model.logit_bias.item() == pytest.approx(state["logit_bias"].item())


