"""`make demo`: the whole pipeline on an embedded default, offline, on any machine, in a few minutes on CPU.

Real images that PyPI wheels ship (scikit-learn's handwritten digits, scikit-image and scikit-learn photos) are
served on a loopback HTTP server with captions and some broken links. Then `wit pipeline` runs the config that
ships in the package (wit/demo.toml) in the output folder, as a user runs their own: download -> text and image
filters -> dedup -> query list, match, balance -> reshard -> audit report -> train a tiny CLIP -> zero-shot on
held-out digits.

Every run gives the same figures. The URLs are part of every uid, and the balance draws by uid, so the server
listens on a fixed port (DEMO_PORT); everything else is seeded by the stages' own seeds. A fixed port rather than
a made-up host name mapped to 127.0.0.1: the crawler resolves every host in its worker processes (its guard checks
the resolved address), so such a name would have to be taught to each of them, and any that missed it would ask
real DNS about it. When the port is taken the demo serves on a free one and says that its figures will differ.
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
DEMO_PORT = 18710  # below Linux's ephemeral range (32768-60999), so no outgoing connection holds it
CONFIG = Path(__file__).with_name("demo.toml")
MARKER = ".wit-demo"  # an output folder the demo made, and may replace


def prepare(out: Path) -> None:
    """A fresh output folder; one that exists is replaced only when an earlier demo made it."""
    made = (out / MARKER).exists() or ((out / "list.csv").exists() and (out / "heldout").is_dir())  # or an older demo
    if out.exists() and any(out.iterdir()) and not made:
        raise SystemExit(f"demo: {out} exists and was not made by the demo; choose another --out")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `make demo`, which replaces this folder on every run\n")


def serve(images: dict[str, bytes]) -> tuple[LoopbackImageServer, bool]:
    """The image server on DEMO_PORT, or on a free port when that one is taken (then False)."""
    try:
        return LoopbackImageServer(images, port=DEMO_PORT), True
    except OSError:
        return LoopbackImageServer(images), False


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
    p.add_argument("--steps", type=int, help="training steps of the tiny CLIP (default: the config's, 600)")
    p.add_argument("--t", type=int, help="balance: at most about t pairs per query entry (default: the config's, 100)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    prepare(out)
    started = time.time()

    photos = package_photos()
    digit_images = digits()
    labels = [label for _, label in digit_images]
    write_heldout(out / "heldout", digit_images[args.crawl:])
    images = {**photos, **{f"digit-{i:04d}.jpg": jpeg for i, (jpeg, _) in enumerate(digit_images[:args.crawl])}}
    sets = [f"train.steps={args.steps}"] * (args.steps is not None) + [f"balance.t={args.t}"] * (args.t is not None)
    (out / CONFIG.name).write_text(CONFIG.read_text())  # a copy beside the list: the user's own template to edit
    command = ["wit", "pipeline", CONFIG.name, *(a for s in sets for a in ("--set", s))]
    server, fixed = serve(images)
    with server:
        write_list(out / "list.csv", server, sorted(photos), labels, args.crawl)
        print(f"serving {len(images)} real images on {server.url} (from the scikit-image and scikit-learn wheels); "
              f"the list adds {len(BROKEN) + 1} broken links")
        if not fixed:
            print(f"note: port {DEMO_PORT} is taken, so the URLs differ from a run on it, and with them the uids, the "
                  "balance's draw and the figures")
        print(f"\n$ cd {out} && {' '.join(command)}", flush=True)
        r = subprocess.run([sys.executable, "-m", *command], cwd=out)
    if r.returncode != 0:
        raise SystemExit(f"demo: `wit pipeline` failed with exit code {r.returncode}")

    result = json.loads((out / "zeroshot.json").read_text())
    index = json.loads((out / "corpus" / "index.json").read_text())
    print(f"\n=== wit demo finished in {time.time() - started:.0f} s")
    print(f"corpus: {index['total']:,} pairs in {len(index['shards'])} shards")
    print(f"zero-shot top-1 on {result['images']} held-out digits: {100 * result['top1']:.1f}% "
          f"(chance: {100 * result['chance_top1']:.1f}%)")
    print(f"shards and manifests  {out / 'raw'}\ntraining shards       {out / 'corpus'}\n"
          f"checkpoints           {out / 'train' / 'checkpoints'}\naudit report          {out / 'audit' / 'report.html'}\n"
          f"stage records         {out / '_wit' / 'pipeline'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
