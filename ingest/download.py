"""`wit download`: URL-caption lists -> verified WebDataset shards with wit manifests, resumable.

The run, top to bottom: read and normalise the lists -> check the output holds a crawl of the same lists ->
keep the verified shards, clear anything half-written -> let img2dataset's reader shard the input and its
distributor map WitDownloader over the shards -> summarise the manifests.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
from collections import Counter
from dataclasses import replace

from tqdm import tqdm

from wit.ingest.config import SHARD_DIGITS, DownloadConfig
from wit.ingest.progress import ShardProgress
from wit.ingest.summary import summarize
from wit.shards.lists import find_lists, read_list
from wit.shards.storage import (
    WitError,
    absolute,
    check_writable,
    exists,
    fs_and_path,
    join,
    read_json,
    write_json_atomic,
)
from wit.shards.tables import write_parquet
from wit.shards.verify import shard_names, verify_shard


def download(cfg: DownloadConfig) -> dict:
    """Crawl cfg.lists into cfg.out; a second call with the same arguments resumes. Returns the summary."""
    cfg = replace(cfg, out=absolute(cfg.out))
    check_writable(cfg.out)
    inputs = prepare_inputs(cfg)
    expected = {f"{i:0{SHARD_DIGITS}d}" for i in range(expected_shards(inputs, cfg.shard_size))}
    done = resume_scan(cfg.out)
    start = time.time()
    run_engine(cfg, input_dir=join(cfg.out, "_wit", "input"), done=done, start_shard=0, total_rows=sum(inputs))
    missing = sorted(expected - set(shard_names(cfg.out)))
    new = set(shard_names(cfg.out)) - {f"{i:0{SHARD_DIGITS}d}" for i in done}
    summary = summarize(cfg.out, started=start, new_shards=new)
    summary["missing_shards"] = missing
    write_json_atomic(join(cfg.out, "_wit", "summary.json"), summary)
    return summary


def prepare_inputs(cfg: DownloadConfig) -> list[int]:
    """Normalise every list into `_wit/input/NNNNN.parquet`; refuse an output that holds other lists' crawl."""
    files = find_lists(list(cfg.lists))
    digest, counts, seen = hashlib.sha256(), [], Counter()
    tables = []
    for path in files:
        table = read_list(path, cfg.input_format, cfg.url_col, cfg.caption_col, seen)
        digest.update("\n".join(table["uid"].to_pylist()).encode())
        counts.append(table.num_rows)
        tables.append(table)
    fingerprint = {"lists": files, "rows": counts, "uids_sha256": digest.hexdigest(), "shard_size": cfg.shard_size}
    run_file = join(cfg.out, "_wit", "run.json")
    if exists(run_file):
        previous = read_json(run_file)
        if {k: previous.get(k) for k in fingerprint} != fingerprint:
            raise WitError(
                f"{cfg.out}: holds a crawl of other lists or another shard size ({run_file}); "
                "use a new output folder, or delete this one to start over"
            )
    for i, table in enumerate(tables):
        write_parquet(join(cfg.out, "_wit", "input", f"{i:05d}.parquet"), table)
    write_json_atomic(run_file, fingerprint)
    return counts


def expected_shards(counts: list[int], shard_size: int) -> int:
    return sum(math.ceil(n / shard_size) for n in counts)


def resume_scan(out: str) -> set[int]:
    """Ids of shards that are complete and verified; every other shard file is removed so it gets redone."""
    fs, root = fs_and_path(out)
    done, bad = set(), []
    for name in shard_names(out):
        check = verify_shard(out, name)
        (done.add(int(name)) if check.ok else bad.append((name, check.problem)))
    for name, problem in bad:
        print(f"resume: redoing shard {name}: {problem}")
    keep = {f"{i:0{SHARD_DIGITS}d}" for i in done}
    for path in fs.glob(root.rstrip("/") + "/*"):
        base = path.rsplit("/", 1)[-1]
        stem = base.split("_")[0].split(".")[0]
        if stem.isdigit() and stem not in keep:
            fs.rm(path)
    for scratch in ("staging", "tmp"):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{root.rstrip('/')}/_wit/{scratch}", recursive=True)
    return done


def run_engine(cfg: DownloadConfig, input_dir: str, done: set[int], start_shard: int, total_rows: int) -> None:
    """Shard the normalised input with img2dataset's Reader and map WitDownloader over it."""
    # img2dataset takes seconds to import: only a run that downloads pays for it, not a bad-input error. The engine
    # first: it loads img2dataset without torch.
    from wit.ingest.engine import CARRIED_COLUMNS, build_downloader  # isort: skip

    from img2dataset import distributor as distributors
    from img2dataset.reader import Reader

    staging, tmp = join(cfg.out, "_wit", "staging"), join(cfg.out, "_wit", "tmp")
    fs, _ = fs_and_path(cfg.out)
    for folder in (staging, tmp):
        fs.makedirs(fs_and_path(folder)[1], exist_ok=True)
    reader = Reader(
        input_dir, "parquet", "url", "caption", None, None, CARRIED_COLUMNS,
        cfg.shard_size, done, tmp, start_shard,
    )
    downloader = build_downloader(cfg, reader.column_list, staging)
    if cfg.distributor == "multiprocessing":
        run = distributors.multiprocessing_distributor
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


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise WitError(f"--distributor needs {module}: pip install 'wit[{extra}]'") from None
