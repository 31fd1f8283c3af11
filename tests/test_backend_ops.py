"""Each backend hot path against the slow loop oracle (tests/reference_ops.py), on every
available backend: the NumPy defaults on the CPU, our RawKernels on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference_ops as ref
from cnnx.backends import Window
from conftest import tie_free

geometry = st.fixed_dictionaries({
    "n": st.integers(1, 3), "c": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 9),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4), "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "pt": st.integers(0, 2), "pb": st.integers(0, 2), "pl": st.integers(0, 2), "pr": st.integers(0, 2),
})


def _window(g, pool=False):
    if pool:  # pooling pads symmetrically, at most half the kernel
        g = {**g, "pt": min(g["pt"], g["kh"] // 2), "pl": min(g["pl"], g["kw"] // 2)}
        g["pb"], g["pr"] = g["pt"], g["pl"]
    win = Window(g["kh"], g["kw"], g["sh"], g["sw"], g["pt"], g["pb"], g["pl"], g["pr"])
    fits = g["h"] + win.pt + win.pb >= win.kh and g["w"] + win.pl + win.pr >= win.kw
    return win, fits


def _pads(win):
    return ((win.pt, win.pb), (win.pl, win.pr))


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(g=geometry)
def test_im2col_matmul_is_the_loop_convolution(backend, dtype, g):
    win, fits = _window(g)
    if not fits:
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"]))
    w = rng.standard_normal((2, g["c"], g["kh"], g["kw"]))
    col = backend.im2col(backend.asarray(x, dtype), win)
    got = backend.to_numpy(col @ backend.asarray(w.reshape(2, -1).T, dtype))
    want = ref.conv2d(x, w, np.zeros(2), (g["sh"], g["sw"]), _pads(win))
    np.testing.assert_allclose(got.reshape(g["n"], *want.shape[2:], 2).transpose(0, 3, 1, 2),
                               want, **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(g=geometry)
def test_col2im_is_the_adjoint_of_im2col(backend, dtype, g):
    # <im2col(x), c> == <x, col2im(c)> for all x, c defines col2im exactly
    win, fits = _window(g)
    if not fits:
        return
    rng = np.random.default_rng(1)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"]))
    col = backend.im2col(backend.asarray(x, dtype), win)
    c = rng.standard_normal(col.shape)
    back = backend.col2im(backend.asarray(c, dtype), x.shape, win)
    lhs = float((backend.to_numpy(col).astype(np.float64) * c).sum())
    rhs = float((x * backend.to_numpy(back)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-4 if dtype == "float32" else 1e-11, abs=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(g=geometry)
def test_max_pool_forward_and_backward_match_the_loops(backend, dtype, g):
    win, fits = _window(g, pool=True)
    if not fits:
        return
    rng = np.random.default_rng(2)
    x = tie_free(rng, (g["n"], g["c"], g["h"], g["w"]))
    y, argmax = backend.max_pool_forward(backend.asarray(x, dtype), win)
    stride = (g["sh"], g["sw"])
    want = ref.pool2d(x.astype(dtype), (win.kh, win.kw), stride, _pads(win), "max")
    np.testing.assert_array_equal(backend.to_numpy(y), want.astype(dtype))
    dy = rng.standard_normal(want.shape)
    dx = backend.max_pool_backward(backend.asarray(dy, dtype), argmax, x.shape, win)
    want_dx = ref.max_pool_backward(x, dy, (win.kh, win.kw), stride, _pads(win))
    np.testing.assert_allclose(backend.to_numpy(dx), want_dx, **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(g=geometry)
def test_avg_pool_matches_the_loops(backend, dtype, g):
    win, fits = _window(g, pool=True)
    if not fits:
        return
    rng = np.random.default_rng(3)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"]))
    y = backend.avg_pool_forward(backend.asarray(x, dtype), win)
    want = ref.pool2d(x, (win.kh, win.kw), (g["sh"], g["sw"]), _pads(win), "avg")
    np.testing.assert_allclose(backend.to_numpy(y), want, **_tol(dtype))
    # backward is the adjoint of forward
    dy = rng.standard_normal(want.shape)
    dx = backend.to_numpy(backend.avg_pool_backward(backend.asarray(dy, dtype), x.shape, win))
    assert float((want * dy).sum()) == pytest.approx(float((x * dx).sum()), rel=1e-4, abs=1e-9)


def test_max_pool_ties_go_to_the_first_offset(backend):
    x = backend.asarray(np.ones((1, 1, 2, 2)), "float64")
    win = Window(2, 2, 2, 2)
    _, argmax = backend.max_pool_forward(x, win)
    assert int(backend.to_numpy(argmax).ravel()[0]) == 0
    dx = backend.max_pool_backward(backend.asarray(np.ones((1, 1, 1, 1))), argmax, x.shape, win)
    np.testing.assert_array_equal(backend.to_numpy(dx)[0, 0], [[1, 0], [0, 0]])


def test_backward_passes_are_bitwise_repeatable(backend):
    # overlapping windows (kernel 3, stride 2): a scatter with atomics would differ run to run
    rng = np.random.default_rng(4)
    x = backend.asarray(rng.standard_normal((4, 3, 17, 17)), "float32")
    win = Window(3, 3, 2, 2, 1, 1, 1, 1)
    col = backend.im2col(x, win)
    dcol = backend.asarray(rng.standard_normal(col.shape), "float32")
    a = backend.to_numpy(backend.col2im(dcol, x.shape, win))
    b = backend.to_numpy(backend.col2im(dcol, x.shape, win))
    assert a.tobytes() == b.tobytes()
    y, argmax = backend.max_pool_forward(x, win)
    dy = backend.asarray(rng.standard_normal(y.shape), "float32")
    a = backend.to_numpy(backend.max_pool_backward(dy, argmax, x.shape, win))
    b = backend.to_numpy(backend.max_pool_backward(dy, argmax, x.shape, win))
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [False, True])
def test_bias_activation_and_relu_backward(backend, dtype, relu):
    rng = np.random.default_rng(5)
    z, b = rng.standard_normal((37, 5)), rng.standard_normal(5)
    y = backend.to_numpy(backend.bias_activation(backend.asarray(z, dtype), backend.asarray(b, dtype), relu))
    want = np.maximum(z + b, 0) if relu else z + b
    np.testing.assert_allclose(y, want, **_tol(dtype))
    dy = rng.standard_normal(z.shape)
    dz = backend.to_numpy(backend.relu_backward(backend.asarray(dy, dtype), backend.asarray(want, dtype)))
    np.testing.assert_allclose(dz, dy * (want > 0), **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_is_stable_and_exact(backend, dtype):
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((9, 10)) * 30
    logits[0, 3] = 1000.0  # would overflow a naive exp
    labels = rng.integers(0, 10, 9)
    loss, grad = backend.softmax_cross_entropy(backend.asarray(logits, dtype), backend.asarray(labels))
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    want_loss = -logp[np.arange(9), labels].mean()
    want_grad = (np.exp(logp) - np.eye(10)[labels]) / 9
    assert float(loss) == pytest.approx(want_loss, rel=1e-5 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(backend.to_numpy(grad), want_grad, **_tol(dtype))


@pytest.mark.parametrize("momentum, decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2), (0.0, 1e-2)])
def test_sgd_update_is_the_pytorch_rule(backend, momentum, decay):
    rng = np.random.default_rng(7)
    w, g = rng.standard_normal(50), rng.standard_normal(50)
    v = rng.standard_normal(50) if momentum else None
    wd = backend.asarray(w.copy(), "float64")
    vd = backend.asarray(v.copy(), "float64") if momentum else None
    backend.sgd_update(wd, backend.asarray(g, "float64"), vd, 0.1, momentum, decay)
    g2 = g + decay * w
    if momentum:
        v = momentum * v + g2
        np.testing.assert_allclose(backend.to_numpy(vd), v, rtol=1e-12)
        g2 = v
    np.testing.assert_allclose(backend.to_numpy(wd), w - 0.1 * g2, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [False, True])
@given(g=geometry)
def test_conv2d_pair_matches_the_plain_im2col_form(backend, dtype, relu, g):
    # a backend may override conv2d_forward/backward with a faster formulation; it must agree
    # with the plain im2col default written in base.py (and so with the loop oracle above)
    from cnnx.backends import Backend
    win, fits = _window(g)
    if not fits:
        return
    rng = np.random.default_rng(8)
    x = backend.asarray(rng.standard_normal((g["n"], g["c"], g["h"], g["w"])), dtype)
    w = backend.asarray(rng.standard_normal((3, g["c"], g["kh"], g["kw"])), dtype)
    b = backend.asarray(rng.standard_normal(3), dtype)
    y, saved = backend.conv2d_forward(x, w, b, win, relu)
    y0, saved0 = Backend.conv2d_forward(backend, x, w, b, win, relu)
    np.testing.assert_allclose(backend.to_numpy(y), backend.to_numpy(y0), **_tol(dtype))
    dy = backend.asarray(rng.standard_normal(y.shape), dtype)
    for got, want in zip(backend.conv2d_backward(dy, saved, w, win, relu),
                         Backend.conv2d_backward(backend, dy, saved0, w, win, relu)):
        np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(want), **_tol(dtype))


class _MaskAssignmentRefused(np.ndarray):
    """An array that refuses ``a[boolean_mask] = v``, which CuPy runs only after copying the
    mask's count of True values to the host: a wait for the GPU (an error in a CUDA-graph
    capture)."""

    def __setitem__(self, key, value):
        if getattr(key, "dtype", None) == bool:
            raise AssertionError("boolean-mask assignment: CuPy would wait for the GPU here")
        super().__setitem__(key, value)


class _StrictXp:
    """NumPy, whose new arrays refuse boolean-mask assignment as an xp for base.py."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def zeros(*args, **kwargs):
        return np.zeros(*args, **kwargs).view(_MaskAssignmentRefused)


def test_the_pure_xp_max_pool_does_not_wait_for_the_gpu():
    """The kernels-off CUDA path (CNNX_KERNELS=0, benchmarks/gpu.py's column b) runs base.py's
    max-pool: it synchronized once per window offset, every step."""
    from cnnx.backends import Backend

    backend = Backend()
    backend.xp = _StrictXp()
    win = Window(3, 3, 2, 2, 1, 1, 1, 1)
    x = tie_free(np.random.default_rng(9), (2, 3, 7, 8))
    y, argmax = backend.max_pool_forward(x, win)
    want = ref.pool2d(x, (3, 3), (2, 2), _pads(win), "max")
    np.testing.assert_array_equal(y, want)
    dx = backend.max_pool_backward(np.ones_like(y), argmax, x.shape, win)
    np.testing.assert_array_equal(dx, ref.max_pool_backward(x, np.ones_like(y), (3, 3), (2, 2),
                                                            _pads(win)))
