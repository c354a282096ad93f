"""What the audit shows of the rows each stage dropped: thumbnails read from the crawl's tars by key.

The funnel query picks up to N samples per stage and reason (`min_by(..., hash(uid), N)`: a fixed, spread-out
choice); here they get their crawl row (url, caption, tar, key) in one query, and their images from the tars,
each tar opened once
and listed by its headers, only the wanted members' data read. A duplicate stands beside the copy that was
kept (the uid after `dup_of:`); an evaluation-set leak beside the evaluation image it matched (`eval_leak:<name>`,
looked up in the eval sets the image stage recorded). Memory: a few hundred thumbnails of a few KB.
"""
from __future__ import annotations

import base64
import html
import io

import pyarrow as pa
from PIL import Image

from wit.shards import fasttar
from wit.shards.storage import expand, fs_and_path, join

THUMB = 128  # px, the longer side
MAX_IMAGE_BYTES = 32 << 20  # a member declaring more is not read (a hostile tar can declare 2^40 bytes)
PAIRED = ("dup_of", "near_dup_of", "pair_dup_of", "url_dup_of")  # reasons that name the copy that stayed


def partner(reason: str | None) -> tuple[str, str] | None:
    """("uid", keeper uid) for a duplicate, ("eval", eval image name) for a leak, else None."""
    kind, _, rest = (reason or "").partition(":")
    if rest and kind in PAIRED:
        return "uid", rest
    if rest and kind == "eval_leak":
        return "eval", rest
    return None


def build(con, steps: list[dict], eval_sets: list[str]) -> list[dict]:
    """The gallery sections (one per stage and reason that has samples), with their thumbnails as data URIs."""
    uids = {s["uid"] for step in steps for r in step.get("samples", {}).values() for s in r}
    uids |= {p[1] for step in steps for r in step.get("samples", {}).values() for s in r
             if (p := partner(s.get("reason"))) and p[0] == "uid"}
    rows = _crawl_rows(con, sorted(uids))
    thumbs = _thumbnails(rows)
    sections = []
    for step in steps:
        for kind, samples in step.get("samples", {}).items():
            items = []
            for s in samples:
                item = {"uid": s["uid"], "reason": s.get("reason") or kind, **_describe(rows.get(s["uid"]), thumbs)}
                p = partner(s.get("reason"))
                if p and p[0] == "uid":
                    item["partner"] = {"uid": p[1], **_describe(rows.get(p[1]), thumbs)}
                elif p:
                    item["partner"] = {"name": p[1], "thumb": _eval_thumbnail(eval_sets, p[1])}
                items.append(item)
            sections.append({"stage": step["stage"], "reason": kind, "rows": step["dropped"].get(kind, 0),
                             "samples": items})
    return sections


def _crawl_rows(con, uids: list[str]) -> dict[str, dict]:
    if not uids:
        return {}
    con.register("gallery_uids", pa.table({"uid": uids}))
    found = con.execute("""
        SELECT uid, url, caption, key, filename FROM raw SEMI JOIN gallery_uids USING (uid)
        ORDER BY uid, status <> 'ok'""").fetchall()
    con.unregister("gallery_uids")
    rows: dict[str, dict] = {}
    for uid, url, caption, key, filename in found:
        tar = filename[: -len(".parquet")] + ".tar" if filename.endswith(".parquet") else None
        rows.setdefault(uid, {"url": url, "caption": caption, "key": key, "tar": tar})
    return rows


def _thumbnails(rows: dict[str, dict]) -> dict[tuple[str, str], str]:
    """{(tar, key): data URI} for every row with a key; each tar is opened once and read up to its last wanted key."""
    by_tar: dict[str, set[str]] = {}
    for r in rows.values():
        if r["key"] and r["tar"]:
            by_tar.setdefault(r["tar"], set()).add(r["key"])
    out = {}
    for tar, keys in sorted(by_tar.items()):
        for key, data in _members(tar, keys):
            uri = thumbnail(data)
            if uri:
                out[(tar, key)] = uri
    return out


def _members(url: str, keys: set[str]):
    """(key, image bytes) of the wanted keys; the tar is listed by its headers and only their data is read."""
    left = set(keys)
    try:
        with fasttar.open_tar(url) as tar:
            for key, members in tar.samples(on_damage=lambda err: None):  # a cut tar shows what it still holds
                m = members.get(next((e for e in fasttar.IMAGE_EXTS if e in members), ""))
                if key in left and m is not None and m.size <= MAX_IMAGE_BYTES:
                    left.discard(key)
                    yield key, tar.read(m)
                    if not left:
                        return
    except (OSError, fasttar.TarError):  # a missing or unreadable tar: those samples show without a picture
        return


def thumbnail(data: bytes) -> str | None:
    """A JPEG data URI at most THUMB px on its longer side, or None for bytes that are not a readable image."""
    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (THUMB, THUMB))  # JPEG decodes at 1/2, 1/4 or 1/8 scale: cheap for big photos
        im = im.convert("RGB")
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes (and DecompressionBombError)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _describe(row: dict | None, thumbs: dict) -> dict:
    if row is None:
        return {"thumb": None}
    return {"url": row["url"], "caption": row["caption"], "thumb": thumbs.get((row["tar"], row["key"]))}


def _eval_thumbnail(eval_sets: list[str], name: str) -> str | None:
    """The evaluation image the image stage named: `name` is relative to an eval set (a folder, with tars in it
    named by their relative path, or a tar named by its file name), as filters.leakage names them."""
    for source in eval_sets:
        for url in expand(source):
            fs, path = fs_and_path(url)
            try:
                if fs.isdir(path):
                    if fs.isfile(join(path, name)):
                        return thumbnail(fs.cat_file(join(path, name)))
                    parts = name.split("/")
                    for i, part in enumerate(parts[:-1]):
                        if part.endswith(".tar"):
                            data = _tar_member(join(url, *parts[: i + 1]), "/".join(parts[i + 1:]))
                            if data:
                                return thumbnail(data)
                elif name.startswith(path.rstrip("/").rsplit("/", 1)[-1] + "/"):
                    data = _tar_member(url, name.split("/", 1)[1])
                    if data:
                        return thumbnail(data)
            except (OSError, fasttar.TarError):
                continue
    return None


def _tar_member(url: str, name: str) -> bytes | None:
    with fasttar.open_tar(url) as tar:
        for m in tar.members():
            if m.name == name and m.size <= MAX_IMAGE_BYTES:
                return tar.read(m)
    return None


def render(sections: list[dict]) -> str:
    """The gallery as HTML: a row of figures per stage and reason; duplicates and leaks as side-by-side pairs."""
    e = html.escape
    if not sections:
        return ""
    parts = ["<h2 id='gallery'>What was dropped</h2><p>Up to the first samples of each reason (a fixed choice by "
             "uid hash); duplicates beside the copy that stayed, leaks beside the evaluation image they matched.</p>"]
    for sec in sections:
        rows = f"{sec['rows']:,} row" + ("s" if sec["rows"] != 1 else "")
        parts.append(f"<h3>{e(sec['stage'])}: {e(sec['reason'])} ({rows})</h3><div class='gallery'>")
        for s in sec["samples"]:
            first = _figure(s.get("thumb"), " ".join(x for x in (s.get("caption"), s.get("url")) if x) or s["uid"])
            if "partner" in s:
                p = s["partner"]
                label = ("kept: " + (p.get("caption") or p.get("uid", ""))) if "uid" in p else "eval: " + p["name"]
                parts.append(f"<div class='pair'>{first}{_figure(p.get('thumb'), label, kept=True)}</div>")
            else:
                parts.append(first)
        parts.append("</div>")
    return "\n".join(parts)


def _figure(uri: str | None, text: str, kept: bool = False) -> str:
    e = html.escape
    cls = "thumb kept" if kept else "thumb"
    body = (f"<img src='{uri}' alt='{e(text[:80])}'>" if uri else "<div class='noimg'>no image</div>")
    return f"<figure class='{cls}'>{body}<figcaption>{e(text[:120])}</figcaption></figure>"


CSS = ("h3{margin:1.2em 0 .3em;font-size:1em}.gallery{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}"
       ".pair{display:flex;gap:4px;padding:4px;background:#f3f3f3}"
       ".thumb{margin:0;width:136px;border:4px solid #d9480f;background:#fff}.thumb.kept{border-color:#2b8a3e}"
       ".thumb img{display:block;max-width:128px;max-height:128px;margin:0 auto}"
       ".noimg{height:64px;line-height:64px;text-align:center;color:#888;font-size:12px}"
       "figcaption{font-size:11px;padding:2px;overflow:hidden;max-height:2.6em;line-height:1.3em}")
