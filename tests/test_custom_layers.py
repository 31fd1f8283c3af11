"""A layer written by a user, outside cnnx: a Layer subclass works wherever a built-in layer
does (summary, fit, predict, evaluate, gradcheck, state dicts, devices, dtypes), a registered
one also in from_spec, checkpoints and model files, and the mistakes such a layer can make
are reported in one line naming it (docs/layers.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnnx
from cnnx import checkpoint, layers, losses, optim
from cnnx.cli import main as cli_main


# ----------------------------------------------------------------------------- two user layers
class LeakyReLU(layers.Layer):
    """y = x where x > 0, else slope · x."""

    config_keys = ("slope",)

    def __init__(self, slope=0.01, dtype="float32"):
        super().__init__(dtype)
        self.slope = slope
        self._x = None

    def forward(self, x):
        self.check_input(x)
        self._x = x
        return self._record_output(self.xp.where(x > 0, x, self.slope * x))

    def backward(self, dy):
        """dL/dx = dL/dy ⊙ (1 where x > 0, else slope)."""
        self.check_grad(dy)
        return self.xp.where(self._x > 0, dy, self.slope * dy)


class ChannelScale(layers.Layer):
    """y[n, c, ...] = g[c] · x[n, c, ...] + b[c]  (NCHW images or (N, features))."""

    config_keys = ("channels",)

    def __init__(self, channels, dtype="float32"):
        super().__init__(dtype)
        self.channels = channels
        self._x = None
        self.reset_parameters(None)

    def reset_parameters(self, rng, init="he"):
        self.params = {"g": self.xp.ones(self.channels, dtype=self.dtype),
                       "b": self._zeros((self.channels,))}
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}

    def _per_channel(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x):
        self.check_input(x, channels=self.channels)
        self._x = x
        g, b = (self._per_channel(self.params[k], x.ndim) for k in ("g", "b"))
        return self._record_output(g * x + b)

    def backward(self, dy):
        """dL/dg[c] = Σ dL/dy ⊙ x and dL/db[c] = Σ dL/dy over all but the channel axis;
        dL/dx = dL/dy ⊙ g[c]."""
        self.check_grad(dy)
        axes = (0,) + tuple(range(2, dy.ndim))
        self.grads["g"] = (dy * self._x).sum(axis=axes)
        self.grads["b"] = dy.sum(axis=axes)
        return dy * self._per_channel(self.params["g"], dy.ndim)


@pytest.fixture
def registered():
    """LeakyReLU and ChannelScale registered for the test only (LAYER_TYPES as it was after)."""
    before = dict(layers.LAYER_TYPES)
    layers.register(LeakyReLU)
    layers.register(ChannelScale)
    yield
    layers.LAYER_TYPES.clear()
    layers.LAYER_TYPES.update(before)


def small_model(dtype="float32", seed=0):
    return cnnx.Sequential([
        layers.Conv2D(1, 4, 3, padding=1, dtype=dtype),
        ChannelScale(4, dtype=dtype),
        LeakyReLU(0.1, dtype=dtype),
        layers.MaxPool2D(2, dtype=dtype),
        layers.Flatten(dtype=dtype),
        layers.Dense(4 * 4 * 4, 3, dtype=dtype),
    ], input_shape=(1, 8, 8), seed=seed)


def small_data(n=48):
    rng = np.random.default_rng(3)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    return x, y + (x[:, 0, 0, 0] > 0.8)   # three classes


# ----------------------------------------------------------------------------- what works
def test_summary_and_shapes_show_user_layers():
    model = small_model()
    assert model.shapes()[:3] == [(4, 8, 8)] * 3
    table = model.summary()
    assert "ChannelScale(4)" in table and "LeakyReLU(0.1)" in table
    assert "total parameters: 243" in table   # 40 conv + 8 scale + 195 dense


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_with_user_layers_trains_predicts_and_evaluates(backend, dtype):
    model = small_model(dtype).to(backend)
    x, y = small_data()
    before = model.state_dict()
    loss = losses.SoftmaxCrossEntropy()
    history = cnnx.fit(model, loss, optim.Adam(model, lr=0.01), x, y, epochs=2, batch_size=16)
    assert all(np.isfinite(h["train_loss"]) for h in history)
    after = model.state_dict()
    assert not np.array_equal(before["1.g"], after["1.g"])   # the user's parameters train
    assert after["1.g"].dtype == dtype
    out = cnnx.predict(model, x[:5])
    assert out.shape == (5, 3) and out.dtype == dtype
    assert set(cnnx.evaluate(model, loss, x, y)) >= {"loss", "accuracy"}


def test_user_layers_move_between_devices_and_load_state(backend):
    model = small_model(seed=1).to(backend)
    state = model.state_dict()
    assert set(state) == {"0.W", "0.b", "1.g", "1.b", "5.W", "5.b"}
    other = small_model(seed=2).to("cpu").to(backend)
    other.load_state_dict(state)
    x = small_data(4)[0]
    assert np.array_equal(backend.to_numpy(cnnx.predict(model, x)),
                          backend.to_numpy(cnnx.predict(other, x)))


def test_gradcheck_passes_user_layers_alone_and_in_a_model(backend):
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((2, 3, 4, 4)) - 0.5)
    leaky = LeakyReLU(0.2, dtype="float64").to(backend)
    scale = ChannelScale(3, dtype="float64").to(backend)
    assert max(cnnx.gradcheck(leaky, x).values()) < 1e-7
    assert set(cnnx.gradcheck(scale, x)) == {"input", "g", "b"}
    model = small_model("float64").to(backend)
    errors = cnnx.gradcheck(model, backend.asarray(rng.random((2, 1, 8, 8))),
                            backend.asarray(np.array([0, 2])), loss=losses.SoftmaxCrossEntropy())
    assert {"1.g", "1.b"} <= set(errors) and max(errors.values()) < 1e-6


# ----------------------------------------------------------------------------- registration
def test_a_registered_layer_rebuilds_from_spec_and_checkpoints(registered, tmp_path):
    model = small_model(seed=4)
    assert model.spec()[2] == {"type": "LeakyReLU", "slope": 0.1}
    rebuilt = cnnx.from_spec(json.loads(json.dumps(model.spec())), input_shape=(1, 8, 8))
    assert rebuilt.spec() == model.spec()
    checkpoint.save(tmp_path / "m.npz", model)
    same = checkpoint.load(tmp_path / "m.npz").build_model()
    x = small_data(4)[0]
    assert np.array_equal(cnnx.predict(model, x), cnnx.predict(same, x))
    assert isinstance(same.layers[1], ChannelScale) and same.layers[2].slope == 0.1


def test_an_unregistered_layer_type_says_how_to_register_it(tmp_path):
    model = small_model()
    checkpoint.save(tmp_path / "m.npz", model)   # saving needs no registration
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"unknown layer type 'ChannelScale'; known: .*; a layer of your own "
                             r"must be registered first, in Python: "
                             r"cnnx\.layers\.register\(ChannelScale\)\)$"):
        checkpoint.load(tmp_path / "m.npz").build_model()


def test_register_is_a_decorator_and_replaces_a_class_of_the_same_name(registered):
    @layers.register
    class LeakyReLU(layers.Layer):   # noqa: F811 (a notebook cell run again)
        config_keys = ("slope",)

        def __init__(self, slope=0.5, dtype="float32"):
            super().__init__(dtype)
            self.slope = slope

    assert isinstance(LeakyReLU, type)
    assert isinstance(layers.from_config({"type": "LeakyReLU"}), LeakyReLU)
    assert layers.register(layers.Dense) is layers.Dense   # a built-in, itself: nothing changes


def _layer_class(name, init_source, config_keys=()):
    namespace = {"layers": layers}
    exec(f"class {name}(layers.Layer):\n    config_keys = {config_keys!r}\n"
         f"    def __init__{init_source}:\n        super().__init__()\n", namespace)
    return namespace[name]


@pytest.mark.parametrize("cls, error, message", [
    (int, TypeError, "register: expected a subclass of cnnx.layers.Layer, got <class 'int'>"),
    (layers.Layer, TypeError, "register: expected a subclass of cnnx.layers.Layer"),
    (_layer_class("Dense", "(self, dtype='float32')"), ValueError,
     "register: Dense is a built-in layer's name; give yours another"),
    (_layer_class("NoDtype", "(self, slope=0.1)", ("slope",)), ValueError,
     "register: NoDtype.__init__ must take dtype='float32' and pass it to Layer.__init__"),
    (_layer_class("Unsaved", "(self, width, slope=0.1, seed=0, dtype='float32')", ("width",)),
     ValueError, "register: Unsaved.config_keys lacks constructor argument(s) slope, so a "
                 "rebuilt layer would take the defaults; list them: config_keys = "
                 "('width', 'slope')"),
    (_layer_class("Extra", "(self, dtype='float32')", ("width",)), ValueError,
     "register: Extra.config_keys names width, which Extra.__init__ does not take"),
])
def test_register_refuses_what_could_not_be_rebuilt(registered, cls, error, message):
    with pytest.raises(error) as info:
        layers.register(cls)
    assert str(info.value).startswith(message)
    assert cls not in layers.LAYER_TYPES.values()


def test_a_script_that_registers_its_layers_runs_the_command_line(registered, tmp_path,
                                                                  monkeypatch, capsys):
    """The documented way to the CLI: a launcher script that registers, then calls
    ``cnnx.cli.main()`` (which reads sys.argv)."""
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"input_shape": [1, 8, 8], "layers": small_model().spec()}))
    monkeypatch.setattr("sys.argv", ["mycnnx.py", "summary", str(path)])
    with pytest.raises(SystemExit) as info:
        cli_main()
    assert info.value.code == 0
    assert "ChannelScale(4)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- mistakes
class _NoGrads(ChannelScale):
    def backward(self, dy):
        self.check_grad(dy)
        self.grads = {"b": dy.sum(axis=(0, 2, 3))}   # a new dict, without dL/dg
        return dy * self._per_channel(self.params["g"], dy.ndim)


class _ScalarGrad(ChannelScale):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["b"] = dy.sum()   # broadcast over every channel by the update
        return dx


class _KeptAxes(ChannelScale):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["b"] = dy.sum(axis=(0, 2, 3), keepdims=True)
        return dx


class _Float64Grad(ChannelScale):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["b"] = self.grads["b"].astype("float64")
        return dx


@pytest.mark.parametrize("cls, message", [
    (_NoGrads, r"^_NoGrads: backward left no gradient for parameter 'g'; "
               r"set self\.grads\['g'\] = dL/dg in backward$"),
    (_ScalarGrad, r"^_ScalarGrad: grads\['b'\] has shape \(\) and dtype float32, but parameter "
                  r"'b' has shape \(3,\) and dtype float32; backward must set dL/db shaped"),
    (_KeptAxes, r"^_KeptAxes: grads\['b'\] has shape \(1, 3, 1, 1\) and dtype float32, but"),
    (_Float64Grad, r"^_Float64Grad: grads\['b'\] has shape \(3,\) and dtype float64, but "
                   r"parameter 'b' has shape \(3,\) and dtype float32"),
])
def test_wrong_or_missing_gradients_are_named_in_training(backend, cls, message):
    model = cnnx.Sequential([cls(3), layers.Flatten(), layers.Dense(48, 3)],
                            input_shape=(3, 4, 4)).to(backend)
    x = np.random.default_rng(0).random((8, 3, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        cnnx.fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1), x,
                 np.arange(8) % 3, epochs=1, batch_size=8)


@pytest.mark.parametrize("cls", [_NoGrads, _ScalarGrad, _KeptAxes])
def test_gradcheck_of_one_layer_names_wrong_or_missing_gradients(cls):
    x = np.random.default_rng(0).random((2, 3, 4, 4))
    with pytest.raises(ValueError, match=f"^{cls.__name__}: (backward left no|grads)"):
        cnnx.gradcheck(cls(3, dtype="float64"), x)


def test_an_output_in_another_dtype_is_the_layer_that_made_it(backend):
    class Ones(LeakyReLU):
        def forward(self, x):
            self.check_input(x)
            return self._record_output(x * self.xp.ones(x.shape))   # float64 by default

    model = cnnx.Sequential([Ones(), layers.Flatten()]).to(backend)
    x = backend.asarray(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^Ones: forward returned a float64 output, but the "
                                         r"layer is float32; check its input"):
        model.forward(x)


def test_a_forward_without_record_output_is_named_in_backward():
    class Unrecorded(LeakyReLU):
        def forward(self, x):
            self.check_input(x)
            return x

    layer = Unrecorded()
    y = layer.forward(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^Unrecorded: backward called before forward \(or "
                                         r"forward did not return self\._record_output\(y\)\)$"):
        layer.backward(y)


class _EveryOther(layers.Layer):
    """Keeps every other row and column, but forgets to say so in output_shape."""

    def forward(self, x):
        self.check_input(x, rank=4)
        self._shape = x.shape
        return self._record_output(x[:, :, ::2, ::2])

    def backward(self, dy):
        self.check_grad(dy)
        dx = self.xp.zeros(self._shape, dtype=self.dtype)
        dx[:, :, ::2, ::2] = dy
        return dx


def test_gradcheck_names_an_output_shape_that_forward_does_not_return():
    x = np.random.default_rng(0).random((2, 3, 4, 4))
    message = (r"^_EveryOther: forward returned examples of shape \(3, 2, 2\), but "
               r"output_shape\(\(3, 4, 4\)\) says \(3, 4, 4\); override output_shape")
    with pytest.raises(ValueError, match=message):
        cnnx.gradcheck(_EveryOther(dtype="float64"), x)
    model = cnnx.Sequential([layers.Identity(dtype="float64"), _EveryOther(dtype="float64"),
                             layers.Flatten(dtype="float64")])
    with pytest.raises(ValueError, match=message):
        cnnx.gradcheck(model, x)
