"""bench-ingest: `wit download` vs the plain img2dataset CLI on the same 10,000 real captions, one run.

The URLs of ../shared/data/url_lists/img2dataset_test_10000.parquet are rewritten to a loopback server over real
photos (Flickr8k from ../shared/data, else the photos PyPI wheels ship). Both crawlers get the same processes,
threads, shard size and resize (short side 256, JPEG, WebDataset); ours adds the guard, manifests and
verification. One loopback host stands in for the list's many hosts, so wit's per-host politeness is set to its
thread count (its default, 8, would give it an eighth of img2dataset's concurrency on this one host).
Each runs twice, alternating; the better run of each counts.
Before that, one core's CPU per image of wit's resizer (JPEGs at least twice the target decoded at reduced size)
and img2dataset's, in process, on the photos whose short side is at least twice `--decode-size` (128 px).
Last line: RESULT ingest_ratio=<wit samples/s / img2dataset samples/s> target>=1.0
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from wit.ingest.loopback import LoopbackImageServer  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
# the img2dataset CLI as its console script runs it (the script may not sit beside this python)
IMG2DATASET = [sys.executable, "-c", "import sys; from img2dataset import main; sys.argv[0] = 'img2dataset'; sys.exit(main())"]


def images() -> dict[str, bytes]:
    folder = SHARED / "flickr8k" / "images"
    if folder.is_dir():
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.jpg"))}
    from wit.ingest.sample_images import package_photos

    return package_photos()


def count_samples(out: Path) -> int:
    n = 0
    for stats in out.glob("*_stats.json"):
        n += json.loads(stats.read_text())["successes"]
    return n


def resize_cpu(pics: dict[str, bytes], size: int, rounds: int = 3) -> None:
    """CPU ms per image of wit's SafeResizer and img2dataset's Resizer on the photos at least twice `size`."""
    from img2dataset.resizer import Resizer
    from PIL import Image

    from wit.ingest.engine import SafeResizer

    big = [b for b in pics.values() if min(Image.open(io.BytesIO(b)).size) >= 2 * size]
    settings = dict(image_size=size, resize_mode="keep_ratio", resize_only_if_bigger=False,
                    upscale_interpolation="lanczos", downscale_interpolation="area", encode_quality=95,
                    encode_format="jpg")
    best = {}
    for _ in range(rounds):
        for name, resizer in (("wit", SafeResizer(**settings)), ("img2dataset", Resizer(**settings))):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            for b in big:
                assert resizer(io.BytesIO(b))[-1] is None
            after = resource.getrusage(resource.RUSAGE_SELF)
            ms = ((after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)) * 1e3 / len(big)
            best[name] = min(best.get(name, ms), ms)
    print(f"resize CPU per image, {len(big)} photos with a short side >= {2 * size} px to {size} px: "
          f"wit {best['wit']:.2f} ms, img2dataset {best['img2dataset']:.2f} ms "
          f"({best['img2dataset'] / best['wit']:.2f}x)", flush=True)


def run(cmd: list[str], out: Path) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start, count_samples(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--decode-size", type=int, default=128)
    args = p.parse_args()
    source = SHARED / "url_lists" / "img2dataset_test_10000.parquet"
    if not source.exists():
        raise SystemExit(f"needs {source} (../shared/data)")
    table = pq.read_table(source)
    pics = images()
    resize_cpu(pics, args.decode_size)
    names = sorted(pics)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    with LoopbackImageServer(pics) as server:
        urls = [f"{server.url}/img/{names[i % len(names)]}" for i in range(table.num_rows)]
        lst = work / "list.parquet"
        pq.write_table(pa.table({"URL": urls, "TEXT": table.column("TEXT")}), lst)
        common = dict(processes=str(args.processes), threads=str(args.threads), shard=str(args.shard_size))
        wit_cmd = [sys.executable, "-m", "wit", "download", str(lst), "--out", str(work / "wit"),
                   "--allow-net", "127.0.0.1/32", "--processes", common["processes"], "--threads", common["threads"],
                   "--shard-size", common["shard"], "--per-host", common["threads"], "--no-progress"]
        i2d_cmd = [*IMG2DATASET, "--url_list", str(lst), "--input_format", "parquet",
                   "--url_col", "URL", "--caption_col", "TEXT", "--output_folder", str(work / "i2d"),
                   "--output_format", "webdataset", "--resize_mode", "keep_ratio", "--image_size", "256",
                   "--processes_count", common["processes"], "--thread_count", common["threads"],
                   "--number_sample_per_shard", common["shard"]]
        best = {"wit": 0.0, "img2dataset": 0.0}
        for round_ in range(args.rounds):
            for name, cmd, out in (("img2dataset", i2d_cmd, work / "i2d"), ("wit", wit_cmd, work / "wit")):
                seconds, samples = run(cmd, out)
                rate = samples / seconds
                best[name] = max(best[name], rate)
                print(f"round {round_ + 1} {name:<12} {samples:>6} samples in {seconds:6.1f} s = {rate:7.1f} samples/s")
    shutil.rmtree(work, ignore_errors=True)
    ratio = best["wit"] / best["img2dataset"]
    print(f"best: wit {best['wit']:.1f} samples/s, img2dataset {best['img2dataset']:.1f} samples/s")
    print(f"RESULT ingest_ratio={ratio:.3f} target>=1.0")


if __name__ == "__main__":
    main()
