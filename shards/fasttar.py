"""The shard format, read and written in one place: img2dataset's WebDataset layout (`KEY.jpg`, `KEY.txt`, ...).

A member's key is its base name up to the first dot (keys contain no dots) and its extension the rest, lower-cased;
a sample is a run of consecutive members sharing a key, as `{ext: bytes}`; its image is its first member whose
extension is in IMAGE_EXTS. Every reader of shards in wit goes through this module:
  - the strict stream (`read_samples`, `read_members`; `iter_samples` over an open file) reads a tar to its
    end-of-archive marker, and anything else (a cut, a bad header) raises TarError;
  - the seekable reader for the trainer (`count_samples`, `slice_samples`, `open_tar`) reads headers only to skip
    samples, and a damaged tar yields what its headers list before the damage.
Both parse ustar, pax (`x`/`g`) and GNU long names (`L`/`K`), which is what webdataset, img2dataset and tarfile
write; only regular files are members (a link or a folder in place of an image holds no data). A declared size is
never trusted: data is read only when the file still holds it, so a member claiming 2^80 bytes is a TarError, not a
huge allocation. Python's tarfile parses every header field of every member, which costs more than copying the
bytes. Writing emits plain ustar members that every tar reader accepts.
"""
from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, NamedTuple

from wit.shards.storage import fs_and_path, is_local

BLOCK = 512
_ZERO = bytes(BLOCK)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")  # in order of preference within one sample
_REGULAR = frozenset((b"0", b"\0", b"7"))
_NO_DATA = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))  # links, devices, folders, fifos: size is not data
_META = frozenset((b"x", b"g", b"L", b"K"))  # pax headers and GNU long names: data about the next member
_META_MAX = 1 << 20  # a pax header or long name longer than this is not one
_CHUNK = 1 << 20


class TarError(ValueError):
    """A tar that is not a whole, well-formed shard; the message says where (and, from the URL readers, which).

    From the strict sample readers, `partial` is the sample in progress where reading stopped, (key, {ext: bytes})
    with only its members that were read whole, or None: it is not yielded, as it may lack members."""

    partial: tuple[str, dict[str, bytes]] | None = None


class TarMissing(TarError):
    """The tar does not exist."""


class Truncated(TarError):
    """The tar's headers stop before its end-of-archive marker; `count` samples were listed before that point."""

    def __init__(self, message: str, count: int):
        super().__init__(message)
        self.count = count


# ---------------------------------------------------------------------------------------------- names and samples
def split_name(name: str) -> tuple[str, str]:
    """`dir/000012.seg.png` -> (`000012`, `seg.png`): the key and the extension of a member."""
    key, _, ext = name.rpartition("/")[2].partition(".")
    return key, ext.lower()


def image_of(sample: dict[str, bytes]) -> bytes | None:
    """The image of a sample, or None when it has none."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    return None


def is_image_file(name: str) -> bool:
    """Is a loose file (in a folder of images, or a tar of class folders) an image, by its last suffix?"""
    return name.rpartition(".")[2].lower() in IMAGE_EXTS


def _samples(members: Iterator[tuple[str, object]]) -> Iterator[tuple[str, dict[str, object]]]:
    key, sample = None, {}
    try:
        for name, value in members:
            k, ext = split_name(name)
            if k != key and sample:
                yield key, sample
                sample = {}
            key = k
            sample[ext] = value
    except TarError as err:
        err.partial = (key, sample) if sample else None
        raise
    if sample:
        yield key, sample


# ---------------------------------------------------------------------------------------------- headers
class Member(NamedTuple):
    name: str
    offset: int  # of its data in the file
    size: int


def _number(field: bytes, what: str, at: int) -> int:
    if field[0] == 0x80:  # GNU base-256, for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    try:
        text = field.split(b"\0", 1)[0].strip()
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"bad {what} field in the header at byte {at}") from None


def _text(raw: bytes, at: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TarError(f"member name at byte {at} is not UTF-8") from None


def _pax(data: bytes, at: int) -> dict[bytes, bytes]:
    """`%d key=value\\n` records; a malformed one is an error, never a loop or a guess."""
    records, pos = {}, 0
    try:
        while pos < len(data) and data[pos] != 0:
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            end = pos + length
            if length <= space - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
                raise ValueError
            key, eq, value = data[space + 1:end - 1].partition(b"=")
            if not eq:
                raise ValueError
            records[key] = value
            pos = end
    except ValueError:
        raise TarError(f"bad pax header at byte {at}") from None
    return records


def _read(f: BinaryIO, size: int, room: int | None) -> bytes | None:
    """`size` bytes, or None when the file ends first; never asks for more than the `room` the file still holds."""
    if room is not None:
        if size > room:
            return None
        data = f.read(size)
        return data if len(data) == size else None
    parts, need = [], size  # a stream of unknown length: read in bounded chunks until it ends
    while need:
        chunk = f.read(min(need, _CHUNK))
        if not chunk:
            return None
        parts.append(chunk)
        need -= len(chunk)
    return b"".join(parts)


def _walk(f: BinaryIO, end: int | None, data: bool) -> Iterator[tuple[str, bytes | Member]]:
    """(name, its data or where it is) of every regular member from the file's start. With `data` the data is read,
    in order; without, a Member says where it is and it is skipped by seeking (the file must be seekable, and may
    be read elsewhere between steps). Raises TarError where the tar is damaged or ends without its end-of-archive
    marker; without `data`, a member whose data is cut is yielded first (reading it fails), so the headers list
    everything the file holds."""
    pos, long_name, pax_size = 0, None, None
    while True:
        if not data:
            f.seek(pos)
        header = f.read(BLOCK)
        if header == _ZERO:
            return
        if len(header) < BLOCK:
            raise TarError(f"no end-of-archive marker (the tar ends at byte {pos + len(header)})")
        stored = _number(header[148:156], "checksum", pos)
        if stored != sum(header[:148]) + 256 + sum(header[156:]) and \
                stored != sum(struct.unpack("148b8x356b", header)) + 256:  # some old tars sum signed bytes
            raise TarError(f"bad header checksum at byte {pos}")
        kind = header[156:157]
        size = 0 if kind in _NO_DATA else pax_size if pax_size is not None else _number(header[124:136], "size", pos)
        at, pos = pos, pos + BLOCK
        room = None if end is None else end - pos  # what the file still holds
        pad = -size % BLOCK
        if kind in _META:
            body = _read(f, size, room) if size <= _META_MAX else None
            if body is None or (data and len(f.read(pad)) != pad):
                raise TarError(f"extended header at byte {at} declares {size} bytes; bad, or the tar ends first")
            pos += size + pad
            if kind == b"x":
                pax = _pax(body, at)
                long_name = _text(pax[b"path"], at) if b"path" in pax else long_name
                if b"size" in pax:
                    pax_size = int(pax[b"size"]) if pax[b"size"].isdigit() else -1
                    if pax_size < 0:
                        raise TarError(f"bad pax size at byte {at}")
            elif kind == b"L":
                long_name = _text(body.rstrip(b"\0"), at)
            continue
        name = long_name
        if name is None:
            name = _text(header[:100].split(b"\0", 1)[0], at)
            if header[257:262] == b"ustar" and header[345:346] != b"\0":
                name = _text(header[345:500].split(b"\0", 1)[0], at) + "/" + name
        long_name = pax_size = None
        regular = kind in _REGULAR and not name.endswith("/")
        if data:
            body = _read(f, size, room)
            if body is None or len(f.read(pad)) != pad:
                raise TarError(f"member {name} at byte {at} declares {size} bytes; the tar ends before them")
            if regular:
                yield name, body
        elif regular:
            yield name, Member(name, pos, size)
        pos += size + pad
        if not data and end is not None and pos > end:
            raise TarError(f"member {name} at byte {at} declares {size} bytes; the tar ends before them")


def _size(f: BinaryIO) -> int | None:
    try:
        if not f.seekable():
            return None
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------- the strict stream
def iter_members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular member of an open tar, from its current position to its end-of-archive
    marker; raises TarError on a bad header or a tar cut short (even at a member boundary, where tarfile would end
    quietly)."""
    end = _size(f)
    return _walk(f, None if end is None else end - f.tell(), data=True)


def iter_samples(f: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of an open tar, read to its end (see iter_members)."""
    return _samples(iter_members(f))


@contextmanager
def _opened(url: str):
    fs, path = fs_and_path(url)
    try:
        f = open(path, "rb") if is_local(url) else fs.open(path, "rb")  # fsspec's local wrapper costs 20% here
    except FileNotFoundError:
        raise TarMissing(f"{url}: no such tar") from None
    with f:
        try:
            yield f
        except TarError as err:
            raise TarError(f"{url}: {err}") from None


def read_members(url: str) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular member of the tar at `url`, read to its end; TarError names the file."""
    with _opened(url) as f:
        yield from iter_members(f)


def read_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of the tar at `url`, read to its end; TarError (TarMissing when absent) names the file."""
    return _samples(read_members(url))


# Why a row of a shard's manifest has no sample from its tar (the reasons the image stage and `wit embed` write)
TAR_MISSING, TAR_UNREADABLE, MISSING_IN_TAR = "tar_missing", "tar_unreadable", "missing_in_tar"


class ManifestSamples:
    """One strict pass over a shard's tar on behalf of its manifest, the one way the image stage, `wit embed` and
    the reshard read a crawled shard: `for key, sample in ManifestSamples(url)` gives every sample; a tar that cannot
    be read to its end ends the loop instead of raising, after the samples read before the problem (down to the
    sample it cut, when that sample's image was read whole). Then `missing` is the reason of each manifest row the
    loop did not give (missing_in_tar, or tar_missing / tar_unreadable for every such row), and `error` says what
    went wrong, for humans."""

    def __init__(self, url: str):
        self.url = url
        self.problem: str | None = None  # TAR_MISSING or TAR_UNREADABLE once the loop has met one
        self.error = ""

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        self.problem, self.error = None, ""
        try:
            yield from read_samples(self.url)
        except TarMissing as err:
            self.problem, self.error = TAR_MISSING, str(err)
        except (TarError, OSError) as err:
            key, sample = getattr(err, "partial", None) or (None, {})
            if image_of(sample) is not None:  # its image was read whole: a row with a reason of its own, if any
                yield key, sample
            self.problem, self.error = TAR_UNREADABLE, str(err)

    @property
    def missing(self) -> str:
        return self.problem or MISSING_IN_TAR

    @property
    def detail(self) -> str | None:
        """The problem for a verdict's detail column: tar_missing, or tar_unreadable with its error."""
        return self.problem if self.problem != TAR_UNREADABLE else f"{self.problem}: {self.error}"


# ---------------------------------------------------------------------------------------------- the seekable reader
class SeekableTar:
    """Headers and members of one open tar, read by seeking: listing skips all data."""

    def __init__(self, f: BinaryIO):
        self.f, self.end = f, _size(f)

    def members(self, on_damage: Callable[[TarError], None] | None = None) -> Iterator[Member]:
        """Every regular member's name and place. A damaged tar raises TarError where its headers stop, or, with
        `on_damage`, calls it with that error and ends there."""
        try:
            for _, where in _walk(self.f, self.end, data=False):
                yield where
        except TarError as err:
            if on_damage is None:
                raise
            on_damage(err)

    def samples(self, on_damage=None) -> Iterator[tuple[str, dict[str, Member]]]:
        return _samples((m.name, m) for m in self.members(on_damage))

    def read(self, member: Member) -> bytes:
        if self.end is not None and member.offset + member.size > self.end:
            raise TarError(f"member {member.name} declares {member.size} bytes; the tar ends before them")
        self.f.seek(member.offset)
        data = self.f.read(member.size)
        if len(data) < member.size:
            raise TarError(f"member {member.name} is cut short")
        return data


@contextmanager
def open_tar(url: str):
    """A SeekableTar over the tar at `url` (TarMissing when absent); its TarErrors name the file."""
    with _opened(url) as f:
        yield SeekableTar(f)


def count_samples(url: str, strict: bool = False) -> int:
    """Number of samples in a tar, from its headers. With `strict`, a tar whose headers stop early (truncated, or a
    damaged header) raises Truncated with the count it could list, instead of returning that count."""
    damage: list[TarError] = []
    with open_tar(url) as tar:
        n = sum(1 for _ in tar.samples(damage.append))
    if strict and damage:
        raise Truncated(f"{url}: tar headers stop after {n} samples ({damage[0]})", n)
    return n


def slice_samples(url: str, start: int = 0, stop: int | None = None
                  ) -> Iterator[tuple[str, dict[str, bytes] | Exception]]:
    """(key, {ext: bytes}) for samples [start, stop) of a tar, reading data only for those; a damaged tar ends
    where its headers stop. A sample whose bytes cannot be read yields (key, the error) instead, and reading goes
    on when it can."""
    with open_tar(url) as tar:
        for i, (key, members) in enumerate(tar.samples(on_damage=lambda err: None)):
            if stop is not None and i >= stop:
                return
            if i < start:
                continue
            try:
                yield key, {ext: tar.read(m) for ext, m in members.items()}
            except (TarError, OSError, EOFError) as err:
                yield key, err


# ---------------------------------------------------------------------------------------------- writing
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


def copy_without(url: str, drop: set[str], out: BinaryIO) -> list[str]:
    """Write to `out` the tar at `url` without the samples whose key is in `drop`: every other member's headers and
    data copied byte for byte (runs of kept samples as whole ranges, never parsed into samples), then the
    end-of-archive blocks; the same bytes `write_samples` gives for the kept samples of a tar it wrote. Returns the
    keys of every sample of the source, in tar order. A damaged source raises TarError."""
    with _opened(url) as f, _buffer(f) as buf:
        spans = _plain_spans(buf)
        if spans is None:  # extended headers, links, or damage: the general reader (which names the damage)
            spans, start = [], 0
            for m in SeekableTar(f).members():
                end = m.offset + m.size + (-m.size % BLOCK)  # a member's headers (pax, long names) belong to it
                spans.append((split_name(m.name)[0], start, end))
                start = end
        keys: list[str] = []
        runs: list[list[int]] = []  # [start, end) byte ranges of kept samples, coalesced
        for key, start, end in spans:
            if not keys or keys[-1] != key:
                keys.append(key)
            if key in drop:
                continue
            if runs and runs[-1][1] == start:
                runs[-1][1] = end
            else:
                runs.append([start, end])
        for a, b in runs:
            for at in range(a, b, _CHUNK):
                out.write(buf[at:min(b, at + _CHUNK)])
    out.write(bytes(2 * BLOCK))
    return keys


@contextmanager
def _buffer(f: BinaryIO):
    """The whole file as a buffer: mapped when it is a local file (nothing read twice, nothing held), else read."""
    try:
        fileno = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fileno = None
    if fileno is None or os.fstat(fileno).st_size == 0:
        yield memoryview(f.read())
        return
    with mmap.mmap(fileno, 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            yield view
        finally:
            view.release()


def _plain_spans(buf) -> list[tuple[str, int, int]] | None:
    """(key, start, end) of every member of a plain ustar tar (as write_samples writes them), found by following
    the size fields alone; None at the first member that is anything else (an extended header, a link, a base-256
    size, a name prefix, a cut), for the general reader. Checksums are not read here: a copy is verified after."""
    spans, at, n = [], 0, len(buf)
    while at + BLOCK <= n:
        if buf[at] == 0 and buf[at:at + BLOCK] == _ZERO:
            return spans
        if buf[at + 156] not in (0x30, 0) or buf[at + 124] & 0x80 or (
                buf[at + 257:at + 262] == b"ustar" and buf[at + 345] != 0):
            return None
        try:
            size = int(bytes(buf[at + 124:at + 136]).split(b"\0", 1)[0].strip() or b"0", 8)
            name = bytes(buf[at:at + 100]).split(b"\0", 1)[0].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        end = at + BLOCK + size + (-size % BLOCK)
        if end > n or name.endswith("/"):
            return None
        spans.append((split_name(name)[0], at, end))
        at = end
    return None


def write_samples(samples: Iterator[tuple[str, dict[str, bytes]]]) -> bytes:
    """A whole tar of samples, members of each sample in sorted extension order, with the end-of-archive blocks."""
    out = io.BytesIO()
    for key, sample in samples:
        for ext in sorted(sample):
            out.write(member(f"{key}.{ext}", sample[ext]))
    out.write(bytes(2 * BLOCK))
    return out.getvalue()
