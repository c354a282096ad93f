"""img2dataset's parts, with what wit adds: the network guard, a bomb check, and a verified, atomic finish.

Every img2dataset worker downloads a shard into a staging folder; then, still in the worker, `finish_shard`
turns img2dataset's parquet into a wit manifest, checks the tar against it and moves tar, manifest and stats
(last) into the output. A shard whose stats file is in the output is therefore complete and verified.
"""
from __future__ import annotations

import traceback
from collections import Counter

import pyarrow as pa
from img2dataset.downloader import Downloader
from img2dataset.resizer import Resizer
from PIL import Image

from wit.ingest import guard
from wit.ingest.reasons import reason_for
from wit.shards.schema import FAILED, MANIFEST, OK
from wit.shards.storage import fs_and_path, join, read_json
from wit.shards.tables import read_parquet
from wit.shards.verify import publish_shard, tar_keys

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
    """img2dataset's downloader, run behind the guard, finishing each shard into the output atomically."""

    def __init__(self, *, policy: guard.GuardPolicy, staging: str, output: str, **kwargs):
        super().__init__(output_folder=staging, **kwargs)
        self.policy = policy
        self.staging = staging
        self.output = output

    def __call__(self, row):
        guard.install(self.policy)  # once per worker process
        ok, row = super().__call__(row)
        if not ok:
            return ok, row
        name = f"{row[0]:0{self.oom_shard_count}d}"
        try:
            finish_shard(self.staging, self.output, name)
        except Exception as err:
            traceback.print_exc()
            print(f"shard {name} failed verification: {err}")
            return False, row
        return True, row


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
    if set(keys) != ok_keys or len(keys) != len(ok_keys):
        raise ValueError(f"tar holds {len(keys)} samples but the manifest has {len(ok_keys)} ok rows")
    stats = read_json(join(staging, f"{name}_stats.json"))
    reasons = Counter(r for r in manifest["reason"].to_pylist() if r)
    stats["wit"] = {"reasons": dict(sorted(reasons.items()))}
    publish_shard(output, name, join(staging, f"{name}.tar"), manifest, stats)
    for suffix in (".parquet", "_stats.json"):
        fs.rm(fs_and_path(join(staging, name + suffix))[1])

