"""Named model presets and JSON model files: ``build("reference")`` or ``build("my.json")``.

A JSON model file is either a list of layer objects (``Layer.config()``) or an object
``{"input_shape": [C, H, W], "layers": [...]}``.
"""

from __future__ import annotations

import json
import os

from .layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                     MaxPool2D, ReLU)
from .model import ModelSpecError, Sequential, from_spec


def reference(dtype="float32"):
    """The reference CNN of the project: conv3x3(1→16, pad 1)–ReLU–maxpool2–conv3x3(16→32,
    pad 1)–ReLU–maxpool2–flatten–dense(1568→128)–ReLU–dense(128→10); 28x28x1 input."""
    return [
        Conv2D(1, 16, 3, padding=1, activation="relu", dtype=dtype), MaxPool2D(2, dtype=dtype),
        Conv2D(16, 32, 3, padding=1, activation="relu", dtype=dtype), MaxPool2D(2, dtype=dtype),
        Flatten(dtype=dtype),
        Dense(32 * 7 * 7, 128, activation="relu", dtype=dtype), Dense(128, 10, dtype=dtype),
    ], (1, 28, 28)


def lenet5(dtype="float32"):
    """LeNet-5 in its common modern form (ReLU, max-pool) for 28x28x1 input (conv1 pads 2)."""
    return [
        Conv2D(1, 6, 5, padding=2, activation="relu", dtype=dtype), MaxPool2D(2, dtype=dtype),
        Conv2D(6, 16, 5, activation="relu", dtype=dtype), MaxPool2D(2, dtype=dtype),
        Flatten(dtype=dtype),
        Dense(16 * 5 * 5, 120, activation="relu", dtype=dtype),
        Dense(120, 84, activation="relu", dtype=dtype), Dense(84, 10, dtype=dtype),
    ], (1, 28, 28)


def seed_cnn(dtype="float32"):
    """Seed 001's network (eq. 23): (conv–ReLU–maxpool) x2, flatten, dense–ReLU, dense, softmax
    (fused into the cross-entropy loss). Sized for 28x28x1."""
    return [
        Conv2D(1, 8, 3, dtype=dtype), ReLU(dtype=dtype), MaxPool2D(2, dtype=dtype),
        Conv2D(8, 16, 3, dtype=dtype), ReLU(dtype=dtype), MaxPool2D(2, dtype=dtype),
        Flatten(dtype=dtype), Dense(16 * 5 * 5, 64, dtype=dtype), ReLU(dtype=dtype),
        Dense(64, 10, dtype=dtype),
    ], (1, 28, 28)


def seed002_net(dtype="float32", in_shape=(1, 8, 8), outputs=1):
    """Seed 002's network: conv–ReLU–avgpool–conv–ReLU–maxpool–flatten–dense, sigmoid output
    (fused into BinaryCrossEntropy on the logits)."""
    c, h, w = in_shape
    h2, w2 = ((h - 2) // 2 - 2) // 2, ((w - 2) // 2 - 2) // 2
    return [
        Conv2D(c, 3, 3, dtype=dtype), ReLU(dtype=dtype), AvgPool2D(2, dtype=dtype),
        Conv2D(3, 4, 3, dtype=dtype), ReLU(dtype=dtype), MaxPool2D(2, dtype=dtype),
        Flatten(dtype=dtype), Dense(4 * h2 * w2, outputs, dtype=dtype),
    ], in_shape


def _conv_bn_relu(cin, cout, dtype):
    """conv3x3 (pad 1) – batch norm – ReLU, the ReLU fused into the batch norm."""
    return [Conv2D(cin, cout, 3, padding=1, dtype=dtype),
            BatchNorm2D(cout, activation="relu", dtype=dtype)]


def fmnist_small(dtype="float32"):
    """Fewer than 100K parameters for Fashion-MNIST: three conv–BN–ReLU–maxpool blocks
    (32, 64, 64 channels), then dense 576→64→10."""
    return [
        *_conv_bn_relu(1, 32, dtype), MaxPool2D(2, dtype=dtype),
        *_conv_bn_relu(32, 64, dtype), MaxPool2D(2, dtype=dtype),
        *_conv_bn_relu(64, 64, dtype), MaxPool2D(2, dtype=dtype),
        Flatten(dtype=dtype), Dense(64 * 3 * 3, 64, activation="relu", dtype=dtype),
        Dense(64, 10, dtype=dtype),
    ], (1, 28, 28)


def fmnist_bn(dtype="float32"):
    """Two conv blocks with batch norm (conv–BN–ReLU ×2, maxpool; 32 then 64 channels), then
    dense 3136→128 with batch norm and dropout."""
    return [
        *_conv_bn_relu(1, 32, dtype), *_conv_bn_relu(32, 32, dtype), MaxPool2D(2, dtype=dtype),
        *_conv_bn_relu(32, 64, dtype), *_conv_bn_relu(64, 64, dtype), MaxPool2D(2, dtype=dtype),
        Flatten(dtype=dtype), Dropout(0.25, dtype=dtype), Dense(64 * 7 * 7, 128, dtype=dtype),
        BatchNorm1D(128, dtype=dtype), ReLU(dtype=dtype), Dropout(0.25, dtype=dtype),
        Dense(128, 10, dtype=dtype),
    ], (1, 28, 28)


PRESETS = {"reference": reference, "lenet5": lenet5, "seed-cnn": seed_cnn,
           "fmnist-small": fmnist_small, "fmnist-bn": fmnist_bn}

#: Training recipes: what `cnnx train --model NAME` uses for every option not given.
#: Keys: epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule ("constant",
#: "step", "cosine"), warmup (epochs), flip, shift (augmentation), patience (early stopping).
RECIPES = {
    "fmnist-small": {"epochs": 30, "batch_size": 128, "optimizer": "adam", "lr": 2e-3,
                     "weight_decay": 1e-4, "schedule": "cosine", "warmup": 1.0,
                     "flip": 0.5, "shift": 1, "patience": 5},
    "fmnist-bn": {"epochs": 16, "batch_size": 128, "optimizer": "adam", "lr": 2e-3,
                  "weight_decay": 1e-4, "schedule": "cosine", "warmup": 1.0,
                  "flip": 0.5, "shift": 1, "patience": 5},
}


def recipe(name: str) -> dict:
    """The preset's training recipe (an empty dict for models without one)."""
    return dict(RECIPES.get(name, {}))


def build(name: str, dtype: str = "float32", seed: int = 0, input_shape=None) -> Sequential:
    """A Sequential from a preset name or a JSON model file path."""
    if name in PRESETS:
        layers, shape = PRESETS[name](dtype)
        return Sequential(layers, input_shape=input_shape or shape, seed=seed)
    if name.endswith(".json") or os.path.sep in name:
        return _from_json(name, dtype, seed, input_shape)
    raise ModelSpecError(f"unknown model {name!r}: use one of {', '.join(PRESETS)} or a .json file")


def _from_json(path: str, dtype: str, seed: int, input_shape):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ModelSpecError(f"cannot read model file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"model file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        input_shape = input_shape or data.get("input_shape")
        data = data.get("layers")
    shape = tuple(input_shape) if input_shape else None
    try:
        return from_spec(data, input_shape=shape, seed=seed, dtype=dtype)
    except ModelSpecError as exc:
        raise ModelSpecError(f"model file {path}: {exc}") from None
