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
