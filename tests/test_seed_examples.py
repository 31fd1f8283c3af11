"""The seeds' worked examples, reproduced exactly."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx import Sequential, layers, losses

EDGE = np.array([[1, 1, 1, 0, 0, 0]] * 6, dtype=np.float64)
VERTICAL = np.array([[1, 0, -1]] * 3, dtype=np.float64)


def _conv_with(kernel, backend, **kw):
    kh, kw_ = kernel.shape
    conv = layers.Conv2D(1, 1, (kh, kw_), dtype="float64", **kw).to(backend)
    conv.params["W"] = backend.asarray(kernel[None, None])
    return conv


@pytest.mark.parametrize("image, value", [(EDGE, 3), (1 - EDGE, -3)])
def test_vertical_edge_detector(backend, image, value):
    # seed 000 §1.4.1: the 6x6 edge image * vertical-edge filter = 4x4 of 0 | value value | 0
    out = _conv_with(VERTICAL, backend).forward(backend.asarray(image[None, None]))
    expected = np.array([[0, value, value, 0]] * 4)
    np.testing.assert_array_equal(backend.to_numpy(out)[0, 0], expected)


def test_true_convolution_is_cross_correlation_with_the_rotated_kernel(backend):
    # seed 001 eq. (1): C_ij = Σ_pq x_(i+p)(j+q) w_(P-p)(Q-q). Our layer with W = rot180(w)
    # computes exactly that.
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 6)), rng.standard_normal((3, 2))
    P, Q = w.shape[0] - 1, w.shape[1] - 1
    seed_form = np.array([[sum(x[i + p, j + q] * w[P - p, Q - q] for p in range(3) for q in range(2))
                           for j in range(5)] for i in range(3)])
    ours = _conv_with(w[::-1, ::-1].copy(), backend).forward(backend.asarray(x[None, None]))
    np.testing.assert_allclose(backend.to_numpy(ours)[0, 0], seed_form, rtol=1e-13)


def test_max_pool_worked_example_and_routing(backend):
    x = np.array([[3, 2, 3, 1], [0, 5, 3, 4], [1, 2, 2, 2], [7, 3, 1, 7]], dtype=np.float64)
    pool = layers.MaxPool2D(2, dtype="float64").to(backend)
    y = pool.forward(backend.asarray(x[None, None]))
    np.testing.assert_array_equal(backend.to_numpy(y)[0, 0], [[5, 4], [7, 7]])
    dy = backend.asarray(np.array([[10.0, 20.0], [30.0, 40.0]])[None, None])
    dx = backend.to_numpy(pool.backward(dy))[0, 0]
    expected = np.zeros((4, 4))
    expected[1, 1], expected[1, 3], expected[3, 0], expected[3, 3] = 10, 20, 30, 40
    np.testing.assert_array_equal(dx, expected)


def test_seed002_pooling_examples(backend):
    c = backend.asarray(np.array([[1.0, 2.0], [3.0, 4.0]])[None, None])
    maxpool = layers.MaxPool2D(2, dtype="float64").to(backend)
    assert float(maxpool.forward(c).sum()) == 4
    np.testing.assert_array_equal(backend.to_numpy(maxpool.backward(backend.asarray(np.full((1, 1, 1, 1), 2.0))))[0, 0],
                                  [[0, 0], [0, 2]])
    avgpool = layers.AvgPool2D(2, dtype="float64").to(backend)
    assert float(avgpool.forward(c).sum()) == 2.5
    # each cell gets 1/4 of dP
    np.testing.assert_array_equal(backend.to_numpy(avgpool.backward(backend.asarray(np.full((1, 1, 1, 1), 4.0))))[0, 0],
                                  [[1, 1], [1, 1]])


def test_shape_chain_39_37_17_7():
    # seed 000 §1.4.7
    model = Sequential([layers.Conv2D(3, 10, 3), layers.Conv2D(10, 20, 5, stride=2),
                        layers.Conv2D(20, 40, 5, stride=2), layers.Flatten()], input_shape=(3, 39, 39))
    assert model.shapes() == [(10, 37, 37), (20, 17, 17), (40, 7, 7), (1960,)]
    text = model.summary()
    for shape in ("(10, 37, 37)", "(20, 17, 17)", "(40, 7, 7)", "(1960)"):
        assert shape in text
    assert model.num_parameters() == (3 * 9 + 1) * 10 + (10 * 25 + 1) * 20 + (20 * 25 + 1) * 40


def test_softmax_cross_entropy_gradient_is_p_minus_y(backend):
    z = np.array([[2.0, -1.0, 0.5]])
    loss = losses.SoftmaxCrossEntropy().to(backend)
    loss.forward(backend.asarray(z), backend.asarray(np.array([2])))
    p = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(backend.to_numpy(loss.backward()), p - [[0, 0, 1]], rtol=1e-14)


def test_sigmoid_binary_cross_entropy_gradient_is_a_minus_y(backend):
    z = np.array([[0.7]])
    loss = losses.BinaryCrossEntropy().to(backend)
    value = float(loss.forward(backend.asarray(z), backend.asarray(np.array([[1.0]]))))
    a = 1 / (1 + np.exp(-0.7))
    assert value == pytest.approx(-np.log(a), rel=1e-14)
    np.testing.assert_allclose(backend.to_numpy(loss.backward()), [[a - 1]], rtol=1e-14)


def test_seed003_3x3_input_2x2_filter_total_padding_1(backend):
    # seed 003 §III.1: p = 1 goes to the bottom/right; output 3x3 and
    # O_21 = ReLU(I_21 F_11 + I_22 F_12 + I_31 F_21 + I_32 F_22) (1-indexed)
    rng = np.random.default_rng(3)
    image, f = rng.standard_normal((3, 3)), rng.standard_normal((2, 2))
    conv = _conv_with(f, backend, padding="same", activation="relu")
    out = backend.to_numpy(conv.forward(backend.asarray(image[None, None])))[0, 0]
    assert out.shape == (3, 3)
    padded = np.zeros((4, 4))
    padded[:3, :3] = image
    expected = np.array([[max(0.0, (padded[i:i + 2, j:j + 2] * f).sum()) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(out, expected, rtol=1e-13)
    o21 = image[1, 0] * f[0, 0] + image[1, 1] * f[0, 1] + image[2, 0] * f[1, 0] + image[2, 1] * f[1, 1]
    assert out[1, 0] == pytest.approx(max(0.0, o21), rel=1e-13)


def test_relu_derivative_at_zero_is_zero(backend):
    # the seeds disagree (seed 001 eq. 10 says 1/2); we pin PyTorch's convention, 0
    relu = layers.ReLU(dtype="float64").to(backend)
    relu.forward(backend.asarray(np.array([[-1.0, 0.0, 2.0]])))
    np.testing.assert_array_equal(backend.to_numpy(relu.backward(backend.asarray(np.ones((1, 3))))),
                                  [[0, 0, 1]])
