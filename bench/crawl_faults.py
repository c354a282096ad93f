"""bench-crawl-faults: `wit download` vs the img2dataset CLI on a hostile list, one after the other in one run.

The list: the 1,000 Flickr8k photos of ../shared/data with their first real caption, plus faulty rows (captions from
the photos' other captions) shuffled in: over 20% of the list, of every kind the crawler meets on the web -
bodies that trickle 1 byte/s for 60 s, headers sent a byte a second, servers that accept and never answer, hosts
whose connects hang, dead hosts, 404/500, resets, bodies cut mid-way, empty bodies, corrupt JPEGs, HTML, a
decompression bomb, redirect loops, `X-Robots-Tag: noai`, a robots.txt that disallows, `tdm-reservation: 1` - and
a few slow but honest answers. The photos and the faults on their hosts are spread over eight loopback hosts with
Zipf-like shares (1/k: the first holds 37% of them, as a hot CDN does). Both crawlers get the same processes,
threads, timeout, shard size and resize (short side 256, JPEG, WebDataset); then every row of each is checked
against what it should be (wit: its reason; img2dataset: success or not - it honours neither robots.txt nor
TDMRep, so those rows are successes for it). Each server counts the requests it answers at once: the most any of
them saw during wit's crawl must stay within `--per-host` (8 by default) for the whole crawl.
Last lines: RESULT crawl_faults_speedup=<img2dataset seconds / wit seconds> target>=3.0
            RESULT crawl_max_in_flight_per_host=<most seen by any server during wit's crawl> target<=8
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from wit.ingest.loopback import LoopbackImageServer, StuckListener, closed_port  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
# the img2dataset CLI as its console script runs it (the script may not sit beside this python)
IMG2DATASET = [sys.executable, "-c", "import sys; from img2dataset import main; sys.argv[0] = 'img2dataset'; sys.exit(main())"]
GOOD_HOSTS = tuple(f"127.0.0.{11 + i}" for i in range(8))
SHARES = tuple(1 / (k + 1) for k in range(len(GOOD_HOSTS)))  # Zipf-like: 37%, 18%, 12%, ... of the photo hosts' rows
PER_HOST = 8  # wit's default --per-host

# kind -> (rows, route on a photo host (None: a host of its own), wit's reason (None: ok), img2dataset succeeds)
FAULTS = {
    "trickle": (30, "/trickle/{img}", "too_slow", False),
    "dribbled headers": (15, "/dribble", "timeout", False),
    "hang after accept": (20, "/hang", "timeout", False),
    "hung connect": (20, None, {"timeout", "host_unreachable"}, False),
    "dead host": (20, None, {"connection_error", "host_unreachable"}, False),
    "404": (20, "/404", "http_404", False),
    "500": (20, "/500", "http_500", False),
    "reset": (15, "/reset", "connection_reset", False),
    "cut mid-body": (15, "/cut/{img}?at=0.7", "connection_reset", False),
    "empty body": (10, "/empty", "empty_body", False),
    "corrupt jpeg": (15, "/corrupt.jpg", "decode_error", False),
    "html": (15, "/page.html", "unsupported_format", False),
    "bomb": (10, "/bomb.jpg", "decompression_bomb", False),
    "redirect loop": (10, "/loop", "redirect_loop", False),
    "noai": (15, "/noai/{img}", "robots_optout", False),
    "robots.txt disallows": (20, None, "robots_disallowed", True),
    "tdm-reservation": (15, "/tdm/{img}", "tdm_reserved", True),
}
SLOW_OK = 10  # answers that take ~4 s in all but are fine: both must keep them


def photos_and_captions() -> tuple[dict[str, bytes], dict[str, list[str]]]:
    folder = SHARED / "flickr8k" / "images"
    if not folder.is_dir():
        raise SystemExit(f"needs {folder} (../shared/data)")
    captions: dict[str, list[str]] = {}
    with open(SHARED / "flickr8k" / "captions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], []).append(row["caption"].strip())
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.jpg"))}, captions


def build_list(stack: ExitStack, photos: dict[str, bytes], captions: dict[str, list[str]], seed: int,
               scale: float = 1.0):
    """Start the servers; return rows (url, caption, kind) and the servers that count requests in flight."""
    def serve(host, **kw):
        return stack.enter_context(LoopbackImageServer(photos, host=host, trickle_seconds=60, hang_seconds=60,
                                                       slowok_delay=1.0, slowok_seconds=3.0, **kw))

    good = [serve(h) for h in GOOD_HOSTS]
    robots = serve("127.0.0.19", robots_txt="User-agent: *\nDisallow: /img/\n")
    stuck = [stack.enter_context(StuckListener(h)) for h in ("127.0.0.20", "127.0.0.21")]
    dead = [f"http://{h}:{closed_port(h)}" for h in ("127.0.0.22", "127.0.0.23")]
    names = sorted(photos)[: round(len(photos) * scale)]
    rng = random.Random(seed)

    def host():
        return rng.choices(good, weights=SHARES)[0]

    rows = [(f"{host().url}/img/{n}?i={i}", captions[n][0], "good") for i, n in enumerate(names)]
    spare = iter(c for n in names for c in captions[n][1:])
    for kind, (count, route, _, _) in FAULTS.items():
        for j in range(max(1, round(count * scale))):
            img = rng.choice(names)
            if kind == "hung connect":
                base, path = stuck[j % 2].url, f"/img/{img}"
            elif kind == "dead host":
                base, path = dead[j % 2], f"/img/{img}"
            elif kind == "robots.txt disallows":
                base, path = robots.url, f"/img/{img}"
            else:
                base, path = host().url, route.format(img=img)
            sep = "&" if "?" in path else "?"
            rows.append((f"{base}{path}{sep}i={len(rows)}", next(spare), kind))
    for j in range(max(1, round(SLOW_OK * scale))):
        img = max(names[j * 97 % len(names):][:50], key=lambda n: len(photos[n]))  # big enough for any rate floor
        rows.append((f"{host().url}/slowok/{img}?i={len(rows)}", next(spare), "slow ok"))
    rng.shuffle(rows)
    return rows, [*good, robots]


def check_wit(out: Path, rows) -> list[str]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("[0-9]*.parquet")))
    got = table.select(["source_row", "status", "reason"]).to_pylist()
    problems = []
    if sorted(r["source_row"] for r in got) != list(range(len(rows))):
        problems.append("wit: rows missing or doubled")
    for r in got:
        kind = rows[r["source_row"]][2]
        want = None if kind in ("good", "slow ok") else FAULTS[kind][2]
        ok = r["reason"] in want if isinstance(want, set) else r["reason"] == want
        if not ok or (r["status"] == "ok") != (want is None):
            problems.append(f"wit row {r['source_row']} ({kind}): {r['status']}/{r['reason']}, wanted {want}")
    return problems


def check_img2dataset(out: Path, rows) -> list[str]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("*.parquet")))
    got = dict(zip(table["url"].to_pylist(), table["status"].to_pylist()))
    problems = [] if table.num_rows == len(rows) == len(got) else ["img2dataset: rows missing or doubled"]
    for url, _, kind in rows:
        want = kind in ("good", "slow ok") or FAULTS[kind][3]
        if (got.get(url) == "success") != want:
            problems.append(f"img2dataset row {url} ({kind}): {got.get(url)}, wanted {'success' if want else 'failed'}")
    return problems


def counted_from_now(servers, settle: float = 30.0) -> bool:
    """Start the servers' in-flight peaks afresh, once the previous crawler's requests have all ended (a server
    notices a client that left within its route's poll)."""
    end = time.monotonic() + settle
    while time.monotonic() < end and any(s.in_flight for s in servers):
        time.sleep(0.1)
    for s in servers:
        s.max_in_flight = s.in_flight
    return True


def peak_requests(spans, most: int) -> list[str]:
    """The routes of the requests a server counted in flight together at its peak (the first time it was reached),
    with how long each had been in flight then: which answers overlapped."""
    events = sorted([(start, 1, path, start) for start, _, path in spans] + [(end, -1, path, start)
                                                                             for start, end, path in spans])
    live: dict = {}
    for t, step, path, start in events:
        if step > 0:
            live[(start, path)] = t
            if len(live) >= most:
                return [f"{p.split('?')[0]} ({t - s:.2f} s)" for (s, p) in live]
        else:
            live.pop((start, path), None)
    return []


def timed(cmd: list[str], out: Path, log: Path) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the crawler and its worker processes."""
    shutil.rmtree(out, ignore_errors=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                       env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return time.perf_counter() - start, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("wit", "img2dataset"), help="run one crawler (for development)")
    p.add_argument("--scale", type=float, default=1.0, help="a fraction of the photos and faults (for development)")
    args = p.parse_args()
    photos, captions = photos_and_captions()
    work = Path(tempfile.mkdtemp(prefix="bench-crawl-faults-"))
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores here)", flush=True)
    # both crawlers import the same heavy stack: load it into the page cache before anything is timed
    subprocess.run([sys.executable, "-c", "import img2dataset.downloader, wit.ingest.engine"], check=True, cwd=REPO,
                   env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    with ExitStack() as stack:
        rows, servers = build_list(stack, photos, captions, args.seed, args.scale)
        faulty = sum(kind not in ("good", "slow ok") for *_, kind in rows)
        print(f"{len(rows)} rows, {faulty} faulty ({faulty / len(rows):.0%}): "
              + ", ".join(f"{k} {n}" for k, n in Counter(k for *_, k in rows).items()), flush=True)
        lst = work / "list.parquet"
        pq.write_table(pa.table({"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows]}), lst)
        common = [str(args.processes), str(args.threads), f"{args.timeout:g}", str(args.shard_size)]
        crawlers = {
            "img2dataset": ([*IMG2DATASET, "--url_list", str(lst),
                             "--input_format", "parquet", "--url_col", "URL", "--caption_col", "TEXT",
                             "--output_folder", str(work / "img2dataset"), "--output_format", "webdataset",
                             "--resize_mode", "keep_ratio", "--image_size", "256", "--processes_count", common[0],
                             "--thread_count", common[1], "--timeout", common[2],
                             "--number_sample_per_shard", common[3], "--enable_wandb", "False"],
                            check_img2dataset),
            "wit": ([sys.executable, "-m", "wit", "download", str(lst), "--out", str(work / "wit"), "--allow-net",
                     "127.0.0.0/8", "--processes", common[0], "--threads", common[1], "--timeout", common[2],
                     "--shard-size", common[3], "--no-progress"], check_wit),
        }
        seconds, problems, most = {}, [], None
        for name, (cmd, check) in crawlers.items():
            if args.only and name != args.only:
                continue
            if name == "wit":
                most = counted_from_now(servers)
            seconds[name], cpu = timed(cmd, work / name, work / f"{name}.log")
            found = check(work / name, rows)
            problems += found
            print(f"{name:<12} {seconds[name]:6.1f} s wall, {cpu:6.1f} s CPU   rows checked: "
                  f"{len(rows) - len(found)}/{len(rows)} right", flush=True)
        wit_log = (work / "wit.log").read_text() if (work / "wit.log").exists() else ""
        for line in wit_log.splitlines():
            if line.startswith(("plan ", "crawl ", "this run")):
                print("wit:", line)
        if most is not None:
            in_flight = {s.host: s.max_in_flight for s in servers}
            print(f"wit: most requests in flight per server: {in_flight}")
            most = max(in_flight.values())
            busiest = max(servers, key=lambda s: s.max_in_flight)
            print(f"wit: at that peak on {busiest.host}: {peak_requests(busiest.spans, busiest.max_in_flight)}")
    for problem in problems[:20]:
        print("PROBLEM", problem)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if problems:
        print(f"{len(problems)} rows wrong; outputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if len(seconds) == 2:
        print(json.dumps({"seconds": seconds}))
        print(f"RESULT crawl_faults_speedup={seconds['img2dataset'] / seconds['wit']:.2f} target>=3.0")
    if most is not None:
        print(f"RESULT crawl_max_in_flight_per_host={most} target<={PER_HOST}")


if __name__ == "__main__":
    main()
