"""The global steps give the same rows as before they were rewritten out of core (expectation in tests/golden/)."""
from __future__ import annotations

import json

from tests.curate_pool import GOLDEN, make_pool, run_pipeline


def _same(got, want, where: str) -> None:
    """Equal, except that a summary may have gained keys (new figures) that the expectation does not know."""
    if isinstance(want, dict) and isinstance(got, dict):
        missing = sorted(set(want) - set(got))
        assert not missing, f"{where}: lost {missing}"
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_text_dedup_balance_and_audit_give_the_rows_they_gave_before(tmp_path):
    make_pool(tmp_path)
    got = json.loads(json.dumps(run_pipeline(tmp_path), default=str))
    want = json.loads(GOLDEN.read_text())
    for step in ("text", "dedup", "balance", "audit", "audit_corpus"):
        _same(got[step], want[step], step)
