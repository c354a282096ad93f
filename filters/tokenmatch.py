"""MetaCLIP's rule matched by tokens instead of characters: the same results as the automaton, several times faster.

Under `--spacing metaclip` an entry's key is " entry " and the caption's spaced text is padded, so the key occurs
in the text exactly when the entry's words (entry.split(" ")) occur as consecutive items of text.split(" "). A
batch's spaced text (filters.automaton.spaced_batch) is split once in C, each token looked up in the vocabulary of the
entries' words (arrow's dictionary encoding, then one dict look-up per distinct token), and the entries found level by level over a trie
of token ids with numpy: level 1 is a table lookup, each further level only extends the positions whose prefix
is a prefix of some entry. The caption separator " \\x00 " is a token no entry has, so no match spans two
captions. Entries this cannot express (an empty word: leading, trailing or doubled spaces; MetaCLIP 2's unpadded
keys of scripts without spaces) go to an Aho-Corasick automaton over the same text.
"""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from wit.filters.automaton import SEPARATOR, build_automaton, caption_bytes, match_captions, metaclip_bytes
from wit.filters.spacing import entry_key
from wit.shards.storage import WitError

_MATCH = np.dtype([("end", np.int64), ("id", np.int64)])


class TokenMatcher:
    """Matches a batch of captions against entries by MetaCLIP's rule; ids per caption sorted and unique."""

    def __init__(self, entries: list[str]):
        self.n_entries = len(entries)
        vocab: dict[str, int] = {}
        trie: dict[tuple[int, int], int] = {}  # (state, token) -> state; state 0 is the root
        state_entry = [-1]
        rest = []
        for i, entry in enumerate(entries):
            key = entry_key(entry, "metaclip")
            words = entry.split(" ")
            if not key:
                continue
            if "\x00" in entry or "\x01" in entry:
                raise WitError(f"query {i} {entry!r}: holds a NUL or \\x01 character; rebuild the list")
            if key != f" {entry} " or "" in words:
                rest.append(i)
                continue
            state = 0
            for w in words:
                tok = vocab.setdefault(w, len(vocab))
                nxt = trie.get((state, tok))
                if nxt is None:
                    nxt = trie[state, tok] = len(state_entry)
                    state_entry.append(-1)
                state = nxt
            if state_entry[state] >= 0:
                raise WitError(f"query {i} {entry!r}: same tokens as query {state_entry[state]}; rebuild the list")
            state_entry[state] = i
        self.sep, self.unknown = len(vocab), len(vocab) + 1  # the separator token, any other word
        # a token is looked up with the space after it (see match)
        self.lookup = {f"{w} ": i for w, i in vocab.items()} | {SEPARATOR[1:]: self.sep}
        self.state_entry = np.array(state_entry, dtype=np.int64)
        self.first = np.full(len(vocab) + 2, -1, dtype=np.int64)  # token id -> state after it (-1: none)
        deeper = {}
        for (state, tok), nxt in trie.items():
            if state == 0:
                self.first[tok] = nxt
            else:
                deeper[state * (len(vocab) + 2) + tok] = nxt
        self.keys = np.array(sorted(deeper), dtype=np.int64)
        self.next = np.array([deeper[k] for k in self.keys.tolist()], dtype=np.int64)
        self.rest_ids = np.array(rest, dtype=np.int64)
        self.rest = build_automaton([entries[i] for i in rest], "metaclip") if rest else None

    def match(self, captions: pa.Array) -> pa.ListArray:
        n = len(captions)
        # the spaced bytes " cap0 \x00 cap1 ", cut after every space: each token keeps its trailing space, so the
        # tokens are contiguous and arrow reads them in place (no decode, no split)
        b = np.concatenate(([32], metaclip_bytes(*caption_bytes(captions)), [32])).astype(np.uint8)
        cuts = np.flatnonzero(b == 32) + 1
        tokens = pa.LargeStringArray.from_buffers(len(cuts), pa.py_buffer(np.concatenate(([0], cuts)).astype(np.int64)),
                                                  pa.py_buffer(b))
        # each distinct token of the batch looked up once (arrow's index_in would rebuild its table every call)
        codes = tokens.dictionary_encode()
        ids = np.fromiter(map(self.lookup.get, codes.dictionary.to_pylist(), itertools.repeat(self.unknown)),
                          dtype=np.int64, count=len(codes.dictionary))
        tok = ids[codes.indices.to_numpy()]
        row = np.cumsum(tok == self.sep)
        found_pos, found_id = [], []
        state = self.first[tok]
        pos = np.flatnonzero(state >= 0)
        state = state[pos]
        width = self.unknown + 1
        while len(pos):
            hit = self.state_entry[state]
            found_pos.append(pos[hit >= 0])
            found_id.append(hit[hit >= 0])
            if not len(self.keys):
                break
            end = pos + (len(found_pos))  # the token after the prefix
            ok = end < len(tok)
            pos, state, end = pos[ok], state[ok], end[ok]
            key = state * width + tok[end]
            j = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
            ok = self.keys[j] == key
            pos, state = pos[ok], self.next[j[ok]]
        rows = row[np.concatenate(found_pos)] if found_pos else np.empty(0, np.int64)
        ids = np.concatenate(found_id) if found_id else np.empty(0, np.int64)
        if self.rest is not None:
            extra = match_captions(self.rest, captions, len(self.rest_ids), "metaclip")
            lens = np.diff(extra.offsets.to_numpy())
            rows = np.concatenate([rows, np.repeat(np.arange(n), lens)])
            ids = np.concatenate([ids, self.rest_ids[extra.flatten().to_numpy(zero_copy_only=False)]])
        keys = np.sort(rows * max(self.n_entries, 1) + ids)  # np.unique is far slower in numpy 2.4
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys
        rows, ids = keys // max(self.n_entries, 1), keys % max(self.n_entries, 1)
        offsets = np.searchsorted(rows, np.arange(n + 1), side="left").astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids.astype(np.int32), pa.int32()))
