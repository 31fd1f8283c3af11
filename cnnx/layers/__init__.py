"""Layers: each a forward, a derived backward, and the parameters/gradients between them."""

from __future__ import annotations

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
    if "seed" in cls.__init__.__code__.co_varnames:
        kwargs.setdefault("seed", seed)
    try:
        return cls(**kwargs, dtype=dtype)
    except TypeError as exc:
        raise ValueError(f"{kind}: bad arguments {kwargs}: {exc}") from None
