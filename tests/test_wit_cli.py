"""The `wit` door: every command's --help explains each option, with a default only where there is one."""
from __future__ import annotations

import argparse
import re

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
    from wit.cli import COMMANDS, WINGS

    def commands(parser):
        return {path[0] for path, _ in _all_parsers(parser) if len(path) == 1}

    assert commands(build_parser()) == set(COMMANDS) and set(COMMANDS.values()) <= set(WINGS)
    for command, wing in COMMANDS.items():
        assert command in commands(build_parser(command))


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, image_server):
    """`wit download ... | head -2`: the crawl's later lines meet a closed pipe; no traceback, the SIGPIPE status."""
    import os
    import subprocess
    import sys

    from tests.conftest import write_csv

    names = sorted(image_server.images)[:4]
    rows = [(f"{image_server.url}/img/{n}", f"a photo {i}") for i, n in enumerate(names * 5)]
    rows.append((f"{image_server.url}/slow/{names[0]}", "a slow photo"))  # seconds: the reader is gone by its end
    write_csv(tmp_path / "l.csv", rows)
    proc = subprocess.Popen([sys.executable, "-m", "wit", "download", str(tmp_path / "l.csv"), "--out",
                             str(tmp_path / "out"), "--allow-net", "127.0.0.1/32", "--processes", "1",
                             "--shard-size", "5", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = proc.stdout.readline()  # the plan's first line comes before any shard is fetched
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and first.startswith(b"output"), (first, err)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
