"""Layers: each a forward, a derived backward, and the parameters/gradients between them."""

from __future__ import annotations

import difflib
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

BUILT_IN = frozenset(LAYER_TYPES)

__all__ = ["Layer", "from_config", "register", "LAYER_TYPES", *LAYER_TYPES]


def register(cls):
    """Make a ``Layer`` subclass of your own known by its class name, as the built-in layers
    are, to ``from_config``, ``from_spec`` and ``checkpoint.load(...).build_model()``, which
    rebuild a model from the layer types and ``config_keys`` values of ``model.spec()``.
    Returns ``cls``, so it can decorate the class. Registering a class of the same name again
    (a notebook cell run twice) replaces it; a built-in layer's name is refused.

    Checks what rebuilding needs: the constructor takes ``dtype`` (the whole model's), and
    every other argument of it but ``seed`` and ``init`` is in ``config_keys`` (else a
    rebuilt layer would silently get its default)."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)) or cls is Layer:
        raise TypeError(f"register: expected a subclass of cnnx.layers.Layer, got {cls!r}")
    name = cls.__name__
    if name in BUILT_IN and LAYER_TYPES[name] is not cls:
        raise ValueError(f"register: {name} is a built-in layer's name; give yours another")
    params = {n: p for n, p in inspect.signature(cls).parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if "dtype" not in params:
        raise ValueError(f"register: {name}.__init__ must take dtype='float32' and pass it to "
                         f"Layer.__init__ (a model is rebuilt in its dtype)")
    unsaved = [n for n in params if n not in ("dtype", "seed", "init", *cls.config_keys)]
    if unsaved:
        raise ValueError(f"register: {name}.config_keys lacks constructor argument(s) "
                         f"{', '.join(unsaved)}, so a rebuilt layer would take the defaults; "
                         f"list them: config_keys = {tuple(cls.config_keys) + tuple(unsaved)!r}")
    unknown = [key for key in cls.config_keys if key not in params]
    if unknown:
        raise ValueError(f"register: {name}.config_keys names {', '.join(unknown)}, which "
                         f"{name}.__init__ does not take")
    LAYER_TYPES[name] = cls
    return cls


def from_config(spec: dict, dtype: str = "float32", seed: int = 0) -> Layer:
    """Build a layer from ``{"type": "Conv2D", ...constructor arguments}`` (``Layer.config()``).

    ``seed`` seeds the layer's random numbers; a spec may not set it, nor the dtype: both
    belong to the whole model (``Sequential``'s seed redraws every layer's anyway)."""
    if not isinstance(spec, dict) or "type" not in spec:
        hint = (f" (write {{\"type\": \"{spec}\"}})" if isinstance(spec, str) and spec in LAYER_TYPES
                else "")
        raise ValueError(f"a layer spec must be an object with a 'type', got {spec!r}{hint}")
    kwargs = dict(spec)
    kind = kwargs.pop("type")
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        close = suggest(kind, LAYER_TYPES)
        own = ("" if close or not (isinstance(kind, str) and kind.isidentifier()) else
               f"; a layer of your own must be registered first, in Python: "
               f"cnnx.layers.register({kind})")
        raise ValueError(f"unknown layer type {kind!r}{close}; known: "
                         f"{', '.join(sorted(LAYER_TYPES))}{own}")
    if "seed" in _check_arguments(kind, cls, kwargs):
        kwargs["seed"] = seed
    try:
        return cls(**kwargs, dtype=dtype)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise ValueError(f"{kind}: {exc}") from None


def suggest(name, known) -> str:
    """``" (did you mean 'Conv2D'?)"`` for a name that is close to one of ``known`` (or the
    same but for case), else ``""``."""
    if not isinstance(name, str):
        return ""
    folded = {k.lower(): k for k in known}
    close = ([folded[name.lower()]] if name.lower() in folded
             else difflib.get_close_matches(name, list(known), n=1, cutoff=0.75))
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_arguments(kind: str, cls, kwargs: dict) -> dict:
    """Name the unknown and the missing constructor arguments of a layer spec (the dtype and
    the seed are the whole model's, so a spec may not set them); returns the arguments the
    layer takes."""
    params = {name: p for name, p in inspect.signature(cls).parameters.items()
              if name != "dtype" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for name in ("dtype", "seed"):
        if name in kwargs:
            raise ValueError(f"{kind}: {name} is the whole model's, not a layer's: remove it "
                             f"and give --{name} (or {name}= to build/from_spec)")
    takes = [n for n in params if n != "seed"]
    unknown = [name for name in kwargs if name not in takes]
    if unknown:
        hints = "".join(suggest(name, takes) for name in unknown if isinstance(name, str))
        raise ValueError(f"{kind}: unknown argument(s) {', '.join(map(str, unknown))}{hints}; "
                         f"it takes {', '.join(takes) or 'no arguments'}")
    missing = [name for name, p in params.items() if p.default is p.empty and name not in kwargs]
    if missing:
        raise ValueError(f"{kind}: missing argument(s) {', '.join(missing)}")
    return params
