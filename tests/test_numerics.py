"""Numerical edge cases where the naive formula breaks: saturating logits, a constant batch-norm
channel. Each is compared with the float64 closed form, in float32 too, and must run without a
NumPy warning (an overflow in exp, an invalid value) escaping from the library."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnx import layers, losses

#: logits from 0 to float32's largest, with the points where exp over- or underflows in float32
#: (88.7, 103.9) and float64 (709.8, 745.1)
EXTREME = [0.0, 1e-30, 0.5, 20.0, 88.0, 89.0, 104.0, 710.0, 746.0, 1e4, 1e30, 3e38]
logits = st.lists(st.sampled_from(EXTREME) | st.floats(-1e3, 1e3), min_size=1, max_size=8)


def _softplus(v: float) -> float:
    """log(1 + e^v) in float64, without overflow."""
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def _quiet():
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")  # a RuntimeWarning from NumPy fails the test
    return context


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(values=logits, signs=st.lists(st.booleans(), min_size=8, max_size=8),
       targets=st.lists(st.sampled_from([0.0, 1.0, 0.25]), min_size=8, max_size=8))
def test_sigmoid_and_binary_cross_entropy_at_saturation(backend, dtype, values, signs, targets):
    """σ(z) and BCE-with-logits for |z| up to 3e38: finite, and within a few rounding errors of
    the float64 closed forms σ(z) = 1/(1+e^-z), L = softplus(z) - z·y, dL/dz = (σ(z) - y)/n."""
    z = np.array([v if s else -v for v, s in zip(values, signs)], dtype)
    y = np.array(targets[: z.size], dtype)
    eps = np.finfo(dtype).eps
    exact_sigmoid = np.array([1 / (1 + math.exp(-v)) if v > -700 else math.exp(v) for v in
                              z.astype(float)])
    exact_terms = [_softplus(v) - v * t for v, t in zip(z.astype(float), y.astype(float))]
    context = _quiet()
    try:
        sig = layers.Sigmoid(dtype=dtype).to(backend)
        s = backend.to_numpy(sig.forward(backend.asarray(z[None])))[0]
        ds = backend.to_numpy(sig.backward(backend.asarray(np.ones((1, z.size), dtype))))[0]
        bce = losses.BinaryCrossEntropy().to(backend)
        value = float(bce.forward(backend.asarray(z), backend.asarray(y)))
        grad = backend.to_numpy(bce.backward())
    finally:
        context.__exit__(None, None, None)
    tiny = np.finfo(dtype).smallest_subnormal
    np.testing.assert_allclose(s, exact_sigmoid, rtol=4 * eps, atol=tiny)
    np.testing.assert_allclose(ds, s * (1 - s), rtol=4 * eps, atol=tiny)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # each term's rounding is relative to |z| (softplus(z) - z·y cancels for y = 1)
    scale = sum(abs(v) + abs(t) for v, t in zip(z.astype(float), exact_terms)) / z.size
    assert abs(value - sum(exact_terms) / z.size) <= 8 * eps * scale
    np.testing.assert_allclose(grad, (exact_sigmoid - y) / z.size, rtol=4 * eps, atol=4 * eps / z.size)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(values=logits, label=st.integers(0, 7), one_hot=st.booleans())
def test_softmax_and_cross_entropy_with_logits_far_apart(backend, dtype, values, label, one_hot):
    """Logits from -1e30 to 1e30 in one row (the max shift keeps exp in range): the float64
    log-sum-exp, finite gradients that sum to 0, no warnings."""
    z = np.array([v * (-1) ** k for k, v in enumerate(values)], dtype)
    z[0] = min(z[0], 1e30)  # keep max - min below float32's largest (else -inf is the answer)
    z = np.maximum(z, -1e30).astype(dtype)
    label = label % z.size
    zf = z.astype(float)
    m = zf.max()
    log_total = m + math.log(sum(math.exp(v - m) for v in zf))
    exact = log_total - zf[label]
    target = np.eye(z.size)[[label]] if one_hot else np.array([label])
    eps = np.finfo(dtype).eps
    context = _quiet()
    try:
        ce = losses.SoftmaxCrossEntropy().to(backend)
        value = float(ce.forward(backend.asarray(z[None]), backend.asarray(target)))
        grad = backend.to_numpy(ce.backward())[0]
        soft = layers.Softmax(dtype=dtype).to(backend)
        p = backend.to_numpy(soft.forward(backend.asarray(z[None])))[0]
    finally:
        context.__exit__(None, None, None)
    assert abs(value - exact) <= 8 * eps * (abs(exact) + abs(zf[label]) + abs(m))
    exact_p = np.exp(zf - m) / np.exp(zf - m).sum()
    np.testing.assert_allclose(p, exact_p, rtol=8 * eps, atol=np.finfo(dtype).tiny)
    np.testing.assert_allclose(grad, exact_p - np.eye(z.size)[label], rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("level", [0.0, 7.0, -3e4])
def test_batch_norm_of_a_constant_channel_is_exactly_beta(backend, batch_last, dtype, level):
    """Variance 0: x̂ = 0 exactly, so y = β and dL/dγ = 0 on that channel (PyTorch's float32
    batch norm leaves 3e-5 in y there), and dL/dx is the closed form (δ - mean δ)/√ε."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 5, 5))
    x[:, 1] = level
    if batch_last:  # the CPU convolution's layout: cpu_norm.py's path
        x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    bn = layers.BatchNorm2D(3, dtype=dtype).to(backend)
    bn.params["beta"][...] = backend.asarray(np.array([0.5, -2.0, 1.0]), dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    context = _quiet()
    try:
        y = backend.to_numpy(bn.forward(backend.asarray(x, dtype)))
        dx = backend.to_numpy(bn.backward(backend.asarray(dy)))
    finally:
        context.__exit__(None, None, None)
    assert (y[:, 1] == -2.0).all()
    delta = dy[:, 1].astype(float)
    np.testing.assert_allclose(dx[:, 1], (delta - delta.mean()) / math.sqrt(1e-5),
                               rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-4)
    assert float(backend.to_numpy(bn.grads["gamma"])[1]) == 0.0
    assert float(backend.to_numpy(bn.buffers["running_mean"])[1]) == pytest.approx(0.1 * level)
    assert float(backend.to_numpy(bn.buffers["running_var"])[1]) == pytest.approx(0.9)
    other = y[:, [0, 2]]
    assert np.abs(other.mean(axis=(0, 2, 3)) - [0.5, 1.0]).max() < 1e-5
