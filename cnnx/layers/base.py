"""What every layer shares: its backend, dtype, parameters, gradients and input checks.

A layer computes ``forward(x) -> y`` and ``backward(dy) -> dx``. ``forward`` keeps only what
``backward`` needs; ``backward`` overwrites ``.grads`` (same keys, shapes and dtypes as
``.params``: ``check_grads``) with dL/dparam for the batch and returns dL/dx. Both check their
argument first: ``forward`` with ``check_input(x)``, ``backward`` with ``check_grad(dy)``
against the output that ``forward`` returned through ``_record_output``. Layers never import
numpy or cupy: they use ``self.xp``, the array module of the backend they were moved to with
``to(device)``. docs/layers.md explains how to write a layer of one's own.
"""

from __future__ import annotations

import math
import numbers

from .. import config
from ..backends import Backend, get_backend

DTYPES = ("float32", "float64")
#: The most numbers an array may hold: 8-byte numbers addressed by a signed 64-bit size.
MAX_ELEMENTS = (2**63 - 1) // 8


def is_number(value) -> bool:
    """True for a real number, Python's or NumPy's, but not for a bool or None."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Layer:
    """Base class. Subclasses set ``self.params`` in ``reset_parameters`` (if they have any)."""

    #: what ``model.spec()`` records: the constructor arguments that rebuild this layer
    config_keys: tuple[str, ...] = ()

    def __init__(self, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"{type(self).__name__}: dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype = dtype
        self.backend: Backend = get_backend("cpu")
        self.params: dict = {}
        self.grads: dict = {}
        #: state that is saved and moved with the layer but not trained (e.g. running means)
        self.buffers: dict = {}
        self.training = True
        #: shape of the last forward's output (None before any): what backward's dy must have
        self._output_shape = None

    def __call__(self, x):
        """``layer(x)`` is ``layer.forward(x)``, as ``model(x)`` and ``loss(pred, y)`` are."""
        return self.forward(x)

    # ---------------------------------------------------------------- properties
    @property
    def xp(self):
        return self.backend.xp

    @property
    def name(self) -> str:
        return type(self).__name__

    def config(self) -> dict:
        """Constructor arguments (JSON-able) that rebuild this layer, plus its type."""
        spec = {"type": self.name}
        for key in self.config_keys:
            value = getattr(self, key)
            spec[key] = list(value) if isinstance(value, tuple) else value
        return spec

    # ---------------------------------------------------------------- parameters
    def reset_parameters(self, rng, init: str = "he") -> None:
        """Draw fresh parameters from ``rng`` (a numpy Generator); no-op without parameters."""

    def _init_weight(self, rng, shape, fan_in: int, fan_out: int, init: str):
        """He (normal, std sqrt(2/fan_in)) for layers feeding ReLU; Xavier (normal,
        std sqrt(2/(fan_in+fan_out))) otherwise. Drawn in float64 on the host from ``rng``
        so the same seed gives the same weights on every backend and dtype."""
        if init == "he":
            std = math.sqrt(2.0 / fan_in)
        elif init == "xavier":
            std = math.sqrt(2.0 / (fan_in + fan_out))
        else:
            raise ValueError(f"{self.name}: init must be 'he' or 'xavier', got {init!r}")
        self._check_size(shape)
        return self.backend.asarray(rng.standard_normal(shape) * std, dtype=self.dtype)

    def _zeros(self, shape):
        self._check_size(shape)
        return self.xp.zeros(shape, dtype=self.dtype)

    def _check_size(self, shape) -> None:
        """ValueError naming the layer when an array of ``shape`` could not be addressed at all
        (NumPy would say "Maximum allowed dimension exceeded"); one that merely does not fit
        the memory is left to raise MemoryError."""
        count = math.prod(shape)
        if count > MAX_ELEMENTS:
            raise ValueError(f"{self.name}: a parameter of shape {tuple(shape)} would hold "
                             f"{count:.3g} numbers, more than any memory holds; use "
                             f"smaller sizes")

    def num_parameters(self) -> int:
        return sum(int(p.size) for p in self.params.values())

    def to(self, device) -> "Layer":
        """Move parameters (and the layer's computations) to ``device``; returns self."""
        backend = get_backend(device)
        if backend is not self.backend:
            def move(arrays):
                return {k: backend.asarray(self.backend.to_numpy(v)) for k, v in arrays.items()}
            self.params, self.buffers = move(self.params), move(self.buffers)
            self.grads = {k: backend.xp.zeros_like(v) for k, v in self.params.items()}
            self.backend = backend
        return self

    def train(self) -> "Layer":
        self.training = True
        return self

    def eval(self) -> "Layer":
        self.training = False
        return self

    def replayable_in_graph(self) -> bool:
        """Whether a CUDA graph that recorded one training step of this layer may replay it
        for the next: true when the step reads nothing the host changes between steps
        (cnnx/graph.py). Parameters and buffers must be updated in place."""
        return True

    # ---------------------------------------------------------------- shapes and checks
    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of one output example given one input example's shape (no batch axis)."""
        return tuple(input_shape)

    def check_input(self, x, rank: int | None = None, channels: int | None = None) -> None:
        """Raise ValueError naming this layer when ``x`` is not what forward expects."""
        if not hasattr(x, "shape"):  # a list, a scalar: no backend's array at all
            raise ValueError(f"{self.name}: input is a {type(x).__name__}, not an array; pass "
                             f"one, e.g. layer.backend.asarray(x, dtype={self.dtype!r})")
        if not self.backend.owns(x):
            raise ValueError(
                f"{self.name}: input is a {type(x).__module__}.{type(x).__name__}, but the layer "
                f"is on {self.backend.name}; convert with backend.asarray or move the layer with .to()"
            )
        if rank is not None and x.ndim != rank:
            raise ValueError(
                f"{self.name}: expected a rank-{rank} input {self._layout(rank)}, "
                f"got shape {tuple(x.shape)}"
            )
        if channels is not None and x.shape[1] != channels:
            channels_last = x.ndim == 4 and x.shape[3] == channels
            raise ValueError(
                f"{self.name}: expected {channels} input channels/features (axis 1), "
                f"got {x.shape[1]} in shape {tuple(x.shape)}"
                + ("; it looks channels-last (N, H, W, C): convert it with "
                   "x.transpose(0, 3, 1, 2)" if channels_last else "")
            )
        if x.dtype != self.dtype:  # str(x.dtype) costs 2 µs a call, 30x this comparison
            got = str(x.dtype)
            # a layer can be rebuilt in float64, say, but not in int64
            rebuild = f" or build the layer with dtype={got!r}" if got in DTYPES else ""
            raise ValueError(f"{self.name}: expected dtype {self.dtype}, got {got}; "
                             f"convert the input with x.astype({self.dtype!r}){rebuild}")
        if config.check_finite and not bool(self.xp.isfinite(x).all()):
            raise ValueError(f"{self.name}: input contains NaN or inf")

    @staticmethod
    def _layout(rank: int) -> str:
        return {4: "(N, C, H, W)", 2: "(N, features)"}.get(rank, "")

    def backward_params(self, dy) -> None:
        """Fill ``.grads`` like ``backward`` without returning dL/dx (the first layer of a
        network needs none); a layer that can skip that work overrides this."""
        self.backward(dy)

    def _record_output(self, y):
        """Return forward's output ``y``, keeping its shape for ``check_grad``. Refuses an
        output in another dtype than the layer's (an array made without ``dtype=self.dtype``),
        which the next layer would otherwise report as its own input's fault."""
        if y.dtype != self.dtype:
            raise ValueError(f"{self.name}: forward returned a {y.dtype} output, but the layer "
                             f"is {self.dtype}; check its input with self.check_input(x) and "
                             f"give every array it creates dtype=self.dtype")
        self._output_shape = y.shape
        return y

    def check_grad(self, dy) -> None:
        """Raise ValueError naming this layer when backward comes before any forward, or when
        ``dy`` (dL/d output) is not shaped and typed like the last forward's output. Shape and
        dtype comparisons only: every backward pays for this check."""
        expected = self._output_shape
        if expected is None:
            raise ValueError(f"{self.name}: backward called before forward (or forward "
                             f"did not return self._record_output(y))")
        shape = getattr(dy, "shape", None)
        if shape != expected or dy.dtype != self.dtype:
            got = (f"shape {tuple(shape)} and dtype {dy.dtype}" if hasattr(dy, "dtype")
                   else f"a {type(dy).__module__}.{type(dy).__name__}")
            fix = (f"convert it with dy.astype({self.dtype!r})" if shape == expected
                   else "pass dL/d(output) for the last forward call")
            raise ValueError(f"{self.name}: backward expected dy of shape {tuple(expected)} and "
                             f"dtype {self.dtype} (forward's output), got {got}; {fix}")

    def check_grads(self) -> None:
        """Raise ValueError naming this layer unless ``.grads`` holds, for every parameter, an
        array of that parameter's shape and dtype: what ``backward`` must leave there. Without
        this a missing gradient fails later as a bare KeyError, and one of another shape (a
        sum that lost or kept an axis) is broadcast by the optimizer's update, or fails in it.
        ``Sequential.backward`` calls it after every layer's backward (a few dict and shape
        comparisons per parameter)."""
        for key, param in self.params.items():
            grad = self.grads.get(key)
            if grad is None:
                raise ValueError(f"{self.name}: backward left no gradient for parameter {key!r}; "
                                 f"set self.grads[{key!r}] = dL/d{key} in backward")
            shape = getattr(grad, "shape", None)
            if shape != param.shape or grad.dtype != param.dtype:
                got = (f"shape {tuple(shape)} and dtype {grad.dtype}" if shape is not None
                       else f"a {type(grad).__name__}")
                raise ValueError(f"{self.name}: grads[{key!r}] has {got}, but parameter {key!r} "
                                 f"has shape {tuple(param.shape)} and dtype {param.dtype}; "
                                 f"backward must set dL/d{key} shaped and typed like it")

    def describe(self) -> str:
        """Compact one-line form for tables: ``Conv2D(1, 16, k=(3, 3), s=(1, 1), p=(1, 1), relu)``."""
        short = {"kernel_size": "k=", "stride": "s=", "padding": "p=", "axis": "axis="}
        parts = [f"{short.get(k, '')}{v}" for k in self.config_keys
                 if (v := getattr(self, k)) is not None]
        return f"{self.name}({', '.join(parts)})".replace("'", "")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.config_keys)
        return f"{self.name}({args})"
