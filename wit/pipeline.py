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
import dataclasses
import json
import textwrap
import time
from dataclasses import MISSING, dataclass, field, replace
from typing import Any

from wit import records
from wit.shards.options import DefaultsHelp, check_keys, cli_fields, from_mapping, opt
from wit.shards.runner import ENGINES
from wit.shards.storage import WitError, absolute, fs_and_path
from wit.stages import AFTER, BEFORE, CORPUS, STAGES, Context, Layout, Stage

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
    p = replace(p, out=absolute(p.out), lists=tuple(absolute(x) for x in p.lists), stages=tuple(dict.fromkeys(p.stages)))
    context = Context(p, Layout(p.out.rstrip("/")), {})
    steps = []
    for name in (BEFORE if p.balance == "before" else AFTER):
        if name in p.stages:
            steps.append(_step(STAGES[name], data.get(name, {}), path, context))
    for i, step in enumerate(steps):
        step.after = [s.name for s in steps[:i] if any(records.overlaps(r, w) for r in step.reads for w in s.writes)]
    for name in AFTER:  # tables of stages not run now: their keys are checked all the same
        if name in data and name not in p.stages:
            check_keys(STAGES[name].config, data[name], f"{path} [{name}]")
    return Pipeline(path, p, context, steps)


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
def run(pipe: Pipeline, *, start: str | None = None, only: str | None = None, plan: bool = False) -> int:
    names = [s.name for s in pipe.steps]
    for flag, value in (("--from", start), ("--only", only)):
        if value and value not in names:
            raise WitError(f"{flag} {value}: not a stage of this pipeline (its stages: {', '.join(names)})")
    chosen = names[names.index(start):] if start else [only] if only else names
    p = pipe.config
    where = "after the filters" if p.balance == "after" else "before download"
    _say(f"wit pipeline: {pipe.source} -> {p.out} ({len(names)} stages, balance {where})"
         + ("; the plan, nothing runs:" if plan else ""))
    prints = records.Fingerprints()
    ran: list[str] = []
    started = time.time()
    for i, step in enumerate(pipe.steps, 1):
        tag = f"[{i:>{len(str(len(names)))}}/{len(names)}] {step.name:<8}"
        if step.name not in chosen:
            _say(f"{tag} not run ({'before --from ' + start if start else 'not --only'})")
            continue
        record = records.read(pipe.layout.records, step.name)
        inputs = prints.of(step.reads)
        outputs = prints.of(step.writes) if record and record.get("state") == "done" else {}
        action, why = records.decide(record, config_json(step.config), step.stage.all_runtime(), inputs, outputs,
                                     [u for u in step.after if u in ran], forced=bool(start or only))
        if action == "redo":
            why += f" (clears {', '.join(_rel(pipe, w) for w in step.writes)})"
        if plan or action == "skip":
            _say(f"{tag} {action:<6} {why}")
        if plan:
            ran += [] if action == "skip" else [step.name]
            continue
        if action == "skip":
            continue
        if action == "redo":
            clear(pipe, step)
        execute(pipe, step, tag, f"{action}: {why}", inputs, prints)
        ran.append(step.name)
    if not plan:
        _say(f"wit pipeline: done in {time.time() - started:.0f} s ({len(ran)} of {len(names)} stages ran)")
    return 0


def execute(pipe: Pipeline, step: Step, tag: str, why: str, inputs: dict, prints: records.Fingerprints) -> None:
    options = _options(step)
    _say(f"{tag} start  {why}" + (f"; options: {options}" if options else ""))
    began = time.time()
    record = {"stage": step.name, "state": "running", "command": _command(pipe, step), "config": config_json(step.config),
              "inputs": inputs, "started": records.now()}
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


def clear(pipe: Pipeline, step: Step) -> None:
    """Remove what an earlier run of this stage wrote (its record proves the pipeline wrote it), so the command
    starts afresh instead of resuming output made with other options or inputs. Only under the output root."""
    root = pipe.layout.root
    for path in step.writes:
        fs, local = fs_and_path(path)
        if not fs.exists(local):
            continue
        if not (path == root or path.startswith(root + "/")):
            raise WitError(f"{path}: holds the {step.name} stage's output of other options or inputs, outside the "
                           f"output root {root}; delete it or name another folder (the pipeline deletes only under "
                           "its root)")
        fs.rm(local, recursive=True)


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
        return text + ("; dropped " + ", ".join(f"{k} {v:,}" for k, v in dropped.items()) if dropped else "")
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
DESCRIPTION = (
    "Run the stages a config file names, in the order of a sample's journey (lists -> crawl -> filters -> match -> "
    "balance -> reshard -> audit -> train -> zero-shot), each through the same function as its command, into the "
    "folder layout `wit audit` reads. Each stage records its options and inputs when it finishes: running the same "
    "command again skips what is done and unchanged, redoes a stage whose options or inputs changed and every stage "
    "after it, and resumes an interrupted stage as its command resumes.")


def _epilog() -> str:
    lines = ["The [pipeline] table:"]
    for f in cli_fields(PipelineConfig):
        default = "" if f.default is MISSING or f.default in (None, ()) else f" (default: {_show(f.default)})"
        text = f.metadata["wit.option"]["help"] + default
        lines += textwrap.wrap(text, 100, initial_indent=f"  {f.name:<13}", subsequent_indent=" " * 15)
    lines += ["", "A table per stage; its keys are the options of the stage's command, except the folders the "
                  "pipeline sets:"]
    lines += [f"  [{name}]{' ' * (10 - len(name))}wit {STAGES[name].command}" for name in AFTER]
    lines += ["", "Example: README.md, 'The pipeline on real data'; the demo's config: wit/demo.toml."]
    return "\n".join(lines)


class _Help(argparse.RawDescriptionHelpFormatter, DefaultsHelp):
    pass


def register(sub) -> None:
    p = sub.add_parser(
        "pipeline", formatter_class=_Help, epilog=_epilog(),
        help="lists -> crawl -> filters -> balance -> training shards -> audit (-> train) from one config file; "
             "resumable stage by stage",
        description=textwrap.fill(DESCRIPTION, 100),
    )
    p.add_argument("config", help="the pipeline's TOML file")
    p.add_argument("--plan", action="store_true", help="print what each stage would do and why; run nothing")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--from", dest="start", metavar="STAGE", choices=AFTER,
                       help="run this stage and every one after it, whatever their records say")
    which.add_argument("--only", metavar="STAGE", choices=AFTER, help="run this stage only, whatever its record says")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one key of the file, e.g. --set balance.t=40000 (the value is read as TOML, "
                        "else as a string); repeatable")
    p.set_defaults(run=_run)


def _run(args) -> int:
    return run(load(args.config, args.sets), start=args.start, only=args.only, plan=args.plan)

