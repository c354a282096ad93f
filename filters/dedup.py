"""Global image dedup over the image stage's verdict files, in DuckDB (out of core, never all pairs).

1. Exact: group by the 64-bit pHash (MetaCLIP's way; equal bytes give equal hashes, so this covers sha256 too) or
   by sha256 alone; the smallest uid of a group is kept, the rest get `dup_of:<uid>`.
2. Near (Hamming <= k, k > 0): among the exact keepers, split each hash into k+1 bands; a pair within distance k
   shares a band (pigeonhole), so candidates come from k+1 equi-joins on (band value) and are verified with
   `bit_count(xor(a, b)) <= k`. Connected components of the verified pairs (scipy's union-find) are clusters; the
   smallest uid of a cluster is kept, the rest get `near_dup_of:<uid>`.
Candidate volume is about (k+1) * N^2 / 2^(64/(k+1) + 1) for random hashes: practical for k <= 2 at 10M rows.
Rows the image stage dropped keep its reason; every input row gets exactly one output row.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from wit.filters.phash import bands
from wit.shards.options import opt
from wit.shards.sql import SQLOptions
from wit.shards.tables import parquet_files, write_parquet
from wit.shards.schema import VERDICT
from wit.shards.storage import WitError, join

BATCH_ROWS = 1 << 17  # verdict rows streamed at a time when writing the output

DEDUP_VERDICT = pa.schema(
    list(VERDICT)
    + [
        pa.field("dup_kind", pa.string()),  # uid (same pair twice) | exact | near
        pa.field("sha256", pa.string()),
        pa.field("phash", pa.int64()),
    ]
)


@dataclass(frozen=True, kw_only=True)
class DedupConfig(SQLOptions):
    images: str = opt(help="verdict folder of `wit filter images` (local or s3://)", positional=True)
    out: str = opt(help="verdict folder (local or s3://)")
    near_k: int = opt(2, "Hamming threshold for near duplicates; 0 = exact only. Candidate pairs grow as "
                         "N^2/2^(64/(k+1)): k <= 2 stays practical at 10M rows on one machine", minimum=0)
    exact: str = opt("phash", "key of exact dedup: phash (MetaCLIP's way; covers equal bytes) or sha256 (bytes only)",
                     choices=("phash", "sha256"))
    after: tuple[str, ...] = opt((), "verdict folders of earlier stages (e.g. `wit filter text`): rows they dropped "
                                     "keep that reason here and are never the copy that stays, so no group loses "
                                     "every copy", metavar="DIR")


def dedup_core(con: duckdb.DuckDBPyConnection, near_k: int, exact: str = "phash") -> dict:
    """Input: table `pool(rid BIGINT, uid, sha256, phash BIGINT)` of candidate rows (rid unique, in input order).
    Output: table `dups(rid, dup_of, dup_kind)` for every row that is not kept. Returns counts and timings."""
    if exact not in ("phash", "sha256"):
        raise WitError(f"--exact must be phash or sha256, not {exact!r}")
    stats: dict = {"rows": con.execute("SELECT count(*) FROM pool").fetchone()[0]}
    t0 = time.perf_counter()
    # The same uid twice (the same pair listed twice) keeps its first occurrence. Group-bys with HAVING keep only
    # the few repeated keys, so every join below builds on a small side.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE dups AS
        WITH rep AS (SELECT uid, min(rid) AS first FROM pool GROUP BY uid HAVING count(*) > 1)
        SELECT p.rid, p.uid AS dup_of, 'uid' AS dup_kind FROM pool p JOIN rep USING (uid) WHERE p.rid <> rep.first""")
    # Exact groups keep their smallest uid; typed keys (the BIGINT hash) keep a 100M-row group-by cheap.
    keys = [("phash", "phash IS NOT NULL"), ("sha256", "phash IS NULL")] if exact == "phash" else [("sha256", "true")]
    for key, where in keys:
        con.execute(f"""
            INSERT INTO dups
            WITH cand AS (SELECT p.rid, p.uid, p.{key} AS k FROM pool p ANTI JOIN dups d USING (rid)
                          WHERE {where} AND p.{key} IS NOT NULL),
                 g AS (SELECT k, min(uid) AS keeper FROM cand GROUP BY k HAVING count(*) > 1)
            SELECT c.rid, g.keeper, 'exact' FROM cand c JOIN g USING (k) WHERE c.uid <> g.keeper""")
    stats["uid_dups"] = con.execute("SELECT count(*) FROM dups WHERE dup_kind = 'uid'").fetchone()[0]
    stats["exact_dups"] = con.execute("SELECT count(*) FROM dups WHERE dup_kind = 'exact'").fetchone()[0]
    stats["exact_s"] = round(time.perf_counter() - t0, 3)
    if near_k > 0:
        stats.update(_near(con, near_k))
    # A repeated uid points at wherever its first occurrence ended up.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE final_of AS
        SELECT p.uid, d.dup_of FROM dups d JOIN pool p USING (rid) WHERE d.dup_kind <> 'uid'""")
    con.execute("""
        UPDATE dups SET dup_of = final_of.dup_of FROM final_of
        WHERE dups.dup_kind = 'uid' AND dups.dup_of = final_of.uid""")
    return stats


def _near(con: duckdb.DuckDBPyConnection, k: int) -> dict:
    t0 = time.perf_counter()
    # Exact keepers with a hash, with their k+1 band values.
    bexprs = ", ".join(f"(phash >> {s}) & {(1 << w) - 1} AS b{i}" for i, (s, w) in enumerate(bands(k)))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE reps AS
        SELECT p.rid, p.uid, p.phash, {bexprs} FROM pool p ANTI JOIN dups d USING (rid) WHERE p.phash IS NOT NULL""")
    candidates = 0
    for i in range(k + 1):  # pairs sharing band i, counted from bucket sizes (no join needed to count)
        candidates += con.execute(
            f"SELECT coalesce(sum(n * (n - 1) // 2), 0) FROM (SELECT count(*) AS n FROM reps GROUP BY b{i})"
        ).fetchone()[0]
    union = " UNION ".join(
        f"SELECT a.rid AS a, b.rid AS b FROM reps a JOIN reps b ON a.b{i} = b.b{i} AND a.rid < b.rid "
        f"WHERE bit_count(xor(a.phash, b.phash)) <= {k}"
        for i in range(k + 1)
    )  # UNION (not ALL): a pair sharing two bands is one edge
    edges = con.execute(f"SELECT a, b FROM ({union})").fetchnumpy()
    a, b = edges["a"].astype(np.int64), edges["b"].astype(np.int64)
    t_join = time.perf_counter() - t0
    nodes, labels = _clusters(a, b)
    con.register("near_nodes", pa.table({"rid": nodes, "label": labels}))
    # Each cluster keeps its smallest uid.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE near_map AS SELECT * FROM (
            SELECT r.rid, r.uid, min(r.uid) OVER (PARTITION BY n.label) AS keeper
            FROM near_nodes n JOIN reps r USING (rid)) WHERE uid <> keeper""")
    con.unregister("near_nodes")
    # Exact duplicates of a near duplicate point at the cluster's keeper, not at a dropped row.
    con.execute("UPDATE dups SET dup_of = m.keeper, dup_kind = 'near' FROM near_map m "
                "WHERE dups.dup_kind = 'exact' AND dups.dup_of = m.uid")
    con.execute("INSERT INTO dups SELECT rid, keeper, 'near' FROM near_map")
    return {
        "near_k": k,
        "candidate_pairs": int(candidates),
        "verified_pairs": int(len(a)),
        "near_dups": con.execute("SELECT count(*) FROM near_map").fetchone()[0],
        "near_join_s": round(t_join, 3),
        "near_s": round(time.perf_counter() - t0, 3),
    }


def _clusters(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(node, cluster label) for every node of the graph with edges a-b: union-find by scipy's components."""
    if len(a) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a), np.int8), (inv[: len(a)], inv[len(a):])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return nodes, labels.astype(np.int64)


def dedup(cfg: DedupConfig) -> dict:
    """Read every image verdict file, dedup the kept rows, write one dedup verdict file per shard."""
    if cfg.images.rstrip("/") == cfg.out.rstrip("/"):
        raise WitError(f"{cfg.out}: would overwrite the image verdicts it reads; choose another --out")
    files = parquet_files(cfg.images)
    if not files:
        raise WitError(f"{cfg.images}: no <shard>.parquet verdict files (run `wit filter images` first)")
    names = [f.rsplit("/", 1)[-1].removesuffix(".parquet") for f in files]
    con = cfg.connect(output=cfg.out)
    if any("://" in f for f in files):
        from fsspec import filesystem

        con.register_filesystem(filesystem(files[0].split("://", 1)[0]))
    con.execute(f"""
        CREATE TEMP TABLE verdicts AS
        SELECT (row_number() OVER (ORDER BY filename, file_row_number))::BIGINT AS rid, filename, uid, keep,
               reason, sha256, phash
        FROM read_parquet({files!r}, filename = true, file_row_number = true)""")
    # rows an earlier stage dropped must not be chosen to stand for a group, or every copy would be lost
    con.execute("CREATE TEMP TABLE earlier (uid VARCHAR, reason VARCHAR)")
    for folder in cfg.after:
        earlier = parquet_files(folder)
        if not earlier:
            raise WitError(f"{folder}: no <shard>.parquet verdict files (--after)")
        con.execute(f"""INSERT INTO earlier SELECT uid, reason FROM read_parquet({earlier!r}) WHERE NOT keep""")
    con.execute("""CREATE TEMP TABLE gone AS SELECT uid, min(reason) AS reason FROM earlier GROUP BY uid""")
    con.execute("""CREATE TEMP VIEW pool AS SELECT rid, uid, sha256, phash FROM verdicts
                   WHERE keep AND uid NOT IN (SELECT uid FROM gone)""")
    stats = dedup_core(con, cfg.near_k, cfg.exact)
    con.execute("""
        CREATE TEMP VIEW final AS
        SELECT v.rid, v.filename, v.uid,
               v.keep AND d.rid IS NULL AND g.uid IS NULL AS keep,
               CASE WHEN NOT v.keep THEN v.reason
                    WHEN g.uid IS NOT NULL THEN g.reason
                    WHEN d.dup_kind = 'near' THEN 'near_dup_of:' || d.dup_of
                    WHEN d.rid IS NOT NULL THEN 'dup_of:' || d.dup_of END AS reason,
               d.dup_of, d.dup_kind, v.sha256, v.phash
        FROM verdicts v LEFT JOIN dups d USING (rid) LEFT JOIN gone g USING (uid)""")
    reader = con.sql("SELECT * EXCLUDE (rid) FROM final ORDER BY rid").to_arrow_reader(batch_size=BATCH_ROWS)
    _write_per_file(reader, names, files, cfg.out)
    counts = dict(con.execute(
        "SELECT coalesce(split_part(reason, ':', 1), 'kept'), count(*) FROM final GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall())
    stats.update(shards=len(names), kept=counts.pop("kept", 0), dropped=counts)
    return stats


def _write_per_file(reader, names: list[str], files: list[str], out: str) -> None:
    """Stream the verdicts (in input order) and write each input file's rows as soon as they are complete:
    memory holds one shard, not the pool."""
    by_file = dict(zip(files, names))

    def name_of(src: str) -> str:
        return by_file.get(src) or next(n for f, n in by_file.items() if src.endswith(f.split("://")[-1]))

    done: set[str] = set()
    current, parts = None, []

    def flush():
        if current is not None:
            write_parquet(join(out, f"{current}.parquet"), pa.Table.from_batches(parts).cast(DEDUP_VERDICT))
            done.add(current)

    for batch in reader:
        fn = batch.column("filename").dictionary_encode()
        idx = fn.indices.to_numpy(zero_copy_only=False)
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(idx)) + 1, [len(idx)]])
        body = batch.drop_columns(["filename"])
        for s, e in zip(cuts[:-1], cuts[1:]):
            name = name_of(fn.dictionary[int(idx[s])].as_py())
            if name != current:
                flush()
                current, parts = name, []
            parts.append(body.slice(int(s), int(e - s)))
    flush()
    for name in set(names) - done:
        write_parquet(join(out, f"{name}.parquet"), DEDUP_VERDICT.empty_table())  # a shard with no rows
