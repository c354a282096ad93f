"""A task for the runner tests, importable by name in pool and Ray workers (`tests.runner_tasks.work`)."""
from __future__ import annotations

import time
from pathlib import Path


def work(job: tuple[str, int]) -> tuple[int, int]:
    """Square x, after a short sleep that makes tasks finish out of order; leaves `done-<x>` behind; x = 13 fails in
    a folder named `fails`."""
    folder, x = job
    if x == 13 and folder.endswith("fails"):
        raise KeyError(f"item {x}")
    time.sleep(0.01 * (x % 3))
    Path(folder, f"done-{x}").write_text("")
    return x, x * x
