"""Evaluation data readers: every reader yields samples (`key`, image bytes, label or caption) lazily.

Labelled images: a folder of `<class>/<image>`, one tar of such folders (`test/<class>/0001.jpg`), or WebDataset
shards whose samples carry a class (`.cls` member, or a field of the `.json` member). Captioned images: a folder
plus a CSV of `image,caption` rows (several rows per image allowed), or shards of `.jpg` + `.txt`.
Either kind in CLIP_benchmark's WebDataset layout (`benchmark_set`), how its `wds_*` sets are published.
Paths are fsspec URLs (local or s3://); shard lists take brace patterns.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice

from wit.shards import fasttar
from wit.shards.storage import WitError, expand, fs_and_path


@dataclass(frozen=True)
class Source:
    """A lazily read dataset: `items()` yields (key, image bytes, label/caption); `classes` are folder names."""
    items: Callable[[], Iterator[tuple[str, bytes, object]]]
    count: int | None
    classes: list[str] | None = None


@contextmanager
def tar_errors():
    """A missing, truncated or damaged tar is a one-line error naming it (fasttar's messages do)."""
    try:
        yield
    except fasttar.TarError as err:
        raise WitError(str(err)) from None


def evenly(items: list, limit: int) -> list:
    """At most `limit` items spread evenly over the list, so a sorted-by-class listing keeps every class."""
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def detect(url: str) -> str:
    """`folder`, `tar` (a tar of class folders) or `shards` (WebDataset)."""
    urls = expand(url)
    fs, path = fs_and_path(urls[0])
    if len(urls) == 1 and fs.isdir(path):
        return "folder"
    if len(urls) == 1 and not fs.exists(path):
        raise WitError(f"{url}: no such file or folder")
    if len(urls) > 1:
        return "shards"
    with tar_errors(), fasttar.open_tar(urls[0]) as tar:
        # WebDataset samples have sibling members such as .cls/.json/.txt
        if any(not fasttar.is_image_file(m.name) for m in islice(tar.members(), 21)):
            return "shards"
    return "tar"


# ----------------------------------------------------------------------------------------- labelled images
def labelled(url: str, fmt: str = "auto", class_field: str = "label", limit: int = 0) -> Source:
    fmt = detect(url) if fmt == "auto" else fmt
    if fmt == "folder":
        return _folder(url, limit)
    if fmt == "tar":
        return _class_tar(url, limit)
    if fmt == "shards":
        return Source(lambda: _labelled_shards(url, class_field, limit), limit or None)
    raise WitError(f"--format {fmt}: unknown (auto, folder, tar or shards)")


def _class_of(name: str) -> str | None:
    parts = name.strip("/").split("/")
    return parts[-2] if len(parts) >= 2 and fasttar.is_image_file(name) else None


def _folder(url: str, limit: int) -> Source:
    fs, root = fs_and_path(url)
    files = sorted(p for p in fs.find(root) if _class_of(p[len(root):]))
    if not files:
        raise WitError(f"{url}: no images in <class>/<image> folders")
    picked = evenly(files, limit)

    def items():
        for p in picked:
            with fs.open(p, "rb") as f:
                yield p, f.read(), _class_of(p)
    return Source(items, len(picked), sorted({_class_of(p) for p in files}))


def _class_tar(url: str, limit: int) -> Source:
    with tar_errors(), fasttar.open_tar(url) as tar:  # headers only: a truncated tar fails here, before any work
        members = [m for m in tar.members() if _class_of(m.name)]
    if not members:
        raise WitError(f"{url}: no images in <class>/<image> folders inside the tar")
    picked = evenly(members, limit)

    def items():
        with tar_errors(), fasttar.open_tar(url) as tar:
            for m in picked:
                yield m.name, tar.read(m), _class_of(m.name)
    return Source(items, len(picked), sorted({_class_of(m.name) for m in members}))


def shard_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """WebDataset samples in order: (key, {ext: bytes}); consecutive members with one key form a sample."""
    for shard in expand(url):
        with tar_errors():  # read to its end: a truncated shard is an error, not a smaller evaluation set
            for key, sample in fasttar.read_samples(shard):
                yield f"{shard}:{key}", sample


def _image_of(key: str, sample: dict) -> bytes:
    image = fasttar.image_of(sample)
    if image is None:
        raise WitError(f"{key}: sample has no image member ({', '.join(sorted(sample))})")
    return image


def _labelled_shards(url: str, class_field: str, limit: int):
    for n, (key, sample) in enumerate(shard_samples(url)):
        if limit and n >= limit:
            return
        if "cls" in sample:
            raw = sample["cls"].decode().strip()
            label = int(raw) if raw.lstrip("-").isdigit() else raw
        elif "json" in sample and class_field in (meta := json.loads(sample["json"])):
            label = meta[class_field]
        else:
            raise WitError(f"{key}: sample has no class (no .cls member, no '{class_field}' in its .json)")
        yield key, _image_of(key, sample), label


# ---------------------------------------------------------------------------------------- captioned images
@dataclass(frozen=True)
class Captioned:
    """Images (read lazily) and their captions; `text_image[t]` is the index of caption t's image."""
    images: Callable[[], Iterator[tuple[str, bytes]]]
    n_images: int
    captions: list[str]
    text_image: list[int]


def captioned(url: str, captions_csv: str | None = None, limit: int = 0) -> Captioned:
    if captions_csv:
        return _folder_csv(url, captions_csv, limit)
    return _captioned_shards(url, limit)


def _folder_csv(folder: str, captions_csv: str, limit: int) -> Captioned:
    fs, root = fs_and_path(folder)
    cfs, cpath = fs_and_path(captions_csv)
    if not cfs.exists(cpath):
        raise WitError(f"{captions_csv}: no such captions file")
    with cfs.open(cpath, "r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"image", "caption"} <= set(reader.fieldnames or ()):
            raise WitError(f"{captions_csv}: needs the columns image,caption (has {reader.fieldnames})")
        rows = [(r["image"], r["caption"]) for r in reader]
    index: dict[str, int] = {}
    captions, text_image = [], []
    for name, caption in rows:
        if name not in index:
            if limit and len(index) >= limit:
                continue
            index[name] = len(index)
        captions.append(caption)
        text_image.append(index[name])
    names = list(index)
    missing = [n for n in names if not fs.exists(f"{root.rstrip('/')}/{n}")]
    if missing:
        raise WitError(f"{captions_csv}: {len(missing)} images not found in {folder} (first: {missing[0]})")

    def images():
        for n in names:
            with fs.open(f"{root.rstrip('/')}/{n}", "rb") as f:
                yield n, f.read()
    return Captioned(images, len(names), captions, text_image)


def _captioned_shards(url: str, limit: int, lines: bool = False) -> Captioned:
    """Shards of image + `.txt`: one caption per sample, or with `lines` one per line of it (CLIP_benchmark's
    retrieval sets, which hold an image's several captions that way)."""
    # Captions are small and needed up front (text side); images are read again lazily afterwards.
    captions, text_image, n_images = [], [], 0
    for key, sample in shard_samples(url):
        if limit and n_images >= limit:
            break
        if "txt" not in sample:
            raise WitError(f"{key}: sample has no .txt caption")
        text = sample["txt"].decode("utf-8")
        own = text.splitlines() if lines else [text.strip()]
        if not own:
            raise WitError(f"{key}: the .txt caption is empty")
        captions.extend(own)
        text_image.extend([n_images] * len(own))
        n_images += 1

    def images():
        for n, (key, sample) in enumerate(shard_samples(url)):
            if n >= n_images:
                return
            yield key, _image_of(key, sample)
    return Captioned(images, n_images, captions, text_image)


# ------------------------------------------------------------------------------ CLIP_benchmark's WebDataset layout
@dataclass(frozen=True)
class BenchmarkSet:
    """A set in CLIP_benchmark's layout: `<root>/<split>/nshards.txt` and `0.tar` ... (an image and a `.cls` label,
    or for retrieval a `.txt` of captions, one per line, per sample); beside the splits `classnames.txt`,
    `zeroshot_classification_templates.txt` (one `{c}` template a line) and `dataset_type.txt`."""
    root: str
    kind: str  # "classification" or "retrieval"
    shards: str  # a brace pattern
    classes: list[str] | None
    templates: list[str] | None

    def labelled(self, limit: int = 0) -> Source:
        return Source(lambda: _labelled_shards(self.shards, "label", limit), limit or None)

    def captioned(self, limit: int = 0) -> Captioned:
        return _captioned_shards(self.shards, limit, lines=True)


def is_benchmark_set(url: str, split: str = "test") -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(f"{path.rstrip('/')}/{split}/nshards.txt")


def _text_file(url: str, required: bool) -> str | None:
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        if required:
            raise WitError(f"{url}: missing (CLIP_benchmark's layout needs it)")
        return None
    with fs.open(path, "r", encoding="utf-8") as f:
        return f.read()


def benchmark_set(url: str, split: str = "test") -> BenchmarkSet:
    """Read a set's metadata files (as CLIP_benchmark's `build_wds_dataset` does: each line stripped)."""
    root = url.rstrip("/")
    nshards_file = f"{root}/{split}/nshards.txt"
    raw = _text_file(nshards_file, required=True).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise WitError(f"{nshards_file}: holds {raw[:40]!r}, not a number of shards")
    kind = (_text_file(f"{root}/dataset_type.txt", required=False) or "classification").strip().lower()
    if kind not in ("classification", "retrieval"):
        raise WitError(f"{root}/dataset_type.txt: {kind!r} sets are not supported (classification or retrieval)")
    shards = f"{root}/{split}/{{0..{int(raw) - 1}}}.tar"
    if kind == "retrieval":
        return BenchmarkSet(root, kind, shards, None, None)
    lines = {name: [line.strip() for line in _text_file(f"{root}/{name}.txt", required=True).splitlines()]
             for name in ("classnames", "zeroshot_classification_templates")}
    return BenchmarkSet(root, kind, shards, lines["classnames"], lines["zeroshot_classification_templates"])


def read_bytes(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
