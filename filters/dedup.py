"""Global image dedup over the image stage's verdict files, in DuckDB (out of core, never all pairs).

1. Exact: group by the 64-bit pHash (MetaCLIP's way; equal bytes give equal hashes, so this covers sha256 too) or
   by sha256 alone; the smallest uid of a group is kept, the rest get `dup_of:<uid>`.
2. Near (Hamming <= k, k > 0): among the exact keepers, the band join of shards/phash.py (k+1 equi-joins on band
   values, verified with `bit_count(xor(a, b)) <= k`; a hot bucket of more than `bucket_cap` rows joined by
   sub-bands, and the summary reports such buckets) finds every pair within k bits. Connected components of the
   verified pairs are clusters, found in DuckDB by min-label propagation with pointer jumping (a few rounds; the
   edges never leave DuckDB); the smallest uid of a cluster is kept, the rest get `near_dup_of:<uid>`.
Candidate volume is about (k+1) * N^2 / 2^(64/(k+1) + 1) for random hashes: practical for k <= 2 at 10M rows.
Rows the image stage dropped keep its reason; every input row gets exactly one output row. Only the rows that
change are written by DuckDB (partitioned by input file); each output file is its input file with them folded in,
written once DuckDB has finished, so a full temp directory leaves no new verdict file behind.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.shards.phash import band_columns, near_pairs
from wit.shards.options import opt
from wit.shards.sql import SQLOptions, literal, register_filesystem, run_sql
from wit.shards.tables import parquet_files, read_parquet, write_parquet
from wit.shards.schema import VERDICT
from wit.shards.storage import WitError, absolute, fs_and_path, join, remove_scratch, write_json_atomic

BUCKET_CAP = 10_000  # rows of one band bucket beyond which it is joined by sub-bands (a 10K bucket: 5e7 pairs)

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
    bucket_cap: int = opt(BUCKET_CAP, "band buckets with more rows than this (hot buckets: blank images, logos) are "
                                      "joined by sub-bands instead of as a whole; same pairs, far fewer candidates",
                          minimum=2)


def dedup_core(con: duckdb.DuckDBPyConnection, near_k: int, exact: str = "phash", bucket_cap: int = BUCKET_CAP) -> dict:
    """Input: table `pool(rid BIGINT, uid, sha256, phash BIGINT)` of candidate rows (rid unique, in input order).
    Output: table `dups(rid, dup_of, dup_kind)` for every row that is not kept. Returns counts and timings."""
    if exact not in ("phash", "sha256"):
        raise WitError(f"--exact must be phash or sha256, not {exact!r}")
    stats: dict = {"rows": _sql(con, "SELECT count(*) FROM pool").fetchone()[0]}
    t0 = time.perf_counter()
    # The same uid twice (the same pair listed twice) keeps its first occurrence. Group-bys with HAVING keep only
    # the few repeated keys, so every join below builds on a small side.
    _sql(con, """
        CREATE OR REPLACE TEMP TABLE dups AS
        WITH rep AS (SELECT uid, min(rid) AS first FROM pool GROUP BY uid HAVING count(*) > 1)
        SELECT p.rid, p.uid AS dup_of, 'uid' AS dup_kind FROM pool p JOIN rep USING (uid) WHERE p.rid <> rep.first""")
    # Exact groups keep their smallest uid; typed keys (the BIGINT hash) keep a 100M-row group-by cheap.
    keys = [("phash", "phash IS NOT NULL"), ("sha256", "phash IS NULL")] if exact == "phash" else [("sha256", "true")]
    for key, where in keys:
        _sql(con, f"""
            INSERT INTO dups
            WITH cand AS NOT MATERIALIZED (SELECT p.rid, p.uid, p.{key} AS k FROM pool p ANTI JOIN dups d USING (rid)
                                           WHERE {where} AND p.{key} IS NOT NULL),  -- read twice, never held
                 g AS (SELECT k, min(uid) AS keeper FROM cand GROUP BY k HAVING count(*) > 1)
            SELECT c.rid, g.keeper, 'exact' FROM cand c JOIN g USING (k) WHERE c.uid <> g.keeper""")
    stats["uid_dups"] = _sql(con, "SELECT count(*) FROM dups WHERE dup_kind = 'uid'").fetchone()[0]
    stats["exact_dups"] = _sql(con, "SELECT count(*) FROM dups WHERE dup_kind = 'exact'").fetchone()[0]
    stats["exact_s"] = round(time.perf_counter() - t0, 3)
    if near_k > 0:
        stats.update(_near(con, near_k, bucket_cap))
    # A repeated uid points at wherever its first occurrence ended up.
    _sql(con, """
        CREATE OR REPLACE TEMP TABLE final_of AS
        SELECT p.uid, d.dup_of FROM dups d JOIN pool p USING (rid) WHERE d.dup_kind <> 'uid'""")
    _sql(con, """
        UPDATE dups SET dup_of = final_of.dup_of FROM final_of
        WHERE dups.dup_kind = 'uid' AND dups.dup_of = final_of.uid""")
    return stats


def _sql(con, sql: str):
    return run_sql(con, sql, what="wit dedup")


def _near(con: duckdb.DuckDBPyConnection, k: int, cap: int) -> dict:
    t0 = time.perf_counter()
    # Exact keepers with a hash, with their k+1 band values; then the band join (shards.phash) fills `edges`.
    _sql(con, f"""
        CREATE OR REPLACE TEMP TABLE reps AS
        SELECT p.rid, p.uid, p.phash, {band_columns(k)} FROM pool p ANTI JOIN dups d USING (rid)
        WHERE p.phash IS NOT NULL""")
    stats = near_pairs(lambda text: _sql(con, text), k, cap, "reps")
    stats["verified_pairs"] = _sql(con, "SELECT count(*) FROM edges").fetchone()[0]
    t_join = time.perf_counter() - t0
    stats["cluster_rounds"] = _components(con)
    # Each cluster keeps its smallest uid.
    _sql(con, """
        CREATE OR REPLACE TEMP TABLE near_map AS
        WITH m AS (SELECT l.label, r.rid, r.uid FROM labels l JOIN reps r ON r.rid = l.node),
             k AS (SELECT label, min(uid) AS keeper FROM m GROUP BY label)
        SELECT m.rid, m.uid, k.keeper FROM m JOIN k USING (label) WHERE m.uid <> k.keeper""")
    # Exact duplicates of a near duplicate point at the cluster's keeper, not at a dropped row.
    _sql(con, "UPDATE dups SET dup_of = m.keeper, dup_kind = 'near' FROM near_map m "
              "WHERE dups.dup_kind = 'exact' AND dups.dup_of = m.uid")
    _sql(con, "INSERT INTO dups SELECT rid, keeper, 'near' FROM near_map")
    stats.update(near_dups=_sql(con, "SELECT count(*) FROM near_map").fetchone()[0], near_join_s=round(t_join, 3),
                 near_s=round(time.perf_counter() - t0, 3))
    return stats


def _components(con: duckdb.DuckDBPyConnection) -> int:
    """Table `labels(node, label)`: every node of `edges(a, b)` with the smallest node of its connected component.

    Min-label propagation with pointer jumping: each round a node takes the smallest label among itself, its
    neighbours and its label's label. A fixpoint gives every component its smallest node, in O(log diameter)
    rounds on chains; every round is two joins over the edges, in DuckDB. Returns the number of rounds."""
    _sql(con, """
        CREATE OR REPLACE TEMP TABLE labels AS
        SELECT node, min(nb) AS label FROM (SELECT a AS node, least(a, b) AS nb FROM edges
                                            UNION ALL SELECT b, least(a, b) FROM edges) GROUP BY node""")
    rounds = 0
    while True:
        rounds += 1
        _sql(con, """
            CREATE OR REPLACE TEMP TABLE next_labels AS
            WITH jumped AS (SELECT n.node, least(n.label, coalesce(p.label, n.label)) AS label
                            FROM labels n LEFT JOIN labels p ON p.node = n.label),
                 offers AS (SELECT node, label FROM jumped
                            UNION ALL SELECT e.a, j.label FROM edges e JOIN jumped j ON j.node = e.b
                            UNION ALL SELECT e.b, j.label FROM edges e JOIN jumped j ON j.node = e.a)
            SELECT node, min(label) AS label FROM offers GROUP BY node""")
        changed = _sql(con, """SELECT count(*) FROM next_labels n JOIN labels l USING (node)
                               WHERE n.label <> l.label""").fetchone()[0]
        _sql(con, "CREATE OR REPLACE TEMP TABLE labels AS SELECT * FROM next_labels")
        if not changed:
            return rounds


def dedup(cfg: DedupConfig) -> dict:
    """Dedup the kept rows of every image verdict file; write one dedup verdict file per input file, and the summary
    it returns to OUT/_wit/dedup_summary.json."""
    cfg = replace(cfg, images=absolute(cfg.images), out=absolute(cfg.out), after=tuple(absolute(a) for a in cfg.after))
    if cfg.images.rstrip("/") == cfg.out.rstrip("/"):
        raise WitError(f"{cfg.out}: would overwrite the image verdicts it reads; choose another --out")
    files = parquet_files(cfg.images)
    if not files:
        raise WitError(f"{cfg.images}: no <shard>.parquet verdict files (run `wit filter images` first)")
    names = [f.rsplit("/", 1)[-1].removesuffix(".parquet") for f in files]
    scratch = join(cfg.out, "_wit", "dedup_changes")
    con = cfg.connect(output=cfg.out)
    for url in (files[0], cfg.out):
        register_filesystem(con, url)
    # rid = (file index, row in file): input order without a window over the pool
    con.register("image_files", pa.table({"filename": files, "f": pa.array(range(len(files)), pa.int32())}))
    con.read_parquet(files, filename=True, file_row_number=True).create_view("image_parts")
    con.execute("""
        CREATE TEMP VIEW verdicts AS
        SELECT (f::BIGINT << 32) | file_row_number AS rid, f, file_row_number AS row, uid, keep, reason, sha256, phash
        FROM image_parts JOIN image_files USING (filename)""")
    # rows an earlier stage dropped must not be chosen to stand for a group, or every copy would be lost
    earlier = []
    for i, folder in enumerate(cfg.after):
        found = parquet_files(folder)
        if not found:
            raise WitError(f"{folder}: no <shard>.parquet verdict files (--after)")
        register_filesystem(con, found[0])
        con.read_parquet(found).create_view(f"earlier_{i}")
        earlier.append(f"SELECT uid, reason FROM earlier_{i} WHERE NOT keep")
    _sql(con, "CREATE TEMP TABLE gone AS SELECT uid, min(reason) AS reason FROM ("
              + " UNION ALL ".join(earlier or ["SELECT NULL::VARCHAR AS uid, NULL::VARCHAR AS reason WHERE false"])
              + ") GROUP BY uid")
    con.execute("""CREATE TEMP VIEW pool AS SELECT rid, uid, sha256, phash FROM verdicts
                   WHERE keep AND uid NOT IN (SELECT uid FROM gone)""")
    stats = dedup_core(con, cfg.near_k, cfg.exact, cfg.bucket_cap)
    # the rows whose verdict changes here, by input file; every other row keeps the image stage's verdict
    remove_scratch(scratch)
    _sql(con, f"""
        COPY (SELECT v.f, v.row,
                     CASE WHEN g.uid IS NOT NULL THEN g.reason
                          WHEN d.dup_kind = 'near' THEN 'near_dup_of:' || d.dup_of
                          ELSE 'dup_of:' || d.dup_of END AS reason, d.dup_of, d.dup_kind
              FROM verdicts v LEFT JOIN dups d USING (rid) LEFT JOIN gone g USING (uid)
              WHERE v.keep AND (d.rid IS NOT NULL OR g.uid IS NOT NULL))
        TO {literal(scratch)} (FORMAT parquet, PARTITION_BY (f), OVERWRITE_OR_IGNORE)""")
    con.close()
    counts: Counter = Counter()
    for i, (src, name) in enumerate(zip(files, names)):
        counts.update(finish_file(src, join(scratch, f"f={i}"), join(cfg.out, f"{name}.parquet")))
    remove_scratch(scratch)
    before = counts.pop(EARLIER, 0)
    stats.update(shards=len(names), kept=counts.pop("kept", 0),
                 dropped=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))), dropped_before=before)
    write_json_atomic(join(cfg.out, "_wit", "dedup_summary.json"), stats)
    return stats


EARLIER = "earlier"  # a row the image stage or an --after stage dropped: its verdict, not this stage's drop


def finish_file(src: str, changes: str, target: str) -> Counter:
    """One shard's dedup verdicts: the image verdicts, with the rows that changed here folded in."""
    v = read_parquet(src, ["uid", "keep", "reason", "sha256", "phash"])
    n = v.num_rows
    keep, reason = v["keep"], v["reason"]
    dup_of = dup_kind = pa.nulls(n, pa.string())
    fs, path = fs_and_path(changes)
    if fs.isdir(path):
        c = pa.concat_tables([read_parquet(f, ["row", "reason", "dup_of", "dup_kind"]) for f in parquet_files(changes)])
        at = np.full(n, -1, np.int64)
        at[c["row"].to_numpy()] = np.arange(c.num_rows)
        take = pa.array(at, mask=at < 0)
        changed = pc.is_valid(take)
        keep = pc.and_(keep, pc.invert(changed))
        reason = pc.if_else(changed, c["reason"].take(take), reason)
        dup_of, dup_kind = c["dup_of"].take(take), c["dup_kind"].take(take)
    table = pa.table({"uid": v["uid"], "keep": keep, "reason": reason, "dup_of": dup_of, "dup_kind": dup_kind,
                      "sha256": v["sha256"], "phash": v["phash"]}).cast(DEDUP_VERDICT)
    write_parquet(target, table)
    kinds = pc.fill_null(pc.list_element(pc.split_pattern(table["reason"], ":", max_splits=1), 0), "kept")
    kinds = pc.if_else(pc.or_(table["keep"], pc.is_valid(table["dup_kind"])), kinds, EARLIER)  # whose drop it is
    return Counter({k.as_py(): m.as_py() for k, m in zip(*pc.value_counts(kinds).flatten())})

