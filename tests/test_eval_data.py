"""Evaluation data readers on real images: CIFAR-10 as a tar of class folders, folders, shards; Flickr8k."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest

from wit.shards.storage import WitError
from tests.conftest import shared_data, write_csv
from wit.trainer.eval import datasets


def cifar_few(per_class: int = 2) -> list[tuple[str, bytes, str]]:
    src = datasets.labelled(str(shared_data("cifar10", "test.tar")), limit=10 * per_class)
    return list(src.items())


def write_tar(path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def test_cifar_tar_of_class_folders_spreads_the_limit_over_classes():
    url = str(shared_data("cifar10", "test.tar"))
    assert datasets.detect(url) == "tar"
    src = datasets.labelled(url, limit=200)
    items = list(src.items())
    assert src.count == len(items) == 200 and len(src.classes) == 10 and "airplane" in src.classes
    assert Counter(label for _, _, label in items) == {c: 20 for c in src.classes}
    assert all(key.startswith(f"test/{label}/") for key, _, label in items)
    assert datasets.read_bytes(items[0][1]).size == (32, 32)


def test_image_folder(tmp_path):
    for key, data, label in cifar_few():
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / key.rsplit("/", 1)[-1]).write_bytes(data)
    assert datasets.detect(str(tmp_path)) == "folder"
    src = datasets.labelled(str(tmp_path))
    assert src.count == 20 and len(src.classes) == 10
    assert Counter(label for _, _, label in src.items()) == {c: 2 for c in src.classes}
    with pytest.raises(WitError, match="no images"):
        datasets.labelled(str(tmp_path / "cat"))  # images but no class folders below


def test_shards_with_cls_members_or_json_fields(tmp_path):
    few = cifar_few()
    cls = {f"{n:06d}.{ext}": data for n, (_, img, label) in enumerate(few)
           for ext, data in (("jpg", img), ("cls", str(n % 10).encode()))}
    js = {f"{n:06d}.{ext}": data for n, (_, img, label) in enumerate(few)
          for ext, data in (("jpg", img), ("json", json.dumps({"label": label}).encode()))}
    a, b = write_tar(tmp_path / "00000.tar", cls), write_tar(tmp_path / "00001.tar", js)
    assert datasets.detect(a) == "shards"
    assert [lab for _, _, lab in datasets.labelled(a).items()] == [n % 10 for n in range(len(few))]
    both = list(datasets.labelled(str(tmp_path / "{00000..00001}.tar")).items())
    assert [lab for _, _, lab in both[len(few):]] == [label for _, _, label in few]
    assert len(list(datasets.labelled(str(tmp_path / "{00000..00001}.tar"), limit=5).items())) == 5
    with pytest.raises(WitError, match="no class"):
        list(datasets.labelled(b, class_field="species").items())


def test_flickr_folder_and_captions_csv():
    images, csv_file = shared_data("flickr8k", "images"), shared_data("flickr8k", "captions.csv")
    src = datasets.captioned(str(images), str(csv_file), limit=10)
    assert src.n_images == 10 and len(src.captions) == 50  # five captions each
    assert Counter(src.text_image) == {i: 5 for i in range(10)}
    got = list(src.images())
    assert len(got) == 10 and datasets.read_bytes(got[0][1]).mode == "RGB"


def test_caption_errors_name_the_file(tmp_path):
    images = shared_data("flickr8k", "images")
    bad = write_csv(tmp_path / "bad.csv", [("x.jpg", "a cat")], header=("file", "text"))
    with pytest.raises(WitError, match="bad.csv: needs the columns"):
        datasets.captioned(str(images), str(bad))
    missing = write_csv(tmp_path / "missing.csv", [("nope.jpg", "a cat")], header=("image", "caption"))
    with pytest.raises(WitError, match="nope.jpg"):
        datasets.captioned(str(images), str(missing))


def test_caption_shards(tmp_path):
    photos = sorted(shared_data("flickr8k", "images").glob("*.jpg"))[:3]
    members = {f"{n:06d}.{ext}": data for n, p in enumerate(photos)
               for ext, data in (("jpg", p.read_bytes()), ("txt", f"photo {n}".encode()))}
    src = datasets.captioned(write_tar(tmp_path / "00000.tar", members))
    assert src.captions == ["photo 0", "photo 1", "photo 2"] and src.text_image == [0, 1, 2]
    assert [data for _, data in src.images()] == [p.read_bytes() for p in photos]


@pytest.mark.data_fallback  # the sets are CIFAR-10 and Flickr8k, or without ../shared/data digits
def test_clip_benchmark_layout_classification_and_retrieval(tmp_path):
    from tests.eval_sets import classification_set, retrieval_set
    from wit.trainer.eval.prompts import prompts_for

    cls = classification_set(tmp_path / "wds_cifar10_test", 30, german=True, per_shard=12)  # 3 shards
    assert datasets.is_benchmark_set(str(cls)) and not datasets.is_benchmark_set(str(cls), "train")
    bench = datasets.benchmark_set(str(cls))
    assert bench.kind == "classification" and bench.shards.endswith("/test/{0..2}.tar")
    assert len(bench.classes) == 10 and bench.templates[0] == "ein Foto von einem {c}."  # UTF-8, as written
    assert prompts_for(bench.classes[0], bench.templates)[2].startswith("ein Foto des großen ")
    labels = [label for _, _, label in bench.labelled().items()]
    assert len(labels) == 30 and set(labels) <= set(range(10))

    ret = datasets.benchmark_set(str(retrieval_set(tmp_path / "wds_flickr", 7, per_shard=3)))
    src = ret.captioned()
    assert ret.kind == "retrieval" and ret.classes is None
    assert src.n_images == 7 and len(src.captions) == 35 and Counter(src.text_image) == {i: 5 for i in range(7)}
    assert len(list(src.images())) == 7


@pytest.mark.data_fallback
def test_clip_benchmark_layout_errors_name_the_file(tmp_path):
    from tests.eval_sets import classification_set

    root = classification_set(tmp_path / "set", 10)
    (root / "classnames.txt").unlink()
    with pytest.raises(WitError, match="set/classnames.txt: missing"):
        datasets.benchmark_set(str(root))
    (root / "test" / "nshards.txt").write_text("two\n")
    with pytest.raises(WitError, match="nshards.txt: holds 'two'"):
        datasets.benchmark_set(str(root))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(WitError, match="'multilabel' sets are not supported"):
        datasets.benchmark_set(str(root))
    from wit.trainer.eval.prompts import prompts_for

    with pytest.raises(WitError, match="template 'a {x} photo'"):
        prompts_for("cat", ["a {c}.", "a {x} photo"])
