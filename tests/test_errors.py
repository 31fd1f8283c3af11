"""Bad input raises ValueError naming the layer or loss and the expected vs actual value."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cnnx import Sequential, layers, losses, models, optim


def _x(backend, shape, dtype="float32"):
    return backend.asarray(np.zeros(shape), dtype)


@pytest.mark.parametrize("layer, shape, message", [
    (lambda: layers.Conv2D(3, 4, 3), (3, 8, 8), r"Conv2D: expected a rank-4 input \(N, C, H, W\), got shape \(3, 8, 8\)"),
    (lambda: layers.Conv2D(3, 4, 3), (2, 1, 8, 8), r"Conv2D: expected 3 input channels.*got 1"),
    (lambda: layers.Dense(5, 2), (2, 4), r"Dense: expected 5 input channels/features.*got 4"),
    (lambda: layers.Dense(5, 2), (2, 5, 1), r"Dense: expected a rank-2 input"),
    (lambda: layers.MaxPool2D(2), (4, 4), r"MaxPool2D: expected a rank-4 input"),
    (lambda: layers.Conv2D(1, 1, 5), (1, 1, 3, 3), r"Conv2D: kernel size 5 is larger than the padded input size 3"),
    (lambda: layers.MaxPool2D(3), (1, 1, 2, 8), r"MaxPool2D: kernel size 3 is larger than the padded input size 2"),
])
def test_shape_errors_name_the_layer(backend, layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer().to(backend).forward(_x(backend, shape))


def test_dtype_mismatch(backend):
    with pytest.raises(ValueError, match="Conv2D: expected dtype float32, got float64"):
        layers.Conv2D(1, 1, 3).to(backend).forward(_x(backend, (1, 1, 4, 4), "float64"))


@pytest.mark.parametrize("dtype, fix", [
    ("float64", "convert the input with x.astype('float32') or build the layer with dtype='float64'"),
    ("int64", "convert the input with x.astype('float32')"),  # no layer is int64
])
def test_dtype_mismatch_says_how_to_fix_it(backend, dtype, fix):
    with pytest.raises(ValueError, match=rf"^Conv2D: expected dtype float32, got {dtype}; {re.escape(fix)}$"):
        layers.Conv2D(1, 1, 3).to(backend).forward(_x(backend, (1, 1, 4, 4), dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(backend, bad):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 2] = bad
    with pytest.raises(ValueError, match="ReLU: input contains NaN or inf"):
        layers.ReLU().to(backend).forward(backend.asarray(x))


@pytest.mark.parametrize("labels", [[0, 10], [-1, 3]])
def test_labels_out_of_range(backend, labels):
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: labels must lie in \[0, 10\)"):
        losses.SoftmaxCrossEntropy().to(backend).forward(_x(backend, (2, 10)), backend.asarray(np.array(labels)))


def test_loss_shape_mismatches(backend):
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: 3 labels for a batch of 2"):
        losses.SoftmaxCrossEntropy().to(backend).forward(_x(backend, (2, 10)), backend.asarray(np.array([1, 2, 3])))
    with pytest.raises(ValueError, match=r"MSE: target shape \(2, 3\) does not match predictions \(2, 4\)"):
        losses.MSE().to(backend).forward(_x(backend, (2, 4)), _x(backend, (2, 3)))
    with pytest.raises(ValueError, match=r"BinaryCrossEntropy: targets must lie in \[0, 1\]"):
        losses.BinaryCrossEntropy().to(backend).forward(_x(backend, (2, 1)), backend.asarray(np.array([[2.0], [0.0]])))


@pytest.mark.parametrize("loss, target, message", [
    # before: "one-hot target shape (2, 1) does not match predictions (2, 3)", for labels
    (losses.SoftmaxCrossEntropy, np.array([[0], [2]]),
     r"^SoftmaxCrossEntropy: targets of shape \(2, 1\) for 3 classes: give integer labels as a "
     r"vector of shape \(2,\), e.g. y.ravel\(\), or one-hot rows \(2, 3\)$"),
    # before: the same message without the reshape that fixes it
    (losses.BinaryCrossEntropy, np.array([1.0, 0.0]),
     r"^BinaryCrossEntropy: target shape \(2,\) does not match predictions \(2, 1\); reshape "
     r"it: target.reshape\(2, 1\)$"),
])
def test_loss_targets_shaped_as_a_column_or_a_vector_say_how_to_reshape(backend, loss, target, message):
    classes = 3 if loss is losses.SoftmaxCrossEntropy else 1
    with pytest.raises(ValueError, match=message):
        loss().to(backend).forward(_x(backend, (2, classes)), backend.asarray(target))
    with pytest.raises(ValueError, match=r"^MSE: target shape \(2, 3\) does not match predictions "
                                         r"\(2, 4\)$"):   # no reshape would do
        losses.MSE().to(backend).forward(_x(backend, (2, 4)), _x(backend, (2, 3)))



@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("make, shape", [(losses.MSE, (2, 3)), (losses.BinaryCrossEntropy, (2, 3)),
                                         (losses.SoftmaxCrossEntropy, (2, 3))])
def test_losses_refuse_non_finite_targets(backend, make, shape, bad):
    """A NaN target fails no range comparison (NaN < 0 and NaN > 1 are both False): without
    this check it came out as a NaN loss (an inf one as inf or NaN) with no word why."""
    target = np.full(shape, 0.5)
    target[1, 2] = bad
    loss = make().to(backend)
    with pytest.raises(ValueError, match=rf"^{loss.name}: targets contain NaN or inf$"):
        loss.forward(_x(backend, shape), backend.asarray(target))


def test_soft_targets_must_be_weights_not_negative(backend):
    """A negative class weight has no meaning as a target distribution (the loss could go
    below 0 without bound); it was taken, giving e.g. -3.3 for logits 0 and targets -1."""
    loss = losses.SoftmaxCrossEntropy().to(backend)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: one-hot / soft targets must be >= 0"):
        loss.forward(_x(backend, (2, 3)), backend.asarray(np.array([[1.0, 0, 0], [0.5, 0.6, -0.1]])))
    value = loss.forward(_x(backend, (2, 3)), backend.asarray(np.array([[1.0, 0, 0], [0, 0.5, 0.5]])))
    assert float(value) == pytest.approx(np.log(3))

#: one small instance of every layer type (float64) and an input shape it takes
EVERY_LAYER = {
    "Conv2D": (lambda: layers.Conv2D(2, 3, 3, dtype="float64"), (2, 2, 5, 5)),
    "MaxPool2D": (lambda: layers.MaxPool2D(2, dtype="float64"), (2, 2, 4, 4)),
    "AvgPool2D": (lambda: layers.AvgPool2D(2, dtype="float64"), (2, 2, 4, 4)),
    "GlobalAvgPool2D": (lambda: layers.GlobalAvgPool2D(dtype="float64"), (2, 2, 4, 4)),
    "Flatten": (lambda: layers.Flatten(dtype="float64"), (2, 2, 4, 4)),
    "Dense": (lambda: layers.Dense(4, 2, dtype="float64"), (3, 4)),
    "ReLU": (lambda: layers.ReLU(dtype="float64"), (3, 4)),
    "Sigmoid": (lambda: layers.Sigmoid(dtype="float64"), (3, 4)),
    "Tanh": (lambda: layers.Tanh(dtype="float64"), (3, 4)),
    "Softmax": (lambda: layers.Softmax(dtype="float64"), (3, 4)),
    "Identity": (lambda: layers.Identity(dtype="float64"), (3, 4)),
    "BatchNorm2D": (lambda: layers.BatchNorm2D(2, dtype="float64"), (2, 2, 3, 3)),
    "BatchNorm1D": (lambda: layers.BatchNorm1D(4, dtype="float64"), (3, 4)),
    "Dropout": (lambda: layers.Dropout(0.5, dtype="float64"), (3, 4)),
}


def test_every_layer_type_is_in_the_backward_checks():
    assert set(EVERY_LAYER) == set(layers.LAYER_TYPES)


@pytest.mark.parametrize("kind", sorted(EVERY_LAYER))
def test_backward_before_forward(kind):
    make, shape = EVERY_LAYER[kind]
    message = rf"^{kind}: backward called before forward \(or forward did not return self\._"
    with pytest.raises(ValueError, match=message):
        make().backward(np.zeros(shape))


@pytest.mark.parametrize("method", ["backward", "backward_params"])
@pytest.mark.parametrize("bad", ["shape", "dtype"])
@pytest.mark.parametrize("kind", sorted(EVERY_LAYER))
def test_backward_checks_dy_against_the_forward_output(backend, kind, bad, method):
    make, shape = EVERY_LAYER[kind]
    layer = make().to(backend)
    y = backend.to_numpy(layer.forward(backend.asarray(np.random.default_rng(0).random(shape))))
    if bad == "shape":  # one example too many
        dy, got, fix = np.ones((y.shape[0] + 1, *y.shape[1:])), "float64", "pass dL/d(output)"
    else:
        dy, got, fix = np.ones(y.shape, np.float32), "float32", "convert it with dy.astype('float64')"
    expected = re.escape(f"{kind}: backward expected dy of shape {y.shape} and dtype float64 "
                         f"(forward's output), got shape {dy.shape} and dtype {got}; {fix}")
    with pytest.raises(ValueError, match=f"^{expected}"):
        getattr(layer, method)(backend.asarray(dy, dy.dtype))


@pytest.mark.parametrize("make, message", [
    (lambda: layers.Conv2D(1, 1, 0), "Conv2D: kernel_size must be positive"),
    (lambda: layers.Conv2D(1, 1, 3, stride=(1, 0)), "Conv2D: stride must be positive"),
    (lambda: layers.Conv2D(1, 1, 3, padding=-1), "Conv2D: padding must be >= 0"),
    (lambda: layers.Conv2D(1, 1, 3, activation="gelu"), "Conv2D: activation must be None or 'relu'"),
    (lambda: layers.MaxPool2D(2, padding=2), "MaxPool2D: padding must be between 0 and half the kernel"),
    (lambda: layers.Dense(0, 3), "Dense: in_features must be a positive integer, got 0"),
    (lambda: layers.Dense(2, 3, dtype="float16"), "Dense: dtype must be one of"),
])
def test_bad_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: layers.Conv2D(2.7, 1, 3), "Conv2D: in_channels must be a positive integer, got 2.7"),
    (lambda: layers.Conv2D(1, "4", 3), "Conv2D: out_channels must be a positive integer, got '4'"),
    (lambda: layers.Dense(2.5, 3), "Dense: in_features must be a positive integer, got 2.5"),
    (lambda: layers.Dense(4, True), "Dense: out_features must be a positive integer, got True"),
    (lambda: layers.BatchNorm2D(3.0), "BatchNorm2D: num_features must be a positive integer, got 3.0"),
    (lambda: layers.BatchNorm1D(-2), "BatchNorm1D: num_features must be a positive integer, got -2"),
])
def test_counts_must_be_positive_integers_not_truncated(make, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: layers.BatchNorm2D(3, momentum=None), "BatchNorm2D: momentum must be a number in [0, 1], got None"),
    (lambda: layers.BatchNorm1D(3, momentum="0.1"), "BatchNorm1D: momentum must be a number in [0, 1], got '0.1'"),
    (lambda: layers.BatchNorm2D(3, momentum=1.5), "BatchNorm2D: momentum must be a number in [0, 1], got 1.5"),
    (lambda: layers.BatchNorm2D(3, eps=None), "BatchNorm2D: eps must be a positive finite number, got None"),
    (lambda: layers.BatchNorm2D(3, eps=float("nan")), "BatchNorm2D: eps must be a positive finite number, got nan"),
    (lambda: layers.BatchNorm2D(3, eps=0), "BatchNorm2D: eps must be a positive finite number, got 0"),
    (lambda: layers.Dropout(None), "Dropout: p must be a number in [0, 1), got None"),
])
def test_hyperparameters_must_be_numbers_in_range(make, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make()


_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, message", [
    (lambda m: optim.SGD(m, lr=_INF), "SGD: learning rate must be a finite number > 0, got inf"),
    (lambda m: optim.SGD(m, lr="0.1"), "SGD: learning rate must be a finite number > 0, got '0.1'"),
    (lambda m: optim.SGD(m, lr=0.1, weight_decay=_NAN), "SGD: weight_decay must be a finite number >= 0, got nan"),
    (lambda m: optim.SGD(m, lr=0.1, weight_decay=_INF), "SGD: weight_decay must be a finite number >= 0, got inf"),
    (lambda m: optim.SGD(m, lr=0.1, momentum=_NAN), "SGD: momentum must be in [0, 1), got nan"),
    (lambda m: optim.Adam(m, lr=_INF), "Adam: learning rate must be a finite number > 0, got inf"),
    (lambda m: optim.Adam(m, eps=_NAN), "Adam: eps must be a finite number > 0, got nan"),
    (lambda m: optim.Adam(m, eps=_INF), "Adam: eps must be a finite number > 0, got inf"),
    (lambda m: optim.Adam(m, weight_decay=_NAN), "Adam: weight_decay must be a finite number >= 0, got nan"),
    (lambda m: optim.Adam(m, betas=(0.9, 1.0)), "Adam: beta2 must be in [0, 1), got 1.0"),
    (lambda m: optim.Adam(m, betas=(0.9,)), "Adam: betas must be a pair (beta1, beta2), got (0.9,)"),
])
def test_optimizer_settings_must_be_finite_and_in_range(make, message):
    """NaN weight decay or eps, or an infinite rate, used to be taken, and the first step made
    every weight NaN (a diverged run, blamed on the learning rate)."""
    model = Sequential([layers.Dense(3, 2)])
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make(model)


def test_model_shape_mismatch_is_found_at_construction():
    with pytest.raises(ValueError, match=r"layer 2 \(Dense: expected input \(100,\), got \(1568,\)"):
        Sequential([layers.Conv2D(1, 8, 3, padding=1), layers.Flatten(), layers.Dense(100, 10)],
                   input_shape=(1, 14, 14))


@pytest.mark.parametrize("items, message", [
    ([lambda x: x], "Sequential: item 0 is a function, not a cnnx layer; use the layers of cnnx.layers"),
    ([layers.Flatten(), None], "Sequential: item 1 is a NoneType, not a cnnx layer"),
    ([layers.Flatten(), layers.ReLU], "Sequential: item 1 is the class ReLU, not a layer; call it: ReLU(...)"),
])
def test_sequential_items_must_be_layers(items, message):
    with pytest.raises(TypeError, match=f"^{re.escape(message)}"):
        Sequential(items)


@pytest.mark.parametrize("call", [
    lambda: Sequential(layers.Dense(4, 2)),
    lambda: Sequential(layers.Dense(4, 2), layers.ReLU()),   # layers as separate arguments
])
def test_sequential_takes_a_list_not_layers_one_by_one(call):
    """Before: TypeError: 'Dense' object is not iterable."""
    message = "Sequential: takes a list of layers, got a Dense; write Sequential([layer1, layer2, ...])"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        call()


@pytest.mark.parametrize("input_shape", [5, "1,28,28", (1, 28.0, 28), (1, 0, 28)])
def test_sequential_input_shape_must_be_a_tuple_of_positive_ints(input_shape):
    message = ("Sequential: input_shape must be one example's shape as a tuple of positive ints, "
               f"such as (1, 28, 28) or (784,), got {input_shape!r}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Sequential([layers.Flatten(), layers.Dense(784, 10)], input_shape=input_shape)


def test_a_model_file_with_a_bare_int_input_shape_is_a_value_error(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"input_shape": 784, "layers": [{"type": "Dense", "in_features": 784,
                                                                 "out_features": 10}]}))
    with pytest.raises(ValueError, match=r"^model file \S+: input_shape must be a list of positive "
                                         r"integers, such as \[1, 28, 28\] \(or \[784\] for "
                                         r"features\), got 784$"):
        models.build(str(path))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet")
