"""Captions against entries with one Aho-Corasick automaton: whole tokens, in one C-level pass per batch of captions.

One automaton (pyahocorasick) over the entries' keys (filters.spacing: " entry " under MetaCLIP's rule, the default,
or the entry spaced by the ascii rule), built once per worker process.
Speed comes from batching, not from a cleverer automaton: a batch of captions is spaced with numpy on its UTF-8
bytes (straight from the arrow buffer), as one string with a NUL token between captions (no entry contains
one, so no match spans two captions), and scanned by one `iter` call consumed in C (`np.fromiter`). The NUL
token is itself a key, so its matches mark where each caption's ids end. Per caption, ids are sorted, unique.
filters.tokenmatch and filters.worldwide build on it; filters.match runs them over files.
"""
from __future__ import annotations

import pickle
import string

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.filters.spacing import METACLIP_BLANKS, METACLIP_MARKS, WS_CHARS, entry_key
from wit.shards.storage import WitError

_MATCH = np.dtype([("end", np.int64), ("id", np.int64)])  # one (end, id) tuple from iter


def build_automaton(entries: list[str], spacing: str = "metaclip") -> ahocorasick.Automaton:
    """Keys are the entries' keys under the spacing rule; values are the query ids. Duplicate keys would hide an
    id: refuse them. NUL separates captions in a batch: an entry holding it is refused.

    One more key, " \\x00 " with value len(entries), marks the boundary between two captions in a batch.
    Keys go in in id order; query lists put frequent entries first, which keeps their nodes and edges early.
    """
    automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
    for i, entry in enumerate(entries):
        if "\x00" in entry or "\x01" in entry:
            raise WitError(f"query {i} {entry!r}: holds a NUL or \\x01 character; rebuild the list")
        key = entry_key(entry, spacing)
        if key:
            if key in automaton:
                raise WitError(f"query {i} {entry!r}: same tokens as query {automaton.get(key)}; rebuild the list")
            automaton.add_word(key, i)
    automaton.add_word(SEPARATOR, len(entries))
    automaton.make_automaton()
    # A pickle round trip re-allocates the trie's nodes in traversal order, packed together: the scan then
    # misses the CPU cache less (about 20% faster), for a few seconds once per worker.
    return pickle.loads(pickle.dumps(automaton, protocol=pickle.HIGHEST_PROTOCOL))


# Byte tables for the vectorised spacing rule (filters.spacing is the definition). ASCII bytes never occur
# inside a multi-byte UTF-8 sequence, so the rule can work on UTF-8 bytes directly. bytes.translate applies a
# table several times faster than numpy fancy indexing.
SEPARATOR = " \x00 "  # between two captions of a batch: NUL is whitespace inside captions, so only we write it
_TO_SPACE = bytes(32 if i < 0x80 and chr(i) in WS_CHARS else i for i in range(256))  # ASCII whitespace and NUL -> space
_IS_PUNCT = bytes(int(chr(i) in string.punctuation or i == 0) for i in range(256))  # NUL: our separator
_WIDE = [ch.encode() for ch in WS_CHARS if ord(ch) >= 0x80]  # 2 or 3 bytes each
_IS_WIDE_LEAD = bytes(int(any(w[0] == i for w in _WIDE)) for i in range(256))
_WIDE_CODES = np.array(sorted(int.from_bytes(w.ljust(3, b"\0"), "big") for w in _WIDE), dtype=np.int64)


def _flags(raw: bytes, table: bytes) -> np.ndarray:
    return np.frombuffer(raw.translate(table), dtype=bool)


def _blank_wide_spaces(raw: bytes) -> np.ndarray:
    """The bytes with every byte of a non-ASCII whitespace character (e.g. U+00A0) turned into a space."""
    b = np.frombuffer(raw, dtype=np.uint8)
    lead = np.flatnonzero(_flags(raw, _IS_WIDE_LEAD))
    if not len(lead):
        return b
    last = len(b) - 1
    b0 = b[lead].astype(np.int64)
    three = (b0 << 16) | (b[np.minimum(lead + 1, last)].astype(np.int64) << 8) | b[np.minimum(lead + 2, last)]
    two = three & 0xFFFF00  # 2-byte characters, written with a zero third byte in _WIDE_CODES
    hits = [(lead[np.isin(code, _WIDE_CODES) & ((b0 >= 0xE0) == (n == 3))], n) for code, n in ((three, 3), (two, 2))]
    if sum(len(h) for h, _ in hits):
        b = b.copy()
        for hit, n in hits:
            for k in range(n):
                b[hit + k] = 32
    return b


# MetaCLIP's rule: tab, newline, CR -> space; a NUL inside a caption -> \x01 (no entry holds either, so no key
# matches differently), which leaves NUL to the separator; only the seven marks (and the separator) are spaced.
_METACLIP_BLANK = bytes(32 if chr(i) in METACLIP_BLANKS else 1 if i == 0 else i for i in range(256))
_METACLIP_PUNCT = bytes(int(chr(i) in METACLIP_MARKS or i == 0) for i in range(256))


def spaced_batch(captions: pa.Array, spacing: str = "metaclip") -> str:
    """The spaced captions as one string: " cap0 \x00 cap1 \x00 ... capN "."""
    data, offsets = caption_bytes(captions)
    if spacing == "metaclip":
        return " " + metaclip_bytes(data, offsets).tobytes().decode("utf-8") + " "
    b = np.insert(_blank_wide_spaces(data.tobytes().translate(_TO_SPACE)), offsets[1:-1] - offsets[0], 0)
    out = _wrap(b, _flags(b.tobytes(), _IS_PUNCT))
    is_space = out == 32
    keep = np.ones(len(out), dtype=bool)
    np.logical_not(is_space[1:] & is_space[:-1], out=keep[1:])  # collapse runs of spaces
    return " " + out[keep].tobytes().decode("utf-8") + " "


def metaclip_bytes(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """MetaCLIP's rule on a batch's UTF-8 bytes (captions at offsets), NUL between captions, not padded."""
    b = np.insert(np.frombuffer(data.tobytes().translate(_METACLIP_BLANK), np.uint8), offsets[1:-1] - offsets[0], 0)
    return _wrap(b, _flags(b.tobytes(), _METACLIP_PUNCT))


def caption_bytes(captions: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A batch's UTF-8 bytes and offsets, straight from the arrow buffers (null -> empty)."""
    arr = pc.fill_null(captions.cast(pa.large_string()), "")
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]] if data_buf else np.empty(0, np.uint8)
    return data, offsets


def _wrap(b: np.ndarray, punct: np.ndarray) -> np.ndarray:
    """The bytes with a space on each side of every flagged byte."""
    out = np.repeat(b, 1 + 2 * punct.view(np.uint8))  # each punctuation byte three times ...
    first = np.flatnonzero(punct)
    first += 2 * np.arange(len(first))  # ... at its old place plus 2 per earlier punctuation byte
    out[first] = 32  # ... and the outer two become spaces
    out[first + 2] = 32
    return out


def match_captions(automaton: ahocorasick.Automaton, captions: pa.Array, n_entries: int,
                   spacing: str = "metaclip") -> pa.ListArray:
    """list<int32> of matched query ids per caption, sorted and unique (null caption -> empty list)."""
    n = len(captions)
    if n == 0 or n_entries == 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int32()))
    # One C-level pass: iter yields (end, id) in text order; only the ids are kept. Separator matches
    # (id n_entries) count the captions, so the ids need no position arithmetic to find their caption.
    values = np.fromiter(automaton.iter(spaced_batch(captions, spacing)), dtype=_MATCH)["id"]
    is_sep = values == n_entries
    rows = np.cumsum(is_sep)[~is_sep]
    keys = np.sort(rows * n_entries + values[~is_sep])  # by row then id (np.unique is far slower in numpy 2.4)
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys  # drop repeats
    rows, ids = keys // n_entries, keys % n_entries
    offsets = np.searchsorted(rows, np.arange(n + 1), side="left").astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids.astype(np.int32), pa.int32()))
