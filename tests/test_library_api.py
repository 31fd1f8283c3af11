"""The library as its users call it (README "The library"): the public functions refuse a
mistaken argument at the API boundary, in one line that says what was wrong, instead of a
traceback from deep inside, or a silent wrong answer."""

from __future__ import annotations

import numpy as np
import pytest

import cnnx
from cnnx import layers


def _flat_model(backend):
    """A model that starts by flattening: it takes any array of 12 numbers an example."""
    return cnnx.Sequential([layers.Flatten(), layers.Dense(12, 3)], input_shape=(3, 2, 2)).to(backend)


@pytest.mark.parametrize("shape, message", [
    ((4, 2, 2, 3), r"prediction data: examples have shape \(2, 2, 3\), the model expects "
                   r"\(3, 2, 2\) \(a batch of them: \(N, 3, 2, 2\)\)"),   # NHWC for NCHW
    ((3, 2, 2), r"prediction data: examples have shape \(2, 2\)"),           # no batch axis
])
def test_predict_refuses_examples_of_another_shape(backend, shape, message):
    """Before: predict flattened NHWC images into the Dense layer and returned numbers
    computed from scrambled pixels; fit and evaluate refused them."""
    model = _flat_model(backend)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        cnnx.predict(model, x)
    with pytest.raises(ValueError, match=message.replace("prediction", "evaluation")):
        cnnx.evaluate(model, cnnx.losses.SoftmaxCrossEntropy(), x, np.zeros(shape[0], int))
