"""Read URL-caption lists (parquet, csv, tsv, jsonl, txt; local, s3://, https://) into wit's input schema.

File-level problems (missing file, empty list, no URL column, bad encoding) raise WitError naming the file and
line. Row-level problems (a malformed URL) stay in the data as an `invalid` reason: the row is recorded in the
manifest as failed instead of stopping the crawl.
"""
from __future__ import annotations

import json
from collections import Counter
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from wit.shards.schema import INPUT, pair_uid, row_uids
from wit.shards.storage import WitError, expand, fs_and_path
from wit.shards.tables import arrow_reader

FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt")
URL_COLUMNS = ("url", "URL", "image_url", "img_url", "link")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt", "ALT", "alt_text", "title")
MAX_URL_LENGTH = 2048


def find_lists(patterns: list[str]) -> list[str]:
    """Expand brace patterns and directories into list files, each checked to exist."""
    files: list[str] = []
    for pattern in patterns:
        for url in expand(pattern):
            fs, path = fs_and_path(url)
            try:
                if fs.isdir(path):
                    found = sorted(p for p in fs.find(path) if list_format(p, strict=False))
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
    return files


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
    fmt = fmt or list_format(url)
    table = _read_table(url, fmt)
    if table.num_rows == 0:
        raise WitError(f"{url}: the list is empty")
    ucol = _pick_column(url, table, url_col, URL_COLUMNS, "URL", "--url-col")
    ccol = None if fmt == "txt" else _pick_column(url, table, caption_col, CAPTION_COLUMNS, "caption", "--caption-col")
    urls = text_values(table.column(ucol))
    captions = [""] * len(urls) if ccol is None else text_values(table.column(ccol))
    return pa.table(
        {
            "uid": row_uids(zip(urls, captions), seen) if number_repeats else list(map(pair_uid, urls, captions)),
            "url": urls,
            "caption": captions,
            "source_file": [url] * len(urls),
            "source_row": list(range(len(urls))),
            "invalid": [url_problem(u) for u in urls],
        },
        schema=INPUT,
    )


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


def _pick_column(url, table, given, candidates, what, flag) -> str:
    names = table.column_names
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


def _read_table(url: str, fmt: str) -> pa.Table:
    fs, path = fs_and_path(url)
    compression = "gzip" if url.lower().endswith(".gz") else None
    try:
        with fs.open(path, "rb", compression=compression) as f:
            data = f.read()
    except FileNotFoundError:
        raise WitError(f"{url}: no such file") from None
    except Exception as err:
        raise WitError(f"{url}: cannot read ({type(err).__name__}: {err})") from None
    try:
        if fmt == "parquet":
            return pq.read_table(arrow_reader(data))
        _check_utf8(url, data)
        if fmt == "jsonl":
            return _read_jsonl(url, data)
        if fmt == "txt":
            lines = data.decode("utf-8").splitlines()
            return pa.table({"url": [line.strip() for line in lines if line.strip()]})
        return _read_csv(url, data, "\t" if fmt == "tsv" else ",")
    except WitError:
        raise
    except pa.ArrowInvalid as err:
        msg = str(err).splitlines()[0]
        if "Empty CSV file" in msg:
            raise WitError(f"{url}: the list is empty") from None
        raise WitError(f"{url}{_line_of(data, msg)}: malformed {fmt} ({msg})") from None


def _read_csv(url: str, data: bytes, delimiter: str) -> pa.Table:
    table = _with_big_blocks(lambda block: pacsv.read_csv(
        arrow_reader(data), read_options=pacsv.ReadOptions(block_size=block),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False, column_types=None),
    ), len(data))
    _check_quotes_closed(url, data, table)
    return table


def _with_big_blocks(read, size: int):
    """Arrow parses in blocks of 1 MB and refuses a row larger than a block ("straddles two block boundaries"),
    which a long caption is: read again with one block as large as the file (which is in memory already)."""
    try:
        return read(1 << 20)
    except pa.ArrowInvalid as err:
        if "straddles" not in str(err):
            raise
    return read(min(size + 1, 2**31 - 1))


def _check_quotes_closed(url: str, data: bytes, table: pa.Table) -> None:
    """Arrow reads a quote that is never closed as a last field running to the end of the file, and says nothing.
    Only then does the file end with that field's text (quotes doubled) right after a quote: a field that was
    closed ends with its closing quote, and an unquoted one starts after a delimiter or a line break."""
    if not table.num_rows or not pa.types.is_string(table.schema.field(table.num_columns - 1).type):
        return
    last = table.column(table.num_columns - 1)[-1].as_py()
    if last is None:
        return
    tail = b'"' + last.replace('"', '""').encode()
    if data.endswith(tail) and not (last == "" and data.endswith(b'""')):
        line = data.count(b"\n", 0, len(data) - len(tail)) + 1
        raise WitError(f"{url}:{line}: malformed csv (a quote opened on this line is never closed)")


def _line_of(data: bytes, msg: str) -> str:
    """':N' for the 1-based line that Arrow's CSV error quotes ("...: <row text>"), or '' when it cannot tell."""
    _, sep, row = msg.rpartition(": ")
    if not sep or not row:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    hits = [i for i, line in enumerate(lines) if line.strip() == row.strip()]
    return f":{hits[0] + 1}" if len(hits) == 1 else ""


def _check_utf8(url: str, data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise WitError(f"{url}:{line}: text is not UTF-8 (byte {data[err.start]:#04x} at offset {err.start})") from None


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
