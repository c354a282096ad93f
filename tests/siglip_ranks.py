"""The gloo ranks of the SigLIP tests: each computes the losses on its own features and writes plain JSON (no tensors
cross a process boundary); the rendezvous store is the parent's, on a port the kernel chose and never released."""
from __future__ import annotations

import datetime
import json
import multiprocessing

import torch
import torch.nn.functional as F

from wit.trainer.loss import siglip_loss

SCALE, BIAS = 2.1, -3.0  # a temperature and bias where positives and negatives both carry gradient
N = 6  # samples per rank


def features(seed: int, n: int = N, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def rank_features(rank: int):
    return features(100 + rank)


def rank_valid(rank: int, masked: bool) -> torch.Tensor:
    valid = torch.ones(N, dtype=torch.bool)
    if masked:
        valid[rank % N] = False
    return valid


def both_losses(image, text, rank=0, world=1, valid=None):
    """[(loss, d image, d text, d scale, d bias)] for ours and open_clip's, on fresh leaves."""
    from open_clip.loss import SigLipLoss

    out = []
    for fn in (lambda i, t, s, b: siglip_loss(i, t, s.exp(), b, valid),
               lambda i, t, s, b: SigLipLoss(rank=rank, world_size=world)(i, t, s.exp(), b)):
        leaves = [x.clone().requires_grad_(True) for x in (image, text, torch.tensor(SCALE), torch.tensor(BIAS))]
        loss = fn(*leaves)
        loss.backward()
        out.append([loss.detach()] + [x.grad for x in leaves])
    return out


def worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=datetime.timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        image, text = rank_features(rank)
        ours, theirs = both_losses(image, text, rank, world)
        masked = both_losses(image, text, rank, world, rank_valid(rank, True))[0]
        result = {"ours": [x.tolist() for x in ours], "theirs": [x.tolist() for x in theirs],
                  "masked": [x.tolist() for x in masked]}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def run_ranks(folder, world: int) -> list[dict]:
    """Start `world` gloo ranks, wait for them, return what each wrote."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(r, world, store.port, str(folder))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * world, codes
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]
