"""Hostile and damaged tars through every reader: the shard-format module's own error (never a MemoryError, an
OverflowError or a huge allocation), and each command's promised outcome: reasons on the rows (`wit filter
images`), a one-line error naming the file (`wit shards write`, `wit eval`), a warning and what the tar still
holds (the trainer)."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.hostile_tars import DAMAGED, LINKS, SAMPLES, member, write_hostile_shard
from wit.cli import main
from wit.shards import fasttar
from wit.shards.verify import tar_keys
from wit.trainer.data import _count_or_zero
from wit_trainer_data import jpeg

CASES = {**DAMAGED, **LINKS}


class Stream(io.RawIOBase):
    """A pipe-like stream: no size, no seeking, so the reader cannot know how much data is left."""

    def __init__(self, data: bytes):
        self.inner = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buf):
        return self.inner.readinto(buf)


@pytest.mark.parametrize("case", DAMAGED)
def test_strict_readers_refuse_a_damaged_tar_with_their_own_error(tmp_path, case):
    tar = write_hostile_shard(tmp_path, "00000", DAMAGED[case])
    with pytest.raises(fasttar.TarError, match=f"{tar}: "):
        list(fasttar.read_samples(str(tar)))
    with pytest.raises(fasttar.TarError, match=f"{tar}: "):
        tar_keys(str(tar))  # what verify_shard and the crawl's finish check read
    with pytest.raises(fasttar.TarError):  # and from a stream of unknown length, read in bounded chunks
        list(fasttar.iter_samples(io.BufferedReader(Stream(tar.read_bytes()))))


@pytest.mark.parametrize("case", DAMAGED)
def test_seekable_reader_lists_what_a_damaged_tar_holds_and_warns(tmp_path, case, capsys):
    tar = write_hostile_shard(tmp_path, "00000", DAMAGED[case])
    listed = 2 if "size" in case else 1  # a member whose data is cut is listed, and fails when read
    with pytest.raises(fasttar.Truncated, match=f"{tar}: tar headers stop after {listed} samples") as err:
        fasttar.count_samples(str(tar), strict=True)
    assert err.value.count == listed == fasttar.count_samples(str(tar))
    assert _count_or_zero(str(tar)) == listed
    assert f"{tar}: tar headers stop after {listed} samples" in capsys.readouterr().err
    got = list(fasttar.slice_samples(str(tar)))
    assert len(got) == listed and set(got[0][1]) == {"jpg", "json", "txt"}
    if listed == 2:
        assert isinstance(got[1][1], fasttar.TarError)  # never read: the file does not hold what it declares
    assert [k for k, _ in fasttar.slice_samples(str(tar), 1)] == [k for k, _ in got[1:]]


@pytest.mark.parametrize("case", LINKS)
def test_a_link_in_place_of_the_image_holds_no_data(tmp_path, case):
    tar = str(write_hostile_shard(tmp_path, "00000", LINKS[case]))
    samples = list(fasttar.read_samples(tar))
    assert len(samples) == SAMPLES == fasttar.count_samples(tar, strict=True)
    assert [fasttar.image_of(s) is None for _, s in samples] == [False, True, False, False]
    assert set(samples[1][1]) == {"json", "txt"}
    assert [set(s) for _, s in fasttar.slice_samples(tar)] == [set(s) for _, s in samples]


def test_a_missing_tar_is_its_own_error(tmp_path):
    url = str(tmp_path / "00000.tar")
    for read in (lambda: list(fasttar.read_samples(url)), lambda: fasttar.count_samples(url),
                 lambda: list(fasttar.slice_samples(url))):
        with pytest.raises(fasttar.TarMissing, match=f"{url}: no such tar"):
            read()


def test_filter_images_records_reasons_for_every_hostile_tar(tmp_path):
    raw = tmp_path / "raw"
    names = {}
    for i, case in enumerate(CASES):
        names[case] = f"{i:05d}"
        write_hostile_shard(raw, names[case], CASES[case])
    missing = write_hostile_shard(raw, f"{len(CASES):05d}")
    missing.unlink()
    assert main(["filter", "images", str(raw), "--out", str(tmp_path / "img"), "--workers", "1"]) == 0
    reasons = {name: [r["reason"] for r in pq.read_table(tmp_path / "img" / f"{name}.parquet").to_pylist()]
               for name in [*names.values(), missing.stem]}
    for case in DAMAGED:  # the sample before the damage is judged; the rest cannot be read
        assert reasons[names[case]] == [None] + ["tar_unreadable"] * (SAMPLES - 1), case
    for case in LINKS:
        assert reasons[names[case]] == [None, "no_image"] + [None] * (SAMPLES - 2), case
    assert reasons[missing.stem] == ["tar_missing"] * SAMPLES


def test_filter_images_refuses_a_corrupt_manifest_in_one_line(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_hostile_shard(raw, "00000")
    manifest = raw / "00000.parquet"
    good = pq.read_table(manifest)
    manifest.write_bytes(b"PAR1 this is not a parquet file")
    assert main(["filter", "images", str(raw), "--out", str(tmp_path / "a"), "--workers", "1"]) == 2
    assert error_line(capsys).startswith(f"wit filter: error: {manifest}: not a readable parquet file")
    keys = good.schema.get_field_index("key")
    pq.write_table(good.set_column(keys, "key", pa.array(range(good.num_rows))), manifest)  # int keys
    assert main(["filter", "images", str(raw), "--out", str(tmp_path / "b"), "--workers", "1"]) == 2
    assert f"{manifest}: column 'key' is int64, the manifest schema has string" in error_line(capsys)
    assert not (tmp_path / "b" / "00000.parquet").exists()


@pytest.mark.parametrize("case", [*CASES, "missing tar"])
def test_shards_write_on_a_hostile_tar_is_one_line_naming_it(tmp_path, case, capsys):
    raw = tmp_path / "raw"
    tar = write_hostile_shard(raw, "00000", CASES.get(case))
    if case == "missing tar":
        tar.unlink()
    assert main(["shards", "write", "--raw", str(raw), "--out", str(tmp_path / "corpus"), "--workers", "1"]) == 2
    assert error_line(capsys).startswith(f"wit shards: error: {tar}: ")
    assert not list((tmp_path / "corpus").glob("*.tar"))


def error_line(capsys) -> str:
    """The one error line of a command's stderr (progress bars aside), checked to come without a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _eval(*args: str) -> list[str]:
    return ["eval", *args, "--model", "wit-tiny", "--random-init", "--device", "cpu"]


def test_eval_on_a_truncated_shard_is_one_line_naming_it(tmp_path, capsys):
    tar = write_hostile_shard(tmp_path, "00000")
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    assert main(_eval("retrieval", "--data", str(tar))) == 2
    assert error_line(capsys).startswith(f"wit eval: error: {tar}: ")
    labelled = tmp_path / "labelled.tar"  # WebDataset shards with a class, cut short
    labelled.write_bytes(b"".join(member(f"{i:04d}.{ext}".encode(), data)
                                  for i in range(8) for ext, data in (("jpg", jpeg(i)), ("cls", b"1")))[:9000])
    for task in (("zeroshot", "--data", str(labelled)), ("linear-probe", "--train", str(labelled), "--test",
                                                          str(labelled))):
        assert main(_eval(*task, "--format", "shards")) == 2
        assert error_line(capsys).startswith(f"wit eval: error: {labelled}: ")
    classes = tmp_path / "classes.tar"  # a tar of class folders, cut short
    classes.write_bytes(b"".join(member(f"test/c{i % 2}/{i}.jpg".encode(), jpeg(i)) for i in range(8))[:9000])
    assert main(_eval("zeroshot", "--data", str(classes), "--prompts", "folders")) == 2
    assert error_line(capsys).startswith(f"wit eval: error: {classes}: ")

