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


def png(img: Image.Image | np.ndarray) -> bytes:
    """PNG bytes of a PIL image, or of an array as OpenCV writes it (16-bit RGB and RGBA, which PIL cannot write)."""
    if isinstance(img, np.ndarray):
        return cv2.imencode(".png", img)[1].tobytes()
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).astype(float)


def test_a_thin_image_is_refused_from_its_header_not_after_a_huge_resize():
    thin = png(Image.new("RGB", (1, 8000), (200, 10, 10)))  # 113 bytes; 256 x 2,048,000 pixels once resized
    ours, _ = resizers(256)
    *_, error = ours(io.BytesIO(thin))
    assert error == "bad_aspect: 1x8000 would be resized to 256x2048000, a side over the 65500 px a JPEG can have"
    # refused before decoding: the same header before a broken body gets the same answer, not decode_error
    header_only = png(Image.new("RGB", (1, 65000)))
    header_only = header_only[:header_only.index(b"IDAT") + 8]
    assert ours(io.BytesIO(header_only))[-1].startswith("bad_aspect: 1x65000")
    many_pixels, _ = resizers(256, max_pixels=1_000_000)
    thin_enough = png(Image.new("RGB", (40, 8000)))  # 320,000 pixels; 256 x 51,200 = 13 M once resized
    assert many_pixels(io.BytesIO(thin_enough))[-1].startswith("bad_aspect: 40x8000 would be resized to 256x51200")
    bordered = SafeResizer(image_size=256, **{**SETTINGS, "resize_mode": "border"})
    assert bordered(io.BytesIO(thin))[1:] == (256, 256, 1, 8000, None)  # its long side to 256: nothing is huge


def test_max_aspect_ratio_refuses_before_decoding():
    ours = SafeResizer(image_size=64, max_aspect_ratio=3.0, **SETTINGS)
    assert ours(io.BytesIO(png(Image.new("RGB", (300, 100)))))[-1] is None  # 3.0: kept
    tall = png(Image.new("RGB", (100, 301)))
    *_, error = ours(io.BytesIO(tall))
    assert error == "bad_aspect: 100x301, long side / short side 3.0 is over --max-aspect-ratio 3"
    header_only = tall[:tall.index(b"IDAT") + 8]  # refused from the header: the broken body is never decoded
    assert ours(io.BytesIO(header_only))[-1] == error


def gradient(h: int, w: int, top: int) -> np.ndarray:
    return np.linspace(0, top, h * w).reshape(h, w)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_images_are_scaled_to_8_bits(channels):
    grey = gradient(64, 64, 65535)
    planes = [grey, grey[::-1], grey[:, ::-1], np.full_like(grey, 65535)][:channels]  # the 4th: opaque alpha
    image = np.rint(np.dstack(planes) if channels > 1 else grey).astype(np.uint16)
    ours, _ = resizers(64)  # the size it has: encoded, not resized
    out, *sizes, error = ours(io.BytesIO(png(image)))
    assert error is None and sizes == [64, 64, 64, 64]
    expected = np.rint(image[..., :3] / 257.0) if channels > 1 else np.rint(image / 257.0)
    assert np.abs(decoded(out) - expected).mean() < 2.0  # JPEG's loss; clipped to 255 it was ~127 off


def test_float_samples_in_0_1_are_scaled_and_others_refused():
    ours, _ = resizers(64)
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 64, 1.0).astype(np.float32), "F").save(buf, "TIFF")
    out, *_, error = ours(io.BytesIO(buf.getvalue()))
    assert error is None and np.abs(decoded(out) - np.rint(gradient(64, 64, 255))).mean() < 2.0
    for array, mode in ((gradient(64, 64, 1000.0).astype(np.float32), "F"),
                        (gradient(64, 64, 2**20).astype(np.int32), "I")):
        buf = io.BytesIO()
        Image.fromarray(array, mode).save(buf, "TIFF")
        *_, error = ours(io.BytesIO(buf.getvalue()))
        assert error.startswith("unsupported_format: ") and "scale to 8 bits is unknown" in error


def test_an_8_bit_png_comes_out_as_img2datasets():
    rgba = np.dstack([np.rint(gradient(120, 90, 255))] * 3 + [np.rint(gradient(120, 90, 255))[::-1]]).astype(np.uint8)
    ours, theirs = resizers(64)
    assert ours(io.BytesIO(png(rgba))) == theirs(io.BytesIO(png(rgba)))


def test_errors_say_what_went_wrong():
    ours, _ = resizers(256)
    *_, error = ours(io.BytesIO(b"\x00\x01 not an image at all"))
    assert error == "unsupported_format: no image format PIL knows starts with b'\\x00\\x01 not an image '"
