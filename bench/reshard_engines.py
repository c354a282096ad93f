"""bench-reshard-engines: which engine moves the reshard's bytes on a cluster, measured on one plan.

One synthetic pool (bench/reshard.py's, tiny payloads) and one plan (wit's own rank step and DuckDB plan); then the
exchange alone (scatter + gather: read crawled tars, move the bytes, write output shards) three ways, each into
its own folder, best of `--rounds`:
  local   wit's two-level exchange on a process pool (the default engine)
  ray     Ray Data: map_batches(read) -> groupby(output shard).map_groups(write)  (shards/reshard_ray.py)
  spark   PySpark (local mode, if installed): parallelize(crawled shards).flatMap(read)
          .repartitionAndSortWithinPartitions(output shard, rank).foreachPartition(write)
All three use the same reader and writer, so their outputs must be byte-identical (checked).
Last line: RESULT reshard_engine_ray_vs_spark=<spark seconds / ray seconds> (above 1: Ray Data is faster)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers: this interpreter, with wit
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # loopback only

from reshard import OUTPUT_SHARD, synthetic_pool  # noqa: E402

from wit.shards import reshard as R  # noqa: E402
from wit.shards import reshard_samples  # noqa: E402
from wit.shards.reshard_plan import build_plan, rank_shard  # noqa: E402
from wit.shards.sql import connect  # noqa: E402


def _spark_partition(rows, out: str, plan: str, width: int):
    """One Spark partition: rows ((out_no, pos), (key, jpg)) sorted by key; one output shard per run of out_no."""
    import pyarrow as pa

    from wit.shards.reshard_plan import read_partition

    def flush(out_no, keys, jpgs):
        shard = f"{out_no:0{width}d}"  # the plan's width, as the other engines name them
        reshard_samples.write_output(out, shard, read_partition(plan, "by_out", "shard", shard),
                       pa.table({"key": keys, "jpg": pa.array(jpgs, pa.binary())}), where="the Spark shuffle")

    current, keys, jpgs = None, [], []
    for (out_no, _), (key, jpg) in rows:
        if out_no != current and keys:
            flush(current, keys, jpgs)
            keys, jpgs = [], []
        current = out_no
        keys.append(key)
        jpgs.append(jpg)
    if keys:
        flush(current, keys, jpgs)


def spark_exchange(cfg: R.ReshardConfig, plan, senders: list[str], todo: list[str]) -> None:
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(f"local[{cfg.workers or os.cpu_count()}]").appName("wit-reshard")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())
    raw, folder, size, out, shards, width = cfg.raw, plan.folder, cfg.shard_size, cfg.out, len(todo), len(todo[0])

    def read(src):
        t = reshard_samples.read_source(raw, src, folder)
        for pos, key, jpg in zip(t["pos"].to_pylist(), t["key"].to_pylist(), t["jpg"].to_pylist()):
            yield (pos // size, pos), (key, jpg)

    (spark.sparkContext.parallelize(senders, len(senders)).flatMap(read)
     .repartitionAndSortWithinPartitions(shards, lambda k: k[0] % shards)
     .foreachPartition(lambda rows: _spark_partition(rows, out, folder, width)))


def local_exchange(cfg: R.ReshardConfig, plan, senders: list[str], todo: list[str]) -> None:
    folder = str(Path(cfg.out) / "_wit" / "exchange")
    with R._mapper(cfg) as map_:
        R._local_exchange(cfg, plan, senders, todo, folder, map_)
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-reshard-engines-"))
    pool = work / "pool"
    synthetic_pool(pool, args.samples, args.workers)
    base = R.ReshardConfig(raw=str(pool / "raw"), out="", verdicts=(str(pool / "verdicts"),),
                           selection=str(pool / "selection"), shard_size=OUTPUT_SHARD, workers=args.workers)
    sources = sorted(p.stem for p in (pool / "raw").glob("*.parquet"))
    with connect("2GB", str(work / "duckdb_tmp")) as con:
        for s in sources:
            rank_shard((base.raw, s, base.seed, str(work / "ranked")))
        plan = build_plan(con, [str(work / "ranked" / f"{s}.parquet") for s in sources], base.verdicts,
                          base.selection, base.shard_size, base.raw, str(work / "plan"))
    engines = {"local": local_exchange}
    try:
        import ray  # noqa: F401

        from wit.shards import reshard_ray

        engines["ray"] = reshard_ray.exchange
    except ImportError:
        print("ray is not installed: skipped")
    try:
        import pyspark  # noqa: F401

        engines["spark"] = spark_exchange
    except ImportError:
        print("pyspark is not installed (pip install pyspark): skipped")
    best: dict[str, float] = {}
    for round_ in range(args.rounds):
        for name, fn in engines.items():
            out = work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            cfg = R.ReshardConfig(**{**base.__dict__, "out": str(out), "engine": name})
            start = time.perf_counter()
            fn(cfg, plan, plan.sources, list(plan.counts))
            seconds = time.perf_counter() - start
            best[name] = min(best.get(name, seconds), seconds)
            print(f"round {round_ + 1} {name:<6} {args.samples:,} samples in {seconds:7.1f} s "
                  f"({args.samples / seconds:8,.0f} samples/s)")
    reference = {p.name: p.read_bytes() for p in sorted((work / "out-local").glob("0*"))}
    for name in engines:
        got = {p.name: p.read_bytes() for p in sorted((work / f"out-{name}").glob("0*"))}
        assert got == reference, f"{name} wrote other bytes than the local exchange"
    print(f"all engines wrote the same {len(reference)} files, byte for byte")
    shutil.rmtree(work, ignore_errors=True)
    if "ray" in best and "spark" in best:
        print(f"RESULT reshard_engine_ray_vs_spark={best['spark'] / best['ray']:.2f}")


if __name__ == "__main__":
    main()
