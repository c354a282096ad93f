"""`wit dedup-semantic`: SemDeDup (Abbas et al. 2023) on `wit embed`'s image embeddings, scaled by clusters.

1. fit   (driver, bounded) spherical k-means (faiss) on a sample of at most --sample embeddings, picked by a hash of
         the uid (the same sample whatever the sharding), read by DuckDB's top-N, not by loading the pool.
2. assign (per shard) each image goes to its nearest centroid; `_wit/semantic/assign/<shard>.parquet` holds
         (uid, shard, cluster, bucket, image) sorted by bucket, one row group per bucket.
3. dedup (per bucket of clusters) the bucket's row groups are read from every assign file (the exchange goes
         through files, never through the driver); within each cluster, pairs with cosine >= --threshold are
         duplicates, each connected group keeps its smallest uid (as `wit dedup` does) and the others get
         `semantic_dup_of:<uid>`; `_wit/semantic/dups/<bucket>.parquet`.
4. verdicts (global, DuckDB) every embedding row joined with the duplicates and the earlier stages' drops, streamed in
         shard order into `<out>/<shard>.parquet` (VERDICT + cluster).
Memory: the fit holds the sample, a dedup task one bucket (about --bucket-rows rows) and one cluster's similarity
block (1,024 rows x the cluster); the rest is DuckDB with its memory limit.
k-means by faiss-cpu rather than scikit-learn's MiniBatchKMeans: on 200,000 x 512 floats, k = 200, 20 iterations,
faiss took 3.1 CPU s and MiniBatchKMeans 39 (bench/README.md), and faiss takes the same code to 100K clusters.
"""
from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wit.filters.embedded import check_embedding_file, embedding_files, vectors
from wit.shards.options import opt
from wit.shards.runner import EngineOptions, run_map
from wit.shards.schema import VERDICT
from wit.shards.sql import SQLOptions, literal, run_sql
from wit.shards.storage import WitError, absolute, exists, fs_and_path, join, write_atomic, write_json_atomic
from wit.shards.tables import open_parquet, parquet_files, read_parquet, write_parquet

SEMANTIC_VERDICT = pa.schema(list(VERDICT) + [pa.field("cluster", pa.int32())])
BLOCK = 1024  # rows of a cluster compared with the whole cluster at a time
BATCH_ROWS = 1 << 17  # verdict rows streamed at a time


@dataclass(frozen=True, kw_only=True)
class SemanticConfig(EngineOptions, SQLOptions):
    embeddings: str = opt(help="folder of `wit embed` (local or s3://)", positional=True)
    out: str = opt(help="verdict folder (local or s3://)")
    threshold: float = opt(0.95, "cosine of two image embeddings at or above which they are duplicates (SemDeDup's "
                                 "1 - eps); it depends on the model: check a few pairs first")
    clusters: int | None = opt(None, "k-means clusters (default: one per --cluster-size embedded rows)", minimum=1)
    cluster_size: int = opt(10_000, "rows per cluster when --clusters is not given (SemDeDup: ~9,000 on LAION)",
                            minimum=1)
    sample: int = opt(200_000, "at most this many embeddings fit the k-means (at least 40 per cluster is good)",
                      minimum=1)
    iterations: int = opt(20, "k-means iterations", minimum=1)
    bucket_rows: int = opt(1_000_000, "rows per dedup task (clusters are grouped into buckets of about this size)",
                           minimum=1)
    seed: int = opt(0, "seed of the sample and of k-means")
    after: tuple[str, ...] = opt((), "verdict folders of earlier stages with one file per shard (e.g. `wit dedup`'s): "
                                     "rows they dropped keep that reason and are never the copy that stays",
                                 metavar="DIR")


# ---------------------------------------------------------------------------------------------- 1. fit
def fit_centroids(cfg: SemanticConfig, urls: list[str], clusters: int) -> np.ndarray:
    import faiss

    con = cfg.connect(output=cfg.out)
    _register(con, urls)
    sample = con.sql(f"SELECT image FROM read_parquet({_list(urls)}) WHERE reason IS NULL "
                     f"ORDER BY hash(uid || {literal(str(cfg.seed))}) LIMIT {int(cfg.sample)}").to_arrow_table()
    x = np.ascontiguousarray(_as_vectors(sample["image"]))
    if len(x) < clusters:
        raise WitError(f"--clusters {clusters}: more clusters than the {len(x)} embeddings to fit them on")
    km = faiss.Kmeans(x.shape[1], clusters, niter=cfg.iterations, seed=cfg.seed, spherical=True,
                      max_points_per_centroid=max(1, math.ceil(len(x) / clusters)))
    km.train(x)
    centroids = km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True)
    return centroids.astype(np.float32)


def _as_vectors(column) -> np.ndarray:
    """DuckDB hands arrays back as fixed-size or plain lists, depending on the version."""
    arr = column.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        return vectors(arr)
    dim = len(arr[0]) if len(arr) else 0
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)


def _list(urls: list[str]) -> str:
    return "[" + ", ".join(literal(u) for u in urls) + "]"


def _register(con, urls: list[str]) -> None:
    if any("://" in u for u in urls):
        from fsspec import filesystem

        con.register_filesystem(filesystem(urls[0].split("://", 1)[0]))


# ---------------------------------------------------------------------------------------------- 2. assign
@dataclass(frozen=True)
class AssignJob:
    url: str  # the shard's embedding file
    shard: str
    after: tuple[str, ...]  # earlier verdict files of this shard
    centroids: str  # .npy
    scratch: str
    buckets: int


def assign_shard(job: AssignJob) -> dict:
    """Nearest centroid of every embedded row that no earlier stage dropped; written sorted by bucket."""
    t = read_parquet(job.url, ["uid", "image", "reason"])
    ok = np.array([r is None for r in t["reason"].to_pylist()], bool)
    gone = set()
    for url in job.after:
        v = read_parquet(url, ["uid", "keep"])
        gone.update(u for u, k in zip(v["uid"].to_pylist(), v["keep"].to_pylist()) if not k)
    if gone:
        ok &= np.array([u not in gone for u in t["uid"].to_pylist()], bool)
    t = t.filter(pa.array(ok))
    fs, path = fs_and_path(job.centroids)
    with fs.open(path, "rb") as f:
        centroids = np.load(io.BytesIO(f.read()))
    x = vectors(t["image"]) if t.num_rows else np.zeros((0, centroids.shape[1]), np.float32)
    cluster = np.concatenate([np.argmax(x[s:s + 65536] @ centroids.T, axis=1) for s in range(0, len(x), 65536)]
                             or [np.zeros(0, np.int64)]).astype(np.int32)
    bucket = (cluster % job.buckets).astype(np.int32)
    table = pa.table({"uid": t["uid"], "shard": pa.array([job.shard] * t.num_rows, pa.string()),
                      "cluster": cluster, "bucket": bucket, "image": t["image"]})
    order = np.lexsort((cluster, bucket))
    table = table.take(pa.array(order))
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema) as writer:  # one row group per bucket: dedup tasks read only theirs
        bounds = np.flatnonzero(np.diff(bucket[order])) + 1
        for s, e in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(order)]])):
            if e > s:
                writer.write_table(table.slice(int(s), int(e - s)))
    write_atomic(join(job.scratch, "assign", f"{job.shard}.parquet"), sink.getvalue().to_pybytes())
    return {"shard": job.shard, "assigned": table.num_rows}


# ---------------------------------------------------------------------------------------------- 3. dedup
@dataclass(frozen=True)
class BucketJob:
    scratch: str
    assigned: tuple[str, ...]  # this run's assign files (never a listing: a folder may hold an older run's)
    bucket: int
    threshold: float


def bucket_rows(assigned: tuple[str, ...], bucket: int) -> pa.Table:
    """The rows of one bucket, from the row groups of every assign file whose bucket statistics say so."""
    parts = []
    for url in assigned:
        f = open_parquet(url)
        col = f.schema_arrow.get_field_index("bucket")
        groups = [g for g in range(f.metadata.num_row_groups)
                  if (st := f.metadata.row_group(g).column(col).statistics) is not None and st.min == bucket]
        if groups:
            parts.append(f.read_row_groups(groups, columns=["uid", "cluster", "image"]))
    return pa.concat_tables(parts) if parts else None


def dedup_bucket(job: BucketJob) -> dict:
    rows = bucket_rows(job.assigned, job.bucket)
    uids_out, keepers_out, clusters_out = [], [], []
    n = 0
    if rows is not None:
        n = rows.num_rows
        rows = rows.sort_by([("cluster", "ascending"), ("uid", "ascending")])
        cluster = rows["cluster"].to_numpy()
        uids = rows["uid"].to_pylist()
        x = vectors(rows["image"])
        bounds = np.flatnonzero(np.diff(cluster)) + 1
        for s, e in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [n]])):
            keeper = keepers_of(x[s:e], job.threshold)  # index (in the cluster, sorted by uid) of each row's keeper
            for i in np.flatnonzero(keeper != np.arange(e - s)):
                uids_out.append(uids[s + i])
                keepers_out.append(uids[s + keeper[i]])
                clusters_out.append(int(cluster[s]))
    dups = pa.table({"uid": pa.array(uids_out, pa.string()), "dup_of": pa.array(keepers_out, pa.string()),
                     "cluster": pa.array(clusters_out, pa.int32())})
    write_parquet(join(job.scratch, "dups", f"{job.bucket:05d}.parquet"), dups)
    return {"bucket": job.bucket, "rows": n, "dups": dups.num_rows}


def keepers_of(x: np.ndarray, threshold: float) -> np.ndarray:
    """For rows sorted by uid: the index of the smallest row in each one's group, the groups being the connected
    components of 'cosine >= threshold'. Blocks of BLOCK rows are compared with the whole cluster; after each block
    the edges are folded into a star per component, so memory stays one block, not every pair."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(x)
    label = np.arange(m)
    for s in range(0, m, BLOCK):
        sim = x[s:s + BLOCK] @ x[s:].T  # pairs (i, j) with j >= i: each pair once
        a, b = np.nonzero(sim >= threshold)
        a, b = a + s, b + s
        if not len(a):
            continue
        graph = coo_matrix((np.ones(len(a) + m, np.int8), (np.concatenate([a, np.arange(m)]),
                                                            np.concatenate([b, label]))), shape=(m, m))
        _, comp = connected_components(graph, directed=False)
        smallest = np.full(comp.max() + 1, m)
        np.minimum.at(smallest, comp, np.arange(m))
        label = smallest[comp]  # each row points at its component's smallest row: the star
    return label


# ---------------------------------------------------------------------------------------------- 4. verdicts
def write_verdicts(cfg: SemanticConfig, files: list[tuple[str, str]], after: list[list[str]], assigned: list[str],
                   dups: list[str]) -> dict:
    con = cfg.connect(output=cfg.out)
    urls = [u for _, u in files]
    _register(con, urls)
    con.execute("CREATE TEMP TABLE earlier (uid VARCHAR, reason VARCHAR)")
    for folder_files in after:
        con.execute("INSERT INTO earlier SELECT uid, reason FROM read_parquet($f) WHERE NOT keep", {"f": folder_files})
    con.execute("CREATE TEMP TABLE gone AS SELECT uid, min(reason) AS reason FROM earlier GROUP BY uid")
    con.execute("CREATE TEMP TABLE dups AS SELECT * FROM read_parquet($d)", {"d": dups})
    con.execute("CREATE TEMP TABLE assigned AS SELECT uid, cluster FROM read_parquet($a)", {"a": assigned})
    con.execute(f"""
        CREATE TEMP VIEW final AS
        SELECT e.filename, e.file_row_number, e.uid,
               e.reason IS NULL AND g.uid IS NULL AND d.uid IS NULL AS keep,
               coalesce(e.reason, g.reason, 'semantic_dup_of:' || d.dup_of) AS reason,
               d.dup_of, a.cluster
        FROM read_parquet({_list(urls)}, filename = true, file_row_number = true) e
        LEFT JOIN gone g USING (uid) LEFT JOIN dups d USING (uid) LEFT JOIN assigned a USING (uid)""")
    reader = con.sql("SELECT * FROM final ORDER BY filename, file_row_number").to_arrow_reader(BATCH_ROWS)
    shard_of = {u: s for s, u in files}
    _write_per_shard(reader, shard_of, cfg.out)
    for shard, _ in files:  # a shard with no rows still gets its (empty) verdict file
        if not exists(join(cfg.out, f"{shard}.parquet")):
            write_parquet(join(cfg.out, f"{shard}.parquet"), SEMANTIC_VERDICT.empty_table())
    return dict(con.execute("SELECT coalesce(split_part(reason, ':', 1), 'kept'), count(*) FROM final GROUP BY 1 "
                            "ORDER BY 2 DESC").fetchall())


def _write_per_shard(reader, shard_of: dict[str, str], out: str) -> None:
    """Rows arrive in shard order: each shard's file is written as soon as its last row has come (one shard held)."""
    def name(filename: str) -> str:
        return shard_of.get(filename) or next(s for u, s in shard_of.items() if filename.endswith(u.split("://")[-1]))

    current, parts = None, []

    def flush():
        if current is not None:
            t = pa.Table.from_batches(parts).drop_columns(["filename", "file_row_number"])
            write_parquet(join(out, f"{current}.parquet"), t.cast(SEMANTIC_VERDICT))

    for batch in reader:
        files = batch.column("filename").to_pylist()
        start = 0
        for i in range(1, len(files) + 1):
            if i == len(files) or files[i] != files[start]:
                shard = name(files[start])
                if shard != current:
                    flush()
                    current, parts = shard, []
                parts.append(batch.slice(start, i - start))
                start = i
    flush()


# ---------------------------------------------------------------------------------------------- the command
def run_semantic(cfg: SemanticConfig) -> dict:
    cfg = replace(cfg, embeddings=absolute(cfg.embeddings), out=absolute(cfg.out),
                  after=tuple(absolute(a) for a in cfg.after))
    if cfg.embeddings.rstrip("/") == cfg.out.rstrip("/"):
        raise WitError(f"{cfg.out}: would overwrite the embeddings it reads; choose another --out")
    if not -1 <= cfg.threshold <= 1:
        raise WitError(f"--threshold is a cosine, in [-1, 1] (got {cfg.threshold})")
    files, plan = embedding_files(cfg.embeddings)
    for _, url in files:
        check_embedding_file(url)
    after = []
    for folder in cfg.after:
        present = {u.rsplit("/", 1)[-1].removesuffix(".parquet"): u for u in parquet_files(folder)}
        lacking = [s for s, _ in files if s not in present]
        if lacking:
            raise WitError(f"{join(folder, lacking[0] + '.parquet')}: missing (--after needs one verdict file per "
                           "embedded shard)")
        after.append([present[s] for s, _ in files])
    urls = [u for _, u in files]
    con = cfg.connect(output=cfg.out)
    _register(con, urls)
    embedded = run_sql(con, "SELECT count(*) FROM read_parquet($f) WHERE reason IS NULL", {"f": urls},
                       what="count embeddings").fetchone()[0]
    if not embedded:
        raise WitError(f"{cfg.embeddings}: no row has an embedding")
    clusters = cfg.clusters or max(1, round(embedded / cfg.cluster_size))
    buckets = max(1, min(clusters, math.ceil(embedded / cfg.bucket_rows)))
    scratch = join(cfg.out, "_wit", "semantic")
    centroids = fit_centroids(cfg, urls, clusters)
    buf = io.BytesIO()
    np.save(buf, centroids)
    write_atomic(join(scratch, "centroids.npy"), buf.getvalue())
    engine = {"engine": cfg.engine, "workers": cfg.workers, "ray_address": cfg.ray_address}
    assigned = run_map(assign_shard, [AssignJob(u, s, tuple(a[i] for a in after), join(scratch, "centroids.npy"),
                                                scratch, buckets) for i, (s, u) in enumerate(files)], **engine)
    # This run's files by name: an earlier run into the same --out (other shards, more buckets) may have left more
    assign_files = tuple(join(scratch, "assign", f"{s}.parquet") for s, _ in files)
    deduped = run_map(dedup_bucket, [BucketJob(scratch, assign_files, b, cfg.threshold) for b in range(buckets)],
                      **engine)
    dup_files = [join(scratch, "dups", f"{b:05d}.parquet") for b in range(buckets)]
    counts = write_verdicts(cfg, files, after, list(assign_files), dup_files)
    sizes = Counter()
    for r in deduped:
        sizes[r["bucket"]] = r["rows"]
    summary = {"shards": len(files), "embedded": embedded, "assigned": sum(r["assigned"] for r in assigned),
               "clusters": clusters, "buckets": buckets, "largest_bucket": max(sizes.values(), default=0),
               "semantic_dups": sum(r["dups"] for r in deduped), "kept": counts.pop("kept", 0), "dropped": counts,
               "threshold": cfg.threshold, "model": plan.get("model")}
    write_json_atomic(join(cfg.out, "_wit", "semantic_summary.json"), summary)
    return summary
