"""Data augmentation (seed 000 §1.5.2: "add data with distortions"), run on the model's device.

Random choices for a whole epoch are drawn on the host from an explicit seed in one go and
moved to the device once; each batch then only indexes into them, so augmentation costs no
host-device copy per step and replays exactly under the same seed.
"""

from __future__ import annotations


class Augment:
    """Random horizontal flips (probability ``flip``) and random translations of up to
    ``shift`` pixels in each direction (zero padding, then a crop back to the input size)."""

    def __init__(self, flip: float = 0.0, shift: int = 0):
        if not 0 <= flip <= 1 or shift < 0:
            raise ValueError(f"Augment: need 0 <= flip <= 1 and shift >= 0, got {flip}, {shift}")
        self.flip, self.shift = float(flip), int(shift)

    def config(self) -> dict:
        return {"flip": self.flip, "shift": self.shift}

    def plan(self, n: int, rng, backend):
        """Random parameters for n examples: (flip flags, row shifts, column shifts)."""
        flips = rng.random(n) < self.flip
        shifts = rng.integers(0, 2 * self.shift + 1, size=(2, n))
        return backend.asarray(flips), backend.asarray(shifts[0]), backend.asarray(shifts[1])

    def apply(self, x, plan, backend):
        """Transform the batch ``x`` (N, C, H, W) with its slice of the plan."""
        xp = backend.xp
        flips, dy, dx = plan
        if self.flip:
            x = xp.where(flips[:, None, None, None], x[:, :, :, ::-1], x)
        if self.shift:
            x = self._translate(xp, x, dy, dx)
        return x

    def _translate(self, xp, x, dy, dx):
        n, c, h, w = x.shape
        s = self.shift
        padded = xp.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
        rows = (dy[:, None] + xp.arange(h)[None, :])[:, None, :, None]   # (N, 1, H, 1)
        cols = (dx[:, None] + xp.arange(w)[None, :])[:, None, None, :]   # (N, 1, 1, W)
        batch = xp.arange(n)[:, None, None, None]
        chans = xp.arange(c)[None, :, None, None]
        return padded[batch, chans, rows, cols]
