"""Caption matching: whole-token, case-sensitive semantics, checked against a brute-force reference."""
from __future__ import annotations

import csv
import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wit.filters.automaton import build_automaton, match_captions, spaced_batch
from wit.filters.spacing import WS_CHARS, space
from tests.conftest import shared_data


def tokens(text: str) -> list[str]:
    """The spacing rule written independently: a character loop, not the regexes or the byte tables."""
    out = []
    for ch in text:
        if ch in string.punctuation:
            out.append(f" {ch} ")
        elif ch.isspace() or ch == "\x00":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out).split()


def brute_force(entries: list[str], captions: list[str | None]) -> list[list[int]]:
    """Entry i matches when its token list occurs as a contiguous run of the caption's tokens (all runs listed)."""
    keys = [tuple(tokens(e)) for e in entries]
    longest = max(map(len, keys), default=0)
    result = []
    for caption in captions:
        toks = tokens(caption or "")
        runs = {tuple(toks[j : j + n]) for n in range(1, longest + 1) for j in range(len(toks) - n + 1)}
        result.append([i for i, key in enumerate(keys) if key and key in runs])
    return result


def match(entries: list[str], captions: list[str | None], spacing: str = "ascii") -> list[list[int]]:
    """The batch matcher; these tests hold the ascii rule (tests/test_curate_metaclip.py holds MetaCLIP's)."""
    return match_captions(build_automaton(entries, spacing), pa.array(captions, pa.string()), len(entries),
                          spacing).to_pylist()


def test_whole_token_examples():
    entries = ["cat", "Cat", "hot dog", "U.S.", "New York", "e-mail", "dog", "a"]
    captions = [
        "a cat.",  # punctuation is its own token
        "category catalog",  # no partial words
        "Cat on a mat",  # case matters
        "hot  dog\tstand",  # whitespace runs collapse
        "hot-dog",  # "hot dog" is not "hot - dog"
        "the U.S. army",
        "U.S",  # no final dot: not "U . S ."
        "New\u00a0York!",  # non-breaking space is whitespace
        "send an e-mail",
        "cat's toy",  # apostrophe splits: cat ' s
        None,
        "",
    ]
    got = match(entries, captions)
    assert got == [
        [0, 7],
        [],
        [1, 7],
        [2, 6],
        [6],
        [3],
        [],
        [4],
        [5],
        [0],
        [],
        [],
    ]
    assert got == brute_force(entries, captions)


def test_matches_brute_force_on_real_captions():
    flickr = shared_data("flickr8k", "captions.csv")
    web = shared_data("url_lists", "img2dataset_test_10000.parquet")
    with open(flickr, encoding="utf-8") as f:
        captions = [r["caption"] for r in csv.DictReader(f)][:1500]
    captions += pq.read_table(web, columns=["TEXT"]).column("TEXT").to_pylist()[:1500]
    # entries: frequent caption tokens, their neighbours as bigrams, punctuation-bearing and absent entries.
    seen: dict[str, int] = {}
    for c in captions:
        toks = tokens(c or "")
        for a, b in zip(toks, toks[1:] + [""]):
            seen[a] = seen.get(a, 0) + 1
            if b:
                seen[f"{a} {b}"] = seen.get(f"{a} {b}", 0) + 1
    entries = sorted(seen, key=lambda e: (-seen[e], e))[:1500]
    entries += ["U.S.", "T-shirt", "t-shirt", "New York", "black and white", "Dog", "zzz-not-there", "'s", "&amp;"]
    entries = list({space(e): e for e in reversed(entries) if space(e).strip()}.values())[::-1]
    got = match(entries, captions)
    expected = brute_force(entries, captions)
    assert sum(map(len, expected)) > 10_000  # the check has teeth: many matches, multi-word ones included
    assert any(" " in entries[i] for ids in expected for i in ids)
    assert got == expected


TEXT = st.text(
    # ASCII punctuation and whitespace, every non-ASCII space, and characters that share their lead bytes
    alphabet=st.sampled_from(list("ab AB.-'\"!,") + list(WS_CHARS) + ["é", "©", "’", "\u2030", "\u1681", "一", "😀"]),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), TEXT), min_size=1, max_size=8))
def test_vectorised_spacing_equals_definition(captions):
    text = spaced_batch(pa.array(captions, pa.string()), "ascii")
    parts = text.split("\x00")
    assert len(parts) == len(captions)
    assert [p.split(" ") for p in [f" {q.strip(' ')} " for q in parts]] == [
        space(c or "").split(" ") for c in captions
    ]
    assert [p.split() for p in parts] == [tokens(c or "") for c in captions]


WORDS = st.sampled_from(["a", "A", "cat", "cats", "hot", "dog", "-", ".", "New", "York", "é", "一"])


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(st.lists(WORDS, min_size=1, max_size=3).map(" ".join), min_size=1, max_size=12, unique=True),
    captions=st.lists(
        st.lists(st.tuples(WORDS, st.sampled_from([" ", "  ", "", "\t", "\u00a0"]))).map(
            lambda ws: "".join(w + s for w, s in ws)),
        max_size=6,
    ),
)
def test_property_matches_brute_force(entries, captions):
    entries = list({space(e): e for e in entries}.values())  # the query builder guarantees distinct tokens
    assert match(entries, captions) == brute_force(entries, captions)


def test_sliced_and_chunked_input():
    arr = pa.array(["x cat", "a dog", None, "cat dog"])
    automaton = build_automaton(["cat", "dog"])
    assert match_captions(automaton, arr.slice(1, 3), 2).to_pylist() == [[1], [], [0, 1]]
    assert match_captions(automaton, arr.slice(1, 3), 2, "ascii").to_pylist() == [[1], [], [0, 1]]
    assert match_captions(automaton, arr.slice(0, 0), 2).to_pylist() == []


def test_duplicate_tokens_in_query_list_are_refused():
    from wit.shards.storage import WitError

    with pytest.raises(WitError, match="same tokens as query 0"):
        build_automaton(["U.S.", "U. S."], "ascii")
