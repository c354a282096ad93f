"""Progress: a tqdm bar on a terminal, plain lines (no carriage returns) in a log."""
from __future__ import annotations

import io
import os

from wit.shards.progress import Lines, bar


def test_a_log_gets_plain_lines_and_a_terminal_gets_the_bar(monkeypatch):
    monkeypatch.setenv("WIT_PROGRESS_SECONDS", "0")  # a line on every update, to see them all
    log = io.StringIO()
    with bar(total=3, desc="filter shard", unit="task", file=log) as progress:
        assert isinstance(progress, Lines)
        for _ in range(3):
            progress.set_postfix(ok=1200, failed=3)
            progress.update()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("filter shard: 1/3 tasks (33%)") and lines[0].endswith("; ok 1,200, failed 3")
    assert lines[-1].startswith("filter shard: 3/3 tasks (100%)") and "(done)" in lines[-1]

    master, slave = os.openpty()  # a real terminal
    with os.fdopen(slave, "w") as tty:
        drawn = bar(total=3, desc="x", file=tty)
        assert not isinstance(drawn, Lines)  # tqdm's bar
        drawn.close()
    os.close(master)


def test_plain_lines_come_once_a_period_and_not_for_a_short_job():
    log = io.StringIO()
    quiet = Lines(range(1000), desc="texts", unit="batch", file=log, period=3600)
    assert sum(1 for _ in quiet) == 1000
    assert log.getvalue() == ""  # shorter than a period: nothing to say, the stage's own end line says it
    every = Lines(total=5, desc="download", unit="pair", file=log, period=0)
    every.update(2)
    every.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("download: 2/5 pairs (40%)") and "(done)" in lines[1]
