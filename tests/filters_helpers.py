"""Build small crawled shards in img2dataset's layout (tar + wit manifest + stats) for the filter tests."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from wit.shards.schema import FAILED, MANIFEST, OK, pair_uid


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def short_side_256(data: bytes) -> bytes:
    """What the crawler stores: the short side resized to 256 px, JPEG."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    s = 256 / min(im.size)
    return jpeg(im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC))


def write_shard(folder: Path, name: str, samples: list[dict], failed: int = 0) -> list[dict]:
    """samples: dicts with `url`, `caption`, `image` (bytes or None: no image member), optional `orig` (w, h).
    Writes folder/name.tar, folder/name.parquet (MANIFEST) and folder/name_stats.json; returns the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with wds.TarWriter(str(folder / f"{name}.tar")) as tw:
        for i, s in enumerate(samples):
            key = f"{name}{i:04d}"
            member = {"__key__": key, "txt": s["caption"], "json": json.dumps({"url": s["url"]}).encode()}
            w = h = None
            if s["image"] is not None:
                member["jpg"] = s["image"]
                try:
                    w, h = Image.open(io.BytesIO(s["image"])).size
                except Exception:  # noqa: BLE001 - corrupt on purpose
                    pass
            tw.write(member)
            ow, oh = s.get("orig", (w, h))
            rows.append(dict(uid=pair_uid(s["url"], s["caption"]), url=s["url"], caption=s["caption"], status=OK,
                             shard=name, key=key, width=w, height=h, original_width=ow, original_height=oh))
    for j in range(failed):
        url = f"http://example.invalid/{name}/{j}.jpg"
        rows.append(dict(uid=pair_uid(url, "gone"), url=url, caption="gone", status=FAILED, reason="http_404",
                         shard=name))
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST), folder / f"{name}.parquet")
    n_ok = sum(r["status"] == OK for r in rows)
    (folder / f"{name}_stats.json").write_text(json.dumps({"wit": {"verified": True, "rows": len(rows),
                                                                    "samples": n_ok}}))
    return rows
