"""shards.runner: items are pulled lazily and at most `in_flight` tasks are outstanding, on the process pool and on
Ray (local); both engines give the same results in item order, and an error surfaces in item order."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.runner_tasks import work
from wit.shards.runner import run_map


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
