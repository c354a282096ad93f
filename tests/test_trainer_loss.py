"""wit.trainer.loss equals open_clip.ClipLoss(local_loss=True, gather_with_grad=True), in one and in two gloo processes."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from wit.trainer.loss import clip_loss


def features(seed: int, n: int = 6, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return image, text


def both_losses(image, text, scale, rank, world):
    """(our loss, grads) and (open_clip's loss, grads) on copies of the same leaf tensors."""
    from open_clip import ClipLoss

    out = []
    for fn in (lambda i, t, s: clip_loss(i, t, s),
               lambda i, t, s: ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)(i, t, s)):
        i, t, s = (x.clone().requires_grad_(True) for x in (image, text, scale))
        loss = fn(i, t, s.exp())
        loss.backward()
        out.append((loss.detach(), i.grad, t.grad, s.grad))
    return out


def test_loss_matches_open_clip_in_one_process():
    image, text = features(0)
    ours, theirs = both_losses(image, text, torch.tensor(2.659), 0, 1)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert ours[0].item() > 0 and ours[3].abs().item() > 0  # a real loss with a gradient on the temperature


def test_valid_mask_equals_the_batch_without_the_masked_sample():
    image, text = features(1)
    valid = torch.tensor([True, True, False, True, True, True])
    masked = clip_loss(image, text, torch.tensor(10.0), valid)
    dropped = clip_loss(image[valid], text[valid], torch.tensor(10.0))
    torch.testing.assert_close(masked, dropped, atol=1e-6, rtol=0)
    full = clip_loss(image, text, torch.tensor(10.0), torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(full, clip_loss(image, text, torch.tensor(10.0)), atol=1e-6, rtol=0)


def _worker(rank: int, world: int, store: str, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        image, text = features(100 + rank)  # each rank has its own features
        ours, theirs = both_losses(image, text, torch.tensor(2.659), rank, world)
        # Plain arrays, not tensors: a tensor on a torch queue is a handle into this process's shared memory,
        # which the parent cannot open once this process has exited.
        queue.put((rank, [x.numpy() for x in ours], [x.numpy() for x in theirs]))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_loss_matches_open_clip_in_two_gloo_processes(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    store = tmp_path / "store"  # a file store: no port to pick and lose to another process before it is bound
    procs = [ctx.Process(target=_worker, args=(r, 2, str(store), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r: ([torch.from_numpy(x) for x in o], [torch.from_numpy(x) for x in t])
               for r, o, t in (queue.get(timeout=100) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for rank in (0, 1):
        ours, theirs = results[rank]
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # The gradient reaches each rank's features through the other rank's loss too: with the gather detached it
    # would differ, so compare with the single-process loss over the concatenated batch (the world's view).
    image = torch.cat([features(100)[0], features(101)[0]]).requires_grad_(True)
    text = torch.cat([features(100)[1], features(101)[1]]).requires_grad_(True)
    scale = torch.tensor(2.659)
    logits = scale.exp() * image @ text.T
    labels = torch.arange(12)
    per_rank = [(F.cross_entropy(logits[s], labels[s]) + F.cross_entropy(logits.T[s], labels[s])) / 2
                for s in (slice(0, 6), slice(6, 12))]
    sum(per_rank).backward()
    torch.testing.assert_close(results[0][0][1], image.grad[:6], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1][0][2], text.grad[6:], atol=1e-5, rtol=0)
