"""`make demo`: the whole pipeline on an embedded default, offline, on any machine, in a few minutes on CPU.

Real images that PyPI wheels ship (scikit-learn's handwritten digits, scikit-image and scikit-learn photos) are
served on a loopback HTTP server with captions and some broken links. Then, each stage with the real `wit` command:
download -> text and image filters -> dedup -> query list, match, balance -> reshard -> train a tiny CLIP ->
zero-shot on held-out digits -> audit report.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wit.ingest.loopback import LoopbackImageServer
from wit.ingest.sample_images import digits, package_photos

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = ("a handwritten digit {}", "the digit {}, written by hand", "a scanned digit {}", "a hand-drawn {}")
BROKEN = ("/404", "/500", "/corrupt.jpg", "/page.html", "/bomb.jpg", "/loop", "/reset")


def wit(step: str, *args: str) -> None:
    """Run one stage as a user would, and stop the demo with its message if it fails."""
    print(f"\n=== {step}: wit {' '.join(args)}", flush=True)
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "wit", *args])
    if r.returncode != 0:
        raise SystemExit(f"demo: `{step}` failed with exit code {r.returncode}")
    print(f"--- {step} done in {time.time() - start:.1f} s", flush=True)


def write_list(path: Path, server: LoopbackImageServer, photos: list[str], labels: list[int], n: int) -> None:
    rows = [(f"{server.url}/img/{p}", f"a photo of a {p.rsplit('.', 1)[0].replace('_', ' ')}") for p in photos]
    rows += [(f"{server.url}/img/digit-{i:04d}.jpg", CAPTIONS[i % len(CAPTIONS)].format(WORDS[labels[i]]))
             for i in range(n)]
    rows += [(f"{server.url}{route}", f"a broken link {route}") for route in BROKEN]
    rows.append(("htp:/not-a-url", "a malformed URL"))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        w.writerows(rows)


def write_heldout(folder: Path, images: list[tuple[bytes, int]]) -> None:
    """Digits the crawl never saw, as an image folder `digit <word>/<i>.jpg`, for zero-shot evaluation."""
    for i, (jpeg, label) in enumerate(images):
        d = folder / f"digit {WORDS[label]}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:04d}.jpg").write_bytes(jpeg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-out", help="where the demo writes (replaced on every run)")
    p.add_argument("--crawl", type=int, default=1300, help="digits to crawl; the rest of the 1,797 are held out")
    p.add_argument("--steps", type=int, default=600, help="training steps of the tiny CLIP")
    p.add_argument("--t", type=int, default=100, help="balance: at most about t pairs per query entry")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.time()

    photos = package_photos()
    digit_images = digits()
    labels = [label for _, label in digit_images]
    write_heldout(out / "heldout", digit_images[args.crawl:])
    images = {**photos, **{f"digit-{i:04d}.jpg": jpeg for i, (jpeg, _) in enumerate(digit_images[:args.crawl])}}
    with LoopbackImageServer(images) as server:
        write_list(out / "list.csv", server, sorted(photos), labels, args.crawl)
        print(f"serving {len(images)} real images on {server.url} (from the scikit-image and scikit-learn wheels); "
              f"the list adds {len(BROKEN) + 1} broken links")
        wit("download", "download", str(out / "list.csv"), "--out", str(out / "raw"), "--allow-net", "127.0.0.1/32",
            "--shard-size", "250", "--timeout", "5")

    # langid misreads short templated captions ("a hand-drawn eight"): the demo skips language identification
    wit("text filters", "filter", "text", str(out / "raw"), "--out", str(out / "verdicts" / "text"), "--no-english")
    # digits are 64 px scans: the image filter's minimum short side is lowered from DataComp's 200 px
    wit("image filters", "filter", "images", str(out / "raw"), "--out", str(out / "verdicts" / "images"),
        "--min-side", "32")
    wit("dedup", "dedup", str(out / "verdicts" / "images"), "--out", str(out / "verdicts" / "dedup"), "--near-k", "0",
        "--after", str(out / "verdicts" / "text"))
    wit("query list", "queries", "build", "--out", str(out / "queries.parquet"))
    wit("match", "curate", "match", str(out / "raw"), "--queries", str(out / "queries.parquet"),
        "--out", str(out / "matches"))
    wit("balance", "curate", "balance", str(out / "matches"), "--out", str(out / "balance"), "--t", str(args.t),
        "--verdicts", *(str(out / "verdicts" / v) for v in ("text", "images", "dedup")))
    wit("reshard", "shards", "write", "--raw", str(out / "raw"), "--out", str(out / "corpus"), "--shard-size", "200",
        "--verdicts", str(out / "verdicts" / "text"), str(out / "verdicts" / "images"), str(out / "verdicts" / "dedup"),
        "--selection", str(out / "balance" / "selection"))
    wit("train", "train", "--data", str(out / "corpus" / "index.json"), "--model", "wit-tiny", "--out",
        str(out / "run"), "--steps", str(args.steps), "--batch-size", "64", "--warmup", "30", "--log-every", "50")
    wit("zero-shot", "eval", "zeroshot", "--data", str(out / "heldout"), "--prompts", "folders",
        "--checkpoint", str(out / "run" / "checkpoints"), "--out", str(out / "zeroshot.json"))
    wit("audit", "audit", str(out))

    result = json.loads((out / "zeroshot.json").read_text())
    top1 = result.get("top1", result.get("metrics", {}).get("top1"))
    print(f"\n=== wit demo finished in {time.time() - started:.0f} s")
    print(f"zero-shot top-1 on {len(digit_images) - args.crawl} held-out digits: {100 * top1:.1f}% (chance: 10.0%)")
    print(f"shards and manifests  {out / 'raw'}\ntraining shards       {out / 'corpus'}\n"
          f"checkpoints           {out / 'run' / 'checkpoints'}\naudit report          {out / 'audit' / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
