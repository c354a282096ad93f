"""`wit <command>`: one command with a subcommand per job. Each wing registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from wit.shards.storage import WitError

# Modules that contribute subcommands, each with `register(subparsers)`: the wings', then the door's own pipeline.
WINGS = ["wit.ingest.cli", "wit.filters.clean_cli", "wit.filters.cli", "wit.shards.cli", "wit.trainer.cli",
         "wit.trainer.embed_cli", "wit.trainer.eval.cli", "wit.pipeline", "wit.revoke"]


class WitParser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first); subcommands inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The wing of each command: a command is parsed with its own wing alone, since importing every wing's configs loads
# torch and matplotlib (seconds) before, say, a crawl can start.
COMMANDS = {"download": "wit.ingest.cli", "filter": "wit.filters.clean_cli", "dedup": "wit.filters.clean_cli",
            "queries": "wit.filters.cli", "curate": "wit.filters.cli", "shards": "wit.shards.cli",
            "audit": "wit.shards.cli", "train": "wit.trainer.cli", "eval": "wit.trainer.eval.cli",
            "pipeline": "wit.pipeline", "dedup-semantic": "wit.filters.clean_cli", "embed": "wit.trainer.embed_cli",
            "revoke": "wit.revoke"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (given a command) just what that command needs."""
    parser = WitParser(
        prog="wit",
        description="wit: crawl URL-caption lists into WebDataset shards, curate, balance and train CLIP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [COMMANDS[command]] if command in COMMANDS else WINGS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except WitError as err:
        print(f"wit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wit {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `wit ... | head`: the reader has gone, and so has anyone to tell
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot raise again
        return 141  # what a shell reports for a process ended by SIGPIPE
