"""A list file is normalised in bounded batches, whatever its size, and gives what reading it whole gave: the same
rows, uids (repeats numbered across batches and files) and run-record digest; and its memory does not grow with it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from wit.ingest import inputs
from wit.ingest.config import DownloadConfig
from wit.shards import lists
from wit.shards.lists import url_problem
from wit.shards.schema import INPUT, pair_uid, row_uids
from wit.shards.storage import WitError
from tests.ingest_helpers import REPO

BATCH = 16


def _pairs(n: int, offset: int) -> list[tuple[str, str]]:
    """n rows, about one in five a repeat of an earlier pair of any of the lists (so repeats straddle batches and
    files), with a few invalid URLs and captions that need quoting in csv."""
    rows = []
    for i in range(n):
        j = offset + i
        if i % 5 == 4:
            j = j * 2654435761 % 1000003 % j  # an earlier row, of this list or an earlier one
        url = "not a url" if j % 37 == 3 else f"http://127.0.0.1:9/{j}.jpg"
        rows.append((url, f'photo {j}, a "quoted" word' + ("\nsecond line" if j % 11 == 0 else "")))
    return rows


def _whole(path, fmt: str) -> tuple[list, list]:
    """The list read whole by Arrow, as wit read it before it streamed."""
    if fmt == "parquet":
        t = pq.read_table(path)
    else:
        t = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                           convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    return t["url"].to_pylist(), t["caption"].to_pylist()


def test_a_list_many_batches_long_is_normalised_as_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(lists, "BATCH_ROWS", BATCH)
    monkeypatch.setattr(inputs, "BATCH_ROWS", BATCH)
    monkeypatch.setattr(lists, "CSV_BLOCK", 512)  # many parse blocks, and a caption larger than one
    a = _pairs(300, 0)
    pq.write_table(pa.table({"url": [u for u, _ in a], "caption": [c for _, c in a]}), tmp_path / "a.parquet",
                   row_group_size=50)
    b = _pairs(290, 300)
    b[100] = (b[100][0], "x" * 3000)  # a row that straddles blocks: read again with larger ones, nothing repeated
    b[250] = a[17]  # a pair of the first list, in the last batches of the second
    pacsv.write_csv(pa.table({"url": [u for u, _ in b], "caption": [c for _, c in b]}), tmp_path / "b.csv")
    files = [tmp_path / "a.parquet", tmp_path / "b.csv"]
    out = tmp_path / "out"
    rows = inputs.prepare_inputs(DownloadConfig(lists=tuple(map(str, files)), out=str(out), shard_size=7,
                                                processes=1))
    assert rows == [300, 290]

    seen, file_digests = Counter(), []
    for i, (path, fmt) in enumerate(zip(files, ("parquet", "csv"))):
        urls, captions = _whole(path, fmt)
        assert (urls, captions) == ([u for u, _ in (a, b)[i]], [c for _, c in (a, b)[i]])  # the fixture is sound
        expected = pa.table({"uid": row_uids(zip(urls, captions), seen), "url": urls, "caption": captions,
                             "source_file": [str(path)] * len(urls), "source_row": list(range(len(urls))),
                             "invalid": [url_problem(u) for u in urls]}, schema=INPUT)
        written = pq.ParquetFile(out / "_wit" / "input" / f"{i:05d}.parquet")
        assert written.read().drop_columns(["host"]).equals(expected), path.name  # and each row's host
        assert written.metadata.num_row_groups == -(-len(urls) // BATCH)  # written a batch at a time
        file_digests.append(hashlib.sha256("\n".join(map(pair_uid, urls, captions)).encode()).hexdigest())
    assert sum(n - 1 for n in seen.values()) >= 90  # many repeated rows, within and across the files
    assert len(set(map(pair_uid, *zip(*a))) & set(map(pair_uid, *zip(*b)))) > 10
    record = json.loads((out / "_wit" / "run.json").read_text())
    assert record["pairs_sha256"] == hashlib.sha256("\n".join(file_digests).encode()).hexdigest()


def test_the_reader_holds_one_batch_of_rows(tmp_path):
    """What `iter_list_batches` materialises at once is one batch, however long the list (counted on its output,
    which the crawl writes a batch at a time)."""
    rows = [(f"http://127.0.0.1:9/{i}.jpg", f"caption {i}") for i in range(5000)]
    pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]}), tmp_path / "l.parquet")
    pacsv.write_csv(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]}), tmp_path / "l.csv")
    (tmp_path / "l.txt").write_text("".join(u + "\n" for u, _ in rows))
    for name in ("l.parquet", "l.csv", "l.txt"):
        sizes = [b.num_rows for b in lists.iter_list_batches(str(tmp_path / name), batch_rows=300)]
        assert sum(sizes) == 5000 and max(sizes) == 300 and len(sizes) == 17, name


# The peak RSS (VmHWM) after the warm-up, reset by clear_refs to the RSS of that moment: ru_maxrss survives exec, so
# in a full suite it would start at the pytest worker's size and hide any growth
RSS_SCRIPT = """
import sys
from wit.ingest.inputs import ListTask, normalise_list
from wit.shards import lists
def kib(field):
    return int(next(x for x in open('/proc/self/status') if x.startswith(field)).split()[1])
normalise_list(ListTask(sys.argv[3], sys.argv[2], None, None, None))  # what any first list costs: imports, pools
lists.BATCH_ROWS = 16384
open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS
before = kib('VmHWM')
normalise_list(ListTask(sys.argv[1], sys.argv[2], None, None, None))
print((kib('VmHWM') - before) // 1024)
"""


def _big_list(folder, name: str, n: int) -> str:
    import pyarrow.compute as pc

    ids = pa.array(range(n)).cast(pa.string())
    table = pa.table({"url": pc.binary_join_element_wise("https://img.example.com/photos/", ids, ".jpg", ""),
                      "caption": pc.binary_join_element_wise("a photo of thing ", ids, " on a table by a window", "")})
    if name.endswith(".parquet"):
        pq.write_table(table, folder / name, row_group_size=16384)
    else:
        pacsv.write_csv(table, folder / name)
    return str(folder / name)


def test_normalising_a_large_list_takes_the_memory_of_a_batch_not_of_the_list(tmp_path):
    # 350K rows in batches of 16K: the peak grew ~80 MB (parquet) and ~115 MB (csv) over what a 100-row list took
    # (csv's includes Arrow's read-ahead: its streaming reader queues up to 32 parse blocks of 1 MB, which a file it
    # reads by its path fills). Reading the list whole (the code before the streaming, this same script) grew it by
    # ~290 and ~300 MB, ~850 bytes a row, and that grows with the list; so did one batch as large as the list.
    n = 350_000
    for name in ("big.parquet", "big.csv"):
        big, small = _big_list(tmp_path, name, n), _big_list(tmp_path, "small." + name.split(".")[1], 100)
        out = tmp_path / f"{name}.out.parquet"
        r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, big, str(out), small], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert pq.ParquetFile(out).metadata.num_rows == n
        grown_mb = int(r.stdout.split()[-1])
        assert grown_mb < 170, (name, grown_mb)


def test_lists_on_s3_are_read_in_batches_as_local_ones_and_leave_no_copy_behind(tmp_path, s3_bucket, monkeypatch):
    # a list on S3 (or any .gz) is copied to a temporary file that Arrow reads by its path; the copy is removed
    # however the reading ends (read through, abandoned after one batch, a malformed row), and fresh interpreters
    # exit cleanly (rc 0: Arrow held no Python file object at exit, see shards/tables.py)
    import gzip

    import s3fs

    rows = _pairs(400, 0)
    table = pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]})
    pq.write_table(table, tmp_path / "l.parquet", row_group_size=64)
    pacsv.write_csv(table, tmp_path / "l.csv")
    (tmp_path / "l.csv.gz").write_bytes(gzip.compress((tmp_path / "l.csv").read_bytes()))
    (tmp_path / "ragged.csv").write_text("url,caption\nhttp://127.0.0.1:9/1.jpg,x\nhttp://127.0.0.1:9/2.jpg,x,y\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    script = "import sys\nfrom wit.shards.lists import read_list\nprint(read_list(sys.argv[1]).num_rows)\n"
    for name in ("l.parquet", "l.csv", "l.csv.gz", "ragged.csv"):
        fs.put_file(str(tmp_path / name), f"{s3_bucket}/{name}")
    for name in ("l.parquet", "l.csv", "l.csv.gz"):
        local = lists.read_list(str(tmp_path / name), number_repeats=False)
        remote = pa.Table.from_batches(list(lists.iter_list_batches(f"{s3_bucket}/{name}", batch_rows=50)))
        assert remote.drop_columns(["source_file"]).equals(local.drop_columns(["source_file"])), name
        assert not list(temp.iterdir()), name
        batches = lists.iter_list_batches(f"{s3_bucket}/{name}", batch_rows=50)
        assert next(batches).num_rows == 50 and len(list(temp.iterdir())) == 1, name  # the copy, while it is read
        batches.close()
        assert not list(temp.iterdir()), name
        for _ in range(3):
            r = subprocess.run([sys.executable, "-c", script, f"{s3_bucket}/{name}"], cwd=REPO, capture_output=True,
                               text=True, timeout=300, env={**os.environ, "TMPDIR": str(temp)})
            assert (r.returncode, r.stdout.strip()) == (0, "400"), (name, r.returncode, r.stderr[-1000:])
            assert not list(temp.iterdir()), name
    with pytest.raises(WitError, match=r"ragged\.csv:3: malformed csv"):
        lists.read_list(f"{s3_bucket}/ragged.csv")
    assert not list(temp.iterdir())


def test_arrow_is_handed_paths_or_its_own_memory_never_a_python_file(tmp_path, s3_bucket, monkeypatch):
    """Every Arrow reader a list goes through gets a path or an Arrow buffer, whatever the format and the place: a
    Python file object in Arrow's threads can abort the process at exit, too rarely for a run to show it."""
    import gzip

    import s3fs

    from wit.ingest.loopback import LoopbackImageServer

    rows = _pairs(40, 0)
    table = pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]})
    pq.write_table(table, tmp_path / "l.parquet")
    pacsv.write_csv(table, tmp_path / "l.csv")
    (tmp_path / "l.tsv").write_text("url\tcaption\n" + "".join(f"{u}\tphoto {i}\n" for i, (u, _) in enumerate(rows)))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"url": u, "caption": c}) + "\n" for u, c in rows))
    (tmp_path / "l.txt").write_text("".join(u + "\n" for u, _ in rows))
    for name in ("l.parquet", "l.csv", "l.jsonl"):
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress((tmp_path / name).read_bytes()))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for name in ("l.parquet", "l.csv", "l.jsonl"):
        fs.put_file(str(tmp_path / name), f"{s3_bucket}/{name}")
    handed, reading = [], []

    def watched(read):
        def reader(source, *args, **kwargs):
            handed.append((reading[-1], source))
            return read(source, *args, **kwargs)
        return reader

    for module, name in ((pacsv, "open_csv"), (pacsv, "read_csv"), (pq, "ParquetFile"), (pq, "read_table"),
                         (pajson, "read_json")):
        monkeypatch.setattr(module, name, watched(getattr(module, name)))
    served = {name: (tmp_path / name).read_bytes() for name in ("l.parquet", "l.csv", "l.csv.gz")}
    with LoopbackImageServer(served) as server:
        urls = [str(tmp_path / n) for n in ("l.parquet", "l.csv", "l.tsv", "l.jsonl", "l.txt", "l.parquet.gz",
                                            "l.csv.gz", "l.jsonl.gz")]
        urls += [f"{s3_bucket}/{n}" for n in ("l.parquet", "l.csv", "l.jsonl")]
        urls += [f"{server.url}/img/{n}" for n in served]
        for url in urls:
            reading.append(url)
            assert lists.read_list(url).num_rows == 40, url
    assert {u for u, _ in handed} == {u for u in urls if not u.endswith(".txt")}  # all but txt read by Arrow
    assert all(isinstance(s, (str, pa.NativeFile)) for _, s in handed), [(u, type(s)) for u, s in handed]


def test_utf8_is_checked_a_chunk_at_a_time_with_the_line_and_offset_of_the_whole_file(tmp_path, monkeypatch):
    # a bad byte right after a character cut between two reads, on a later line: every chunk size gives the line
    # and offset that decoding the whole file gives
    data = "url,caption\nhttp://127.0.0.1:9/1.jpg,café ünï\nhttp://127.0.0.1:9/2.jpg,naïve".encode() + b"\xe9x\n"
    (tmp_path / "bad.csv").write_bytes(data)
    start = data.index(b"\xe9x")
    assert data[:start + 1].decode("utf-8", "replace").endswith("\ufffd")  # the fixture's one bad byte
    for chunk in range(1, len(data) + 2):
        monkeypatch.setattr(lists, "COPY_CHUNK", chunk)
        with pytest.raises(WitError) as err:
            lists.read_list(str(tmp_path / "bad.csv"))
        assert str(err.value) == f"{tmp_path / 'bad.csv'}:3: text is not UTF-8 (byte 0xe9 at offset {start})", chunk
