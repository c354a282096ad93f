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


def shard_bytes(shard: int, n: int, *, bad_jpeg=(), no_caption=(), truncate: bool = False, png=(), grey=(),
                cut_jpeg=()) -> tuple[bytes, list[str]]:
    """A tar of n samples; returns (bytes, keys). `truncate` cuts the last sample's image in half; `png` stores
    those samples as PNG, `grey` as greyscale JPEG, `cut_jpeg` as a JPEG whose header reads but whose data stops."""
    out, keys = io.BytesIO(), []
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            keys.append(key)
            image = b"\xff\xd8not a jpeg" if i in bad_jpeg else jpeg(shard * 1000 + i, (64 + 8 * (i % 5), 48 + 4 * (i % 3)))
            ext = "jpg"
            if i in png or i in grey:
                img = Image.open(io.BytesIO(image)).convert("L" if i in grey else "RGB")
                image, ext = (_saved(img, "PNG"), "png") if i in png else (_saved(img, "JPEG"), "jpg")
            if i in cut_jpeg:
                image = image[: len(image) // 2]
            files = {ext: image, "json": json.dumps({"key": key, "caption": f"photo {key}"}).encode()}
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


def _saved(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def write_shards(put, sizes, **corrupt) -> list[str]:
    """Write shards `{i:05d}.tar` of the given sizes through `put(name, bytes)`; returns all keys in order.

    corrupt: shard index -> kwargs of shard_bytes (bad_jpeg, no_caption, truncate, png, grey, cut_jpeg)."""
    keys = []
    for shard, n in enumerate(sizes):
        data, k = shard_bytes(shard, n, **corrupt.get(str(shard), {}))
        put(f"{shard:05d}.tar", data)
        keys += k
    return keys
