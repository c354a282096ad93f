"""The plan of `wit shards write`, in SQL: which samples survive, and where each one goes.

Two steps, neither of which holds more than one crawled shard's rows in Python:
  rank     (per crawled shard, mapped) read its manifest, check it, keep the `ok` rows and give each a rank
           hash(seed, uid); written to `<work>/ok/<shard>.parquet`.
  plan     (global, DuckDB with a memory limit and a temp directory) join the ranked rows with every verdict
           folder and the selection (its selected rows; of an online one, its eligible rows with keep_prob),
           number the survivors by (rank, uid), cut them into output shards, and write
           the plan twice as parquet partitioned by shard: `by_src/src_shard=<crawled>/` (what a crawled shard
           sends where) and `by_out/shard=<output>/` (the corpus rows of one output shard). Tasks get these paths.
What comes back to the driver is small: a count per output shard and the names of the crawled shards.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wit.shards.revocations import Revocations, match
from wit.shards.schema import DROPPED, ELIGIBLE, KEEP_PROB, MANIFEST, OK, SELECTED
from wit.shards.sql import first_line, ident, literal, run_sql
from wit.shards.storage import WitError, exists, fs_and_path, is_local, join
from wit.shards.tables import parquet_files, read_manifest, read_parquet, write_parquet

# The crawl manifest columns a corpus row carries, in the order the sample's .json lists them.
CORPUS_FIELDS = ["uid", "url", "caption", "width", "height", "original_width", "original_height", "sha256",
                 "source_file", "source_row", "src_shard", "src_key"]
SOURCE_COLUMN = {"src_shard": "shard", "src_key": "key"}  # corpus fields named after the crawl manifest's column
RANKED = pa.schema([pa.field("uid", pa.string()), pa.field("rank", pa.int64())]
                   + [pa.field(c, MANIFEST.field(SOURCE_COLUMN.get(c, c)).type) for c in CORPUS_FIELDS[1:]])


def rank(seed: int, uids: list[str]) -> np.ndarray:
    """A 63-bit pseudo-random rank per uid: a pure function of (seed, uid)."""
    prefix, blake2b = f"{seed}:".encode(), hashlib.blake2b
    digests = b"".join([blake2b(prefix + u.encode(), digest_size=8).digest() for u in uids])
    return (np.frombuffer(digests, dtype=">u8") >> np.uint64(1)).astype(np.int64)


def rank_shard(task: tuple[str, str, int, str]) -> int:
    """Rank the ok rows of one crawled manifest into `dest` (a pure function of the manifest and the seed)."""
    raw, src, seed, dest = task
    m = read_manifest(join(raw, f"{src}.parquet"), required=("uid", "status", "shard", "key"))
    ok = m.filter(pc.equal(m["status"], OK))
    columns = {"uid": ok["uid"], "rank": pa.array(rank(seed, ok["uid"].to_pylist()), pa.int64())}
    for c in CORPUS_FIELDS[1:]:
        name = SOURCE_COLUMN.get(c, c)
        field = RANKED.field(c)
        columns[c] = ok[name].cast(field.type) if name in ok.column_names else pa.nulls(ok.num_rows, field.type)
    write_parquet(join(dest, f"{src}.parquet"), pa.table(columns, schema=RANKED))
    return ok.num_rows


def name_width(last_shard: int) -> int:
    """Digits of every output shard name: five (img2dataset's) or more, one width for all, so names sort as numbers."""
    return max(5, len(str(last_shard)))


@dataclass(frozen=True)
class Plan:
    folder: str  # holds by_src/ and by_out/
    counts: dict[str, int]  # output shard -> samples
    sources: list[str]  # crawled shards that send at least one sample
    fingerprint: dict  # what the plan was made of; a resume must find the same
    not_in_crawl: int  # selected uids that are not ok in the crawl (ignored)

    @property
    def samples(self) -> int:
        return sum(self.counts.values())


def scan(con, urls: list[str], required: tuple[str, ...] = ()) -> str:
    """A SQL table expression over parquet files, local or remote; a file lacking a required column is an error.

    Local files go to DuckDB's own reader; remote ones through a pyarrow dataset on Arrow's native filesystem
    (DuckDB's httpfs would be downloaded at run time), which DuckDB scans lazily with projection pushdown.
    """
    schemas = _schemas(urls)
    for url, schema in zip(urls, schemas):
        lacking = [c for c in required if c not in schema.names]
        if lacking:
            raise WitError(f"{url}: no column {lacking[0]!r} (columns: {', '.join(schema.names)})")
    if all(is_local(u) for u in urls):
        return "read_parquet([" + ", ".join(literal(u.removeprefix("file://")) for u in urls) + "], union_by_name = true)"
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(urls[0])
    name = f"scan_{uuid.uuid4().hex[:12]}"
    con.register(name, ds.dataset([pafs.FileSystem.from_uri(u)[1] for u in urls], filesystem=fs, format="parquet",
                                  schema=pa.unify_schemas(schemas, promote_options="permissive")))
    return ident(name)


def _schemas(urls: list[str]) -> list[pa.Schema]:
    def one(url: str) -> pa.Schema:
        try:
            if is_local(url):
                return pq.read_schema(url.removeprefix("file://"))
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(url)
            return pq.read_schema(path, filesystem=fs)
        except (pa.ArrowException, OSError) as err:
            raise WitError(f"{url}: not a readable parquet file ({first_line(err)})") from None

    with ThreadPoolExecutor(16) as pool:  # footers only; remote ones are round trips worth overlapping
        return list(pool.map(one, urls))


def build_plan(con, ranked: list[str], verdicts: tuple[str, ...], selection: str | None, shard_size: int,
               raw: str, folder: str, ledger: Revocations | None = None) -> Plan:
    """Join, number and cut the ranked rows; write the plan partitioned by crawled shard and by output shard.

    The samples a revocation ledger revokes are left out after the numbering, not before: every other sample keeps
    its place (its shard and key), so the corpus is what `wit revoke` leaves of the one written without the ledger,
    and the plan's fingerprint does not change when a request is added."""
    q = lambda sql: run_sql(con, sql, what="reshard plan").fetchall()  # noqa: E731
    q(f"CREATE OR REPLACE TEMP TABLE ok AS SELECT * FROM {scan(con, ranked)}")
    dup = q("SELECT uid FROM ok GROUP BY uid HAVING count(*) > 1 LIMIT 1")
    if dup:
        raise WitError(f"{raw}: uid {dup[0][0]} is ok in more than one manifest row (dedup before resharding)")
    keep = []
    for i, v in enumerate(verdicts):
        name = ident(f"verdict_{i}")
        q(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT uid, bool_and(keep) AS keep "
          f"FROM {scan(con, _files(v), ('uid', 'keep'))} GROUP BY uid")
        missing = q(f"SELECT uid FROM ok ANTI JOIN {name} USING (uid) LIMIT 1")
        if missing:
            raise WitError(f"{v}: no verdict for uid {missing[0][0]} (ok in {raw}); run that filter on every shard")
        keep.append(f"JOIN {name} USING (uid)")
    where = [f"{ident(f'verdict_{i}')}.keep" for i in range(len(verdicts))]
    matched, not_in_crawl = "", 0
    if selection:
        source = scan(con, _files(selection), ("uid", "status"))
        columns = {r[0] for r in q(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {source})")}
        statuses = {r[0] for r in q(f"SELECT DISTINCT status FROM {source} WHERE status <> {literal(DROPPED)}")}
        online = ELIGIBLE in statuses  # `curate balance --online`: the corpus carries each pair's keep_prob
        if online and (SELECTED in statuses or KEEP_PROB not in columns):
            raise WitError(f"{selection}: mixes an online selection (eligible) with a fixed one (selected) or lacks "
                           f"{KEEP_PROB}; balance all files in one run")
        q("CREATE OR REPLACE TEMP TABLE sel AS SELECT uid, "
          + ("any_value(matched)::INTEGER[]" if "matched" in columns else "NULL::INTEGER[]") + " AS matched"
          + (f", any_value({KEEP_PROB})::DOUBLE AS {KEEP_PROB}" if online else "")
          + f" FROM {source} WHERE status = {literal(ELIGIBLE if online else SELECTED)} GROUP BY uid")
        not_in_crawl = q("SELECT count(*) FROM sel ANTI JOIN ok USING (uid)")[0][0]
        keep.append("JOIN sel USING (uid)")
        matched = ", sel.matched" + (f", sel.{KEEP_PROB}" if online else "")
    q(f"""CREATE OR REPLACE TEMP TABLE plan AS
          SELECT *, (pos // {int(shard_size)})::BIGINT AS out_no FROM (
            SELECT ok.*{matched}, (row_number() OVER (ORDER BY ok.rank, ok.uid) - 1)::BIGINT AS pos
            FROM ok {' '.join(keep)} {('WHERE ' + ' AND '.join(where)) if where else ''})""")
    fields = ", ".join(ident(c) for c in CORPUS_FIELDS) + matched.replace("sel.", "")
    width = name_width(q("SELECT coalesce(max(out_no), 0) FROM plan")[0][0])
    n, xor, total = q("SELECT count(*), bit_xor(rank), sum(rank)::VARCHAR FROM plan")[0]
    if ledger:
        match(con, ledger, "plan", what="reshard plan")
        q("DELETE FROM plan WHERE uid IN (SELECT uid FROM revoked)")
    naming = (f"printf('%0{width}d', out_no) AS shard, printf('%0{width}d_%06d', out_no, pos % {int(shard_size)}) AS key")
    tag = uuid.uuid4().hex[:8]
    staged = f"{folder}.new-{tag}" if is_local(folder) else os.path.join(_local_stage(con), f"plan-{tag}")
    os.makedirs(staged)
    for part, select in (("by_src", f"src_shard, src_key, uid, pos, {naming}"), ("by_out", f"{fields}, pos, {naming}")):
        by = "src_shard" if part == "by_src" else "shard"
        q(f"COPY (SELECT {select} FROM plan) TO {literal(join(staged, part))} "
          f"(FORMAT parquet, PARTITION_BY ({by}), FILENAME_PATTERN 'part_{{i}}')")
    counts = dict(q(f"SELECT printf('%0{width}d', out_no), count(*) FROM plan GROUP BY out_no ORDER BY out_no"))
    sources = [r[0] for r in q("SELECT DISTINCT src_shard FROM plan ORDER BY src_shard")]
    for table in ("plan", "sel", "ok", "revoked", *(f"verdict_{i}" for i in range(len(verdicts)))):
        q(f"DROP TABLE IF EXISTS {ident(table)}")  # the exchange runs next: give DuckDB's memory back
    _swap_in(staged, folder)
    fingerprint = {"raw": raw, "shard_size": shard_size, "samples": n, "rank_xor": xor, "rank_sum": total}
    return Plan(folder, counts, sources, fingerprint, not_in_crawl)


def sources_for(folder: str, shards: list[str]) -> list[str]:
    """The crawled shards that send a sample to one of `shards` (a resume redoes only those)."""
    senders: set[str] = set()
    for shard in shards:
        senders.update(read_partition(folder, "by_out", "shard", shard, ["src_shard", "pos"])["src_shard"].to_pylist())
    return sorted(senders)


def partition(folder: str, part: str, column: str, value: str) -> str:
    return join(folder, part, f"{column}={value}")


def read_partition(folder: str, part: str, column: str, value: str, columns: list[str] | None = None) -> pa.Table:
    """The plan rows of one shard, in position order."""
    where = partition(folder, part, column, value)
    files = parquet_files(where) if exists(where) else []
    if not files:
        raise WitError(f"{where}: the plan has no rows here (the plan folder was changed while resharding?)")
    tables = [read_parquet(url, columns) for url in files]
    table = pa.concat_tables(tables)
    return table.take(pc.sort_indices(table["pos"]))


def _files(folder: str) -> list[str]:
    files = parquet_files(folder)
    if not files:
        raise WitError(f"{folder}: holds no parquet files")
    return files


def _local_stage(con) -> str:
    return con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]


def _swap_in(staged: str, folder: str) -> None:
    """Replace the plan folder with the one just written (a kill in between leaves the old one or none)."""
    if is_local(folder):
        old = f"{folder}.old-{uuid.uuid4().hex[:8]}"
        if os.path.exists(folder):
            os.replace(folder, old)
        os.replace(staged, folder)
        shutil.rmtree(old, ignore_errors=True)
        return
    fs, path = fs_and_path(folder)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.put(staged.rstrip("/") + "/", path, recursive=True)
    shutil.rmtree(staged, ignore_errors=True)
