"""img2dataset's parts, with what wit adds: the network guard, a bomb check, and a verified, atomic finish.

Every img2dataset worker downloads a shard into a staging folder; then, still in the worker, `finish_shard`
turns img2dataset's parquet into a wit manifest, checks the tar against it and moves tar, manifest and stats
(last) into the output. A shard whose stats file is in the output is therefore complete and verified.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import sys
import traceback
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
from img2dataset.downloader import Downloader, compute_key
from img2dataset.resizer import Resizer
from PIL import Image

from wit.ingest import guard
from wit.ingest.output import disk_full, disk_full_error
from wit.ingest.reasons import reason_for
from wit.shards.schema import FAILED, MANIFEST, OK
from wit.shards.storage import fs_and_path, join, read_json, write_json_atomic
from wit.shards.tables import read_parquet
from wit.shards.verify import key_mismatch, mark_verified, publish_shard, tar_keys

# Columns img2dataset carries through from our input into its parquet and each sample's json.
CARRIED_COLUMNS = ["uid", "source_file", "source_row", "invalid"]


class SafeResizer(Resizer):
    """img2dataset's resizer behind a header check: refuse images whose declared size is a decompression bomb."""

    max_pixels: int = 89_478_485  # PIL's own default limit

    def __call__(self, img_stream, blurring_bbox_list=None):
        try:
            width, height = Image.open(img_stream).size  # parses the header only
        except Image.DecompressionBombError as err:
            return None, None, None, None, None, f"decompression_bomb: {err}"
        except Exception:
            width = height = 0  # not an image PIL knows: let img2dataset's decoder give the verdict
        if width * height > self.max_pixels:
            return None, None, None, None, None, f"decompression_bomb: {width}x{height} pixels"
        img_stream.seek(0)
        return super().__call__(img_stream, blurring_bbox_list)


class WitDownloader(Downloader):
    """img2dataset's downloader, run behind the guard, finishing each shard into the output atomically.

    Rows that ingest marked `invalid` never reach the fetcher: img2dataset gets the shard's valid rows only, and
    `RowKeyWriter` gives each sample the key of its row in the whole shard and writes the invalid rows as failed
    rows, so the shard's manifest still has every input row, in order.
    """

    def __init__(self, *, policy: guard.GuardPolicy, staging: str, output: str, **kwargs):
        super().__init__(output_folder=staging, **kwargs)
        self.policy = policy
        self.staging = staging
        self.output = output
        self.writer_class = self.sample_writer_class

    def __call__(self, row):
        guard.install(self.policy)  # once per worker process
        _quiet_disk_full_at_exit()
        # img2dataset's per-shard ThreadPool makes a multiprocessing queue; under spawn its semaphores get names,
        # which the resource tracker must remove (and warns about) when the distributor ends this worker mid-shard.
        # Anonymous ones (fork's) need no cleanup; nothing here starts a process.
        multiprocessing.set_start_method("fork", force=True)
        try:
            return self._shard(row)
        except Exception as err:
            if not disk_full(err):
                raise
            # stop the crawl: the distributor hands this to the driver, which says it in one line
            raise disk_full_error(self.output) from None

    def _shard(self, row):
        shard_id, shard_file = row
        name = f"{shard_id:0{self.oom_shard_count}d}"
        try:
            self.download_shard(row)
        except Exception as err:
            if disk_full(err):
                raise
            traceback.print_exc()
            print(f"shard {name} failed with error {err}")
            return False, row
        try:
            finish_shard(self.staging, self.output, name)
        except Exception as err:
            if disk_full(err):
                raise
            print(f"shard {name} failed verification: {err}")
            return False, row
        fs, path = fs_and_path(shard_file)
        fs.rm(path)  # kept until now, so that img2dataset's retry of a failed shard can read it again
        return True, row

    def download_shard(self, row):
        shard_id, shard_file = row
        fs, path = fs_and_path(shard_file)
        with fs.open(path, "rb") as f:
            shard = pa.ipc.open_file(f).read_all()
        valid = pc.is_null(shard["invalid"])
        fetch_file = f"{shard_file.removesuffix('.feather')}.fetch.feather"  # img2dataset deletes what it read
        with fs.open(fs_and_path(fetch_file)[1], "wb") as f, pa.ipc.new_file(f, shard.schema) as writer:
            writer.write_table(shard.filter(valid))
        self.sample_writer_class = functools.partial(
            RowKeyWriter, self.writer_class, positions=pc.indices_nonzero(valid).to_pylist(),
            withheld=shard.filter(pc.invert(valid)).select(self.column_list).to_pylist(),
            withheld_positions=pc.indices_nonzero(pc.invert(valid)).to_pylist(),
            oom_sample_per_shard=math.ceil(math.log10(self.number_sample_per_shard)),
        )
        try:
            super().download_shard((shard_id, fetch_file))
        finally:
            self.sample_writer_class = self.writer_class
        withheld = shard.num_rows - len(pc.indices_nonzero(valid))
        if withheld:  # img2dataset's stats counted the rows it saw; the shard has the withheld ones too
            stats_url = join(self.staging, f"{shard_id:0{self.oom_shard_count}d}_stats.json")
            stats = read_json(stats_url)
            stats["count"] += withheld
            stats["failed_to_download"] += withheld
            stats["status_dict"][NOT_FETCHED] = stats["status_dict"].get(NOT_FETCHED, 0) + withheld
            write_json_atomic(stats_url, stats)


NOT_FETCHED = "not fetched: invalid URL"


class RowKeyWriter:
    """img2dataset's sample writer for a shard of which only some rows were fetched.

    img2dataset keys a sample by its position among the rows it was given; this puts back the position in the
    whole shard, and writes each withheld row as a failed row (no image), as img2dataset writes a failed fetch.
    """

    def __init__(self, writer_class, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format,
                 *, positions, withheld, withheld_positions, oom_sample_per_shard):
        self.writer = writer_class(shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format)
        self.positions = positions
        self.disk_full: OSError | None = None
        self.base = 10**oom_sample_per_shard * shard_id
        self.key = functools.partial(compute_key, shard_id=shard_id, oom_sample_per_shard=oom_sample_per_shard,
                                     oom_shard_count=oom_shard_count)
        for position, values in zip(withheld_positions, withheld):
            meta = {**dict.fromkeys(schema.names), **values, "key": self.key(position),
                    "status": "failed_to_download", "error_message": NOT_FETCHED}
            self.writer.write(None, meta["key"], values.get("caption"), meta)

    def write(self, img_str, key, caption, meta):
        key = meta["key"] = self.key(self.positions[int(key) - self.base])
        if self.disk_full is None:
            try:
                self.writer.write(img_str, key, caption, meta)
            except OSError as err:
                if not disk_full(err):
                    raise
                # Write nothing more, quietly: raised here, it would be printed once for every sample left, and
                # leaving img2dataset's loop early would hang its thread pool. `close` reports it.
                self.disk_full = err

    def close(self):
        try:
            self.writer.close()
        except OSError as err:
            if not disk_full(err):
                raise
            self.disk_full = self.disk_full or err
        if self.disk_full is not None:
            raise self.disk_full


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


def to_manifest(raw: pa.Table, shard: str) -> pa.Table:
    """img2dataset's per-shard parquet -> wit's manifest: one row per input row, with status and reason."""
    d = raw.to_pydict()
    n = raw.num_rows
    status, reason = [], []
    for i in range(n):
        if d["invalid"][i]:
            status.append(FAILED)
            reason.append(d["invalid"][i])
        elif d["status"][i] == "success":
            status.append(OK)
            reason.append(None)
        else:
            status.append(FAILED)
            reason.append(reason_for(d["error_message"][i]))
    ok = [s == OK for s in status]
    columns = {
        "uid": d["uid"],
        "url": d["url"],
        "caption": d["caption"],
        "status": status,
        "reason": reason,
        "detail": d["error_message"],
        "shard": [shard] * n,
        "key": d["key"],
        "width": d["width"],
        "height": d["height"],
        "original_width": d["original_width"],
        "original_height": d["original_height"],
        "sha256": [h if good else None for h, good in zip(d["sha256"], ok)],
        "source_file": d["source_file"],
        "source_row": d["source_row"],
    }
    return pa.table(columns, schema=MANIFEST).sort_by("key")


def finish_shard(staging: str, output: str, name: str) -> None:
    """Convert, verify and publish one shard: tar, then manifest, then stats (the done marker) last."""
    fs, _ = fs_and_path(staging)
    manifest = to_manifest(read_parquet(join(staging, f"{name}.parquet")), name)
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

