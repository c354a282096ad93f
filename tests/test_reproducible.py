"""Outputs the README calls reproducible are the same bytes on every machine: the float values the curation
writes (a pair's keep probability, a caption's language probability) do not depend on which SIMD or BLAS kernels
the CPU runs. Each case runs in fresh processes with numpy's dispatched SIMD turned off and OpenBLAS pinned to an
older core type, and must print the digest the default process prints."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = r"""
import hashlib, sys
import numpy as np, pyarrow as pa
sys.path.insert(0, sys.argv[1])
from tests.curate_pool import FOREIGN, WORDS
from wit.filters.balance import entry_probabilities, keep_probabilities
from wit.filters.text import identify_batch

rng = np.random.default_rng(0)
p = entry_probabilities(rng.integers(1, 5000, 2000), 40)
matched = pa.array([sorted(set(rng.integers(0, 2000, int(rng.integers(0, 30))).tolist())) for _ in range(5000)],
                   pa.list_(pa.int32()))
captions = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(1500)] + FOREIGN * 10
probs = np.array([prob for _, prob in identify_batch(captions)], np.float32)
print(hashlib.sha256(keep_probabilities(matched, p).tobytes()).hexdigest(), hashlib.sha256(probs.tobytes()).hexdigest())
"""


def _digests(env_extra: dict[str, str]) -> list[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE")}
    r = subprocess.run([sys.executable, "-c", _PROBE, root], env=env | env_extra, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split()


def _dispatched() -> str:
    """numpy's SIMD levels above its compiled baseline that this CPU has (the ones it dispatches to at run time)."""
    from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__

    return " ".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f) and f not in __cpu_baseline__)


def test_curation_floats_are_the_same_bytes_whatever_kernels_the_cpu_runs():
    simd = _dispatched()
    if not simd:
        pytest.skip("this CPU has no SIMD level above numpy's baseline, so there is no second kernel to compare with")
    want = _digests({})
    assert _digests({"NPY_DISABLE_CPU_FEATURES": simd, "OPENBLAS_CORETYPE": "Nehalem"}) == want
    assert _digests({"OPENBLAS_CORETYPE": "Haswell"}) == want
