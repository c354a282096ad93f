"""`make demo`: the main job end to end on an embedded default, offline, on any machine.

It serves real images that PyPI wheels ship (scikit-image and scikit-learn photos, scikit-learn's handwritten
digits) on a loopback HTTP server, with captions and a few broken URLs, and crawls them with `wit download`
into WebDataset shards with parquet manifests.
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from ingest.config import DownloadConfig
from ingest.download import download
from ingest.loopback import LoopbackImageServer
from ingest.sample_images import digits, package_photos
from ingest.summary import format_summary

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BROKEN = ("/404", "/500", "/corrupt.jpg", "/page.html", "/bomb.jpg", "/loop", "/reset")


def make_list(server: LoopbackImageServer, photos: list[str], n_digits: int, path: Path) -> int:
    rows = [(f"{server.url}/img/{name}", f"a photo of a {name.rsplit('.', 1)[0].replace('_', ' ')}") for name in photos]
    rows += [(f"{server.url}/img/digit-{i:04d}.jpg", f"a handwritten digit {DIGIT_WORDS[label]}")
             for i, label in enumerate(server.digit_labels[:n_digits])]
    rows += [(f"{server.url}{route}", f"a broken link {route}") for route in BROKEN]
    rows.append(("htp:/not-a-url", "a malformed URL"))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "caption"])
        writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-out", help="where the demo writes (replaced on every run)")
    p.add_argument("--digits", type=int, default=600, help="how many digit images to crawl (max 1797)")
    args = p.parse_args(argv)

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    photos = package_photos()
    digit_images = digits()
    images = dict(photos)
    images.update({f"digit-{i:04d}.jpg": jpeg for i, (jpeg, _) in enumerate(digit_images)})
    with LoopbackImageServer(images) as server:
        server.digit_labels = [label for _, label in digit_images]
        n = make_list(server, sorted(photos), args.digits, out / "list.csv")
        print(f"[1/1] download: {n} URL-caption pairs served on {server.url} (images from scikit-image/-learn wheels)")
        summary = download(DownloadConfig(
            lists=(str(out / "list.csv"),), out=str(out / "raw"), allow_net=("127.0.0.1/32",),
            shard_size=250, timeout=5,
        ))
    print(format_summary(summary))
    print(f"\nshards and manifests: {out / 'raw'}  (e.g. duckdb -c \"SELECT status, reason, count(*) "
          f"FROM '{out / 'raw'}/*.parquet' GROUP BY ALL\")")
    return 1 if summary.get("missing_shards") else 0


if __name__ == "__main__":
    raise SystemExit(main())
