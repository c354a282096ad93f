"""`wit embed`'s folders as the filters read them: the plan names every shard the folder must hold, each file is
checked against the embedding schema (wit.shards.schema), and vectors come out as numpy without a copy."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from wit.shards.schema import EMBED_PLAN, embedding_problem
from wit.shards.storage import WitError, exists, join, read_json
from wit.shards.tables import open_parquet, parquet_files


def embedding_files(folder: str) -> tuple[list[tuple[str, str]], dict]:
    """[(shard, url)] of every shard in the folder's plan, and the plan; a shard without its file is an error."""
    plan_url = join(folder, EMBED_PLAN)
    if not exists(plan_url):
        raise WitError(f"{folder}: no {EMBED_PLAN}; not a `wit embed` output folder")
    plan = read_json(plan_url)
    present = {url.rsplit("/", 1)[-1].removesuffix(".parquet"): url for url in parquet_files(folder)}
    files = []
    for shard in plan["shards"]:
        if shard not in present:
            raise WitError(f"{join(folder, shard + '.parquet')}: missing (the plan lists {len(plan['shards'])} shards; "
                           "run `wit embed` again to finish)")
        files.append((shard, present[shard]))
    return files, plan


def check_embedding_file(url: str) -> None:
    problem = embedding_problem(open_parquet(url).schema_arrow)
    if problem:
        raise WitError(f"{url}: not an embedding file: {problem}")


def vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """[n, dim] float32 of a fixed-size list column without nulls."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = arr.type.list_size
    flat = arr.flatten() if arr.offset or arr.null_count else arr.values
    return np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
