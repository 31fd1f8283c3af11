"""Whole models: gradchecks of the seeds' networks, training, state, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx import Sequential, config, evaluate, fit, gradcheck, layers, losses, models, optim, train
from cnnx.backends import make_rng
from cnnx.backends.cupy_backend import CupyBackend
from cnnx.models import seed002_net
from cnnx.train import train_step


def _random_biases(model, rng):
    for _, layer, key in model.parameters():
        if key == "b":
            layer.params["b"] = model.backend.asarray(rng.uniform(0.1, 0.5, layer.params["b"].shape))


def test_seed002_network_gradcheck(backend):
    # conv–relu–avgpool–conv–relu–maxpool–flatten–dense, sigmoid + binary cross-entropy
    stack, shape = seed002_net("float64", in_shape=(2, 10, 10), outputs=1)
    model = Sequential(stack, input_shape=shape, seed=3).to(backend)
    rng = np.random.default_rng(0)
    _random_biases(model, rng)
    x = backend.asarray(rng.standard_normal((3, 2, 10, 10)))
    y = backend.asarray(rng.integers(0, 2, (3, 1)).astype(np.float64))
    errors = gradcheck(model, x, y, loss=losses.BinaryCrossEntropy())
    assert max(errors.values()) <= 1e-7, errors


def test_seed001_network_gradcheck(backend):
    # (conv–relu–maxpool) x2, dense–relu, dense–softmax cross-entropy (seed 001 eq. 23)
    model = Sequential([
        layers.Conv2D(1, 2, 3, dtype="float64"), layers.ReLU(dtype="float64"), layers.MaxPool2D(2, dtype="float64"),
        layers.Conv2D(2, 3, 3, dtype="float64"), layers.ReLU(dtype="float64"), layers.MaxPool2D(2, dtype="float64"),
        layers.Flatten(dtype="float64"), layers.Dense(3, 5, dtype="float64"), layers.ReLU(dtype="float64"),
        layers.Dense(5, 4, dtype="float64"),
    ], input_shape=(1, 12, 12), seed=1).to(backend)
    rng = np.random.default_rng(1)
    _random_biases(model, rng)  # zero biases put all-dead units exactly on ReLU's kink
    x = backend.asarray(rng.standard_normal((4, 1, 12, 12)))
    errors = gradcheck(model, x, backend.asarray(rng.integers(0, 4, 4)), loss=losses.SoftmaxCrossEntropy())
    assert max(errors.values()) <= 1e-7, errors


def synthetic(n, seed=0):
    """Ten classes, each a bright bar at its own place on a noisy 28x28 image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.random((n, 1, 28, 28), dtype=np.float32) * 0.3
    for i, label in enumerate(y):
        x[i, 0, 2 + 2 * label:4 + 2 * label, 4:24] += 0.7
    return x, y


def test_training_the_reference_cnn_learns(backend):
    x, y = synthetic(512)
    val = synthetic(128, seed=1)
    model = models.build("reference", seed=0).to(backend)
    loss = losses.SoftmaxCrossEntropy()
    before = evaluate(model, loss, *val)
    history = fit(model, loss, optim.SGD(model, lr=0.05, momentum=0.9), x, y, epochs=3,
                  batch_size=32, validation=val, seed=0)
    assert len(history) == 3
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < 0.5 * before["loss"]
    assert before["accuracy"] < 0.5 < 0.9 < history[-1]["val_accuracy"]


def test_training_steps_move_nothing_between_host_and_device(backend, monkeypatch):
    """Issue 3: inside a training step nothing crosses between host and device (the loss stays
    a device scalar until someone logs it). Counted at the backend's transfer methods: an epoch
    of 6 steps must make exactly as many transfers as one of 2 (the per-epoch ones: the data,
    the shuffle order, the epoch's totals). On a GPU the step itself also runs under CuPy's
    synchronization guard."""
    calls = {"to_numpy": 0, "scalar": 0, "asarray from host": 0}

    def counted(name, method, only_host=False):
        def wrapper(a, *args, **kwargs):
            if not only_host or not backend.owns(a):
                calls[name] += 1
            return method(a, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(backend, "to_numpy", counted("to_numpy", backend.to_numpy))
    monkeypatch.setattr(backend, "scalar", counted("scalar", backend.scalar))
    monkeypatch.setattr(backend, "asarray", counted("asarray from host", backend.asarray, True))
    per_epoch = []
    for steps in (2, 6):
        x, y = synthetic(16 * steps)
        model = models.build("reference", seed=0).to(backend)
        optimizer = optim.SGD(model, lr=0.05, momentum=0.9)
        for key in calls:
            calls[key] = 0
        fit(model, losses.SoftmaxCrossEntropy(), optimizer, x, y, epochs=1, batch_size=16)
        per_epoch.append(dict(calls))
    assert per_epoch[0] == per_epoch[1], per_epoch
    guard = getattr(__import__("cupyx"), "allow_synchronize", None) if backend.xp.__name__ == "cupy" else None
    if guard is not None:  # deprecated since CuPy 10: used while CuPy still has it
        xb, yb = backend.asarray(x[:16]), backend.asarray(y[:16])
        # raises cupyx.DeviceSynchronized when the host waits on the GPU; the per-call finite
        # checks (which do wait) are off, as fit turns them off for its steps
        with guard(False), config.finite_checks(False):
            train_step(model, losses.SoftmaxCrossEntropy(), optimizer, xb, yb)


#: the kernels of one training step of the reference CNN on the CUDA backend, in order,
#: before the optimizer's (one launch per parameter)
REFERENCE_STEP_KERNELS = (
    ["im2col", "bias_activation", "max_pool_forward"] * 2  # conv-ReLU-pool twice
    + ["bias_activation"] * 2  # two dense layers
    + ["softmax_cross_entropy", "relu_backward",  # dense 1568->128's ReLU
       "max_pool_backward_tiled", "relu_backward", "col2im",  # pool2, conv2
       "max_pool_backward_tiled", "relu_backward"]  # pool1, conv1 (no dL/dX)
)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam_update"])
def test_a_cuda_training_step_runs_our_kernels(backend, monkeypatch, optimizer):
    """On the CUDA backend every hot path of the reference CNN's step is one of our kernels, in
    this order: a silent fallback to the pure-xp path (a dtype or layout an op refuses), or
    work a first layer does not need (its dL/dX), fails here."""
    if not isinstance(backend, CupyBackend) or not backend.kernels_enabled:
        pytest.skip(f"{backend.name} runs no CUDA kernels (cuda-shim runs them without a GPU)")
    launched = []
    run = backend._run
    monkeypatch.setattr(backend, "_run", lambda kernel, *args: (launched.append(kernel),
                                                                 run(kernel, *args)))
    model = models.build("reference", seed=0).to(backend)
    x, y = synthetic(16)
    update = (optim.SGD(model, lr=0.05, momentum=0.9) if optimizer == "sgd_momentum" else
              optim.Adam(model, weight_decay=1e-4))
    train_step(model, losses.SoftmaxCrossEntropy(), update, backend.asarray(x), backend.asarray(y))
    assert launched == REFERENCE_STEP_KERNELS + [optimizer] * 8  # one launch per parameter


def test_a_loss_computes_on_the_model_backend_not_on_the_array_type(shim_library):
    """The CUDA backend with kernels on and the one with kernels off both hold CuPy arrays, as
    the CPU backend and the shim both hold NumPy arrays: only the model knows which is meant.
    (benchmarks/gpu.py's kernels-off step once ran its loss through the kernels backend.)"""
    from shim.shim_backend import ShimBackend

    shim = ShimBackend(shim_library)
    model = models.build("reference", seed=0).to(shim)
    loss = losses.SoftmaxCrossEntropy()
    x, y = synthetic(16)
    train_step(model, loss, optim.SGD(model, lr=0.05), shim.asarray(x), shim.asarray(y))
    assert shim.launches.count("softmax_cross_entropy") == 1
    evaluate(model, losses.SoftmaxCrossEntropy(), x, y)  # checks the labels, then one batch
    assert shim.launches.count("softmax_cross_entropy") == 3
    with pytest.raises(ValueError, match="predictions are a builtins.list, but the loss is on cpu"):
        losses.MSE().to("cpu").forward([[1.0]], [[0.0]])


def test_training_is_deterministic_under_a_seed():
    x, y = synthetic(96)
    runs = []
    for _ in range(2):
        model = models.build("reference", seed=5)
        fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.05), x, y, epochs=1,
            batch_size=32, seed=7)
        runs.append(model.state_dict())
    for key in runs[0]:
        assert runs[0][key].tobytes() == runs[1][key].tobytes()


def test_drop_last_skips_the_incomplete_batch():
    from cnnx.train import batch_slices
    assert batch_slices(10, 4, drop_last=False) == [(0, 4), (4, 8), (8, 10)]
    assert batch_slices(10, 4, drop_last=True) == [(0, 4), (4, 8)]


def test_state_dict_round_trip_and_mismatch(backend):
    a = models.build("reference", seed=1).to(backend)
    b = models.build("reference", seed=2).to(backend)
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)
    with pytest.raises(ValueError, match="missing"):
        models.build("lenet5").load_state_dict(a.state_dict())


def test_load_state_dict_names_what_is_not_a_state(tmp_path):
    """Before: TypeError: 'Checkpoint' object is not iterable; a list: every name 'missing';
    a value that is a list: AttributeError: 'list' object has no attribute 'shape'."""
    from cnnx import checkpoint
    model = models.build("lenet5")
    ck = checkpoint.load(checkpoint.save(tmp_path / "c.npz", model))
    with pytest.raises(TypeError, match=r"^load_state_dict: expected a dict \{name: array\} as "
                                        r"state_dict\(\) returns, got a Checkpoint; pass its "
                                        r"model_state: model.load_state_dict\(ck.model_state\)$"):
        model.load_state_dict(ck)
    with pytest.raises(TypeError, match=r"got a list$"):
        model.load_state_dict(list(ck.model_state.values()))
    as_lists = {name: value.tolist() for name, value in ck.model_state.items()}
    with pytest.raises(ValueError, match=r"^state does not fit this model: 0.W is a list, not an array$"):
        model.load_state_dict(as_lists)
    model.load_state_dict(ck.model_state)


def test_spec_rebuilds_the_same_model():
    from cnnx import from_spec
    a = models.build("lenet5", seed=4)
    b = from_spec(a.spec(), input_shape=(1, 28, 28), seed=4)
    assert b.spec() == a.spec() and b.summary() == a.summary()
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)


def test_he_init_feeds_relu_and_xavier_otherwise():
    model = Sequential([layers.Dense(1000, 1000), layers.ReLU(), layers.Dense(1000, 10)], seed=0)
    first, last = model.layers[0].params["W"], model.layers[2].params["W"]
    assert np.std(first) == pytest.approx(np.sqrt(2 / 1000), rel=0.02)
    assert np.std(last) == pytest.approx(np.sqrt(2 / 1010), rel=0.05)


@pytest.mark.parametrize("make", [lambda init: layers.Dense(100, 100, init=init, seed=9),
                                  lambda init: layers.Conv2D(4, 4, 3, padding=1, init=init, seed=9)])
@pytest.mark.parametrize("init, follower", [("xavier", layers.ReLU), ("he", layers.Identity)])
def test_sequential_keeps_a_layers_explicit_init(make, init, follower):
    """Redrawn from the Sequential's seed (3, not the layer's 9) with the layer's own scheme,
    not the one its position calls for (He before a ReLU, Xavier otherwise)."""
    model = Sequential([make(init), follower()], seed=3)
    expected = make(None)
    expected.reset_parameters(make_rng(3), init)
    np.testing.assert_array_equal(model.layers[0].params["W"], expected.params["W"])


def test_from_spec_names_the_bad_layer():
    """A malformed spec raises ModelSpecError naming the layer; a well-formed one whose shapes
    do not fit its input raises a plain ValueError."""
    from cnnx import ModelSpecError, from_spec
    good = {"type": "Flatten"}
    with pytest.raises(ModelSpecError, match=r"^layer 1: Dense: missing argument\(s\) out_features$"):
        from_spec([good, {"type": "Dense", "in_features": 3}])
    with pytest.raises(ModelSpecError, match=r"^layer 0: Flatten: unknown argument\(s\) size; it takes no arguments$"):
        from_spec([{"type": "Flatten", "size": 3}])
    with pytest.raises(ValueError) as info:
        from_spec([good, {"type": "Dense", "in_features": 3, "out_features": 2}], input_shape=(1, 2, 2))
    assert not isinstance(info.value, ModelSpecError)


def test_an_empty_batch_gives_an_empty_batch_of_outputs(backend):
    """No examples in, none out, shaped as the model's output (PyTorch's layers do the same):
    Flatten's reshape(0, -1) could not infer the width, and predict() concatenated nothing."""
    model = Sequential([layers.Conv2D(2, 3, 3, padding=1, activation="relu"), layers.BatchNorm2D(3),
                        layers.MaxPool2D(2), layers.AvgPool2D(2), layers.Dropout(0.5), layers.Flatten(),
                        layers.Dense(12, 4), layers.Softmax()], input_shape=(2, 8, 8)).to(backend)
    empty = np.zeros((0, 2, 8, 8), np.float32)
    out = train.predict(model, empty)
    assert backend.owns(out) and out.shape == (0, 4) and out.dtype == np.float32
    assert model.eval().forward(backend.asarray(empty)).shape == (0, 4)
    full = backend.to_numpy(train.predict(model, np.ones((3, 2, 8, 8)), batch_size=2))
    assert full.shape == (3, 4) and np.allclose(full.sum(axis=1), 1)
    with pytest.raises(ValueError, match="^batch_size must be a positive integer, got 0$"):
        train.predict(model, empty, batch_size=0)
