"""Layers: each a forward, a derived backward, and the parameters/gradients between them."""

from __future__ import annotations

import inspect

from .activation import Identity, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .norm import BatchNorm1D, BatchNorm2D
from .pool import AvgPool2D, MaxPool2D
from .regularize import Dropout, GlobalAvgPool2D
from .reshape import Flatten

LAYER_TYPES = {cls.__name__: cls for cls in (
    Conv2D, MaxPool2D, AvgPool2D, Flatten, Dense, ReLU, Sigmoid, Tanh, Softmax, Identity,
    BatchNorm2D, BatchNorm1D, Dropout, GlobalAvgPool2D,
)}

__all__ = ["Layer", "from_config", "LAYER_TYPES", *LAYER_TYPES]


def from_config(spec: dict, dtype: str = "float32", seed: int = 0) -> Layer:
    """Build a layer from ``{"type": "Conv2D", ...constructor arguments}`` (``Layer.config()``)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a layer spec must be an object with a 'type', got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("type")
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown layer type {kind!r}; known: {', '.join(sorted(LAYER_TYPES))}")
    for key in ("kernel_size", "stride", "padding"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if "seed" in _check_arguments(kind, cls, kwargs):
        kwargs.setdefault("seed", seed)
    try:
        return cls(**kwargs, dtype=dtype)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ValueError(f"{kind}: {exc}") from None


def _check_arguments(kind: str, cls, kwargs: dict) -> dict:
    """Name the unknown and the missing constructor arguments of a layer spec (the dtype is
    the whole model's, so a spec may not set it); returns the arguments the layer takes."""
    params = {name: p for name, p in inspect.signature(cls).parameters.items()
              if name != "dtype" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = [name for name in kwargs if name not in params]
    if unknown:
        takes = ", ".join(n for n in params if n != "seed") or "no arguments"
        raise ValueError(f"{kind}: unknown argument(s) {', '.join(unknown)}; it takes {takes}")
    missing = [name for name, p in params.items() if p.default is p.empty and name not in kwargs]
    if missing:
        raise ValueError(f"{kind}: missing argument(s) {', '.join(missing)}")
    return params
