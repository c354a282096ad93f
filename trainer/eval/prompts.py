"""Prompt sets for zero-shot classification: class names and templates, as the CLIP paper uses them.

CIFAR names and the 18 CIFAR templates are facts from the CLIP repo's prompt notebook; ImageNet's 1,000 names and
80 templates come from open_clip at run time (`open_clip.zero_shot_metadata`).
"""
from __future__ import annotations

from wit.shards.storage import WitError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

CIFAR100_CLASSES = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
]

# The same 18 templates serve CIFAR-10 and CIFAR-100 in the CLIP repo.
CIFAR_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
]

NAMES = ("cifar10", "cifar100", "imagenet", "folders")


def prompt_set(name: str, folder_classes: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(class names, templates with one `{}`) for a named set; `folders` uses the dataset's own class names."""
    if name == "cifar10":
        return list(CIFAR10_CLASSES), list(CIFAR_TEMPLATES)
    if name == "cifar100":
        return list(CIFAR100_CLASSES), list(CIFAR_TEMPLATES)
    if name == "imagenet":
        from open_clip import zero_shot_metadata as meta

        # open_clip keeps the templates as callables (c -> str); turn them back into format strings.
        return list(meta.IMAGENET_CLASSNAMES), [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES]
    if name == "folders":
        if not folder_classes:
            raise WitError("--prompts folders: the dataset has no class folder names to use (give a named set)")
        return [clean(c) for c in folder_classes], list(CIFAR_TEMPLATES)
    raise WitError(f"--prompts {name}: unknown prompt set (one of {', '.join(NAMES)})")


def clean(name: str) -> str:
    """Folder name -> class name as written in prompts: `maple_tree` -> `maple tree`."""
    return name.replace("_", " ").strip().lower()


def prompts_for(classname: str, templates: list[str]) -> list[str]:
    """Each template with the class name in its place: `{}` (the CLIP repo's) or `{c}` (CLIP_benchmark's files)."""
    return [fill(t, classname) for t in templates]


def fill(template: str, classname: str) -> str:
    try:
        return template.format(classname, c=classname)
    except (KeyError, IndexError, ValueError) as err:
        raise WitError(f"template {template!r}: has a placeholder other than {{}} or {{c}} ({err!r})") from None
