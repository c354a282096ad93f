"""`wit download`: URL-caption lists -> verified WebDataset shards with wit manifests, resumable.

The run, top to bottom: read and normalise the lists -> check the output holds a crawl of the same lists ->
keep the verified shards, clear anything half-written -> let img2dataset's reader shard the input and a distributor
(wit's process pool, or img2dataset's Ray and Spark ones) map WitDownloader over the shards -> summarise the
manifests.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import replace

from tqdm import tqdm

from wit.ingest.config import DownloadConfig
from wit.ingest.inputs import prepare_inputs
from wit.ingest.lock import crawl_lock
from wit.ingest.output import (
    check_own_folder,
    crawl_shard_names,
    entries,
    one_line_when_disk_full,
    own_shard_file,
    own_shards,
    planned_shards,
    read_record,
)
from wit.ingest.progress import ShardProgress
from wit.ingest.summary import summarize
from wit.shards.storage import (
    WitError,
    absolute,
    check_writable,
    fs_and_path,
    join,
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
    done = resume_scan(cfg)
    start = time.time()
    run_engine(cfg, input_dir=join(cfg.out, "_wit", "input"), done=done, start_shard=0, total_rows=sum(inputs))
    shards = own_shards(read_record(cfg.out))
    finished = {int(n) for n in crawl_shard_names(cfg.out, shards)}
    missing = [shards.name(i) for i in range(planned_shards(inputs, cfg.shard_size)) if i not in finished]
    new = {shards.name(i) for i in finished - done}
    summary = summarize(cfg.out, started=start, new_shards=new)
    summary["missing_shards"] = missing
    write_json_atomic(join(cfg.out, "_wit", "summary.json"), summary)
    return summary


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
    return done


def run_engine(cfg: DownloadConfig, input_dir: str, done: set[int], start_shard: int, total_rows: int) -> None:
    """Shard the normalised input (img2dataset's Reader, streamed) and map WitDownloader over it."""
    # img2dataset takes seconds to import: only a run that downloads pays for it, not a bad-input error. The engine
    # first: it loads img2dataset without torch.
    from wit.ingest.engine import CARRIED_COLUMNS, build_downloader  # isort: skip

    from img2dataset import distributor as distributors

    from wit.ingest.reader import StreamingReader

    staging, tmp = join(cfg.out, "_wit", "staging"), join(cfg.out, "_wit", "tmp")
    fs, _ = fs_and_path(cfg.out)
    for folder in (staging, tmp):
        fs.makedirs(fs_and_path(folder)[1], exist_ok=True)
    reader = StreamingReader(
        input_dir, "parquet", "url", "caption", None, None, CARRIED_COLUMNS,
        cfg.shard_size, done, tmp, start_shard,
    )
    downloader = build_downloader(cfg, reader.column_list, staging, own_shards(read_record(cfg.out)).width)
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
            run(cfg.processes, downloader, reader, 1000, 1)
    finally:
        for folder in (tmp, staging):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(fs_and_path(folder)[1], recursive=True)


def pool_distributor(processes: int, downloader, reader, _subjob_size: int, max_shard_retry: int) -> None:
    """img2dataset's multiprocessing distributor, on wit's process pool (shards/runner.py). img2dataset's
    `Pool.imap_unordered` waits forever for the shard of a worker that died (the out-of-memory killer); the runner
    runs such a shard once more, or stops the crawl in one line. Shards are handed on as they finish."""
    from img2dataset.distributor import retrier

    def run(shards) -> list:
        results = imap(downloader, shards, workers=processes, ordered=False, progress=False)
        return [row for ok, row in results if not ok]

    retrier(run, run(reader), max_shard_retry)


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise WitError(f"--distributor needs {module}: pip install 'wit[{extra}]'") from None
