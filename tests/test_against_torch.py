"""Every layer but Dropout (whose masks are its own), every loss and the optimizers against
PyTorch in float64 (relative error ≤ 1e-10), through the public contract only: NCHW,
W (out, in, kh, kw) / (out, in), mean-reduced losses. Convolution and pooling also over
hypothesis-drawn geometries, on every backend (the CUDA kernels included).
Runs where torch is installed (``pip install torch`` — a benchmark/test-only dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

from cnnx import layers, losses  # noqa: E402


def _close(ours, theirs):
    theirs = theirs.detach().numpy()
    scale = max(np.abs(theirs).max(), 1e-300)
    assert np.abs(np.asarray(ours) - theirs).max() / scale <= 1e-10


def _compare_layer(backend, layer, x, params, torch_layer):
    """Give ``layer`` the parameters ``params`` (NumPy), run its forward and backward on
    ``backend``, and compare the output, dL/dx and every parameter's gradient with PyTorch's,
    where ``torch_layer(tx, tparams)`` is the same layer written with torch functions."""
    layer.params = {k: np.array(v) for k, v in params.items()}
    layer.to(backend)
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx = backend.to_numpy(layer.backward(backend.asarray(dy)))
    tx = torch.tensor(x, requires_grad=True)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ty = torch_layer(tx, tparams)
    ty.backward(torch.tensor(dy))
    _close(y, ty)
    _close(dx, tx.grad)
    for key, t in tparams.items():
        _close(backend.to_numpy(layer.grads[key]), t.grad)


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), ((2, 3), (2, 1), (1, 0)), (4, 3, 2), (1, 1, 0)])
def test_conv2d(backend, k, s, p):
    rng = np.random.default_rng(0)
    conv = layers.Conv2D(3, 4, k, stride=s, padding=p, dtype="float64")
    params = {"W": conv.params["W"], "b": rng.standard_normal(4)}
    _compare_layer(backend, conv, rng.standard_normal((2, 3, 9, 8)), params,
                   lambda tx, t: F.conv2d(tx, t["W"], t["b"], stride=s, padding=p))


def _pool_against_torch(backend, cls, fn, x, k, s, p):
    _compare_layer(backend, cls(k, stride=s, padding=p, dtype="float64"), x, {},
                   lambda tx, _: fn(tx, k, stride=s if s is not None else k, padding=p))


def _ties(rng, shape):
    """Few distinct values, half of them 0 as after a ReLU: windows with several equal maxima."""
    return np.maximum(rng.integers(-2, 3, shape), 0) / 2.0


@pytest.mark.parametrize("cls, fn", [(layers.MaxPool2D, F.max_pool2d), (layers.AvgPool2D, F.avg_pool2d)])
@pytest.mark.parametrize("k, s, p", [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 1))])
@pytest.mark.parametrize("ties", [False, True])
def test_pooling(backend, cls, fn, k, s, p, ties):
    """With ``ties``, max-pooling's gradient lands on PyTorch's cell only if both take the
    first maximum of a window in row-major order."""
    rng = np.random.default_rng(1)
    shape = (2, 3, 9, 8)
    x = _ties(rng, shape) if ties else rng.permutation(np.linspace(-1, 1, np.prod(shape))).reshape(shape)
    _pool_against_torch(backend, cls, fn, x, k, s, p)


conv_geometry = st.fixed_dictionaries({
    "n": st.integers(1, 3), "cin": st.integers(1, 4), "cout": st.integers(1, 4),
    "h": st.integers(1, 10), "w": st.integers(1, 10), "kh": st.integers(1, 4),
    "kw": st.integers(1, 4), "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "ph": st.integers(0, 2), "pw": st.integers(0, 2), "same": st.booleans(),
    "relu": st.booleans(),
})


@given(g=conv_geometry)
def test_conv2d_sweep(backend, g):
    """Conv2D (forward, dX, dW, db; plain or with its fused ReLU) on every backend against
    PyTorch over hypothesis-drawn shapes, strides and paddings, "same" with an even kernel
    (the extra row/column at the bottom/right: PyTorch gets it by F.pad) included."""
    if g["same"]:
        stride, padding = 1, "same"
        pt, pl = (g["kh"] - 1) // 2, (g["kw"] - 1) // 2
        pads = (pl, g["kw"] - 1 - pl, pt, g["kh"] - 1 - pt)  # F.pad: left, right, top, bottom
    else:
        stride, padding = (g["sh"], g["sw"]), (g["ph"], g["pw"])
        pads = (g["pw"], g["pw"], g["ph"], g["ph"])
    if g["h"] + pads[2] + pads[3] < g["kh"] or g["w"] + pads[0] + pads[1] < g["kw"]:
        return  # the kernel does not fit
    rng = np.random.default_rng(0)
    activation = "relu" if g["relu"] else None
    conv = layers.Conv2D(g["cin"], g["cout"], (g["kh"], g["kw"]), stride=stride,
                         padding=padding, activation=activation, dtype="float64")
    params = {"W": conv.params["W"], "b": rng.standard_normal(g["cout"])}

    def torch_conv(tx, t):
        ty = F.conv2d(F.pad(tx, pads), t["W"], t["b"], stride=stride)
        return F.relu(ty) if activation else ty
    _compare_layer(backend, conv, rng.standard_normal((g["n"], g["cin"], g["h"], g["w"])),
                   params, torch_conv)


pool_geometry = st.fixed_dictionaries({
    "n": st.integers(1, 3), "c": st.integers(1, 3), "h": st.integers(1, 10),
    "w": st.integers(1, 10), "kh": st.integers(1, 4), "kw": st.integers(1, 4),
    "sh": st.integers(1, 3), "sw": st.integers(1, 3), "ph": st.integers(0, 2),
    "pw": st.integers(0, 2), "ties": st.booleans(),
})


@pytest.mark.parametrize("cls, fn", [(layers.MaxPool2D, F.max_pool2d), (layers.AvgPool2D, F.avg_pool2d)])
@given(g=pool_geometry)
def test_pooling_sweep(backend, cls, fn, g):
    """Max and average pooling on every backend against PyTorch over hypothesis-drawn
    geometries, with and without ties."""
    k, s = (g["kh"], g["kw"]), (g["sh"], g["sw"])
    p = (min(g["ph"], g["kh"] // 2), min(g["pw"], g["kw"] // 2))  # PyTorch's limit
    if g["h"] + 2 * p[0] < k[0] or g["w"] + 2 * p[1] < k[1]:
        return
    rng = np.random.default_rng(1)
    shape = (g["n"], g["c"], g["h"], g["w"])
    x = _ties(rng, shape) if g["ties"] else rng.standard_normal(shape)
    _pool_against_torch(backend, cls, fn, x, k, s, p)


def test_dense_and_activations(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 7)) * 3
    for activation in (None, "relu"):
        dense = layers.Dense(7, 4, activation=activation, dtype="float64")
        params = {"W": dense.params["W"], "b": rng.standard_normal(4)}

        def torch_dense(tx, t):
            ty = F.linear(tx, t["W"], t["b"])
            return F.relu(ty) if activation else ty
        _compare_layer(backend, dense, x, params, torch_dense)
    for cls, fn in [(layers.ReLU, torch.relu), (layers.Sigmoid, torch.sigmoid),
                    (layers.Tanh, torch.tanh), (layers.Softmax, lambda t: torch.softmax(t, 1))]:
        _compare_layer(backend, cls(dtype="float64"), x, {}, lambda tx, _, fn=fn: fn(tx))


@pytest.mark.parametrize("name", ["ce", "ce_onehot", "bce", "mse"])
def test_losses(backend, name):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5)) * 4
    tz = torch.tensor(z, requires_grad=True)
    if name.startswith("ce"):
        labels = rng.integers(0, 5, 6)
        target = np.eye(5)[labels] if name == "ce_onehot" else labels
        ours, theirs = losses.SoftmaxCrossEntropy(), F.cross_entropy(tz, torch.tensor(labels))
    elif name == "bce":
        target = rng.random((6, 5))
        ours, theirs = losses.BinaryCrossEntropy(), F.binary_cross_entropy_with_logits(tz, torch.tensor(target))
    else:
        target = rng.standard_normal((6, 5))
        ours, theirs = losses.MSE(), F.mse_loss(tz, torch.tensor(target))
    ours.to(backend)
    value = ours.forward(backend.asarray(z), backend.asarray(target))
    theirs.backward()
    assert abs(float(value) - theirs.item()) <= 1e-10 * abs(theirs.item())
    _close(backend.to_numpy(ours.backward()), tz.grad)


@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_of_a_certain_prediction_is_plus_zero(backend, one_hot, dtype):
    """Logits 1e4 apart: p_y = 1 exactly, so the loss is 0 -- +0 as PyTorch's for labels, not
    the -0 that negating log p_y = 0 gave (printed as "-0.0"). PyTorch gives -0 for probability
    targets; cnnx gives +0 for both forms of the same target."""
    z = np.array([[1e4, -1e4, 0.0], [0.0, 3e4, 1.0]])
    labels = np.array([0, 1])
    target = np.eye(3)[labels] if one_hot else labels
    want = F.cross_entropy(torch.tensor(z), torch.tensor(target)).item()
    value = float(losses.SoftmaxCrossEntropy().to(backend).forward(backend.asarray(z, dtype),
                                                                    backend.asarray(target)))
    assert value == want == 0.0 and not np.signbit(value)
    assert one_hot or not np.signbit(want)

@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("batch_last", [False, True])
def test_batchnorm2d(backend, training, relu, batch_last):
    # batch_last: the memory a CPU convolution hands out, which takes cpu_norm.py's path
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    if batch_last:
        x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    bn = layers.BatchNorm2D(3, activation="relu" if relu else None, dtype="float64")
    _compare_batch_norm(backend, bn, x, rng, training, relu)


def _compare_batch_norm(backend, bn, x, rng, training, relu=False):
    """``bn`` against F.batch_norm (then F.relu) from the same random γ, β and running
    statistics: outputs, gradients and the running statistics after the step."""
    c = x.shape[1]
    params = {"gamma": rng.uniform(0.5, 2, c), "beta": rng.standard_normal(c)}
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    bn.buffers = {"running_mean": rm.copy(), "running_var": rv.copy()}
    if not training:
        bn.eval()
    trm, trv = torch.tensor(rm), torch.tensor(rv)

    def torch_bn(tx, t):
        ty = F.batch_norm(tx, trm, trv, t["gamma"], t["beta"], training=training,
                          momentum=0.1, eps=1e-5)
        return F.relu(ty) if relu else ty
    _compare_layer(backend, bn, x, params, torch_bn)
    _close(backend.to_numpy(bn.buffers["running_mean"]), trm)
    _close(backend.to_numpy(bn.buffers["running_var"]), trv)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d(backend, training):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 5)) * 2 + 1
    _compare_batch_norm(backend, layers.BatchNorm1D(5, dtype="float64"), x, rng, training)


def test_global_avg_pool_flatten_and_identity(backend):
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5))
    for layer, fn in [(layers.GlobalAvgPool2D, lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1)),
                      (layers.Flatten, lambda t: torch.flatten(t, 1)),
                      (layers.Identity, lambda t: t)]:
        _compare_layer(backend, layer(dtype="float64"), x, {}, lambda tx, _, fn=fn: fn(tx))


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "adamw"])
def test_optimizers(backend, name):
    from cnnx import Sequential, optim
    rng = np.random.default_rng(5)
    model = Sequential([layers.Dense(4, 3, dtype="float64")], seed=0)
    tw = torch.tensor(model.layers[0].params["W"].copy(), requires_grad=True)
    tb = torch.tensor(model.layers[0].params["b"].copy(), requires_grad=True)
    model.to(backend)
    ours, theirs = {
        "sgd": (lambda: optim.SGD(model, 0.1, momentum=0.9, weight_decay=0.01),
                lambda: torch.optim.SGD([tw, tb], 0.1, momentum=0.9, weight_decay=0.01)),
        "nesterov": (lambda: optim.SGD(model, 0.1, momentum=0.9, nesterov=True),
                     lambda: torch.optim.SGD([tw, tb], 0.1, momentum=0.9, nesterov=True)),
        "adam": (lambda: optim.Adam(model, 0.01, weight_decay=0.01),
                 lambda: torch.optim.Adam([tw, tb], 0.01, weight_decay=0.01)),
        "adamw": (lambda: optim.Adam(model, 0.01, weight_decay=0.01, decoupled=True),
                  lambda: torch.optim.AdamW([tw, tb], 0.01, weight_decay=0.01)),
    }[name]
    ours, theirs = ours(), theirs()
    for _ in range(4):
        gw, gb = rng.standard_normal((3, 4)), rng.standard_normal(3)
        model.layers[0].grads = {"W": backend.asarray(gw), "b": backend.asarray(gb)}
        ours.step()
        tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
        theirs.step()
    _close(backend.to_numpy(model.layers[0].params["W"]), tw)
    _close(backend.to_numpy(model.layers[0].params["b"]), tb)


@pytest.mark.parametrize("name", ["sgd-momentum", "adam"])
def test_training_the_reference_cnn_matches_pytorch(backend, name):
    """Whole training steps on every backend (the CUDA path included): the reference CNN in
    float64, four steps of fit() from the same weights over the same batches as a PyTorch
    twin; every parameter agrees to 1e-10. (benchmarks/fmnist_parity.py does one full
    Fashion-MNIST epoch, 844 steps, the same way: agreement to 1e-16 to 2e-13.)"""
    from cnnx import fit, models, optim
    from cnnx.train import batch_slices, epoch_order

    nn = torch.nn
    model = models.build("reference", seed=3, dtype="float64").to(backend)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)).double()
    pairs = [(t, c) for t, c in zip([m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))],
                                    [layer for layer in model.layers if layer.params])]
    with torch.no_grad():
        for t, c in pairs:
            t.weight.copy_(torch.from_numpy(backend.to_numpy(c.params["W"])))
            t.bias.copy_(torch.from_numpy(backend.to_numpy(c.params["b"])))
    ours, theirs = {
        "sgd-momentum": (optim.SGD(model, 0.05, momentum=0.9),
                         torch.optim.SGD(net.parameters(), 0.05, momentum=0.9)),
        "adam": (optim.Adam(model, 1e-3), torch.optim.Adam(net.parameters(), 1e-3)),
    }[name]
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((30, 1, 28, 28)), rng.integers(0, 10, 30)
    fit(model, losses.SoftmaxCrossEntropy(), ours, x, y, epochs=1, batch_size=8, seed=4)
    order = torch.from_numpy(epoch_order(len(y), 4, 0))  # the batches fit() drew
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for start, stop in batch_slices(len(y), 8, drop_last=False):  # 8, 8, 8, 6
        index = order[start:stop]
        theirs.zero_grad()
        F.cross_entropy(net(tx[index]), ty[index]).backward()
        theirs.step()
    for t, c in pairs:
        _close(backend.to_numpy(c.params["W"]), t.weight)
        _close(backend.to_numpy(c.params["b"]), t.bias)
