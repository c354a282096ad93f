"""The task list of `wit eval suite`: DataComp's `tasklist.yml` form, and where each task's data lies.

A YAML mapping `key: {name, main_metric, ...}` in file order. DataComp's fields: `name` (written as `dataset` in
eval_results.jsonl), `main_metric` (default `acc1`, as in DataComp's evaluate.py; `mean_recall@1` for retrieval);
its `size`, `time`, `num_classes`, `random_score` and `tags` are read and ignored. wit's fields, all optional:
- `path`: the data, relative to --root (or absolute). Default `wds_<key, / as ->_test`, DataComp's folder for
  CLIP_benchmark's set of that name. A folder in CLIP_benchmark's layout (`<split>/nshards.txt`) is read as one;
  anything else is one of `wit eval`'s forms: a folder of class folders, a tar of them, shards (brace pattern).
- `task`: classification or retrieval (default: the set's dataset_type.txt; else retrieval when the key starts
  with `retrieval/` or `captions` is given).
- `prompts`: for wit's classification forms, a named set of class names and templates (cifar10, cifar100,
  imagenet, folders; default folders); CLIP_benchmark's sets bring their own.
- `captions`: for retrieval from a folder of images, the `image,caption` CSV (relative to --root).
- `split`: CLIP_benchmark's split folder (default test).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from wit.shards.storage import WitError, expand, fs_and_path
from wit.trainer.eval import datasets
from wit.trainer.eval.metrics import CLASSIFICATION_METRICS, RETRIEVAL_METRICS
from wit.trainer.eval.prompts import NAMES as PROMPT_SETS

DATACOMP = Path(__file__).parent / "datacomp_tasks.yml"  # DataComp's 38 tasks and their main metrics
KINDS = ("classification", "retrieval")
KNOWN_FIELDS = {"name", "main_metric", "size", "time", "num_classes", "random_score", "tags",
                "path", "task", "prompts", "captions", "split"}


@dataclass(frozen=True)
class Task:
    key: str
    name: str
    main_metric: str
    path: str  # resolved against --root
    kind: str
    split: str = "test"
    prompts: str = "folders"
    captions: str | None = None

    @property
    def computed(self) -> bool:
        """Does wit compute the task's main metric? (DataComp's five task-specific metrics it does not.)"""
        return self.main_metric in CLASSIFICATION_METRICS + RETRIEVAL_METRICS

    @property
    def benchmark_layout(self) -> bool:
        return datasets.is_benchmark_set(self.path, self.split)


def read_task_list(url: str) -> dict:
    """The YAML mapping of a task list; `datacomp` names the shipped one."""
    import yaml

    url = str(DATACOMP) if url == "datacomp" else url
    fs, path = fs_and_path(url)
    if not fs.exists(path):
        raise WitError(f"{url}: no such task list")
    with fs.open(path, "r", encoding="utf-8") as f:
        try:
            tasks = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise WitError(f"{url}: not YAML ({' '.join(str(err).split())})") from None
    if not isinstance(tasks, dict) or not tasks:
        raise WitError(f"{url}: a task list is a mapping of task key -> {{name, main_metric, ...}}")
    return tasks


def load_tasks(url: str, root: str) -> list[Task]:
    """Every task of the list, its data found under `root` (checked now: a missing set fails before any work)."""
    out = []
    for key, entry in read_task_list(url).items():
        entry = entry or {}
        if not isinstance(entry, dict):
            raise WitError(f"{url}: task {key!r}: an entry is a mapping (name, main_metric, path, ...)")
        unknown = set(entry) - KNOWN_FIELDS
        if unknown:
            raise WitError(f"{url}: task {key!r}: unknown field {sorted(unknown)[0]!r} "
                           f"(known: {', '.join(sorted(KNOWN_FIELDS))})")
        out.append(make_task(url, str(key), entry, root))
    return out


def _under(root: str, path: str) -> str:
    return path if path.startswith("/") or "://" in path else f"{root.rstrip('/')}/{path}"


def make_task(url: str, key: str, entry: dict, root: str) -> Task:
    """A task from its entry; its data is looked for now, unless wit does not compute its main metric."""
    where = f"{url}: task {key!r}"
    split = str(entry.get("split", "test"))
    path = _under(root, str(entry.get("path") or f"wds_{key.replace('/', '-')}_test"))
    captions = _under(root, str(entry["captions"])) if entry.get("captions") else None
    prompts = str(entry.get("prompts", "folders"))
    if prompts not in PROMPT_SETS:
        raise WitError(f"{where}: prompts {prompts!r} (one of {', '.join(PROMPT_SETS)})")
    kind = entry.get("task") or ("retrieval" if captions or key.startswith("retrieval/") else "classification")
    main_metric = entry.get("main_metric")
    task = Task(key, str(entry.get("name", key)), str(main_metric or "acc1"), path, str(kind), split, prompts, captions)
    if main_metric and not task.computed:
        return task
    if task.benchmark_layout:
        kind = entry.get("task") or datasets.benchmark_set(path, split).kind
    elif not _exists(path):
        raise WitError(f"{where}: no data at {path} (a CLIP_benchmark set there has {split}/nshards.txt; "
                       "trainer/README.md, 'Evaluation suite', says how to get the published sets)")
    if kind not in KINDS:
        raise WitError(f"{where}: task {kind!r} (classification or retrieval)")
    if not main_metric:  # DataComp's default, acc1; for retrieval its retrieval tasks' mean_recall@1
        task = replace(task, main_metric="acc1" if kind == "classification" else "mean_recall@1")
    if task.main_metric not in (CLASSIFICATION_METRICS if kind == "classification" else RETRIEVAL_METRICS):
        raise WitError(f"{where}: main_metric {task.main_metric} is not a {kind} metric")
    return replace(task, kind=str(kind))


def _exists(url: str) -> bool:
    if "{" in url:  # a brace pattern of shards: its first one
        url = expand(url)[0]
    fs, path = fs_and_path(url)
    return fs.exists(path)
