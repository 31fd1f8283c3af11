"""Dropout and global average pooling."""

from __future__ import annotations

from ..shapes import is_int
from .base import Layer, is_number


class Dropout(Layer):
    """Inverted dropout: in training, y = x ⊙ mask / (1 - p) with mask_i ~ Bernoulli(1 - p);
    in evaluation, y = x. The k-th training call draws its mask from the stream (seed, k), and
    k is a buffer, so a resumed run replays the same masks."""

    config_keys = ("p",)

    def __init__(self, p=0.5, seed=0, dtype="float32"):
        super().__init__(dtype)
        if not (is_number(p) and 0 <= p < 1):
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        if not (is_int(seed) and seed >= 0):
            raise ValueError(f"Dropout: seed must be an integer >= 0, got {seed!r}")
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
            self._cache = None  # no mask: backward passes dy through
            return self._record_output(x)
        keep = self.backend.uniform(x.shape, x.dtype, (self.seed, self.calls)) >= self.p
        self.calls += 1
        # the mask in x's dtype: bool / float would be a float64 array, cast at every use
        mask = keep.astype(x.dtype)
        mask *= 1 / (1 - self.p)  # the Python float rounded once to x's dtype, as before
        self._cache = mask
        return self._record_output(x * mask)

    def replayable_in_graph(self) -> bool:
        return self.p == 0  # a replay would reuse the mask drawn for (seed, calls) at capture

    def backward(self, dy):
        """dx = dy ⊙ mask / (1 - p) (training) or dy (evaluation)."""
        self.check_grad(dy)
        return dy if self._cache is None else dy * self._cache


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
        return self._record_output(x.mean(axis=(2, 3)))

    def backward(self, dy):
        """dx[n, c, h, w] = dy[n, c] / (H·W): every cell of the map gets an equal share."""
        self.check_grad(dy)
        n, c, h, w = self._cache
        return self.xp.broadcast_to((dy / (h * w))[:, :, None, None], self._cache).copy()
