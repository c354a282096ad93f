"""Map a pure function over items (usually one shard or list file each) with a local process pool or Ray.

The function must be importable (module level) and its result must depend only on the item, so the output is
the same whatever the engine or the number of workers. Results come back in item order. Per-worker state (an
automaton, a model) belongs in a module-level cache inside the function's module: pool and Ray workers are
long-lived processes, so it is built once per worker. Progress is a bar over the tasks (wit.shards.progress).

At 160K shards the driver must not hold every task at once: items are pulled lazily, at most `in_flight` tasks
are submitted and not yet handed back (finished results waiting for an earlier one count too), and each result is
handed to the caller as soon as the ones before it are in, so a caller that reduces results (sums counts, writes
a summary) holds a bounded window, never the whole list. Large inputs go to tasks by path (or one `ray.put`
made by the caller), never inside every item.

A pool worker that dies (`kill -9`, the kernel's out-of-memory killer) breaks the whole pool: every task then in it
is lost. The pool is started again and each lost task runs once more; a task lost twice stops the map with one
line (`WitError`). Ray retries a crashed worker's tasks itself. A map that stops early (a task's error, or its
caller stopped reading) ends the pool's tasks still running instead of waiting for them.

Ctrl-C reaches every process of the terminal's process group. Pool workers ignore it (`ignore_sigint`): the driver
alone answers, ending its workers as a map that stops early does, so the user reads the door's one line instead of
a KeyboardInterrupt traceback from every worker.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Literal, TypeVar

from wit.shards.options import opt
from wit.shards.progress import bar
from wit.shards.storage import WitError

T = TypeVar("T")
R = TypeVar("R")

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")
TASK_MEMORY = 1 << 30  # what Ray reserves per task: one shard's rows and buffers, with room to spare


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """The options every per-shard command shares: which engine maps the work, and how wide."""
    engine: str = opt("local", "per-shard work on a local process pool or on Ray", choices=ENGINES, group="engine")
    workers: int | None = opt(None, "worker processes (default: one per core)", minimum=1, group="engine")
    ray_address: str | None = opt(None, "Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray",
                                  group="engine")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_map(fn: Callable[[T], R], items: Iterable[T], *, engine: Engine = "local", workers: int | None = None,
            ray_address: str | None = None, memory: int = TASK_MEMORY, in_flight: int | None = None,
            desc: str | None = None) -> list[R]:
    """`[fn(x) for x in items]`, spread over `workers` processes (local) or a Ray cluster (ray)."""
    return list(imap(fn, items, engine=engine, workers=workers, ray_address=ray_address, memory=memory,
                     in_flight=in_flight, desc=desc))


def imap(fn: Callable[[T], R], items: Iterable[T], *, engine: Engine = "local", workers: int | None = None,
         ray_address: str | None = None, memory: int = TASK_MEMORY, in_flight: int | None = None,
         desc: str | None = None, ordered: bool = True, progress: bool = True) -> Iterator[R]:
    """`fn(x) for x in items`, in item order, each result as soon as it and the ones before it are done.

    in_flight: most tasks submitted and not yet yielded (default: twice the parallelism).
    memory: bytes Ray reserves per task (its scheduler then never packs more tasks on a node than fit).
    desc: the progress bar's label (default: the function's name).
    ordered: False yields each result as soon as it is done, so that one slow task never keeps the others waiting
    (tasks of very different lengths: a crawl's shards).
    progress: False draws no bar (a caller that draws its own).
    """
    total = len(items) if hasattr(items, "__len__") else None
    if engine == "local":
        n = min(workers or default_workers(), total if total is not None else 1 << 30)
        if n <= 1:
            results = (fn(x) for x in items)  # no pool: cheaper, and easy to debug
        else:
            results = _pool_map(fn, items, n, in_flight or 2 * n, ordered)
    elif engine == "ray":
        results = _ray_map(fn, items, workers, ray_address, memory, in_flight, ordered)
    else:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    name = desc or getattr(fn, "__name__", type(fn).__name__).replace("_", " ")  # fn may be a callable object
    return _counted(results, total, name, progress)


def _counted(results: Iterator[R], total: int | None, desc: str, show: bool = True) -> Iterator[R]:
    with bar(total=total, desc=desc, unit="task", disable=not show) as progress:
        for result in results:
            yield result
            progress.update()


class _Failed:
    """A task's exception, kept until the task's turn comes, so errors surface in item order."""

    def __init__(self, err: BaseException):
        self.err = err


class _Lost:
    """A task whose worker process died before it finished: it is run again, once."""


def _in_order(items: Iterable[T], submit, wait_any, window: int, ordered: bool = True) -> Iterator:
    """Submit lazily, keep at most `window` tasks unyielded, yield results in item order (or as they finish).

    submit(x) -> handle; wait_any(handles) -> [(handle, result or _Failed or _Lost)] for at least one finished handle.
    """
    todo = iter(items)
    running: dict = {}  # handle -> (index, item): the item is kept to run it again if its worker dies
    done: dict[int, object] = {}  # by index, or (unordered) by the order they finished
    lost: set[int] = set()
    next_in = next_out = finished = 0
    failed = exhausted = False
    while True:
        while not (exhausted or failed) and len(running) + len(done) < window:
            try:
                x = next(todo)
            except StopIteration:
                exhausted = True
                break
            running[submit(x)] = (next_in, x)
            next_in += 1
        if not running and not done:
            return
        if next_out not in done:
            for handle, result in wait_any(list(running)):
                index, x = running.pop(handle)
                if isinstance(result, _Lost):
                    running[submit(_again(index, x, lost))] = (index, x)
                    continue
                done[index if ordered else finished] = result
                finished += 1
                failed = failed or isinstance(result, _Failed)
        while next_out in done:
            result = done.pop(next_out)
            next_out += 1
            if isinstance(result, _Failed):
                raise result.err
            yield result


def _again(index: int, item, lost: set[int]):
    """The item of a task lost with a dead worker, to run once more; a second loss stops the map in one line. (A
    pool that breaks loses every task it held, so the task lost twice may be the victim, not the cause.)"""
    if index in lost:
        raise WitError(f"task {index} ({_shown(item)}): lost twice, each time when a worker process died (killed, "
                       "perhaps by the out-of-memory killer); give the workers more memory or run fewer of them")
    lost.add(index)
    return item


def _shown(item, limit: int = 120) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def ignore_sigint() -> None:
    """A pool worker's initializer: SIGINT (Ctrl-C) is the driver's to answer; it ends its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_map(fn, items, n: int, window: int, ordered: bool = True) -> Iterator:
    def wait_any(futures):
        finished, _ = wait_futures(futures, return_when=FIRST_COMPLETED)
        return [(f, _outcome(f)) for f in finished]

    pool = _Pool(n)
    finished = False
    try:
        yield from _in_order(items, lambda x: pool.submit(fn, x), wait_any, window, ordered)
        finished = True
    finally:
        pool.shutdown(abandon=not finished)


def _outcome(future):
    err = future.exception()
    if isinstance(err, BrokenProcessPool):
        return _Lost()  # a worker died: the pool failed every task it held, this one among them
    return _Failed(err) if err is not None else future.result()


class _Pool:
    """A process pool that starts afresh once a worker died: a broken ProcessPoolExecutor takes no more tasks."""

    def __init__(self, n: int):
        self.n = n
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: the caller may hold threads (pyarrow, duckdb) that fork would copy mid-lock.
        return ProcessPoolExecutor(max_workers=self.n, mp_context=get_context("spawn"), initializer=ignore_sigint)

    def submit(self, fn, x):
        try:
            return self.pool.submit(fn, x)
        except BrokenProcessPool:
            print("a worker process died (killed?): starting the pool again to run its lost tasks once more",
                  file=sys.stderr)
            self.pool.shutdown(wait=True)
            self.pool = self._start()
            return self.pool.submit(fn, x)

    def shutdown(self, abandon: bool = False) -> None:
        """Wait for the workers to exit; `abandon` (the map stopped early: an error, or its caller stopped): end the
        tasks still running instead of waiting for them (a crawl's shard takes minutes), as a kill would, which
        every task survives (they publish atomically). Their workers then exit without their interpreter's
        shutdown, where a tar stream cut off by a full disk would complain again."""
        if abandon:  # the executor's own workers (its `_processes`: no public way to end them before 3.14)
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _ray_map(fn, items, workers: int | None, address: str | None, memory: int, in_flight: int | None,
             ordered: bool = True) -> Iterator:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray  # optional dependency: only the ray engine needs it

    if not ray.is_initialized():
        # address=None starts a local Ray instance (tests, one machine); "auto" or "ray://..." joins a cluster.
        kwargs = {"num_cpus": workers} if address is None and workers else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **kwargs)
    resources = ray.cluster_resources()
    # a task asking for more memory than any node has would wait forever: ask for at most what there is
    memory = int(max(1, min(memory, resources.get("memory", memory))))
    task = ray.remote(num_cpus=1, memory=memory)(fn)

    def wait_any(refs):
        finished, _ = ray.wait(refs, num_returns=1)
        out = []
        for ref in finished:
            try:
                out.append((ref, ray.get(ref)))
            except Exception as err:  # noqa: BLE001 - re-raised in item order by _in_order
                out.append((ref, _Failed(err)))
        return out

    window = in_flight or 2 * max(1, int(resources.get("CPU", workers or 1)))
    yield from _in_order(items, task.remote, wait_any, window, ordered)
