"""The `wit` door: every command's --help explains each option, with a default only where there is one."""
from __future__ import annotations

import argparse
import re
import signal

from wit.cli import build_parser


def _all_parsers(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, path + (name,))


def test_every_option_has_help_and_no_empty_defaults():
    commands = 0
    for path, parser in _all_parsers(build_parser()):
        text = parser.format_help()
        assert not re.search(r"\(default: (None|\[\]|False|)\)", text), (path, text)
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, (path, action.option_strings)  # no option without an explanation
        commands += 1
    assert commands >= 15
    train = build_parser().parse_args(["train"])  # a zero default is still shown
    assert train.seed == 0 and "(default: 0)" in " ".join(dict(_all_parsers(build_parser()))[("train",)]
                                                          .format_help().split())



def test_each_command_is_parsed_by_its_own_wing_alone():
    import json
    import subprocess
    import sys

    from wit.commands import COMMANDS

    def commands(parser):
        return {path[0] for path, _ in _all_parsers(parser) if len(path) == 1}

    words = {c.words.split()[0] for c in COMMANDS.values()}  # every command is declared once, in wit/commands.py
    assert commands(build_parser()) == words
    for command in words:
        assert commands(build_parser(command)) == {command}
    # a fresh `wit <command>` imports its own wing's modules and the ground floor's, no other wing's (nor torch)
    loaded = ("import json, sys; from wit.cli import build_parser; build_parser(sys.argv[1]); "
              "print(json.dumps([sorted({m.split('.')[1] for m in sys.modules if m.startswith('wit.')}), "
              "'torch' in sys.modules]))")
    for command, wing in (("download", "ingest"), ("dedup", "filters"), ("audit", "shards"), ("train", "trainer")):
        out = subprocess.run([sys.executable, "-c", loaded, command], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == [sorted({"cli", "commands", "shards", wing}), False], command


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, image_server):
    """`wit download ... | true`: the crawl's first line (its plan) meets a pipe whose reader has gone; the command
    ends there, as a writer to a closed pipe does, with no traceback and the SIGPIPE status. (The reader leaves before
    the interpreter has even imported wit, so no line can slip into the pipe's buffer first.)"""
    import os
    import subprocess
    import sys

    from tests.conftest import write_csv

    names = sorted(image_server.images)[:4]
    rows = [(f"{image_server.url}/img/{n}", f"a photo {i}") for i, n in enumerate(names * 5)]
    write_csv(tmp_path / "l.csv", rows)
    proc = subprocess.Popen([sys.executable, "-m", "wit", "download", str(tmp_path / "l.csv"), "--out",
                             str(tmp_path / "out"), "--allow-net", "127.0.0.1/32", "--processes", "1",
                             "--shard-size", "5", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.stdout.close()  # the reader is gone before the interpreter has even imported wit
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def _pool_workers(pid: int) -> list[int]:
    """The multiprocessing workers under a process (its descendants that multiprocessing spawned), from /proc."""
    from pathlib import Path

    parent = {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):  # a process that ended while we looked
            continue
    found, todo = [], [pid]
    while todo:
        under = todo.pop()
        kids = [p for p, pp in parent.items() if pp == under]
        todo += kids
        found += [p for p in kids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return found


def _ignores_sigint(pid: int) -> bool:
    from pathlib import Path

    mask = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_is_one_line_while_pool_workers_run(tmp_path, image_server):
    """Ctrl-C sends SIGINT to the whole process group: the pool's workers ignore it and the driver ends them, so the
    user reads the one line that says what to do, not a KeyboardInterrupt traceback per worker (which the driver,
    ending them at once, cut short only some of the time)."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import write_csv

    names = sorted(image_server.images)[:4]
    fast = [(f"{image_server.url}/img/{n}", f"a photo {n}") for n in names]
    slow = [(f"{image_server.url}/slow/{n}", f"a slow photo {n}") for n in names]
    write_csv(tmp_path / "l.csv", fast + slow)  # shard 0 comes back at once, shard 1 after seconds
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "wit", "download", str(tmp_path / "l.csv"), "--out", str(out),
                             "--allow-net", "127.0.0.1/32", "--processes", "2", "--shard-size", "4", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    while not list(out.glob("*_stats.json")) and proc.poll() is None:  # shard 0 is done, shard 1 is fetching
        time.sleep(0.05)
    workers = _pool_workers(proc.pid)
    assert len(workers) == 2 and all(_ignores_sigint(w) for w in workers), workers
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.decode().splitlines() == ["wit download: interrupted; run the same command again to resume"]
