"""Losses: ``forward(pred, target) -> scalar`` (mean reduction, as PyTorch), ``backward() -> dpred``.

The scalar is a 0-d array of the loss's backend (no host copy); ``float(loss)`` reads it.
A loss computes on the backend it was moved to with ``.to(device)`` (``fit``, ``evaluate`` and
``train_step`` move it to the model's), else on the backend whose arrays the predictions are.
"""

from __future__ import annotations

from . import config
from .backends import backend_of, get_backend
from .layers.activation import sigmoid


class Loss:
    """Base class: ``forward(pred, target)`` returns the loss (a 0-d array) and keeps what
    ``backward()`` needs to return dL/d(pred); calling the loss is its forward."""

    def __init__(self):
        self._cache = None
        self.backend = None  # set by .to(); None: found from the predictions' array type

    def to(self, device) -> "Loss":
        """Compute on ``device``'s backend; returns self. Needed where one device has two
        backends (the CUDA backend with kernels on and off): an array cannot tell them apart."""
        self.backend = get_backend(device)
        return self

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.name}()"

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def _setup(self, pred, target):
        """Validate ``pred`` and bring ``target`` onto pred's backend; returns (backend, target)."""
        backend = backend_of(pred) if self.backend is None else self.backend
        if not backend.owns(pred):
            raise ValueError(f"{self.name}: predictions are a {type(pred).__module__}."
                             f"{type(pred).__name__}, but the loss is on {backend.name}; move "
                             f"the loss with .to() or the predictions with backend.asarray")
        if pred.dtype not in ("float32", "float64"):  # no str(): 2 µs a call
            raise ValueError(f"{self.name}: predictions must be float32 or float64, got {pred.dtype}")
        if pred.ndim < 1 or pred.shape[0] == 0:
            raise ValueError(f"{self.name}: expected a non-empty batch, got shape {tuple(pred.shape)}")
        target = backend.asarray(target)
        if config.check_finite:
            xp = backend.xp
            if not bool(xp.isfinite(pred).all()):
                raise ValueError(f"{self.name}: predictions contain NaN or inf")
            # a NaN target slips through every range comparison and makes the loss NaN
            if target.dtype.kind in "fc" and not bool(xp.isfinite(target).all()):
                raise ValueError(f"{self.name}: targets contain NaN or inf")
        return backend, target

    def _require_forward(self):
        if self._cache is None:
            raise ValueError(f"{self.name}: backward called before forward")

    def _same_shape(self, pred, target, what):
        if tuple(target.shape) != tuple(pred.shape):
            # (N,) targets for (N, 1) predictions, say: the same numbers, another shape
            only_axes_of_one = ([d for d in target.shape if d != 1]
                                == [d for d in pred.shape if d != 1])
            hint = f"; reshape it: target.reshape{tuple(pred.shape)}" if only_axes_of_one else ""
            raise ValueError(f"{self.name}: {what} shape {tuple(target.shape)} does not match "
                             f"predictions {tuple(pred.shape)}{hint}")


class SoftmaxCrossEntropy(Loss):
    """J = (1/B) Σ_b -Σ_i y_i log softmax(z)_i  (seed 001 eqs. 13-14), fused with the softmax.

    ``pred``: logits (B, K). ``target``: integer labels (B,) in [0, K), or one-hot / soft
    label rows (B, K) of finite weights >= 0.
    """

    def forward(self, logits, target):
        backend, target = self._setup(logits, target)
        xp = backend.xp
        if logits.ndim != 2:
            raise ValueError(f"{self.name}: expected logits (batch, classes), got {tuple(logits.shape)}")
        batch, classes = logits.shape
        if target.ndim == 1:
            if target.shape[0] != batch:
                raise ValueError(f"{self.name}: {target.shape[0]} labels for a batch of {batch}")
            if target.dtype.kind not in "iu":
                raise ValueError(f"{self.name}: labels must be integers, got {target.dtype}")
            if config.check_finite and (bool((target < 0).any()) or bool((target >= classes).any())):
                bad = backend.to_numpy(target)
                raise ValueError(f"{self.name}: labels must lie in [0, {classes}), got values "
                                 f"from {bad.min()} to {bad.max()}")
            loss, grad = backend.softmax_cross_entropy(logits, target)
        else:
            if target.shape == (batch, 1) and classes != 1:  # labels as a column, not one-hot
                raise ValueError(f"{self.name}: targets of shape {tuple(target.shape)} for "
                                 f"{classes} classes: give integer labels as a vector of shape "
                                 f"({batch},), e.g. y.ravel(), or one-hot rows ({batch}, {classes})")
            self._same_shape(logits, target, "one-hot target")
            target = target.astype(logits.dtype, copy=False)
            if config.check_finite and bool((target < 0).any()):
                raise ValueError(f"{self.name}: one-hot / soft targets must be >= 0 (weights of "
                                 f"the classes), got a negative one")
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_total = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
            log_p = shifted - log_total
            loss = (target * (log_total - shifted)).sum() / batch  # Σ y (-log p): +0, never -0
            grad = (xp.exp(log_p) * target.sum(axis=1, keepdims=True) - target) / batch
        self._cache = grad
        return loss

    def backward(self):
        """dJ/dz = (p - y) / B  (seed 001 eq. 15 with the 1/B of eq. 13; for rows of y that do
        not sum to 1 the exact form p·Σ_i y_i - y is used)."""
        self._require_forward()
        return self._cache


class BinaryCrossEntropy(Loss):
    """J = -(1/n) Σ [y log σ(z) + (1 - y) log(1 - σ(z))] on logits z (seed 000 §1.3.3, seed 002).

    Evaluated stably as max(z, 0) - z·y + log(1 + e^{-|z|}). ``target`` has pred's shape,
    values in [0, 1]; n is the number of elements (PyTorch's BCEWithLogitsLoss, mean).
    """

    def forward(self, logits, target):
        backend, target = self._setup(logits, target)
        xp = backend.xp
        self._same_shape(logits, target, "target")
        target = target.astype(logits.dtype, copy=False)
        if config.check_finite and (bool((target < 0).any()) or bool((target > 1).any())):
            raise ValueError(f"{self.name}: targets must lie in [0, 1]")
        terms = xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))
        self._cache = (sigmoid(xp, logits) - target) / logits.size
        return terms.mean()

    def backward(self):
        """dJ/dz = (σ(z) - y) / n  (seed 000 §1.3.3: dL/dz = a - y, averaged)."""
        self._require_forward()
        return self._cache


class MSE(Loss):
    """J = (1/n) Σ (pred - target)²  over all n elements (seed 004's squared error, averaged;
    seed 003 §I.2 halves it, which would halve the gradient below)."""

    def forward(self, pred, target):
        backend, target = self._setup(pred, target)
        self._same_shape(pred, target, "target")
        diff = pred - target.astype(pred.dtype, copy=False)
        self._cache = 2 * diff / pred.size
        return (diff * diff).mean()

    def backward(self):
        """dJ/dpred = 2 (pred - target) / n."""
        self._require_forward()
        return self._cache


LOSS_TYPES = {cls.__name__: cls for cls in (SoftmaxCrossEntropy, BinaryCrossEntropy, MSE)}
