"""Element-wise activations and softmax (seed 000 §1.2, seed 001 §2, seed 003 §I)."""

from __future__ import annotations

from ..shapes import is_int
from .base import Layer


class _Activation(Layer):
    def __init__(self, dtype="float32"):
        super().__init__(dtype)
        self._cache = None

    def _check(self, x):
        self.check_input(x)


class ReLU(_Activation):
    """R(z) = max(z, 0) (seed 001 eq. 9).

    ReLU'(0): seed 001 eq. 10 takes 1/2, seed 004 takes 1 (it passes dL/dy where y >= 0),
    seeds 002 and 003 leave it undefined (they list z > 0 and z < 0 only). We take
    ReLU'(0) = 0, as PyTorch and most libraries do: the subgradient at a kink is a convention,
    0 keeps dead units exactly dead, and it matches the oracle we compare against.
    tests/test_seed_examples.py pins it.
    """

    def forward(self, x):
        self._check(x)
        y = self.xp.maximum(x, 0)
        self._cache = y
        return self._record_output(y)

    def backward(self, dy):
        """dL/dz = dL/dR ⊙ 1[z > 0]  (seed 001 eq. 10 with the 0 convention at z = 0)."""
        self.check_grad(dy)
        return self.backend.relu_backward(dy, self._cache)


class Sigmoid(_Activation):
    """σ(z) = 1 / (1 + e^{-z}), evaluated without overflow or cancellation for any z."""

    def forward(self, x):
        self._check(x)
        y = sigmoid(self.xp, x)
        self._cache = y
        return self._record_output(y)

    def backward(self, dy):
        """dL/dz = dL/dσ ⊙ σ(1 - σ)  (seed 003 §I.2, item 11)."""
        self.check_grad(dy)
        y = self._cache
        return dy * y * (1 - y)


class Tanh(_Activation):
    """tanh(z)."""

    def forward(self, x):
        self._check(x)
        y = self.xp.tanh(x)
        self._cache = y
        return self._record_output(y)

    def backward(self, dy):
        """dL/dz = dL/dt ⊙ (1 - t²)."""
        self.check_grad(dy)
        y = self._cache
        return dy * (1 - y * y)


class Identity(_Activation):
    """I(z) = z."""

    def forward(self, x):
        self._check(x)
        return self._record_output(x)

    def backward(self, dy):
        """dL/dz = dL/dI."""
        self.check_grad(dy)
        return dy


class Softmax(_Activation):
    """S_i(z) = e^{z_i} / Σ_k e^{z_k} along ``axis`` (default 1: features, or NCHW channels).

    Computed as e^{z_i - m} / Σ_k e^{z_k - m} with m = max_k z_k, which is equal and never
    overflows. For training a classifier prefer ``losses.SoftmaxCrossEntropy`` on the logits:
    it fuses the two and its gradient is the simple p - y (seed 001 eq. 15).
    """

    config_keys = ("axis",)

    def __init__(self, axis=1, dtype="float32"):
        super().__init__(dtype)
        if not is_int(axis):
            raise ValueError(f"{self.name}: axis must be an integer, got {axis!r}")
        self.axis = int(axis)

    def output_shape(self, input_shape):
        rank = len(input_shape) + 1  # with the batch axis
        if not -rank <= self.axis < rank:
            raise ValueError(f"Softmax: axis {self.axis} is out of range for a batch of shape "
                             f"(N, {', '.join(map(str, input_shape))}); use 1 for the "
                             f"features or channels")
        return tuple(input_shape)

    def forward(self, x):
        self._check(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"Softmax: axis {self.axis} is out of range for shape {tuple(x.shape)}")
        y = softmax(self.xp, x, self.axis)
        self._cache = y
        return self._record_output(y)

    def backward(self, dy):
        """Full Jacobian-vector product (seed 003 §I.1 eq. 4: ∂S_i/∂z_k = S_i(δ_ik - S_k)):

            dL/dz_k = Σ_i dL/dS_i · S_i (δ_ik - S_k) = S_k (dL/dS_k - Σ_i dL/dS_i S_i)
        """
        self.check_grad(dy)
        s = self._cache
        return s * (dy - (dy * s).sum(axis=self.axis, keepdims=True))


def sigmoid(xp, z):
    """σ(z) with e = exp(-|z|) ≤ 1: 1/(1+e) for z ≥ 0 and e/(1+e) for z < 0 (both exact forms)."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1, e) / (1 + e)


def softmax(xp, z, axis):
    shifted = z - z.max(axis=axis, keepdims=True)
    e = xp.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)
