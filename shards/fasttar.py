"""A lean tar reader and writer for shards: Python's tarfile parses every header field of every member, which
costs more than copying the bytes. Reading handles ustar, pax (`x`/`g`) and GNU long names (`L`), which is what
webdataset, img2dataset and tarfile write; writing emits plain ustar members that every tar reader accepts.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
_ZERO = bytes(BLOCK)


class TarError(ValueError):
    pass


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[bytes, bytes]:
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        length = int(data[pos:data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        records[key] = value
        pos += length
    return records


def iter_members(f: BinaryIO, want=None) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file, in order. Raises TarError on a bad header or a tar cut short.

    A tar ends with a zero block; one that simply stops after a member was cut at a member boundary (tarfile
    would end quietly there), so it is an error too. With `want(name, size)`, only the members it accepts are read
    and yielded; the others are skipped by seeking (headers only: a few members of a big shard cost little).
    """
    long_name = size_override = None
    while True:
        header = f.read(BLOCK)
        if header == _ZERO:
            return
        if not header:
            raise TarError("no end-of-archive marker (truncated)")
        if len(header) < BLOCK:
            raise TarError("tar ends inside a header")
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarError("bad header checksum")
        size = size_override if size_override is not None else _octal(header[124:136])
        kind = header[156:157]
        if want is not None and kind in (b"0", b"\0", b"7") and not want(_name(header, long_name), size):
            long_name = size_override = None
            f.seek(size + -size % BLOCK, 1)
            continue
        data = f.read(size)
        if len(data) < size or len(f.read(-size % BLOCK)) < -size % BLOCK:
            raise TarError("tar ends inside a member")
        if kind == b"x":
            pax = _pax(data)
            long_name = pax[b"path"].decode() if b"path" in pax else long_name
            size_override = int(pax[b"size"]) if b"size" in pax else None
            continue
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode()
            continue
        if kind in (b"g",):
            continue
        name = _name(header, long_name)
        long_name = size_override = None
        if kind in (b"0", b"\0", b"7"):
            yield name, data


def _name(header: bytes, long_name: str | None) -> str:
    if long_name is not None:
        return long_name
    name = header[:100].split(b"\0", 1)[0].decode()
    if header[257:262] == b"ustar" and header[345:346] != b"\0":
        name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
    return name


def iter_samples(f: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members sharing a key (the base name up to its first dot) as one sample."""
    key, sample = None, {}
    for name, data in iter_members(f):
        k, _, ext = name.rsplit("/", 1)[-1].partition(".")
        if k != key and sample:
            yield key, sample
            sample = {}
        key = k
        sample[ext] = data
    if sample:
        yield key, sample


def member(name: str, data: bytes) -> bytes:
    """One ustar member (header + data + padding); fixed owner, mode and time, so equal input gives equal bytes."""
    raw = name.encode()
    if len(raw) > 100:
        raise TarError(f"{name}: name longer than 100 bytes")
    header = bytearray(BLOCK)
    header[:len(raw)] = raw
    header[100:108] = b"0000444\0"
    header[108:116] = header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % len(data)
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + bytes(-len(data) % BLOCK)


def write_samples(samples: Iterator[tuple[str, dict[str, bytes]]]) -> bytes:
    """A whole tar of samples, members of each sample in sorted extension order, with the end-of-archive blocks."""
    out = io.BytesIO()
    for key, sample in samples:
        for ext in sorted(sample):
            out.write(member(f"{key}.{ext}", sample[ext]))
    out.write(bytes(2 * BLOCK))
    return out.getvalue()
