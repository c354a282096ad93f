"""Worldwide curation (MetaCLIP 2): languages of entries and captions, and a threshold t per language.

- Entry lists per language: English from today's sources (WordNet, unigram/bigram counts, titles); every other
  language from a user's `word count` / `word word count` files or else PyPI `wordfreq`'s word frequencies
  (shipped in its wheel, ~40 languages). wordfreq gives frequencies f (share of all tokens) and lower-cases
  everything; a count is round(f * N) over a nominal corpus of N tokens (`--wordfreq-tokens`, default 1e9, about
  English Wikipedia's size: --min-count 100 then keeps words with f >= 1e-7), and each word also gets its
  capitalised form (same count), since matching is case-sensitive and German nouns and sentence starts are capitals.
- Scripts without spaces: wordfreq's Chinese list is segmented by jieba and its Japanese list by MeCab when wordfreq
  built them, so their entries are words; captions are not segmented: entries of those scripts match by MetaCLIP 2's
  unpadded keys (filters.spacing), one rule for all seven scripts (no PyPI segmenter ships dictionaries for Khmer,
  Lao, Burmese and Tibetan, and a caption segmenter's cuts need not agree with the list's).
- Language of a caption: langid.py restricted to the query list's languages (restricting raises its accuracy on
  short captions: tests and bench/README.md have the figures), one caption at a time.
- t per language (MetaCLIP 2's tail rule): English's t is given; English's tail proportion is the share of its
  matches held by entries with c_e <= t_en; every other language gets the smallest t whose tail proportion reaches
  English's.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from wit.shards.storage import WitError
from wit.shards.tables import read_parquet

WORDFREQ_TOKENS = 1_000_000_000


def wordfreq_languages() -> list[str]:
    import wordfreq

    return sorted(wordfreq.available_languages("best"))


def parse_languages(text: str) -> tuple[str, ...]:
    """'en,de,fr' -> ('en', 'de', 'fr'); 'all' -> English and every language wordfreq ships."""
    if text.strip() == "all":
        return tuple(["en"] + [x for x in wordfreq_languages() if x != "en"])
    langs = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not langs:
        raise WitError(f"--languages {text!r}: give codes such as en,de,fr or 'all'")
    return langs


def wordfreq_counts(lang: str, tokens: int = WORDFREQ_TOKENS) -> dict[str, int]:
    """wordfreq's word frequencies for `lang` as counts over a nominal corpus of `tokens` tokens, with each word's
    capitalised form beside it."""
    import wordfreq

    if lang not in wordfreq.available_languages("best"):
        raise WitError(f"--languages {lang}: wordfreq has no list for it; give --lang-unigrams {lang}=FILE "
                       f"(wordfreq has: {', '.join(wordfreq_languages())})")
    counts: dict[str, int] = {}
    for word, freq in wordfreq.get_frequency_dict(lang, wordlist="best").items():
        c = round(freq * tokens)
        for form in (word, word[:1].upper() + word[1:]):
            counts[form] = max(counts.get(form, 0), c)
    return counts


@functools.lru_cache(maxsize=4)
def identifier(languages: tuple[str, ...]):
    """langid.py's model, restricted to the languages it knows of `languages`, with normalised probabilities."""
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    known = [x for x in languages if x in ident.nb_classes]
    if not known:
        raise WitError(f"none of the query list's languages ({', '.join(languages)}) is known to langid.py")
    ident.set_languages(known)
    return ident


def identify(captions, languages: tuple[str, ...]) -> list[str]:
    """The language of each caption among `languages` (a null or empty caption: the first language)."""
    ident = identifier(tuple(languages))
    first = languages[0]
    return [ident.classify(c)[0] if c and c.strip() else first for c in captions]


def tail_share(counts: np.ndarray, t: float) -> float:
    """The share of the matches held by entries with c_e <= t."""
    total = counts.sum()
    return float(counts[counts <= t].sum() / total) if total else math.nan


def tail_t(counts: np.ndarray, share: float) -> int:
    """The smallest t whose tail share reaches `share` (t is one of the counts; 1 when nothing matched)."""
    c = np.sort(counts[counts > 0])
    if not len(c):
        return 1
    cum = np.cumsum(c) / c.sum()
    i = int(np.searchsorted(cum, share - 1e-12))
    return int(c[min(i, len(c) - 1)])  # a smaller t drops c[i] (and its equals) from the tail: below the share


def per_language_t(counts: np.ndarray, entry_language: np.ndarray, t_en: int, english: str = "en") -> dict[str, int]:
    """t per language by the tail rule; `counts` and `entry_language` are per entry."""
    langs = list(dict.fromkeys(entry_language.tolist()))
    if english not in langs:
        raise WitError(f"per-language t needs English ({english!r}) entries in the query list: it sets the tail share")
    share = tail_share(counts[entry_language == english], t_en)
    if math.isnan(share):
        raise WitError("per-language t: no pair matched an English entry, so English's tail share is undefined")
    return {lang: t_en if lang == english else tail_t(counts[entry_language == lang], share) for lang in langs}


def load_languages(url: str) -> list[str]:
    """The language of each entry of a query file (a list from before languages were recorded: English)."""
    table = read_parquet(url)
    if "language" not in table.column_names:
        return ["en"] * table.num_rows
    return table.column("language").to_pylist()


def balance_t(queries: str, counts: np.ndarray, t_en: int) -> tuple[np.ndarray | int, dict[str, int] | None]:
    """t per entry for balancing: the scalar t for a one-language list (as before), else each entry's language's
    t by the tail rule, and the t per language. A query file that cannot be read: the scalar t."""
    try:
        entry_language = np.array(load_languages(queries), dtype=object)
    except (WitError, OSError, ValueError):
        return t_en, None
    if len(entry_language) != len(counts) or len(set(entry_language.tolist())) < 2:
        return t_en, None
    t_lang = per_language_t(counts, entry_language, t_en)
    return np.array([t_lang[x] for x in entry_language.tolist()], dtype=np.float64), t_lang


def report_file(task: tuple[str, str]) -> dict[str, dict[str, int]]:
    """Per caption language of one match file and its selection file: rows, pool, matched pairs, kept pairs (online:
    those the seed's one draw keeps, a typical epoch)."""
    match_url, selection_url = task
    lang = read_parquet(match_url, ["language"])["language"].to_pylist()
    sel = read_parquet(selection_url, ["status", "reason", "draw", "keep_prob"])
    chosen = (sel["draw"].to_numpy() < sel["keep_prob"].to_numpy()).tolist()  # online (eligible): the seed's one draw
    out: dict[str, dict[str, int]] = {}
    for x, status, reason, drawn in zip(lang, sel["status"].to_pylist(), sel["reason"].to_pylist(), chosen):
        s = out.setdefault(x, {"rows": 0, "pool": 0, "matched": 0, "kept": 0})
        s["rows"] += 1
        s["pool"] += reason != "not_in_pool"
        s["matched"] += reason not in ("not_in_pool", "no_query_match")
        s["kept"] += status == "selected" or (status == "eligible" and drawn)
    return out


def report(parts: list[dict], counts: np.ndarray, after: np.ndarray, queries: str,
           t_lang: dict[str, int]) -> dict[str, dict]:
    """The data card's per-language table: pool, matched pairs, entries (all, matched), t, kept pairs, tail share."""
    entry_language = np.array(load_languages(queries), dtype=object)
    total: dict[str, dict] = {}
    for part in parts:
        for lang, s in part.items():
            t = total.setdefault(lang, {"rows": 0, "pool": 0, "matched": 0, "kept": 0})
            for k in t:
                t[k] += s[k]
    out = {}
    for lang, t in t_lang.items():
        mine = entry_language == lang
        pairs = total.get(lang, {"rows": 0, "pool": 0, "matched": 0, "kept": 0})
        out[lang] = {"t": int(t), "pool": pairs["pool"], "matched_pairs": pairs["matched"], "kept_pairs": pairs["kept"],
                     "entries": int(mine.sum()), "entries_matched": int((counts[mine] > 0).sum()),
                     "matches_before": int(counts[mine].sum()), "matches_after": int(after[mine].sum()),
                     "tail_share": tail_share(counts[mine], t)}
    return out
