"""Hostile and damaged shards, built byte by byte: a crawl-layout shard (tar, manifest, stats) whose second sample's
image member is replaced by one that declares an impossible size, a link, a bad checksum or a name that is not
UTF-8. Used by tests/test_hostile_tars.py."""
from __future__ import annotations

from pathlib import Path

from tests.filters_helpers import write_shard
from wit_trainer_data import jpeg

BLOCK = 512
SAMPLES = 4  # per shard; the second one (index 1) is the hostile one


def header(name: bytes, size: int, kind: bytes = b"0", *, base256: bool = False, link: bytes = b"",
           good_checksum: bool = True) -> bytes:
    h = bytearray(BLOCK)
    h[:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = b"\x80" + size.to_bytes(11, "big") if base256 else b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = kind
    h[157:157 + len(link)] = link
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % (sum(h) + (0 if good_checksum else 1))
    return bytes(h)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes, **kw) -> bytes:
    return header(name, len(data), **kw) + padded(data)


def pax(body: bytes) -> bytes:
    return header(b"././@PaxHeader", len(body), b"x") + padded(body)


def pax_record(key: bytes, value: bytes) -> bytes:
    text = b" " + key + b"=" + value + b"\n"
    n = len(text)
    while len(str(n)) + len(text) != n:  # the length counts its own digits
        n = len(str(n)) + len(text)
    return str(n).encode() + text


def _huge(size: int, base256: bool):
    return lambda key, image: header(f"{key}.jpg".encode(), size, base256=base256) + padded(image)


def _pax_huge(size: int):
    return lambda key, image: pax(pax_record(b"size", str(size).encode())) + member(f"{key}.jpg".encode(), image)


# The image member of a sample, replaced. Each makes the tar unreadable from that member on.
DAMAGED = {
    "size field 8 GiB": _huge(8 ** 11 - 1, False),
    "base-256 size 2^40": _huge(2 ** 40, True),
    "base-256 size 2^80": _huge(2 ** 80, True),
    "pax size 2^40": _pax_huge(2 ** 40),
    "pax size 2^80": _pax_huge(2 ** 80),
    "bad header checksum": lambda key, image: member(f"{key}.jpg".encode(), image, good_checksum=False),
    "name not UTF-8": lambda key, image: member(key.encode() + b"\xff\xfe.jpg", image),
    "malformed pax record": lambda key, image: pax(b"12 path\n") + member(f"{key}.jpg".encode(), image),
}
# A link where the image should be: no data, so the sample has no image and the rest of the tar reads on.
LINKS = {
    "symlink": lambda key, image: header(f"{key}.jpg".encode(), 0, b"2", link=b"/etc/passwd"),
    "hardlink declaring 2^40 bytes": lambda key, image: header(f"{key}.jpg".encode(), 2 ** 40, b"1", base256=True,
                                                               link=b"000000000.jpg"),
}


def images() -> list[bytes]:
    return [jpeg(i, (256 + 8 * i, 256)) for i in range(SAMPLES)]


def write_hostile_shard(folder: Path, name: str, replace=None) -> Path:
    """A crawl shard of SAMPLES samples (KEY.jpg, KEY.json, KEY.txt) with its manifest and stats; `replace(key,
    image)` gives the bytes that stand in for the second sample's image member. Returns the tar's path."""
    pics = images()
    rows = write_shard(folder, name, [{"url": f"http://h/{name}/{i}.jpg", "caption": f"photo {i}", "image": pics[i]}
                                      for i in range(SAMPLES)])
    out = b""
    for i, row in enumerate(rows):
        key = row["key"]
        jpg = member(f"{key}.jpg".encode(), pics[i])
        out += (replace(key, pics[i]) if replace and i == 1 else jpg)
        out += member(f"{key}.json".encode(), b"{}") + member(f"{key}.txt".encode(), f"photo {i}".encode())
    tar = folder / f"{name}.tar"
    tar.write_bytes(out + bytes(2 * BLOCK))
    return tar
