"""`wit train --resume` and `wit eval --checkpoint` on files that are not good checkpoints: one line naming the file,
exit 2, no code run from a pickle; `--resume latest` falls back past an unreadable newest checkpoint."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from wit.cli import main
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
