"""The CUDA kernels on a real GPU, against the same backend's pure-CuPy path (base.py).

Skipped without CuPy or a usable GPU. Checks, for every kernel op and both float types:
equivalence with kernels off (float32 to 1e-5 relative, float64 to 1e-12), that the kernel
really ran, non-contiguous inputs, bitwise-repeatable backward passes with overlapping windows,
the compile-error message, and 64-bit indexing on an im2col matrix of more than 2^31 elements.
"""

from __future__ import annotations

import numpy
import pytest

from cnnx.backends import DeviceError, Window, get_backend

cupy = pytest.importorskip("cupy")
try:
    KERNELS = get_backend("cuda", kernels=True)
    PURE = get_backend("cuda", kernels=False)
except DeviceError as exc:
    pytest.skip(f"no usable CUDA device: {exc}", allow_module_level=True)

pytestmark = pytest.mark.gpu
DTYPES = ["float32", "float64"]
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}

WINDOW_CASES = [
    ((64, 1, 28, 28), Window(3, 3, 1, 1, 1, 1, 1, 1)),  # reference CNN conv1
    ((64, 16, 14, 14), Window(3, 3, 1, 1, 1, 1, 1, 1)),  # conv2
    ((64, 16, 28, 28), Window(2, 2, 2, 2)),  # pool1
    ((3, 5, 17, 11), Window(3, 3, 2, 2)),  # overlapping windows
    ((1, 2, 9, 13), Window(2, 5, 3, 1, 2, 0, 1, 3)),  # rectangular, asymmetric padding
    ((2, 3, 3, 3), Window(2, 2, 1, 1, 2, 2, 2, 2)),  # windows wholly in padding
]
IDS = [f"{'x'.join(map(str, s))}-k{w.kh}{w.kw}s{w.sh}{w.sw}" for s, w in WINDOW_CASES]


def _random(shape, dtype, seed):
    return cupy.random.default_rng(seed).standard_normal(shape, dtype=dtype)


def _close(a, b, dtype):
    numpy.testing.assert_allclose(cupy.asnumpy(a), cupy.asnumpy(b), **TOLERANCE[dtype])


def _ran(kernel, dtype):
    return (kernel, dtype) in KERNELS._functions


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,win", WINDOW_CASES, ids=IDS)
def test_window_ops_match_pure_cupy(shape, win, dtype):
    x = _random(shape[::-1], dtype, 1).T  # a non-contiguous view, as after a transpose
    col = KERNELS.im2col(x, win)
    _close(col, PURE.im2col(x, win), dtype)
    _close(KERNELS.col2im(col, shape, win), PURE.col2im(col, shape, win), dtype)
    y, argmax = KERNELS.max_pool_forward(x, win)
    y_ref, argmax_ref = PURE.max_pool_forward(x, win)
    _close(y, y_ref, dtype)
    assert cupy.array_equal(argmax, argmax_ref)
    dy = _random(y.shape, dtype, 2)
    _close(KERNELS.max_pool_backward(dy, argmax, shape, win),
           PURE.max_pool_backward(dy, argmax, shape, win), dtype)
    _close(KERNELS.avg_pool_forward(x, win), PURE.avg_pool_forward(x, win), dtype)
    _close(KERNELS.avg_pool_backward(dy, shape, win), PURE.avg_pool_backward(dy, shape, win), dtype)
    for kernel in ("im2col", "col2im", "max_pool_forward", "max_pool_backward",
                   "avg_pool_forward", "avg_pool_backward"):
        assert _ran(kernel, dtype), kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("m,o", [(64 * 784, 16), (1024, 128), (7, 10)])
def test_bias_activation_and_relu_backward_match(m, o, relu, dtype):
    z = _random((o, m), dtype, 3).T
    b = _random((o,), dtype, 4)
    y = KERNELS.bias_activation(z, b, relu)
    _close(y, PURE.bias_activation(z, b, relu), dtype)
    dy = _random((m, o), dtype, 5)
    _close(KERNELS.relu_backward(dy, y), PURE.relu_backward(dy, y), dtype)
    assert _ran("bias_activation", dtype) and _ran("relu_backward", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(1, 10), (1024, 10), (33, 1000)])
def test_softmax_cross_entropy_matches(batch, classes, dtype):
    logits = _random((batch, classes), dtype, 6) * 20
    labels = cupy.random.default_rng(7).integers(0, classes, batch)
    loss, grad = KERNELS.softmax_cross_entropy(logits, labels)
    loss_ref, grad_ref = PURE.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, cupy.ndarray) and loss.ndim == 0 and loss.dtype == logits.dtype
    _close(loss, loss_ref, dtype)
    _close(grad, grad_ref, dtype)
    assert _ran("softmax_cross_entropy", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 5e-4)])
def test_sgd_update_matches(momentum, weight_decay, dtype):
    w, w_ref = _random((128, 1568), dtype, 8), _random((128, 1568), dtype, 8)
    v = cupy.zeros_like(w) if momentum else None
    v_ref = None if v is None else v.copy()
    for step in range(3):
        g = _random(w.shape, dtype, 9 + step)
        KERNELS.sgd_update(w, g, v, 0.01, momentum, weight_decay)
        PURE.sgd_update(w_ref, g, v_ref, 0.01, momentum, weight_decay)
    _close(w, w_ref, dtype)
    if v is not None:
        _close(v, v_ref, dtype)
    assert _ran("sgd_momentum" if momentum else "sgd_plain", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_update_matches(weight_decay, decoupled, dtype):
    w, w_ref = _random((128, 1568), dtype, 10), _random((128, 1568), dtype, 10)
    m, v = cupy.zeros_like(w), cupy.zeros_like(w)
    m_ref, v_ref = m.copy(), v.copy()
    for step in range(1, 4):
        g = _random(w.shape, dtype, 11 + step)
        args = (1e-3, (0.9, 0.999), 1e-8, weight_decay, decoupled, step)
        KERNELS.adam_update(w, g, m, v, *args)
        PURE.adam_update(w_ref, g, m_ref, v_ref, *args)
    for ours, reference in ((w, w_ref), (m, m_ref), (v, v_ref)):
        _close(ours, reference, dtype)
    assert _ran("adam_update", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,win", WINDOW_CASES[:2] + WINDOW_CASES[3:5], ids=IDS[:2] + IDS[3:5])
def test_conv2d_pair_matches(shape, win, dtype):
    x = _random(shape, dtype, 20)
    w, b = _random((8, shape[1], win.kh, win.kw), dtype, 21), _random((8,), dtype, 22)
    y, saved = KERNELS.conv2d_forward(x, w, b, win, True)
    y_ref, saved_ref = PURE.conv2d_forward(x, w, b, win, True)
    _close(y, y_ref, dtype)
    dy = _random(y.shape, dtype, 23)
    (dx, dw, db), (dx_ref, dw_ref, db_ref) = (KERNELS.conv2d_backward(dy, saved, w, win, True),
                                              PURE.conv2d_backward(dy, saved_ref, w, win, True))
    _close(dx, dx_ref, dtype)  # the same products, and sums in the same order
    _close(dw, dw_ref, dtype)
    _close_sums(db, db_ref, _relu_delta(dy, y_ref), dtype)


def _relu_delta(dy, y):
    """dL/dZ as rows (n, y, x): what dL/db sums over its N*Ho*Wo rows."""
    out = dy.shape[1]
    return (dy * (y > 0)).transpose(0, 2, 3, 1).reshape(-1, out)


def _close_sums(got, want, terms, dtype):
    """``got`` and ``want`` are column sums of ``terms`` added in different orders (cuBLAS's
    ones @ delta, a CuPy reduction): their difference grows with sum(|terms|), not with the sum,
    which cancels towards 0 in some columns (50,176 float32 terms: a relative test on the sum
    fails). Even adding one term after another stays near 1e-7 * sum(|terms|)."""
    bound = TOLERANCE[dtype]["rtol"] * cupy.asnumpy(abs(terms).sum(axis=0))
    difference = abs(cupy.asnumpy(got) - cupy.asnumpy(want))
    assert (difference <= bound).all(), (difference, bound)


def test_backward_passes_are_bitwise_repeatable():
    """Overlapping windows (kernel 3, stride 2): the gathers add in a fixed order, no atomics."""
    shape, win = (64, 16, 27, 27), Window(3, 3, 2, 2, 1, 1, 1, 1)
    x = _random(shape, "float32", 10)
    dcol = _random(KERNELS.im2col(x, win).shape, "float32", 11)
    y, argmax = KERNELS.max_pool_forward(x, win)
    dy = _random(y.shape, "float32", 12)
    for run in (lambda: KERNELS.col2im(dcol, shape, win),
                lambda: KERNELS.max_pool_backward(dy, argmax, shape, win),
                lambda: KERNELS.avg_pool_backward(dy, shape, win)):
        assert cupy.array_equal(run(), run())


def test_compile_error_names_file_device_and_nvrtc(monkeypatch):
    from cnnx.backends import cupy_backend

    fresh = cupy_backend.make_cupy_backend(0, True)  # empty module cache
    monkeypatch.setattr(cupy_backend, "source_of", lambda f: "this is not CUDA;")
    with pytest.raises(RuntimeError, match=r"conv\.cu for float .*compute capability .*NVRTC"):
        fresh.im2col(cupy.zeros((1, 1, 4, 4), "float32"), Window(2, 2, 1, 1))


def test_indices_past_2_pow_31():
    """im2col/col2im over a col matrix of more than 2^31 elements (int32 indices would wrap)."""
    shape, win = (1, 1, 16384, 14564), Window(3, 3, 1, 1, 1, 1, 1, 1)
    col_elements = shape[2] * shape[3] * 9
    assert col_elements > 2**31
    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < 4 * col_elements * 4:  # kernel and reference col, plus their temporaries
        pytest.skip(f"needs ~{4 * col_elements * 4 / 2**30:.0f} GiB free GPU memory")
    x = cupy.random.default_rng(13).random(shape, dtype="float32")
    col = KERNELS.im2col(x, win)
    assert cupy.array_equal(col, PURE.im2col(x, win))
    assert float(col[-1, 4]) == float(x[0, 0, -1, -1])  # the last pixel, at flat index > 2^31
    dx = KERNELS.col2im(col, shape, win)
    assert cupy.array_equal(dx, PURE.col2im(col, shape, win))  # same additions, same order
    # the corner pixel is read by 4 of the 9 offsets of its own window
    assert float(dx[0, 0, -1, -1]) == pytest.approx(4 * float(x[0, 0, -1, -1]), rel=1e-6)


def test_reference_cnn_training_steps_match_kernels_off():
    """End to end through the layers: 3 SGD steps of the reference CNN, kernels on vs off."""
    from cnnx import config, losses, models, optim
    from cnnx.train import train_step

    rng = numpy.random.default_rng(14)
    x = rng.standard_normal((32, 1, 28, 28)).astype("float32")
    y = rng.integers(0, 10, 32)
    results = []
    for backend in (KERNELS, PURE):
        model = models.build("reference", seed=0).to(backend)
        opt = optim.SGD(model, lr=0.05, momentum=0.9)
        loss_fn = losses.SoftmaxCrossEntropy()
        xb, yb = backend.asarray(x), backend.asarray(y)
        with config.finite_checks(False):
            values = [float(train_step(model, loss_fn, opt, xb, yb)[0]) for _ in range(3)]
        results.append((values, model.state_dict()))
    (loss_k, state_k), (loss_p, state_p) = results
    numpy.testing.assert_allclose(loss_k, loss_p, rtol=1e-5)
    for name in state_k:
        numpy.testing.assert_allclose(state_k[name], state_p[name], rtol=1e-4, atol=1e-6)
