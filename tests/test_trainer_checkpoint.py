"""`wit train --resume` and `wit eval --checkpoint` on files that are not good checkpoints: one line naming the file,
exit 2, no code run from a pickle; `--resume latest` falls back past an unreadable newest checkpoint."""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
import torch
from moto.server import ThreadedMotoServer

from wit.cli import main
from wit.trainer import checkpoint
from wit_trainer_data import jpeg, write_shards


class Evil:
    """A pickle that makes a folder when unpickled without weights_only (no shell, nothing leaves the test)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture()
def shards(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    write_shards(lambda n, d: (tmp_path / n).write_bytes(d), [9, 5, 12])  # 26 samples: 6 steps/epoch
    return str(tmp_path / "{00000..00002}.tar")


def train(data: str, out, *flags: str) -> int:
    return main(["train", "--data", data, "--out", str(out), "--batch-size", "4", "--workers", "0", "--warmup", "1",
                 "--log-every", "1", "--no-tensorboard", *flags])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def bad_files(tmp_path) -> dict:
    """name -> (bytes of the file, what the error must say)."""
    def saved(obj):
        path = tmp_path / "tmp.pt"
        torch.save(obj, path)
        return path.read_bytes()
    good = saved({"state_dict": {"w": torch.zeros(1000)}, "optimizer": {}, "step": 1})
    return {
        "evil.pt": (pickle.dumps(Evil(tmp_path / "pwned"), protocol=2), "refused: it holds objects other than tensors"),
        "evil-zip.pt": (saved({"state_dict": Evil(tmp_path / "pwned")}), "refused: it holds objects other than"),
        "empty.pt": (b"", "an empty file"),
        "tensor.pt": (saved(torch.zeros(3)), "holds a Tensor, not a training checkpoint"),
        "keys.pt": (saved({"weights": torch.zeros(3)}), "not a training checkpoint of wit train (missing or wrong: state_dict"),
        "truncated.pt": (good[: len(good) // 2], "not a torch checkpoint, or a truncated one"),
    }


@pytest.mark.timeout(120)
def test_resume_from_a_bad_file_is_one_line_naming_it(shards, tmp_path, capsys):
    for name, (data, says) in bad_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
        assert train(shards, tmp_path / "run", "--steps", "2", "--resume", str(tmp_path / name)) == 2, name
        assert f"wit train: error: {tmp_path / name}: {says}" in error_line(capsys), name
    assert not (tmp_path / "pwned").exists()  # weights_only refused the pickle: its code never ran
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.timeout(120)
def test_resume_with_another_model_or_batch_size_is_one_line(shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(shards, out, "--steps", "2") == 0
    capsys.readouterr()
    ckpt = out / "checkpoints" / "step_00000002.pt"
    assert train(shards, out, "--steps", "4", "--resume", "latest", "--model", "RN50") == 2
    assert f"{ckpt}: a checkpoint of --model wit-tiny, but this run has --model RN50" in error_line(capsys)
    assert train(shards, out, "--steps", "4", "--resume", str(ckpt), "--batch-size", "2") == 2
    assert f"{ckpt}: resume: the checkpoint's loader has batch_size=4, this run 2" in error_line(capsys)


@pytest.mark.timeout(180)
def test_resume_latest_skips_an_unreadable_newest_checkpoint(shards, tmp_path, capsys):
    out, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert train(shards, out, "--steps", "4", "--ckpt-every", "2") == 0
    newest = ckpts / "step_00000004.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # a copy cut short (a full disk, an interrupted sync)
    capsys.readouterr()
    assert train(shards, out, "--steps", "6", "--ckpt-every", "2", "--resume", "latest") == 0
    got = capsys.readouterr()
    assert f"wit train: warning: skipping {newest}: not a torch checkpoint, or a truncated one" in got.err
    assert f"resuming from {ckpts / 'step_00000002.pt'} at step 2" in got.out
    assert torch.load(newest, weights_only=True)["step"] == 4  # written again by the resumed run

    for step in (2, 4, 6):  # nothing readable at all: an error, not a fresh start over the old run
        (ckpts / f"step_{step:08d}.pt").write_bytes(b"")
    assert train(shards, out, "--steps", "8", "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert f"wit train: error: {ckpts}: none of its 3 checkpoints is readable" in err and "Traceback" not in err


@pytest.mark.timeout(120)
def test_a_fresh_run_refuses_a_folder_holding_another_run(shards, tmp_path, capsys):
    out, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert train(shards, out, "--steps", "4", "--ckpt-every", "2") == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train(shards, out, "--steps", "2", "--seed", "1") == 2  # the same folders, no --resume
    assert (f"wit train: error: {ckpts}: holds checkpoints of another run (step_00000002.pt .. step_00000004.pt); "
            "continue it with --resume latest, or start this one in a new --out (or --ckpt)") in error_line(capsys)
    assert train(shards, out, "--steps", "2", "--ckpt", str(tmp_path / "elsewhere")) == 2  # its log and config
    assert f"wit train: error: {out}: holds another run (its log.jsonl)" in error_line(capsys)
    assert train(shards, tmp_path / "new", "--steps", "2", "--ckpt", str(ckpts)) == 2  # its checkpoints
    assert f"wit train: error: {ckpts}: holds checkpoints of another run" in error_line(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # nothing of the first run touched
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "new").exists()


@pytest.mark.timeout(60)
def test_a_checkpoint_bucket_that_does_not_exist_is_refused_not_made(shards, s3_server, tmp_path, capsys):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert train(shards, tmp_path / "run", "--steps", "2", "--ckpt", "s3://wit-never-made/ckpt") == 2
    assert error_line(capsys) == ("wit train: error: s3://wit-never-made/ckpt: bucket 'wit-never-made' does not exist; "
                                  "wit does not create buckets: create it first\n")
    assert not fs.exists("wit-never-made") and not (tmp_path / "run").exists()


@pytest.mark.timeout(240)
def test_s3_gone_mid_run_is_one_line_and_resume_trusts_only_whole_checkpoints(shards, s3_server, tmp_path):
    """A second S3 server of this test's own, stopped for real while `wit train` saves a checkpoint every step."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    fs.mkdir("wit-goes-away")
    ckpt, out = "s3://wit-goes-away/ckpt", tmp_path / "run"
    cmd = [sys.executable, "-m", "wit.trainer.train", "--data", shards, "--out", str(out), "--ckpt", ckpt,
           "--batch-size", "4", "--workers", "0", "--warmup", "1", "--no-tensorboard", "--steps", "60",
           "--ckpt-every", "1", "--keep", "0"]
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not fs.exists(f"{ckpt}/step_00000002.pt"):  # two checkpoints written, 58 steps still to go
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
            fs.invalidate_cache()
    finally:
        server.stop()  # the endpoint is gone before the run can end
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    # the endpoint went away during a checkpoint, or between it and the lineage record written beside it
    assert (re.fullmatch(rf"wit train: error: {ckpt}/step_\d{{8}}\.pt: could not write the checkpoint of step \d+ "
                         r"\(\w+: .*\); --resume latest continues from the last one written", last)
            or re.fullmatch(rf"wit train: error: {ckpt}/step_\d{{8}}\.pt written, but not the lineage record beside "
                            r"it \(\w+: .*\); --resume latest continues from it \(its lineage is inside it too\)",
                            last)), err

    # moto keeps its buckets in the process: the session's server (AWS_ENDPOINT_URL here) serves what was written.
    # What --resume latest takes: the newest checkpoint, whole, and no newer one it had to skip.
    skipped = []
    url, state = checkpoint.load_latest(ckpt, warn=skipped.append)
    assert skipped == [] and url == checkpoint.list_steps(ckpt)[-1] and state["step"] == int(url[-11:-3]) >= 2


@pytest.mark.timeout(120)
def test_eval_on_a_bad_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "0.jpg").write_bytes(jpeg(len(label)))
    for name, (data, says) in bad_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
        says = says.replace("a training checkpoint", "a state_dict or a checkpoint dict")
        if name == "keys.pt":
            says = "weights do not fit model wit-tiny (RuntimeError: Error(s) in loading state_dict"
        assert main(["eval", "zeroshot", "--data", str(tmp_path / "data"), "--model", "wit-tiny", "--device", "cpu",
                     "--checkpoint", str(tmp_path / name)]) == 2, name
        assert f"wit eval: error: {tmp_path / name}: {says}" in error_line(capsys), name
    assert not (tmp_path / "pwned").exists()
