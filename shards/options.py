"""How a config becomes a command line, a config-file table and back: one mechanism for every wit command.

A command's config is a frozen dataclass whose fields declare their option with `opt(default, "help")`:

    @dataclass(frozen=True)
    class DedupConfig:
        images: str = opt(help="verdict folder of `wit filter images`", positional=True)
        near_k: int = opt(2, "Hamming threshold for near duplicates; 0 = exact only", minimum=0)

`add_arguments(parser, DedupConfig)` makes `images` and `--near-k`; `from_args(DedupConfig, args)` builds the config
back from the parsed flags; `from_mapping` builds it from a table of a config file (an unknown key or a value of the
wrong type is a one-line error naming the key); `to_argv` rebuilds the flags (to hand a config to torchrun). The
field's type decides the rest: bool -> `--x/--no-x`, `int | None` -> an optional int, `tuple[str, ...]` -> several
values. Fields with `cli=False` are settings of the code, not of the user, and get no flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING
from typing import Any

from wit.shards.storage import WitError

_KEY = "wit.option"


def opt(default: Any = MISSING, help: str = "", *, positional: bool = False, flag: str | None = None,
        choices: tuple | None = None, metavar: str | None = None, many: str = "nargs", minimum: float | None = None,
        parse=None, factory=None, cli: bool = True, group: str | None = None):
    """A dataclass field that is also a command-line option.

    many: how a tuple field takes several values: "nargs" (`--x a b`) or "append" (`--x a --x b`).
    parse: turns one command-line string into the field's value (e.g. "SOURCE=N" -> ("SOURCE", N)).
    minimum: the smallest value accepted (checked by `validate`, so by every way a config is built from text).
    """
    meta = {"help": help, "positional": positional, "flag": flag, "choices": choices, "metavar": metavar,
            "many": many, "minimum": minimum, "parse": parse, "cli": cli, "group": group}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_KEY: meta})
    return dataclasses.field(default=default, metadata={_KEY: meta})


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" where it tells something: not for an empty default (None, "", [], (), False), and not
    where the help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default in ("", [], ())
        if empty or "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------- field types
def _meta(f: dataclasses.Field) -> dict:
    return f.metadata.get(_KEY) or {"help": "", "positional": False, "flag": None, "choices": None, "metavar": None,
                                    "many": "nargs", "minimum": None, "parse": None, "cli": True, "group": None}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(tp) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _item_type(tp):
    """The element type of `tuple[T, ...]`, or None when tp is not such a tuple."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return args[0] if args else str
    return None


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flag_of(f: dataclasses.Field) -> str:
    return _meta(f)["flag"] or "--" + f.name.replace("_", "-")


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if _meta(f)["cli"]]


# ---------------------------------------------------------------------------------------------- argparse
def add_arguments(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (), defaults: dict | None = None):
    """One option per field of `cls` (positional fields as positional arguments), with the field's help."""
    hints, groups = _hints(cls), {}
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        m = _meta(f)
        target = parser
        if m["group"]:
            target = groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
        base, optional = _unwrap(hints[f.name])
        item = _item_type(base)
        default = (defaults or {}).get(f.name, _default(f))
        kwargs: dict[str, Any] = {"help": (m["help"] or "").replace("%", "%%")}
        if m["choices"]:
            kwargs["choices"] = m["choices"]
        if m["metavar"]:
            kwargs["metavar"] = m["metavar"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif item is not None:
            kwargs["type"] = m["parse"] or _scalar(item)
            if m["many"] == "append" and not m["positional"]:
                kwargs["action"] = "append"
            else:
                kwargs["nargs"] = "+" if default is MISSING else "*"
        else:
            kwargs["type"] = m["parse"] or _scalar(base)
        if m["positional"]:
            if default is not MISSING and item is None:
                kwargs["nargs"] = "?"
            if default is not MISSING:
                kwargs["default"] = default if item is None else list(default)
            target.add_argument(f.name, **kwargs)
            continue
        if default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = list(default) if item is not None and kwargs.get("action") == "append" else default
        target.add_argument(flag_of(f), dest=f.name, **kwargs)
    return parser


def _scalar(tp):
    if tp in (int, float, str):
        return tp
    return str


def from_args(cls, args: argparse.Namespace, **overrides):
    """The config from parsed flags (fields without a flag keep their default unless given in `overrides`)."""
    values = {}
    hints = _hints(cls)
    for f in cli_fields(cls):
        if f.name in overrides or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if _item_type(_unwrap(hints[f.name])[0]) is not None and value is not None:
            value = tuple(value)
        values[f.name] = value
    cfg = cls(**values, **overrides)
    validate(cfg)
    return cfg


def validate(cfg) -> None:
    """The checks that fields declare (minimum values), as one-line errors naming the option."""
    for f in cli_fields(type(cfg)):
        low, value = _meta(f)["minimum"], getattr(cfg, f.name)
        if low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise WitError(f"{flag_of(f)} must be at least {low:g} (got {value})")


# ---------------------------------------------------------------------------------------------- config files
def from_mapping(cls, table: dict, where: str, **overrides):
    """The config from a config file's table; `where` names the table in errors (e.g. `wit.toml [dedup]`)."""
    known = {f.name: f for f in cli_fields(cls)}
    hints = _hints(cls)
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            close = ", ".join(sorted(known))
            raise WitError(f"{where}: unknown key {key!r} (known: {close})")
        values[name] = _coerce(value, hints[name], known[name], f"{where}: {key}")
    for name, f in known.items():
        if name not in values and name not in overrides and _default(f) is MISSING:
            raise WitError(f"{where}: {name} is required")
    cfg = cls(**{**values, **overrides})
    validate(cfg)
    return cfg


def _coerce(value, tp, f: dataclasses.Field, where: str):
    base, optional = _unwrap(tp)
    if value is None:
        if optional:
            return None
        raise WitError(f"{where}: must not be empty")
    item = _item_type(base)
    if item is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        parse = _meta(f)["parse"]
        return tuple(_parse(parse, v, where) if parse and isinstance(v, str) else _check(v, item, f, where)
                     for v in values)
    parse = _meta(f)["parse"]
    if parse and isinstance(value, str):
        return _parse(parse, value, where)
    return _check(value, base, f, where)


def _parse(parse, value: str, where: str):
    try:
        return parse(value)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise WitError(f"{where}: {err}") from None


def _check(value, tp, f: dataclasses.Field, where: str):
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    ok = (isinstance(value, bool) if tp is bool else
          isinstance(value, int) and not isinstance(value, bool) if tp is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float else
          isinstance(value, str) if tp is str else True)
    if not ok:
        raise WitError(f"{where}: expected {names.get(tp, tp)}, got {value!r}")
    choices = _meta(f)["choices"]
    if choices and value not in choices:
        raise WitError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    return float(value) if tp is float else value


# ---------------------------------------------------------------------------------------------- back to flags
def to_argv(cfg) -> list[str]:
    """The command-line arguments that rebuild `cfg` (positional ones first)."""
    hints = _hints(type(cfg))
    positional, flags = [], []
    for f in cli_fields(type(cfg)):
        value, m = getattr(cfg, f.name), _meta(f)
        base, _ = _unwrap(hints[f.name])
        if m["positional"]:
            positional += [str(v) for v in value] if _item_type(base) is not None else [str(value)]
        elif base is bool:
            flags.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
        elif value is None:
            if _default(f) is not None:  # a source switched off: fields that can be None say so as 'none'
                if m["parse"] is None:
                    raise ValueError(f"{flag_of(f)}: None cannot be written as a flag")
                flags += [flag_of(f), "none"]
        elif _item_type(base) is not None:
            if m["many"] == "append":
                for v in value:
                    flags += [flag_of(f), _unparse(v)]
            elif value:
                flags += [flag_of(f), *map(_unparse, value)]
        else:
            flags += [flag_of(f), str(value)]
    return positional + flags


def _unparse(v) -> str:
    return "=".join(map(str, v)) if isinstance(v, tuple) else str(v)
