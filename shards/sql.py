"""Every DuckDB connection in wit: bounded memory, a temp directory to spill into, and safe SQL text.

Global steps (dedup joins, counts, plans) run over manifests of billions of rows. A connection made here has a
memory limit (it spills beyond it instead of failing) and a temp directory that is never the working directory
(DuckDB's default `.tmp` would fill whatever disk the user happened to start from). Names and paths never go into
SQL text as they are: identifiers are quoted with `ident`, paths are passed as parameters or quoted with `literal`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

import duckdb

from wit.shards.options import opt
from wit.shards.storage import WitError, is_local

DEFAULT_MEMORY_SHARE = 0.5  # of the machine's RAM, when --memory-limit is not given


@dataclass(frozen=True, kw_only=True)
class SQLOptions:
    """The options of every command with a global DuckDB step."""
    memory_limit: str | None = opt(None, "DuckDB memory limit, e.g. 8GB; beyond it DuckDB spills to --temp-dir "
                                         "(default: half the RAM)", group="DuckDB")
    temp_dir: str | None = opt(None, "where DuckDB spills (default: <out>/_wit/duckdb_tmp, or $TMPDIR when the output "
                                     "is not local); never the working directory", group="DuckDB")
    temp_limit: str | None = opt(None, "most disk DuckDB may fill in --temp-dir, e.g. 200GB (default: 90% of its free "
                                       "space)", group="DuckDB")
    threads: int | None = opt(None, "DuckDB threads (default: all cores)", minimum=1, group="DuckDB")

    def connect(self, output: str | None = None) -> duckdb.DuckDBPyConnection:
        return connect(self.memory_limit, self.temp_dir, self.threads, output, self.temp_limit)


def default_memory_limit() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "4GB"
    return f"{max(1, int(total * DEFAULT_MEMORY_SHARE / 2**20))}MB"


def default_temp_dir(output: str | None = None) -> str:
    """Spill files go under a local output's `_wit/duckdb_tmp`, else under $TMPDIR."""
    if output and is_local(output):
        return os.path.join(os.path.abspath(output.removeprefix("file://")), "_wit", "duckdb_tmp")
    return os.path.join(tempfile.gettempdir(), f"wit-duckdb-{os.getpid()}")


def connect(memory_limit: str | None = None, temp_dir: str | None = None, threads: int | None = None,
            output: str | None = None, temp_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A connection with a memory limit (default: half the RAM) and a temp directory (default: under `output`)."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # a command's output is its summary, not DuckDB's bar
    limit = memory_limit or default_memory_limit()
    try:
        con.execute("SET memory_limit = " + literal(limit))
    except duckdb.Error as err:
        raise WitError(f"--memory-limit {limit!r}: not a size DuckDB understands, e.g. 2GB ({first_line(err)})") from None
    temp = temp_dir or default_temp_dir(output)
    try:
        os.makedirs(temp, exist_ok=True)
    except OSError as err:
        raise WitError(f"--temp-dir {temp}: cannot create it ({err.strerror})") from None
    con.execute("SET temp_directory = " + literal(temp))
    if temp_limit:
        try:
            con.execute("SET max_temp_directory_size = " + literal(temp_limit))
        except duckdb.Error as err:
            raise WitError(f"--temp-limit {temp_limit!r}: not a size DuckDB understands ({first_line(err)})") from None
    con.execute("SET preserve_insertion_order = false")  # lets big sorts and copies stream; order is always explicit
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def register_filesystem(con: duckdb.DuckDBPyConnection, url: str) -> None:
    """Let DuckDB read and write `url`'s object store (s3://...) through fsspec, as the rest of wit does; a no-op
    for local paths. (DuckDB's own httpfs would be an extension downloaded at run time.)"""
    if is_local(url):
        return
    protocol = url.split("://", 1)[0]
    if not con.filesystem_is_registered(protocol):
        from fsspec import filesystem

        con.register_filesystem(filesystem(protocol))


def ident(name: str) -> str:
    """A quoted SQL identifier: `text-v2` or `a b` is a name, never SQL."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A quoted SQL string literal (for the few places DuckDB takes no parameter, such as SET and COPY ... TO)."""
    return "'" + str(value).replace("'", "''") + "'"


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params=None, *, what: str):
    """Execute, turning DuckDB's out-of-memory and full-disk errors into one line that names what to change."""
    with sql_errors(con, what):
        return con.execute(sql, params) if params is not None else con.execute(sql)


@contextlib.contextmanager
def sql_errors(con: duckdb.DuckDBPyConnection, what: str):
    """DuckDB's out-of-memory and full-disk errors inside the body (a query, or the reading of its result) as one
    line that names what to change."""
    try:
        yield
    except (duckdb.OutOfMemoryException, duckdb.IOException) as err:
        text = str(err)
        temp = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
        if "max_temp_directory_size" in text or "No space left" in text:
            raise WitError(f"{what}: the temp directory {temp} is full ({first_line(err)}); point --temp-dir at a "
                           "larger disk or raise --temp-limit") from None
        if isinstance(err, duckdb.OutOfMemoryException):
            raise WitError(f"{what}: DuckDB ran out of memory ({first_line(err)}); raise --memory-limit or free "
                           f"space in the temp directory {temp}") from None
        raise
