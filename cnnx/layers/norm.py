"""Batch normalization (Ioffe & Szegedy, 2015) for NCHW maps and (N, F) features.

Not in the seeds; derived here in the same notation (docs/math.md, "Batch normalization").
"""

from __future__ import annotations

from .base import Layer


class _BatchNorm(Layer):
    """y = γ · x̂ + β,  x̂ = (x - μ) / sqrt(σ² + ε), statistics per channel/feature.

    Training mode: μ, σ² are the batch's (biased variance), and the running estimates move
    towards them: r ← (1 - momentum) r + momentum · batch (unbiased variance, as PyTorch).
    Evaluation mode: μ, σ² are the running estimates, so the layer is a fixed affine map.
    Parameters: gamma, beta (C,); buffers: running_mean, running_var (C,).
    """

    config_keys = ("num_features", "momentum", "eps")
    axes: tuple = ()
    rank = 0

    def __init__(self, num_features, momentum=0.1, eps=1e-5, dtype="float32"):
        super().__init__(dtype)
        self.num_features = int(num_features)
        if self.num_features <= 0:
            raise ValueError(f"{self.name}: num_features must be positive, got {num_features}")
        if not 0 <= momentum <= 1 or eps <= 0:
            raise ValueError(f"{self.name}: need 0 <= momentum <= 1 and eps > 0, "
                             f"got momentum={momentum}, eps={eps}")
        self.momentum, self.eps = float(momentum), float(eps)
        self._cache = None
        self.reset_parameters(None)

    def reset_parameters(self, rng, init="he"):
        c = self.num_features
        self.params = {"gamma": self.xp.ones(c, dtype=self.dtype), "beta": self._zeros((c,))}
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {"running_mean": self._zeros((c,)),
                        "running_var": self.xp.ones(c, dtype=self.dtype)}

    def _shape(self, v):
        """A per-channel vector shaped to broadcast against the input."""
        return v.reshape((1, -1) + (1,) * (self.rank - 2))

    def output_shape(self, input_shape):
        if len(input_shape) != self.rank - 1 or input_shape[0] != self.num_features:
            raise ValueError(f"{self.name}: expected input with {self.num_features} channels/features "
                             f"and rank {self.rank - 1} per example, got {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x):
        self.check_input(x, rank=self.rank, channels=self.num_features)
        if self.training:
            count = x.size // self.num_features
            if count < 2:
                raise ValueError(f"{self.name}: training mode needs more than one value per "
                                 f"channel, got input shape {tuple(x.shape)}")
            mean = x.mean(axis=self.axes)
            var = x.var(axis=self.axes)
            m = self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = ((1 - m) * self.buffers["running_var"]
                                           + m * var * (count / (count - 1)))
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / self.xp.sqrt(var + self.eps)
        x_hat = (x - self._shape(mean)) * self._shape(inv_std)
        self._cache = (x_hat, inv_std, self.training)
        return x_hat * self._shape(self.params["gamma"]) + self._shape(self.params["beta"])

    def backward(self, dy):
        """With m values per channel and sums Σ over (N, H, W):

            dβ = Σ dy,    dγ = Σ dy ⊙ x̂
            training:  dx = (γ / (m σ)) (m dy - Σ dy - x̂ Σ (dy ⊙ x̂))
            eval:      dx = γ dy / σ                                    (σ = sqrt(σ² + ε))

        The training form accounts for μ and σ² depending on every x of the batch.
        """
        self._require_forward(self._cache)
        x_hat, inv_std, training = self._cache
        dbeta = dy.sum(axis=self.axes)
        dgamma = (dy * x_hat).sum(axis=self.axes)
        self.grads = {"gamma": dgamma, "beta": dbeta}
        scale = self._shape(self.params["gamma"] * inv_std)
        if not training:
            return dy * scale
        m = dy.size // self.num_features
        return scale * (dy - self._shape(dbeta / m) - x_hat * self._shape(dgamma / m))


class BatchNorm2D(_BatchNorm):
    """Batch norm over (N, H, W) for each channel of an NCHW input."""

    axes = (0, 2, 3)
    rank = 4


class BatchNorm1D(_BatchNorm):
    """Batch norm over the batch for each feature of an (N, F) input."""

    axes = (0,)
    rank = 2
