"""``cnnx train --resume`` reproduces an uninterrupted run bit for bit on the CPU: after
finished epochs, after Ctrl-C, and after SIGKILL mid-epoch (with and without mid-epoch
checkpoints), including batch-norm buffers, dropout masks, Adam, schedules and augmentation."""

from __future__ import annotations

import errno
import json
import os
import signal

import numpy as np
import pytest

import cnnx.train
from cnnx import checkpoint
from cli_helpers import final_state, invoke, one_line_error, run_cnnx, train_args
from cli_fixtures import isolated, tiny  # noqa: F401 (pytest fixtures)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 3)).exit_code == 0
    return final_state(out)


def test_resume_after_finished_epochs_is_bitwise(tiny, tmp_path, uninterrupted):
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0
    result = invoke("train", "--resume", out, "--epochs", 3, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert final_state(out) == uninterrupted
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_after_interrupt_mid_epoch_is_bitwise(tiny, tmp_path, uninterrupted, monkeypatch):
    out = tmp_path / "run"
    real_step, calls = cnnx.train.train_step, []

    def interrupted_step(*args):
        calls.append(1)
        if len(calls) == 15 + 11:  # epoch 2 of 3 (15 steps each): 10 steps done, saved at 4, 8
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(cnnx.train, "train_step", interrupted_step)
    result = invoke(*train_args(tiny, out, "--epochs", 3, "--checkpoint-every", 4))
    assert result.exit_code == 130 and f"--resume {out}" in result.output
    ck = checkpoint.load(out / "checkpoint.npz")
    assert (ck.epoch, ck.step) == (1, 8)
    monkeypatch.setattr(cnnx.train, "train_step", real_step)
    assert one_line_error(invoke("train", "--resume", out, "--epochs", 1)) == (  # inside epoch 2
        f"Error: {out} already trained 1 epoch: give --epochs above 1 to train on")
    assert invoke("train", "--resume", out, "--device", "cpu").exit_code == 0
    assert final_state(out) == uninterrupted


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tiny, tmp_path,
                                                                             monkeypatch):
    def interrupted_step(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnx.train, "train_step", interrupted_step)
    out = tmp_path / "run"
    result = invoke(*train_args(tiny, out))
    assert result.exit_code == 130
    assert "before the first checkpoint, so there is nothing to resume" in result.output
    assert "--resume" not in result.output and not out.exists()


def test_a_full_disk_after_a_checkpoint_says_how_to_continue_and_the_run_resumes_bitwise(
        tiny, tmp_path, uninterrupted, monkeypatch):
    out = tmp_path / "run"
    real_savez, saves = checkpoint.np.savez, []

    def savez_until_the_disk_fills(*args, **kwargs):  # the second checkpoint: end of epoch 2
        saves.append(1)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(*args, **kwargs)

    monkeypatch.setattr(checkpoint.np, "savez", savez_until_the_disk_fills)
    result = invoke(*train_args(tiny, out, "--epochs", 3))
    assert result.exit_code == 1
    assert (f"cannot write {out / 'checkpoint.npz'}: No space left on device (free some space, "
            f"or write somewhere else); the last checkpoint is intact: once that is fixed, "
            f"continue with cnnx train --resume {out}") in " ".join(result.output.split())
    assert checkpoint.load(out / "checkpoint.npz").epoch == 1
    monkeypatch.setattr(checkpoint.np, "savez", real_savez)
    assert invoke("train", "--resume", out, "--device", "cpu").exit_code == 0
    assert final_state(out) == uninterrupted


@pytest.mark.parametrize("every, kill_at, position", [(4, 22, (1, 4)), (0, 22, (1, 0))])
def test_resume_after_sigkill_mid_epoch_is_bitwise(tiny, tmp_path, uninterrupted, every,
                                                   kill_at, position):
    out = tmp_path / "run"
    args = train_args(tiny, out, "--epochs", 3, "--checkpoint-every", every)
    killed = run_cnnx(*args, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ck = checkpoint.load(out / "checkpoint.npz")
    assert (ck.epoch, ck.step) == position
    resumed = run_cnnx("train", "--resume", out, "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    assert final_state(out) == uninterrupted
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


RANDOM_LAYERS = [  # batch-norm buffers and dropout masks must survive a resume too
    {"type": "Conv2D", "in_channels": 1, "out_channels": 6, "kernel_size": 3, "padding": 1},
    {"type": "BatchNorm2D", "num_features": 6}, {"type": "ReLU"},
    {"type": "MaxPool2D", "kernel_size": 2}, {"type": "Flatten"}, {"type": "Dropout", "p": 0.3},
    {"type": "Dense", "in_features": 6 * 14 * 14, "out_features": 10},
]


def test_sigkill_resume_with_batchnorm_dropout_adam_schedule_and_augmentation(tiny, tmp_path):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"input_shape": [1, 28, 28], "layers": RANDOM_LAYERS}))
    args = ["--device", "cpu", "--dataset", tiny, "--model", model, "--epochs", 3, "--seed", 3,
            "--optimizer", "adam", "--lr", 0.003, "--schedule", "cosine", "--warmup", 0.5,
            "--flip", 0.5, "--shift", 2, "--patience", 5, "--val-split", 0.2]
    full = invoke("train", *args, "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output
    killed = run_cnnx("train", *args, "--checkpoint-every", 4, "--out", tmp_path / "run",
                      kill_at=15 + 7)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint.load(tmp_path / "run").step == 4
    resumed = run_cnnx("train", "--resume", tmp_path / "run", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    assert final_state(tmp_path / "run") == final_state(tmp_path / "full")
    assert checkpoint.load(tmp_path / "run").optimizer_state["steps"] == 45


def test_a_mid_epoch_checkpoint_resumes_only_with_its_batch_size(tiny, tmp_path, uninterrupted,
                                                                monkeypatch):
    """Its position is a step count of its batch size: another size would skip or repeat
    images, so the error says how to get there; the same size still resumes bit for bit."""
    out = tmp_path / "run"
    real_step, calls = cnnx.train.train_step, []

    def interrupted_step(*args):
        calls.append(1)
        if len(calls) == 15 + 11:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(cnnx.train, "train_step", interrupted_step)
    assert invoke(*train_args(tiny, out, "--epochs", 3, "--checkpoint-every", 4)).exit_code == 130
    monkeypatch.setattr(cnnx.train, "train_step", real_step)
    before = (out / "checkpoint.npz").read_bytes()
    result = invoke("train", "--resume", out, "--batch-size", 16)
    assert result.exit_code == 1
    assert (f"stopped inside epoch 2, after step 8 of batch size 32: finish that epoch with its "
            f"batch size first (cnnx train --resume {out} --epochs 2), then resume with "
            f"--batch-size 16") in result.stderr
    assert (out / "checkpoint.npz").read_bytes() == before
    assert invoke("train", "--resume", out, "--device", "cpu").exit_code == 0
    assert final_state(out) == uninterrupted


def test_switching_optimizer_on_resume_starts_its_buffers_empty(tiny, tmp_path):
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0  # SGD with momentum
    result = invoke("train", "--resume", out, "--epochs", 2, "--optimizer", "adam", "--lr", 1e-3)
    assert result.exit_code == 0, result.output
    assert "optimizer changed from sgd to adam: its buffers start empty" in result.stderr
    ck = checkpoint.load(out / "checkpoint.npz")
    assert all(name.endswith((".m", ".v")) for name in ck.optimizer_state["buffers"])
    assert ck.optimizer_state["steps"] == 15  # one epoch of Adam, not the SGD epoch before it


def test_a_run_with_no_epochs_left_is_not_resumed(tiny, tmp_path):
    """It would train nothing, exit 0 and rewrite result.json with epochs it never ran."""
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    for more in ([], ["--epochs", 1]):
        assert one_line_error(invoke("train", "--resume", out, *more)) == (
            f"Error: {out} already trained 1 epoch: give --epochs above 1 to train on")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_run_that_stopped_early_is_not_resumed_without_more_patience(tmp_path):
    rng = np.random.default_rng(0)  # random labels: the validation loss soon rises
    np.savez(tmp_path / "noise.npz", x_train=rng.integers(0, 256, (200, 12, 12), dtype=np.uint8),
             y_train=rng.integers(0, 3, 200), x_test=rng.integers(0, 256, (20, 12, 12), dtype=np.uint8),
             y_test=rng.integers(0, 3, 20))
    out = tmp_path / "run"
    result = invoke("train", "--dataset", tmp_path / "noise.npz", "--model", "seed-cnn", "--device",
                    "cpu", "--epochs", 20, "--patience", 1, "--lr", 0.1, "--out", out)
    assert "early stopping" in result.output, result.output
    stopped = checkpoint.load(out).epoch
    assert stopped < 20
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert one_line_error(invoke("train", "--resume", out, "--epochs", 30)) == (
        f"Error: {out} stopped early at epoch {stopped} (patience 1): give a larger --patience "
        "to go on")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    result = invoke("train", "--resume", out, "--patience", 100, "--epochs", stopped + 1)
    assert result.exit_code == 0, result.output
    assert checkpoint.load(out).epoch == stopped + 1


def test_resume_with_out_naming_the_same_directory(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--resume", "run", "--out", f"{out}/", "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert "--out and --resume name different directories" in one_line_error(
        invoke("train", "--resume", "run", "--out", "elsewhere", "--epochs", 3))


def test_resume_refuses_another_dtype(tiny, tmp_path):
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0
    before = (out / "checkpoint.npz").read_bytes()
    result = invoke("train", "--resume", out, "--epochs", 2, "--dtype", "float64")
    assert result.exit_code == 1
    assert ("--dtype float64: this run trains in float32 and a resumed run keeps its dtype"
            in result.stderr)
    assert (out / "checkpoint.npz").read_bytes() == before
    assert invoke("train", "--resume", out, "--epochs", 2, "--dtype", "float32").exit_code == 0


def test_a_run_resumes_and_evaluates_its_own_dataset_from_any_directory(tiny, tmp_path,
                                                                         monkeypatch):
    """The dataset path is saved resolved: a relative one would name another file elsewhere."""
    monkeypatch.chdir(tiny.parent)
    out = tmp_path / "run"
    assert invoke(*train_args(tiny.name, out, "--epochs", 1)).exit_code == 0
    saved = json.loads((out / "result.json").read_text())["config"]["dataset"]
    assert saved == str(tiny.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / tiny.name).write_text("not the dataset")
    monkeypatch.chdir(elsewhere)
    assert invoke("train", "--resume", out, "--epochs", 2, "--device", "cpu").exit_code == 0
    assert invoke("evaluate", out, "--device", "cpu").exit_code == 0


@pytest.mark.parametrize("option, value", [("--seed", 5), ("--val-split", 0.5), ("--val-split", 0)])
def test_resume_refuses_a_seed_or_val_split_that_would_draw_another_validation_set(
        tiny, tmp_path, option, value):
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0
    assert (f"{option} {value}: this run's validation set was drawn with {option} "
            f"{ {'--seed': 0, '--val-split': 0.2}[option]}, and a resumed run keeps its training "
            "set") in one_line_error(invoke("train", "--resume", out, "--epochs", 2, option, value))
    assert ("--image-size resizes a directory of pictures; " in one_line_error(  # not "keeps its
        invoke("train", "--resume", out, "--epochs", 2, "--image-size", 28)))  # image size"
    same = {"--seed": 0, "--val-split": 0.2}[option]
    assert invoke("train", "--resume", out, "--epochs", 2, option, same,
                  "--device", "cpu").exit_code == 0


def test_a_best_npz_that_failed_to_be_written_is_written_on_resume(tiny, tmp_path):
    """The checkpoint of epoch 1 names itself best, then best.npz's write fails (as on a full
    disk): the resumed run writes it from the checkpoint instead of never again."""
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0
    (out / "best.npz").unlink()
    result = invoke("train", "--resume", out, "--epochs", 2, "--lr", 1e-12, "--device", "cpu")
    assert result.exit_code == 0, result.output
    best = json.loads((out / "result.json").read_text())["best_epoch"]
    assert checkpoint.load(out / "best.npz").epoch == best


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left")])
def test_a_run_stopped_while_writing_its_results_is_finished_by_resume(tiny, tmp_path,
                                                                       uninterrupted, monkeypatch,
                                                                       stop):
    """Ctrl-C or a full disk after the last epoch, before result.json: the error says to
    resume, and the resume trains nothing and writes the results (it was refused: "already
    trained 3 epochs")."""
    out = tmp_path / "run"
    real_write = checkpoint.atomic_write

    def write(path, *args, **kwargs):
        if path.name == "result.json":
            raise stop
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_write", write)
    result = invoke(*train_args(tiny, out, "--epochs", 3))
    assert result.exit_code == (130 if isinstance(stop, KeyboardInterrupt) else 1)
    assert f"continue with cnnx train --resume {out}" in " ".join(result.output.split())
    assert not (out / "result.json").exists()
    monkeypatch.setattr(checkpoint, "atomic_write", real_write)
    trained = (out / "checkpoint.npz").read_bytes()
    resumed = invoke("train", "--resume", out, "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert "no epochs left to train: writing the results" in resumed.stderr
    assert (out / "checkpoint.npz").read_bytes() == trained and final_state(out) == uninterrupted
    assert json.loads((out / "result.json").read_text())["epochs"] == 3
    assert one_line_error(invoke("train", "--resume", out)) == (
        f"Error: {out} already trained 3 epochs: give --epochs above 3 to train on")
