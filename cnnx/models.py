"""Named model presets and JSON model files: ``build("reference")`` or ``build("my.json")``.

A preset is a function ``(dtype, input_shape, classes) -> layers``, sized for the images and
classes of the dataset it trains on (Fashion-MNIST's 1x28x28 and 10 by default).

A JSON model file is either a list of layer objects (``Layer.config()``) or an object
``{"input_shape": [C, H, W], "layers": [...]}``.
"""

from __future__ import annotations

import json
import math
import os
import sys

from .layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                     MaxPool2D, ReLU, suggest)
from .model import ModelSpecError, Sequential, from_spec
from .shapes import is_int


#: The input a preset is sized for when no dataset says otherwise: Fashion-MNIST's.
DEFAULT_INPUT = (1, 28, 28)


def flat_size(features, input_shape) -> int:
    """Numbers per example that ``features`` (the layers before a Flatten) put out for
    ``input_shape``; ValueError naming the layer when the images are too small for them."""
    shape = tuple(input_shape)
    for index, layer in enumerate(features):
        try:
            shape = layer.output_shape(shape)
        except ValueError as exc:
            raise ValueError(f"layer {index} ({exc})") from None
    return math.prod(shape)


def reference(dtype="float32", input_shape=DEFAULT_INPUT, classes=10):
    """The reference CNN of the project: conv3x3(C→16, pad 1)–ReLU–maxpool2–conv3x3(16→32,
    pad 1)–ReLU–maxpool2–flatten–dense(→128)–ReLU–dense(128→classes); on 28x28x1 input the
    flatten holds 32·7·7 = 1568 numbers."""
    features = [
        Conv2D(input_shape[0], 16, 3, padding=1, activation="relu", dtype=dtype),
        MaxPool2D(2, dtype=dtype),
        Conv2D(16, 32, 3, padding=1, activation="relu", dtype=dtype), MaxPool2D(2, dtype=dtype),
    ]
    return [*features, Flatten(dtype=dtype),
            Dense(flat_size(features, input_shape), 128, activation="relu", dtype=dtype),
            Dense(128, classes, dtype=dtype)]


def lenet5(dtype="float32", input_shape=DEFAULT_INPUT, classes=10):
    """LeNet-5 in its common modern form (ReLU, max-pool; conv1 pads 2, so 28x28 input gives
    the original's 16·5·5 = 400 features before the dense layers)."""
    features = [
        Conv2D(input_shape[0], 6, 5, padding=2, activation="relu", dtype=dtype),
        MaxPool2D(2, dtype=dtype),
        Conv2D(6, 16, 5, activation="relu", dtype=dtype), MaxPool2D(2, dtype=dtype),
    ]
    return [*features, Flatten(dtype=dtype),
            Dense(flat_size(features, input_shape), 120, activation="relu", dtype=dtype),
            Dense(120, 84, activation="relu", dtype=dtype), Dense(84, classes, dtype=dtype)]


def seed_cnn(dtype="float32", input_shape=DEFAULT_INPUT, classes=10):
    """Seed 001's network (eq. 23): (conv–ReLU–maxpool) x2, flatten, dense–ReLU, dense, softmax
    (fused into the cross-entropy loss); 16·5·5 = 400 features on 28x28 input."""
    features = [
        Conv2D(input_shape[0], 8, 3, dtype=dtype), ReLU(dtype=dtype), MaxPool2D(2, dtype=dtype),
        Conv2D(8, 16, 3, dtype=dtype), ReLU(dtype=dtype), MaxPool2D(2, dtype=dtype),
    ]
    return [*features, Flatten(dtype=dtype),
            Dense(flat_size(features, input_shape), 64, dtype=dtype), ReLU(dtype=dtype),
            Dense(64, classes, dtype=dtype)]


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


def fmnist_small(dtype="float32", input_shape=DEFAULT_INPUT, classes=10):
    """Fewer than 100K parameters for Fashion-MNIST: three conv–BN–ReLU–maxpool blocks
    (32, 64, 64 channels), then dense 576→64→classes (576 = 64·3·3 on 28x28 input)."""
    features = [
        *_conv_bn_relu(input_shape[0], 32, dtype), MaxPool2D(2, dtype=dtype),
        *_conv_bn_relu(32, 64, dtype), MaxPool2D(2, dtype=dtype),
        *_conv_bn_relu(64, 64, dtype), MaxPool2D(2, dtype=dtype),
    ]
    return [*features, Flatten(dtype=dtype),
            Dense(flat_size(features, input_shape), 64, activation="relu", dtype=dtype),
            Dense(64, classes, dtype=dtype)]


def fmnist_bn(dtype="float32", input_shape=DEFAULT_INPUT, classes=10):
    """Two conv blocks with batch norm (conv–BN–ReLU ×2, maxpool; 32 then 64 channels), then
    dense 3136→128 (3136 = 64·7·7 on 28x28 input) with batch norm and dropout."""
    features = [
        *_conv_bn_relu(input_shape[0], 32, dtype), *_conv_bn_relu(32, 32, dtype),
        MaxPool2D(2, dtype=dtype),
        *_conv_bn_relu(32, 64, dtype), *_conv_bn_relu(64, 64, dtype), MaxPool2D(2, dtype=dtype),
    ]
    return [*features, Flatten(dtype=dtype), Dropout(0.25, dtype=dtype),
            Dense(flat_size(features, input_shape), 128, dtype=dtype),
            BatchNorm1D(128, dtype=dtype), ReLU(dtype=dtype), Dropout(0.25, dtype=dtype),
            Dense(128, classes, dtype=dtype)]


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


def build(name, dtype: str = "float32", seed: int = 0, input_shape=None,
          classes: int = 10) -> Sequential:
    """A Sequential from a preset name or a JSON model file path (a str or a path object;
    a name that is no preset is read as a file when it ends in .json, holds a directory
    separator or names an existing file).

    A preset is sized for ``input_shape`` (C, H, W; default 1x28x28) and ``classes`` outputs:
    its first convolution takes C channels, its first dense layer the features the
    convolutions leave. ValueError when the images are too small for it. A JSON file's layers
    are taken as written, and so is its own input shape: ValueError when ``input_shape``
    differs from it (``input_shape`` is for a file without one).
    """
    if isinstance(name, os.PathLike):
        return _from_json(os.fspath(name), dtype, seed, input_shape)
    if not isinstance(name, str):
        raise TypeError(f"build: name must be a preset name or a path to a JSON model file, "
                        f"got a {type(name).__name__}")
    if name in PRESETS:
        shape = tuple(input_shape or DEFAULT_INPUT)
        if len(shape) != 3:
            raise ValueError(f"input shape must be (C, H, W), got {shape}")
        return Sequential(PRESETS[name](dtype, shape, classes), input_shape=shape, seed=seed)
    if name.lower().endswith(".json") or os.path.sep in name or os.path.isfile(name):
        return _from_json(name, dtype, seed, input_shape)
    raise ModelSpecError(f"unknown model {name!r}{suggest(name, PRESETS)}: use one of "
                         f"{', '.join(PRESETS)} or a .json file")


#: A model file larger than this is refused unread: a model of thousands of layers takes a
#: few hundred KB, so this is some other file (a dataset?) named by mistake.
MAX_FILE_BYTES = 64 << 20


def read_model_file(path: str):
    """The JSON value in the model file at ``path``: ModelSpecError naming the file when it
    cannot be read or is not JSON. A UTF-8 byte-order mark is skipped; an object that repeats
    a key is refused (JSON readers disagree on which one counts)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size  # 0 for a pipe: read, up to the limit
            raw = f.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else b""
    except OSError as exc:
        raise ModelSpecError(f"cannot read model file {path}: {exc.strerror}") from None
    if size > MAX_FILE_BYTES or len(raw) > MAX_FILE_BYTES:
        raise ModelSpecError(f"model file {path} holds more than {MAX_FILE_BYTES >> 20} MiB, "
                             f"which no model description needs: is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # a ValueError: "does not fit the images" would be said of it
        raise ModelSpecError(f"model file {path} is not UTF-8 text, as JSON must be") from None
    if not text.strip():
        raise ModelSpecError(f"model file {path} is empty: write a JSON list of layers, such as "
                             f'[{{"type": "Flatten"}}, {{"type": "Dense", "in_features": 784, '
                             f'"out_features": 10}}]')
    try:
        return json.loads(text, object_pairs_hook=_no_repeated_keys)
    except json.JSONDecodeError as exc:
        hint = ""
        if exc.msg.startswith(("Expecting value", "Expecting property name")):
            hint = " (JSON takes no comments, no trailing commas and only double quotes)"
        raise ModelSpecError(f"model file {path} is not valid JSON: {exc}{hint}") from None
    except RecursionError:
        raise ModelSpecError(f"model file {path} nests lists or objects too deeply to read; a "
                             f"model is a list of layer objects") from None
    except _RepeatedKey as exc:
        raise ModelSpecError(f"model file {path}: {exc}") from None
    except ValueError:  # an integer longer than Python converts (int_max_str_digits)
        raise ModelSpecError(f"model file {path} holds a number too long to read (more than "
                             f"{sys.get_int_max_str_digits()} digits)") from None


class _RepeatedKey(ValueError):
    pass


def _no_repeated_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _RepeatedKey(f"key {key!r} appears twice in one object "
                               f"({seen[key]!r} and {value!r}); keep one")
        seen[key] = value
    return seen


#: The keys of a model file that is an object.
FILE_KEYS = ("input_shape", "layers")


def _from_json(path: str, dtype: str, seed: int, input_shape):
    data = read_model_file(path)
    if isinstance(data, dict):
        unknown = [key for key in data if key not in FILE_KEYS]
        if unknown:
            hints = "".join(suggest(key, FILE_KEYS) for key in unknown)
            raise ModelSpecError(f"model file {path}: unknown key(s) {', '.join(map(repr, unknown))}"
                                 f"{hints}; a model object has input_shape (optional) and layers")
        if "layers" not in data:
            raise ModelSpecError(f"model file {path}: the object has no 'layers': write "
                                 f'{{"input_shape": [C, H, W], "layers": [...]}} or the list alone')
        own = data.get("input_shape")
        if own is not None and not (isinstance(own, list) and own
                                    and all(is_int(n) and n > 0 for n in own)):
            raise ModelSpecError(f"model file {path}: input_shape must be a list of positive "
                                 f"integers, such as [1, 28, 28] (or [784] for features), "
                                 f"got {own!r}")
        if own is not None and input_shape is not None and own != list(input_shape):
            # taken as written: sizing it to other images would build another model
            raise ValueError(f"model file {path} is written for input {own} (its input_shape), "
                             f"not {list(input_shape)}: a JSON model is taken as written")
        input_shape = input_shape or own
        data = data["layers"]
    elif not isinstance(data, list):
        raise ModelSpecError(f"model file {path} holds a JSON {_json_type(data)}: write a list "
                             f"of layer objects, or an object with input_shape and layers")
    try:  # Sequential checks an input_shape given to build
        return from_spec(data, input_shape=input_shape or None, seed=seed, dtype=dtype)
    except ModelSpecError as exc:
        raise ModelSpecError(f"model file {path}: {exc}") from None


def _json_type(value) -> str:
    return {str: "string", bool: "boolean", type(None): "null", int: "number",
            float: "number"}.get(type(value), type(value).__name__)
