"""`wit eval suite`: the task list (DataComp's form and its shipped 38 tasks), eval_results.jsonl and the table, the
forms of data a task reads, features encoded once, and its one-line errors."""
from __future__ import annotations

import json
import re

import open_clip
import pytest
import torch

from tests.eval_sets import captioned_images, classification_set, retrieval_set
from wit.cli import main
from wit.shards.storage import WitError
from wit.trainer.eval.datasets import benchmark_set
from wit.trainer.eval.model import MODEL_CONFIGS
from wit.trainer.eval.suite import Encoder, evaluate_suite
from wit.trainer.eval.tasks import load_tasks, read_task_list

pytestmark = pytest.mark.data_fallback  # the sets differ without ../shared/data
MODEL = ["--model", "wit-tiny", "--random-init", "--device", "cpu", "--batch-size", "64"]


def test_shipped_list_is_datacomps_38_tasks_with_their_main_metrics(tmp_path):
    tasks = read_task_list("datacomp")
    assert len(tasks) == 38 and list(tasks)[:2] == ["vtab/caltech101", "cifar10"]
    main_metric = {t["name"]: t.get("main_metric", "acc1") for t in tasks.values()}
    assert [n for n, m in main_metric.items() if m == "mean_per_class_recall"] == [
        "Caltech-101", "FGVC Aircraft", "Oxford Flowers-102", "Oxford-IIIT Pet"]
    assert main_metric["Flickr"] == main_metric["MSCOCO"] == "mean_recall@1"
    assert main_metric["ImageNet 1k"] == main_metric["Camelyon17"] == "acc1"
    assert {main_metric[n] for n in ("WinoGAViL", "iWildCam", "FMoW", "Dollar Street", "GeoDE")} == {
        "jaccard_score_10-12", "F1-macro_all", "acc_worst_region", "acc_top5_wg", "acc_wg"}
    # nothing under --root: the first task that wit scores names the folder it looked for
    with pytest.raises(WitError, match=r"task 'vtab/caltech101': no data at .*/wds_vtab-caltech101_test"):
        load_tasks("datacomp", str(tmp_path))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    classification_set(root / "wds_cifar10_test", 60)
    retrieval_set(root / "wds_flickr", 12)
    # wit's own forms of the same data: a folder of class folders, and images + an image,caption CSV
    for n, (_, data, label) in enumerate(benchmark_set(str(root / "wds_cifar10_test")).labelled().items()):
        (root / "folders" / f"class {label}").mkdir(parents=True, exist_ok=True)
        (root / "folders" / f"class {label}" / f"{n}.jpg").write_bytes(data)
    (root / "photos").mkdir()
    rows = ["image,caption"]
    for n, (jpeg, captions) in enumerate(captioned_images(12)):
        (root / "photos" / f"{n}.jpg").write_bytes(jpeg)
        rows += [f'{n}.jpg,"{c}"' for c in captions]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    (root / "tasks.yml").write_text("""\
cifar10:
  name: CIFAR-10
  size: 10000
  tags: []
folders:
  name: CIFAR-10 folders
  path: folders
  main_metric: mean_per_class_recall
retrieval/flickr:
  name: Flickr
  path: wds_flickr
  main_metric: mean_recall@1
flickr_csv:
  name: Flickr CSV
  path: photos
  captions: captions.csv
  main_metric: text_retrieval_recall@5
misc/winogavil:
  name: WinoGAViL
  main_metric: jaccard_score_10-12
""")
    return root


def test_suite_writes_datacomps_results_and_a_table_with_the_average(root, tmp_path, capsys):
    out = tmp_path / "eval_results.jsonl"
    assert main(["eval", "suite", "--tasks", str(root / "tasks.yml"), "--root", str(root), *MODEL,
                 "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["key"], r["dataset"]) for r in lines] == [("cifar10", "CIFAR-10"), ("folders", "CIFAR-10 folders"),
                                                        ("retrieval/flickr", "Flickr"), ("flickr_csv", "Flickr CSV")]
    cifar, folders, flickr, csv_form = (r["metrics"] for r in lines)
    assert cifar["images"] == folders["images"] == 60 and cifar["main_metric"] == cifar["acc1"]
    assert folders["main_metric"] == folders["mean_per_class_recall"] and folders["classes"] == 10
    # the same images and captions in CLIP_benchmark's layout and as folder + CSV: the same numbers
    assert flickr["captions"] == csv_form["captions"] == 60 and flickr["main_metric"] == pytest.approx(
        (flickr["image_retrieval_recall@1"] + flickr["text_retrieval_recall@1"]) / 2)
    assert {k: v for k, v in flickr.items() if "recall" in k} == pytest.approx(
        {k: v for k, v in csv_form.items() if "recall" in k})
    table = capsys.readouterr().out
    mean = sum(r["metrics"]["main_metric"] for r in lines) / 4
    assert re.search(rf"\naverage +4 of 5 tasks +{100 * mean:.2f}%\n", table), table
    assert "WinoGAViL" in table and "not computed by wit" in table

    # another run never overwrites these results
    before = out.read_bytes()
    assert main(["eval", "suite", "--tasks", str(root / "tasks.yml"), "--root", str(root), *MODEL,
                 "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_images_once_per_dataset_and_prompts_once_per_set(root):
    open_clip.add_model_config(MODEL_CONFIGS)
    model, _, preprocess = open_clip.create_model_and_transforms("wit-tiny")
    enc = Encoder(model.eval(), preprocess, open_clip.get_tokenizer("wit-tiny"), device="cpu", batch_size=64)
    (root / "twice.yml").write_text("a:\n  path: wds_cifar10_test\nb:\n  path: wds_cifar10_test\n"
                                    "  main_metric: mean_per_class_recall\n")
    a, b = evaluate_suite(load_tasks(str(root / "twice.yml"), str(root)), enc)
    assert len(enc.image_cache) == 1 and len(enc.text_cache) == 1
    assert a["metrics"]["acc1"] == b["metrics"]["acc1"]


@pytest.mark.parametrize("text,error", [
    ("cifar10:\n  nmae: x\n", "task 'cifar10': unknown field 'nmae'"),
    ("cifar10: [1, 2\n", "not YAML"),
    ("- cifar10\n", "a task list is a mapping"),
    ("x:\n  path: wds_flickr\n  main_metric: acc1\n", "main_metric acc1 is not a retrieval metric"),
    ("x:\n  path: nowhere\n", "task 'x': no data at .*/nowhere"),
    ("x:\n  path: folders\n  prompts: mnist\n", "prompts 'mnist'"),
])
def test_task_list_errors_are_one_line(root, tmp_path, capsys, text, error):
    (tmp_path / "tasks.yml").write_text(text)
    code = main(["eval", "suite", "--tasks", str(tmp_path / "tasks.yml"), "--root", str(root), *MODEL,
                 "--out", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(error, err), err
    assert not (tmp_path / "out.jsonl").exists()


def test_interleave_puts_each_ranks_share_back_in_order():
    from wit.trainer.eval.suite import interleave

    rows = torch.arange(7.0).view(7, 1)
    assert interleave([rows[0::3], rows[1::3], rows[2::3]]).view(-1).tolist() == list(range(7))
    assert interleave([rows[:1], None]).view(-1).tolist() == [0.0]  # one image, two ranks


def test_an_empty_set_is_a_one_line_error_naming_it(tmp_path, capsys):
    from tests.eval_sets import write_shards

    write_shards(tmp_path / "wds_empty_test" / "test", [], per_shard=1)
    (tmp_path / "wds_empty_test" / "test" / "nshards.txt").write_text("1\n")
    (tmp_path / "wds_empty_test" / "test" / "0.tar").write_bytes(bytes(1024))  # an empty tar: its end marker
    (tmp_path / "wds_empty_test" / "dataset_type.txt").write_text("retrieval\n")
    (tmp_path / "tasks.yml").write_text("retrieval/empty:\n  name: Empty\n  path: wds_empty_test\n")
    assert main(["eval", "suite", "--tasks", str(tmp_path / "tasks.yml"), "--root", str(tmp_path), *MODEL,
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    assert "wds_empty_test: the dataset has no images" in capsys.readouterr().err
