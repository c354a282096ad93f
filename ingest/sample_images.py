"""Real images that ship inside PyPI wheels, so the demo and the tests run on a fresh machine with no network."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# skimage.data.cat() is chelsea() under another name: one photo twice would be a duplicate to every dedup stage.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page",
                  "horse", "text", "clock", "motorcycle_left", "immunohistochemistry", "hubble_deep_field")


def _jpeg(array: np.ndarray, quality: int = 92) -> bytes:
    img = Image.fromarray(array)
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def package_photos() -> dict[str, bytes]:
    """Named JPEG photos from scikit-image and scikit-learn (name -> bytes), all distinct; those a wheel lacks are
    left out."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in SKIMAGE_PHOTOS:
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # some skimage images need a download; we never fetch at run time
            continue
        if array.dtype != np.uint8:
            array = (255 * (array.astype(float) / max(float(array.max()), 1e-9))).astype(np.uint8)
        photos[f"{name}.jpg"] = _jpeg(array)
    sample = load_sample_images()
    for fname, array in zip(sample.filenames, sample.images):
        photos[fname.rsplit("/", 1)[-1]] = _jpeg(array)
    return photos


def digits(size: int = 64) -> list[tuple[bytes, int]]:
    """scikit-learn's 1,797 handwritten digits (real scans, 8x8), upscaled to `size` px, as (jpeg, label)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    out = []
    for image, label in zip(data.images, data.target):
        array = (image * (255 / 16)).astype(np.uint8)
        img = Image.fromarray(array).resize((size, size), Image.BICUBIC).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        out.append((buf.getvalue(), int(label)))
    return out
