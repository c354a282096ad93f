"""Build the query list (MetaCLIP's metadata): WordNet head lemmas, Wikipedia unigrams, high-PMI bigrams and
popular Wikipedia titles, plus optional user lists; de-duplicated, case-sensitive, capped at 500,000 entries.

With --languages (MetaCLIP 2, filters.languages) every language gets its own list, de-duplicated and capped on
its own: English from the sources above, every other language from --lang-unigrams / --lang-bigrams files or else
wordfreq's frequencies; each entry carries its language.

Sources are taken in a fixed priority order (user lists, WordNet, unigrams, bigrams, titles): an entry that two
sources propose belongs to the first, and when the total cap is reached the later sources lose entries. Within a
source, entries are ranked by score (count, PMI, views) so a budget keeps the strongest ones.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass

import pyarrow as pa

from wit.filters import languages as langs
from wit.filters.io import read_table, write_json
from wit.filters.spacing import space
from wit.shards.options import opt
from wit.shards.schema import QUERIES, QUERY_SOURCES
from wit.shards.storage import WitError, fs_and_path
from wit.shards.tables import write_parquet

DEFAULT_WORDNET = "/usr/share/wordnet"  # Debian `wordnet-base`
WORDSEGMENT = "wordsegment"  # the word counts shipped in the PyPI package `wordsegment`
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def _none(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _lang_file(item: str) -> tuple[str, str]:
    lang, _, path = item.partition("=")
    if not lang or not path:
        raise argparse.ArgumentTypeError(f"{item!r}: expected LANG=FILE, e.g. de=de_unigrams.txt")
    return lang, path


def _budget(item: str) -> tuple[str, int]:
    name, _, n = item.partition("=")
    if name not in QUERY_SOURCES or not n.isdigit():
        raise argparse.ArgumentTypeError(f"{item!r}: expected SOURCE=N with SOURCE one of {', '.join(QUERY_SOURCES)}")
    return name, int(n)


@dataclass(frozen=True, kw_only=True)
class QueryBuildConfig:
    out: str = opt("data/queries.parquet", "query file to write; the summary goes beside it as <out>.summary.json")
    unigrams: str | None = opt(WORDSEGMENT, "`word count` file (also the counts PMI needs); 'wordsegment' = the "
                                            "counts in the PyPI package; 'none' = skip", parse=_none)
    bigrams: str | None = opt(WORDSEGMENT, "`word word count` file; PMI uses --unigrams counts; 'none' = skip",
                              parse=_none)
    titles: str | None = opt(None, "`title views` file (e.g. Wikipedia page views; underscores read as spaces); "
                                   "'none' = skip", parse=_none)
    wordnet: str | None = opt(DEFAULT_WORDNET, "folder with WordNet's data.noun/verb/adj/adv (Debian wordnet-base); "
                                               "skipped with a message when missing; 'none' = skip", parse=_none)
    extra: tuple[str, ...] = opt((), "a user list, one entry a line (repeatable); taken first", many="append")
    min_count: int = opt(100, "unigram count threshold (MetaCLIP: Wikipedia unigrams with count >= 100)", minimum=0)
    min_pmi: float = opt(3.0, "bigram threshold on ln(P(ab)/(P(a)P(b))) (see pmi() for why not MetaCLIP's 30)")
    min_views: int = opt(5000, "title page-view threshold (MetaCLIP: 5,000)", minimum=0)
    budgets: tuple[tuple[str, int], ...] = opt((), "at most N entries from SOURCE (extra, wordnet, unigram, bigram, "
                                                   "title); repeatable", flag="--budget", many="append",
                                               metavar="SOURCE=N", parse=_budget)
    cap: int = opt(500_000, "total entries at most (per language with --languages)", minimum=1)
    languages: str = opt("", "build one list per language: codes such as en,de,fr,zh or 'all' (English and "
                             "wordfreq's ~40 languages); English takes the sources above, the others "
                             "--lang-unigrams/--lang-bigrams or wordfreq; empty = English only, as before",
                         metavar="LANGS")
    lang_unigrams: tuple[tuple[str, str], ...] = opt((), "`word count` file for a language other than English "
                                                         "(instead of wordfreq); repeatable", many="append",
                                                     metavar="LANG=FILE", parse=_lang_file)
    lang_bigrams: tuple[tuple[str, str], ...] = opt((), "`word word count` file for a language other than English "
                                                        "(PMI from its unigram counts); repeatable", many="append",
                                                    metavar="LANG=FILE", parse=_lang_file)
    wordfreq_tokens: int = opt(langs.WORDFREQ_TOKENS, "wordfreq frequencies become counts over a nominal corpus of "
                                                      "this many tokens", minimum=1)
    log: bool = opt(True, "print what each source gave", cli=False)


@dataclass
class SourceSummary:
    path: str | None
    candidates: int = 0  # entries that passed the source's threshold
    duplicates: int = 0  # already proposed by an earlier source (or twice in this one)
    over_budget: int = 0  # cut by the source's budget or the total cap
    kept: int = 0
    note: str = ""
    budget: int | None = None


def _resolve(path: str, kind: str) -> str:
    if path != WORDSEGMENT:
        return path
    try:
        import wordsegment
    except ImportError:
        raise WitError(f"--{kind} {WORDSEGMENT}: the PyPI package 'wordsegment' is not installed") from None
    return os.path.join(os.path.dirname(wordsegment.__file__), f"{kind}.txt")


def _lines(url: str):
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise WitError(f"{url}: no such file")
    with fs.open(path, "rb") as f:
        for lineno, raw in enumerate(io.TextIOWrapper(f, encoding="utf-8", errors="strict"), 1):
            yield lineno, raw.rstrip("\r\n")


def read_counts(url: str, tokens: int | None = None, what: str = "count") -> dict[str, int]:
    """`entry count` lines (space or tab); `tokens` checks how many words an entry has. Last count wins."""
    counts: dict[str, int] = {}
    try:
        for lineno, line in _lines(url):
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
                raise WitError(f"{url}:{lineno}: expected '<entry> <{what}>' with a whole-number {what}, got {line[:80]!r}")
            entry = " ".join(parts[0].split())
            if tokens is not None and len(entry.split(" ")) != tokens:
                raise WitError(f"{url}:{lineno}: expected {tokens} word(s) before the {what}, got {parts[0][:80]!r}")
            counts[entry] = int(parts[1])
    except UnicodeDecodeError as err:
        raise WitError(f"{url}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return counts


def unigram_candidates(counts: dict[str, int], min_count: int) -> list[tuple[str, float]]:
    return [(w, float(c)) for w, c in counts.items() if c >= min_count]


def pmi(c_ab: int, c_a: int, c_b: int, total: int) -> float:
    """ln( P(a b) / (P(a) P(b)) ) with P from counts over `total` unigram tokens.

    MetaCLIP reports "PMI >= 30" without its normalisation; on a log scale no bigram in real counts gets near 30
    (wordsegment's best are ~12), so the default threshold here is 3.0 (46K of wordsegment's 286K bigrams).
    """
    return math.log(c_ab) + math.log(total) - math.log(c_a) - math.log(c_b)


def bigram_candidates(bigrams: dict[str, int], unigrams: dict[str, int], min_pmi: float) -> list[tuple[str, float]]:
    total = sum(unigrams.values())
    out = []
    for ab, c in bigrams.items():
        a, b = ab.split(" ")
        if c > 0 and unigrams.get(a, 0) > 0 and unigrams.get(b, 0) > 0:
            score = pmi(c, unigrams[a], unigrams[b], total)
            if score >= min_pmi:
                out.append((ab, score))
    return out


def title_candidates(url: str, min_views: int) -> list[tuple[str, float]]:
    views: dict[str, int] = {}
    for title, v in read_counts(url, what="views").items():
        title = " ".join(title.replace("_", " ").split())
        views[title] = views.get(title, 0) + v  # a title listed twice (e.g. two dumps) adds up
    return [(t, float(v)) for t, v in views.items() if v >= min_views]


def wordnet_candidates(folder: str) -> list[tuple[str, float]]:
    """Head lemma of every synset (`dog.n.01` -> `dog`): the first word of each data line; score = synsets."""
    heads: dict[str, int] = {}
    for name in WORDNET_FILES:
        url = f"{folder.rstrip('/')}/{name}"
        for lineno, line in _lines(url):
            if not line or line.startswith("  "):  # the licence header is indented
                continue
            fields = line.split(" ", 5)
            if len(fields) < 6 or not fields[0].isdigit():
                raise WitError(f"{url}:{lineno}: not a WordNet data line (offset lex_filenum ss_type w_cnt word ...)")
            # adjectives may carry a syntactic marker: `galore(ip)`.
            lemma = re.sub(r"\((a|p|ip)\)$", "", fields[4]).replace("_", " ")
            heads[lemma] = heads.get(lemma, 0) + 1
    return [(w, float(n)) for w, n in heads.items()]


def extra_candidates(url: str) -> list[tuple[str, float]]:
    return [(line.strip(), math.nan) for _, line in _lines(url) if line.strip()]


def build(cfg: QueryBuildConfig) -> dict:
    """Build the query table and its summary, write both, and return the summary."""
    budgets = dict(cfg.budgets)
    for name in budgets:
        if name not in QUERY_SOURCES:
            raise WitError(f"--budget {name}=...: unknown source; choose from {', '.join(QUERY_SOURCES)}")
    if cfg.bigrams and not cfg.unigrams:
        raise WitError("--bigrams needs --unigrams: PMI is computed from unigram and bigram counts")
    languages = langs.parse_languages(cfg.languages) if cfg.languages else ("en",)
    for flag, given in (("--lang-unigrams", cfg.lang_unigrams), ("--lang-bigrams", cfg.lang_bigrams)):
        for lang, _ in given:
            if lang not in languages or lang == "en":
                raise WitError(f"{flag} {lang}=...: {lang!r} is not one of the other --languages "
                               f"({', '.join(x for x in languages if x != 'en') or 'none'}); English takes "
                               "--unigrams/--bigrams")
    rows: list[tuple[str, str, float, str]] = []
    per_language = {}
    for lang in languages:
        plan = _english_plan(cfg) if lang == "en" else _language_plan(cfg, lang)
        lang_rows, summary = _select(cfg, plan, budgets, lang)
        rows += [(e, src, score, lang) for e, src, score in lang_rows]
        per_language[lang] = {"entries": len(lang_rows), "sources": {k: asdict(v) for k, v in summary.items()}}
    table = pa.table(
        {
            "id": pa.array(range(len(rows)), pa.int32()),
            "entry": [r[0] for r in rows],
            "source": [r[1] for r in rows],
            "score": pa.array([None if math.isnan(r[2]) else r[2] for r in rows], pa.float64()),
            "language": [r[3] for r in rows],
        },
        schema=QUERIES,
    )
    # the version covers the languages too: the same words in two languages are two lists
    text = "\n".join(r[0] for r in rows) if languages == ("en",) else "\n".join(f"{r[3]}\t{r[0]}" for r in rows)
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    table = table.replace_schema_metadata({"wit.queries.version": version, "wit.config": json.dumps(asdict(cfg))})
    write_parquet(cfg.out, table)
    result = {
        "version": version,
        "entries": len(rows),
        "cap": cfg.cap,
        "sources": per_language[languages[0]]["sources"],
        "languages": per_language,
        "config": asdict(cfg),
    }
    write_json(summary_path(cfg.out), result)
    _say(cfg, f"queries: {len(rows):,} entries in {len(languages)} language(s), version {version} -> {cfg.out}")
    return result


def _english_plan(cfg: QueryBuildConfig) -> list:
    """(source, path, candidates) in priority order: user lists, WordNet, unigrams, bigrams, titles."""
    counts = functools.lru_cache(maxsize=1)(lambda: read_counts(_resolve(cfg.unigrams, "unigrams"), tokens=1))
    plan = [
        ("wordnet", cfg.wordnet, lambda: wordnet_candidates(cfg.wordnet)),
        ("unigram", cfg.unigrams, lambda: unigram_candidates(counts(), cfg.min_count)),
        ("bigram", cfg.bigrams, lambda: bigram_candidates(
            read_counts(_resolve(cfg.bigrams, "bigrams"), tokens=2), counts(), cfg.min_pmi)),
        ("title", cfg.titles, lambda: title_candidates(cfg.titles, cfg.min_views)),
    ]
    return [("extra", p, lambda p=p: extra_candidates(p)) for p in cfg.extra] + plan


def _language_plan(cfg: QueryBuildConfig, lang: str) -> list:
    """A language other than English: its unigram file or wordfreq's counts, then its bigram file if given."""
    unigram_file, bigram_file = dict(cfg.lang_unigrams).get(lang), dict(cfg.lang_bigrams).get(lang)
    counts = functools.lru_cache(maxsize=1)(
        lambda: read_counts(unigram_file, tokens=1) if unigram_file else langs.wordfreq_counts(lang, cfg.wordfreq_tokens))
    plan = [("unigram", unigram_file or f"wordfreq:{lang}", lambda: unigram_candidates(counts(), cfg.min_count))]
    if bigram_file:
        plan.append(("bigram", bigram_file, lambda: bigram_candidates(
            read_counts(bigram_file, tokens=2), counts(), cfg.min_pmi)))
    return plan


def _select(cfg: QueryBuildConfig, ordered: list, budgets: dict, lang: str):
    """Candidates of one language, strongest first per source, de-duplicated by tokens, within budgets and cap."""
    summary: dict[str, SourceSummary] = {}
    seen: set[str] = set()
    rows: list[tuple[str, str, float]] = []
    for source, path, candidates in ordered:
        s = summary.setdefault(source, SourceSummary(path=None, budget=budgets.get(source)))
        s.path = path if s.path is None else f"{s.path},{path}"
        if path is None:
            s.note = "not given"
            continue
        if source == "wordnet" and not os.path.isdir(path) and "://" not in path:
            s.note = f"skipped: {path} is missing (install Debian 'wordnet-base')"
            _say(cfg, f"queries: wordnet {s.note}")
            continue
        # strongest first, ties by entry; user lists (no score) keep their file order.
        ranked = sorted(candidates(), key=lambda es: (0.0, "") if math.isnan(es[1]) else (-es[1], es[0]))
        s.candidates += len(ranked)
        budget = budgets.get(source)
        for entry, score in ranked:
            key = space(entry)
            if key.strip() == "":
                continue
            if key in seen:
                s.duplicates += 1
            elif (budget is not None and s.kept >= budget) or len(rows) >= cfg.cap:
                s.over_budget += 1
            else:
                seen.add(key)
                rows.append((entry, source, score))
                s.kept += 1
    for name, s in summary.items():
        _say(cfg, f"queries: {lang} {name:8s} kept {s.kept:>8,} of {s.candidates:>8,} candidates "
                  f"(duplicates {s.duplicates:,}, over budget {s.over_budget:,}) {s.note}")
    return rows, summary


def summary_path(out: str) -> str:
    return re.sub(r"\.parquet$", "", out) + ".summary.json"


def load(url: str) -> tuple[list[str], str]:
    """The entries (index = query id) and the version of a query file."""
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise WitError(f"{url}: no such query file (build one with `wit queries build`)")
    table = read_table(url)
    meta = table.schema.metadata or {}
    if "entry" not in table.column_names or "id" not in table.column_names:
        raise WitError(f"{url}: not a query file (needs columns id, entry)")
    ids = table.column("id").to_pylist()
    if ids != list(range(len(ids))):
        raise WitError(f"{url}: query ids must be 0..n-1 in order")
    entries = table.column("entry").to_pylist()
    version = meta.get(b"wit.queries.version", b"").decode() or hashlib.sha256(
        "\n".join(entries).encode()).hexdigest()[:16]
    return entries, version


def _say(cfg: QueryBuildConfig, msg: str) -> None:
    if cfg.log:
        print(msg, flush=True)
