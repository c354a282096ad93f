"""The spacing rules: the one definition of a "whole token" that queries and captions share.

An entry matches a caption when its key occurs in the spaced caption. Two rules:

- `metaclip` (the default of `wit curate match`) is MetaCLIP's own, as its released code writes it
  (facebookresearch/MetaCLIP, metaclip/metaclip1/substr_matching.py and metaclip/curation/substr_matching.py,
  `spacing` and `substr_matching`): the text is padded with one space at each end, each of the seven marks
  , . ; : ? ! ` gets a space on each side, tab, newline and carriage return become spaces; nothing else changes
  (runs of spaces stay, other punctuation and other whitespace stay, case stays). An entry's key is " entry ",
  not spaced: an entry that holds one of the seven marks can never match (MetaCLIP's behaviour, kept).
- `ascii` (wit's earlier rule): every ASCII punctuation character is spaced, every run of whitespace (what
  str.isspace() accepts) becomes one space, the text is padded; an entry's key is the entry spaced the same way.
  `cat` matches "a cat." but not "category"; "e-mail" matches "e-mail" and "e - mail".

For scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Burmese, Tibetan) the metaclip rule takes
MetaCLIP 2's unpadded keys (metaclip/curation/substr_matching.py, `get_spaced_metadata`): an entry whose first
(last) character is of such a script, or punctuation, gets no space on that side, so it matches inside a run of
text; an entry with no such character keeps MetaCLIP 1's key exactly. The ascii rule stays as it was. This module is the definition (plain Python, used for entries and as the reference); filters.match has a
vectorised version of the same rules for batches of captions, and the tests check that they agree.
"""
from __future__ import annotations

import re
import string

RULES = ("metaclip", "ascii")
METACLIP_MARKS = ",.;:?!`"
METACLIP_BLANKS = "\t\n\r"

# Whitespace: what str.isspace() accepts, plus NUL (the batch matcher uses NUL to separate captions).
WS_CHARS = "\x00" + "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
WS_PATTERN = "[" + "".join(re.escape(ch) if ch in "\\]^-" else ch for ch in WS_CHARS) + "]+"
PUNCT_PATTERN = "([" + "".join("\\" + ch for ch in string.punctuation) + "])"

_ws = re.compile(WS_PATTERN)
_punct = re.compile(PUNCT_PATTERN)
# MetaCLIP 2's no-space scripts (code point ranges as its released curation code lists them) and the
# full-width punctuation it adds to string.punctuation.
_UNSPACED_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2FFF),
                    (0x3040, 0x30FF),  # Japanese kana (wit's addition: Japanese entries are often kana)
                    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF))
_WIDE_PUNCT = set("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")


def space(text: str) -> str:
    """The ascii rule's spaced, padded form of one text: ' a cat . '."""
    return " " + _ws.sub(" ", _punct.sub(r" \1 ", text)).strip(" ") + " "


def space_metaclip(text: str) -> str:
    """MetaCLIP's spaced form of one text: ' a cat . ' (runs of spaces kept)."""
    out = f" {text} "
    for mark in METACLIP_MARKS:
        out = out.replace(mark, f" {mark} ")
    for blank in METACLIP_BLANKS:
        out = out.replace(blank, " ")
    return out


def is_unspaced(ch: str) -> bool:
    """A character of a script written without spaces, or punctuation: MetaCLIP 2 pads no key next to it."""
    c = ord(ch)
    return any(lo <= c <= hi for lo, hi in _UNSPACED_RANGES) or ch in string.punctuation or ch in _WIDE_PUNCT


def entry_key(entry: str, rule: str) -> str:
    """The string an entry is looked up as in a spaced caption ("" for an entry that can never match)."""
    if rule == "ascii":
        key = space(entry)
        return key if key.strip() else ""
    if rule != "metaclip":
        raise ValueError(f"unknown spacing rule {rule!r}; choose from {', '.join(RULES)}")
    if not entry:
        return ""
    if not any(is_unspaced(ch) and ch not in string.punctuation for ch in entry):
        return f" {entry} "  # "U.S." keeps MetaCLIP 1's padding; only entries in a no-space script lose it
    return ("" if is_unspaced(entry[0]) else " ") + entry + ("" if is_unspaced(entry[-1]) else " ")


def space_caption(text: str, rule: str) -> str:
    return space(text) if rule == "ascii" else space_metaclip(text)
