"""Flatten: (N, C, H, W) -> (N, C*H*W) (seed 001 eq. 5, seed 003 §III.3)."""

from __future__ import annotations

import math

from .base import Layer


class Flatten(Layer):
    """F[n, c*H*W + h*W + w] = X[n, c, h, w] (row-major over C, H, W, as PyTorch).

    Seed 001 eq. 5 orders the flat index as (row, column, channel); any fixed order is the same
    network up to a permutation of the next Dense layer's columns. We keep NCHW's natural order
    so weights load into PyTorch unchanged.
    """

    def __init__(self, dtype="float32"):
        super().__init__(dtype)
        self._cache = None

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x):
        self.check_input(x)
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected a batch of at least rank 2, got shape {tuple(x.shape)}")
        self._cache = x.shape
        # the width spelled out: -1 cannot be inferred from an empty batch's 0 elements
        return self._record_output(x.reshape(x.shape[0], math.prod(x.shape[1:])))

    def backward(self, dy):
        """No derivative: undo the reshape, dL/dX = reshape(dL/dF, X.shape) (seed 003 eq. 19)."""
        self.check_grad(dy)
        return dy.reshape(self._cache)
