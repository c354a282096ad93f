"""bench-scale: every global step of the pipeline through its real command, on synthetic pools of 1M, 4M and 16M rows.

A pool has the shapes of real data: 10,000 rows per crawled shard, 65% ok, ~80-character captions, some repeated
pairs and URLs, Zipf-distributed query ids over 500,000 entries (3.5 per pair on average), 5% exact and 2% near
pHash copies, tiny image payloads (one 1 KB tar member per ok row) so that metadata costs dominate. Generated with
DuckDB (not timed). Steps, each a process of its own, timed with the peak RSS of its whole process tree (sampled
from /proc every 0.2 s):

  lists    list normalisation of the crawl (`wit.ingest.download.prepare_inputs`: reading and numbering the URL lists;
           the real `wit download` would fetch every URL)
  text     wit filter text raw --no-english                  (per-row filters per shard, then the global dedups)
  dedup    wit dedup verdicts/images --near-k 2 --after verdicts/text
  balance  wit curate balance matches --t 20000 --verdicts verdicts/text verdicts/dedup
  audit    wit audit <pool>
  reshard  wit shards write --raw raw --verdicts verdicts/text verdicts/dedup --selection balance/selection (plan + exchange)

Every command that takes `--memory-limit` gets `--memory-limit 2GB` (the flag is looked up in its --help, so the
same script measures code from before the flag existed: `--python <other venv>/bin/python`).
Last lines: RESULT scale_peak_rss_gib=<largest peak at the largest N> target<=4.0
            RESULT scale_time_exponent=<slope of log(total time) against log(N), smallest to largest> target<=1.15

    python bench/scale.py [--rows 1000000 4000000 16000000] [--memory-limit 2GB] [--python PY] [--skip lists]
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_proc.py, shared by the benchmarks
from _proc import tree_rss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PER_SHARD = 10_000
ENTRIES = 500_000
STEPS = ("lists", "text", "dedup", "balance", "audit", "reshard")
WORDS = ("a an the dog cat man woman child girl boy red blue green small big old young happy runs sits jumps "
         "walks plays stands on in with at near under beach park street field water snow grass tree house car bike "
         "ball sunset morning night city river mountain table kitchen garden photo picture view").split()


# ---------------------------------------------------------------------------------------------------- the pool
def generate(root: Path, rows: int, threads: int) -> float:
    """raw/ (manifests, tars, stats), verdicts/images/, matches/ and lists/ for `rows` rows; returns seconds."""
    import duckdb

    from wit.shards.sql import literal

    start = time.perf_counter()
    (root / "verdicts").mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET temp_directory = " + literal(str(root / "_gen_tmp")))
    words = "[" + ", ".join(f"'{w}'" for w in WORDS) + "]"
    # index j: the pair a row carries (1% repeat an earlier row's pair, 2% its URL with a caption of their own)
    con.execute(f"""
        CREATE MACRO hh(x, salt) AS (hash(x, salt) % 1000000007)::BIGINT;
        CREATE MACRO u(g, salt) AS (hash(g, salt) % 1000003) / 1000003.0;
        CREATE MACRO url_of(j) AS 'https://img' || (hh(j, 'h') % 20000) || '.example.com/p/' || j || '/photo.jpg';
        CREATE MACRO caption_of(j) AS CASE WHEN hh(j, 'junk') % 40 = 0 THEN 'IMG_' || j || '.jpg'
            ELSE array_to_string([{words}[1 + hh(j, k) % {len(WORDS)}] FOR k IN range(12 + hh(j, 'n') % 6)], ' ') END;
        CREATE MACRO src(g) AS greatest(0, g - 1 - hh(g, 'src') % 5000);
        CREATE TEMP VIEW base AS SELECT g, printf('%05d', g // {PER_SHARD}) AS part, g % {PER_SHARD} AS row,
            CASE WHEN u(g, 'rep') < 0.01 THEN src(g) ELSE g END AS pj,
            CASE WHEN u(g, 'rep') < 0.03 THEN src(g) ELSE g END AS uj,
            u(g, 'ok') < 0.65 AS ok FROM range({rows}) t(g)""")
    reasons = "['http_404', 'timeout', 'connection_error', 'decode_error', 'http_403', 'too_large']"
    copy = "(FORMAT parquet, PARTITION_BY (part), OVERWRITE_OR_IGNORE)"
    con.execute(f"""COPY (SELECT part, md5(g::VARCHAR) AS uid, url_of(uj) AS url, caption_of(pj) AS caption,
        CASE WHEN ok THEN 'ok' ELSE 'failed' END AS status,
        CASE WHEN NOT ok THEN {reasons}[1 + hh(g, 'why') % 6] END AS reason, NULL::VARCHAR AS detail, part AS shard,
        CASE WHEN ok THEN part || printf('%05d', row) END AS key, 256::INT AS width, 256::INT AS height,
        (120 + hh(g, 'w') % 1800)::INT AS original_width, (120 + hh(g, 'h') % 1800)::INT AS original_height,
        CASE WHEN ok THEN sha256(g::VARCHAR) END AS sha256, 'lists/' || (g // 100000) || '.parquet' AS source_file,
        g % 100000 AS source_row FROM base) TO {literal(str(root / 'raw'))} {copy}""")
    # pHash: 5% exact copies of another row's hash, 2% near copies (1-2 bits flipped), the rest random
    con.execute(f"""
        CREATE MACRO h(j) AS ((hash(j, 'ph') // 2)::BIGINT - 4611686018427387904) * 2 + hh(j, 'lo') % 2;
        COPY (SELECT part, md5(g::VARCHAR) AS uid, keep, reason, NULL::VARCHAR AS dup_of, key,
                     CASE WHEN ok THEN sha256(g::VARCHAR) END AS sha256, CASE WHEN ok THEN phash END AS phash,
                     CASE WHEN ok THEN short END AS short_side, NULL::FLOAT AS aspect, NULL::VARCHAR AS detail FROM (
            SELECT *, ok AND short >= 200 AS keep,
                   CASE WHEN NOT ok THEN 'not_ok_in_ingest' WHEN short < 200 THEN 'too_small' END AS reason,
                   CASE WHEN u(g, 'dup') < 0.05 THEN h(hh(g, 'of') % {rows})
                        WHEN u(g, 'dup') < 0.07 THEN xor(h(hh(g, 'of') % {rows}),
                             (1::BIGINT << (hh(g, 'b1') % 62)::INT) | (1::BIGINT << (hh(g, 'b2') % 62)::INT))
                        ELSE h(g) END AS phash FROM (
                SELECT *, least(120 + hh(g, 'w') % 1800, 120 + hh(g, 'h') % 1800) AS short,
                       CASE WHEN ok THEN part || printf('%05d', row) END AS key FROM base)))
        TO {literal(str(root / 'verdicts' / 'images'))} {copy}""")
    # query ids: 0-7 per pair (3.5 on average), entry floor(500000 ** u) - 1: Zipf-like, the head entries in many
    con.execute(f"""COPY (SELECT part, md5(g::VARCHAR) AS uid,
        list_sort(list_distinct([floor(pow({ENTRIES}, u(g * 8 + k, 'e')))::INT - 1 FOR k IN range(hh(g, 'm') % 8)]))
            ::INT[] AS matched, url_of(uj) AS url, caption_of(pj) AS caption,
        CASE WHEN ok THEN 'ok' ELSE 'failed' END AS status FROM base) TO {literal(str(root / 'matches'))} {copy}""")
    con.execute(f"""COPY (SELECT printf('%05d', g // 100000) AS part, url_of(uj) AS url, caption_of(pj) AS caption
                          FROM base) TO {literal(str(root / 'lists'))} {copy}""")
    con.close()
    meta = {b"wit.queries": b"nowhere.parquet", b"wit.queries.version": b"v-bench",
            b"wit.queries.entries": str(ENTRIES).encode()}
    for folder, metadata in (("raw", None), ("verdicts/images", None), ("matches", meta), ("lists", None)):
        _flatten(root / folder, metadata)
    shutil.rmtree(root / "_gen_tmp", ignore_errors=True)
    shards = sorted(p.stem for p in (root / "raw").glob("*.parquet"))
    with get_context("spawn").Pool(threads) as pool:
        pool.map(_write_tar, [(str(root / "raw"), s) for s in shards], chunksize=8)
    return time.perf_counter() - start


def _flatten(folder: Path, metadata: dict | None) -> None:
    """DuckDB's `part=00012/data_0.parquet` -> `00012.parquet` (merging a partition written as several files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in sorted(folder.glob("part=*")):
        files = sorted(part.glob("*.parquet"))
        target = folder / f"{part.name.split('=', 1)[1]}.parquet"
        if len(files) == 1 and metadata is None:
            files[0].rename(target)
        else:
            table = pa.concat_tables([pq.read_table(f) for f in files])
            if metadata:
                table = table.replace_schema_metadata(metadata)
            pq.write_table(table, target)
        shutil.rmtree(part)


def _write_tar(job: tuple[str, str]) -> None:
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO))
    from wit.shards import fasttar

    folder, shard = job
    t = pq.read_table(Path(folder) / f"{shard}.parquet", columns=["key", "status"])
    keys = sorted(k for k, s in zip(t["key"].to_pylist(), t["status"].to_pylist()) if s == "ok")
    with open(Path(folder) / f"{shard}.tar", "wb") as f:
        for key in keys:
            f.write(fasttar.member(f"{key}.jpg", PAYLOAD))
        f.write(bytes(1024))
    (Path(folder) / f"{shard}_stats.json").write_text(json.dumps({"wit": {"verified": True, "rows": t.num_rows,
                                                                           "samples": len(keys)}}))


def _payload() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


PAYLOAD = _payload()


# ---------------------------------------------------------------------------------------------------- measuring


def measure(cmd: list[str], log: Path, tick=None) -> tuple[float, int, int]:
    """(wall seconds, peak tree RSS bytes, exit code) of one command, its output in `log`; `tick()` runs with each
    RSS sample (bench/revoke.py deletes finished output there)."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", CI="1")
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        peak = [0]

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss(proc.pid))
                if tick:
                    tick()
                time.sleep(0.2)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        rc = proc.wait()
        watcher.join()
    return time.perf_counter() - start, peak[0], rc


def has_flag(python: str, command: list[str], flag: str) -> bool:
    # not from the repository's folder, whose wit/ would shadow the door of another checkout's interpreter
    r = subprocess.run([python, "-m", "wit", *command, "--help"], capture_output=True, text=True,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"), cwd=tempfile.gettempdir())
    return flag in r.stdout


def commands(root: Path, python: str, limit: str, workers: int | None) -> dict[str, list[str]]:
    v = root / "verdicts"
    # the crawl's DuckDB limit is a DownloadConfig field (`wit download --memory-limit`), when the code has one
    lists = ("import dataclasses; from wit.ingest.config import DownloadConfig as C; "
             "from wit.ingest.download import prepare_inputs; "
             f"limit = {{'memory_limit': {limit!r}}} if 'memory_limit' in {{f.name for f in dataclasses.fields(C)}} "
             "else {}; "
             f"n = prepare_inputs(C(lists=({str(root / 'lists')!r},), out={str(root / 'crawl')!r}, **limit)); "
             "print(sum(n), 'rows normalised')")
    work = ["--workers", str(workers)] if workers else []
    steps = {
        "lists": [python, "-c", lists],
        "text": [python, "-m", "wit", "filter", "text", str(root / "raw"), "--out", str(v / "text"), "--no-english",
                 *work],
        "dedup": [python, "-m", "wit", "dedup", str(v / "images"), "--out", str(v / "dedup"), "--near-k", "2",
                  "--after", str(v / "text")],
        "balance": [python, "-m", "wit", "curate", "balance", str(root / "matches"), "--out", str(root / "balance"),
                    "--t", "20000", "--verdicts", str(v / "text"), str(v / "dedup"), *work],
        "audit": [python, "-m", "wit", "audit", str(root)],
        "reshard": [python, "-m", "wit", "shards", "write", "--raw", str(root / "raw"), "--out", str(root / "corpus"),
                    "--verdicts", str(v / "text"), str(v / "dedup"), "--selection", str(root / "balance" / "selection"),
                    *work],
    }
    for name, cmd in steps.items():
        if cmd[1] == "-m" and has_flag(python, cmd[3:5] if cmd[3] in ("filter", "curate", "shards") else cmd[3:4],
                                       "--memory-limit"):
            cmd += ["--memory-limit", limit]
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    ap.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit of every step that takes one")
    ap.add_argument("--python", default=sys.executable, help="the interpreter whose wit runs the steps")
    ap.add_argument("--workers", type=int, default=None, help="--workers of the per-shard passes (default: cores)")
    ap.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps not to run")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "wit-bench-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the generated pools")
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    results: dict[int, dict[str, tuple[float, int]]] = {}
    for n in sorted(args.rows):
        root = Path(args.workdir) / f"pool-{n}"
        shutil.rmtree(root, ignore_errors=True)
        gen_s = generate(root, n, threads)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**30
        print(f"N={n:,}: generated in {gen_s:.0f} s ({size:.1f} GiB on disk, {math.ceil(n / PER_SHARD)} shards)",
              flush=True)
        steps = commands(root, args.python, args.memory_limit, args.workers)
        results[n] = {}
        for name in STEPS:
            if name in args.skip:
                continue
            seconds, peak, rc = measure(steps[name], root / f"{name}.log")
            if rc != 0:
                tail = (root / f"{name}.log").read_text()[-1500:]
                sys.exit(f"{name} failed (rc {rc}) at N={n:,}:\n{tail}")
            results[n][name] = (seconds, peak)
            print(f"  {name:8s} {seconds:8.1f} s  peak RSS {peak / 2**30:5.2f} GiB  {n / seconds:>12,.0f} rows/s",
                  flush=True)
        total = sum(s for s, _ in results[n].values())
        print(f"  total    {total:8.1f} s  {n / total:,.0f} rows/s", flush=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    sizes = sorted(results)
    largest = sizes[-1]
    common = [s for s in results[sizes[0]] if all(s in results[n] for n in sizes)]
    peak_gib = max(p for _, p in results[largest].values()) / 2**30
    if len(sizes) > 1:
        t0, t1 = (sum(results[n][s][0] for s in common) for n in (sizes[0], largest))
        exponent = math.log(t1 / t0) / math.log(largest / sizes[0])
        print(f"time exponent over {', '.join(common)}: {exponent:.3f} ({sizes[0]:,} -> {largest:,} rows)")
    else:
        exponent = float("nan")
    print(f"RESULT scale_peak_rss_gib={peak_gib:.2f} target<=4.0")
    print(f"RESULT scale_time_exponent={exponent:.3f} target<=1.15")


if __name__ == "__main__":
    main()
