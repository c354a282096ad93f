"""MetaCLIP's token rule (`--spacing metaclip`, the default of `wit curate match`) against a brute-force reference."""
from __future__ import annotations

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import shared_data
from wit.filters.automaton import build_automaton, match_captions, spaced_batch
from wit.filters.match import MatchConfig, run
from wit.filters.spacing import space, space_metaclip
from wit.filters.tokenmatch import TokenMatcher


def metaclip_reference(entries: list[str], captions: list[str | None]) -> list[list[int]]:
    """MetaCLIP's substr_matching as its release writes it: wrap seven marks, blank three characters, then
    `" entry " in text` for every entry, one by one. Written here from the published description, not from
    filters.spacing."""
    keys = [f" {e} " for e in entries]
    out = []
    for caption in captions:
        text = f" {caption or ''} "
        for mark in [",", ".", ";", ":", "?", "!", "`"]:
            text = text.replace(mark, f" {mark} ")
        for blank in ["\t", "\n", "\r"]:
            text = text.replace(blank, " ")
        out.append([i for i, key in enumerate(keys) if key in text])
    return out


def match(entries, captions, spacing="metaclip"):
    """The automaton (filters.match); under MetaCLIP's rule also the token matcher `wit curate match` runs, which
    must agree with it."""
    got = match_captions(build_automaton(entries, spacing), pa.array(captions, pa.string()), len(entries),
                         spacing).to_pylist()
    if spacing == "metaclip":
        assert TokenMatcher(entries).match(pa.array(captions, pa.string())).to_pylist() == got
    return got


def test_metaclip_examples():
    entries = ["cat", "s", "re", "T-shirt", "shirt", "hot dog", "U.S.", "New York", "'s", "a"]
    captions = [
        "a cat's toy",  # the apostrophe is not spaced: no "s", no "'s", no "cat"
        "they're here",  # no "re"
        "a T-shirt",  # hyphenated words stay whole
        "hot  dog",  # runs of spaces are kept: "hot dog" does not match
        "hot\tdog",  # a tab is one space
        "the U.S. army",  # an entry holding a mark never matches
        "New\u00a0York",  # a non-breaking space is not a space in MetaCLIP's rule
        "cat,cat.cat",  # the marks split
        "a\x00cat",  # a NUL is an ordinary character (and never a caption boundary)
        None,
    ]
    got = match(entries, captions)
    assert got == [[9], [], [3, 9], [], [5], [], [], [0], [], []]
    assert got == metaclip_reference(entries, captions)
    # the ascii rule, for contrast: apostrophes and hyphens split, whitespace runs collapse
    assert match(entries, captions, "ascii")[:4] == [[0, 1, 8, 9], [2], [3, 4, 9], [5]]


def test_unpadded_keys_for_scripts_without_spaces():
    entries = ["猫", "東京", "ねこ", "แมว", "cat", "猫。"]
    captions = ["一只猫在垫子上。", "東京タワーの写真", "かわいいねこ", "แมวสีดำ", "a cat 猫", "黑猫。"]
    assert match(entries, captions) == [[0], [1], [2], [3], [0, 4], [0, 5]]


def real_captions() -> list[str]:
    flickr = shared_data("flickr8k", "captions.csv")
    web = shared_data("url_lists", "img2dataset_test_10000.parquet")
    with open(flickr, encoding="utf-8") as f:
        captions = [r["caption"] for r in csv.DictReader(f)][:2000]
    captions += pq.read_table(web, columns=["TEXT"]).column("TEXT").to_pylist()[:3000]
    with gzip.open(shared_data("multi30k", "val.en.gz"), "rt", encoding="utf-8") as f:
        captions += [line.rstrip("\n") for line in f][:1000]
    return captions


def test_matches_metaclip_reference_on_real_captions():
    captions = real_captions()
    # entries: frequent whitespace-split words of the captions (contraction pieces and hyphenated words included),
    # their bigrams, and entries the rule treats specially.
    seen: dict[str, int] = {}
    for c in captions:
        words = (c or "").split()
        for a, b in zip(words, words[1:] + [""]):
            for e in (a, a.strip(".,;:?!`'\""), f"{a} {b}" if b else ""):
                if e:
                    seen[e] = seen.get(e, 0) + 1
    entries = sorted(seen, key=lambda e: (-seen[e], e))[:1500]
    entries += ["s", "re", "ve", "t", "T-shirt", "black-and-white", "U.S.", "'s", "&amp;", "Dog", "zzz-not-there"]
    entries = list(dict.fromkeys(entries))
    got = match(entries, captions)
    expected = metaclip_reference(entries, captions)
    assert sum(map(len, expected)) > 20_000  # the check has teeth: many matches, multi-word ones included
    assert any(" " in entries[i] for ids in expected for i in ids)
    assert any("-" in entries[i] for ids in expected for i in ids)
    assert got == expected
    # and the rules really differ on these captions (contractions, hyphens): the default is not the ascii rule
    distinct = list({space(e): e for e in entries if space(e).strip()}.values())  # what the ascii rule accepts
    assert match(distinct, captions, "ascii") != match(distinct, captions)


TEXT = st.text(alphabet=st.sampled_from(list("ab A.,;:?!`-'\t\n\r\x00\x01 ") + ["\u00a0", "é", "一", "😀"]),
               max_size=30)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), TEXT), min_size=1, max_size=8))
def test_vectorised_metaclip_spacing_equals_definition(captions):
    # the batch is each caption's definition without its own padding, joined by " \x00 " and padded once; a
    # caption's NUL becomes \x01 (see filters.match)
    inner = [space_metaclip((c or "").replace("\x00", "\x01"))[1:-1] for c in captions]
    assert spaced_batch(pa.array(captions, pa.string()), "metaclip") == " " + " \x00 ".join(inner) + " "


WORDS = st.sampled_from(["a", "A", "cat", "cat's", "hot", "dog", "T-shirt", ".", "New", "York", "é"])


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(st.lists(WORDS, min_size=1, max_size=3).map(" ".join), min_size=1, max_size=12, unique=True),
    captions=st.lists(st.lists(st.tuples(WORDS, st.sampled_from([" ", "  ", "", "\t", ",", ". ", "\u00a0"]))).map(
        lambda ws: "".join(w + s for w, s in ws)), max_size=6),
)
def test_property_matches_metaclip_reference(entries, captions):
    assert match(entries, captions) == metaclip_reference(entries, captions)


def test_match_records_the_rule_and_balance_card_says_it(tmp_path):
    from wit.filters.balance import BalanceConfig
    from wit.filters.balance import run as balance
    from wit.filters.queries import QueryBuildConfig, build

    lst = tmp_path / "extra.txt"
    lst.write_text("cat\ns\n")
    build(QueryBuildConfig(out=str(tmp_path / "q.parquet"), unigrams=None, bigrams=None, wordnet=None,
                           extra=(str(lst),), log=False))
    captions = ["a cat's toy", "the cat sat", "cat"]
    pq.write_table(pa.table({"uid": ["u0", "u1", "u2"], "caption": captions}), tmp_path / "in.parquet")
    for rule in ("metaclip", "ascii"):
        out = tmp_path / rule
        kwargs = {} if rule == "metaclip" else {"spacing": rule}
        summary = run(MatchConfig(inputs=(str(tmp_path / "in.parquet"),), queries=str(tmp_path / "q.parquet"),
                                  out=str(out / "m"), workers=1, **kwargs))
        assert summary["spacing"] == rule
        table = pq.read_table(out / "m" / "00000.parquet")
        assert table.schema.metadata[b"wit.spacing"] == rule.encode()
        assert table["matched"].to_pylist() == ([[], [0], [0]] if rule == "metaclip" else [[0, 1], [0], [0]])
        balance(BalanceConfig(matches=(str(out / "m" / "00000.parquet"),), out=str(out / "b"), t=10, workers=1))
        assert json.loads((out / "b" / "datacard.json").read_text())["spacing"] == rule


def test_token_matcher_refuses_what_the_automaton_refuses():
    from wit.shards.storage import WitError

    for entries in (["cat", "dog", "cat"], ["a\x00b"]):
        with pytest.raises(WitError, match="query 2 'cat': same tokens as query 0|NUL"):
            TokenMatcher(entries)
