"""Bad input raises ValueError naming the layer or loss and the expected vs actual value."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cnnx import Sequential, layers, losses, models


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


def test_backward_before_forward():
    with pytest.raises(ValueError, match="MaxPool2D: backward called before forward"):
        layers.MaxPool2D(2).backward(np.zeros((1, 1, 1, 1)))


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


def test_model_shape_mismatch_is_found_at_construction():
    with pytest.raises(ValueError, match=r"layer 2 \(Dense: expected input \(100,\), got \(1568,\)"):
        Sequential([layers.Conv2D(1, 8, 3, padding=1), layers.Flatten(), layers.Dense(100, 10)],
                   input_shape=(1, 14, 14))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet")
