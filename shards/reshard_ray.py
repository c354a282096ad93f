"""The cluster engine of `wit shards write`: the same plan, the bytes moved by Ray Data's shuffle.

`map_batches` reads each crawled shard's selected samples (the local scatter's own reader and checks), then
`groupby(output shard).map_groups` shuffles them so that one task sees one output shard's samples and writes it
with the local gather's own writer. So the bytes are the same as the local engine's, and the only intermediate
state is Ray's (object store, spilled to its own disk), not files of ours. Ray joins a cluster with
`--ray-address auto` and runs on the local machine otherwise (tests use that).
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc

from wit.shards.reshard_plan import read_partition
from wit.shards.reshard_samples import read_source, write_output
from wit.shards.storage import WitError


def _read(batch: pa.Table, raw: str, plan: str, only: list[int] | None, shard_size: int) -> pa.Table:
    parts = [read_source(raw, src, plan, set(only) if only is not None else None, shard_size)
             for src in batch["src"].to_pylist()]
    table = pa.concat_tables(parts)
    return table.append_column("out_no", pc.divide(table["pos"], pa.scalar(shard_size, pa.int64())))


def _write(group: pa.Table, out: str, plan: str, width: int) -> pa.Table:
    shard = f"{group['out_no'][0].as_py():0{width}d}"
    rows = read_partition(plan, "by_out", "shard", shard)
    n = write_output(out, shard, rows, group.select(["pos", "key", "jpg"]), where="the Ray shuffle")
    return pa.table({"shard": [shard], "samples": [n]})


def exchange(cfg, plan, senders: list[str], todo: list[str]) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import ray.data

    if not ray.is_initialized():
        kwargs = {"num_cpus": cfg.workers} if cfg.ray_address is None and cfg.workers else {}
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    only = None if len(todo) == len(plan.counts) else sorted(int(s) for s in todo)
    ds = ray.data.from_items([{"src": s} for s in senders], override_num_blocks=len(senders))
    ds = ds.map_batches(_read, batch_size=1, batch_format="pyarrow",
                        fn_kwargs={"raw": cfg.raw, "plan": plan.folder, "only": only, "shard_size": cfg.shard_size})
    writing = {"out": cfg.out, "plan": plan.folder, "width": len(todo[0])}  # every name has the plan's width
    ds = ds.groupby("out_no", num_partitions=len(todo)).map_groups(_write, batch_format="pyarrow", fn_kwargs=writing)
    written = {r["shard"]: r["samples"] for r in ds.take_all()}
    lost = sorted(set(todo) - set(written))
    if lost or any(written[s] != plan.counts[s] for s in written):
        raise WitError(f"{cfg.out}: the Ray shuffle wrote {len(written)} of {len(todo)} shards (missing {lost[:3]})")
