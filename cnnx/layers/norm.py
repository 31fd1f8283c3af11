"""Batch normalization (Ioffe & Szegedy, 2015) for NCHW maps and (N, F) features.

Not in the seeds; derived here in the same notation (docs/math.md, "Batch normalization").
"""

from __future__ import annotations

import math

from ..shapes import positive_int
from .base import Layer, is_number
from .conv import ACTIVATIONS


class _BatchNorm(Layer):
    """y = act(γ · x̂ + β),  x̂ = (x - μ) / sqrt(σ² + ε), statistics per channel/feature.

    Training mode: μ, σ² are the batch's (biased variance), and the running estimates move
    towards them: r ← (1 - momentum) r + momentum · batch (unbiased variance, as PyTorch).
    Evaluation mode: μ, σ² are the running estimates, so the layer is a fixed affine map.
    ``activation="relu"`` fuses the ReLU that usually follows (one pass less each way; the
    same numbers as BatchNorm then ReLU). Parameters: gamma, beta (C,); buffers:
    running_mean, running_var (C,). The arithmetic is the backend's ``batch_norm_forward``
    and ``batch_norm_backward`` (cnnx/backends/base.py).
    """

    config_keys = ("num_features", "momentum", "eps", "activation")
    rank = 0

    def __init__(self, num_features, momentum=0.1, eps=1e-5, activation=None, dtype="float32"):
        super().__init__(dtype)
        self.num_features = positive_int(num_features, "num_features", self.name)
        if not (is_number(momentum) and 0 <= momentum <= 1):
            raise ValueError(f"{self.name}: momentum must be a number in [0, 1], got {momentum!r}")
        if not (is_number(eps) and 0 < eps < math.inf):  # also refuses NaN
            raise ValueError(f"{self.name}: eps must be a positive finite number, got {eps!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: activation must be None or 'relu', got {activation!r}")
        self.momentum, self.eps, self.activation = float(momentum), float(eps), activation
        self._cache = None
        self.reset_parameters(None)

    def reset_parameters(self, rng, init="he"):
        c = self.num_features
        self._check_size((c,))
        self.params = {"gamma": self.xp.ones(c, dtype=self.dtype), "beta": self._zeros((c,))}
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {"running_mean": self._zeros((c,)),
                        "running_var": self.xp.ones(c, dtype=self.dtype)}

    def output_shape(self, input_shape):
        if len(input_shape) != self.rank - 1 or input_shape[0] != self.num_features:
            raise ValueError(f"{self.name}: expected input with {self.num_features} channels/features "
                             f"and rank {self.rank - 1} per example, got {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x):
        self.check_input(x, rank=self.rank, channels=self.num_features)
        count = x.size // self.num_features
        if self.training and count < 2:
            raise ValueError(f"{self.name}: training mode needs more than one value per "
                             f"channel, got input shape {tuple(x.shape)}")
        stats = None if self.training else (self.buffers["running_mean"],
                                            self.buffers["running_var"])
        y, self._cache, mean, var = self.backend.batch_norm_forward(
            x, self.params["gamma"], self.params["beta"], self.eps, self.activation == "relu",
            stats)
        if self.training:
            # in place (the same numbers as `(1-m)*r + m*mean`): a CUDA graph that replays
            # this step keeps writing to the arrays it was captured with (cnnx/graph.py)
            m = self.momentum
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= 1 - m
            running_mean += m * mean
            running_var *= 1 - m
            running_var += m * var * (count / (count - 1))
        return self._record_output(y)

    def backward(self, dy):
        """With δ = dy (or dy ⊙ 1[y > 0] when the ReLU is fused), m values per channel and sums
        Σ over (N, H, W):

            dβ = Σ δ,    dγ = Σ δ ⊙ x̂
            training:  dx = (γ / (m σ)) (m δ - Σ δ - x̂ Σ (δ ⊙ x̂))
            eval:      dx = γ δ / σ                                     (σ = sqrt(σ² + ε))

        The training form accounts for μ and σ² depending on every x of the batch.
        """
        self.check_grad(dy)
        dx, dgamma, dbeta = self.backend.batch_norm_backward(dy, self._cache,
                                                             self.params["gamma"])
        self.grads = {"gamma": dgamma, "beta": dbeta}
        return dx


class BatchNorm2D(_BatchNorm):
    """Batch norm over (N, H, W) for each channel of an NCHW input."""

    rank = 4


class BatchNorm1D(_BatchNorm):
    """Batch norm over the batch for each feature of an (N, F) input."""

    rank = 2
