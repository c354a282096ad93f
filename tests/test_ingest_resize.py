"""SafeResizer on real images, in process (nothing is fetched): formats refused before decoding, JPEGs decoded at
reduced size, images that already fit kept as they came."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from img2dataset.resizer import Resizer
from PIL import Image

from tests.conftest import SHARED_DATA
from wit.ingest.engine import SafeResizer, reduction

SETTINGS = dict(resize_mode="keep_ratio", resize_only_if_bigger=False, upscale_interpolation="lanczos",
                downscale_interpolation="area", encode_quality=95, encode_format="jpg")


def resizers(size: int, max_pixels: int = 89_478_485):
    ours = SafeResizer(image_size=size, **SETTINGS)
    ours.max_pixels = max_pixels
    return ours, Resizer(image_size=size, **SETTINGS)


def radiance_hdr(w: int, h: int) -> bytes:
    """The builder of issue 17: a run-length encoded Radiance HDR declaring w x h pixels."""
    line = b"\x02\x02" + bytes([w >> 8, w & 255]) + b"".join(
        bytes([255, v]) * (w // 127) + bytes([128 + w % 127, v]) for v in (128, 64, 32, 129))
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (h, w) + line * h


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_a_format_whose_header_is_not_read_is_refused_before_any_decoder():
    hdr = radiance_hdr(2000, 2000)
    ours, theirs = resizers(256, max_pixels=1_000_000)
    assert theirs(io.BytesIO(hdr))[-1] is None  # img2dataset's OpenCV decodes all 4M pixels of it
    *_, error = ours(io.BytesIO(hdr))
    assert error.startswith("unsupported_format")
    *_, error = ours(io.BytesIO(b"<html><body>not an image</body></html>"))
    assert error.startswith("unsupported_format")
    *_, error = ours(io.BytesIO(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20))  # says JPEG, is not one
    assert error.startswith("decode_error")


def test_declared_size_over_the_limit_is_a_bomb_before_decoding():
    big = jpeg(Image.new("RGB", (1200, 1000), (10, 200, 10)))
    ours, _ = resizers(256, max_pixels=1_000_000)
    *_, error = ours(io.BytesIO(big))
    assert error.startswith("decompression_bomb: 1200x1000")


def test_reduction_keeps_both_sides_at_least_the_target():
    assert reduction(500, 375, 171, 128) == 2
    assert reduction(500, 375, 341, 256) == 1  # less than twice the target: full size
    assert reduction(4000, 3000, 341, 256) == 8
    assert reduction(1024, 512, 256, 128) == 4


def large_photos(n: int = 20) -> dict[str, bytes]:
    """Real photos with a short side of at least 256 px: Flickr8k's 500 px ones, else the photos wheels ship."""
    folder = SHARED_DATA / "flickr8k" / "images"
    if folder.is_dir():
        paths = [p for p in sorted(folder.glob("*.jpg")) if min(Image.open(p).size) >= 256][:n]
        return {p.name: p.read_bytes() for p in paths}
    from wit.ingest.sample_images import package_photos

    return package_photos()


@pytest.mark.data_fallback  # large_photos differ without ../shared/data
def test_large_jpegs_decode_reduced_to_img2datasets_size_and_look_the_same():
    ours, theirs = resizers(128)
    diffs = []
    for name, data in sorted(large_photos().items()):
        w, h = Image.open(io.BytesIO(data)).size
        if min(w, h) < 256:
            continue
        mine, *sizes, error = ours(io.BytesIO(data))
        ref, *ref_sizes, ref_error = theirs(io.BytesIO(data))
        assert error is None and ref_error is None
        assert sizes == ref_sizes and min(sizes[:2]) == 128, name
        a = cv2.imdecode(np.frombuffer(mine, np.uint8), cv2.IMREAD_COLOR).astype(float)
        b = cv2.imdecode(np.frombuffer(ref, np.uint8), cv2.IMREAD_COLOR).astype(float)
        diffs.append(np.abs(a - b).mean())
        assert diffs[-1] < 8.0, name  # DCT-scaled then area-resized vs area-resized: a few grey levels
    assert len(diffs) >= 3 and np.mean(diffs) < 5.0


@pytest.mark.parametrize("size", [(256, 300), (400, 256)])
def test_a_jpeg_that_already_fits_is_kept_as_it_came(size):
    data = jpeg(Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 100).convert("RGB"))
    ours, theirs = resizers(256)
    kept, *sizes, error = ours(io.BytesIO(data))
    assert error is None and kept == data and sizes == [*size, *size]
    assert theirs(io.BytesIO(data))[0] != data  # img2dataset re-encodes it
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    converted, *_ = ours(io.BytesIO(png.getvalue()))
    assert converted[:3] == b"\xff\xd8\xff"  # not a JPEG: stored as one, as before
