"""64-bit perceptual hash (pHash: low frequencies of a 2-D DCT against their median) and Hamming helpers.

Decoding is the cost, not the DCT: JPEGs are decoded at reduced scale (`draft`, libjpeg's DCT scaling) to about
64 px, then resized to 32x32 grayscale. Hashes are stored as signed int64 (DuckDB BIGINT, parquet int64) so that
`bit_count(xor(a, b))` is the Hamming distance in SQL.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIZE = 32  # the image is reduced to SIZE x SIZE before the DCT
LOW = 8  # LOW x LOW lowest frequencies make the 64 bits


def _dct_matrix(n: int, k: int) -> np.ndarray:
    """The first k rows of the orthonormal DCT-II matrix of size n (so D @ x is the DCT of x, truncated)."""
    i = np.arange(n)
    d = np.cos(np.pi * (2 * i[None, :] + 1) * np.arange(k)[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_D = _dct_matrix(SIZE, LOW)
_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def gray32(im: Image.Image) -> np.ndarray:
    """32x32 float grayscale of an opened (not yet loaded) image; uses JPEG draft mode when it can."""
    if im.format == "JPEG":
        im.draft("L", (2 * SIZE, 2 * SIZE))  # decode at 1/2..1/8 scale: most of the speed
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=2.0), dtype=np.float32)


def phash_gray(g: np.ndarray) -> int:
    """pHash of 32x32 grayscale pixels: bit set where a low DCT coefficient exceeds their median."""
    low = _D @ g.astype(np.float64) @ _D.T
    bits = (low > np.median(low)).ravel()
    return to_signed(int(_WEIGHTS[bits].sum()))


def phash_image(im: Image.Image) -> int:
    return phash_gray(gray32(im))


def phash_bytes(data: bytes) -> int:
    return phash_image(Image.open(io.BytesIO(data)))


def to_signed(u: int) -> int:
    """uint64 -> int64 with the same bits."""
    return u - (1 << 64) if u >= 1 << 63 else u


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count()


def bands(k: int) -> list[tuple[int, int]]:
    """(shift, width) of k+1 bands covering 64 bits: two hashes within distance k agree on one band (pigeonhole)."""
    n = k + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def band_values(h: int, k: int) -> list[int]:
    u = h & 0xFFFFFFFFFFFFFFFF
    return [(u >> s) & ((1 << w) - 1) for s, w in bands(k)]
