"""shards.runner: items are pulled lazily and at most `in_flight` tasks are outstanding, on the process pool and on
Ray (local); both engines give the same results in item order, and an error surfaces in item order. A pool worker
killed with SIGKILL loses its tasks: they run once more, and a task lost twice stops the map in one line."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.runner_tasks import die, late, stuck, work
from wit.shards.runner import imap, run_map
from wit.shards.storage import WitError


def _jobs(folder: Path, n: int, outstanding: list[int]):
    """Jobs pulled one at a time; each pull records how many tasks were submitted and not finished."""
    folder.mkdir()
    for i in range(n):
        outstanding.append(i - sum(1 for _ in folder.glob("done-*")))
        yield str(folder), i


@pytest.fixture(params=["local", "ray"])
def engine(request):
    if request.param == "ray":
        ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'wit[ray]')")
        yield "ray"
        ray.shutdown()
    else:
        yield "local"


def test_bounded_in_flight_and_results_in_item_order(engine, tmp_path):
    outstanding: list[int] = []
    got = run_map(work, _jobs(tmp_path / "ok", 40, outstanding), engine=engine, workers=2, in_flight=4)
    assert got == [(x, x * x) for x in range(40)]
    assert len(outstanding) == 40 and max(outstanding) <= 3, outstanding  # in_flight=4: never a 5th outstanding

    outstanding = []
    with pytest.raises(KeyError, match="item 13"):
        run_map(work, _jobs(tmp_path / "fails", 40, outstanding), engine=engine, workers=2, in_flight=4)
    assert all((tmp_path / "fails" / f"done-{x}").exists() for x in range(13))  # the items before it all ran
    assert len(outstanding) < 40  # and no new item was pulled once it failed


def test_a_task_whose_worker_is_killed_runs_once_more(tmp_path, capfd):
    folder = tmp_path / "once"
    folder.mkdir()
    got = run_map(die, [(str(folder), x) for x in range(12)], workers=2, in_flight=4)
    assert got == list(range(12))  # the pool broke, was started again, and every lost task ran again
    assert (folder / "died-3").exists()
    assert capfd.readouterr().err.count("a worker process died") == 1  # one line on stderr


def test_a_task_that_kills_its_worker_twice_stops_the_map_in_one_line(tmp_path):
    folder = tmp_path / "always"
    folder.mkdir()
    with pytest.raises(WitError, match=r"^task \d+ \(.*\): lost twice, each time when a worker process died"):
        run_map(die, [(str(folder), x) for x in range(12)], workers=2, in_flight=4)
    assert (folder / "died-3").exists()  # task 3 or one lost beside it: a broken pool loses every task it held


@pytest.mark.timeout(120)
def test_a_failed_map_ends_the_tasks_still_running_instead_of_waiting_for_them(tmp_path):
    # task 1 would run for 300 s: the error of task 0 ends the map now, and task 1's worker with it
    with pytest.raises(KeyError, match="item 0"):
        run_map(stuck, [(str(tmp_path), x) for x in range(2)], workers=2)


def test_unordered_results_come_as_tasks_finish(tmp_path):
    # task 0 waits for task 5: in item order, with 4 tasks in flight, task 5 would start only after task 0 ended
    got = list(imap(late, [(str(tmp_path), x) for x in range(8)], workers=2, in_flight=4, ordered=False,
                    progress=False))
    assert got[0] != (0, 0) and sorted(got) == [(x, x * x) for x in range(8)]
