"""Worldwide curation (MetaCLIP 2): per-language entry lists, language identification, per-language matching and t."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import shared_data
from wit.filters.balance import BalanceConfig
from wit.filters.balance import run as balance
from wit.filters.languages import per_language_t, tail_share, tail_t
from wit.filters.match import MatchConfig
from wit.filters.match import run as match
from wit.filters.languages import load_languages
from wit.filters.queries import QueryBuildConfig, build, load
from wit.filters.worldwide import WorldwideMatcher
from wit.shards.storage import WitError


def write(path, lines) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def queries(tmp_path, languages="en,de,fr,zh,ja", **lists) -> str:
    """A worldwide list from hand-written `word count` files (English from an extra list)."""
    files = {lang: write(tmp_path / f"{lang}.txt", [f"{w} 1000" for w in words]) for lang, words in lists.items()
             if lang != "en"}
    out = str(tmp_path / "q.parquet")
    build(QueryBuildConfig(out=out, unigrams=None, bigrams=None, wordnet=None, log=False, languages=languages,
                           extra=(write(tmp_path / "en.txt", lists["en"]),),
                           lang_unigrams=tuple(files.items())))
    return out


HAND = dict(
    en=["man", "hat", "dog", "red"],
    de=["Mann", "Feuerwehrmann", "steht", "vor", "Feuerwehrauto", "Hut", "einem"],
    fr=["homme", "L'homme", "chapeau", "porte", "un", "d'eau"],
    zh=["狗", "草地", "奔跑", "猫"],
    ja=["公園", "犬", "猫", "走"],
)
CAPTIONS = [
    ("Ein Feuerwehrmann steht vor einem roten Feuerwehrauto.", "de",  # compounds: whole words only
     {"Feuerwehrmann", "steht", "vor", "einem", "Feuerwehrauto"}),
    ("L'homme porte un chapeau rouge près d'une bouteille d'eau.", "fr",  # elision: "L'homme" is one token
     {"L'homme", "porte", "un", "chapeau", "d'eau"}),
    ("一只黑色的狗在草地上奔跑。", "zh", {"狗", "草地", "奔跑"}),  # no spaces: unpadded entries
    ("公園で犬が走っている", "ja", {"公園", "犬", "走"}),
    ("Ein Mann mit einem roten Hut und einem hat", "de", {"Mann", "einem", "Hut"}),  # mixed: English "hat" is not
    ("A man in a red hat walks his dog.", "en", {"man", "hat", "dog", "red"}),
]


def test_hand_built_multilingual_cases(tmp_path):
    q = queries(tmp_path, **HAND)
    entries, languages = load(q)[0], load_languages(q)
    assert sorted(set(languages)) == ["de", "en", "fr", "ja", "zh"]
    matcher = WorldwideMatcher(entries, languages)
    matched, langs = matcher.match(pa.array([c for c, _, _ in CAPTIONS]))
    assert langs.to_pylist() == [lang for _, lang, _ in CAPTIONS]
    for (caption, lang, want), ids in zip(CAPTIONS, matched.to_pylist()):
        assert {entries[i] for i in ids} == want, caption
        assert {languages[i] for i in ids} <= {lang}


def test_wordfreq_lists_carry_their_language(tmp_path):
    out = str(tmp_path / "q.parquet")
    summary = build(QueryBuildConfig(out=out, unigrams=None, bigrams=None, wordnet=None, log=False, cap=3000,
                                     languages="en,de,zh", extra=(write(tmp_path / "en.txt", ["dog"]),)))
    table = pq.read_table(out).to_pylist()
    by = {(r["language"], r["entry"]): r for r in table}
    assert summary["languages"]["de"]["entries"] == 3000 == sum(r["language"] == "de" for r in table)
    assert summary["languages"]["de"]["sources"]["unigram"]["path"] == "wordfreq:de"
    assert ("de", "Hund") in by and ("de", "hund") in by and by["de", "Hund"]["score"] == by["de", "hund"]["score"]
    assert by["de", "der"]["score"] > by["de", "Hund"]["score"] >= 100  # counts = frequency x 1e9 tokens
    assert ("zh", "的") in by and ("en", "dog") in by
    # the same word in two languages is two entries, each matched only in its language
    with pytest.raises(WitError, match="not one of the other --languages"):
        build(QueryBuildConfig(out=out, unigrams=None, bigrams=None, wordnet=None, log=False, languages="en,de",
                               lang_unigrams=(("fr", "x.txt"),)))


def metaclip_reference(entries: list[str], captions: list[str]) -> list[list[int]]:
    keys = [f" {e} " for e in entries]
    out = []
    for caption in captions:
        text = f" {caption} "
        for mark in ",.;:?!`":
            text = text.replace(mark, f" {mark} ")
        for blank in "\t\n\r":
            text = text.replace(blank, " ")
        out.append([i for i, key in enumerate(keys) if key in text])
    return out


def test_real_multi30k_per_language_matching_equals_reference(tmp_path):
    captions, truth = [], []
    for lang in ("en", "de", "fr", "cs"):
        with gzip.open(shared_data("multi30k", f"val.{lang}.gz"), "rt", encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f][:400]
        captions += lines
        truth += [lang] * len(lines)
    out = str(tmp_path / "q.parquet")
    build(QueryBuildConfig(out=out, unigrams="wordsegment", bigrams=None, wordnet=None, log=False, cap=2000,
                           languages="en,de,fr,cs"))
    entries, languages = load(out)[0], load_languages(out)
    pq.write_table(pa.table({"uid": [f"u{i}" for i in range(len(captions))], "caption": captions}),
                   tmp_path / "in.parquet")
    summary = match(MatchConfig(inputs=(str(tmp_path / "in.parquet"),), queries=out, out=str(tmp_path / "m"),
                                workers=1))
    table = pq.read_table(tmp_path / "m" / "00000.parquet")
    got_lang = table["language"].to_pylist()
    assert np.mean([a == b for a, b in zip(got_lang, truth)]) >= 0.99  # langid, restricted to the list's languages
    # each caption against its identified language's entries, the MetaCLIP way, one entry at a time
    lang_np = np.array(languages)
    for lang in ("en", "de", "fr", "cs"):
        ids = np.flatnonzero(lang_np == lang)
        rows = [i for i, x in enumerate(got_lang) if x == lang]
        ref = metaclip_reference([entries[i] for i in ids], [captions[i] for i in rows])
        got = [table["matched"][i].as_py() for i in rows]
        assert got == [[int(ids[j]) for j in r] for r in ref], lang
        assert summary["languages"][lang]["matched_rows"] > 0.9 * len(rows)


def test_tail_rule_on_a_constructed_pool():
    en = np.array([1, 1, 2, 6])  # t_en = 2: tail holds (1 + 1 + 2) / 10 = 0.4 of English's matches
    de = np.array([2, 4, 1, 3])  # sorted 1 2 3 4, cumulative shares .1 .3 .6 1: t_de = 3 (.6 >= .4; t = 2 gives .3)
    fr = np.array([10, 10, 10, 10, 60])  # t = 10 holds .4 exactly
    counts = np.concatenate([en, de, fr, [0, 0]])
    entry_language = np.array(["en"] * 4 + ["de"] * 4 + ["fr"] * 5 + ["ja"] * 2, dtype=object)
    assert tail_share(en, 2) == 0.4
    assert per_language_t(counts, entry_language, 2) == {"en": 2, "de": 3, "fr": 10, "ja": 1}
    assert tail_t(de, 0.3) == 2 and tail_t(de, 0.31) == 3 and tail_t(de, 1.0) == 4
    with pytest.raises(WitError, match="needs English"):
        per_language_t(de, np.array(["de"] * 4, dtype=object), 2)


def test_balance_uses_per_language_t_and_reports_it(tmp_path):
    # English: "man" 60 pairs, "dog" 20, "hat" 20 -> t_en = 20: tail share 0.4. German: "Mann" 80, "Hut" 10,
    # "steht" 10 -> t_de = 80 (shares .1 .2 1.0): German keeps everything, English samples "man" down.
    q = queries(tmp_path, languages="en,de", en=["man", "dog", "hat"], de=["Mann", "Hut", "steht"])
    captions = (["a man on a bench"] * 60 + ["the dog is running"] * 20 + ["a red hat on the table"] * 20
                + ["Ein Mann sitzt auf einer Bank"] * 80 + ["Ein Hut liegt auf dem Tisch"] * 10
                + ["Die Frau steht am Fenster"] * 10)
    pq.write_table(pa.table({"uid": [f"u{i}" for i in range(len(captions))], "caption": captions}),
                   tmp_path / "in.parquet")
    match(MatchConfig(inputs=(str(tmp_path / "in.parquet"),), queries=q, out=str(tmp_path / "m"), workers=1))
    card = balance(BalanceConfig(matches=(str(tmp_path / "m" / "00000.parquet"),), out=str(tmp_path / "b"), t=20,
                                 workers=1, seed=3))
    assert card["t"] == 20
    de, en = card["languages"]["de"], card["languages"]["en"]
    assert (en["t"], de["t"]) == (20, 80)
    assert (en["pool"], en["matched_pairs"], en["entries"], en["entries_matched"]) == (100, 100, 3, 3)
    assert (de["pool"], de["matched_pairs"], de["kept_pairs"]) == (100, 100, 100)  # t_de = 80: nothing dropped
    assert 40 < en["kept_pairs"] < 100 and en["tail_share"] == 0.4
    assert json.loads((tmp_path / "b" / "datacard.json").read_text())["languages"] == card["languages"]
    # the audit shows the data card's table
    from wit.shards.audit import render_html

    q = {"entries_in_corpus": 6, "entries_matched_before": 6, "max_per_entry_before": 80, "max_per_entry_after": 80,
         "head_share": 0.5, "t": None, "top": [], "bottom": [], "languages": card["languages"]}
    page = render_html({"root": "r", "funnel": [], "duplicates_removed": 0, "leakage_removed": 0, "top_domains": [],
                        "queries": q}, [])
    assert "<td>de</td><td>100</td><td>100</td><td>3</td><td>3</td><td>80</td><td>100</td>" in page
