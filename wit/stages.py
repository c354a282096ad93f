"""The stages of `wit pipeline`: the wiring between them. For each stage, the command it is (wit/commands.py, which
gives its config class and the function the command runs), the folders it reads and writes under the output root
(shards/layout.py), its defaults, and how its options decide a redo; a stage runs through its command's own function.

A stage's config is its command's config, built from the stage's table of the pipeline file with `from_mapping`,
so a field added to a command is a key of its table at once. The pipeline sets the folders between stages
(`Stage.fill`); a table that sets one of them is an error. Everything else is the user's, with the `[pipeline]`
engine and workers as defaults (`Stage.defaults`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

from wit.commands import COMMANDS
from wit.shards.layout import Layout
from wit.shards.storage import WitError, absolute, is_local, join

FILTERS = ("text", "images", "dedup")  # the verdict stages, in the order the audit's funnel walks them


@dataclass
class Context:
    """What a stage's wiring may look at: the [pipeline] table, the layout, and the configs built before it."""
    pipeline: Any  # wit.pipeline.PipelineConfig
    layout: Layout
    configs: dict[str, Any]

    @property
    def declared(self) -> tuple[str, ...]:
        return self.pipeline.stages

    @property
    def before(self) -> bool:
        return self.pipeline.balance == "before"

    def verdict_folders(self) -> tuple[str, ...]:
        return tuple(self.layout.verdicts(s) for s in FILTERS if s in self.declared)


class Stage:
    name: str = ""
    command: str = ""  # the `wit` command it is (wit/commands.py): its config class and the function it runs
    # Fields that change how it runs, not what it writes (and the engine's and DuckDB's options of every stage that
    # has them): changing them redoes nothing.
    runtime: tuple[str, ...] = ()
    grows: tuple[str, ...] = ()  # options whose larger value continues a finished run (train's steps), not redoes it
    reruns: tuple[str, ...] = ()  # options that, set, run a finished stage again (the crawl's retry_failed)
    costly = False  # what it writes took hours (a crawl, a training run): a redo that would delete it asks first
    # Keys of its table that name files the user gives (the folders between stages are the pipeline's): a relative
    # one is read against the config file's folder (inputs: unless it is a keyword such as 'none', 'latest' or
    # 'cifar10'; wit.pipeline.user_paths).
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("temp_dir",)

    @property
    def config(self):
        return COMMANDS[self.command].config_class

    def fill(self, c: Context) -> dict:
        """The keys the pipeline sets (the folders between stages)."""
        return {}

    def defaults(self, c: Context) -> dict:
        """Keys the [pipeline] table sets unless the stage's own table does."""
        from wit.shards.runner import EngineOptions

        p = c.pipeline
        if issubclass(self.config, EngineOptions):
            return {"engine": p.engine, "workers": p.workers, "ray_address": p.ray_address}
        return {}

    def reads(self, c: Context, cfg) -> list[str]:
        return []

    def writes(self, c: Context, cfg) -> list[str]:
        return [cfg.out]

    def argv(self, c: Context, cfg) -> list[str]:
        """The `wit` command line that runs the same thing (what a colleague would type); ValueError when a value
        has no flag."""
        from wit.shards.options import to_argv

        return ["wit", *self.command.split(), *to_argv(cfg)]

    def call(self, c: Context, cfg) -> dict:
        """Run the stage: its command's own function on its config; the summary."""
        return COMMANDS[self.command].runs(cfg)

    def figures(self, summary: dict) -> dict:
        """What the stage's end line shows: rows in, kept, dropped by reason, or the stage's own figures."""
        return {}

    def resume_note(self, c: Context, cfg) -> str:
        """What resuming it really does, when its command cannot always go on where it stopped ('' otherwise)."""
        return ""

    def all_runtime(self) -> set[str]:
        from wit.shards.runner import EngineOptions
        from wit.shards.sql import SQLOptions

        names = set(self.runtime)
        for base in (EngineOptions, SQLOptions):
            if issubclass(self.config, base):
                names |= {f.name for f in dataclasses.fields(base)}
        return names


def funnel(rows: int, kept: int, dropped: dict) -> dict:
    return {"rows": rows, "kept": kept, "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))}


class Download(Stage):
    """The crawl. Options that decide its output: the lists and how they are read (format, columns), the shard
    size, what is stored of an image (image_size, resize_mode, encode_quality, max_pixels) and which rows may be
    fetched at all (allow_net, allow_userinfo, robots: ignore_robots, user_agent_token). The others say only how
    rows are fetched (FETCH: how long and how hard to try a server, how much to take from it): like the workers,
    they apply to the rows not yet fetched, and changing them redoes nothing; retry_failed runs a finished crawl
    again to re-crawl its transient failures, as `wit download --retry-failed` does."""
    name, command = "download", "download"
    FETCH = ("timeout", "deadline", "min_rate", "retries", "per_host", "per_host_rate", "host_failures", "max_bytes")
    runtime = ("processes", "threads", "distributor", "ray_address", "progress", "memory_limit", "temp_dir",
               "retry_failed", *FETCH)
    reruns = ("retry_failed",)
    costly = True

    def fill(self, c):
        if c.before:
            return {"lists": (join(c.layout.balance, "urls"),), "out": c.layout.raw}
        if not c.pipeline.lists:
            raise WitError("[pipeline] lists: the download stage needs the URL lists")
        return {"lists": c.pipeline.lists, "out": c.layout.raw}

    def defaults(self, c):
        p, d = c.pipeline, {}
        if p.workers:
            d["processes"] = p.workers
        if p.engine == "ray":
            d.update(distributor="ray", ray_address=p.ray_address)
        return d

    def reads(self, c, cfg):
        return list(cfg.lists)

    def call(self, c, cfg):
        summary = super().call(c, cfg)
        if summary.get("missing_shards"):  # the pipeline stops here: the stages after it need every shard
            raise WitError(f"{cfg.out}: shards not finished ({', '.join(summary['missing_shards'][:5])}); "
                           "run the pipeline again to resume")
        return summary

    def figures(self, s):
        return funnel(s["rows"], s["ok"], s["failures_by_reason"])


class Text(Stage):
    name, command = "text", "filter text"

    def fill(self, c):
        return {"inputs": (c.layout.raw,), "out": c.layout.verdicts("text")}

    def reads(self, c, cfg):
        return list(cfg.inputs)

    def figures(self, s):
        figures = funnel(s["rows"], s["kept"], s["dropped"])
        if s.get("languages"):  # what langid said of the captions it judged: the five most common, then the rest
            top = list(s["languages"].items())
            figures["languages"] = ", ".join(f"{k} {v:,}" for k, v in top[:5]) + (
                f", other {sum(v for _, v in top[5:]):,}" if len(top) > 5 else "")
        return figures


class Images(Stage):
    name, command = "images", "filter images"
    inputs = ("eval_sets",)

    def fill(self, c):
        return {"raw": c.layout.raw, "out": c.layout.verdicts("images")}

    def reads(self, c, cfg):
        return [cfg.raw, *cfg.eval_sets]

    def figures(self, s):
        return funnel(s["rows"], s["kept"], s["dropped"])


class Dedup(Stage):
    name, command = "dedup", "dedup"

    def fill(self, c):
        f = {"images": c.layout.verdicts("images"), "out": c.layout.verdicts("dedup")}
        if "text" in c.declared:
            f["after"] = (c.layout.verdicts("text"),)
        return f

    def reads(self, c, cfg):
        return [cfg.images, *cfg.after]

    def figures(self, s):  # the rows earlier stages dropped are theirs: counted apart, not as this stage's drops
        figures = funnel(s["kept"] + sum(s["dropped"].values()), s["kept"], s["dropped"])
        return figures | ({"dropped_before": s["dropped_before"]} if s.get("dropped_before") else {})


class Queries(Stage):
    name, command = "queries", "queries build"
    inputs = ("unigrams", "bigrams", "titles", "wordnet", "extra")

    def fill(self, c):
        return {"out": c.layout.queries}

    def reads(self, c, cfg):
        sources = [cfg.unigrams, cfg.bigrams, cfg.titles, *cfg.extra]
        from wit.filters.queries import WORDSEGMENT

        return [s for s in sources if s and s != WORDSEGMENT]  # the wordnet folder is large and never edited

    def writes(self, c, cfg):
        from wit.filters.queries import summary_path

        return [cfg.out, summary_path(cfg.out)]

    def figures(self, s):
        return {"entries": s["entries"]}


class Match(Stage):
    name, command = "match", "curate match"

    def fill(self, c):
        f = {"inputs": c.pipeline.lists if c.before else (c.layout.raw,), "out": c.layout.matches}
        if c.before and not c.pipeline.lists:
            raise WitError("[pipeline] lists: balancing before download matches the URL lists, and none are given")
        if "queries" in c.declared:
            f["queries"] = c.layout.queries
        return f

    def reads(self, c, cfg):
        return [*cfg.inputs, cfg.queries]

    def call(self, c, cfg):
        if not c.before:
            return super().call(c, cfg)
        from wit.filters.match import run
        from wit.shards.lists import find_lists

        # balance before download matches the URL lists themselves, found as `wit download` finds them
        return run(replace(cfg, inputs=tuple(find_lists(list(cfg.inputs)))))

    def figures(self, s):
        return {"rows": s["rows"], "matched": s["matched_rows"]}


class Balance(Stage):
    name, command = "balance", "curate balance"

    def fill(self, c):
        f = {"matches": (c.layout.matches,), "out": c.layout.balance}
        if not c.before:
            f["verdicts"] = c.verdict_folders()  # after the filters: t aims at what they kept
        return f

    def reads(self, c, cfg):
        return [*cfg.matches, *cfg.verdicts]

    def figures(self, s):
        pairs = s["pairs"]
        return funnel(pairs["rows"], pairs["selected"],
                      {k: pairs[k] for k in ("not_in_pool", "no_query_match", "not_selected") if pairs.get(k)})


class Reshard(Stage):
    name, command = "reshard", "shards write"

    def fill(self, c):
        f = {"raw": c.layout.raw, "out": c.layout.corpus, "verdicts": c.verdict_folders()}
        if "balance" in c.declared:
            f["selection"] = c.layout.selection
        return f

    def reads(self, c, cfg):
        return [cfg.raw, *cfg.verdicts, *([cfg.selection] if cfg.selection else [])]

    def figures(self, s):
        return {"samples": s["samples"], "shards": s["shards"]}


class Audit(Stage):
    name, command = "audit", "audit"

    def fill(self, c):
        return {"root": c.layout.root, "out": c.layout.audit}

    def reads(self, c, cfg):
        lay = c.layout
        return [lay.raw, *c.verdict_folders(), lay.balance, lay.corpus, lay.queries]

    def figures(self, s):
        return {"rows in": s["rows"], "kept in the end": s["kept"], "report": s["report"]}


class Train(Stage):
    """Runs as `wit train` in its own process: with nproc > 1 that command hands the config to torchrun, and one
    process either way keeps the pipeline's process free of the model and the CUDA context."""
    name, command = "train", "train"
    runtime = ("log_every", "tensorboard", "log_samples", "keep", "ckpt_every", "ckpt_minutes")
    grows = ("steps",)  # more steps: `wit train --resume latest` goes on from the last checkpoint
    costly = True
    inputs, outputs = ("resume",), ("ckpt",)

    def fill(self, c):
        return {"data": join(c.layout.corpus, "index.json")}

    def defaults(self, c):
        d = {"resume": "latest", "ckpt": c.layout.checkpoints}  # a kill resumes exactly
        if is_local(c.layout.root):
            d["out"] = c.layout.train  # the run folder is local: logs, config, TensorBoard
        return d

    def reads(self, c, cfg):
        return [c.layout.corpus]

    def writes(self, c, cfg):
        inside = absolute(cfg.out).startswith(c.layout.root + "/")  # a local run folder beside an s3:// root holds only logs
        return [cfg.ckpt_dir, *([cfg.out] if inside else [])]

    def argv(self, c, cfg):
        wit, train, *flags = super().argv(c, cfg)
        return [wit, train, "--nproc", str(c.pipeline.nproc), *flags]

    def call(self, c, cfg):
        cmd = [sys.executable, "-m", *self.argv(c, cfg)]
        code = subprocess.call(cmd, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        if code:
            raise WitError(f"wit train exited with code {code}; run the pipeline again to resume from the last "
                           "checkpoint")
        log = os.path.join(cfg.out, "log.jsonl")
        last = {}
        if os.path.exists(log):
            with open(log) as f:
                lines = f.read().splitlines()
            last = json.loads(lines[-1]) if lines else {}
        return {"step": last.get("step"), "loss": last.get("loss"), "checkpoints": cfg.ckpt_dir}

    def figures(self, s):
        return {"steps": s["step"], "loss": None if s["loss"] is None else round(s["loss"], 4),
                "checkpoints": s["checkpoints"]}

    def resume_note(self, c, cfg):
        from wit.trainer.checkpoint import latest

        last = latest(cfg.ckpt_dir)
        if last is None:
            return "it wrote no checkpoint, so training starts again at step 0"
        return f"training goes on from {last.rsplit('/', 1)[-1]}"


class ZeroShot(Stage):
    name, command = "zeroshot", "eval zeroshot"
    inputs = ("data", "prompts")
    runtime = ("batch_size", "workers", "device")

    def fill(self, c):
        f = {"out": c.layout.zeroshot}
        if "train" in c.declared:
            f["checkpoint"] = c.configs["train"].ckpt_dir
        return f

    def reads(self, c, cfg):
        return [cfg.data, *([cfg.checkpoint] if cfg.checkpoint else [])]

    def figures(self, s):
        return {"images": s["images"], "top1": f"{100 * s['top1']:.1f}%", "top5": f"{100 * s['top5']:.1f}%"}


STAGES: dict[str, Stage] = {s.name: s for s in (Download(), Text(), Images(), Dedup(), Queries(), Match(),
                                                Balance(), Reshard(), Audit(), Train(), ZeroShot())}
# A sample's journey, with the balance after the filters or before the download.
AFTER = ("download", "text", "images", "dedup", "queries", "match", "balance", "reshard", "audit", "train", "zeroshot")
BEFORE = ("queries", "match", "balance", "download", "text", "images", "dedup", "reshard", "audit", "train",
          "zeroshot")
CORPUS = AFTER[:9]  # the default: lists to corpus and audit; train and zeroshot when named
