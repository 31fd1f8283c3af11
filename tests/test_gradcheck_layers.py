"""Float64 central-difference gradchecks of every layer and loss over hypothesis-generated
shapes, strides and paddings (rectangular kernels, stride > 1 with padding, "same" with even
kernels, odd sizes). Tolerance: max relative error ≤ 1e-7."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cnnx import Sequential, gradcheck, layers, losses
from cnnx.gradcheck import DEFAULT_EPS, numeric_gradient
from conftest import tie_free

TOL = 1e-7

conv_case = st.fixed_dictionaries({
    "n": st.integers(1, 2), "cin": st.integers(1, 3), "cout": st.integers(1, 3),
    "h": st.integers(1, 7), "w": st.integers(1, 7),
    "k": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "s": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "p": st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.just("same"), st.just("valid")),
    "relu": st.booleans(),
})


def _fits(h, w, k, pads):
    (pt, pb), (pl, pr) = pads
    return h + pt + pb >= k[0] and w + pl + pr >= k[1]


def _assert_small(errors):
    assert errors and max(errors.values()) <= TOL, errors


@given(case=conv_case)
def test_conv2d(backend, case):
    from cnnx.shapes import resolve_padding
    stride = (1, 1) if case["p"] == "same" else case["s"]
    pads = resolve_padding(case["p"], case["k"], stride, "Conv2D")
    assume(_fits(case["h"], case["w"], case["k"], pads))
    layer = layers.Conv2D(case["cin"], case["cout"], case["k"], stride=stride, padding=case["p"],
                          activation="relu" if case["relu"] else None, dtype="float64").to(backend)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((case["n"], case["cin"], case["h"], case["w"])))
    layer.params["b"][...] = backend.asarray(rng.standard_normal(case["cout"]))
    if case["relu"]:  # keep pre-activations away from the kink at 0
        layer.activation = None
        z = backend.to_numpy(layer.forward(x))
        layer.activation = "relu"
        assume(np.abs(z).min() > 1e-4)
    _assert_small(gradcheck(layer, x))


pool_case = st.fixed_dictionaries({
    "n": st.integers(1, 2), "c": st.integers(1, 3), "h": st.integers(1, 8), "w": st.integers(1, 8),
    "k": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "s": st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    "p": st.tuples(st.integers(0, 2), st.integers(0, 2)),
})


@pytest.mark.parametrize("cls", [layers.MaxPool2D, layers.AvgPool2D])
@given(case=pool_case)
def test_pooling(backend, cls, case):
    p = (min(case["p"][0], case["k"][0] // 2), min(case["p"][1], case["k"][1] // 2))
    assume(_fits(case["h"], case["w"], case["k"], ((p[0], p[0]), (p[1], p[1]))))
    layer = cls(case["k"], stride=case["s"], padding=p, dtype="float64").to(backend)
    x = backend.asarray(tie_free(np.random.default_rng(1), (case["n"], case["c"], case["h"], case["w"])))
    _assert_small(gradcheck(layer, x))


@given(n=st.integers(1, 4), fin=st.integers(1, 9), fout=st.integers(1, 9), relu=st.booleans())
def test_dense(backend, n, fin, fout, relu):
    layer = layers.Dense(fin, fout, activation="relu" if relu else None, dtype="float64").to(backend)
    rng = np.random.default_rng(2)
    x = backend.asarray(rng.standard_normal((n, fin)))
    if relu:
        z = backend.to_numpy(x @ layer.params["W"].T)
        assume(np.abs(z).min() > 1e-4)
    _assert_small(gradcheck(layer, x))


@pytest.mark.parametrize("cls", [layers.ReLU, layers.Sigmoid, layers.Tanh, layers.Identity,
                                 layers.Flatten])
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4))
def test_elementwise_and_flatten(backend, cls, shape):
    x = backend.asarray(tie_free(np.random.default_rng(3), tuple(shape), -3, 3, away_from_zero=0.01))
    _assert_small(gradcheck(cls(dtype="float64").to(backend), x))


@given(n=st.integers(1, 4), k=st.integers(1, 8), four_d=st.booleans())
def test_softmax_full_jacobian(backend, n, k, four_d):
    shape = (n, k, 2, 3) if four_d else (n, k)
    x = backend.asarray(np.random.default_rng(4).standard_normal(shape) * 3)
    _assert_small(gradcheck(layers.Softmax(dtype="float64").to(backend), x))


@given(n=st.integers(1, 6), k=st.integers(2, 7), one_hot=st.booleans())
def test_softmax_cross_entropy(backend, n, k, one_hot):
    rng = np.random.default_rng(5)
    logits = backend.asarray(rng.standard_normal((n, k)) * 2)
    labels = rng.integers(0, k, n)
    target = np.eye(k)[labels] if one_hot else labels
    _assert_small(gradcheck(losses.SoftmaxCrossEntropy().to(backend), logits, backend.asarray(target)))


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_binary_cross_entropy(backend, shape):
    rng = np.random.default_rng(6)
    logits = backend.asarray(rng.standard_normal(shape) * 3)
    target = backend.asarray(rng.random(shape))  # soft targets are allowed too
    _assert_small(gradcheck(losses.BinaryCrossEntropy().to(backend), logits, target))


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_mse(backend, shape):
    rng = np.random.default_rng(7)
    pred = backend.asarray(rng.standard_normal(shape))
    _assert_small(gradcheck(losses.MSE().to(backend), pred, backend.asarray(rng.standard_normal(shape))))


def test_gradcheck_catches_a_wrong_gradient(backend):
    # the checker itself must fail on a broken backward (here: the bias gradient doubled)
    layer = layers.Dense(3, 2, dtype="float64").to(backend)
    original = layer.backward

    def broken(dy):
        dx = original(dy)
        layer.grads["b"] = layer.grads["b"] * 2
        return dx
    layer.backward = broken
    x = backend.asarray(np.random.default_rng(8).standard_normal((4, 3)))
    errors = gradcheck(layer, x)
    assert errors["b"] > 0.1 and errors["W"] <= TOL


def _conv_then_batch_norm(backend):
    """Conv2D then a training-mode BatchNorm2D: the conv bias shifts a whole channel, which
    the normalisation subtracts again, so its exact gradient is 0 and central differences
    give only rounding noise (~1e-10)."""
    model = Sequential([layers.Conv2D(2, 3, 3, dtype="float64"),
                        layers.BatchNorm2D(3, dtype="float64")]).to(backend)
    return model, backend.asarray(np.random.default_rng(9).standard_normal((2, 2, 5, 5)))


def test_gradcheck_accepts_a_zero_gradient_against_rounding_noise(backend):
    model, x = _conv_then_batch_norm(backend)
    errors = gradcheck(model, x)
    assert errors["0.b"] == 0, errors  # was 1.0: noise relative to noise
    _assert_small(errors)


def test_gradcheck_catches_a_small_gradient_that_should_be_zero(backend):
    # the noise floor that lets 0 match rounding noise must not let a real error through:
    # a conv bias gradient of 1e-5 where the exact one is 0 fails
    model, x = _conv_then_batch_norm(backend)
    conv = model.layers[0]
    original = conv.backward

    def broken(dy):
        dx = original(dy)
        conv.grads["b"] = conv.grads["b"] + 1e-5
        return dx
    conv.backward = broken
    errors = gradcheck(model, x)
    assert errors["0.b"] > 0.1 and errors["0.W"] <= TOL, errors


def test_gradcheck_measures_a_subset_on_the_whole_arrays_scale(backend):
    # one input feature is large, the rest tiny, so all of W's gradient but one element is
    # ~1e-6; a subset of those alone, measured on its own scale, read rounding noise as ~1e-6
    layer = layers.Dense(40, 1, dtype="float64").to(backend)
    x = np.random.default_rng(12).standard_normal((2, 40)) * 1e-6
    x[:, 0] = [1.0, -2.0]
    errors = gradcheck(layer, backend.asarray(x), max_elements=5)
    _assert_small(errors)


def _batch_norm_and_dropout(backend):
    """A model with both kinds of buffer: running statistics and Dropout's call counter."""
    model = Sequential([layers.Conv2D(2, 3, 3, dtype="float64"),
                        layers.BatchNorm2D(3, dtype="float64"), layers.Flatten(dtype="float64"),
                        layers.Dropout(0.5, dtype="float64"),
                        layers.Dense(27, 4, dtype="float64")], input_shape=(2, 5, 5)).to(backend)
    rng = np.random.default_rng(10)
    return model, backend.asarray(rng.standard_normal((4, 2, 5, 5))), rng.integers(0, 4, 4)


def test_gradcheck_holds_dropout_masks_fixed(backend):
    # each training-mode forward pass draws a new mask: unless every evaluation of J uses the
    # same one, the differences compare two functions and the error is ~1 everywhere
    x = backend.asarray(np.random.default_rng(11).standard_normal((3, 8)))
    _assert_small(gradcheck(layers.Dropout(0.5, dtype="float64").to(backend), x))
    model, x, y = _batch_norm_and_dropout(backend)
    _assert_small(gradcheck(model, x, y, loss=losses.SoftmaxCrossEntropy()))


def test_gradcheck_leaves_the_model_as_it_found_it(backend):
    model, x, y = _batch_norm_and_dropout(backend)
    model.forward(x)  # running statistics and a call count that are not the initial ones
    before = model.state_dict()
    running_mean = model.layers[1].buffers["running_mean"]
    gradcheck(model, x, y, loss=losses.SoftmaxCrossEntropy(), max_elements=5)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert model.layers[1].buffers["running_mean"] is running_mean  # restored in place


def test_gradcheck_refuses_float32(backend):
    with pytest.raises(ValueError, match="float64"):
        gradcheck(layers.Dense(2, 2).to(backend), backend.asarray(np.ones((1, 2), np.float32)))


@pytest.mark.parametrize("call, error, message", [
    # before: AttributeError: type object 'ReLU' has no attribute 'buffers'
    (lambda x, y: gradcheck(layers.ReLU, x), TypeError,
     r"^gradcheck: got the class ReLU; pass an object built in float64, such as "
     r"ReLU\(\.\.\., dtype='float64'\)$"),
    (lambda x, y: gradcheck([layers.ReLU(dtype="float64")], x), TypeError,
     r"^gradcheck: expected a layer, a Sequential or a loss, got a list$"),
    # before: MSE: target shape () does not match predictions (2, 3)
    (lambda x, y: gradcheck(losses.MSE(), x), ValueError,
     r"^gradcheck: checking the loss MSE needs its targets: gradcheck\(loss, predictions, y\)$"),
    # before: y was ignored without a word, and another objective checked than the one meant
    (lambda x, y: gradcheck(layers.Dense(3, 2, dtype="float64"), x, y), ValueError,
     r"^gradcheck: targets y given without loss=; a model is checked on loss\(forward\(x\), y\)"),
    # before: MSE: target shape () does not match predictions (2, 2)
    (lambda x, y: gradcheck(layers.Dense(3, 2, dtype="float64"), x, loss=losses.MSE()), ValueError,
     r"^gradcheck: loss= given without targets y; "),
])
def test_gradcheck_refuses_what_it_cannot_check(call, error, message):
    x, y = np.ones((2, 3)), np.zeros(2, int)
    with pytest.raises(error, match=message):
        call(x, y)


# ------------------------------------------------------------------------------ kinks
EPS = DEFAULT_EPS


def _central_error(layer, x, index):
    """The central quotient's error at one element of the input (J = Σ forward(x) ⊙ 1)."""
    objective = lambda: float(layer.forward(x).sum())  # noqa: E731
    analytic = layer.backward(layer.forward(x) * 0 + 1)
    numeric = numeric_gradient(objective, x, EPS)
    return float(abs(analytic - numeric).reshape(-1)[index])


@pytest.mark.parametrize("offset", [0.3, 0.0, -0.6], ids=["just-above-0", "at-0", "just-below-0"])
def test_gradcheck_takes_a_relu_kink_from_its_smooth_side(backend, offset):
    # an input within ε of ReLU's kink: the central quotient averages the slopes 0 and 1
    # (error ~0.5 of a gradient of size 1), though the analytic gradient is one of them
    # exactly (ReLU'(0) = 0); the one-sided quotient from the side that does not cross agrees
    x = backend.asarray(np.array([[offset * EPS, 0.7, -0.4, 1.3]]))
    layer = layers.ReLU(dtype="float64").to(backend)
    assert _central_error(layer, x, 0) > 0.1  # the kink is really there
    _assert_small(gradcheck(layer, x))


def test_gradcheck_takes_kinks_from_their_smooth_side_in_a_subset(backend):
    # max_elements: the elements re-measured are found by their place in the whole array
    x = backend.asarray(np.linspace(-0.9, 0.9, 20).reshape(2, 10) * EPS)
    layer = layers.ReLU(dtype="float64").to(backend)
    assert _central_error(layer, x, 0) > 0.01  # 0.05 at -0.9ε
    _assert_small(gradcheck(layer, x, max_elements=7))


def test_gradcheck_takes_a_max_pool_tie_from_its_smooth_side(backend):
    # two equal maxima: the gradient goes to the first (the tie convention); moving it up
    # keeps it the maximum, moving the second up makes that one the maximum
    x = backend.asarray(np.array([[[[0.5, 0.5], [-0.2, 0.1]]]]))
    layer = layers.MaxPool2D(2, dtype="float64").to(backend)
    assert _central_error(layer, x, 0) > 0.1 and _central_error(layer, x, 1) > 0.1
    _assert_small(gradcheck(layer, x))


def test_gradcheck_takes_a_bias_between_two_kinks_with_shorter_steps(backend):
    # a bias shifts every input of its channel: here one is 0.3ε below ReLU's kink and one
    # 1.5ε above it, so both one-sided quotients of step ε (reaching 2ε) cross one; those of
    # step ε/4 cross neither
    conv = layers.Conv2D(1, 1, 1, activation="relu", dtype="float64").to(backend)
    conv.params["W"][...] = 1.0
    conv.params["b"][...] = 0.0
    x = backend.asarray(np.array([[[[-0.3 * EPS, 1.5 * EPS], [0.8, -0.5]]]]))
    errors = gradcheck(conv, x)
    _assert_small(errors)


def test_gradcheck_near_a_kink_still_catches_a_wrong_gradient(backend):
    # the one-sided quotients are estimates of the same derivative: a gradient off by 1%
    # matches none of them
    layer = layers.ReLU(dtype="float64").to(backend)
    original = layer.backward
    layer.backward = lambda dy: original(dy) * 1.01
    x = backend.asarray(np.array([[0.3 * EPS, 0.7, -0.4, 1.3]]))
    assert gradcheck(layer, x)["input"] > 1e-3
