"""Short manifest reasons that an audit can group by: from wit's own errors (`reason: detail`) and from
img2dataset's free-text ones."""
from __future__ import annotations

import re

from wit.shards.schema import REVOKED

_HTTP = re.compile(r"HTTP Error (\d{3})")

# Reasons wit's fetcher and resizer write themselves, as the first word of the error text.
OWN = frozenset({
    "ssrf_blocked", "invalid_url", "dns_error", "connection_error", "connection_reset", "tls_error", "bad_response",
    "timeout", "deadline", "too_slow", "host_unreachable", "too_large", "empty_body", "redirect_loop",
    "robots_optout", "robots_disallowed", "robots_unavailable", "tdm_reserved", "decompression_bomb",
    "unsupported_format", "decode_error", "bad_aspect", "encode_error", "download_error", REVOKED,
})
_OWN = re.compile(r"^(http_\d{3}|[a-z_]+):")

# (substring of the error text, reason), first match wins; matched case-insensitively.
_PATTERNS = (
    ("ssrf_blocked", "ssrf_blocked"),
    ("decompression_bomb", "decompression_bomb"),
    ("too_large", "too_large"),
    ("x-robots-tag", "robots_optout"),
    ("infinite loop", "redirect_loop"),
    ("unknown url type", "invalid_url"),
    ("no host given", "invalid_url"),
    ("timed out", "timeout"),
    ("connection reset", "connection_reset"),
    ("remote end closed", "connection_reset"),
    ("incompleteread", "connection_reset"),
    ("incomplete read", "connection_reset"),
    ("connection refused", "connection_error"),
    ("name or service not known", "dns_error"),
    ("temporary failure in name resolution", "dns_error"),
    ("image decoding error", "decode_error"),
    ("image too small", "too_small"),
    ("image area too large", "image_too_large"),
    ("aspect ratio too large", "bad_aspect"),  # img2dataset's words; `wit filter images` says bad_aspect too
)

# Worth another try: in the run (`--retries`, with backoff) and later (`--retry-failed`).
TRANSIENT = frozenset({"timeout", "connection_reset", "connection_error", "http_429", "too_slow", "deadline",
                       "host_unreachable", "robots_unavailable"})


def reason_for(error: str | None) -> str:
    text = (error or "").lower()
    own = _OWN.match(text)
    if own and (own.group(1) in OWN or own.group(1).startswith("http_")):
        return own.group(1)
    if m := _HTTP.search(error or ""):
        if "infinite loop" in text:
            return "redirect_loop"
        return f"http_{m.group(1)}"
    for needle, reason in _PATTERNS:
        if needle in text:
            return reason
    return "download_error"


def is_transient(reason: str | None) -> bool:
    """Failures worth another try later: timeouts, slow or unreachable hosts, 5xx, 429, dropped connections."""
    return bool(reason) and (reason in TRANSIENT or re.fullmatch(r"http_5\d\d", reason) is not None)
