"""Text filters over a pool or a manifest: caption length, junk captions, English, exact URL and pair dedup.

Three passes, so that no process holds more than one file's rows:
1. `judge_file` (a pure function per input file, mapped by `shards.runner`): the per-row verdicts, written to
   `<out>/_wit/text_rows/<stem>.parquet`.
2. `find_dups` (global, DuckDB with a memory limit and a temp directory): group-bys over those files find the
   repeated pairs and URLs among the rows that passed the per-row filters (so a dropped row never takes a good
   row's URL with it); only the rows that lose go out, partitioned by input file (`_wit/text_dups/f=<i>/`).
3. `finish_file` (per file again): the file's rows with its losers folded in, written to `<out>/<stem>.parquet`,
   one verdict row per input row, in input order.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.shards.lists import list_format, only_once, read_list, text_values
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, imap, run_map
from wit.shards.schema import OK, VERDICT, pair_uid, row_uids
from wit.shards.sql import SQLOptions, literal, register_filesystem, run_sql
from wit.shards.storage import WitError, absolute, fs_and_path, join, remove_scratch
from wit.shards.tables import open_parquet, parquet_files, parquet_inputs, read_parquet, write_parquet

NOT_OK = "not_ok_in_ingest"
TEXT_VERDICT = pa.schema(list(VERDICT) + [pa.field("lang", pa.string()), pa.field("lang_prob", pa.float32())])
_ROWS = pa.schema([pa.field("row", pa.int64()), pa.field("uid", pa.string()), pa.field("pair", pa.string()),
                   pa.field("reason", pa.string()), pa.field("nurl", pa.string()), pa.field("lang", pa.string()),
                   pa.field("lang_prob", pa.float32())])

_FILENAME = re.compile(
    r"^[\w\-. ()]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg)$|^(img|dsc|dscn|dscf|dcim|pxl|mvimg|screenshot|photo)"
    r"[_\- ]?\d[\d_\-]*$",
    re.IGNORECASE,
)
_URL = re.compile(r"^(https?://|www\.)\S+$", re.IGNORECASE)
_BOILERPLATE = {"image", "photo", "picture", "untitled", "thumbnail", "no image", "null", "none", "n/a", "img",
                "image not found", "placeholder", "logo", "icon", "click here", "loading"}


@dataclass(frozen=True, kw_only=True)
class TextConfig(EngineOptions, SQLOptions):
    inputs: tuple[str, ...] = opt(help="parquet files, folders, globs or {a..b} patterns, or URL lists in any format "
                                       "the crawl reads; local or s3://", positional=True)
    out: str = opt(help="verdict folder (local or s3://)")
    min_chars: int = opt(5, "shortest caption kept, in characters after stripping", minimum=0)
    max_chars: int = opt(1000, "longest caption kept", minimum=1)
    english: bool = opt(True, "language identification (langid.py, whose model ships in its PyPI package); "
                              "--no-english skips it")
    lang_min_prob: float = opt(0.9, "drop a caption when a language other than English wins with at least this "
                                    "probability; short ambiguous captions stay")
    english_words: float = opt(0.6, "keep a caption that langid gives to another language when at least this share "
                                    "of its words are common English words (wordfreq Zipf >= 3.5, and no more "
                                    "frequent in that language): short English captions that langid calls Dutch or "
                                    "Italian stay; 0 trusts langid alone", minimum=0.0)
    url_dedup: bool = opt(True, "drop rows repeating a URL (normalised: lowercase scheme and host, no fragment, no "
                                "default port); --no-url-dedup keeps them")
    pair_dedup: bool = opt(True, "drop repeats of a (url, caption) pair; --no-pair-dedup keeps them")


def normalize_url(url: str | None) -> str | None:
    """Lowercase scheme and host, drop the fragment and a default port; path and query stay as they are."""
    if not url:
        return url
    try:
        p = urlsplit(url.strip())
        host = (p.hostname or "").lower()
        port = p.port
    except ValueError:
        return url.strip()
    scheme = p.scheme.lower()
    if port and not (scheme, port) in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    if p.username or p.password:
        host = f"{p.username or ''}{':' + p.password if p.password else ''}@{host}"
    return urlunsplit((scheme, host, p.path or "/", p.query, ""))


def caption_reason(caption: str | None, min_chars: int, max_chars: int) -> str | None:
    """The first per-row caption problem, or None."""
    c = (caption or "").strip()
    if not c:
        return "caption_empty"
    if _URL.match(c):
        return "caption_url"
    if _FILENAME.match(c):
        return "caption_filename"
    if c.lower().strip(" .!:-_") in _BOILERPLATE:
        return "caption_boilerplate"
    if len(c) < min_chars:
        return "caption_too_short"
    if len(c) > max_chars:
        return "caption_too_long"
    return None


PROB_DECIMALS = 4
_LANGID = None  # one identifier per worker process (loading the model takes seconds)


def _identifier():
    global _LANGID
    if _LANGID is None:
        from langid.langid import LanguageIdentifier, model

        _LANGID = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return _LANGID


def identify_batch(captions: list[str], chunk: int = 1024) -> list[tuple[str, float]]:
    """(language, probability) per caption with langid.py's model, which ships inside its PyPI package.

    Same answer as `classify`, about 90x faster: langid scores one caption at a time with an integer-by-float32
    product that converts its whole weight matrix per call; here a chunk of feature vectors is one float32 matmul.
    Naive Bayes: log P(lang | text) = counts . log P(feature | lang) + log P(lang), normalised by softmax.

    The probability is rounded to PROB_DECIMALS, so that verdicts are the same bytes on every machine: BLAS kernels
    sum in a CPU-dependent order (OpenBLAS's AVX-512 and AVX2 float32 matmuls differed in the last bits), and in
    float64 those differences (~1e-13) move a 4-decimal rounding only when a value sits on its edge.
    """
    li = _identifier()
    weights, prior = li.nb_ptc.astype(np.float64), li.nb_pc.astype(np.float64)
    out: list[tuple[str, float]] = []
    for i in range(0, len(captions), chunk):
        feats = np.stack([li.instance2fv(c) for c in captions[i:i + chunk]]).astype(np.float64)
        logp = feats @ weights + prior
        best = logp.argmax(1)
        prob = np.round(1.0 / np.exp(logp - logp.max(1, keepdims=True)).sum(1), PROB_DECIMALS)
        out += [(li.nb_classes[b], float(p)) for b, p in zip(best, prob)]
    return out


def identify(caption: str) -> tuple[str, float]:
    return identify_batch([caption])[0]


_WORD = re.compile(r"[^\W\d_]+")
COMMON_ZIPF = 3.5  # about once per 300,000 English words: "rink", "hoodie", "commuter" are above it
# wordfreq's lists whose words it cannot look up without a segmenter (jieba, MeCab) that wit does not install
_UNSEGMENTED = frozenset({"zh", "ja", "ko"})


@functools.lru_cache(maxsize=1 << 18)
def _zipf(word: str, lang: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, lang)


@functools.lru_cache(maxsize=1)
def _wordfreq_languages() -> frozenset[str]:
    from wordfreq import available_languages

    return frozenset(available_languages()) - _UNSEGMENTED


def english_share(caption: str, lang: str) -> float:
    """The share of a caption's words that are common English words, and no more common in `lang` (the language
    langid picked, when wordfreq knows it). langid is a character n-gram model: on short English captions it is
    sure of Dutch, Afrikaans or Italian ("a commuter using a cellular phone in a subway metro train": it, 0.95),
    which a look at the words themselves undoes; "Ein Hund läuft über die Wiese" shares "die" with English but not
    the rest."""
    words = [w.lower() for w in _WORD.findall(caption)]
    if not words:
        return 0.0
    other = lang if lang in _wordfreq_languages() else None
    english = 0
    for w in words:
        z = _zipf(w, "en")
        english += z >= COMMON_ZIPF and (other is None or z >= _zipf(w, other))
    return english / len(words)


@dataclass(frozen=True)
class TextJob:
    src: str
    rows_out: str
    min_chars: int
    max_chars: int
    english: bool
    lang_min_prob: float
    english_words: float


URL_COLUMNS = ("url", "URL", "image_url", "img_url")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt", "title")


def read_rows(src: str) -> tuple[list[dict], str, str]:
    """The rows of a crawl manifest or pool (parquet with a uid column), or of a URL list in any format, read by
    `read_list` with the crawl's own rules (column names, types, duplicate columns, invalid URLs)."""
    source = open_parquet(src) if list_format(src, strict=False) == "parquet" else None
    if source is None or "uid" not in source.schema_arrow.names:
        return read_list(src).to_pylist(), "url", "caption"
    names = source.schema_arrow.names
    url_col = next((c for c in URL_COLUMNS if c in names), None)
    cap_col = next((c for c in CAPTION_COLUMNS if c in names), None)
    if url_col is None or cap_col is None:
        raise WitError(f"{src}: no {'url' if url_col is None else 'caption'} column (columns: {names})")
    for name in (url_col, cap_col, "uid"):
        only_once(src, names, name)
    extra = [c for c in ("uid", "status", "invalid") if c in names]
    t = source.read(columns=[url_col, cap_col] + extra)
    rows = t.select(extra).to_pylist()
    for row, url, caption in zip(rows, text_values(t[url_col]), text_values(t[cap_col])):
        row[url_col], row[cap_col] = url, caption
    return rows, url_col, cap_col


def judge_file(job: TextJob) -> int:
    """Per-row verdicts of one input file (before dedup), written to `rows_out`; returns the row count."""
    t, url_col, cap_col = read_rows(job.src)
    # a raw list has no uid yet: the ones ingest gives (a pair repeated across list files is counted per file here)
    fresh = row_uids((r[url_col], r[cap_col]) for r in t) if any(not r.get("uid") for r in t) else None
    out = []
    for i, r in enumerate(t):
        url, caption = r[url_col], r[cap_col]
        uid = r.get("uid") or fresh[i]  # fresh is None only when every row has its uid
        if r.get("status", OK) != OK or r.get("invalid"):
            reason = NOT_OK
        else:
            reason = caption_reason(caption, job.min_chars, job.max_chars)
        out.append({"row": i, "uid": uid, "pair": pair_uid(url, caption), "reason": reason, "nurl": normalize_url(url), "lang": None,
                    "lang_prob": None, "caption": caption})
    if job.english:
        todo = [o for o in out if o["reason"] is None]
        for o, (lang, prob) in zip(todo, identify_batch([o["caption"].strip() for o in todo])):
            o["lang"], o["lang_prob"] = lang, prob
            if lang != "en" and prob >= job.lang_min_prob and english_share(o["caption"], lang) < job.english_words:
                o["reason"] = f"not_english:{lang}"
    write_parquet(job.rows_out, pa.Table.from_pylist(out, schema=_ROWS))
    return len(out)


def run_text(cfg: TextConfig) -> dict:
    files = parquet_inputs(cfg.inputs)
    stems = [f.rsplit("/", 1)[-1].removesuffix(".parquet") for f in files]
    if len(set(stems)) != len(stems):
        raise WitError("two inputs share a file name; verdicts are named after their input: give distinct names")
    out = absolute(cfg.out)
    if any(f.rsplit("/", 1)[0] == out.rstrip("/") for f in files):
        raise WitError(f"{cfg.out}: holds the inputs, which the verdicts would overwrite; choose another --out")
    rows_dir = join(out, "_wit", "text_rows")
    jobs = [TextJob(f, join(rows_dir, f"{s}.parquet"), cfg.min_chars, cfg.max_chars, cfg.english, cfg.lang_min_prob,
                       cfg.english_words)
            for f, s in zip(files, stems)]
    rows = run_map(judge_file, jobs, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
    summary = dedup_rows(cfg, [j.rows_out for j in jobs], sum(rows), [join(out, f"{s}.parquet") for s in stems])
    remove_scratch(rows_dir)
    return summary


def dedup_rows(cfg: TextConfig, parts: list[str], n_rows: int, targets: list[str]) -> dict:
    """Passes 2 and 3 over the per-row verdict files `parts`: the verdict files `targets`, and the summary."""
    dups_dir = join(absolute(cfg.out), "_wit", "text_dups")
    con = cfg.connect(output=absolute(cfg.out))
    find_dups(con, parts, n_rows, dups_dir, cfg.pair_dedup, cfg.url_dedup)
    con.close()
    finish = [FinishJob(part, join(dups_dir, f"f={i}"), target) for i, (part, target) in enumerate(zip(parts, targets))]
    counts: Counter = Counter()
    languages: Counter = Counter()
    for kinds, langs in imap(finish_file, finish, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address):
        counts.update(kinds)
        languages.update(langs)
    remove_scratch(dups_dir)
    n = sum(counts.values())
    return {"files": len(parts), "rows": n, "kept": counts.pop("kept", 0), "dropped": dict(counts),
            "languages": dict(languages.most_common())}


def find_dups(con, parts: list[str], n_rows: int, dups_dir: str, pair_dedup: bool, url_dedup: bool) -> None:
    """Write the rows that lose to a repeat, partitioned by input file: `dups_dir/f=<i>/*.parquet` (row, reason,
    dup_of). Pairs first (the same url and caption; a repeat has its own uid, so by `pair`), then URLs: both only
    among rows that passed the per-row filters, both keeping the smallest uid, as the image dedup does, so that the
    stages agree on which copy stays."""
    register_filesystem(con, dups_dir)
    con.register("text_files", pa.table({"filename": parts, "f": pa.array(range(len(parts)), pa.int32())}))
    con.read_parquet(parts, filename=True).create_view("text_parts")
    con.execute("""CREATE TEMP VIEW r AS SELECT f, row, uid, pair, reason, nurl
                   FROM text_parts JOIN text_files USING (filename)""")
    seen = run_sql(con, "SELECT count(*) FROM r", what="text dedup").fetchone()[0]
    if seen != n_rows:  # a file name DuckDB spells differently would silently lose its rows
        raise WitError(f"{dups_dir}: DuckDB read {seen} rows of {n_rows} from the per-row verdicts")
    con.execute("CREATE TEMP TABLE pair_dups (f INTEGER, row BIGINT, reason VARCHAR, dup_of VARCHAR)")
    con.execute("CREATE TEMP TABLE url_dups (f INTEGER, row BIGINT, reason VARCHAR, dup_of VARCHAR)")
    # Each dedup: one group-by over every row that keeps only the repeated keys, then the rows with such a key
    # (a small share of the pool) are ranked among themselves.
    if pair_dedup:
        run_sql(con, """CREATE TEMP TABLE rep_pairs AS
                        SELECT pair FROM r WHERE reason IS NULL GROUP BY pair HAVING count(*) > 1""",
                what="text dedup (pairs)")
        run_sql(con, """
            INSERT INTO pair_dups
            SELECT f, row, 'pair_dup_of:' || keeper, keeper FROM (
                SELECT f, row, first_value(uid) OVER w AS keeper, row_number() OVER w AS n
                FROM r SEMI JOIN rep_pairs USING (pair) WHERE reason IS NULL
                WINDOW w AS (PARTITION BY pair ORDER BY uid, f, row))
            WHERE n > 1""", what="text dedup (pairs)")
    if url_dedup:
        run_sql(con, """CREATE TEMP TABLE rep_urls AS SELECT nurl FROM r WHERE reason IS NULL AND nurl IS NOT NULL
                        GROUP BY nurl HAVING count(*) > 1""", what="text dedup (URLs)")
        run_sql(con, """
            INSERT INTO url_dups
            WITH c AS (SELECT f, row, uid, nurl FROM r SEMI JOIN rep_urls USING (nurl) ANTI JOIN pair_dups USING (f, row)
                       WHERE reason IS NULL),
                 k AS (SELECT nurl, min(uid) AS keeper FROM c GROUP BY nurl HAVING count(*) > 1)
            SELECT c.f, c.row, 'url_dup_of:' || k.keeper, k.keeper FROM c JOIN k USING (nurl)
            WHERE c.uid <> k.keeper""", what="text dedup (URLs)")
    remove_scratch(dups_dir)
    run_sql(con, f"""COPY (SELECT * FROM pair_dups UNION ALL SELECT * FROM url_dups) TO {literal(dups_dir)}
                     (FORMAT parquet, PARTITION_BY (f), OVERWRITE_OR_IGNORE)""", what="text dedup (writing)")


@dataclass(frozen=True)
class FinishJob:
    rows: str  # the file's per-row verdicts (judge_file)
    dups: str  # its rows that lost to a repeat (find_dups), a folder that may not exist
    target: str


def finish_file(job: FinishJob) -> tuple[dict[str, int], dict[str, int]]:
    """One input file's verdicts: its per-row verdicts with the repeats folded in; returns rows per reason kind,
    and rows per language that langid gave (the rows it judged: those the caption rules kept)."""
    rows = read_parquet(job.rows, ["row", "uid", "reason", "lang", "lang_prob"])
    if not np.array_equal(rows["row"].to_numpy(), np.arange(rows.num_rows)):
        raise WitError(f"{job.rows}: rows out of order")  # judge_file writes them in order; never expected
    reason, dup_of = rows["reason"], pa.nulls(rows.num_rows, pa.string())
    fs, path = fs_and_path(job.dups)
    if fs.isdir(path):
        dups = pa.concat_tables([read_parquet(f, ["row", "reason", "dup_of"]) for f in parquet_files(job.dups)])
        at = np.full(rows.num_rows, -1, np.int64)
        at[dups["row"].to_numpy()] = np.arange(dups.num_rows)
        take = pa.array(at, mask=at < 0)
        reason = pc.coalesce(reason, dups["reason"].take(take))
        dup_of = dups["dup_of"].take(take)
    table = pa.table({"uid": rows["uid"], "keep": pc.is_null(reason), "reason": reason, "dup_of": dup_of,
                      "lang": rows["lang"], "lang_prob": rows["lang_prob"]}, schema=TEXT_VERDICT)
    write_parquet(job.target, table)
    kinds = pc.fill_null(pc.list_element(pc.split_pattern(reason, ":", max_splits=1), 0), "kept")
    return _counts(kinds), _counts(rows["lang"].drop_null())


def _counts(values) -> dict[str, int]:
    return {k.as_py(): n.as_py() for k, n in zip(*pc.value_counts(values).flatten())}

