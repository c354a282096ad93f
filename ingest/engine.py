"""img2dataset's parts, with what wit adds: its own fetcher, a safer and cheaper resizer, and a verified, atomic finish.

Every img2dataset worker downloads a shard into a staging folder: wit's fetcher (`fetch.py`) feeds img2dataset's
resizer (behind `SafeResizer`) and WebDataset writer; then, still in the worker, `finish_shard` turns the
shard's parquet into a wit manifest, checks the tar against it and moves tar, manifest and stats (last) into the
output. A shard whose stats file is in the output is therefore complete and verified.
"""
from __future__ import annotations

import hashlib
import io
import math
import sys
import time
import traceback
from collections import Counter

import albumentations as A
import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

# A crawl never uses torch, yet img2dataset's writer imports webdataset, which imports torch for its DataLoader
# stand-ins: about 3 s of CPU in every crawl process (the driver and each spawned worker). Keep it out while
# img2dataset loads, unless this process has it already (webdataset then keeps its stand-ins in this process).
_keep_torch_out = "torch" not in sys.modules
if _keep_torch_out:
    sys.modules["torch"] = None  # `import torch` now raises ModuleNotFoundError, which webdataset handles
try:
    from img2dataset.downloader import compute_key
    from img2dataset.logger import CappedCounter, write_stats
    from img2dataset.resizer import Resizer, ResizeMode, SuppressStdoutStderr
finally:
    if _keep_torch_out:
        del sys.modules["torch"]

from wit.ingest.crawl_stats import FetchStats
from wit.ingest.fetch import FetchSettings, fetcher
from wit.ingest.output import disk_full, disk_full_error, shard_name
from wit.ingest.plan import ShardSpec
from wit.ingest.reader import shard_rows
from wit.ingest.reasons import reason_for
from wit.shards import revocations
from wit.shards.schema import FAILED, MANIFEST, OK, REVOKED
from wit.shards.storage import exists, fs_and_path, join, read_json, write_json_atomic
from wit.shards.tables import read_parquet
from wit.shards.verify import key_mismatch, mark_verified, publish_shard, tar_keys

# The columns of the plan every shard reads (then the list columns --save-additional-columns names).
CARRIED_COLUMNS = ["uid", "url", "caption", "source_file", "source_row", "invalid"]

# Formats whose header PIL reads and sizes, and that the decoders below handle; anything else is refused before
# a decoder runs (OpenCV decodes more, e.g. Radiance HDR, whose size nothing checks first).
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_REDUCED = {  # libjpeg's DCT scaling: decode at 1/2, 1/4, 1/8 of the size
    (2, True): cv2.IMREAD_REDUCED_COLOR_2, (4, True): cv2.IMREAD_REDUCED_COLOR_4, (8, True): cv2.IMREAD_REDUCED_COLOR_8,
    (2, False): cv2.IMREAD_REDUCED_GRAYSCALE_2, (4, False): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (8, False): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


JPEG_MAX_SIDE = 65_500  # libjpeg's JPEG_MAX_DIMENSION: OpenCV cannot encode a JPEG with a longer side


def image_header(data: bytes) -> tuple[str, int, int, str]:
    """(format, width, height, mode) from the header alone, or ValueError whose text starts with the reason."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height), mode = img.format, img.size, img.mode
    except Image.DecompressionBombError as err:
        raise ValueError(f"decompression_bomb: {err}") from None
    except Image.UnidentifiedImageError:  # its text names our in-memory buffer (`<_io.BytesIO object at 0x..>`)
        raise ValueError(f"{_unread_reason(data)}: no image format PIL knows starts with {data[:16]!r}") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a header it cannot read
        raise ValueError(f"{_unread_reason(data)}: {type(err).__name__}: {err}") from None
    if fmt not in FORMATS:
        raise ValueError(f"unsupported_format: {fmt} is not one of {', '.join(sorted(FORMATS))}")
    return fmt, width, height, mode


def _unread_reason(data: bytes) -> str:
    """A header PIL cannot read: broken if it starts as a format we take, else a format we do not take."""
    looks_supported = data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    return "decode_error" if looks_supported else "unsupported_format"


class SafeResizer(Resizer):
    """img2dataset's resizer behind a header check, cheaper on JPEGs, faithful to 16-bit and float images.

    Refused before any decoding, from the header's size: a header PIL cannot read or a format outside FORMATS
    (`unsupported_format`), a declared size over `max_pixels` (`decompression_bomb`), a long side over
    `max_aspect_ratio` times the short one, or a resized size over `max_pixels` or with a side longer than a JPEG
    can have (`bad_aspect`: resized to a 256 px short side, a 100-byte 1 x 8000 PNG would take 1.5 GB before the
    encoder refused it). Then wit decodes and resizes to exactly the size img2dataset would give: a JPEG at least
    twice the target is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg's DCT scaling (OpenCV's IMREAD_REDUCED,
    measured cheaper here than PIL's `draft`); a JPEG that already has the target size is decoded (to know it
    decodes) and stored as it came, not re-encoded; 16-bit samples and floats in [0, 1] are scaled to 8 bits (the
    JPEG encoder would clip them: white, black), other depths refused; transparency is matted on white, as
    img2dataset does. img2dataset's own path is left for blurring.
    """

    max_pixels: int = 89_478_485  # PIL's own default limit

    def __call__(self, img_stream, blurring_bbox_list=None):
        data = img_stream.getvalue() if isinstance(img_stream, io.BytesIO) else img_stream.read()
        try:
            fmt, width, height, mode = image_header(data)
            self.check_size(width, height)
            if blurring_bbox_list is not None or self.resize_mode not in _SIZES:
                return super().__call__(io.BytesIO(data), blurring_bbox_list)
            return self._resize(data, fmt, width, height, mode)
        except Exception as err:  # noqa: BLE001 - as img2dataset's resizer: the error is the row's verdict
            return None, None, None, None, None, str(err)

    def check_size(self, width: int, height: int) -> None:
        """Refuse from the declared size what would cost too much to decode or resize, or could not be stored."""
        if width * height > self.max_pixels:
            raise ValueError(f"decompression_bomb: {width}x{height} pixels")
        aspect = max(width, height) / max(1, min(width, height))
        if aspect > self.max_aspect_ratio:
            raise ValueError(f"bad_aspect: {width}x{height}, long side / short side {aspect:.1f} is over "
                             f"--max-aspect-ratio {self.max_aspect_ratio:g}")
        if self.resize_mode in _SIZES:
            new_w, new_h = self.target_size(width, height)
            if max(new_w, new_h) > JPEG_MAX_SIDE:
                raise ValueError(f"bad_aspect: {width}x{height} would be resized to {new_w}x{new_h}, a side over "
                                 f"the {JPEG_MAX_SIDE} px a JPEG can have")
            if new_w * new_h > self.max_pixels:
                raise ValueError(f"bad_aspect: {width}x{height} would be resized to {new_w}x{new_h}, over "
                                 f"--max-pixels {self.max_pixels}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size img2dataset resizes to, before a crop or a border."""
        new_w, new_h = _SIZES[self.resize_mode](width, height, self.image_size)
        if self.resize_only_if_bigger and min(new_w / width, new_h / height) > 1:
            return width, height
        return new_w, new_h

    def _resize(self, data: bytes, fmt: str, width: int, height: int, mode: str):
        size = self.image_size
        new_w, new_h = self.target_size(width, height)
        img = decode(data, fmt, mode, reduction(width, height, new_w, new_h) if fmt == "JPEG" else 1)
        if fmt == "JPEG" and (new_w, new_h) == (width, height) and self.resize_mode in (ResizeMode.keep_ratio,
                                                                                       ResizeMode.no):
            return data, width, height, width, height, None  # already the target: keep the bytes as they came
        img = matte_on_white(to_8bit(img))
        if img.shape[:2] != (new_h, new_w):
            downscale = new_w * new_h < width * height
            interpolation = self.downscale_interpolation if downscale else self.upscale_interpolation
            img = cv2.resize(img, (new_w, new_h), interpolation=interpolation)
        if self.resize_mode == ResizeMode.center_crop:
            img = A.CenterCrop(height=size, width=size)(image=img)["image"]
        elif self.resize_mode == ResizeMode.border:
            img = A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT,
                                fill=[255, 255, 255], p=1.0)(image=img)["image"]
        out_h, out_w = img.shape[:2]
        encoded, ok = cv2.imencode(f".{self.encode_format}", img, params=self.encode_params)[::-1]
        if not ok:  # its buffer is then an empty tuple: `.tobytes()` would say only that
            raise ValueError(f"encode_error: OpenCV could not encode a {out_w}x{out_h} image as {self.encode_format}")
        return encoded.tobytes(), out_w, out_h, width, height, None


def decode(data: bytes, fmt: str, mode: str, scale: int) -> np.ndarray:
    """OpenCV's decoding: a JPEG at 1/scale of its size, anything else as img2dataset reads it (every channel, the
    samples' own depth); EXIF orientation not applied, as img2dataset's IMREAD_UNCHANGED."""
    cv2.setNumThreads(1)
    if fmt == "JPEG":
        flags = _REDUCED.get((scale, mode != "L"), cv2.IMREAD_UNCHANGED) | cv2.IMREAD_IGNORE_ORIENTATION
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    else:
        with SuppressStdoutStderr():  # as img2dataset: libpng's warnings (`iCCP: known incorrect sRGB profile`)
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("decode_error: Image decoding error")
    return img


def to_8bit(img: np.ndarray) -> np.ndarray:
    """Samples scaled to 8 bits: 16-bit ones by 255/65535, floats from [0, 1]; other depths (signed or 32-bit
    integers, floats outside [0, 1]) have no known scale and are refused."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return cv2.convertScaleAbs(img, alpha=255 / 65535)
    if img.dtype.kind == "f" and np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1:
        return cv2.convertScaleAbs(img, alpha=255)
    what = "floating-point samples outside [0, 1]" if img.dtype.kind == "f" else f"{img.dtype} samples"
    raise ValueError(f"unsupported_format: {what}, whose scale to 8 bits is unknown")


def matte_on_white(img: np.ndarray) -> np.ndarray:
    """An 8-bit image with an alpha channel composited on white, as img2dataset's resizer does."""
    if img.ndim != 3 or img.shape[-1] != 4:
        return img
    alpha = img[:, :, 3, np.newaxis]
    return np.rint((alpha / 255 * img[..., :3] + 255 - alpha).clip(min=0, max=255)).astype(np.uint8)


def reduction(width: int, height: int, new_w: int, new_h: int) -> int:
    """The libjpeg scale (1, 2, 4 or 8) to decode at: the largest that keeps both sides at least the target's."""
    return next((f for f in (8, 4, 2) if width >= f * new_w and height >= f * new_h), 1)


def _smallest_side(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / min(width, height)  # albumentations' SmallestMaxSize, as img2dataset calls it
    return max(1, round(width * scale)), max(1, round(height * scale))


def _longest_side(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)  # albumentations' LongestMaxSize
    return max(1, round(width * scale)), max(1, round(height * scale))


_SIZES = {
    ResizeMode.keep_ratio: _smallest_side, ResizeMode.center_crop: _smallest_side,
    ResizeMode.border: _longest_side, ResizeMode.no: lambda w, h, size: (w, h),
}


class WitDownloader:
    """Called by img2dataset's distributors with a lane of the plan (ingest/plan.py): its shards one after another,
    each fetched, resized, written and finished; returns (True, lane), or (False, the shards that failed), which
    the multiprocessing and Spark distributors run again once the others are done."""

    def __init__(self, *, fetch: FetchSettings, resizer: SafeResizer, sample_writer_class, column_list: list[str],
                 staging: str, output: str, number_sample_per_shard: int, oom_shard_count: int):
        self.fetch, self.resizer, self.sample_writer_class = fetch, resizer, sample_writer_class
        self.column_list, self.staging, self.output = column_list, staging, output
        self.number_sample_per_shard, self.oom_shard_count = number_sample_per_shard, oom_shard_count

    def __call__(self, lane: tuple[ShardSpec, ...]):
        _quiet_disk_full_at_exit()
        failed = []
        for spec in lane:
            name = shard_name(spec.number, self.oom_shard_count)
            if exists(join(self.output, f"{name}_stats.json")):
                continue  # published by this lane's earlier try, in a worker that died after it
            try:
                self.download_shard(spec)
                finish_shard(self.staging, self.output, name)
            except Exception as err:  # noqa: BLE001 - the distributor runs a failed shard again
                if disk_full(err):
                    # stop the crawl: the distributor hands this to the driver, which says it in one line
                    raise disk_full_error(self.output) from None
                traceback.print_exc()
                print(f"shard {name} failed: {err}")
                failed.append(spec)
        return (False, tuple(failed)) if failed else (True, lane)

    def download_shard(self, spec: ShardSpec) -> None:
        """img2dataset's download_shard with wit's fetcher and the plan's rows: same staging files (tar, parquet,
        stats), and each sample's .json in the manifest's words (`sample_meta`)."""
        shard_id, start = spec.number, time.time()
        table = json_ready(shard_rows(spec, self.column_list), self.column_list[len(CARRIED_COLUMNS):])
        schema = staging_schema(table.schema)
        columns = table.to_pydict()
        rows = list(zip(*(columns[c] for c in self.column_list)))
        del table, columns
        url_at, caption_at = self.column_list.index("url"), self.column_list.index("caption")
        invalid_at = self.column_list.index("invalid")
        writer = self.sample_writer_class(shard_id, self.staging, True, self.oom_shard_count, schema, "jpg")
        digits = math.ceil(math.log10(self.number_sample_per_shard))
        shard = shard_name(shard_id, self.oom_shard_count)
        counts, errors, stats = Counter(), CappedCounter(), FetchStats()

        def write(i: int, image, error: str | None, sizes=(None, None, None, None), sha256=None, resizing=False):
            key = compute_key(i, shard_id, digits, self.oom_shard_count)
            reason = rows[i][invalid_at] or (reason_for(error) if error is not None else None)
            meta = sample_meta(self.column_list, rows[i], key, shard, reason, error, sizes, sha256)
            # img2dataset's own tallies, for its stats file
            counts["success" if error is None else "failed_to_resize" if resizing else "failed_to_download"] += 1
            errors.increment(error or "success")
            writer.write(image, key, rows[i][caption_at], meta)

        # a row the list reader marked invalid never reaches the fetcher, nor does one the revocation ledger revokes
        uid_at = self.column_list.index("uid")
        revoked = revoked_rows(self.output, [r[uid_at] for r in rows], [r[url_at] for r in rows])
        todo = []
        for i, r in enumerate(rows):
            if r[invalid_at]:
                write(i, None, r[invalid_at])
            elif revoked[i]:
                write(i, None, f"{REVOKED}: in the revocation ledger of {self.output}")
            else:
                todo.append((i, r[url_at]))
        for i, body, error in fetcher(self.fetch).fetch_rows(todo, stats, spec.budgets):
            if error is not None:
                write(i, None, error)
                continue
            image, width, height, original_width, original_height, error = self.resizer(io.BytesIO(body))
            if error is not None:
                write(i, None, error, resizing=True)
            else:
                write(i, image, None, (width, height, original_width, original_height), hashlib.sha256(body).hexdigest())
        writer.close()
        write_stats(self.staging, shard_id, len(rows), counts["success"], counts["failed_to_download"],
                    counts["failed_to_resize"], start, time.time(), errors, self.oom_shard_count)
        stats_file = join(self.staging, f"{shard}_stats.json")
        write_json_atomic(stats_file, {**read_json(stats_file), "fetch": stats.to_json()})


# A sample's .json and the staging parquet: the manifest's columns (status ok/failed, reason, detail), with the
# list's saved columns after source_row. img2dataset's "success"/"failed_to_download" and error_message are left
# to its stats file (count, successes, failed_to_download, failed_to_resize, status_dict), kept as it writes it.
_SIZES_FIELDS = ("width", "height", "original_width", "original_height")


def staging_schema(plan: pa.Schema) -> pa.Schema:
    """The staging parquet's columns: the manifest's, with the saved list columns (their types from the plan)
    after source_row."""
    fields = [MANIFEST.field(n) for n in MANIFEST.names]
    at = MANIFEST.names.index("source_row") + 1
    extra = [plan.field(n) for n in plan.names if n not in CARRIED_COLUMNS]
    return pa.schema(fields[:at] + extra + fields[at:])


def sample_meta(column_list: list[str], row: tuple, key: str, shard: str, reason: str | None, detail: str | None,
                sizes, sha256) -> dict:
    """A row's metadata in the manifest's words: what the sample's .json holds, and its manifest row."""
    values = dict(zip(column_list, row))
    meta = {name: values[name] for name in ("uid", "url", "caption")}
    meta.update(status=OK if reason is None else FAILED, reason=reason, detail=detail, shard=shard, key=key, **dict(zip(_SIZES_FIELDS, sizes)), sha256=sha256,
                source_file=values["source_file"], source_row=values["source_row"])
    meta.update((name, values[name]) for name in column_list[len(CARRIED_COLUMNS):])
    return meta


def json_ready(table: pa.Table, saved: list[str]) -> pa.Table:
    """The saved list columns as JSON can hold them: numbers, text, booleans (and lists of them) as they are,
    anything else (dates, decimals, bytes) as its text."""
    for name in saved:
        column = table[name]
        if not _json_type(column.type):
            text = pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
            table = table.set_column(table.schema.get_field_index(name), pa.field(name, pa.string()), text)
    return table


def _json_type(kind: pa.DataType) -> bool:
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _json_type(kind.value_type)
    return (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind))


def revoked_rows(out: str, uids: list[str], urls: list[str]):
    """Which rows of a shard the revocation ledgers of the crawl's output revoke (shards/revocations.py)."""
    ledger = revocations.load_cached(out)
    return ledger.mask(uids=uids, urls=urls) if ledger else [False] * len(uids)


def build_downloader(cfg, staging: str, name_width: int) -> WitDownloader:
    """The worker's callable for a `wit download` config (ingest/config.py), naming shards `name_width` digits wide
    (the run record's: img2dataset's writers and keys take it as their `oom_shard_count`)."""
    from img2dataset.writer import WebDatasetSampleWriter

    from wit.ingest.guard import GuardPolicy

    resizer = SafeResizer(
        image_size=cfg.image_size, resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger,
        upscale_interpolation="lanczos", downscale_interpolation="area", encode_quality=cfg.encode_quality,
        encode_format="jpg", skip_reencode=False, disable_all_reencoding=False, min_image_size=0,
        max_image_area=float("inf"), max_aspect_ratio=cfg.max_aspect_ratio or float("inf"),
    )
    resizer.max_pixels = cfg.max_pixels
    fetch = FetchSettings(
        policy=GuardPolicy(allow_nets=cfg.allow_net, allow_userinfo=cfg.allow_userinfo), timeout=cfg.timeout,
        deadline=cfg.deadline or 2 * cfg.timeout, min_rate=cfg.min_rate, concurrency=cfg.threads,
        per_host=cfg.per_host, per_host_rate=cfg.per_host_rate, host_failures=cfg.host_failures,
        retries=cfg.retries, max_bytes=cfg.max_bytes, user_agent_token=cfg.user_agent_token,
        header_optouts=cfg.header_optouts, robots=not cfg.ignore_robots, robots_cache=join(cfg.out, "_wit", "robots"),
    )
    return WitDownloader(fetch=fetch, resizer=resizer, sample_writer_class=WebDatasetSampleWriter,
                         column_list=CARRIED_COLUMNS + list(cfg.save_additional_columns), staging=staging,
                         output=cfg.out,
                         number_sample_per_shard=cfg.shard_size, oom_shard_count=name_width)


def _quiet_disk_full_at_exit() -> None:
    """A tar stream that the full disk kept from flushing tries again when it is collected, and complains: the
    same error, already reported."""
    previous = sys.unraisablehook
    if getattr(previous, "wit_quiet", False):
        return

    def hook(unraisable):
        if not disk_full(unraisable.exc_value):
            previous(unraisable)

    hook.wit_quiet = True
    sys.unraisablehook = hook


def to_manifest(raw: pa.Table) -> pa.Table:
    """The staging parquet (one row per input row, in the manifest's words already: `sample_meta`) as the shard's
    manifest: MANIFEST's columns, then the saved list columns with the plan's types."""
    return raw.sort_by("key")


def finish_shard(staging: str, output: str, name: str) -> None:
    """Convert, verify and publish one shard: tar, then manifest, then stats (the done marker) last."""
    fs, _ = fs_and_path(staging)
    manifest = to_manifest(read_parquet(join(staging, f"{name}.parquet")))
    ok_keys = {k for k, s in zip(manifest["key"].to_pylist(), manifest["status"].to_pylist()) if s == OK}
    keys = tar_keys(join(staging, f"{name}.tar"))
    if problem := key_mismatch(keys, ok_keys):
        raise ValueError(problem)
    stats = read_json(join(staging, f"{name}_stats.json"))
    reasons = Counter(r for r in manifest["reason"].to_pylist() if r)
    stats["wit"] = {"reasons": dict(sorted(reasons.items()))}
    publish_shard(output, name, join(staging, f"{name}.tar"), manifest, stats)
    mark_verified(output, name, len(keys))  # verified above: a resume need not read the tar again
    for suffix in (".parquet", "_stats.json"):
        fs.rm(fs_and_path(join(staging, name + suffix))[1])

