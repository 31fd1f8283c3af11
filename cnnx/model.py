"""``Sequential``: a stack of layers run forward in order and backward in reverse (seed 001 §4)."""

from __future__ import annotations

import math

from .backends import get_backend, make_rng
from .layers import Layer, ReLU, from_config
from .layers.base import DTYPES
from .shapes import is_int

# Layers between a parametric layer and its activation that do not change which init fits.
_PASS_THROUGH = ("Flatten", "MaxPool2D", "AvgPool2D", "Dropout", "BatchNorm2D", "BatchNorm1D")


class ModelSpecError(ValueError):
    """A model description (a spec list, a JSON model file or a preset name) is malformed;
    the message says which layer and what to change. Shape mismatches are plain ValueErrors."""


class Sequential:
    """Sequential(layers, input_shape=None, seed=0).

    ``layers``: cnnx layers (instances of ``cnnx.layers.Layer``), run in order.
    ``input_shape`` (one example as a tuple: ``(1, 28, 28)`` for images, ``(784,)`` for
    features; a bare int is refused) enables shape inference: every layer's output shape is
    computed at construction, so a mismatch is reported before any data flows; ``forward``
    then refuses a batch of examples of another shape (channels-last images, say).
    Parameters are (re)drawn from ``seed``, which wins over the layers' own ``seed=`` (one
    number reproduces the whole model, dropout masks included): with the scheme a layer was
    built with (``init="xavier"``), else He init for layers feeding a ReLU and Xavier otherwise.
    """

    def __init__(self, layers, input_shape=None, seed: int = 0):
        if isinstance(layers, Layer) or not hasattr(layers, "__iter__"):
            raise TypeError(f"Sequential: takes a list of layers, got a {type(layers).__name__}; "
                            f"write Sequential([layer1, layer2, ...])")
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential: needs at least one layer")
        for index, layer in enumerate(self.layers):
            if isinstance(layer, type) and issubclass(layer, Layer):  # ReLU for ReLU()
                raise TypeError(f"Sequential: item {index} is the class {layer.__name__}, not a "
                                f"layer; call it: {layer.__name__}(...)")
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {index} is a {type(layer).__name__}, not a cnnx "
                                f"layer; use the layers of cnnx.layers (subclasses of Layer)")
        dtypes = {layer.dtype for layer in self.layers}
        if len(dtypes) != 1:
            raise ValueError(f"Sequential: all layers must share one dtype, got {sorted(dtypes)}")
        self.dtype = dtypes.pop()
        self.input_shape = _example_shape(input_shape) if input_shape is not None else None
        if not (is_int(seed) and seed >= 0):
            raise ValueError(f"Sequential: seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self._outputs_per_example: dict = {}  # input shape -> count (outputs_per_example)
        if self.input_shape is not None:
            self.shapes()
        self.reset_parameters(self.seed)

    # ---------------------------------------------------------------- construction
    def reset_parameters(self, seed: int) -> None:
        rng = make_rng(seed)
        for index, layer in enumerate(self.layers):
            layer.reset_parameters(rng, self._init_for(index))

    def _init_for(self, index: int) -> str:
        layer = self.layers[index]
        if getattr(layer, "init", None) is not None:  # the layer's own init= wins over position
            return layer.init
        if getattr(layer, "activation", None) == "relu":
            return "he"
        for following in self.layers[index + 1:]:
            if isinstance(following, ReLU):
                return "he"
            if following.name not in _PASS_THROUGH:
                break
            if getattr(following, "activation", None) == "relu":  # BatchNorm with fused ReLU
                return "he"
        return "xavier"

    def outputs_per_example(self, input_shape) -> int:
        """How many numbers the layers output, in all, for one example of ``input_shape``: the
        size of a forward pass, by which a backend may arrange its work (Backend.work_scope).
        0 when the shape does not fit the model (the forward pass then says why)."""
        key = tuple(int(s) for s in input_shape)
        count = self._outputs_per_example.get(key)
        if count is None:
            try:
                count = sum(math.prod(shape) for shape in self.shapes(key))
            except ValueError:
                count = 0
            self._outputs_per_example[key] = count
        return count

    def shapes(self, input_shape=None) -> list[tuple]:
        """Output shape (per example) after each layer; raises ValueError at the first mismatch."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("Sequential: no input shape given (pass input_shape=(C, H, W))")
        out = []
        for index, layer in enumerate(self.layers):
            try:
                shape = tuple(int(s) for s in layer.output_shape(shape))
            except ValueError as exc:
                raise ValueError(f"layer {index} ({exc})") from None
            out.append(shape)
        return out

    # ---------------------------------------------------------------- running
    @property
    def backend(self):
        return self.layers[0].backend

    def forward(self, x):
        if self.input_shape is not None and hasattr(x, "shape"):  # else the first layer says
            check_example_shape(self, x, "Sequential.forward")
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dy, input_grad: bool = True):
        """Back-propagate dL/d(output) through every layer (seed 001 eqs. 18-21); fills grads.

        Returns dL/d(input); with ``input_grad=False`` returns None and lets the first layer
        skip computing it (training never needs the gradient of the images).
        """
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
            layer.check_grads()
        first = self.layers[0]
        if not input_grad:
            first.backward_params(dy)
            first.check_grads()
            return None
        dx = first.backward(dy)
        first.check_grads()
        return dx

    def train(self) -> "Sequential":
        for layer in self.layers:
            layer.train()
        return self

    def eval(self) -> "Sequential":
        for layer in self.layers:
            layer.eval()
        return self

    def to(self, device) -> "Sequential":
        backend = get_backend(device)
        for layer in self.layers:
            layer.to(backend)
        return self

    # ---------------------------------------------------------------- parameters and state
    def parameters(self):
        """``[(name, layer, key)]`` for every parameter; the array is ``layer.params[key]``."""
        return [(f"{i}.{key}", layer, key)
                for i, layer in enumerate(self.layers) for key in layer.params]

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers)

    def _state_arrays(self):
        """``[(name, layer, group, key)]`` for every parameter and buffer."""
        return [(f"{i}.{key}", layer, group, key)
                for i, layer in enumerate(self.layers)
                for group in ("params", "buffers") for key in getattr(layer, group)]

    def state_dict(self) -> dict:
        """``{"0.W": NumPy array, ..., "1.running_mean": ...}``: host copies of parameters and
        buffers, loadable without CuPy."""
        return {name: self.backend.to_numpy(getattr(layer, group)[key]).copy()
                for name, layer, group, key in self._state_arrays()}

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state`` (``{name: array}``, as ``state_dict()`` returns it, or a checkpoint's
        ``model_state``) into the parameters and buffers; ValueError naming what does not fit."""
        if not isinstance(state, dict):
            hint = ("; pass its model_state: model.load_state_dict(ck.model_state)"
                    if hasattr(state, "model_state") else "")
            raise TypeError(f"load_state_dict: expected a dict {{name: array}} as state_dict() "
                            f"returns, got a {type(state).__name__}{hint}")
        entries = self._state_arrays()
        expected = {name: getattr(layer, group)[key] for name, layer, group, key in entries}
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(f"state does not fit this model: missing {missing}, unexpected {extra}")
        for name, layer, group, key in entries:
            value = state[name]
            if not hasattr(value, "shape"):
                raise ValueError(f"state does not fit this model: {name} is a "
                                 f"{type(value).__name__}, not an array")
            if tuple(value.shape) != tuple(expected[name].shape):
                raise ValueError(f"state does not fit this model: {name} has shape "
                                 f"{tuple(value.shape)}, the model needs {tuple(expected[name].shape)}")
            arrays = dict(getattr(layer, group))
            # a copy: two models loaded from one state must not train each other's weights
            arrays[key] = layer.backend.asarray(value, dtype=expected[name].dtype, copy=True)
            setattr(layer, group, arrays)

    def spec(self) -> list[dict]:
        """JSON-able description of the layer stack (``from_spec`` rebuilds it)."""
        return [layer.config() for layer in self.layers]

    # ---------------------------------------------------------------- reporting
    def layer_table(self) -> list[dict]:
        shapes = self.shapes() if self.input_shape else [None] * len(self.layers)
        return [{"index": i, "layer": layer.describe(), "output_shape": shape,
                 "parameters": layer.num_parameters()}
                for i, (layer, shape) in enumerate(zip(self.layers, shapes))]

    def summary(self) -> str:
        """Per layer: output shape (seed 000 §1.4.6) and parameter count, then the total."""
        rows = [("#", "layer", "output shape", "parameters")]
        if self.input_shape:
            rows.append(("", "input", _fmt_shape(self.input_shape), ""))
        for row in self.layer_table():
            rows.append((str(row["index"]), row["layer"], _fmt_shape(row["output_shape"]),
                         f"{row['parameters']:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(cell.ljust(w) if c < 3 else cell.rjust(w)
                           for c, (cell, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total parameters: {self.num_parameters():,}  (dtype {self.dtype})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def check_example_shape(model, x, name: str) -> None:
    """ValueError when the examples of the batch ``x`` are not shaped as ``model.input_shape``
    (images in NHWC for an NCHW model, one example without its batch axis), which a model
    that starts by flattening would otherwise take without a word. ``name`` says whose."""
    expected, got = model.input_shape, tuple(x.shape[1:])
    if expected is None or got == expected:
        return
    fix = f"a batch of them: (N, {', '.join(map(str, expected))})"
    if len(expected) == 3 and got == expected[1:] + expected[:1]:
        fix = "the images are channels-last: convert them with x.transpose(0, 3, 1, 2)"
    elif len(expected) == 3 and expected[0] == 1 and got == expected[1:]:
        fix = "the images have no channel axis: add it with x[:, None]"
    raise ValueError(f"{name}: examples have shape {got}, the model expects {expected} ({fix})")


def _example_shape(input_shape) -> tuple:
    """``input_shape`` as a tuple of Python ints, refusing what is not one example's shape."""
    if not (isinstance(input_shape, (tuple, list))
            and all(is_int(size) and size > 0 for size in input_shape)):
        raise ValueError(f"Sequential: input_shape must be one example's shape as a tuple of "
                         f"positive ints, such as (1, 28, 28) or (784,), got {input_shape!r}")
    return tuple(int(size) for size in input_shape)


def _fmt_shape(shape) -> str:
    return "?" if shape is None else "(" + ", ".join(str(s) for s in shape) + ")"


def from_spec(spec, input_shape=None, seed: int = 0, dtype: str = "float32") -> Sequential:
    """Rebuild a Sequential from ``model.spec()`` (a list of layer configs)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not isinstance(spec, (list, tuple)) or not spec:
        got = repr(spec) if len(repr(spec)) <= 60 else f"a {type(spec).__name__}"
        if isinstance(spec, dict) and "layers" in spec:  # a model file's object, as loaded
            got = "a model file's object: pass its 'layers', and its 'input_shape' as input_shape="
        raise ModelSpecError(f"a model spec must be a non-empty list of layer objects, got {got}")
    layers = []
    for i, layer in enumerate(spec):
        try:
            layers.append(from_config(layer, dtype=dtype))
        except ValueError as exc:
            raise ModelSpecError(f"layer {i}: {exc}") from None
    return Sequential(layers, input_shape=input_shape, seed=seed)

