"""Helpers for the ingest tests: run the real CLI, read back shards and manifests."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
FAST = ["--timeout", "2", "--processes", "2", "--threads", "8", "--no-progress"]


def wit(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m wit ...` as a user would; returns the finished process (stdout, stderr, returncode)."""
    return subprocess.run(
        [sys.executable, "-m", "wit", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def manifests(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(Path(out).glob("[0-9]*.parquet")))


def tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every tar in `out`; asserts no key appears twice."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(Path(out).glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                entry = samples.setdefault(key, {})
                assert ext not in entry, f"{key}.{ext} twice"
                entry[ext] = tar.extractfile(m).read()
    return samples
