"""Reading img2dataset-layout tars (`KEY.jpg`, `KEY.txt`, `KEY.json`, ...) as samples, from any fsspec URL.

A sample is a run of consecutive members sharing a key (the file name up to its first dot). Reading uses
tarfile's seekable mode, so skipping samples reads headers only, and a truncated tar still lists what it holds;
the member whose data is cut raises `tarfile.ReadError` when it is read.
"""
from __future__ import annotations

import tarfile
from collections.abc import Iterator

from wit.shards.storage import fs_and_path


def split_key(name: str) -> tuple[str, str]:
    """`dir/000012.jpg` -> (`000012`, `jpg`)."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext


class Truncated(Exception):
    """The tar's headers stop before its end-of-archive marker: the samples after that point cannot be listed."""


def _runs(tar: tarfile.TarFile, on_damage=None) -> Iterator[tuple[str, list[tarfile.TarInfo]]]:
    """Group consecutive regular members by key; a truncated or damaged tar ends early instead of raising, after
    calling `on_damage(error)` when given."""
    key, members = None, []
    try:
        for info in tar:
            if not info.isfile():
                continue
            k, _ = split_key(info.name)
            if k != key and members:
                yield key, members
                members = []
            key = k
            members.append(info)
    except tarfile.ReadError as err:  # end with what the headers listed (a cut member fails when read)
        if on_damage:
            on_damage(err)
    else:
        # tarfile also stops quietly at a damaged header or at the end of a cut file: only a zero block (the
        # end-of-archive marker) where the headers stopped means the tar really ended there
        if on_damage:
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(512) != bytes(512):
                on_damage(tarfile.ReadError(f"no end-of-archive marker at byte {tar.offset}"))
    if members:
        yield key, members


def open_tar(url: str):
    fs, path = fs_and_path(url)
    f = fs.open(path, "rb")
    return f, tarfile.open(fileobj=f, mode="r:")


def count_samples(url: str, strict: bool = False) -> int:
    """Number of samples in a tar, from its headers. With `strict`, a tar whose headers stop early (truncated, or a
    damaged header) raises `Truncated` with the count it could list, instead of returning that count."""
    damage = []
    f, tar = open_tar(url)
    with f, tar:
        n = sum(1 for _ in _runs(tar, damage.append))
    if strict and damage:
        raise Truncated(f"{url}: tar headers stop after {n} samples ({damage[0]})")
    return n


def iter_samples(url: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, dict[str, bytes] | Exception]]:
    """Yield (key, {ext: bytes}) for samples [start, stop) of a tar, reading data only for those.

    A sample whose bytes cannot be read yields (key, the exception) instead, and reading goes on when it can.
    """
    f, tar = open_tar(url)
    with f, tar:
        for i, (key, members) in enumerate(_runs(tar)):
            if stop is not None and i >= stop:
                return
            if i < start:
                continue
            try:
                yield key, {split_key(m.name)[1]: tar.extractfile(m).read() for m in members}
            except (tarfile.TarError, OSError, EOFError) as err:
                yield key, err
