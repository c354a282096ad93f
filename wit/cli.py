"""`wit <command>`: one command with a subcommand per job, the parsers built from wit/commands.py's list."""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys

from wit.commands import COMMANDS, GROUPS, Command, load
from wit.shards.options import DefaultsHelp, add_arguments, from_args, to_argv
from wit.shards.storage import WitError


class WitParser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first); subcommands inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class RawDefaultsHelp(argparse.RawDescriptionHelpFormatter, DefaultsHelp):
    """A description or epilog shown as written (examples, tables), with DefaultsHelp's defaults."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (given a command's first word) just that command's parsers: each command's config
    is imported to build its options, and the wings' configs together load torch and matplotlib (seconds before,
    say, a crawl can start)."""
    parser = WitParser(
        prog="wit",
        description="wit: crawl URL-caption lists into WebDataset shards, curate, balance and train CLIP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    known = {c.words.split()[0] for c in COMMANDS.values()}
    for c in COMMANDS.values():
        if command in known and c.words.split()[0] != command:
            continue
        *group, word = c.words.split()
        target = _group(sub, groups, group[0]) if group else sub
        add_command(target, word, c)
    return parser


def _group(sub, groups: dict, word: str):
    """The subparsers of a group word (`filter`, `eval`), made on first use."""
    if word not in groups:
        g = GROUPS[word]
        p = sub.add_parser(word, help=g.help, description=g.description, epilog=g.epilog,
                           formatter_class=RawDefaultsHelp)
        groups[word] = p.add_subparsers(dest=f"{word}_command", metavar=g.metavar, required=True)
    return groups[word]


def add_command(sub, word: str, c: Command) -> None:
    p = sub.add_parser(word, help=c.help, description=c.description, formatter_class=DefaultsHelp)
    if c.config is None:
        load(c.arguments)(p)
    else:
        if c.torchrun:
            p.add_argument("--nproc", type=int, default=1,
                           help="processes on this node through torchrun (GPUs; on CPU, gloo ranks)")
        add_arguments(p, c.config_class)
    p.set_defaults(run=functools.partial(run_command, c))


def run_command(c: Command, args: argparse.Namespace) -> int:
    """Build the command's config from the flags and run it (on torchrun's ranks with --nproc N > 1); print what
    its result shows and return the exit status."""
    if c.config is None:
        return load(c.show)(load(c.run)(args))
    cfg = from_args(c.config_class, args)
    if c.torchrun and args.nproc > 1 and "RANK" not in os.environ:
        return torchrun(c.torchrun, to_argv(cfg), args.nproc)
    return load(c.show)(c.runs(cfg))


def torchrun(module: str, argv: list[str], nproc: int) -> int:
    """The torchrun hand-off of every command that has --nproc: `nproc` ranks on this node, each running `module`
    with the same flags (its own entry point parses them; a rank sees RANK set and never hands off again)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", module, *argv]
    return subprocess.call(cmd)


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
