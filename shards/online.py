"""Online balancing (MetaCLIP 1.2 and 2): each epoch keeps a sample with its keep probability, drawn anew.

`wit curate balance --online` marks every matched pool pair `eligible` with its keep_prob = 1 - prod(1 - p_e);
`wit shards write` carries keep_prob (and matched) into the corpus manifest beside each output shard; the
trainer (`--online-balance`) keeps sample `uid` in epoch `epoch` iff `epoch_draws(seed, epoch, uid) < keep_prob`.
The draw is a hash of (seed, epoch, uid) alone, so it is the same for any number of ranks and loader workers and
after a resume, and `report` can count what E epochs keep without training.

A wit uid is 32 hex digits (a blake2b digest, shards.schema.pair_uid), so its bits are already uniform: the draw
mixes them with a key of (seed, epoch) in numpy (about 0.2 us a uid here, mostly parsing the hex), which matters as every rank
draws every sample of the corpus once per epoch to lay out the epoch.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow.compute as pc

from wit.shards.schema import KEEP_PROB
from wit.shards.storage import WitError
from wit.shards.tables import read_parquet

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit over the output."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def epoch_draws(seed: int, epoch: int, uids: list[str]) -> np.ndarray:
    """A uniform number in [0, 1) per uid that depends only on (seed, epoch, uid)."""
    bad = [u for u in uids if not isinstance(u, str) or len(u) != 32][:1]
    if not bad:
        try:
            words = np.frombuffer(bytes.fromhex("".join(uids)), dtype=">u8").astype(np.uint64).reshape(-1, 2)
        except ValueError:  # a non-hex digit somewhere: name the uid
            bad = [u for u in uids if not re.fullmatch("[0-9a-fA-F]{32}", u)][:1]
    if bad:
        raise WitError(f"uid {bad[0]!r}: not a wit uid (32 hex digits); online balancing draws from its bits")
    key = np.uint64(int.from_bytes(hashlib.blake2b(f"online-{seed}-{epoch}".encode(), digest_size=8).digest(), "big"))
    with np.errstate(over="ignore"):
        h = _mix(_mix(words[:, 0] ^ key) ^ words[:, 1])
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53


def kept(seed: int, epoch: int, uids, keep_prob: np.ndarray) -> np.ndarray:
    """Which samples epoch `epoch` keeps (a boolean mask)."""
    if not len(keep_prob):
        return np.zeros(0, dtype=bool)
    return epoch_draws(seed, epoch, uids) < np.asarray(keep_prob)


def corpus_manifest(tar_url: str) -> str:
    return tar_url[: -len(".tar")] + ".parquet" if tar_url.endswith(".tar") else tar_url + ".parquet"


def read_probabilities(tar_url: str, count: int | None = None) -> tuple[list[str], np.ndarray]:
    """(uids, keep_prob) of one output shard's samples in tar order, from the corpus manifest beside it."""
    url = corpus_manifest(tar_url)
    try:
        table = read_parquet(url, ["uid", KEEP_PROB])
    except FileNotFoundError:
        raise WitError(f"{url}: no corpus manifest beside {tar_url} (online balancing reads keep_prob there)") from None
    if KEEP_PROB not in table.column_names:
        raise WitError(f"{url}: no column {KEEP_PROB!r}: not an online corpus (write it with `wit shards write "
                       "--selection` of `wit curate balance --online`)")
    if count is not None and table.num_rows != count:
        raise WitError(f"{url}: {table.num_rows} rows, but its tar holds {count} samples")
    p = table[KEEP_PROB]
    if p.null_count or (table.num_rows and (pc.min(p).as_py() < 0 or pc.max(p).as_py() > 1)):
        raise WitError(f"{url}: {KEEP_PROB} must be a probability in [0, 1] on every row")
    return table["uid"].to_pylist(), p.to_numpy(zero_copy_only=False).astype(np.float64)


def report(tar_urls: list[str], seed: int, epochs: int) -> dict:
    """What `epochs` epochs of online balancing keep, shard by shard (one shard's rows in memory at a time): the kept
    count per epoch, the distinct pairs seen over all of them, and those of a fixed selection (one draw, the same
    pairs every epoch: epoch 0's, which has the distribution of `curate balance`'s fixed draw)."""
    per_epoch, distinct, pool, expected = [0] * epochs, 0, 0, 0.0
    for url in tar_urls:
        uids, p = read_probabilities(url)
        seen = np.zeros(len(uids), dtype=bool)
        for e in range(epochs):
            k = kept(seed, e, uids, p)
            per_epoch[e] += int(k.sum())
            seen |= k
        distinct, pool, expected = distinct + int(seen.sum()), pool + len(uids), expected + float(p.sum())
    return {"epochs": epochs, "pool": pool, "expected_per_epoch": round(expected, 3), "kept_per_epoch": per_epoch,
            "distinct_online": distinct, "distinct_fixed": per_epoch[0] if epochs else 0}


def main(argv: list[str] | None = None) -> int:
    """`python -m wit.shards.online CORPUS/index.json --epochs E --seed S`: the report as one JSON line."""
    import argparse
    import json
    import sys

    from wit.shards.storage import read_json

    parser = argparse.ArgumentParser(prog="python -m wit.shards.online", description=main.__doc__)
    parser.add_argument("index", help="index.json of a corpus written from `wit curate balance --online`")
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="wit train's --seed")
    args = parser.parse_args(argv)
    try:
        base = args.index.rsplit("/", 1)[0] if "/" in args.index else "."
        urls = [n if "://" in n else f"{base}/{n}" for n in sorted(read_json(args.index)["shards"])]
        print(json.dumps(report(urls, args.seed, args.epochs)))
    except WitError as err:
        print(f"wit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
