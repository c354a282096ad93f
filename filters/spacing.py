"""MetaCLIP's spacing rule, the one definition of a "whole token" that queries and captions share.

Every ASCII punctuation character gets a space on each side, every run of whitespace becomes one space, and the
text is padded with a space at each end. An entry then matches a caption when " entry " occurs in " caption ":
`cat` matches "a cat." but not "category"; the entry "e-mail" matches "e-mail" and "e - mail", not "e mail".
This module is the definition (Python regexes, used for entries and as the reference); filters.match has a
vectorised version of the same rule for batches of captions, and the tests check that the two agree.
"""
from __future__ import annotations

import re
import string

# Whitespace: what str.isspace() accepts, plus NUL (the batch matcher uses NUL to separate captions).
WS_CHARS = "\x00" + "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
WS_PATTERN = "[" + "".join(re.escape(ch) if ch in "\\]^-" else ch for ch in WS_CHARS) + "]+"
PUNCT_PATTERN = "([" + "".join("\\" + ch for ch in string.punctuation) + "])"

_ws = re.compile(WS_PATTERN)
_punct = re.compile(PUNCT_PATTERN)


def space(text: str) -> str:
    """The spaced, padded form of one text: ' a cat . '."""
    return " " + _ws.sub(" ", _punct.sub(r" \1 ", text)).strip(" ") + " "

