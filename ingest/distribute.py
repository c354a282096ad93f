"""Running a crawl's shards: which of them are already done and verified (the resume scan, a per-shard map), and a
distributor (wit's process pool, or img2dataset's Ray and Spark ones) mapping WitDownloader over a plan's lanes.
`wit download` (ingest/download.py) and the retries (ingest/retry.py) both run their plans through it."""
from __future__ import annotations

import contextlib
import functools
import math

from tqdm import tqdm

from wit.ingest import plan as plans
from wit.ingest.config import DownloadConfig
from wit.ingest.output import crawl_shard_names, entries, own_shard_file, own_shards, read_record
from wit.ingest.progress import ShardProgress
from wit.ingest.robots import remove_claims
from wit.shards.runner import imap, run_map
from wit.shards.storage import WitError, fs_and_path, join
from wit.shards.verify import ShardCheck, check_shards

CHECKS_PER_TASK = 64  # shards per resume task: most are trusted by their marker, a few stat calls each


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
