"""`wit audit <root>`: what happened to every input row, from the manifests alone, as HTML + PNG + JSON.

The pipeline folder is read by convention (shards/layout.py names it; each part optional except raw/):
  raw/                 crawl manifests (wit download)
  verdicts/<stage>/    filter verdicts, one folder per stage (uid, keep, reason)
  balance/selection/   balance selection (uid, status, reason, matched); queries.parquet names the entries
  corpus/              training shards' corpus manifests and index.json (wit shards write)
  _wit/revocations/    the revocation ledger (wit revoke; and the ledgers above root): the samples it took out of
                       the corpus are the funnel's last stage, and a section shows its requests, the shards it
                       rewrote and the checkpoints of train/checkpoints that read a revoked sample
  embeddings/          `wit embed`'s output: the CLIP-score distribution (shards/score_audit.py)
The funnel walks the stages in that order; each stage removes rows with a reason, and rows in = dropped + kept.
Every folder is a DuckDB view over its parquet files and every figure an aggregate query, so the report of a
billion-row pool needs a memory limit, not a machine that holds it; the gallery (shards/gallery.py) shows up to
--gallery samples of each drop reason.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass

import numpy as np

from wit.shards import gallery, revocation_audit, revocations
from wit.shards.layout import Layout
from wit.shards.options import opt
from wit.shards.schema import REVOKED
from wit.shards.score_audit import clip_score_report, plot_clip_scores
from wit.shards.sql import SQLOptions, ident, register_filesystem, run_sql
from wit.shards.storage import (
    WitError, absolute, entries, exists, fs_and_path, join, read_json, write_atomic, write_json_atomic,
)
from wit.shards.tables import parquet_files, read_schema


@dataclass(frozen=True, kw_only=True)
class AuditConfig(SQLOptions):
    root: str = opt(help="pipeline folder (holds raw/, corpus/, and the filter/curation outputs)", positional=True)
    out: str | None = opt(None, "report folder (default: <root>/audit)")
    top: int = opt(20, "rows in each top-N table (domains, entries)", minimum=1)
    gallery: int = opt(6, "thumbnails of each drop reason in the report (read from the crawl's tars); 0: none",
                       minimum=0)


# The pipeline's order of verdict stages; a stage's rows carry the earlier stages' drops, so it counts only its own.
STAGE_ORDER = ("text", "images", "dedup", "clip_score", "semantic")


def _folders(url: str) -> list[str]:
    fs, path = fs_and_path(url)
    names = [n for n in entries(url) if fs.isdir(f"{path.rstrip('/')}/{n}")]
    return sorted(names, key=lambda n: (STAGE_ORDER.index(n) if n in STAGE_ORDER else len(STAGE_ORDER), n))


def _sql(con, sql: str, params=None):
    return run_sql(con, sql, params, what="wit audit")


def _one(con, sql: str, params=None) -> tuple:
    """The one row of an aggregate (fetched to the end: DuckDB refuses new work while a result is open)."""
    rows = _sql(con, sql, params).fetchall()
    return rows[0] if rows else None


def view(con, name: str, folder: str, required: tuple[str, ...]) -> None:
    """A view `name` over a folder's parquet files (paths go to DuckDB as values, never into SQL text); a file
    that lacks a required column is a one-line error naming it."""
    files = parquet_files(folder)
    if not files:
        raise WitError(f"{folder}: holds no parquet files")
    register_filesystem(con, files[0])
    for column in required:
        lacking = _one(con, "SELECT file_name FROM parquet_schema(?) GROUP BY 1 HAVING NOT bool_or(name = ?) "
                            "ORDER BY 1 LIMIT 1", [files, column])
        if lacking:
            names = read_schema(lacking[0]).names
            raise WitError(f"{lacking[0]}: no column {column!r} (columns: {', '.join(names)})")
    con.read_parquet(files, union_by_name=True, filename=True).create_view(name)


def funnel(con, stages: list[tuple[str, str]], samples: int = 0) -> list[dict]:
    """Walk the stages over the live rows; each entry: rows in, dropped per reason, kept (and with `samples`, up to
    that many sample rows per reason, for the gallery)."""
    pick = f", min_by({{'uid': uid, 'reason': reason}}, hash(uid), {int(samples)})" if samples else ""
    n_in = _one(con, "SELECT count(*) FROM raw WHERE status <> 'superseded'")[0]
    step = _dropped(con, f"""SELECT coalesce(reason, 'unknown') AS kind, count(*){pick} FROM raw
                             WHERE status NOT IN ('ok', 'superseded') GROUP BY 1 ORDER BY 2 DESC, 1""")
    # the rows with an ok crawl (a retried pair's superseded first attempt does not take its ok retry with it)
    _sql(con, "CREATE OR REPLACE TEMP TABLE live AS SELECT uid FROM raw WHERE status = 'ok'")
    steps = [{"stage": "download", "rows_in": n_in, **step, "kept": n_in - sum(step["dropped"].values())}]
    for name, table in stages:
        n_in = steps[-1]["kept"]
        # reasons grouped by kind: `dup_of:<uid>` and `eval_leak:<image>` name one pair each
        step = _dropped(con, f"""
            SELECT coalesce(split_part(t.reason, ':', 1), 'no verdict') AS kind, count(*){pick}
            FROM live LEFT JOIN {table} t USING (uid) WHERE NOT coalesce(t.keep, false) GROUP BY 1 ORDER BY 2 DESC, 1""")
        _sql(con, f"CREATE OR REPLACE TEMP TABLE live AS SELECT uid FROM live SEMI JOIN "
                  f"(SELECT uid FROM {table} WHERE keep) USING (uid)")
        steps.append({"stage": name, "rows_in": n_in, **step, "kept": n_in - sum(step["dropped"].values())})
    return steps


def _dropped(con, sql: str) -> dict:
    rows = _sql(con, sql).fetchall()
    out = {"dropped": {r[0]: r[1] for r in rows}}
    if rows and len(rows[0]) > 2:
        out["samples"] = {r[0]: r[2] for r in rows}
    return out


def audit(cfg: AuditConfig) -> str:
    root = absolute(cfg.root)
    lay = Layout(root)
    out = absolute(cfg.out) if cfg.out else lay.audit
    if not exists(lay.raw):
        raise WitError(f"{root}: no raw/ folder (the crawl's output) to audit")
    con = cfg.connect(output=out)
    view(con, "raw", lay.raw, required=("uid", "status", "reason"))
    stages = []
    for stage in _folders(lay.all_verdicts):
        view(con, f"v_{stage}", lay.verdicts(stage), required=("uid", "keep"))
        stages.append((stage, ident(f"v_{stage}")))
    has_selection = exists(lay.selection)
    if has_selection:
        view(con, "sel_raw", lay.selection, required=("uid", "status"))
        con.execute("CREATE VIEW sel AS SELECT uid, status IN ('selected', 'eligible') AS keep, reason, matched "
                    "FROM sel_raw")  # eligible: an online selection's pairs, each epoch keeps some
        stages.append(("balance", "sel"))
    ledger = revocations.load(root)
    if ledger.removed.num_rows:  # the samples `wit revoke` took out of the corpus: the funnel's last stage
        con.register("revoked_uids", ledger.removed.select(["uid"]))
        con.execute("CREATE VIEW rev AS SELECT r.uid, g.uid IS NULL AS keep, CASE WHEN g.uid IS NOT NULL THEN "
                    f"'{REVOKED}' END AS reason FROM (SELECT DISTINCT uid FROM raw WHERE status = 'ok') r "
                    "LEFT JOIN (SELECT DISTINCT uid FROM revoked_uids) g USING (uid)")
        stages.append((REVOKED, "rev"))
    steps = funnel(con, stages, cfg.gallery)
    for step in steps:
        if step["stage"] == REVOKED:
            step.pop("samples", None)  # the gallery never shows a sample that was taken back
    report: dict = {"root": root, "funnel": [{k: v for k, v in s.items() if k != "samples"} for s in steps]}
    if ledger:
        report["revocations"] = revocation_audit.section(ledger, root)
    has_corpus = exists(join(lay.corpus, "index.json"))
    final = report["funnel"][-1]["kept"]
    if has_corpus:
        view(con, "corpus", lay.corpus, required=("uid",))
        n_corpus = _one(con, "SELECT count(*) FROM corpus")[0]
        report["corpus"] = {"samples": n_corpus, "matches_funnel": n_corpus == final}
    images, where = ("corpus", "") if has_corpus else ("raw", "WHERE status = 'ok'")
    # image sizes as (short side, images): a few thousand distinct sizes, whatever the number of images
    sizes = _sql(con, f"""SELECT s, count(*) FROM (SELECT least(original_width, original_height) AS s FROM {images}
                          {where}) WHERE s IS NOT NULL GROUP BY 1 ORDER BY 1""").fetchnumpy()
    report["image_short_side"] = (sizes["s"].astype(np.int64), sizes["count_star()"].astype(np.int64))
    report["top_domains"] = _sql(con, f"""
        SELECT split_part(url, '/', 3) AS domain, count(*) n FROM {images} {where} GROUP BY 1 ORDER BY 2 DESC, 1
        LIMIT {int(cfg.top)}""").fetchall()
    reasons = Counter()
    for step in report["funnel"]:
        reasons.update(step["dropped"])
    report["duplicates_removed"] = sum(n for r, n in reasons.items() if "dup" in r)
    report["leakage_removed"] = sum(n for r, n in reasons.items() if r.startswith("eval_leak"))
    if has_selection:
        report["queries"] = query_report(con, root, has_corpus, cfg.top)
    if cfg.gallery:
        report["gallery"] = gallery.build(con, steps, _eval_sets(root))
    embeddings = lay.embeddings
    if exists(embeddings) and parquet_files(embeddings):
        report["clip_scores"] = clip_score_report(embeddings, con)
    con.close()
    return write_report(out, report)


def run_audit(cfg: AuditConfig) -> dict:
    """`wit audit`: the report, and the two ends of its funnel (what the pipeline's line shows)."""
    report = audit(cfg)
    steps = read_json(join(report.rsplit("/", 1)[0], "report.json"))["funnel"]
    return {"report": report, "rows": steps[0]["rows_in"], "kept": steps[-1]["kept"]}


def _eval_sets(root: str) -> list[str]:
    """The evaluation sets the image stage hashed (its summary records them), to show a leak's eval image."""
    summary = Layout(root).images_summary
    if not exists(summary):
        return []
    try:
        return [absolute(s) for s in (read_json(summary).get("config") or {}).get("eval_sets") or []]
    except (OSError, ValueError):
        return []


def query_report(con, root: str, has_corpus: bool, top: int) -> dict:
    """Pairs per entry before (the selection's pool) and after (the corpus), as aggregates: at most one row per
    entry of the query list in DuckDB, a few hundred numbers in Python."""
    src = "corpus" if has_corpus else "sel WHERE keep"
    _sql(con, "CREATE OR REPLACE TEMP TABLE qb AS SELECT e, count(*) AS n FROM (SELECT unnest(matched) e FROM sel) "
              "GROUP BY 1")
    _sql(con, f"""CREATE OR REPLACE TEMP TABLE qa AS
                  SELECT e, count(*) AS n, row_number() OVER (ORDER BY count(*) DESC, e) AS rank
                  FROM (SELECT unnest(matched) e FROM {src}) GROUP BY 1""")
    card = Layout(root).datacard
    card = read_json(card) if exists(card) else {}
    t = card.get("t")
    n_before, max_before = _one(con, "SELECT count(*), coalesce(max(n), 0) FROM qb")
    n_after, max_after, total = _one(con, "SELECT count(*), coalesce(max(n), 0), coalesce(sum(n), 0) FROM qa")
    total = total or 1
    head = _one(con, "SELECT coalesce(sum(n), 0) FROM qa WHERE rank <= ?", [max(1, n_after // 10)])[0]
    ranked = _sql(con, """SELECT qa.e, qa.n, coalesce(qb.n, 0) FROM qa LEFT JOIN qb USING (e)
                          WHERE qa.rank <= ? OR qa.rank > ? ORDER BY qa.rank""", [top, n_after - top]).fetchall()
    names = _entry_names(con, root, [e for e, _, _ in ranked])
    label = lambda e: names.get(e, str(e))  # noqa: E731
    rows = [(label(e), n, b) for e, n, b in ranked]
    report = {
        "t": t,
        "entries_matched_before": n_before, "entries_in_corpus": n_after,
        "entries_reaching_t": None, "tail_share": None,
        "max_per_entry_before": max_before, "max_per_entry_after": max_after,
        "head_share": head / total,
        "top": rows[:top], "bottom": rows[-top:],
        "count_curves": {"before": _log_ranks(con, "qb", n_before), "after": _log_ranks(con, "qa", n_after)},
        "languages": card.get("languages"),  # worldwide curation: the data card's per-language table
    }
    if t:
        # entries the cap t bit (pool count >= t), and the corpus share of the tail entries kept whole
        report["entries_reaching_t"] = _one(con, "SELECT count(*) FROM qb WHERE n >= ?", [t])[0]
        report["tail_share"] = _one(con, "SELECT coalesce(sum(qa.n), 0) FROM qa LEFT JOIN qb USING (e) "
                                         "WHERE coalesce(qb.n, 0) < ?", [t])[0] / total
    return report


def _entry_names(con, root: str, ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    lay = Layout(root)
    for candidate in (lay.queries, join(lay.balance, "queries.parquet")):
        if exists(candidate):
            register_filesystem(con, candidate)
            return dict(_sql(con, "SELECT id, entry FROM read_parquet(?) WHERE list_contains(?, id)",
                             [candidate, ids]).fetchall())
    return {}


def _log_ranks(con, table: str, n: int, points: int = 200) -> list[tuple[int, int]]:
    """(rank, count) at about `points` log-spaced ranks (1-based) of the table's counts, in descending order."""
    if not n:
        return []
    ranks = np.unique(np.geomspace(1, n, num=min(points, n)).round().astype(int)).tolist()
    found = _sql(con, f"""SELECT r, n FROM (SELECT n, row_number() OVER (ORDER BY n DESC) AS r FROM {table})
                          WHERE list_contains(?, r) ORDER BY r""", [ranks]).fetchall()
    return [(int(r), int(c)) for r, c in found]


def _png(out: str, name: str, draw) -> str:
    # matplotlib's object API, imported here: no pyplot state or GUI backend, and `wit shards` / `wit audit`
    # start without the second or so that importing pyplot costs
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    draw(fig.subplots())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(join(out, name), buf.getvalue())
    return name


def write_report(out: str, report: dict) -> str:
    plots = []
    steps = report["funnel"]
    labels = ["input"] + [s["stage"] for s in steps]
    values = [steps[0]["rows_in"]] + [s["kept"] for s in steps]
    plots.append(_png(out, "funnel.png", lambda ax: (
        ax.barh(labels[::-1], values[::-1], color="#3b7dd8"), ax.set_xlabel("pairs left after each stage"))))
    sides, images = report["image_short_side"]
    if len(sides):
        plots.append(_png(out, "image_sizes.png", lambda ax: (
            ax.hist(sides, bins=40, weights=images, color="#5a9"), ax.set_xlabel("original short side (px)"),
            ax.set_ylabel("images"))))
    q = report.get("queries")
    if q and q["count_curves"]["before"]:
        plots.append(_png(out, "query_counts.png", lambda ax: (
            ax.loglog(*zip(*q["count_curves"]["before"]), label="matched pool"),
            ax.loglog(*zip(*(q["count_curves"]["after"] or [(1, 0)])), label="corpus"),
            ax.set_xlabel("entry rank"), ax.set_ylabel("pairs per entry"), ax.legend())))
    if report.get("clip_scores"):
        plots.append(_png(out, "clip_scores.png", lambda ax: plot_clip_scores(ax, report["clip_scores"])))
    # the JSON holds what each plot shows: the funnel above, the size histogram, count curves at log-spaced ranks
    slim = {k: v for k, v in report.items() if k not in ("image_short_side", "gallery")}
    if len(sides):
        counts, edges = np.histogram(sides, bins=40, weights=images)  # the histogram of every image, by size
        slim["image_short_side_histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
    if "gallery" in report:  # which samples the gallery shows (the pictures are in the HTML)
        slim["gallery"] = [{**sec, "samples": [_without_pictures(s) for s in sec["samples"]]}
                           for sec in report["gallery"]]
    write_json_atomic(join(out, "report.json"), slim)
    write_atomic(join(out, "report.html"), render_html(slim, plots, gallery.render(report.get("gallery", []))).encode())
    return join(out, "report.html")


def _without_pictures(sample: dict) -> dict:
    out = {k: v for k, v in sample.items() if k not in ("thumb", "partner")}
    out["image"] = sample.get("thumb") is not None
    if "partner" in sample:
        out["partner"] = _without_pictures(sample["partner"])
    return out


def render_html(report: dict, plots: list[str], gallery_html: str = "") -> str:
    e = html.escape
    rows = []
    for s in report["funnel"]:
        drops = ", ".join(f"{e(str(r))}: {n:,}" for r, n in s["dropped"].items()) or "none"
        rows.append(f"<tr><td>{e(s['stage'])}</td><td>{s['rows_in']:,}</td><td>{drops}</td><td>{s['kept']:,}</td></tr>")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>wit audit</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}" + gallery.CSS + "</style></head><body>",
        f"<h1>wit audit</h1><p>{e(report['root'])}</p>",
        "<h2>Funnel</h2><table><tr><th>stage</th><th>rows in</th><th>dropped (reason: rows)</th><th>kept</th></tr>",
        *rows, "</table>",
    ]
    if "corpus" in report:
        c = report["corpus"]
        parts.append(f"<p>corpus: {c['samples']:,} samples ({'matches' if c['matches_funnel'] else 'DOES NOT match'} the funnel)</p>")
    parts.append(f"<p>duplicates removed: {report['duplicates_removed']:,}; evaluation-set leakage removed: "
                 f"{report['leakage_removed']:,}</p>")
    if "queries" in report:
        q = report["queries"]
        parts.append(f"<h2>Queries</h2><p>{q['entries_in_corpus']:,} entries in the corpus of {q['entries_matched_before']:,} "
                     f"matched; most pairs per entry {q['max_per_entry_before']:,} before, {q['max_per_entry_after']:,} "
                     f"after; top 10% of entries hold {100 * q['head_share']:.1f}% of matches.</p>")
        if q.get("t"):
            parts.append(f"<p>t = {q['t']:,}: {q['entries_reaching_t']:,} entries reached it in the pool and were "
                         f"sampled down; the tail entries, kept whole, hold {100 * q['tail_share']:.1f}% of the "
                         "corpus's matches.</p>")
        if q.get("languages"):
            cols = ("pool", "matched_pairs", "entries", "entries_matched", "t", "kept_pairs")
            parts.append("<table><tr><th>language</th>" + "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols)
                         + "</tr>" + "".join(f"<tr><td>{e(lang)}</td>" + "".join(f"<td>{row[c]:,}</td>" for c in cols)
                                             + "</tr>" for lang, row in q["languages"].items()) + "</table>")
        for which in ("top", "bottom"):
            parts.append(f"<table><tr><th>{which} entry</th><th>corpus</th><th>pool</th></tr>" + "".join(
                f"<tr><td>{e(str(n))}</td><td>{a:,}</td><td>{b:,}</td></tr>" for n, a, b in q[which]) + "</table>")
    if "clip_scores" in report:
        c = report["clip_scores"]
        quantiles = ", ".join(f"{100 * float(q):g}%: {v:.3f}" for q, v in c["quantiles"].items() if v is not None)
        mean = f"mean {c['mean']:.3f}; " if c["mean"] is not None else ""
        parts.append(f"<h2>CLIP scores</h2><p>{c['scored']:,} pairs scored, {c['unscored']:,} without a score; "
                     f"{mean}quantiles {e(quantiles) or 'none'}</p>")
    if "revocations" in report:
        parts.append(revocation_audit.render(report["revocations"]))
    parts.append("<h2>Top domains</h2><table><tr><th>domain</th><th>pairs</th></tr>" + "".join(
        f"<tr><td>{e(str(d))}</td><td>{n:,}</td></tr>" for d, n in report["top_domains"]) + "</table>")
    parts.append("<h2>Plots</h2>" + "".join(f"<p><img src='{e(p)}' alt='{e(p)}'></p>" for p in plots))
    parts.append(gallery_html)
    parts.append("</body></html>")
    return "\n".join(parts)
