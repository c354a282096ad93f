"""Small evaluation sets in CLIP_benchmark's WebDataset layout, built from real data: CIFAR-10 test images and
Flickr8k (5 captions per image) from ../shared/data, or, without it, scikit-learn's handwritten digits (labelled, and
captioned with five sentences each) that the PyPI wheel ships."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.conftest import SHARED_DATA
from wit.trainer.eval.prompts import CIFAR10_CLASSES, CIFAR_TEMPLATES

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CAPTIONS = ("a handwritten digit {}", "the digit {}, written by hand", "a scanned {}", "a hand-drawn {}",
                  "the number {} in ink")
# CIFAR-10 in German: a set that brings its own class names and templates (CLIP_benchmark's files, UTF-8)
GERMAN_CIFAR10 = ["Flugzeug", "Auto", "Vogel", "Katze", "Hirsch", "Hund", "Frosch", "Pferd", "Schiff", "Lastwagen"]
GERMAN_TEMPLATES = ["ein Foto von einem {c}.", "ein unscharfes Foto von einem {c}.", "ein Foto des großen {c}."]


def have_shared() -> bool:
    return (SHARED_DATA / "cifar10" / "test.tar").exists() and (SHARED_DATA / "flickr8k" / "captions.csv").exists()


def write_shards(split_dir: Path, samples: list[dict[str, bytes]], per_shard: int) -> None:
    """`0.tar`, `1.tar`, ... of WebDataset samples ({ext: bytes}) and `nshards.txt`."""
    split_dir.mkdir(parents=True)
    shards = [samples[s:s + per_shard] for s in range(0, len(samples), per_shard)]
    for n, shard in enumerate(shards):
        with tarfile.open(split_dir / f"{n}.tar", "w") as tar:
            for i, sample in enumerate(shard, start=n * per_shard):
                for ext, data in sample.items():
                    info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (split_dir / "nshards.txt").write_text(f"{len(shards)}\n")


def classification_set(folder: Path, n: int, german: bool = False, per_shard: int = 100) -> Path:
    """n labelled images (spread over the classes), with classnames.txt and templates beside the split."""
    if have_shared():
        from wit.trainer.eval.datasets import labelled

        items = list(labelled(str(SHARED_DATA / "cifar10" / "test.tar"), limit=n).items())
        pairs = [(data, CIFAR10_CLASSES.index(label)) for _, data, label in items]
        classes = GERMAN_CIFAR10 if german else CIFAR10_CLASSES
        templates = GERMAN_TEMPLATES if german else [t.replace("{}", "{c}") for t in CIFAR_TEMPLATES]
    else:
        from wit.ingest.sample_images import digits

        pairs = digits(size=32)[:n]
        classes = [f"Ziffer {d}" for d in DIGITS] if german else [f"digit {d}" for d in DIGITS]
        templates = GERMAN_TEMPLATES if german else ["a photo of the {c}.", "a scan of a {c}.", "a drawing of a {c}."]
    write_shards(folder / "test", [{"jpg": jpeg, "cls": str(label).encode()} for jpeg, label in pairs], per_shard)
    (folder / "classnames.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n", encoding="utf-8")
    return folder


def captioned_images(n: int) -> list[tuple[bytes, list[str]]]:
    """n real images with 5 captions each."""
    if have_shared():
        import csv

        flickr = SHARED_DATA / "flickr8k"
        captions: dict[str, list[str]] = {}
        with open(flickr / "captions.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                captions.setdefault(row["image"], []).append(row["caption"].strip())
        names = list(captions)[:n]
        return [((flickr / "images" / name).read_bytes(), captions[name][:5]) for name in names]
    from wit.ingest.sample_images import digits

    # numbered, so that no two images share a caption: identical captions tie exactly, and ties are where wit's
    # ranks (ties count against the model) and torch.topk's (index order) differ
    return [(jpeg, [f"{c.format(DIGITS[label])}, scan {i}" for c in DIGIT_CAPTIONS])
            for i, (jpeg, label) in enumerate(digits(size=64)[:n])]


def retrieval_set(folder: Path, n: int, per_shard: int = 50) -> Path:
    """n images, their 5 captions one per line of the sample's .txt, and dataset_type.txt = retrieval."""
    samples = [{"jpg": jpeg, "txt": "\n".join(caps).encode("utf-8")} for jpeg, caps in captioned_images(n)]
    write_shards(folder / "test", samples, per_shard)
    (folder / "dataset_type.txt").write_text("retrieval\n")
    return folder
