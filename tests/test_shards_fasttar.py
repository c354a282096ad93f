"""The lean tar reader/writer agrees with Python's tarfile and webdataset, and refuses damaged tars."""
from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from wit.shards import fasttar


def _samples():
    return [(f"{i:09d}", {"jpg": bytes([i % 256]) * (1000 + 37 * i), "txt": f"caption {i}".encode(), "json": b"{}"})
            for i in range(20)]


def test_reads_what_webdataset_and_tarfile_write():
    buf = io.BytesIO()
    with wds.TarWriter(buf) as sink:  # pax headers
        for key, s in _samples():
            sink.write({"__key__": key, **s})
    assert list(fasttar.iter_samples(io.BytesIO(buf.getvalue()))) == _samples()
    long = "d/" + "x" * 150 + ".jpg"  # needs a GNU long name or a pax path
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            info = tarfile.TarInfo(long)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        assert list(fasttar.iter_members(io.BytesIO(buf.getvalue()))) == [(long, b"abc")]


def test_writes_what_tarfile_reads_byte_for_byte_stable():
    data = fasttar.write_samples(iter(_samples()))
    assert data == fasttar.write_samples(iter(_samples()))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    want = {f"{k}.{ext}": v for k, s in _samples() for ext, v in s.items()}
    assert got == want


@pytest.mark.parametrize("cut", [100, 700, -1100])
def test_truncated_or_corrupt_tar_raises(cut):
    data = fasttar.write_samples(iter(_samples()))
    with pytest.raises(fasttar.TarError):
        list(fasttar.iter_members(io.BytesIO(data[:cut])))
    corrupt = bytearray(data)
    corrupt[10] ^= 0xFF  # a flipped byte in the first header
    with pytest.raises(fasttar.TarError, match="checksum"):
        list(fasttar.iter_members(io.BytesIO(bytes(corrupt))))


def test_seekable_reader_agrees_with_the_strict_one_and_reads_only_its_slice(tmp_path):
    buf = io.BytesIO()
    with wds.TarWriter(buf) as sink:  # pax headers before every member
        for key, s in _samples():
            sink.write({"__key__": key, **s})
    for name, data in (("wds.tar", buf.getvalue()), ("lean.tar", fasttar.write_samples(iter(_samples())))):
        path = str(tmp_path / name)
        (tmp_path / name).write_bytes(data)
        assert list(fasttar.read_samples(path)) == _samples() == list(fasttar.slice_samples(path))
        assert fasttar.count_samples(path, strict=True) == 20
        assert list(fasttar.slice_samples(path, 5, 8)) == _samples()[5:8]


def test_one_key_rule_and_one_image_rule():
    assert fasttar.split_name("shard/000012.seg.PNG") == ("000012", "seg.png")  # key: base name to its first dot
    assert fasttar.image_of({"txt": b"t", "png": b"p", "jpg": b"j"}) == b"j"  # jpg first, then the others
    assert fasttar.image_of({"txt": b"t", "seg.png": b"s"}) is None
    assert fasttar.is_image_file("test/cat/0001.v2.JPEG") and not fasttar.is_image_file("a.jpg.txt")
