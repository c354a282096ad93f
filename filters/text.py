"""Text filters over a pool or a manifest: caption length, junk captions, English, exact URL and pair dedup.

Per-file judging (`judge_file`) is a pure function mapped by `shards.runner.run_map`; dedup is global, in DuckDB,
among the rows that passed the per-row filters (so a dropped row never takes a good row's URL with it). Output:
`<out>/<input stem>.parquet`, one verdict row per input row, in input order.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import duckdb
import numpy as np
import pyarrow as pa

from wit.shards.lists import list_format, read_list
from wit.shards.options import opt
from wit.shards.runner import EngineOptions
from wit.shards.schema import OK, VERDICT, pair_uid, row_uids
from wit.shards.storage import WitError, absolute, expand, fs_and_path, join
from wit.shards.tables import open_parquet, write_parquet

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
class TextConfig(EngineOptions):
    inputs: tuple[str, ...] = opt(help="parquet files, folders, globs or {a..b} patterns, or URL lists in any format "
                                       "the crawl reads; local or s3://", positional=True)
    out: str = opt(help="verdict folder (local or s3://)")
    min_chars: int = opt(5, "shortest caption kept, in characters after stripping", minimum=0)
    max_chars: int = opt(1000, "longest caption kept", minimum=1)
    english: bool = opt(True, "language identification (langid.py, whose model ships in its PyPI package); "
                              "--no-english skips it")
    lang_min_prob: float = opt(0.9, "drop a caption when a language other than English wins with at least this "
                                    "probability; short ambiguous captions stay")
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
    """
    li = _identifier()
    out: list[tuple[str, float]] = []
    for i in range(0, len(captions), chunk):
        feats = np.stack([li.instance2fv(c) for c in captions[i:i + chunk]]).astype(np.float32)
        logp = feats @ li.nb_ptc + li.nb_pc
        best = logp.argmax(1)
        prob = 1.0 / np.exp(logp - logp.max(1, keepdims=True)).sum(1)
        out += [(li.nb_classes[b], float(p)) for b, p in zip(best, prob)]
    return out


def identify(caption: str) -> tuple[str, float]:
    return identify_batch([caption])[0]


@dataclass(frozen=True)
class TextJob:
    src: str
    rows_out: str
    min_chars: int
    max_chars: int
    english: bool
    lang_min_prob: float


URL_COLUMNS = ("url", "URL", "image_url", "img_url")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt", "title")


def judge_file(job: TextJob) -> int:
    """Per-row verdicts of one input file (before dedup), written to `rows_out`; returns the row count."""
    if list_format(job.src, strict=False) != "parquet":  # a URL list in another format: read as the crawl reads it
        t, url_col, cap_col = read_list(job.src).to_pylist(), "url", "caption"
    else:
        source = open_parquet(job.src)
        names = source.schema_arrow.names
        url_col = next((c for c in URL_COLUMNS if c in names), None)
        cap_col = next((c for c in CAPTION_COLUMNS if c in names), None)
        if url_col is None or cap_col is None:
            raise WitError(f"{job.src}: no {'url' if url_col is None else 'caption'} column (columns: {names})")
        extra = [c for c in ("uid", "status", "invalid") if c in names]
        t = source.read(columns=[url_col, cap_col] + extra).to_pylist()
    # a raw list has no uid yet: the ones ingest gives (a pair repeated across list files is counted per file here)
    fresh = row_uids((r[url_col], r[cap_col]) for r in t)
    out = []
    for i, r in enumerate(t):
        url, caption = r[url_col], r[cap_col]
        uid = r.get("uid") or fresh[i]
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
            if lang != "en" and prob >= job.lang_min_prob:
                o["reason"] = f"not_english:{lang}"
    write_parquet(job.rows_out, pa.Table.from_pylist(out, schema=_ROWS))
    return len(out)


def input_files(inputs: tuple[str, ...]) -> list[str]:
    files = []
    for pattern in inputs:
        for url in expand(absolute(pattern)):
            fs, path = fs_and_path(url)
            proto = "" if "://" not in url else url.split("://", 1)[0] + "://"
            if fs.isdir(path):
                files += [proto + p for p in sorted(fs.glob(path.rstrip("/") + "/*.parquet"))]
            elif any(ch in path for ch in "*?["):
                files += [proto + p for p in sorted(fs.glob(path))]
            elif fs.exists(path):
                files.append(url)
            else:
                raise WitError(f"{url}: not found")
    if not files:
        raise WitError(f"{' '.join(inputs)}: no parquet files")
    return files


def run_text(cfg: TextConfig) -> dict:
    from wit.shards.runner import run_map

    files = input_files(cfg.inputs)
    stems = [f.rsplit("/", 1)[-1].removesuffix(".parquet") for f in files]
    if len(set(stems)) != len(stems):
        raise WitError("two inputs share a file name; verdicts are named after their input: give distinct names")
    out = absolute(cfg.out)
    if any(f.rsplit("/", 1)[0] == out.rstrip("/") for f in files):
        raise WitError(f"{cfg.out}: holds the inputs, which the verdicts would overwrite; choose another --out")
    rows_dir = join(out, "_wit", "text_rows")
    jobs = [TextJob(f, join(rows_dir, f"{s}.parquet"), cfg.min_chars, cfg.max_chars, cfg.english, cfg.lang_min_prob)
            for f, s in zip(files, stems)]
    run_map(judge_file, jobs, engine=cfg.engine, workers=cfg.workers, ray_address=cfg.ray_address)
    con = duckdb.connect()
    parts = [j.rows_out for j in jobs]
    con.execute(f"""CREATE TEMP TABLE r AS SELECT *, (row_number() OVER (ORDER BY f, row))::BIGINT AS rid FROM (
        SELECT *, list_position({parts!r}, filename) AS f FROM read_parquet({parts!r}, filename = true))""")
    # Pairs first (the same url and caption; a repeat has its own uid, so by `pair`), then URLs: both only among
    # rows that passed the per-row filters, both keeping the smallest uid, as the image dedup does, so that the
    # stages agree on which copy stays.
    con.execute("CREATE TEMP TABLE d (rid BIGINT, reason VARCHAR, dup_of VARCHAR)")
    if cfg.pair_dedup:
        con.execute("""INSERT INTO d SELECT rid, 'pair_dup_of:' || keeper, keeper FROM (
                         SELECT rid, first_value(uid) OVER w AS keeper, row_number() OVER w AS n FROM r
                         WHERE reason IS NULL WINDOW w AS (PARTITION BY pair ORDER BY uid, rid)) WHERE n > 1""")
    if cfg.url_dedup:
        con.execute("""INSERT INTO d SELECT rid, 'url_dup_of:' || keeper, keeper FROM (
                         SELECT rid, uid, min(uid) OVER (PARTITION BY nurl) AS keeper FROM r
                         WHERE reason IS NULL AND nurl IS NOT NULL AND rid NOT IN (SELECT rid FROM d))
                       WHERE uid <> keeper""")
    res = con.sql("""SELECT r.f, r.uid, r.reason IS NULL AND d.rid IS NULL AS keep, coalesce(r.reason, d.reason)
                     AS reason, d.dup_of, r.lang, r.lang_prob FROM r LEFT JOIN d USING (rid) ORDER BY rid""")
    table = res.to_arrow_table()
    counts: Counter = Counter()
    fcol = table["f"].to_numpy()
    body = table.drop_columns(["f"]).cast(TEXT_VERDICT)
    for i, stem in enumerate(stems, start=1):
        idx = np.flatnonzero(fcol == i)
        part = body.slice(int(idx[0]), len(idx)) if len(idx) else TEXT_VERDICT.empty_table()
        write_parquet(join(out, f"{stem}.parquet"), part)
    counts.update((r or "kept").split(":", 1)[0] for r in body["reason"].to_pylist())
    return {"files": len(files), "rows": body.num_rows, "kept": counts.pop("kept", 0), "dropped": dict(counts)}
