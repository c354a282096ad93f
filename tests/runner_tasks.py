"""A task for the runner tests, importable by name in pool and Ray workers (`tests.runner_tasks.work`)."""
from __future__ import annotations

import os
import signal
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


def die(job: tuple[str, int]) -> int:
    """Return x, except that x = 3 kills its own worker process with SIGKILL (as the out-of-memory killer does): the
    first time only in a folder named `once` (it leaves `died-3` behind), every time elsewhere."""
    folder, x = job
    marker = Path(folder, f"died-{x}")
    if x == 3 and not (folder.endswith("once") and marker.exists()):
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01 * (x % 3))
    return x


def late(job: tuple[str, int]) -> tuple[int, int]:
    """`work`, except that x = 0 first waits (up to 60 s) for x = 5 to be done."""
    folder, x = job
    for _ in range(600):
        if x != 0 or Path(folder, "done-5").exists():
            break
        time.sleep(0.1)
    return work(job)


def stuck(job: tuple[str, int]) -> int:
    """x = 0 fails at once; every other x waits (up to 300 s) for a `go` file that nobody writes."""
    folder, x = job
    if x == 0:
        raise KeyError("item 0")
    for _ in range(3000):
        if Path(folder, "go").exists():
            break
        time.sleep(0.1)
    return x
