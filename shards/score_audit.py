"""The CLIP-score section of the audit: the distribution of `wit embed`'s scores, out of core (DuckDB).

`clip_score_report(folder, con)` returns a small dict (rows scored and not, mean, quantiles, a 40-bin histogram) for
the JSON report, and `plot_clip_scores(ax, section)` draws it. `wit audit` finds the embeddings at `<root>/embeddings/`
(`wit embed ... --out <root>/embeddings`); `wit filter clip-score` puts the same dict in its summary.
"""
from __future__ import annotations

from wit.shards.sql import connect, literal, register_filesystem
from wit.shards.tables import parquet_files

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
HISTOGRAM_BINS = 40


def clip_score_report(folder: str, con=None) -> dict:
    """Scores of every embedding file in `folder`: counts, mean, approximate quantiles (t-digest: bounded memory)
    and a histogram between the lowest and highest score."""
    con = con or connect(output=None)
    files = parquet_files(folder)
    if files:
        register_filesystem(con, files[0])
    src = f"read_parquet([{', '.join(literal(f) for f in files)}])"
    qs = ", ".join(f"approx_quantile(clip_score, {q})" for q in QUANTILES)
    row = con.execute(f"SELECT count(clip_score), count(*) - count(clip_score), avg(clip_score), min(clip_score), "
                      f"max(clip_score), {qs} FROM {src}").fetchone()
    scored, unscored, mean, low, high = row[:5]
    section = {"scored": scored, "unscored": unscored, "mean": mean, "min": low, "max": high,
               "quantiles": {str(q): v for q, v in zip(QUANTILES, row[5:])}, "histogram": None}
    if scored:
        width = max((high - low) / HISTOGRAM_BINS, 1e-9)
        counts = dict(con.execute(
            f"SELECT least(floor((clip_score - {low}) / {width})::INT, {HISTOGRAM_BINS - 1}), count(*) FROM {src} "
            "WHERE clip_score IS NOT NULL GROUP BY 1").fetchall())
        section["histogram"] = {"edges": [low + i * width for i in range(HISTOGRAM_BINS + 1)],
                                "counts": [counts.get(i, 0) for i in range(HISTOGRAM_BINS)]}
    return section


def plot_clip_scores(ax, section: dict) -> None:
    """A histogram of the scores on a matplotlib axis, with the median marked."""
    hist = section.get("histogram")
    if not hist:
        ax.text(0.5, 0.5, "no CLIP scores", ha="center", va="center")
        return
    edges = hist["edges"]
    ax.bar(edges[:-1], hist["counts"], width=edges[1] - edges[0], align="edge")
    ax.axvline(section["quantiles"]["0.5"], color="k", linestyle="--", label="median")
    ax.set_xlabel("CLIP score (cosine of image and text embedding)")
    ax.set_ylabel("pairs")
    ax.legend()
