"""The worldwide matcher (MetaCLIP 2): a caption is matched against the entries of its own language only.

One matcher per language of the query list (MetaCLIP's rule: filters.tokenmatch.TokenMatcher; the ascii rule:
filters.automaton), the language of each caption from filters.languages.identify, and per batch one
vectorised scan per language present (on the captions of that language, taken out of the batch), the local ids
mapped back to the query list's ids and the lists put back in caption order. A query list with one language needs no
language identification: every caption is matched against it (MetaCLIP 1, and wit before --languages).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wit.filters import languages as langs
from wit.filters.automaton import build_automaton, match_captions
from wit.filters.tokenmatch import TokenMatcher


def _matcher(entries: list[str], spacing: str):
    """captions -> list<int32> of local ids, for one language's entries."""
    if spacing == "metaclip":
        return TokenMatcher(entries).match
    automaton = build_automaton(entries, spacing)
    return lambda captions: match_captions(automaton, captions, len(entries), spacing)


class WorldwideMatcher:
    def __init__(self, entries: list[str], entry_languages: list[str], spacing: str = "metaclip"):
        self.n_entries, self.spacing = len(entries), spacing
        order = np.array(entry_languages, dtype=object)
        self.languages = tuple(dict.fromkeys(entry_languages)) or ("en",)
        self.automata = {}
        for lang in self.languages:
            ids = np.flatnonzero(order == lang).astype(np.int32)
            self.automata[lang] = (_matcher([entries[i] for i in ids], spacing), ids)

    @property
    def worldwide(self) -> bool:
        return len(self.languages) > 1

    def identify(self, captions: pa.Array) -> pa.Array:
        if not self.worldwide:
            return pa.array([self.languages[0]] * len(captions), pa.string())
        return pa.array(langs.identify(captions.to_pylist(), self.languages), pa.string())

    def match(self, captions: pa.Array, caption_languages: pa.Array | None = None) -> tuple[pa.ListArray, pa.Array]:
        """list<int32> of matched query ids per caption (sorted, unique) and the caption languages."""
        if caption_languages is None:
            caption_languages = self.identify(captions)
        if not self.worldwide:
            automaton, ids = self.automata[self.languages[0]]
            return self._global(automaton(captions), ids), caption_languages
        n = len(captions)
        rows, values = [], []
        lang_np = np.asarray(caption_languages.to_numpy(zero_copy_only=False), dtype=object)
        for lang in self.languages:
            idx = np.flatnonzero(lang_np == lang)
            if not len(idx):
                continue
            automaton, ids = self.automata[lang]
            local = automaton(captions.take(pa.array(idx)))
            lens = pc.list_value_length(local).to_numpy(zero_copy_only=False)
            rows.append(np.repeat(idx, lens))
            values.append(ids[local.flatten().to_numpy(zero_copy_only=False)])
        rows_all = np.concatenate(rows) if rows else np.empty(0, np.int64)
        values_all = np.concatenate(values) if values else np.empty(0, np.int32)
        order = np.argsort(rows_all, kind="stable")  # a caption's ids come from one language: already sorted
        offsets = np.concatenate(([0], np.cumsum(np.bincount(rows_all, minlength=n)))).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                        pa.array(values_all[order].astype(np.int32), pa.int32())), caption_languages

    @staticmethod
    def _global(local: pa.ListArray, ids: np.ndarray) -> pa.ListArray:
        flat = local.flatten().to_numpy(zero_copy_only=False)
        return pa.ListArray.from_arrays(local.offsets, pa.array(ids[flat].astype(np.int32), pa.int32()))
