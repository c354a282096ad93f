"""`wit download`: URL-caption lists -> verified WebDataset shards with wit manifests, resumable.

The run, top to bottom: read and normalise the lists -> check the output holds a crawl of the same lists -> plan
the rows into shards by host (ingest/plan.py; once per crawl) -> keep the verified shards, clear anything
half-written -> a distributor (wit's process pool, or img2dataset's Ray and Spark ones) maps WitDownloader over the
plan's lanes -> re-attempt the rows that failed only because of an --allow-net or --ignore-robots that has changed
since -> summarise the manifests.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import replace

from tqdm import tqdm

from wit.ingest import plan as plans
from wit.ingest.config import DownloadConfig
from wit.ingest.inputs import input_names, prepare_inputs
from wit.ingest.lock import crawl_lock
from wit.ingest.output import (
    by_hosts,
    check_own_folder,
    crawl_shard_names,
    entries,
    one_line_when_disk_full,
    own_shard_file,
    own_shards,
    read_record,
)
from wit.ingest.progress import ShardProgress
from wit.ingest.robots import remove_claims
from wit.ingest.summary import summarize
from wit.shards.storage import (
    WitError,
    absolute,
    check_writable,
    fs_and_path,
    join,
    remove_scratch,
    write_json_atomic,
)
from wit.shards.runner import imap, run_map
from wit.shards.verify import ShardCheck, check_shards

CHECKS_PER_TASK = 64  # shards per resume task: most are trusted by their marker, a few stat calls each


def download(cfg: DownloadConfig) -> dict:
    """Crawl cfg.lists into cfg.out; a second call with the same arguments resumes. Returns the summary."""
    cfg = replace(cfg, out=absolute(cfg.out))
    check_own_folder(cfg.out)  # before anything is written there
    check_writable(cfg.out)
    with crawl_lock(cfg.out), one_line_when_disk_full(cfg.out):
        return _download(cfg)


def _download(cfg: DownloadConfig) -> dict:
    inputs = prepare_inputs(cfg)
    plan = crawl_plan(cfg, inputs)
    done = resume_scan(cfg)
    start = time.time()
    run_engine(cfg, plan, done=done, total_rows=sum(inputs))
    shards = own_shards(read_record(cfg.out))
    finished = {int(n) for n in crawl_shard_names(cfg.out, shards)}
    missing = [shards.name(i) for i in range(plan.shards) if i not in finished]
    if not missing:
        from wit.ingest.retry import reattempt_changed_rules  # it runs the engine too: imported here, not above

        reattempt_changed_rules(cfg)
    shards = own_shards(read_record(cfg.out))
    new = set(crawl_shard_names(cfg.out, shards)) - {shards.name(i) for i in done}
    summary = summarize(cfg.out, started=start, new_shards=new)
    summary["missing_shards"] = missing
    write_json_atomic(join(cfg.out, "_wit", "summary.json"), summary)
    return summary


def crawl_plan(cfg: DownloadConfig, rows: list[int]) -> plans.Plan:
    """The crawl's plan (`_wit/plan/`): made once, by hosts (or in list order for a crawl from before plans), and
    read again by every resume. Prints what the hottest host means for the crawl's time."""
    folder, record = join(cfg.out, "_wit", "plan"), read_record(cfg.out)
    files = plans.plan_files(folder, sum(rows))
    if files is None:
        remove_scratch(folder)  # none, or one cut short
        inputs = [join(cfg.out, "_wit", "input", f"{n}.parquet") for n in input_names(len(rows))]
        if by_hosts(record):
            plans.write_plan(cfg, inputs, folder)
        else:
            plans.write_list_order_plan(inputs, folder, cfg.shard_size)
        files = plans.plan_files(folder, sum(rows))
    return load_plan(cfg, files, start=0, by_host=by_hosts(record))


def load_plan(cfg: DownloadConfig, files: list[tuple[str, int]], start: int, by_host: bool) -> plans.Plan:
    urls = [url for url, _ in files]
    spans = plans.host_spans(cfg, urls, cfg.shard_size) if by_host else []
    plan = plans.Plan(files, start, cfg.shard_size, spans)
    if by_host and (hottest := plans.hottest_host(cfg, urls)):
        print(plans.describe(plan, *hottest, cfg))
    return plan


def verify_shards(cfg: DownloadConfig, names: list[str]) -> list[ShardCheck]:
    """Every shard's check, as a per-shard map: a shard whose verified marker still matches its files is trusted
    without reading its tar; chunks of shards go to the process pool (or Ray), so that a few shards cost no pool."""
    per_task = max(CHECKS_PER_TASK, math.ceil(len(names) / (cfg.processes * 64)))
    chunks = [(cfg.out, names[i:i + per_task]) for i in range(0, len(names), per_task)]
    engine = "ray" if cfg.distributor == "ray" else "local"
    checks = run_map(check_shards, chunks, engine=engine, workers=cfg.processes, ray_address=cfg.ray_address)
    return [check for chunk in checks for check in chunk]


def resume_scan(cfg: DownloadConfig) -> set[int]:
    """Numbers of the crawl's shards that are complete and verified. The files of its other shards, and leftover
    temporaries, are removed so those get redone; a name the run record does not list is never touched."""
    fs, root = fs_and_path(cfg.out)
    shards = own_shards(read_record(cfg.out))
    done = set()
    for check in verify_shards(cfg, crawl_shard_names(cfg.out, shards)):  # another shard is neither trusted nor touched
        if check.ok:
            done.add(int(check.name))
        else:
            print(f"resume: redoing shard {check.name}: {check.problem}")
    for base in entries(cfg.out):
        own = own_shard_file(base, shards)
        if own and (own[1] or own[0] not in done) and fs.isfile(join(root, base)):
            fs.rm(join(root, base))
    for scratch in ("staging", "tmp"):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{root.rstrip('/')}/_wit/{scratch}", recursive=True)
    remove_claims(join(cfg.out, "_wit", "robots"))  # claims of a run killed mid-fetch; the answers are kept
    return done


def run_engine(cfg: DownloadConfig, plan: plans.Plan, done: set[int], total_rows: int) -> None:
    """Map WitDownloader over the plan's lanes (the finished shards left out) with the chosen distributor."""
    # img2dataset takes seconds to import: only a run that downloads pays for it, not a bad-input error. The engine
    # first: it loads img2dataset without torch.
    from wit.ingest.engine import build_downloader  # isort: skip

    from img2dataset import distributor as distributors

    staging = join(cfg.out, "_wit", "staging")
    fs, _ = fs_and_path(cfg.out)
    fs.makedirs(fs_and_path(staging)[1], exist_ok=True)
    downloader = build_downloader(cfg, staging, own_shards(read_record(cfg.out)).width)
    if cfg.distributor == "multiprocessing":
        run = pool_distributor
    elif cfg.distributor == "pyspark":
        _require("pyspark", "spark")
        run = distributors.pyspark_distributor
    elif cfg.distributor == "ray":
        ray = _require("ray", "ray")
        if not ray.is_initialized():
            ray.init(address=cfg.ray_address, log_to_driver=False)
        run = distributors.ray_distributor
    else:
        raise WitError(f"--distributor {cfg.distributor!r}: use multiprocessing, pyspark or ray")
    # img2dataset's distributor draws a bar of shards; ours counts pairs, so silence theirs.
    distributors.tqdm = functools.partial(tqdm, disable=True)
    try:
        with ShardProgress(cfg.out, total_rows, enabled=cfg.progress):
            run(cfg.processes, downloader, plan.lanes(cfg, done), 1000, 1)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(fs_and_path(staging)[1], recursive=True)


def pool_distributor(processes: int, downloader, lanes, _subjob_size: int, max_shard_retry: int) -> None:
    """img2dataset's multiprocessing distributor, on wit's process pool (shards/runner.py). img2dataset's
    `Pool.imap_unordered` waits forever for the task of a worker that died (the out-of-memory killer); the runner
    runs such a lane once more, or stops the crawl in one line. Lanes are handed on as they finish."""
    from img2dataset.distributor import retrier

    def run(shards) -> list:
        results = imap(downloader, shards, workers=processes, ordered=False, progress=False)
        return [row for ok, row in results if not ok]

    retrier(run, run(lanes), max_shard_retry)


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise WitError(f"--distributor needs {module}: pip install 'wit[{extra}]'") from None
