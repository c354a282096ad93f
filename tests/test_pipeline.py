"""`wit pipeline`: one config runs every stage through its command's own function, resumable stage by stage.

One small pool (real photos on a loopback server, a repeated URL, a 404, a malformed URL and a slow image) goes
through the whole corpus chain once as a pipeline; the other tests compare against that run.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_csv
from tests.ingest_helpers import tar_samples
from wit.cli import main

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "text", "images", "dedup", "queries", "match", "balance", "reshard", "audit")


@pytest.fixture(scope="module")
def server(real_images):
    from wit.ingest.loopback import LoopbackImageServer

    with LoopbackImageServer(real_images, slow_seconds=4.0) as s:
        yield s


@pytest.fixture(scope="module")
def pool(tmp_path_factory, server, real_images) -> Path:
    folder = tmp_path_factory.mktemp("pool")
    names = sorted(real_images)[:16]
    rows = [(f"{server.url}/img/{n}", f"a {'cat' if i % 3 else 'dog'} photo {i}") for i, n in enumerate(names)]
    rows += [(f"{server.url}/img/{names[0]}", "the same dog photo again"),  # the text filter's URL dedup
             (f"{server.url}/404", "a dog behind a broken link"), ("htp:/bad", "a dog with a malformed URL"),
             (f"{server.url}/slow/{names[1]}", "a slow cat photo")]  # the last shard takes 4 s: the kill's window
    write_csv(folder / "pool.csv", rows)
    (folder / "q.txt").write_text("cat\ndog\nphoto\n")
    return folder


def write_config(path: Path, pool: Path, out: Path) -> Path:
    path.write_text(f"""
[pipeline]
lists = ["{pool / 'pool.csv'}"]
out = "{out}"
workers = 1                    # no process pools: the tests' machine is small

[download]
allow_net = ["127.0.0.1/32"]   # the loopback server
shard_size = 5
threads = 4
timeout = 30

[text]
english = false

[images]
min_side = 32

[dedup]
near_k = 0

[queries]
extra = ["{pool / 'q.txt'}"]
unigrams = "none"
bigrams = "none"
wordnet = "none"

[balance]
t = 4

[reshard]
shard_size = 4
""")
    return path


def corpus(root: Path) -> dict:
    """Everything a trainer would see: the index, the corpus manifest rows and every sample's bytes."""
    folder = root / "corpus"
    rows = [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {"index": json.loads((folder / "index.json").read_text()), "rows": sorted(rows, key=lambda r: r["key"]),
            "samples": tar_samples(folder)}


def stage_records(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "_wit" / "pipeline").glob("*.json"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pool):
    """The pipeline run once, uninterrupted; what its corpus held and what it printed."""
    root = tmp_path_factory.mktemp("pipeline") / "out"
    config = write_config(root.parent / "p.toml", pool, root)
    r = subprocess.run([sys.executable, "-m", "wit", "pipeline", str(config)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"root": root, "config": config, "corpus": corpus(root), "stdout": r.stdout, "stderr": r.stderr}


def test_pipeline_gives_the_corpus_of_the_commands_run_one_by_one(reference, pool, tmp_path):
    out, text = reference["stdout"], reference["stdout"] + reference["stderr"]
    assert set(stage_records(reference["root"])) == set(STAGES)
    assert all(r["state"] == "done" for r in stage_records(reference["root"]).values())
    # a line per stage start and end, with its counts; no carriage-return redraws in a log
    assert "[1/9] download start" in out and "[9/9] audit    done in" in out
    download_done = next(line for line in out.splitlines() if line.startswith("[1/9] download done"))
    rows = len((pool / "pool.csv").read_text().splitlines()) - 1  # 20, or fewer with the fallback photos
    assert f"rows {rows}, kept {rows - 2}" in download_done and "http_404 1" in download_done
    assert "invalid_url 1" in download_done
    assert "\r" not in text
    assert (reference["root"] / "audit" / "report.html").exists()

    c = tmp_path
    common = ["--workers", "1"]
    commands = [
        ["download", str(pool / "pool.csv"), "--out", f"{c}/raw", "--allow-net", "127.0.0.1/32", "--shard-size", "5",
         "--threads", "4", "--timeout", "30", "--processes", "1", "--no-progress"],
        ["filter", "text", f"{c}/raw", "--out", f"{c}/verdicts/text", "--no-english", *common],
        ["filter", "images", f"{c}/raw", "--out", f"{c}/verdicts/images", "--min-side", "32", *common],
        ["dedup", f"{c}/verdicts/images", "--out", f"{c}/verdicts/dedup", "--near-k", "0",
         "--after", f"{c}/verdicts/text"],
        ["queries", "build", "--out", f"{c}/queries.parquet", "--extra", str(pool / "q.txt"), "--unigrams", "none",
         "--bigrams", "none", "--wordnet", "none"],
        ["curate", "match", f"{c}/raw", "--queries", f"{c}/queries.parquet", "--out", f"{c}/matches", *common],
        ["curate", "balance", f"{c}/matches", "--out", f"{c}/balance", "--t", "4", *common,
         "--verdicts", f"{c}/verdicts/text", f"{c}/verdicts/images", f"{c}/verdicts/dedup"],
        ["shards", "write", "--raw", f"{c}/raw", "--out", f"{c}/corpus", "--shard-size", "4", *common,
         "--selection", f"{c}/balance/selection",
         "--verdicts", f"{c}/verdicts/text", f"{c}/verdicts/images", f"{c}/verdicts/dedup"],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    by_commands = corpus(c)
    assert by_commands == reference["corpus"]
    kept = reference["corpus"]["index"]["total"]
    assert 0 < kept < 15  # the balance dropped some pairs: t decides what the corpus holds


def test_killed_during_a_stage_then_rerun_it_finishes_exactly(reference, pool, tmp_path, capsys):
    root = tmp_path / "out"
    config = write_config(tmp_path / "p.toml", pool, root)
    cmd = [sys.executable, "-m", "wit", "pipeline", str(config)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not list((root / "raw").glob("*_stats.json")):  # a first shard is published, the slow one is not
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no shard was published in 300 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a scheduler does
        proc.wait()
    interrupted = [name for name, r in stage_records(root).items() if r["state"] == "running"]
    assert interrupted, "the kill landed between stages"
    capsys.readouterr()
    assert main(["pipeline", str(config)]) == 0  # the same command again
    assert corpus(root) == reference["corpus"]
    assert all(rec["state"] == "done" for rec in stage_records(root).values())
    assert f"{interrupted[0]:<8} start  resume: did not finish" in capsys.readouterr().out


def test_changing_t_redoes_balance_reshard_and_audit_only(reference, capsys):
    root, config = reference["root"], str(reference["config"])
    before = stage_records(root)
    capsys.readouterr()
    assert main(["pipeline", config, "--set", "balance.t=2", "--plan"]) == 0
    plan = capsys.readouterr().out
    assert "[7/9] balance  redo   options changed: t 4 -> 2" in plan
    assert "[8/9] reshard  redo   after balance" in plan and "[6/9] match    skip" in plan
    assert stage_records(root) == before  # the plan runs nothing

    assert main(["pipeline", config, "--set", "balance.t=2"]) == 0
    after = stage_records(root)
    redone = {name for name in STAGES if after[name] != before[name]}
    assert redone == {"balance", "reshard", "audit"}
    assert after["balance"]["config"]["t"] == 2 and after["balance"]["state"] == "done"
    total = json.loads((root / "corpus" / "index.json").read_text())["total"]
    assert total == after["balance"]["figures"]["kept"] == after["reshard"]["figures"]["samples"]
    assert total <= reference["corpus"]["index"]["total"]  # a smaller t keeps a subset (the same draw per uid)

    assert main(["pipeline", config, "--set", "balance.t=2", "--only", "audit"]) == 0  # forced, and nothing else
    again = stage_records(root)
    assert {name for name in STAGES if again[name] != after[name]} == {"audit"}
    assert main(["pipeline", config, "--set", "balance.t=2", "--from", "reshard"]) == 0
    last = stage_records(root)
    assert {name for name in STAGES if last[name] != again[name]} == {"reshard", "audit"}
    assert main(["pipeline", config, "--set", "balance.t=2"]) == 0  # nothing left to do
    assert stage_records(root) == last


@pytest.mark.parametrize("table, line, key", [
    ("[dedup]\nnear_kk = 2", "[dedup]: unknown key 'near_kk'", "near_kk"),
    ("[balance]\nt = 'many'", "[balance]: t: expected an integer, got 'many'", "t"),
    ("[reshard]\nshard_size = 0", "[reshard]: shard_size must be at least 1 (got 0)", "shard_size"),
    ("[images]\nmin_side = 1.5", "[images]: min_side: expected an integer, got 1.5", "min_side"),
    ("[text]\nout = 'elsewhere'", "[text]: out is set by the pipeline", "out"),
    ("[balanse]\nt = 3", "unknown table [balanse]", "balanse"),
])
def test_a_bad_config_is_one_line_naming_the_key(tmp_path, capsys, table, line, key):
    config = tmp_path / "p.toml"
    out = tmp_path / "out"
    config.write_text(f'[pipeline]\nlists = ["{tmp_path}/pool.csv"]\nout = "{out}"\n{table}\n')
    assert main(["pipeline", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err and key in err and str(config) in err, err
    assert not out.exists()  # nothing was started


def test_stages_must_be_known(tmp_path, capsys):
    config = tmp_path / "p.toml"
    config.write_text(f'[pipeline]\nout = "{tmp_path}/out"\nstages = ["download", "crawl"]\n')
    assert main(["pipeline", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[pipeline]: stages: 'crawl' is not one of download, text" in err, err


def test_a_table_of_a_stage_not_run_now_is_checked_all_the_same(tmp_path, capsys):
    # a typo in [dedup] must not wait for the day dedup is added to stages
    config = tmp_path / "p.toml"
    config.write_text(f'[pipeline]\nlists = ["{tmp_path}/pool.csv"]\nout = "{tmp_path}/out"\nstages = ["download"]\n'
                      '[dedup]\nnear_kk = 2\n')
    assert main(["pipeline", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{config} [dedup]: unknown key 'near_kk'" in err, err
    assert not (tmp_path / "out").exists()


def test_balance_before_download_on_s3_crawls_only_the_selection(tmp_path, server, real_images, s3_bucket, capsys):
    # MetaCLIP's order, with the output root in object storage: match and balance the URL list, then fetch the
    # selection; the stage records live in the bucket and a re-run finds every stage done.
    names = sorted(real_images)[:10]
    rows = [(f"{server.url}/img/{n}", f"a {'dog' if i < 8 else 'cat'} photo {i}") for i, n in enumerate(names)]
    write_csv(tmp_path / "pool.csv", rows)
    (tmp_path / "q.txt").write_text("dog\ncat\n")
    root = f"{s3_bucket}/corpus"
    config = tmp_path / "p.toml"
    config.write_text(f"""
[pipeline]
lists = ["{tmp_path / 'pool.csv'}"]
out = "{root}"
balance = "before"
stages = ["download", "queries", "match", "balance"]
workers = 1

[download]
allow_net = ["127.0.0.1/32"]
threads = 4

[queries]
extra = ["{tmp_path / 'q.txt'}"]
unigrams = "none"
bigrams = "none"
wordnet = "none"

[balance]
t = 3
""")
    assert main(["pipeline", str(config)]) == 0
    out = capsys.readouterr().out
    order = [line.split()[1] for line in out.splitlines() if line.startswith("[") and " done in " in line]
    assert order == ["queries", "match", "balance", "download"]
    from wit.shards.tables import read_folder

    chosen = read_folder(f"{root}/balance/urls").to_pylist()
    crawled = read_folder(f"{root}/raw").to_pylist()
    captions = [r["caption"] for r in chosen]
    assert sum("cat" in c for c in captions) == 2 and sum("dog" in c for c in captions) < 8  # tail whole, head less
    assert sorted(r["uid"] for r in crawled) == sorted(r["uid"] for r in chosen)
    assert all(r["status"] == "ok" for r in crawled)
    assert main(["pipeline", str(config)]) == 0
    assert "(0 of 4 stages ran)" in capsys.readouterr().out


def test_the_shipped_demo_config_loads():
    # `make demo` runs this file through `wit pipeline`: every key must still be an option of its command
    from wit.demo import CONFIG
    from wit.pipeline import load

    pipe = load(str(CONFIG))
    assert [s.name for s in pipe.steps] == [*STAGES, "train", "zeroshot"]
    train = pipe.context.configs["train"]
    assert pipe.context.configs["zeroshot"].checkpoint == train.ckpt_dir and train.resume == "latest"
    # the command line that a stage's record names (and that the train stage runs) rebuilds the same config
    from wit.cli import build_parser
    from wit.shards.options import from_args
    from wit.stages import STAGES as STAGE_OF

    for step in pipe.steps:
        argv = STAGE_OF[step.name].argv(pipe.context, step.config)
        assert argv[0] == "wit"
        args = build_parser().parse_args(argv[1:])
        assert from_args(type(step.config), args) == step.config, step.name
    assert STAGE_OF["train"].argv(pipe.context, train)[:4] == ["wit", "train", "--nproc", "1"]


# ---------------------------------------------------------------------------------------------- safety (issue 24)
def write_small(project: Path, stages=("queries", "match", "balance"), url: str = "http://127.0.0.1:9") -> Path:
    """A pipeline in a project folder, every path relative to it: match and balance the URL list itself (balance
    before download), then (when asked for) crawl the selection; without the crawl it takes seconds."""
    project.mkdir(exist_ok=True)
    write_csv(project / "list.csv", [(f"{url}/img/{i}", f"a {'cat' if i % 3 else 'dog'} photo {i}") for i in range(6)])
    (project / "q.txt").write_text("cat\ndog\nphoto\n")
    config = project / "p.toml"
    config.write_text(f"""
[pipeline]
lists = ["list.csv"]
out = "out"
balance = "before"
stages = {list(stages)}
workers = 1

[download]
allow_net = ["127.0.0.1/32"]
threads = 4

[queries]
extra = ["q.txt"]
unigrams = "none"
bigrams = "none"
wordnet = "none"

[balance]
t = 3
""")
    return config


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under a folder: what a run that touches nothing leaves."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and "_wit" not in p.parts}


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_folder_the_pipeline_did_not_make_is_refused_and_kept(tmp_path, monkeypatch, capsys):
    # a project folder with its own matches/ (out = "." would make any project folder the root): the pipeline must
    # neither write into it nor, on a later redo, delete it
    monkeypatch.chdir(tmp_path)
    config = str(write_small(tmp_path))
    note = tmp_path / "out" / "matches" / "note.txt"
    note.parent.mkdir(parents=True)
    note.write_text("mine")
    assert main(["pipeline", config]) == 2
    err = one_line(capsys)
    assert f"{note.parent}: holds note.txt, which wit pipeline did not write" in err, err
    assert note.read_text() == "mine" and sorted(os.listdir(note.parent)) == ["note.txt"]
    assert not (tmp_path / "out" / "queries.parquet").exists()  # refused before any stage ran

    note.unlink()
    assert main(["pipeline", config]) == 0
    # a record from before records listed the folders the pipeline made (no root, no created): a redo must not
    # delete a folder it cannot show is its own
    record_file = tmp_path / "out" / "_wit" / "pipeline" / "balance.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({k: v for k, v in record.items() if k not in ("root", "created")}))
    before = files(tmp_path / "out" / "balance")
    capsys.readouterr()
    assert main(["pipeline", config, "--set", "balance.t=2"]) == 2
    assert "balance: holds " in one_line(capsys)
    assert files(tmp_path / "out" / "balance") == before


def test_a_second_pipeline_on_the_same_out_is_refused(tmp_path, monkeypatch, capsys):
    from wit.shards.lock import output_lock

    monkeypatch.chdir(tmp_path)
    config = str(write_small(tmp_path))
    with output_lock(str(tmp_path / "out"), "wit pipeline"):  # a real flock: the first run is still going
        assert main(["pipeline", config]) == 2
        err = one_line(capsys)
        assert f"{tmp_path / 'out'}: another wit pipeline is writing here (pid {os.getpid()}" in err, err
        assert not (tmp_path / "out" / "_wit" / "pipeline").exists()  # it wrote nothing
        assert main(["pipeline", config, "--plan"]) == 0  # a plan writes nothing: it needs no lock
    assert main(["pipeline", config]) == 0  # the lock of a run that ended is free again


@pytest.mark.parametrize("content", ['{"stage": "balance", "state": "do', "[]", "{}"])
def test_an_unreadable_stage_record_is_taken_as_not_finished(tmp_path, monkeypatch, capsys, content):
    monkeypatch.chdir(tmp_path)
    config = str(write_small(tmp_path))
    assert main(["pipeline", config]) == 0
    record = tmp_path / "out" / "_wit" / "pipeline" / "balance.json"
    record.write_text(content)  # truncated, or not a record
    capsys.readouterr()
    assert main(["pipeline", config, "--plan"]) == 0
    plan = capsys.readouterr().out
    assert f"[3/3] balance  resume {record}: not " in plan and "taken as not finished" in plan, plan
    assert "[2/3] match    skip" in plan
    assert main(["pipeline", config]) == 0
    assert json.loads(record.read_text())["state"] == "done"


def test_a_folder_given_for_the_config_is_one_line(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path)]) == 2
    assert f"{tmp_path}: a folder; give the pipeline's TOML file" in one_line(capsys)


def test_a_renamed_project_is_the_same_pipeline(tmp_path, monkeypatch, server, capsys):
    # the stage records must not hold where the project was: moved (mv keeps modification times), every stage
    # is still finished and the crawl is not redone
    first = tmp_path / "project"
    config = write_small(first, ("queries", "match", "balance", "download"), server.url)
    monkeypatch.chdir(first)
    assert main(["pipeline", str(config)]) == 0
    moved = tmp_path / "moved"
    first.rename(moved)
    monkeypatch.chdir(moved)
    capsys.readouterr()
    assert main(["pipeline", "p.toml", "--plan"]) == 0
    plan = capsys.readouterr().out
    assert [line.split()[2] for line in plan.splitlines() if line.startswith("[")] == ["skip"] * 4, plan


@pytest.fixture(scope="module")
def crawl(tmp_path_factory, server):
    """A finished crawl through the pipeline (the URL list's selection, balanced before download)."""
    project = tmp_path_factory.mktemp("crawl")
    config = write_small(project, ("queries", "match", "balance", "download"), server.url)
    r = subprocess.run([sys.executable, "-m", "wit", "pipeline", "p.toml"], cwd=project, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list((project / "out" / "raw").glob("*.tar"))
    return config


def test_fetch_options_apply_to_rows_not_yet_fetched_and_redo_nothing(crawl, monkeypatch, capsys):
    monkeypatch.chdir(crawl.parent)
    raw = crawl.parent / "out" / "raw"
    before = files(raw)
    fetch = ["download.per_host=4", "download.timeout=20", "download.retries=2", "download.host_failures=1",
             "download.min_rate=10", "download.max_bytes=1000000", "download.processes=2"]
    sets = [arg for s in fetch for arg in ("--set", s)]
    capsys.readouterr()
    assert main(["pipeline", "p.toml", "--plan", *sets]) == 0
    plan = capsys.readouterr().out
    assert "[4/4] download skip" in plan and "but for how it runs: host_failures 5 -> 1" in plan, plan
    assert main(["pipeline", "p.toml", *sets]) == 0
    assert files(raw) == before
    capsys.readouterr()
    assert main(["pipeline", "p.toml", "--plan", "--set", "download.retry_failed=true"]) == 0
    assert "[4/4] download resume retry_failed set: the command runs again" in capsys.readouterr().out
    assert main(["pipeline", "p.toml", "--set", "download.retry_failed=true"]) == 0  # re-crawls transient failures
    assert files(raw) == before  # and there are none


def test_options_naming_paths_under_the_root_compare_relative_to_it():
    # train's checkpoint folder defaults to <out>/train/checkpoints: a moved root is not a changed option
    from wit.records import option_changes

    record = {"state": "done", "root": "/a/out", "config": {"ckpt": "/a/out/train/checkpoints", "data": ["/a/x"]}}
    assert option_changes(record, {"ckpt": "/b/out/train/checkpoints", "data": ["/a/x"]}, "/b/out", set()) == []
    assert option_changes(record, {"ckpt": "/b/ckpt", "data": ["/a/x"]}, "/b/out", set()) == [
        ("ckpt", "<out>/train/checkpoints", "/b/ckpt")]


def test_a_redo_that_deletes_a_crawl_asks_for_force(crawl, monkeypatch, capsys):
    monkeypatch.chdir(crawl.parent)
    raw = crawl.parent / "out" / "raw"
    before = files(raw)
    capsys.readouterr()
    assert main(["pipeline", "p.toml", "--set", "download.image_size=128"]) == 2
    err = one_line(capsys)
    assert ("the download stage's redo (options changed: image_size 256 -> 128) deletes raw: " in err
            and " files, " in err and "KiB" in err and "--force" in err), err
    assert files(raw) == before  # nothing deleted, nothing rewritten
    assert main(["pipeline", "p.toml", "--set", "download.image_size=128", "--force"]) == 0
    record = stage_records(crawl.parent / "out")["download"]
    assert record["state"] == "done" and record["config"]["image_size"] == 128
    assert main(["pipeline", "p.toml", "--set", "download.image_size=256", "--force"]) == 0  # as the others expect


def test_on_a_terminal_the_redo_asks_and_no_keeps_the_crawl(crawl):
    # a real terminal (a pty) for the pipeline's stdin, stdout and stderr (where input() writes its question): the
    # question names what would be deleted; "n" keeps it
    import pty

    raw = crawl.parent / "out" / "raw"
    before = files(raw)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "wit", "pipeline", "p.toml", "--set", "download.image_size=128"],
                            cwd=crawl.parent, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    while b"[y/N]" not in seen:
        seen += os.read(leader, 4096)  # an OSError here: the pipeline ended without asking
    os.write(leader, b"n\n")
    with contextlib.suppress(OSError):  # EIO once the pipeline has ended and closed the terminal
        while chunk := os.read(leader, 4096):
            seen += chunk
    os.close(leader)
    assert proc.wait(timeout=300) == 2
    assert b"the download stage's redo (options changed: image_size 256 -> 128) deletes raw: " in seen, seen
    assert b"run again with --force to delete it" in seen, seen
    assert files(raw) == before


def test_more_train_steps_continue_the_run(reference, tmp_path, capfd):
    # train alone, on a copy of the reference's corpus: a longer run resumes from its last checkpoint; a shorter
    # one would delete the run's checkpoints, which the pipeline does not do unasked
    import shutil

    root = tmp_path / "out"
    shutil.copytree(reference["root"] / "corpus", root / "corpus")
    config = tmp_path / "p.toml"
    config.write_text(f"""
[pipeline]
out = "{root}"
stages = ["train"]

[train]
model = "wit-tiny"
steps = 2
batch_size = 1                   # the reference's corpus is as small as an earlier test's t left it
workers = 0
warmup = 1
log_every = 1
tensorboard = false
""")
    assert main(["pipeline", str(config)]) == 0
    capfd.readouterr()
    assert main(["pipeline", str(config), "--set", "train.steps=4", "--plan"]) == 0
    assert "training goes on from step_00000002.pt" in capfd.readouterr().out
    assert main(["pipeline", str(config), "--set", "train.steps=4"]) == 0
    out = capfd.readouterr().out
    assert "[1/1] train    start  resume: steps 2 -> 4: the command goes on from where it ended" in out, out
    assert f"resuming from {root}/train/checkpoints/step_00000002.pt at step 2; --steps 2 -> 4" in out, out
    checkpoints = root / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == ["step_00000002.pt", "step_00000004.pt"]
    assert stage_records(root)["train"]["config"]["steps"] == 4

    assert main(["pipeline", str(config), "--set", "train.steps=3"]) == 2
    err = capfd.readouterr().err
    assert "the train stage's redo (options changed: steps 4 -> 3) deletes train: " in err and "--force" in err, err
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == ["step_00000002.pt", "step_00000004.pt"]

    # killed before its first checkpoint: the plan must not promise a resume it cannot give
    record = root / "_wit" / "pipeline" / "train.json"
    record.write_text(json.dumps(json.loads(record.read_text()) | {"state": "running"}))
    for p in checkpoints.glob("*.pt"):
        p.unlink()
    assert main(["pipeline", str(config), "--set", "train.steps=4", "--plan"]) == 0
    assert "it wrote no checkpoint, so training starts again at step 0" in capfd.readouterr().out


def test_paths_in_the_config_are_read_against_its_folder_and_an_early_error_leaves_nothing(tmp_path, monkeypatch,
                                                                                          capsys):
    project = tmp_path / "project"
    config = write_small(project)
    monkeypatch.chdir(tmp_path)  # the project's parent: list.csv, q.txt and out are the project's all the same
    assert main(["pipeline", "project/p.toml"]) == 0
    assert (project / "out" / "balance" / "urls").is_dir() and not (tmp_path / "out").exists()
    # an error before any stage wrote a file of its own: the output root this run made is gone again
    config.write_text(config.read_text().replace('extra = ["q.txt"]', 'extra = ["gone.txt"]')
                      .replace('out = "out"', 'out = "out2"'))
    capsys.readouterr()
    assert main(["pipeline", "project/p.toml"]) == 2
    assert f"{project / 'gone.txt'}" in one_line(capsys)
    assert sorted(os.listdir(project)) == ["list.csv", "out", "p.toml", "q.txt"]


def test_a_stage_that_keeps_nothing_stops_the_pipeline_in_one_line(tmp_path, monkeypatch, server, capsys):
    # no allow_net: the crawl refuses every loopback URL, and the text filter must not run on nothing
    config = write_small(tmp_path, ("queries", "match", "balance", "download", "text"), server.url)
    config.write_text(config.read_text().replace('allow_net = ["127.0.0.1/32"]', ""))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # and again once the crawl is finished: its record says it kept nothing
        capsys.readouterr()
        assert main(["pipeline", str(config)]) == 2
        err = one_line(capsys)
        assert "the download stage kept none of its" in err and "ssrf_blocked" in err and "allow_net" in err, err
        assert not (tmp_path / "out" / "verdicts").exists()
