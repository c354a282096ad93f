"""List formats, column detection, brace patterns, and every bad input: one clear line, exit 2, nothing trusted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit.ingest.loopback import LoopbackImageServer
from wit.shards.lists import find_lists, read_list, url_problem
from wit.shards.storage import WitError
from tests.conftest import write_csv
from tests.ingest_helpers import FAST, REPO, wit


def test_formats_and_column_detection(tmp_path):
    pq.write_table(pa.table({"URL": ["http://a.example/1.jpg"], "TEXT": ["one"]}), tmp_path / "a.parquet")
    (tmp_path / "b.tsv").write_text("url\talt\nhttp://a.example/2.jpg\ttwo\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image_url": "http://a.example/3.jpg", "text": "three"}) + "\n")
    (tmp_path / "d.txt").write_text("http://a.example/4.jpg\n")
    write_csv(tmp_path / "e.csv", [("http://a.example/5.jpg", "five, with a comma")], header=("link", "caption"))
    got = {}
    for name in ("a.parquet", "b.tsv", "c.jsonl", "d.txt", "e.csv"):
        t = read_list(str(tmp_path / name))
        got[name] = (t["url"][0].as_py(), t["caption"][0].as_py(), t["source_row"][0].as_py())
    assert got == {
        "a.parquet": ("http://a.example/1.jpg", "one", 0), "b.tsv": ("http://a.example/2.jpg", "two", 0),
        "c.jsonl": ("http://a.example/3.jpg", "three", 0), "d.txt": ("http://a.example/4.jpg", "", 0),
        "e.csv": ("http://a.example/5.jpg", "five, with a comma", 0),
    }


def test_brace_patterns_and_http_lists(tmp_path):
    for i in range(3):
        write_csv(tmp_path / f"part-{i:03d}.csv", [(f"http://a.example/{i}.jpg", str(i))])
    assert [p.rsplit("/", 1)[-1] for p in find_lists([str(tmp_path / "part-{000..002}.csv")])] == [
        "part-000.csv", "part-001.csv", "part-002.csv"]
    body = (tmp_path / "part-001.csv").read_bytes()
    with LoopbackImageServer({"list.csv": body}) as server:
        t = read_list(f"{server.url}/img/list.csv")
    assert t["url"].to_pylist() == ["http://a.example/1.jpg"]


@pytest.mark.parametrize("url, bad", [
    ("http://a.example/x.jpg", False), ("https://a.example:8443/x?y=1", False), ("", True), (None, True),
    ("a.example/x.jpg", True), ("javascript:alert(1)", True), ("http://a b/x.jpg", True),
    ("http://a.example:99999/x", True), ("file:///etc/passwd", True), ("http:///x.jpg", True),
])
def test_url_validation(url, bad):
    assert (url_problem(url) is not None) == bad


def _bad_input_cases(tmp_path):
    write_csv(tmp_path / "header-only.csv", [])
    pq.write_table(pa.table({"link_to_img": ["http://a.example/x.jpg"], "caption": ["x"]}), tmp_path / "nourl.parquet")
    (tmp_path / "latin1.csv").write_bytes("url,caption\nhttp://a.example/1.jpg,ok\nhttp://a.example/2.jpg,caf\xe9\n".encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"url": "http://a.example/1.jpg", "caption": "x"}\n{"url": oops}\n')
    (tmp_path / "ragged.csv").write_text("url,caption\nhttp://a.example/1.jpg,x,extra,fields\n")
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "unclosed.csv").write_text('url,caption\nhttp://a.example/1.jpg,cat\nhttp://a.example/2.jpg,"a cat\n')
    (tmp_path / "types.jsonl").write_text('{"url": "http://a.example/1.jpg", "caption": 1}\n'
                                          '{"url": "http://a.example/2.jpg", "caption": 2.5}\n\n'
                                          '{"url": "http://a.example/3.jpg", "caption": "text"}\n')
    (tmp_path / "dupcol.csv").write_text("url,url,caption\nhttp://a.example/1.jpg,http://a.example/2.jpg,x\n")
    good = write_csv(tmp_path / "good.csv", [("http://127.0.0.1:9/x.jpg", "x")])
    return [
        ([str(tmp_path / "missing.csv")], "missing.csv: no such file"),
        ([str(tmp_path / "header-only.csv")], "header-only.csv: the list is empty"),
        ([str(tmp_path / "nourl.parquet")], "nourl.parquet: no URL column (looked for url, URL"),
        ([str(tmp_path / "latin1.csv")], "latin1.csv:3: text is not UTF-8"),
        ([str(tmp_path / "broken.jsonl")], "broken.jsonl:2: malformed jsonl"),
        ([str(tmp_path / "ragged.csv")], "ragged.csv:2: malformed csv (CSV parse error"),
        ([str(tmp_path / "part-{000..002.csv")], "bad brace pattern"),
        ([str(tmp_path / "unclosed.csv")], "unclosed.csv:3: malformed csv (a quote opened on this line is never closed)"),
        ([str(tmp_path / "types.jsonl")], "types.jsonl:4: malformed jsonl ('caption' is a string here but a number on line 1"),
        ([str(tmp_path / "dupcol.csv")], "dupcol.csv: column 'url' appears 2 times (columns: url, url, caption)"),
        ([str(good), "--url-col", "nope"], "good.csv: no column 'nope'"),
        ([str(good), "--out", str(tmp_path / "afile" / "out")], "output is not writable"),
    ]


def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path):
    for args, message in _bad_input_cases(tmp_path):
        out = tmp_path / "out"
        cmd = ["download", *args, *FAST] + ([] if "--out" in args else ["--out", str(out)])
        r = wit(*cmd)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("wit download: error: "), (args, r.stderr)
        assert not list(out.glob("*.tar")) and not (out / "_wit" / "run.json").exists()


def test_legal_csv_and_jsonl_read_whatever_their_quotes_and_row_sizes(tmp_path):
    huge = "x" * (3 << 20)  # a caption larger than Arrow's 1 MB parse block
    cases = {
        "huge.csv": (f"url,caption\nhttp://a.example/1.jpg,{huge}\nhttp://a.example/2.jpg,y\n", [huge, "y"]),
        "huge.jsonl": (json.dumps({"url": "http://a.example/1.jpg", "caption": huge}) + "\n", [huge]),
        "quoted.csv": ('url,caption\nhttp://a.example/1.jpg,"a ""b"", c"\nhttp://a.example/2.jpg,""\n', ['a "b", c', ""]),
        "no-eol.csv": ('url,caption\nhttp://a.example/1.jpg,"a ""b"", c"', ['a "b", c']),
        "inch.csv": ('url,caption\nhttp://a.example/1.jpg,5" screen\n', ['5" screen']),
        "lines.csv": ('url,caption\nhttp://a.example/1.jpg,"line one\nline two"\n', ["line one\nline two"]),
    }
    for name, (text, captions) in cases.items():
        (tmp_path / name).write_text(text)
        assert [c or "" for c in read_list(str(tmp_path / name))["caption"].to_pylist()] == captions, name


def test_read_list_errors_name_the_file(tmp_path):
    with pytest.raises(WitError, match=r"x\.weird: unknown list format"):
        read_list(str(tmp_path / "x.weird"))


def test_reading_a_list_then_exiting_never_aborts(tmp_path):
    # Arrow's worker threads used to free the Python-owned input buffer at interpreter exit, which aborted the
    # process (SIGABRT, "terminate called without an active exception") after the error was printed; the race hit
    # about every other run, so a few fresh interpreters per format catch it.
    pq.write_table(pa.table({"link_to_img": ["http://a.example/x.jpg"]}), tmp_path / "l.parquet")
    write_csv(tmp_path / "l.csv", [("http://a.example/x.jpg", "x")], header=("link_to_img", "caption"))
    (tmp_path / "l.jsonl").write_text(json.dumps({"link_to_img": "http://a.example/x.jpg"}) + "\n")
    script = (
        "import sys\nfrom shards.lists import read_list\n"
        "try:\n    read_list(sys.argv[1])\nexcept Exception:\n    sys.exit(2)\n"
    )
    for name in ("l.parquet", "l.csv", "l.jsonl"):
        codes = [subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], cwd=REPO,
                                capture_output=True).returncode for _ in range(6)]
        assert codes == [2] * 6, (name, codes)


def test_albumentations_never_asks_pypi(tmp_path):
    # img2dataset imports albumentations, which checks PyPI for updates unless NO_ALBUMENTATIONS_UPDATE is set by
    # then. An import hook records the variable at that moment and stops the import, so nothing is sent even when
    # the variable is missing.
    script = (
        "import os, sys\n"
        "os.environ.pop('NO_ALBUMENTATIONS_UPDATE', None)\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'albumentations':\n"
        "            seen.append(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))\n"
        "            raise ImportError('stopped by the test')\n"
        "sys.meta_path.insert(0, Spy())\n"
        "try:\n    import ingest.download\n    from img2dataset import distributor  # what run_engine does first\n"
        "except ImportError:\n    pass\n"
        "print(seen)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"})
    assert r.stdout.strip() == "['1']", r.stdout + r.stderr


def test_every_command_that_reads_lists_refuses_a_duplicate_column_in_one_line(tmp_path):
    lst = tmp_path / "dupcol.csv"
    lst.write_text("url,url,caption\nhttp://a.example/1.jpg,http://a.example/2.jpg,a cat on a mat\n")
    (tmp_path / "extra.txt").write_text("cat\n")
    q = str(tmp_path / "q.parquet")
    assert wit("queries", "build", "--out", q, "--extra", str(tmp_path / "extra.txt"), "--unigrams", "none",
               "--bigrams", "none", "--wordnet", "none").returncode == 0
    for args in (("download", str(lst), "--out", str(tmp_path / "raw"), "--no-progress"),
                 ("filter", "text", str(lst), "--out", str(tmp_path / "text"), "--workers", "1"),
                 ("curate", "match", str(lst), "--queries", q, "--out", str(tmp_path / "m"), "--workers", "1")):
        r = wit(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (args[:2], r.stderr)
        assert "dupcol.csv: column 'url' appears 2 times" in lines[0], (args[:2], r.stderr)
