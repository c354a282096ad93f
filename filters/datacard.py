"""The data card of a balancing run: what the pool looked like per entry, and what balancing made of it.

JSON for machines (datacard.json), a per-entry table (entry_counts.parquet) and two PNG plots for people.
"Head" entries are those with c_e > t (balancing samples them down); the rest are the tail (kept whole).
"""
from __future__ import annotations

import io
import posixpath

import numpy as np
import pyarrow as pa

from wit.filters.io import write_json
from wit.shards.storage import WitError, write_atomic
from wit.shards.tables import write_parquet

TOP = 50


def _entries(queries: str, n: int) -> list[str]:
    from wit.filters import queries as querylist

    try:
        entries, _ = querylist.load(queries)
        if len(entries) == n:
            return entries
    except (WitError, OSError, ValueError):  # the query file moved or changed: the card still works, with ids
        pass
    return [f"#{i}" for i in range(n)]


def summarise(counts: np.ndarray, after: np.ndarray, t: int) -> dict:
    head = counts > t
    matches, kept = int(counts.sum()), int(after.sum())
    return {
        "entries": len(counts),
        "entries_matched": int((counts > 0).sum()),
        "entries_reaching_t": int((counts >= t).sum()),
        "entries_over_t": int(head.sum()),
        "matches_before": matches,
        "matches_after": kept,
        "head_share_before": float(counts[head].sum() / matches) if matches else 0.0,
        "head_share_after": float(after[head].sum() / kept) if kept else 0.0,
        "max_after": int(after.max()) if len(after) else 0,
    }


def write(out: str, *, counts: np.ndarray, after: np.ndarray, t: int, seed: int, funnel: dict, queries: str,
          queries_version: str, config: dict) -> dict:
    entries = _entries(queries, len(counts))
    write_parquet(posixpath.join(out, "entry_counts.parquet"), pa.table({
        "id": pa.array(np.arange(len(counts)), pa.int32()),
        "entry": entries,
        "before": counts,
        "after": after,
        "p": np.minimum(1.0, t / np.maximum(counts, 1)),
    }))
    top = np.argsort(-counts, kind="stable")[:TOP]
    card = {
        "t": t,
        "seed": seed,
        "queries": queries,
        "queries_version": queries_version,
        "pairs": funnel,
        "entries": summarise(counts, after, t),
        "top_entries": [
            {"id": int(i), "entry": entries[i], "before": int(counts[i]), "after": int(after[i])}
            for i in top if counts[i] > 0
        ],
        "plots": ["counts.png", "top_entries.png"],
        "config": config,
    }
    write_json(posixpath.join(out, "datacard.json"), card)
    _plots(out, counts, after, t, [entries[i] for i in top[:30]], counts[top[:30]], after[top[:30]])
    return card


def _plots(out: str, counts, after, t, top_names, top_before, top_after) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    order = np.argsort(-counts, kind="stable")
    nz = counts[order] > 0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rank = np.arange(1, int(nz.sum()) + 1)
    ax.loglog(rank, counts[order][nz], label="before (c_e)")
    ax.loglog(rank, np.maximum(after[order][nz], 0.5), label="after balancing", alpha=0.8)
    ax.axhline(t, color="gray", linestyle="--", label=f"t = {t:,}")
    ax.set_xlabel("entry rank (by pool count)")
    ax.set_ylabel("pairs matching the entry")
    ax.set_title("Pairs per query entry")
    ax.legend()
    _save(fig, posixpath.join(out, "counts.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 0.25 * len(top_names) + 1.5))
    y = np.arange(len(top_names))
    ax.barh(y - 0.2, top_before, height=0.4, label="before")
    ax.barh(y + 0.2, top_after, height=0.4, label="after")
    ax.set_yticks(y, labels=top_names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(t, color="gray", linestyle="--")
    ax.set_title("Top entries by pool count")
    ax.legend()
    fig.tight_layout()
    _save(fig, posixpath.join(out, "top_entries.png"))
    plt.close(fig)


def _save(fig, url: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(url, buf.getvalue())
