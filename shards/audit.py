"""`wit audit <root>`: what happened to every input row, from the manifests alone, as HTML + PNG + JSON.

The pipeline folder is read by convention (each part optional except raw/):
  raw/                 crawl manifests (wit download)
  verdicts/<stage>/    filter verdicts, one folder per stage (uid, keep, reason)
  balance/selection/   balance selection (uid, status, reason, matched); queries.parquet names the entries
  corpus/              training shards' corpus manifests and index.json (wit shards write)
  embeddings/          `wit embed`'s output: the CLIP-score distribution (shards/score_audit.py)
The funnel walks the stages in that order; each stage removes rows with a reason, and rows in = dropped + kept.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass

import duckdb
import numpy as np
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wit.shards.options import opt  # noqa: E402
from wit.shards.schema import OK  # noqa: E402
from wit.shards.score_audit import clip_score_report, plot_clip_scores  # noqa: E402
from wit.shards.storage import (  # noqa: E402
    WitError, absolute, exists, fs_and_path, join, read_json, write_atomic, write_json_atomic,
)
from wit.shards.tables import parquet_files, read_folder, read_parquet  # noqa: E402


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    root: str = opt(help="pipeline folder (holds raw/, corpus/, and the filter/curation outputs)", positional=True)
    out: str | None = opt(None, "report folder (default: <root>/audit)")
    top: int = opt(20, "rows in each top-N table (domains, entries)", minimum=1)


# The pipeline's order of verdict stages; a stage's rows carry the earlier stages' drops, so it counts only its own.
STAGE_ORDER = ("text", "images", "dedup", "clip_score", "semantic")


def _folders(url: str) -> list[str]:
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        return []
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p)]
    return sorted(names, key=lambda n: (STAGE_ORDER.index(n) if n in STAGE_ORDER else len(STAGE_ORDER), n))


def funnel(con, stages: list[tuple[str, str]]) -> list[dict]:
    """Walk the stages over the live rows; each entry: rows in, dropped per reason, kept."""
    con.execute("CREATE TEMP TABLE live AS SELECT uid FROM raw WHERE status <> 'superseded'")
    steps = []
    n_in = con.execute("SELECT count(*) FROM live").fetchone()[0]
    dropped = dict(con.execute(
        "SELECT coalesce(reason, 'unknown'), count(*) FROM raw WHERE status NOT IN ('ok', 'superseded') "
        "GROUP BY 1 ORDER BY 2 DESC").fetchall())
    con.execute(f"DELETE FROM live WHERE uid IN (SELECT uid FROM raw WHERE status <> '{OK}')")
    steps.append({"stage": "download", "rows_in": n_in, "dropped": dropped, "kept": n_in - sum(dropped.values())})
    for name, table in stages:
        n_in = steps[-1]["kept"]
        dropped = dict(con.execute(
            # reasons grouped by kind: `dup_of:<uid>` and `eval_leak:<image>` name one pair each
            f"SELECT coalesce(split_part(t.reason, ':', 1), 'no verdict'), count(*) FROM live LEFT JOIN {table} t "
            "USING (uid) "
            "WHERE NOT coalesce(t.keep, false) GROUP BY 1 ORDER BY 2 DESC").fetchall())
        con.execute(f"DELETE FROM live WHERE uid NOT IN (SELECT uid FROM {table} WHERE keep)")
        steps.append({"stage": name, "rows_in": n_in, "dropped": dropped, "kept": n_in - sum(dropped.values())})
    return steps


def audit(cfg: AuditConfig) -> str:
    root = absolute(cfg.root)
    out = absolute(cfg.out) if cfg.out else join(root, "audit")
    if not exists(join(root, "raw")):
        raise WitError(f"{root}: no raw/ folder (the crawl's output) to audit")
    con = duckdb.connect()
    con.register("raw", read_folder(join(root, "raw"), required=("uid", "status", "reason")))
    stages = []
    for stage in _folders(join(root, "verdicts")):
        con.register(f"v_{stage}", read_folder(join(root, "verdicts", stage), required=("uid", "keep")))
        stages.append((stage, f"v_{stage}"))
    has_selection = exists(join(root, "balance", "selection"))
    if has_selection:
        sel = read_folder(join(root, "balance", "selection"), required=("uid", "status"))
        con.register("sel_raw", sel)
        con.execute("CREATE VIEW sel AS SELECT uid, status = 'selected' AS keep, reason, matched FROM sel_raw")
        stages.append(("balance", "sel"))
    report: dict = {"root": root, "funnel": funnel(con, stages)}
    has_corpus = exists(join(root, "corpus", "index.json"))
    final = report["funnel"][-1]["kept"]
    if has_corpus:
        con.register("corpus", read_folder(join(root, "corpus"), required=("uid",)))
        n_corpus = con.execute("SELECT count(*) FROM corpus").fetchone()[0]
        report["corpus"] = {"samples": n_corpus, "matches_funnel": n_corpus == final}
    images = "corpus" if has_corpus else "raw"
    where = "" if has_corpus else f"WHERE status = '{OK}'"
    report["image_short_side"] = [r[0] for r in con.execute(
        f"SELECT least(original_width, original_height) FROM {images} {where}").fetchall() if r[0] is not None]
    report["top_domains"] = con.execute(
        f"SELECT split_part(url, '/', 3) AS domain, count(*) n FROM {images} {where} GROUP BY 1 ORDER BY 2 DESC, 1 "
        f"LIMIT {cfg.top}").fetchall()
    reasons = Counter()
    for step in report["funnel"]:
        reasons.update(step["dropped"])
    report["duplicates_removed"] = sum(n for r, n in reasons.items() if "dup" in r)
    report["leakage_removed"] = sum(n for r, n in reasons.items() if r.startswith("eval_leak"))
    if has_selection:
        report["queries"] = query_report(con, root, has_corpus, cfg.top)
    embeddings = join(root, "embeddings")
    if exists(embeddings) and parquet_files(embeddings):
        report["clip_scores"] = clip_score_report(embeddings)
    return write_report(out, report)


def query_report(con, root: str, has_corpus: bool, top: int) -> dict:
    src = "corpus" if has_corpus else "sel WHERE keep"
    before = dict(con.execute("SELECT e, count(*) FROM (SELECT unnest(matched) e FROM sel) GROUP BY 1").fetchall())
    after = dict(con.execute(f"SELECT e, count(*) FROM (SELECT unnest(matched) e FROM {src}) GROUP BY 1").fetchall())
    names = {}
    for candidate in (join(root, "queries.parquet"), join(root, "balance", "queries.parquet")):
        if exists(candidate):
            q = read_parquet(candidate, ["id", "entry"])
            names = dict(zip(q["id"].to_pylist(), q["entry"].to_pylist()))
            break
    card = join(root, "balance", "datacard.json")
    t = read_json(card).get("t") if exists(card) else None
    ranked = sorted(after.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(after.values()) or 1
    head = sum(n for _, n in ranked[:max(1, len(ranked) // 10)])
    label = lambda e: names.get(e, str(e))  # noqa: E731
    return {
        "t": t,
        "entries_matched_before": len(before), "entries_in_corpus": len(after),
        # entries the cap t bit (pool count >= t), and the corpus share of the tail entries kept whole
        "entries_reaching_t": sum(n >= t for n in before.values()) if t else None,
        "tail_share": sum(n for e, n in after.items() if before.get(e, 0) < t) / total if t else None,
        "max_per_entry_before": max(before.values(), default=0), "max_per_entry_after": max(after.values(), default=0),
        "head_share": head / total,
        "top": [(label(e), n, before.get(e, 0)) for e, n in ranked[:top]],
        "bottom": [(label(e), n, before.get(e, 0)) for e, n in ranked[-top:]],
        "counts_before": sorted(before.values(), reverse=True), "counts_after": [n for _, n in ranked],
    }


def _png(out: str, name: str, draw) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    draw(ax)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(join(out, name), buf.getvalue())
    return name


def write_report(out: str, report: dict) -> str:
    plots = []
    steps = report["funnel"]
    labels = ["input"] + [s["stage"] for s in steps]
    values = [steps[0]["rows_in"]] + [s["kept"] for s in steps]
    plots.append(_png(out, "funnel.png", lambda ax: (
        ax.barh(labels[::-1], values[::-1], color="#3b7dd8"), ax.set_xlabel("pairs left after each stage"))))
    sizes = report["image_short_side"]
    if sizes:
        plots.append(_png(out, "image_sizes.png", lambda ax: (
            ax.hist(sizes, bins=40, color="#5a9"), ax.set_xlabel("original short side (px)"), ax.set_ylabel("images"))))
    q = report.get("queries")
    if q and q["counts_before"]:
        plots.append(_png(out, "query_counts.png", lambda ax: (
            ax.loglog(range(1, len(q["counts_before"]) + 1), q["counts_before"], label="matched pool"),
            ax.loglog(range(1, len(q["counts_after"]) + 1), q["counts_after"], label="corpus"),
            ax.set_xlabel("entry rank"), ax.set_ylabel("pairs per entry"), ax.legend())))
    if report.get("clip_scores"):
        plots.append(_png(out, "clip_scores.png", lambda ax: plot_clip_scores(ax, report["clip_scores"])))
    # the JSON holds what each plot shows: the funnel above, the size histogram, count curves at log-spaced ranks
    slim = {k: v for k, v in report.items() if k != "image_short_side"}
    if sizes:
        counts, edges = np.histogram(sizes, bins=40)
        slim["image_short_side_histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
    if q:
        slim["queries"] = {k: v for k, v in q.items() if not k.startswith("counts_")}
        slim["queries"]["count_curves"] = {k.removeprefix("counts_"): _log_ranks(q[k]) for k in ("counts_before",
                                                                                           "counts_after")}
    write_json_atomic(join(out, "report.json"), slim)
    write_atomic(join(out, "report.html"), render_html(slim, plots).encode())
    return join(out, "report.html")


def _log_ranks(counts: list[int], points: int = 200) -> list[tuple[int, int]]:
    """(rank, count) at about `points` log-spaced ranks (1-based) of a descending count list."""
    if not counts:
        return []
    ranks = np.unique(np.geomspace(1, len(counts), num=min(points, len(counts))).round().astype(int))
    return [(int(r), int(counts[r - 1])) for r in ranks]


def render_html(report: dict, plots: list[str]) -> str:
    e = html.escape
    rows = []
    for s in report["funnel"]:
        drops = ", ".join(f"{e(str(r))}: {n:,}" for r, n in s["dropped"].items()) or "none"
        rows.append(f"<tr><td>{e(s['stage'])}</td><td>{s['rows_in']:,}</td><td>{drops}</td><td>{s['kept']:,}</td></tr>")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>wit audit</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>",
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
        for which in ("top", "bottom"):
            parts.append(f"<table><tr><th>{which} entry</th><th>corpus</th><th>pool</th></tr>" + "".join(
                f"<tr><td>{e(str(n))}</td><td>{a:,}</td><td>{b:,}</td></tr>" for n, a, b in q[which]) + "</table>")
    if "clip_scores" in report:
        c = report["clip_scores"]
        quantiles = ", ".join(f"{100 * float(q):g}%: {v:.3f}" for q, v in c["quantiles"].items() if v is not None)
        mean = f"mean {c['mean']:.3f}; " if c["mean"] is not None else ""
        parts.append(f"<h2>CLIP scores</h2><p>{c['scored']:,} pairs scored, {c['unscored']:,} without a score; "
                     f"{mean}quantiles {e(quantiles) or 'none'}</p>")
    parts.append("<h2>Top domains</h2><table><tr><th>domain</th><th>pairs</th></tr>" + "".join(
        f"<tr><td>{e(str(d))}</td><td>{n:,}</td></tr>" for d, n in report["top_domains"]) + "</table>")
    parts.append("<h2>Plots</h2>" + "".join(f"<p><img src='{e(p)}' alt='{e(p)}'></p>" for p in plots))
    parts.append("</body></html>")
    return "\n".join(parts)
