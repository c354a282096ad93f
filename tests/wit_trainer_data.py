"""Test shards in img2dataset's layout (`{shard:05d}.tar` with KEY.jpg, KEY.txt, KEY.json), images made by PIL."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image


def jpeg(seed: int, size=(96, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.random(3)[None, None, :]
    noise = rng.integers(0, 60, (h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def shard_bytes(shard: int, n: int, *, bad_jpeg=(), no_caption=(), truncate: bool = False) -> tuple[bytes, list[str]]:
    """A tar of n samples; returns (bytes, keys). `truncate` cuts the last sample's image in half."""
    out, keys = io.BytesIO(), []
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            keys.append(key)
            image = b"\xff\xd8not a jpeg" if i in bad_jpeg else jpeg(shard * 1000 + i, (64 + 8 * (i % 5), 48 + 4 * (i % 3)))
            files = {"jpg": image, "json": json.dumps({"key": key, "caption": f"photo {key}"}).encode()}
            if i not in no_caption:
                files["txt"] = f"a photo of sample {key}".encode()
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    if truncate:
        last = data.rfind(f"{keys[-1]}.jpg".encode())  # the last image's header; cut inside its data
        data = data[: last + 512 + 300]
    return data, keys


def write_shards(put, sizes, **corrupt) -> list[str]:
    """Write shards `{i:05d}.tar` of the given sizes through `put(name, bytes)`; returns all keys in order.

    corrupt: shard index -> kwargs of shard_bytes (bad_jpeg, no_caption, truncate)."""
    keys = []
    for shard, n in enumerate(sizes):
        data, k = shard_bytes(shard, n, **corrupt.get(str(shard), {}))
        put(f"{shard:05d}.tar", data)
        keys += k
    return keys
