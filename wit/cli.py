"""`wit <command>`: one command with a subcommand per job. Each wing registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import sys

from wit.shards.storage import WitError

# Wings that contribute subcommands; each module has `register(subparsers)`.
WINGS = ["wit.ingest.cli", "wit.filters.clean_cli", "wit.filters.cli", "wit.shards.cli", "wit.trainer.cli",
         "wit.trainer.embed_cli",
         "wit.trainer.eval.cli"]


class WitParser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first); subcommands inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = WitParser(
        prog="wit",
        description="wit: crawl URL-caption lists into WebDataset shards, curate, balance and train CLIP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in WINGS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except WitError as err:
        print(f"wit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wit {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
