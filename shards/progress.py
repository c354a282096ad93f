"""Every progress display in wit: a tqdm bar on a terminal, plain periodic lines anywhere else.

A bar redraws itself with carriage returns; in a log file (CI, `make demo > log`, a scheduler's output) those
redraws pile up into one line of tens of thousands of characters. So `bar(...)` looks at the stream it would draw
on: a terminal gets tqdm, anything else gets `Lines`, which takes the same calls and prints one plain line every
`WIT_PROGRESS_SECONDS` seconds (30 by default) and a last one when it closes, if it printed any.
"""
from __future__ import annotations

import os
import sys
import threading
import time

PERIOD_ENV = "WIT_PROGRESS_SECONDS"


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
        disable: bool = False, file=None):
    """A progress display over `iterable` or up to `total`: tqdm on a terminal, plain lines otherwise.
    It is drawn on `file` (stderr by default); `write` puts a line on stdout, as tqdm's does."""
    stream = file or sys.stderr
    if is_terminal(stream) and not disable:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True)
    return Lines(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=stream)


class Lines:
    """tqdm's calls (update, set_postfix, write, close, iteration, `with`) as plain lines, one per period."""

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, file=None, period: float | None = None):
        self.iterable = iterable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.file = file or sys.stderr
        self.period = float(os.environ.get(PERIOD_ENV, 30)) if period is None else period
        self.n = self.initial = initial
        self.postfix = ""
        self.printed = False
        self.closed = False
        self.started = self.last = time.monotonic()
        self._lock = threading.Lock()  # download's bar is fed by a polling thread

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = time.monotonic()
            if now - self.last >= self.period:
                self.last = now
                self._print(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in items.items())

    def write(self, line: str, file=None) -> None:
        print(line, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.printed:  # the last figures, so the log ends at 100% and not at the last period
                self._print(time.monotonic(), done=True)

    def line(self, now: float, done: bool = False) -> str:
        elapsed = now - self.started
        of = f"/{self.total:,}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {self.n:,}{of} {_plural(self.unit)}{pct}, {_duration(elapsed)}"
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if done:
            text += " (done)"
        elif self.total and rate > 0:
            text += f", about {_duration((self.total - self.n) / rate)} left"
        return text + (f"; {self.postfix}" if self.postfix else "")

    def _print(self, now: float, done: bool = False) -> None:
        if self.disable:
            return
        self.printed = True
        print(self.line(now, done), file=self.file, flush=True)


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"
