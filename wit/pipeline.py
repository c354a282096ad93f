"""`wit pipeline CONFIG`: from URL lists to training shards and audit (and a trained model) as one declared run,
resumable stage by stage.

The config is a TOML file: a `[pipeline]` table (PipelineConfig below) and a table per stage whose keys are the options
of that stage's command (the names `--help` shows, `_` or `-`). The stages run in the order of a sample's journey,
each through the same function its command runs, into the folder layout `wit audit` reads (wit/stages.py). Each
stage leaves a record (wit/records.py): a re-run skips a stage that finished with the same options and inputs,
redoes one whose options or inputs changed (and every stage after it), and resumes an interrupted one the way its
command resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import textwrap
import time
from dataclasses import MISSING, dataclass, field, replace
from typing import Any

from wit import records
from wit.shards.lock import output_lock
from wit.shards.options import DefaultsHelp, check_keys, cli_fields, from_mapping, opt
from wit.shards.runner import ENGINES
from wit.shards.storage import WitError, absolute, entries, exists, fs_and_path, join
from wit.shards.layout import Layout
from wit.stages import AFTER, BEFORE, CORPUS, STAGES, Context, Stage

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    lists: tuple[str, ...] = opt((), "URL-caption lists, as `wit download` reads them: files or folders (parquet, csv, "
                                     "tsv, jsonl, txt), local, s3:// or https://, brace patterns allowed")
    out: str = opt(help="output root, local or s3://: raw/, verdicts/<stage>/, queries.parquet, matches/, balance/, "
                        "corpus/, audit/ (the layout `wit audit` reads), train/ and _wit/pipeline/ (stage records)")
    stages: tuple[str, ...] = opt(CORPUS, "the stages to run; they run in the order of a sample's journey, whatever "
                                          "the order here", choices=AFTER)
    balance: str = opt("after", "after: balance the pairs the filters kept; before: balance the URL lists and "
                                "download only the selection (MetaCLIP's order: most pairs are never fetched; aim "
                                "[balance] t at 2-4x the final t)", choices=("after", "before"))
    engine: str = opt("local", "engine of every per-shard stage unless its table says otherwise; ray also makes the "
                               "crawl use img2dataset's ray distributor", choices=ENGINES)
    workers: int | None = opt(None, "worker processes of every per-shard stage and of the crawl (default: one per "
                                    "core)", minimum=1)
    ray_address: str | None = opt(None, "Ray cluster to join with engine = ray ('auto', 'ray://host:10001'); "
                                        "default: start a local Ray")
    nproc: int = opt(1, "training processes on this node (`wit train --nproc`: GPUs, or gloo ranks on CPU)", minimum=1)


@dataclass
class Step:
    """One stage of this pipeline: its config and the paths it reads and writes."""
    stage: Stage
    config: Any
    fill: dict  # the keys the pipeline set
    defaults: dict  # the keys [pipeline] (or the stage's wiring) set because the stage's table did not
    reads: list[str]
    writes: list[str]
    after: list[str] = field(default_factory=list)  # earlier stages that write what this one reads

    @property
    def name(self) -> str:
        return self.stage.name


@dataclass
class Pipeline:
    source: str
    config: PipelineConfig
    context: Context
    steps: list[Step]

    @property
    def layout(self) -> Layout:
        return self.context.layout


# ---------------------------------------------------------------------------------------------- the config file
def load(path: str, sets: list[str] | tuple[str, ...] = ()) -> Pipeline:
    """Read and check the whole file (every stage's config is built here, so a bad key stops the run before it
    starts), then wire the stages."""
    data = read_toml(path)
    for item in sets:
        apply_set(data, item)
    known = ("pipeline", *AFTER)
    for key, value in data.items():
        if not isinstance(value, dict):
            raise WitError(f"{path}: {key!r} is outside a table; keys belong in [pipeline] or a stage's table")
        if key not in known:
            raise WitError(f"{path}: unknown table [{key}] (known: {', '.join(known)})")
    p = from_mapping(PipelineConfig, data.get("pipeline", {}), f"{path} [pipeline]")
    if not p.out.strip():
        raise WitError(f"{path} [pipeline]: out must name a folder")
    if not p.stages:
        raise WitError(f"{path} [pipeline]: stages is empty")
    if p.balance == "before" and "download" in p.stages and "balance" not in p.stages:
        raise WitError(f"{path} [pipeline]: balance = 'before' downloads the balance's selection; add the balance "
                       "stage (and match, queries) to stages")
    base = config_folder(path)
    p = replace(p, out=against(base, p.out), lists=tuple(against(base, x) for x in p.lists),
                stages=tuple(dict.fromkeys(p.stages)))
    context = Context(p, Layout(p.out.rstrip("/")), {})
    steps = []
    for name in (BEFORE if p.balance == "before" else AFTER):
        if name in p.stages:
            steps.append(_step(STAGES[name], user_paths(STAGES[name], data.get(name, {}), base), path, context))
    for i, step in enumerate(steps):
        step.after = [s.name for s in steps[:i] if any(records.overlaps(r, w) for r in step.reads for w in s.writes)]
    for name in AFTER:  # tables of stages not run now: their keys are checked all the same
        if name in data and name not in p.stages:
            check_keys(STAGES[name].config, data[name], f"{path} [{name}]")
    return Pipeline(path, p, context, steps)


def config_folder(path: str) -> str:
    """The folder of the config file: relative paths in it are read against it, as make -f reads a Makefile's."""
    return absolute(path).rstrip("/").rsplit("/", 1)[0] or "/"


def against(base: str, value: str) -> str:
    """A path of the config file read against its folder; URLs and absolute paths stay as they are."""
    value = os.path.expanduser(value)
    if "://" in value or value.startswith("/"):
        return value
    return absolute(join(base, value))


def user_paths(stage: Stage, table: dict, base: str) -> dict:
    """The stage's table with the paths the user gives read against the config file's folder (Stage.inputs: when
    the value looks like a path or such a file is there, else it is a keyword such as 'none' or 'latest';
    Stage.outputs: always)."""
    out = dict(table)
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in stage.inputs and name not in stage.outputs:
            continue

        def resolve(v):
            if not isinstance(v, str) or not v:
                return v
            there = against(base, v)
            path_like = "/" in v or "." in v  # else a keyword: 'none', 'latest', 'cifar10', 'wordsegment'
            return there if name in stage.outputs or path_like or exists(there) else v
        out[key] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
    return out


def _step(stage: Stage, table: dict, path: str, context: Context) -> Step:
    where = f"{path} [{stage.name}]"
    try:
        fill = stage.fill(context)
    except WitError as err:  # the wiring found a [pipeline] key missing
        raise WitError(f"{path} {err}") from None
    given = {k.replace("-", "_") for k in table}
    for key in table:
        if key.replace("-", "_") in fill:
            raise WitError(f"{where}: {key} is set by the pipeline ({_show(fill[key.replace('-', '_')])}); remove it")
    defaults = {k: v for k, v in stage.defaults(context).items() if k not in given}
    cfg = from_mapping(stage.config, {**defaults, **table}, where, **fill)
    context.configs[stage.name] = cfg
    reads = [absolute(r) for r in stage.reads(context, cfg)]
    return Step(stage, cfg, fill, defaults, reads, [absolute(w) for w in stage.writes(context, cfg)])


def read_toml(path: str) -> dict:
    fs, local = fs_and_path(path)
    try:
        with fs.open(local, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise WitError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise WitError(f"{path}: a folder; give the pipeline's TOML file") from None
    except OSError as err:
        raise WitError(f"{path}: cannot read the config file ({type(err).__name__}: {err.strerror or err})") from None
    except UnicodeDecodeError:
        raise WitError(f"{path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise WitError(f"{path}: not valid TOML ({err})") from None


def apply_set(data: dict, item: str) -> None:
    """`--set TABLE.KEY=VALUE`: the value is read as a TOML value (100, true, ["a", "b"]), else taken as a string."""
    key, sep, value = item.partition("=")
    table, dot, name = key.strip().partition(".")
    if not (sep and dot and table and name):
        raise WitError(f"--set {item}: write TABLE.KEY=VALUE, e.g. balance.t=40000")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    target = data.setdefault(table, {})
    if not isinstance(target, dict):
        raise WitError(f"--set {item}: {table!r} is not a table")
    target[name] = parsed


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Decision:
    """What one stage does in this run, and why."""
    step: Step
    action: str  # run, redo, resume, skip; "" when --from/--only leave it out
    why: str
    record: dict | None
    clears: list[tuple[str, int, int]] = field(default_factory=list)  # a redo's (path, files, bytes) to delete


def run(pipe: Pipeline, *, start: str | None = None, only: str | None = None, plan: bool = False,
        force: bool = False) -> int:
    """Run (or plan) the pipeline. A run that made its output root and fails before any stage wrote a file outside
    the `_wit/` bookkeeping folders removes that root again: an early error leaves nothing behind."""
    fresh = not plan and not exists(pipe.config.out)
    try:
        return run_stages(pipe, start=start, only=only, plan=plan, force=force)
    except BaseException:
        if fresh and exists(pipe.config.out) and only_bookkeeping(pipe.config.out):
            fs, local = fs_and_path(pipe.config.out)
            fs.rm(local, recursive=True)
        raise


def only_bookkeeping(root: str) -> bool:
    """Whether every file under `root` lies in a `_wit/` folder (records, locks, scratch: nothing a user keeps)."""
    fs, local = fs_and_path(root)
    base = local.rstrip("/") + "/"
    return all("_wit" in name[len(base):].split("/")[:-1] for name in fs.find(local))


def run_stages(pipe: Pipeline, *, start: str | None, only: str | None, plan: bool, force: bool) -> int:
    names = [s.name for s in pipe.steps]
    for flag, value in (("--from", start), ("--only", only)):
        if value and value not in names:
            raise WitError(f"{flag} {value}: not a stage of this pipeline (its stages: {', '.join(names)})")
    chosen = names[names.index(start):] if start else [only] if only else names
    p = pipe.config
    where = "after the filters" if p.balance == "after" else "before download"
    _say(f"wit pipeline: {pipe.source} -> {p.out} ({len(names)} stages, balance {where})"
         + ("; the plan, nothing runs:" if plan else ""))
    # one pipeline per root: a second one would clear and rewrite the folders the first is writing and reading
    with contextlib.nullcontext() if plan else output_lock(p.out, "wit pipeline"):
        prints = records.Fingerprints()
        decisions = decide_all(pipe, chosen, prints, forced=bool(start or only))
        check_owned(pipe, decisions)
        if plan:
            for i, d in enumerate(decisions):
                _say(f"{_tag(pipe, i)} {d.action or 'not run':<6} {_why(pipe, d, start, plan=True)}")
            return 0
        confirm_clears(pipe, decisions, force)
        started, ran = time.time(), 0
        for i, d in enumerate(decisions):
            later = any(e.action for e in decisions[i + 1:])  # a stage after this one takes part in this run
            if d.action in ("", "skip"):
                _say(f"{_tag(pipe, i)} {d.action or 'not run':<6} {_why(pipe, d, start)}")
                if d.action == "skip" and later:
                    stop_if_empty(d.step.name, (d.record or {}).get("figures") or {})
                continue
            if d.action == "redo":
                clear(pipe, d)
            figures = execute(pipe, d, _tag(pipe, i), f"{d.action}: {_why(pipe, d, start)}", prints)
            ran += 1
            if later:
                stop_if_empty(d.step.name, figures)
    _say(f"wit pipeline: done in {time.time() - started:.0f} s ({ran} of {len(names)} stages ran)")
    return 0


def decide_all(pipe: Pipeline, chosen: list[str], prints: records.Fingerprints, forced: bool) -> list[Decision]:
    """Every stage's action before any runs (a redo that deletes a crawl is asked for first): a stage after one that
    runs and writes what it reads is redone, whatever its inputs' listing says now."""
    decisions, ran = [], []
    for step in pipe.steps:
        if step.name not in chosen:
            decisions.append(Decision(step, "", "", None))
            continue
        record = records.read(pipe.layout.records, step.name)
        legacy = records.legacy(record)
        stage = step.stage
        done = record is not None and record.get("state") == "done"
        changed = records.option_changes(record, config_json(step.config), pipe.layout.root,
                                         set(step.fill), config_folder(pipe.source)) if record else []
        action, why = records.decide(
            record, changed, prints.of(step.reads, legacy), prints.of(step.writes, legacy) if done else [],
            [u for u in step.after if u in ran], runtime=stage.all_runtime(), grows=set(stage.grows),
            rerun=[k for k in stage.reruns if getattr(step.config, k)], forced=forced)
        d = Decision(step, action, why, record)
        if action == "redo":
            d.clears = [(w, *_size(w)) for w in _outermost(step.writes)]
            d.clears = [c for c in d.clears if c[1]]
        if action != "skip":
            ran.append(step.name)
        decisions.append(d)
    return decisions


def check_owned(pipe: Pipeline, decisions: list[Decision]) -> None:
    """Refuse, before anything runs, a stage that would write into (or clear) a path holding files that the
    pipeline did not write: only a path its record lists as made by the pipeline is its own. A stage resumed from
    a record that predates that list goes on writing where it wrote before."""
    for d in decisions:
        if d.action in ("", "skip"):
            continue
        knows = d.record is None or "created" in d.record
        if d.action != "redo" and not knows:
            continue
        for path in d.step.writes:
            names = _holds(path)
            if names and not _made(pipe, d.record, path):
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                if d.record is None:
                    raise WitError(f"{path}: holds {shown}, which wit pipeline did not write (its {d.step.name} stage "
                                   "has no record); move them away, or set another [pipeline] out")
                raise WitError(f"{path}: holds {shown}, and the {d.step.name} stage's record does not list it as made "
                               "by wit pipeline (a record of an older wit lists none), which writes and deletes only "
                               f"its own folders; move or delete it yourself to let the stage {d.action}")


def confirm_clears(pipe: Pipeline, decisions: list[Decision], force: bool) -> None:
    """A redo that deletes a crawl or a training run asks first: --force, or yes on a terminal."""
    for d in decisions:
        if d.action != "redo" or not d.step.stage.costly or not d.clears or force:
            continue
        question = (f"the {d.step.name} stage's redo ({d.why}) deletes {_clears(pipe, d)}")
        if not _confirmed(question):
            raise WitError(f"{question}; run again with --force to delete it, or undo the change")


def _confirmed(question: str) -> bool:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    return input(f"wit pipeline: {question}. Delete it? [y/N] ").strip().lower() in ("y", "yes")


def stop_if_empty(stage: str, figures: dict) -> None:
    """A stage that kept none of its rows ends the run in one line, naming its main drop reasons: the stages after
    it would only run on nothing (and the last of them fail with a message about its own input)."""
    left = figures.get("kept", figures.get("matched", figures.get("samples")))
    rows = figures.get("rows")
    if left != 0 or rows == 0:
        return
    reasons = sorted((figures.get("dropped") or {}).items(), key=lambda kv: -kv[1])
    why = "; ".join(f"{k} {v:,}" for k, v in reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    hint = next((h for key, h in HINTS.items() if reasons and reasons[0][0].startswith(key)), "")
    raise WitError(f"the {stage} stage kept none of its {'input' if rows is None else f'{rows:,}'} rows"
                   + (f" ({why})" if why else "") + "; the stages after it would run on nothing"
                   + (f": {hint}" if hint else ""))


# What a user can do about the reason that dropped every row
HINTS = {
    "ssrf_blocked": "every URL points at a private or loopback address, which the crawl refuses unless [download] "
                    "allow_net names it (e.g. allow_net = [\"127.0.0.0/8\"])",
    "robots": "the hosts' robots.txt refuse wit's user agent ([download] ignore_robots = true only for your own hosts)",
    "no_query_match": "no caption contains a query entry: check [queries] and the captions' language",
    "not_english": "the English filter dropped every caption: [text] english = false keeps other languages",
}


def execute(pipe: Pipeline, d: Decision, tag: str, why: str, prints: records.Fingerprints) -> dict:
    step = d.step
    options = _options(step)
    _say(f"{tag} start  {why}" + (f"; options: {options}" if options else ""))
    began = time.time()
    root = pipe.layout.root
    created = [records.portable(w, root) for w in step.writes if _made(pipe, d.record, w) or not _holds(w)]
    record = {"stage": step.name, "state": "running", "command": _command(pipe, step), "config": config_json(step.config),
              "root": root, "config_folder": config_folder(pipe.source), "created": created,
              "inputs": prints.of(step.reads), "started": records.now()}
    records.write(pipe.layout.records, step.name, record)
    summary = step.stage.call(pipe.context, step.config)
    seconds = time.time() - began
    prints.forget(step.writes)
    try:
        figures = step.stage.figures(summary)
    except (KeyError, TypeError, AttributeError):  # a command's summary changed shape: the stage is still done
        figures = {}
    record.update(state="done", outputs=prints.of(step.writes), finished=records.now(), seconds=round(seconds, 1),
                  figures=figures)
    records.write(pipe.layout.records, step.name, record)
    _say(f"{tag} done in {seconds:.1f} s: {format_figures(figures)}")
    return figures


def clear(pipe: Pipeline, d: Decision) -> None:
    """Remove what an earlier run of this stage wrote, so the command starts afresh instead of resuming output made
    with other options or inputs: only the folders its record lists as made by the pipeline (check_owned refused
    the others), and only under the output root."""
    root = pipe.layout.root
    for path in d.step.writes:
        fs, local = fs_and_path(path)
        if not fs.exists(local):
            continue
        if not (path == root or path.startswith(root + "/")):
            raise WitError(f"{path}: holds the {d.step.name} stage's output of other options or inputs, outside the "
                           f"output root {root}; delete it or name another folder (the pipeline deletes only under "
                           "its root)")
        if _made(pipe, d.record, path):
            fs.rm(local, recursive=True)


def _made(pipe: Pipeline, record: dict | None, path: str) -> bool:
    """Does the stage's record list `path` as a folder (or file) that the pipeline made?"""
    made = record.get("created", []) if record else []
    return isinstance(made, list) and records.portable(path, pipe.layout.root) in made


def _holds(path: str) -> list[str]:
    """The names a path holds: a file's own name, a folder's entries; [] when it is absent or an empty folder."""
    fs, local = fs_and_path(path)
    fs.invalidate_cache(local)
    if fs.isfile(local):
        return [local.rstrip("/").rsplit("/", 1)[-1]]
    return entries(path)


def _size(path: str) -> tuple[int, int]:
    """(files, bytes) under a path."""
    fs, local = fs_and_path(path)
    if not fs.exists(local):
        return 0, 0
    if fs.isfile(local):
        return 1, fs.info(local).get("size") or 0
    sizes = [info.get("size") or 0 for info in fs.find(local, detail=True).values()]
    return len(sizes), sum(sizes)


def _outermost(paths: list[str]) -> list[str]:
    """The paths not inside another of them (train/ holds train/checkpoints: count it once)."""
    return [p for p in paths if not any(q != p and p.startswith(q.rstrip("/") + "/") for q in paths)]


def _clears(pipe: Pipeline, d: Decision) -> str:
    return " and ".join(f"{_rel(pipe, path)}: {files:,} files, {_bytes(size)}" for path, files, size in d.clears)


def _bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _why(pipe: Pipeline, d: Decision, start: str | None, plan: bool = False) -> str:
    if not d.action:
        return f"({'before --from ' + start if start else 'not --only'})"
    if d.action == "resume":
        note = d.step.stage.resume_note(pipe.context, d.step.config)
        return f"{d.why}; {note}" if note else d.why
    if d.action != "redo" or not d.clears:
        return d.why
    asks = "; asks first, or --force" if plan and d.step.stage.costly else ""
    return f"{d.why} (clears {_clears(pipe, d)}{asks})"


def _tag(pipe: Pipeline, i: int) -> str:
    n = len(pipe.steps)
    return f"[{i + 1:>{len(str(n))}}/{n}] {pipe.steps[i].name:<8}"


def config_json(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _command(pipe: Pipeline, step: Step) -> list[str] | None:
    try:
        return step.stage.argv(pipe.context, step.config)
    except ValueError:  # a value no flag can say
        return None


def _options(step: Step) -> str:
    """The options this stage's table (or [pipeline]) changed from the command's defaults."""
    shown = []
    for f in cli_fields(type(step.config)):
        if f.name in step.fill or (f.name in step.defaults and step.defaults[f.name] == getattr(step.config, f.name)):
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        value = getattr(step.config, f.name)
        if value != default and not (value is None and default is MISSING):
            shown.append(f"{f.name}={_show(value)}")
    return ", ".join(shown)


def format_figures(figures: dict) -> str:
    if {"rows", "kept", "dropped"} <= figures.keys():
        text = f"rows {figures['rows']:,}, kept {figures['kept']:,}"
        dropped = figures["dropped"]
        text += "; dropped " + ", ".join(f"{k} {v:,}" for k, v in dropped.items()) if dropped else ""
        text += f"; languages {figures['languages']}" if figures.get("languages") else ""
        return text + (f" (and {figures['dropped_before']:,} rows earlier stages dropped)"
                       if figures.get("dropped_before") else "")
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v}"
                     for k, v in figures.items())


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        value = ", ".join(map(str, value))
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _rel(pipe: Pipeline, path: str) -> str:
    root = pipe.layout.root
    return path[len(root) + 1:] if path.startswith(root + "/") else path


def _say(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------- the command
def _epilog() -> str:
    lines = ["The [pipeline] table:"]
    for f in cli_fields(PipelineConfig):
        default = "" if f.default is MISSING or f.default in (None, ()) else f" (default: {_show(f.default)})"
        text = f.metadata["wit.option"]["help"] + default
        lines += textwrap.wrap(text, 100, initial_indent=f"  {f.name:<13}", subsequent_indent=" " * 15)
    lines += ["", "A table per stage; its keys are the options of the stage's command, except the folders the "
                  "pipeline sets:"]
    lines += [f"  [{name}]{' ' * (10 - len(name))}wit {STAGES[name].command}" for name in AFTER]
    lines += ["", "A small config: README.md, 'Your list in five minutes'; the demo's: wit/demo.toml; all of it: wit/README.md."]
    return "\n".join(lines)


class _Help(argparse.RawDescriptionHelpFormatter, DefaultsHelp):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`wit pipeline`'s own arguments (wit/commands.py declares the command): a config file and how to run it."""
    p.formatter_class, p.epilog = _Help, _epilog()  # the epilog's tables as written
    p.description = textwrap.fill(p.description, 100)
    p.add_argument("config", help="the pipeline's TOML file")
    p.add_argument("--plan", action="store_true", help="print what each stage would do and why; run nothing")
    p.add_argument("--force", action="store_true",
                   help="let a redo delete a crawl or a training run (else it asks on a terminal, or refuses)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--from", dest="start", metavar="STAGE", choices=AFTER,
                       help="run this stage and every one after it, whatever their records say")
    which.add_argument("--only", metavar="STAGE", choices=AFTER, help="run this stage only, whatever its record says")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one key of the file, e.g. --set balance.t=40000 (the value is read as TOML, "
                        "else as a string); repeatable")


def run_command(args: argparse.Namespace) -> int:
    return run(load(args.config, args.sets), start=args.start, only=args.only, plan=args.plan, force=args.force)
