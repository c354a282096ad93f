"""The revocation ledger: which samples were taken back, why and when, and which rows a request matches.

Where it lives (one rule for a pipeline root, a crawl and a corpus): `wit revoke ROOT` appends to
`ROOT/_wit/revocations/`, and a revocation applies to ROOT and everything below it. Every command that reads the
ledger (`wit download`, `wit curate balance`, `wit shards write`, `wit revoke`) reads the ledgers of its output folder
and of every folder above it (`ledgers`): a pipeline's ledger sits at its `out`, above raw/, balance/ and corpus/.

The ledger is append-only. `requests/<date>-<id>.parquet` is one request (REQUEST rows: one per key it names), the
date and reason its own, never rewritten; the same request made again is not added twice (its id is a digest of
its content). `removed/<date>-<shard>-<id>.parquet` is what one rewrite of one corpus shard took out (REMOVED rows:
which request, which sample, where it was in the shard before and the shard's hashes before and after).

Matching, two ways over the same rules: `Revocations.mask` per row in Arrow (the crawl before it fetches, the
balance before it selects), and `match` as DuckDB joins over a whole corpus (`wit revoke`, `wit shards write`),
whose pHash near match is the band join of `wit dedup` (shards/phash.py). A URL matches as listed; a domain
matches the URL's host exactly, `*.example.com` also its subdomains (HOST_PATTERN, one regex for Arrow and DuckDB,
both RE2); a uid, a sha256 (of the downloaded bytes, the manifest's) and a pHash within the request's distance.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.shards.phash import band_columns, near_pairs
from wit.shards.sql import ident, run_sql
from wit.shards.storage import WitError, entries, exists, is_local, join
from wit.shards.tables import read_parquet, write_parquet

LEDGER = ("_wit", "revocations")
KINDS = ("url", "domain", "subdomains", "uid", "sha256", "phash")
REQUEST = pa.schema([
    pa.field("request", pa.string(), nullable=False),  # the request's id: a digest of its content
    pa.field("date", pa.string(), nullable=False),  # UTC, ISO 8601
    pa.field("reason", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # one of KINDS
    pa.field("value", pa.string(), nullable=False),  # the URL, host, uid, hex sha256; for phash the image's name
    pa.field("phash", pa.int64()),  # kind phash: the request image's 64-bit pHash (shards.phash)
    pa.field("near", pa.int32()),  # kind phash: the largest Hamming distance that matches
])
REMOVED = pa.schema([
    pa.field("request", pa.string(), nullable=False),
    pa.field("corpus", pa.string(), nullable=False),  # the corpus folder
    pa.field("shard", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("uid", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("index", pa.int64(), nullable=False),  # the sample's place in the shard's tar before the rewrite
    pa.field("old_sha256", pa.string()),  # the shard's tar before and after (null: a corpus without hashes)
    pa.field("new_sha256", pa.string(), nullable=False),
    pa.field("date", pa.string(), nullable=False),
])
# The host of a URL, as urllib's `hostname` reads it (lower-cased, the trailing dot dropped by the callers).
HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#]*@)?(?P<host>\[[^\]/?#]*\]|[^/?#:]*)"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def ledger_of(root: str) -> str:
    return join(root, *LEDGER)


def ledgers(folder: str) -> list[str]:
    """The ledgers that apply to `folder`: its own and those of the folders above it, nearest first."""
    found = []
    for above in _upwards(folder):
        if exists(join(ledger_of(above), "requests")):
            found.append(ledger_of(above))
    return found


def _upwards(folder: str) -> list[str]:
    """`folder` and each folder above it: up to `/` on a local disk, up to the bucket on an object store."""
    if not is_local(folder):
        scheme, rest = folder.split("://", 1)
        parts = rest.strip("/").split("/")
        return [f"{scheme}://" + "/".join(parts[:n]) for n in range(len(parts), 0, -1)]
    path = os.path.abspath(folder.removeprefix("file://"))
    out = [path]
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        out.append(path)
    return out


# ---------------------------------------------------------------------------------------------- writing requests
def request_table(rows: list[dict], reason: str) -> pa.Table:
    """REQUEST rows for keys [{kind, value[, phash, near]}], with the request's id and today's date."""
    if not rows:
        raise WitError("a revocation request needs at least one key (--urls, --domains, --uids or --images)")
    if not reason.strip():
        raise WitError("--reason: say why (it is kept in the ledger with the date)")
    canonical = sorted(json.dumps([r["kind"], r["value"], r.get("phash"), r.get("near")]) for r in rows)
    request = hashlib.sha256(json.dumps([reason, canonical]).encode()).hexdigest()[:16]
    date = now()
    return pa.Table.from_pylist([{"request": request, "date": date, "reason": reason, **r} for r in rows],
                                schema=REQUEST)


def append_request(root: str, table: pa.Table) -> tuple[str, bool]:
    """Add a request to ROOT's ledger: (its file, True), or (the file that already holds it, False)."""
    request = table["request"][0].as_py()
    folder = join(ledger_of(root), "requests")
    for name in _names(folder):
        if name.endswith(f"-{request}.parquet"):
            return join(folder, name), False
    stamp = table["date"][0].as_py().replace("-", "").replace(":", "")
    target = join(folder, f"{stamp}-{request}.parquet")
    write_parquet(target, table)
    return target, True


def write_removed(root: str, table: pa.Table, name: str) -> str:
    """A record of one shard's rewrite (REMOVED rows) in ROOT's ledger, under a name its writer chose."""
    target = join(ledger_of(root), "removed", name)
    if not exists(target):  # never rewritten: a finished rewrite that is finished again writes nothing
        write_parquet(target, table.cast(REMOVED))
    return target


def _names(folder: str) -> list[str]:
    return [name for name in entries(folder) if name.endswith(".parquet")]


# ---------------------------------------------------------------------------------------------- reading the ledger
@dataclass
class Revocations:
    """Every request and every recorded removal of the ledgers that apply to a folder."""
    requests: pa.Table = field(default_factory=REQUEST.empty_table)
    removed: pa.Table = field(default_factory=REMOVED.empty_table)
    sources: list[str] = field(default_factory=list)  # the ledger folders read

    def __post_init__(self):
        by_kind = {k: set() for k in KINDS}
        for kind, value in zip(self.requests["kind"].to_pylist(), self.requests["value"].to_pylist()):
            by_kind[kind].add(value)
        self.urls, self.uids = by_kind["url"], by_kind["uid"] | set(self.removed["uid"].to_pylist())
        self.domains, self.subdomains, self.sha256s = by_kind["domain"], by_kind["subdomains"], by_kind["sha256"]

    def __bool__(self) -> bool:
        return self.requests.num_rows > 0

    def mask(self, uids=None, urls=None) -> np.ndarray:
        """Which rows the ledger revokes, by uid (a uid request, or a sample a rewrite removed) and by URL (a URL
        or domain request); columns not given are not checked."""
        n = len(uids if uids is not None else urls)
        out = np.zeros(n, dtype=bool)
        if uids is not None and self.uids:
            out |= _in(uids, self.uids)
        if urls is not None and (self.urls or self.domains or self.subdomains):
            out |= _in(urls, self.urls)
            hosts = url_hosts(_strings(urls))
            revoked = {h for h in pc.unique(hosts).to_pylist() if h and self.host_revoked(h)}
            if revoked:
                out |= _in(hosts, revoked)
        return out

    def host_revoked(self, host: str) -> bool:
        if host in self.domains:
            return True
        parts = host.split(".")
        return any(".".join(parts[i:]) in self.subdomains for i in range(len(parts)))


def _in(values, members: set) -> np.ndarray:
    return pc.fill_null(pc.is_in(_strings(values), value_set=pa.array(sorted(members), pa.string())),
                        False).to_numpy(zero_copy_only=False)


def _strings(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(pa.string()) if isinstance(values, pa.Array) else pa.array(values, pa.string())


def url_hosts(urls: pa.Array) -> pa.Array:
    """The host of each URL (lower case, no trailing dot), null where there is none."""
    hosts = pc.struct_field(pc.extract_regex(urls, pattern=HOST_PATTERN), [0])
    return pc.utf8_rtrim(pc.utf8_lower(hosts), characters=".")


def host_sql(column: str) -> str:
    """The SQL of `url_hosts` over a column: the same regex (DuckDB and Arrow both use RE2)."""
    pattern = HOST_PATTERN.replace("'", "''")
    return f"rtrim(lower(nullif(regexp_extract({column}, '{pattern}', 1), '')), '.')"


def load(folder: str) -> Revocations:
    """The ledgers that apply to `folder`, read whole (requests are few; removals a row per revoked sample)."""
    return _load(_listing(folder))


def load_cached(folder: str) -> Revocations:
    """`load`, read once per process while the ledger's files stay the same: a crawl's or a balance's worker
    processes check it per shard (a few listings), and read it when it changed."""
    return _load_once(_listing(folder))


def _listing(folder: str) -> tuple:
    return tuple((ledger, tuple(_names(join(ledger, "requests"))), tuple(_names(join(ledger, "removed"))))
                 for ledger in ledgers(folder))


def _load(listing: tuple) -> Revocations:
    requests, removed = [], []
    for ledger, request_files, removed_files in listing:
        requests += [_read(join(ledger, "requests", n), REQUEST) for n in request_files]
        removed += [_read(join(ledger, "removed", n), REMOVED) for n in removed_files]
    return Revocations(pa.concat_tables(requests) if requests else REQUEST.empty_table(),
                       pa.concat_tables(removed) if removed else REMOVED.empty_table(), [x[0] for x in listing])


_load_once = functools.lru_cache(maxsize=4)(_load)


def _read(url: str, schema: pa.Schema) -> pa.Table:
    table = read_parquet(url)
    for f in schema:
        if f.name not in table.column_names:
            raise WitError(f"{url}: not a revocation ledger file (no column {f.name!r})")
    try:
        table = table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise WitError(f"{url}: not a revocation ledger file ({err})") from None
    bad = pc.invert(pc.is_in(table["kind"], value_set=pa.array(KINDS))) if "kind" in schema.names else None
    if bad is not None and pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise WitError(f"{url}: row {row}: kind {table['kind'][row].as_py()!r} is not one of {', '.join(KINDS)}")
    return table


# ---------------------------------------------------------------------------------------------- matching in SQL
def match(con, ledger: Revocations, rows: str, phashes: str | None = None, cap: int = 10_000,
          what: str = "wit revoke") -> None:
    """Table `revoked(uid, request)`: the rows of table `rows` (uid, url, sha256; one row per uid) that the ledger
    revokes, one per (uid, request). `phashes` names a table (uid, phash) of the rows' pHashes, for pHash requests.
    A sample a rewrite removed counts under the request that removed it."""
    def sql(text: str):
        return run_sql(con, text, what=what)

    con.register("ledger_requests", ledger.requests)
    con.register("ledger_removed", ledger.removed.select(["uid", "request"]))
    parts = [f"SELECT r.uid, q.request FROM {rows} r JOIN ledger_requests q "
             f"ON q.kind = '{kind}' AND r.{column} = q.value" for kind, column in (("url", "url"), ("uid", "uid"), ("sha256", "sha256"))]
    parts.append(f"SELECT r.uid, m.request FROM {rows} r JOIN ledger_removed m USING (uid)")
    if ledger.domains or ledger.subdomains:
        sql(f"""CREATE OR REPLACE TEMP TABLE revoked_hosts AS
                WITH hosts AS (SELECT DISTINCT {host_sql('url')} AS host FROM {rows}),
                     parts AS (SELECT host, string_split(host, '.') AS p FROM hosts WHERE host IS NOT NULL),
                     suffixes AS (SELECT host, i, array_to_string(list_slice(p, i, len(p)), '.') AS s
                                  FROM (SELECT host, p, unnest(range(1, len(p) + 1)) AS i FROM parts))
                SELECT DISTINCT x.host, q.request FROM suffixes x JOIN ledger_requests q ON x.s = q.value
                WHERE q.kind = 'subdomains' OR (q.kind = 'domain' AND x.i = 1)""")
        parts.append(f"SELECT r.uid, h.request FROM {rows} r JOIN revoked_hosts h ON {host_sql('r.url')} = h.host")
    if phashes is not None:
        parts += _near_matches(sql, ledger, phashes, cap)
    sql("CREATE OR REPLACE TEMP TABLE revoked AS SELECT DISTINCT uid, request FROM ("
        + " UNION ALL ".join(parts) + ")")


def _near_matches(sql, ledger: Revocations, phashes: str, cap: int) -> list[str]:
    """SELECTs of (uid, request) for the pHash requests: one band join per distance the requests ask for."""
    kinds = ledger.requests.filter(pc.equal(ledger.requests["kind"], "phash"))
    parts = []
    sql(f"CREATE OR REPLACE TEMP TABLE row_ph AS SELECT row_number() OVER () AS rid, uid, phash FROM {phashes} "
        "WHERE phash IS NOT NULL")
    for d in sorted(set(kinds["near"].to_pylist())):
        name = ident(f"near_{d}")
        sql(f"CREATE OR REPLACE TEMP TABLE req_ph AS SELECT row_number() OVER () AS rid, request, phash "
            f"FROM ledger_requests WHERE kind = 'phash' AND near = {int(d)}")
        sql(f"CREATE OR REPLACE TEMP TABLE req_bands AS SELECT rid, phash, {band_columns(d)} FROM req_ph")
        sql(f"CREATE OR REPLACE TEMP TABLE row_bands AS SELECT rid, phash, {band_columns(d)} FROM row_ph")
        near_pairs(sql, d, cap, "req_bands", "row_bands")
        sql(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT p.uid, q.request FROM edges e "
            "JOIN req_ph q ON q.rid = e.a JOIN row_ph p ON p.rid = e.b")
        parts.append(f"SELECT uid, request FROM {name}")
    return parts
