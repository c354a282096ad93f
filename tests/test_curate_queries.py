"""`wit queries build`: each source's threshold and budget, priority and de-duplication, errors with file:line."""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from wit.filters.queries import QueryBuildConfig, build, load, pmi, read_counts
from wit.shards.storage import WitError
from wit.cli import main

WORDNET = Path("/usr/share/wordnet")


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def cfg(tmp_path: Path, **kw) -> QueryBuildConfig:
    base = {"out": str(tmp_path / "q.parquet"), "unigrams": None, "bigrams": None, "titles": None, "wordnet": None,
            "log": False}
    return QueryBuildConfig(**(base | kw))


def table(tmp_path: Path) -> dict[str, tuple[str, float | None]]:
    t = pq.read_table(tmp_path / "q.parquet").to_pylist()
    assert [r["id"] for r in t] == list(range(len(t)))
    return {r["entry"]: (r["source"], r["score"]) for r in t}


def test_unigram_threshold_budget_and_case(tmp_path):
    uni = write(tmp_path / "uni.txt", ["the 5000", "Apple 300", "apple\t250", "rare 99", "edge 100", "mid 120"])
    build(cfg(tmp_path, unigrams=uni, min_count=100))
    got = table(tmp_path)
    assert set(got) == {"the", "Apple", "apple", "edge", "mid"}  # 99 < 100 is out; case-sensitive
    assert got["edge"] == ("unigram", 100.0)
    build(cfg(tmp_path, unigrams=uni, budgets=(("unigram", 2),)))
    assert set(table(tmp_path)) == {"the", "Apple"}  # a budget keeps the highest counts


def test_bigram_pmi_threshold(tmp_path):
    uni = write(tmp_path / "uni.txt", ["new 1000", "york 100", "the 100000", "cat 1000", "of 100000"])
    big = write(tmp_path / "big.txt", ["new york 90", "of the 2000", "the cat 10"])
    total = 1000 + 100 + 100000 + 1000 + 100000
    expected = {ab: pmi(c, a, b, total) for ab, c, a, b in
                [("new york", 90, 1000, 100), ("of the", 2000, 100000, 100000), ("the cat", 10, 100000, 1000)]}
    assert expected["new york"] == pytest.approx(math.log(90 * total / (1000 * 100)))
    build(cfg(tmp_path, unigrams=uni, bigrams=big, min_count=10**9, min_pmi=2.0))
    got = table(tmp_path)
    assert set(got) == {ab for ab, v in expected.items() if v >= 2.0} == {"new york"}
    assert got["new york"][1] == pytest.approx(expected["new york"])


def test_titles_views_threshold_and_underscores(tmp_path):
    titles = write(tmp_path / "titles.txt", ["Barack_Obama 9000", "Obscure_Page 10", "New_York_City 5000"])
    build(cfg(tmp_path, titles=titles, min_views=5000))
    assert table(tmp_path) == {"Barack Obama": ("title", 9000.0), "New York City": ("title", 5000.0)}


def test_priority_dedup_and_cap(tmp_path):
    extra = write(tmp_path / "mine.txt", ["cat", "my  entry"])
    uni = write(tmp_path / "uni.txt", ["cat 500", "dog 400", "eel 300"])
    titles = write(tmp_path / "titles.txt", ["Dog 9000", "Zebra 8000"])
    summary = build(cfg(tmp_path, extra=(extra,), unigrams=uni, titles=titles, min_views=1, cap=5))
    got = table(tmp_path)
    assert got["cat"][0] == "extra" and got["my  entry"][0] == "extra"  # user lists come first
    assert set(got) == {"cat", "my  entry", "dog", "eel", "Dog"}  # the cap cut Zebra (last source)
    s = summary["sources"]
    assert (s["unigram"]["duplicates"], s["unigram"]["kept"]) == (1, 2)
    assert (s["title"]["kept"], s["title"]["over_budget"]) == (1, 1)
    assert summary["entries"] == 5 and len(summary["version"]) == 16


def test_dedup_is_by_tokens(tmp_path):
    # "U.S." and "U. S." are the same tokens after spacing: two ids for one automaton key would hide one.
    extra = write(tmp_path / "mine.txt", ["U.S.", "U. S.", "U.S"])
    build(cfg(tmp_path, extra=(extra,)))
    assert set(table(tmp_path)) == {"U.S.", "U.S"}


@pytest.mark.parametrize(
    "lines,line_no",
    [(["good 10", "bad", "fine 3"], 2), (["good 10", "", "x 1.5"], 3), (["a 1", "b 2", "c -4"], 3)],
)
def test_malformed_count_file_names_file_and_line(tmp_path, lines, line_no):
    uni = write(tmp_path / "counts.txt", lines)
    with pytest.raises(WitError, match=rf"^{uni}:{line_no}: expected '<entry> <count>'"):
        build(cfg(tmp_path, unigrams=uni))


def test_bigram_file_with_three_words_is_an_error(tmp_path):
    uni = write(tmp_path / "uni.txt", ["a 10"])
    big = write(tmp_path / "big.txt", ["a b 5", "a b c 7"])
    with pytest.raises(WitError, match=rf"^{big}:2: expected 2 word"):
        build(cfg(tmp_path, unigrams=uni, bigrams=big))


def test_cli_build_and_error_exit_code(tmp_path, capsys):
    uni = write(tmp_path / "uni.txt", ["alpha 200", "beta 50"])
    out = tmp_path / "sub" / "queries.parquet"
    rc = main(["queries", "build", "--out", str(out), "--unigrams", uni, "--bigrams", "none", "--wordnet", "none"])
    assert rc == 0
    entries, version = load(str(out))
    assert entries == ["alpha"] and (tmp_path / "sub" / "queries.summary.json").exists()
    bad = write(tmp_path / "bad.txt", ["alpha two"])
    rc = main(["queries", "build", "--out", str(out), "--unigrams", bad, "--bigrams", "none", "--wordnet", "none"])
    assert rc == 2
    assert f"{bad}:1:" in capsys.readouterr().err
    assert load(str(out)) == (entries, version)  # the failed run left the old file alone


def test_missing_wordnet_is_skipped_with_a_message(tmp_path, capsys):
    uni = write(tmp_path / "uni.txt", ["alpha 200"])
    summary = build(QueryBuildConfig(out=str(tmp_path / "q.parquet"), unigrams=uni, bigrams=None,
                                     wordnet=str(tmp_path / "no-wordnet")))
    assert "wordnet-base" in summary["sources"]["wordnet"]["note"]
    assert "wordnet-base" in capsys.readouterr().out


def test_wordnet_format_parsed_directly(tmp_path):
    folder = tmp_path / "wn"
    folder.mkdir()
    header = ["  1 This software and database is being provided", "  2 to you, the LICENSEE"]
    write(folder / "data.noun", header + [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived",
        "00001930 03 n 01 physical_entity 0 007 @ 00001740 n 0000 | an entity that has physical existence",
        "02084071 05 n 07 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 | a member of the genus Canis",
    ])
    write(folder / "data.verb", ["01168468 34 v 02 eat 0 feed 0 001 @ 01157517 v 0000 | take in food"])
    write(folder / "data.adj", ["00001740 00 a 01 galore(ip) 0 000 | in great numbers"])
    write(folder / "data.adv", [])
    build(cfg(tmp_path, wordnet=str(folder)))
    assert set(table(tmp_path)) == {"entity", "physical entity", "dog", "eat", "galore"}  # head lemmas only


def test_real_wordnet(tmp_path):
    if not (WORDNET / "data.noun").exists():
        pytest.skip(f"needs Debian wordnet-base ({WORDNET}/data.noun); apt-get install -y wordnet-base")
    build(cfg(tmp_path, wordnet=str(WORDNET)))
    got = table(tmp_path)
    assert {"dog", "physical entity", "cat", "Aachen"} <= set(got)
    assert "domestic dog" not in got  # not a head lemma (dog.n.01 = dog, domestic_dog, Canis_familiaris)
    assert 60_000 < len(got) < 120_000  # MetaCLIP reports 86,654 WordNet entries


def test_default_sources_work_offline(tmp_path):
    summary = build(QueryBuildConfig(out=str(tmp_path / "q.parquet"), wordnet=None, log=False))
    s = summary["sources"]
    assert s["unigram"]["kept"] > 300_000 and s["bigram"]["kept"] > 40_000  # wordsegment's real counts
    assert summary["entries"] == s["unigram"]["kept"] + s["bigram"]["kept"] <= 500_000


def test_read_counts_last_wins_and_tabs(tmp_path):
    f = write(tmp_path / "c.txt", ["a\t1", "b 2", "a 3"])
    assert read_counts(f) == {"a": 3, "b": 2}
