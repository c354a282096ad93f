"""Which files of a lists folder are lists, and what a list's first bytes and column types may be."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_csv
from wit.shards.lists import find_lists, read_list
from wit.shards.storage import WitError

URL = "http://127.0.0.1:9/x.jpg"


def test_a_folder_yields_its_lists_not_its_licence_hidden_files_or_a_crawl_inside_it(tmp_path, capfd):
    lists = tmp_path / "lists"
    (lists / "more").mkdir(parents=True)
    write_csv(lists / "part-0.csv", [(URL, "a cat")])
    (lists / "more" / "urls.txt").write_text(f"\n{URL}\n")
    (lists / "LICENSE.txt").write_text("Creative Commons Attribution 4.0\n\nhttp://creativecommons.org/\n")
    (lists / "._part-0.csv").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # AppleDouble, not a csv
    (lists / "_SUCCESS").write_text("")
    (lists / ".cache").mkdir()
    write_csv(lists / ".cache" / "old.csv", [(URL, "a cached copy")])
    out = lists / "out"  # a crawl's --out inside its lists folder: its manifests and input are not lists
    (out / "_wit" / "input").mkdir(parents=True)
    (out / "_wit" / "run.json").write_text("{}")
    manifest = pa.table({"url": [URL], "caption": ["a cat"]})
    for path in (out / "00000.parquet", out / "_wit" / "input" / "00000.parquet"):
        pq.write_table(manifest, path)

    found = find_lists([str(lists)])
    assert found == [str(lists / "more" / "urls.txt"), str(lists / "part-0.csv")]
    err = capfd.readouterr().err
    assert f"{lists / 'LICENSE.txt'}: skipped, its first line is not a URL" in err, err


def test_a_byte_order_mark_is_not_part_of_the_first_url(tmp_path):
    lst = tmp_path / "urls.txt"
    lst.write_bytes(b"\xef\xbb\xbf" + f"{URL}\n{URL}?2\n".encode())
    table = read_list(str(lst))
    assert table["url"].to_pylist() == [URL, f"{URL}?2"]
    assert table["invalid"].to_pylist() == [None, None]
    assert find_lists([str(tmp_path)]) == [str(lst)]  # and a folder scan sees its first line as a URL


@pytest.mark.parametrize("values", [[1, 2], [[URL], [URL]], [{"u": URL}, {"u": URL}]], ids=["int", "list", "struct"])
def test_a_url_column_that_is_not_text_is_one_error(tmp_path, values):
    lst = tmp_path / "l.parquet"
    pq.write_table(pa.table({"url": values, "caption": ["a", "b"]}), lst)
    with pytest.raises(WitError, match=rf"^{lst}: column 'url' holds .*, not text"):
        read_list(str(lst))
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text("".join(json.dumps({"url": v, "caption": "c"}) + "\n" for v in values))
    with pytest.raises(WitError, match=rf"^{jsonl}: column 'url' holds .*, not text"):
        read_list(str(jsonl))


def test_a_list_given_twice_is_refused_naming_it(tmp_path, monkeypatch):
    # a folder and a file inside it (here as a relative path): the same rows twice, with the same source_file/row
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.csv").write_text("url,caption\nhttp://127.0.0.1/a.jpg,a\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WitError, match=r"lists/a.csv: given twice \(also as .*lists/a.csv\)"):
        find_lists([str(tmp_path / "lists"), "lists/a.csv"])
    assert find_lists(["lists/a.csv"]) == ["lists/a.csv"]
