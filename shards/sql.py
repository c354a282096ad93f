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
    threads: int | None = opt(None, "DuckDB threads (default: all cores)", minimum=1, group="DuckDB")

    def connect(self, output: str | None = None) -> duckdb.DuckDBPyConnection:
        return connect(self.memory_limit, self.temp_dir, self.threads, output)


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
            output: str | None = None) -> duckdb.DuckDBPyConnection:
    """A connection with a memory limit (default: half the RAM) and a temp directory (default: under `output`)."""
    con = duckdb.connect()
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
    con.execute("SET preserve_insertion_order = false")  # lets big sorts and copies stream; order is always explicit
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def register_storage(con: duckdb.DuckDBPyConnection, url: str) -> None:
    """Let DuckDB read `url`'s store (s3://, ...) through fsspec, as the rest of wit does; local paths need nothing."""
    if not is_local(url):
        import fsspec

        con.register_filesystem(fsspec.filesystem(url.split("://", 1)[0]))


def ident(name: str) -> str:
    """A quoted SQL identifier: `text-v2` or `a b` is a name, never SQL."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A quoted SQL string literal (for the few places DuckDB takes no parameter, such as SET and COPY ... TO)."""
    return "'" + str(value).replace("'", "''") + "'"


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params=None, *, what: str, temp_dir: str | None = None):
    """Execute, turning DuckDB's out-of-memory and full-disk errors into one line that says what to change."""
    with sql_errors(what, temp_dir):
        return con.execute(sql, params) if params is not None else con.execute(sql)


@contextlib.contextmanager
def sql_errors(what: str, temp_dir: str | None = None):
    """DuckDB's out-of-memory and full-disk errors inside the body (a query, or the reading of its result) as one
    line that says what to change."""
    try:
        yield
    except duckdb.OutOfMemoryException as err:
        raise WitError(f"{what}: DuckDB ran out of memory ({first_line(err)}); raise --memory-limit or free "
                       "space in --temp-dir") from None
    except duckdb.IOException as err:
        text = str(err)
        if "No space left" in text or "disk" in text.lower():
            raise WitError(f"{what}: the temp directory {temp_dir or '(DuckDB temp)'} is full ({first_line(err)}); "
                           "point --temp-dir at a larger disk") from None
        raise
