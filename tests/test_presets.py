"""Issue 6's presets, short: one epoch of each Fashion-MNIST preset, with its own recipe, on a
5,000-image subset of the real data. Asserts that learning happens (far above chance), not the
final accuracy, which takes the full run (BENCHMARKS.md, "Fashion-MNIST presets")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnx import data, models
from cli_helpers import run_cnnx


@pytest.fixture(scope="module")
def fmnist_subset(tmp_path_factory):
    if data.locate("fashion-mnist") is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    full = data.load_dataset("fashion-mnist", download=False)
    path = tmp_path_factory.mktemp("fmnist") / "fmnist-5k.npz"
    # the first 5,000 training and 2,000 test images (both sets are class-balanced shuffles)
    np.savez(path, x_train=full.x_train[:5000], y_train=full.y_train[:5000],
             x_test=full.x_test[:2000], y_test=full.y_test[:2000])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(models.RECIPES))
def test_preset_learns_in_one_epoch_on_5k_images(fmnist_subset, tmp_path, preset):
    out = tmp_path / preset
    result = run_cnnx("train", "--device", "cpu", "--dataset", fmnist_subset, "--model", preset,
                      "--epochs", 1, "--out", out, "--quiet", timeout=900)
    assert result.returncode == 0, result.stderr
    res = json.loads((out / "result.json").read_text())
    (epoch,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = res["config"]
    recipe = models.recipe(preset)
    assert config["optimizer"] == recipe["optimizer"] and config["flip"] == recipe["flip"]
    # chance is 0.10 and an untrained network's loss is about ln 10 = 2.30
    assert res["test_accuracy"] >= 0.6, res
    assert epoch["val_accuracy"] >= 0.6 and epoch["val_loss"] < 1.5, epoch
