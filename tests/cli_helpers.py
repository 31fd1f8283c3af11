"""Helpers for the command-line tests: an isolated environment, a tiny learnable dataset,
``cnnx`` run in-process (CliRunner) or as a real process (optionally SIGKILLed mid-run), and
the final state of a run for bitwise comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import cnnx
from cnnx import checkpoint
from cnnx.cli import cnnx as cli
from cnnx.data import sources
from cnnx.data.synthetic import make_synthetic

ROOT = Path(cnnx.__file__).resolve().parent.parent
TIMING = ("seconds", "images_per_second")  # the only metrics that differ between runs


def isolate(monkeypatch, tmp_path) -> None:
    """No real cache, system dataset or network: only what a test provides."""
    monkeypatch.delenv("CNNX_DATA", raising=False)
    monkeypatch.delenv("CNNX_MIRROR", raising=False)
    monkeypatch.setenv("CNNX_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIRS", [])
    monkeypatch.chdir(tmp_path)


def write_tiny_npz(path: Path) -> Path:
    """A small learnable dataset as an .npz (synthetic shapes: 600 train, 200 test)."""
    d = make_synthetic(600, 200, seed=5)
    np.savez(path, **{k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")},
             class_names=np.array(d["class_names"]))
    return path


def invoke(*args):
    """``cnnx ARGS`` in this process through click's CliRunner."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    """The ``Error: ...`` line of a failed CliRunner result, checked to be its only one, its
    last line, and without a traceback."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.output.rstrip().splitlines()[-1] == errors[0], result.output
    return errors[0]


def train_args(dataset, out, *extra) -> list:
    """A quick CPU training run of seed-cnn (480 training images: 15 steps per epoch)."""
    return ["train", "--device", "cpu", "--dataset", dataset, "--model", "seed-cnn",
            "--batch-size", 32, "--lr", 0.02, "--val-split", 0.2, "--out", out, *extra]


KILLER = """
import os, signal, sys
import cnnx.train
real, calls = cnnx.train.train_step, []
def step(*args):
    calls.append(1)
    if len(calls) == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
cnnx.train.train_step = step
from cnnx.cli import main
sys.argv[0] = "cnnx"
main()
"""


def run_cnnx(*args, kill_at=None, timeout=300, env=None):
    """``python -m cnnx ARGS`` as a real process, with ``env`` added to its environment; with
    ``kill_at=k`` it SIGKILLs itself just before its k-th training step."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "cnnx", *map(str, args)]
    if kill_at is not None:
        env["KILL_AT_STEP"] = str(kill_at)
        command = [sys.executable, "-c", KILLER, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def final_state(out: Path):
    """Weights and buffers, optimizer buffers (as bytes), metrics without timings, epoch."""
    ck = checkpoint.load(out / "checkpoint.npz")
    weights = {k: v.tobytes() for k, v in ck.model_state.items()}
    buffers = {k: v.tobytes() for k, v in ck.optimizer_state["buffers"].items()}
    metrics = [{k: v for k, v in m.items() if k not in TIMING} for m in ck.metrics]
    return weights, buffers, metrics, ck.epoch
