"""Dropout and global average pooling."""

from __future__ import annotations

from ..shapes import real_number
from .base import Layer


class Dropout(Layer):
    """Inverted dropout: in training, y = x ⊙ mask / (1 - p) with mask_i ~ Bernoulli(1 - p);
    in evaluation, y = x. The k-th training call draws its mask from the stream (seed, k), and
    k is a buffer, so a resumed run replays the same masks."""

    config_keys = ("p",)

    def __init__(self, p=0.5, seed=0, dtype="float32"):
        super().__init__(dtype)
        p = real_number(p, "p", "Dropout")
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.seed = float(p), int(seed)
        self._cache = None

    # The call counter lives on the host (reading a device counter would stall a GPU every
    # step); it is exposed as a buffer so checkpoints save and restore it.
    @property
    def buffers(self) -> dict:
        return {"calls": self.backend.asarray(self.calls, dtype="int64")}

    @buffers.setter
    def buffers(self, value: dict) -> None:
        self.calls = int(value["calls"]) if "calls" in value else 0

    def reset_parameters(self, rng, init="he"):
        if rng is not None:  # a model seed gives each dropout layer its own stream
            self.seed = int(rng.integers(2**31))

    def forward(self, x):
        self.check_input(x)
        if not self.training or self.p == 0:
            self._cache = None
            return x
        keep = self.backend.uniform(x.shape, x.dtype, (self.seed, self.calls)) >= self.p
        self.calls += 1
        self._cache = keep / (1 - self.p)
        return x * self._cache.astype(x.dtype, copy=False)

    def replayable_in_graph(self) -> bool:
        return self.p == 0  # a replay would reuse the mask drawn for (seed, calls) at capture

    def backward(self, dy):
        """dx = dy ⊙ mask / (1 - p) (training) or dy (evaluation)."""
        return dy if self._cache is None else dy * self._cache.astype(dy.dtype, copy=False)


class GlobalAvgPool2D(Layer):
    """y[n, c] = (1/(H·W)) Σ_{h,w} x[n, c, h, w]: (N, C, H, W) -> (N, C)."""

    def __init__(self, dtype="float32"):
        super().__init__(dtype)
        self._cache = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"GlobalAvgPool2D: expected input (C, H, W), got {tuple(input_shape)}")
        return (input_shape[0],)

    def forward(self, x):
        self.check_input(x, rank=4)
        self._cache = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        """dx[n, c, h, w] = dy[n, c] / (H·W): every cell of the map gets an equal share."""
        self._require_forward(self._cache)
        n, c, h, w = self._cache
        return self.xp.broadcast_to((dy / (h * w))[:, :, None, None], self._cache).copy()
