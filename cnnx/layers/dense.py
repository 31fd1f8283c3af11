"""Fully connected layer (seed 000 §1.3.1 and §1.4.9; seed 001 eqs. 6-8)."""

from __future__ import annotations

from ..backends import make_rng
from ..shapes import positive_int
from .base import Layer
from .conv import ACTIVATIONS


class Dense(Layer):
    """Dense(in_features, out_features, activation=None):  y = x W^T + b  (then ReLU if fused).

    x: (N, in) -> y: (N, out). W has shape (out, in) as in seed 000 §1.4.9 (n^[l] x n^[l-1]);
    seed 001 eq. 6 stores the transpose (D_j = Σ_i x_i w_ij). ``init`` ("he" or "xavier";
    default He with the fused ReLU, else Xavier) and ``seed`` draw W; a Sequential redraws W
    from its own seed, keeping an ``init`` given here (see ``Sequential``).
    """

    config_keys = ("in_features", "out_features", "activation")

    def __init__(self, in_features, out_features, activation=None, init=None, seed=0,
                 dtype="float32"):
        super().__init__(dtype)
        self.in_features = positive_int(in_features, "in_features", self.name)
        self.out_features = positive_int(out_features, "out_features", self.name)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: activation must be None or 'relu', got {activation!r}")
        self.activation = activation
        self.init = init  # None: the scheme is chosen by what follows the layer (Sequential)
        self._cache = None
        self.reset_parameters(make_rng(seed), init or ("he" if activation == "relu" else "xavier"))

    def reset_parameters(self, rng, init="he"):
        shape = (self.out_features, self.in_features)
        self.params = {"W": self._init_weight(rng, shape, self.in_features, self.out_features, init),
                       "b": self._zeros((self.out_features,))}
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            fix = (f"set in_features to {input_shape[0]}" if len(input_shape) == 1
                   else "add a Flatten before a Dense layer?")
            raise ValueError(f"{self.name}: expected input ({self.in_features},), "
                             f"got {tuple(input_shape)} ({fix})")
        return (self.out_features,)

    def forward(self, x):
        self.check_input(x, rank=2, channels=self.in_features)
        z = self.backend.matmul(x, self.params["W"].T)
        y = self.backend.bias_activation(z, self.params["b"], self.activation == "relu")
        self._cache = (x, y)
        return self._record_output(y)

    def backward(self, dy):
        """With δ = dL/dZ (= dL/dY ⊙ 1[Z > 0] when ReLU is fused), seed 000 §1.3.2 per batch:

            dL/dW = δ^T x      (dW[j,k] = Σ_n δ[n,j] x[n,k]; seed 001 eq. 8)
            dL/db = Σ_n δ[n]
            dL/dx = δ W        (seed 001 eq. 7)
        """
        self.check_grad(dy)
        x, y = self._cache
        delta = self.backend.relu_backward(dy, y) if self.activation == "relu" else dy
        self.grads["W"] = self.backend.matmul(delta.T, x)
        self.grads["b"] = delta.sum(axis=0)
        return self.backend.matmul(delta, self.params["W"])
