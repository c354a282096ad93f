"""Read URL-caption lists (parquet, csv, tsv, jsonl, txt; local, s3://, https://) into wit's input schema.

A list is read in batches of at most `BATCH_ROWS` rows (`iter_list_batches`), never whole: parquet by row
batches of the url and caption columns, csv/tsv through Arrow's streaming reader, txt by lines. jsonl is still
read whole (Arrow's streaming JSON reader fixes the columns and their types from the first block, where the whole
file's reading unifies them, and would turn lists that read today into errors). `read_list` is those batches as
one table, for the callers that want one file's rows together.

Arrow only ever reads a local path (or, for jsonl, a copy in its own memory), never a Python file object, for the
reason `shards/tables.py` gives: a list that is not a local file (s3://, https://, any .gz) is first streamed,
gunzipped, into a temporary file under $TMPDIR, a few MB at a time, and that file is removed once it is read.

File-level problems (missing file, empty list, no URL column, bad encoding) raise WitError naming the file and
line. Row-level problems (a malformed URL) stay in the data as an `invalid` reason: the row is recorded in the
manifest as failed instead of stopping the crawl.
"""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from wit.shards.schema import INPUT, number_uids, pair_uid
from wit.shards.storage import WitError, expand, fs_and_path, is_local
from wit.shards.tables import arrow_reader

FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt")
URL_COLUMNS = ("url", "URL", "image_url", "img_url", "link")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt", "ALT", "alt_text", "title")
MAX_URL_LENGTH = 2048
# Rows of a list held at once. At its peak a batch costs ~1.5 KB a row of resident memory (the Python strings of
# url, caption, uid and reason, their Arrow copies, the parquet pages read and written, the allocators' slack):
# ~100 MB per task, so 64 tasks on a 64-core node stay near 6 GB whatever the size of a list file (LAION-2B's are
# ~18M rows, which read whole took ~15 GB each); yet a batch is large enough that the per-batch costs (a parquet
# row group of the normalised input, Arrow's calls) stay small beside the per-row ones.
BATCH_ROWS = 65_536
CSV_BLOCK = 1 << 20  # Arrow's CSV parse block: grown (x16) only for a row larger than a block
MAX_CSV_BLOCK = 2**31 - 1
COPY_CHUNK = 4 << 20  # bytes moved at a time when a list is copied to a local file or checked to be UTF-8
TXT_PEEK = 1 << 16  # bytes of a txt file in a folder read to tell a URL list from a LICENSE.txt


def find_lists(patterns: list[str]) -> list[str]:
    """Expand brace patterns and directories into list files, each checked to exist."""
    files: list[str] = []
    for pattern in patterns:
        for url in expand(pattern):
            fs, path = fs_and_path(url)
            try:
                if fs.isdir(path):
                    found = lists_in_folder(fs, path, remote="://" in url)
                    if not found:
                        raise WitError(f"{url}: directory holds no URL list ({', '.join(FORMATS)})")
                    files += [fs.unstrip_protocol(p) if "://" in url else p for p in found]
                    continue
                if not fs.exists(path):
                    raise WitError(f"{url}: no such file")
            except WitError:
                raise
            except Exception as err:
                raise WitError(f"{url}: cannot read ({type(err).__name__}: {err})") from None
            files.append(url)
    if not files:
        raise WitError("no URL list given")
    seen: dict[str, str] = {}
    for url in files:  # a list met twice (a folder and a file inside it) would give its rows twice the same origin
        key = url if "://" in url else os.path.realpath(url)
        if key in seen:
            raise WitError(f"{url}: given twice (also as {seen[key]}); name each list once")
        seen[key] = url
    return files


def lists_in_folder(fs, folder: str, remote: bool) -> list[str]:
    """The URL lists under a folder, picked by what they are: files of a list format, except
    - names starting with `.` or `_`, and what is under them, as Arrow and Spark skip them: macOS's `._part-0.parquet`,
      Spark's `_SUCCESS`, wit's own `_wit/`;
    - a folder holding `_wit/` (below the one given): a wit output, such as a crawl's `--out` put inside its lists
      folder, whose manifests are records, not lists;
    - a txt file whose first line is not a URL (`LICENSE.txt`): said on stderr."""
    root = folder.rstrip("/")
    paths = {p: p[len(root) + 1:].split("/") for p in sorted(fs.find(root))}
    outputs = {tuple(parts[:i]) for parts in paths.values() for i, name in enumerate(parts) if i and name == "_wit"}
    found = []
    for path, parts in paths.items():
        hidden = any(name.startswith((".", "_")) for name in parts)
        in_output = any(tuple(parts[:i]) in outputs for i in range(1, len(parts)))
        fmt = list_format(path, strict=False)
        if hidden or in_output or fmt is None:
            continue
        url = fs.unstrip_protocol(path) if remote else path
        if fmt == "txt" and not _starts_with_url(url):
            print(f"{url}: skipped, its first line is not a URL (name the file itself to read it as a list)",
                  file=sys.stderr)
            continue
        found.append(url)
    return found


def _starts_with_url(url: str) -> bool:
    """Whether the first line of a txt file that is not blank is a URL (a list's first row, however many follow)."""
    try:
        with _open(url, block_size=TXT_PEEK) as f:
            head = f.read(TXT_PEEK)
    except Exception as err:
        raise WitError(f"{url}: cannot read ({type(err).__name__}: {err})") from None
    lines = head.removeprefix(codecs.BOM_UTF8).decode("utf-8", "replace").splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    return url_problem(first) is None


def list_format(path: str, strict: bool = True) -> str | None:
    name = path.lower().removesuffix(".gz")
    for fmt in FORMATS:
        if name.endswith("." + fmt) or (fmt == "jsonl" and name.endswith(".json")):
            return fmt
    if strict:
        raise WitError(f"{path}: unknown list format (use one of {', '.join(FORMATS)} or --input-format)")
    return None


def read_list(url: str, fmt: str | None = None, url_col: str | None = None, caption_col: str | None = None,
              seen: Counter | None = None, number_repeats: bool = True) -> pa.Table:
    """One list file -> a table in the INPUT schema, with a stable uid and the source row of every pair.

    `seen` counts the pairs of the lists read before this one, so that a repeated pair gets its own uid. Without
    `number_repeats` every row gets its pair's uid, for a caller that numbers the repeats of many lists itself.
    """
    seen = Counter() if seen is None else seen
    batches = []
    for batch in iter_list_batches(url, fmt, url_col, caption_col):
        if number_repeats:
            uids = pa.array(number_uids(batch.column(0).to_pylist(), seen), pa.string())
            batch = batch.set_column(0, INPUT.field("uid"), uids)
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=INPUT)


def iter_list_batches(url: str, fmt: str | None = None, url_col: str | None = None, caption_col: str | None = None,
                      batch_rows: int | None = None, extra: tuple[str, ...] = ()) -> Iterator[pa.RecordBatch]:
    """One list file as INPUT-schema batches of at most `batch_rows` rows (default `BATCH_ROWS`), in row order:
    every row with its pair's uid (`pair_uid`; repeats are not numbered here), its file, its 0-based row in that
    file and its `invalid` reason; then the list's columns named in `extra`, as the list holds them. An empty list
    is a WitError, raised once the whole file has been read."""
    fmt = fmt or list_format(url)
    if extra and fmt == "txt":
        raise WitError(f"{url}: a txt list has no columns to save (--save-additional-columns {extra[0]})")
    columns: list[str] = []

    def pick(names: list[str]) -> list[str]:
        """The url (and caption) column among the file's column names, then `extra`: the columns to read."""
        columns[:] = [_pick_column(url, names, url_col, URL_COLUMNS, "URL", "--url-col")]
        if fmt != "txt":
            columns.append(_pick_column(url, names, caption_col, CAPTION_COLUMNS, "caption", "--caption-col"))
        for name in extra:
            _pick_column(url, names, name, (), name, "--save-additional-columns")
        return list(dict.fromkeys(columns + list(extra)))

    rows, offset = batch_rows or BATCH_ROWS, 0
    with _local_copy(url) as path:
        for chunk in _rebatch(_guarded(url, fmt, path, _chunks(url, path, fmt, pick, rows)), rows):
            yield _input_batch(url, chunk, columns, offset, extra)
            offset += chunk.num_rows
    if offset == 0:
        raise WitError(f"{url}: the list is empty")


def _input_batch(url: str, chunk: pa.Table, columns: list[str], offset: int, extra: tuple[str, ...] = ()
                 ) -> pa.RecordBatch:
    """The INPUT rows of one chunk, then its `extra` columns (its Python lists die here, before the next chunk's
    are made)."""
    check_url_type(url, columns[0], chunk.column(columns[0]).type)
    urls = text_values(chunk.column(columns[0]))
    captions = text_values(chunk.column(columns[1])) if len(columns) > 1 else [""] * len(urls)
    batch = pa.RecordBatch.from_pydict({
        "uid": list(map(pair_uid, urls, captions)),
        "url": urls,
        "caption": captions,
        "source_file": [url] * len(urls),
        "source_row": list(range(offset, offset + len(urls))),
        "invalid": [url_problem(u) for u in urls],
    }, schema=INPUT)
    for name in extra:
        batch = batch.append_column(name, chunk.column(name).combine_chunks())
    return batch


def check_url_type(url: str, column: str, kind: pa.DataType) -> None:
    """URLs are text: a column of numbers, lists or structs is the wrong column (a WitError), not rows of bad URLs."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    text = (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind) or str(kind) in ("string_view", "binary_view"))
    if not text:
        raise WitError(f"{url}: column {column!r} holds {kind}, not text, so it holds no URLs (name the URL column "
                       "with --url-col)")


def url_problem(url: str | None) -> str | None:
    """A reason when the URL cannot be crawled at all, else None."""
    if not url or not url.strip():
        return "invalid_url"
    if len(url) > MAX_URL_LENGTH or any(ch.isspace() or ord(ch) < 32 for ch in url):
        return "invalid_url"
    try:
        parts = urlsplit(url)
        parts.port  # raises on a malformed port
    except ValueError:
        return "invalid_url"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "invalid_url"
    return None


def text_values(column: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """A column of any type as the crawl reads it: text as it is, bytes as UTF-8, anything else as `str`."""
    return [_as_text(v) for v in column.to_pylist()]


def _as_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _pick_column(url, names, given, candidates, what, flag) -> str:
    if given:
        if given not in names:
            raise WitError(f"{url}: no column {given!r} (columns: {', '.join(names)})")
        return only_once(url, names, given)
    for name in candidates:
        if name in names:
            return only_once(url, names, name)
    raise WitError(
        f"{url}: no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(names)}); name it with {flag}"
    )


def only_once(url: str, names: list[str], name: str) -> str:
    """`name`, when the file has exactly one column of that name (which of two would be a guess)."""
    if names.count(name) > 1:
        raise WitError(f"{url}: column {name!r} appears {names.count(name)} times (columns: {', '.join(names)}); "
                       "give each column its own name")
    return name


@contextlib.contextmanager
def _local_copy(url: str) -> Iterator[str]:
    """A local path to the list's bytes: a local file itself, anything else (s3://, https://, any .gz) copied,
    gunzipped on the way, into a temporary file under $TMPDIR that is removed when done. So Arrow only ever reads a
    path (see the module docstring)."""
    if is_local(url) and not url.lower().endswith(".gz"):
        yield fs_and_path(url)[1]
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix="wit-list-", suffix=".list")
    except OSError as err:
        raise WitError(f"{url}: cannot make a temporary copy in {tempfile.gettempdir()} ({err.strerror})") from None
    try:
        try:
            with open(fd, "wb") as copy:
                for data in _fetched(url):
                    copy.write(data)
        except OSError as err:  # `_fetched` raises WitErrors only: this is the copy
            raise WitError(f"{url}: cannot copy it to {tmp} ({err.strerror or err})") from None
        yield tmp
    finally:
        os.remove(tmp)


def _fetched(url: str) -> Iterator[bytes]:
    """The list's bytes (gunzipped), `COPY_CHUNK` at a time; what fails in reading them is a WitError."""
    try:
        with _open(url) as f:
            while data := f.read(COPY_CHUNK):
                yield data
    except FileNotFoundError:
        raise WitError(f"{url}: no such file") from None
    except Exception as err:
        raise WitError(f"{url}: cannot read ({type(err).__name__}: {err})") from None


def _open(url: str, block_size: int | None = None):
    fs, path = fs_and_path(url)
    kwargs = {"block_size": block_size} if block_size else {}
    if "http" in fs.protocol:
        kwargs = {"block_size": 0}  # one streamed GET: any web server, ranges or not
    return fs.open(path, "rb", compression="gzip" if url.lower().endswith(".gz") else None, **kwargs)


def _chunks(url: str, path: str, fmt: str, pick: Callable[[list[str]], list[str]],
            batch_rows: int) -> Iterator[pa.Table]:
    """The picked columns of a list (read from the local `path`), in tables of any size; `pick` is called once the
    file is known not empty."""
    if fmt == "parquet":
        return _parquet_chunks(path, pick, batch_rows)
    if fmt == "txt":
        return _txt_chunks(url, path, pick, batch_rows)
    if fmt == "jsonl":
        return _jsonl_chunks(url, path, pick)
    return _csv_chunks(url, path, "\t" if fmt == "tsv" else ",", pick)


def _guarded(url: str, fmt: str, path: str, chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The chunks, with whatever reading them raises turned into a one-line WitError naming the file (and line)."""
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except WitError:
            raise
        except FileNotFoundError:
            raise WitError(f"{url}: no such file") from None
        except pa.ArrowInvalid as err:
            msg = str(err).splitlines()[0]
            if "Empty CSV file" in msg:
                raise WitError(f"{url}: the list is empty") from None
            line = _line_of(path, msg) if fmt in ("csv", "tsv") else ""
            raise WitError(f"{url}{line}: malformed {fmt} ({msg})") from None
        except Exception as err:
            raise WitError(f"{url}: cannot read ({type(err).__name__}: {err})") from None
        yield chunk


def _rebatch(chunks: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of any size cut into tables of exactly `rows` rows (the last one fewer); no empty ones."""
    held: list[pa.Table] = []
    count = 0
    for chunk in chunks:
        if not chunk.num_rows:
            continue
        held.append(chunk)
        count += chunk.num_rows
        while count >= rows:
            table = pa.concat_tables(held)
            yield table.slice(0, rows)
            held, count = [table.slice(rows)], count - rows
    if count:
        yield pa.concat_tables(held)


def _parquet_chunks(path: str, pick, batch_rows: int) -> Iterator[pa.Table]:
    source = pq.ParquetFile(path)
    try:
        if source.metadata.num_rows:
            columns = pick(source.schema_arrow.names)
            for batch in source.iter_batches(batch_size=batch_rows, columns=columns):
                yield pa.Table.from_batches([batch])
    finally:
        source.close()


def _txt_chunks(url: str, path: str, pick, batch_rows: int) -> Iterator[pa.Table]:
    """One URL per line; blank lines skipped. Each line break-terminated piece is decoded by itself, which splits
    the lines exactly as `str.splitlines` over the whole text does (no UTF-8 sequence holds the byte 0x0a)."""
    pick(["url"])
    urls: list[str] = []
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):  # a byte-order mark is no part of the first URL
                raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(url, number, raw[err.start], offset + err.start) from None
            offset += len(raw)
            urls += [s for s in (line.strip() for line in text.splitlines()) if s]
            if len(urls) >= batch_rows:
                yield pa.table({"url": urls})
                urls = []
    if urls:
        yield pa.table({"url": urls})


def _jsonl_chunks(url: str, path: str, pick) -> Iterator[pa.Table]:
    """jsonl is read whole (see the module docstring); the batches are cut from the one table."""
    _check_utf8(url, path)
    with open(path, "rb") as f:
        data = f.read()
    table = _read_jsonl(url, data)
    if table.num_rows:
        yield table.select(pick(table.column_names))


def _csv_chunks(url: str, path: str, delimiter: str, pick) -> Iterator[pa.Table]:
    """Arrow's streaming CSV reader, a block at a time, once the file is known to be UTF-8 (which also counts its
    lines, for the unclosed-quote check). Arrow refuses a row larger than a block ("straddles two block
    boundaries"), which a long caption is: then the file is read again with larger blocks, skipping the rows
    already handed on."""
    lines = _check_utf8(url, path)
    block, done = CSV_BLOCK, 0
    while True:
        try:
            for chunk in _csv_pass(url, path, delimiter, pick, block, done, lines):
                done += chunk.num_rows
                yield chunk
            return
        except pa.ArrowInvalid as err:
            if "straddles" not in str(err) or block >= MAX_CSV_BLOCK:
                raise
            block = min(block * 16, MAX_CSV_BLOCK)


def _csv_pass(url: str, path: str, delimiter: str, pick, block: int, skip: int, lines: int) -> Iterator[pa.Table]:
    """One reading of a csv/tsv: its header first (one block), then the picked columns, and the last column for
    the unclosed-quote check, all as text. Positional names, so that a repeated header name cannot confuse them;
    and text, because a streaming reader fixes a column's type from the first block, where reading a file whole
    widened it as it went (a caption column of numbers that turns to words). So a cell is read as written: a
    caption column of numbers only, which reading whole typed as numbers ("1.50" became "1.5", an all-empty one
    null), keeps its text now."""
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    header = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block), parse_options=parse)
    names = header.schema.names
    first = next((b for b in header if b.num_rows), None)
    header.close()
    if first is None:
        return
    wanted = pick(names)
    read = list(dict.fromkeys([names.index(c) for c in wanted] + [len(names) - 1]))
    positional = [str(i) for i in range(len(names))]
    reader = pacsv.open_csv(path, parse_options=parse, read_options=pacsv.ReadOptions(
        block_size=block, column_names=positional, skip_rows=1), convert_options=pacsv.ConvertOptions(
        include_columns=[positional[i] for i in read], column_types={positional[i]: pa.string() for i in read},
        strings_can_be_null=False))
    last = None
    for batch in reader:
        if batch.num_rows:
            last = batch.column(str(len(names) - 1))[-1].as_py()
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        table = pa.Table.from_batches([batch.slice(skip)])
        skip = 0
        yield table.select([positional[names.index(c)] for c in wanted]).rename_columns(wanted)
    _check_quotes_closed(url, path, lines, last)


def _check_quotes_closed(url: str, path: str, lines: int, last: str | None) -> None:
    """Arrow reads a quote that is never closed as a last field running to the end of the file, and says nothing.
    Only then does the file end with that field's text (quotes doubled) right after a quote: a field that was
    closed ends with its closing quote, and an unquoted one starts after a delimiter or a line break. So the file's
    last bytes are read, as many as that text and one more (`lines` is the file's count of line breaks)."""
    if last is None:
        return
    tail = b'"' + last.replace('"', '""').encode()
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - len(tail) - 1))
        data = f.read()
    if data.endswith(tail) and not (last == "" and data.endswith(b'""')):
        line = lines - tail.count(b"\n") + 1
        raise WitError(f"{url}:{line}: malformed csv (a quote opened on this line is never closed)")


def _line_of(path: str, msg: str) -> str:
    """':N' for the 1-based line that Arrow's CSV error quotes ("...: <row text>"), or '' when it cannot tell: the
    file read again line by line (only on this error), its lines numbered as `str.splitlines` numbers them."""
    _, sep, row = msg.rpartition(": ")
    if not sep or not row:
        return ""
    hits, number = [], 0
    with open(path, "rb") as f:
        for raw in f:
            for line in raw.decode("utf-8", "replace").splitlines():
                number += 1
                if line.strip() == row.strip():
                    hits.append(number)
                    if len(hits) > 1:
                        return ""
    return f":{hits[0]}" if hits else ""


def _check_utf8(url: str, path: str) -> int:
    """The file's count of line breaks, once its text is known to be UTF-8: the first byte that is not is a
    WitError naming its line and offset. Read `COPY_CHUNK` at a time through an incremental decoder, which joins a
    character cut between two reads."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(COPY_CHUNK)
            pending = decoder.getstate()[0]  # the start of a character cut by the previous read
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                seen = pending + data
                line = lines + seen.count(b"\n", 0, err.start) + 1
                raise _not_utf8(url, line, seen[err.start], offset - len(pending) + err.start) from None
            if not data:
                return lines
            offset += len(data)
            lines += data.count(b"\n")


def _not_utf8(url: str, line: int, byte: int, offset: int) -> WitError:
    return WitError(f"{url}:{line}: text is not UTF-8 (byte {byte:#04x} at offset {offset})")


def _with_big_blocks(read, size: int):
    """Arrow parses in blocks of 1 MB and refuses a row larger than a block ("straddles two block boundaries"),
    which a long caption is: read again with one block as large as the file (which is in memory already)."""
    try:
        return read(1 << 20)
    except pa.ArrowInvalid as err:
        if "straddles" not in str(err):
            raise
    return read(min(size + 1, 2**31 - 1))


def _read_jsonl(url: str, data: bytes) -> pa.Table:
    try:
        return _with_big_blocks(lambda block: pajson.read_json(
            arrow_reader(data), read_options=pajson.ReadOptions(block_size=block)), len(data))
    except pa.ArrowInvalid as err:
        msg = str(err).splitlines()[0]  # find the first bad line, for a message that names it
    kinds: dict[str, tuple[str, int]] = {}  # column -> (JSON type, line it was first seen on)
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                raise WitError(f"{url}:{number}: malformed jsonl ({err})") from None
            for column, value in row.items():
                if value is None:
                    continue
                kind, first = kinds.setdefault(column, (_json_kind(value), number))
                if kind != _json_kind(value):
                    raise WitError(f"{url}:{number}: malformed jsonl ({column!r} is {_json_kind(value)} here but "
                                   f"{kind} on line {first}; a column keeps one type)") from None
    raise WitError(f"{url}: malformed jsonl ({msg})")


def _json_kind(value) -> str:
    """JSON's type names, as Arrow tells them apart (an integer may become a float, nothing else changes)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}[type(value)]
