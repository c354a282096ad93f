"""Map a pure function over items (usually one shard or list file each) with a local process pool or Ray.

The function must be importable (module level) and its result must depend only on the item, so the output is
the same whatever the engine or the number of workers. Results come back in item order. Per-worker state (an
automaton, a model) belongs in a module-level cache inside the function's module: pool and Ray workers are
long-lived processes, so it is built once per worker.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Literal, TypeVar

from wit.shards.options import opt

T = TypeVar("T")
R = TypeVar("R")

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """The options every per-shard command shares: which engine maps the work, and how wide."""
    engine: str = opt("local", "per-shard work on a local process pool or on Ray", choices=ENGINES, group="engine")
    workers: int | None = opt(None, "worker processes (default: one per core)", minimum=1, group="engine")
    ray_address: str | None = opt(None, "Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray",
                                  group="engine")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    engine: Engine = "local",
    workers: int | None = None,
    ray_address: str | None = None,
) -> list[R]:
    """`[fn(x) for x in items]`, spread over `workers` processes (local) or a Ray cluster (ray)."""
    todo: Sequence[T] = list(items)
    if engine == "local":
        n = min(workers or default_workers(), len(todo))
        if n <= 1:
            return [fn(x) for x in todo]  # no pool: cheaper, and easy to debug
        # spawn, not fork: the caller may hold threads (pyarrow, duckdb) that fork would copy mid-lock.
        with ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn")) as pool:
            return list(pool.map(fn, todo, chunksize=1))
    if engine == "ray":
        return _run_ray(fn, todo, workers, ray_address)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def _run_ray(fn: Callable[[T], R], todo: Sequence[T], workers: int | None, address: str | None) -> list[R]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray  # optional dependency: only the ray engine needs it

    if not ray.is_initialized():
        # address=None starts a local Ray instance (tests, one machine); "auto" or "ray://..." joins a cluster.
        kwargs = {"num_cpus": workers} if address is None and workers else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **kwargs)
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(x) for x in todo])
