"""Data augmentation (seed 000 §1.5.2: "add data with distortions"), run on the model's device.

Random choices for a whole epoch are drawn on the host from an explicit seed in one go and
moved to the device once; each batch then only indexes into them, so augmentation costs no
host-device copy per step and replays exactly under the same seed.
"""

from __future__ import annotations

import math

from .layers.base import is_number
from .shapes import is_int


class Augment:
    """Random horizontal flips (probability ``flip``) and random translations of up to
    ``shift`` pixels in each direction: the image moves and the pixels it uncovers take the
    value ``fill`` (a number, or one per channel).

    ``fill`` is black in the images' own units: 0 for images in [0, 1], but ``-mean / std``
    per channel for standardized ones (``cnnx train`` passes that), whose 0 is the mean gray.
    """

    def __init__(self, flip: float = 0.0, shift: int = 0, fill=0.0):
        if not (is_number(flip) and 0 <= flip <= 1 and is_int(shift) and shift >= 0):
            raise ValueError(f"Augment: need a probability 0 <= flip <= 1 and a whole number of "
                             f"pixels shift >= 0, got flip={flip!r}, shift={shift!r}")
        fill = tuple(float(v) for v in (fill if hasattr(fill, "__len__") else [fill]))
        if not fill or not all(math.isfinite(v) for v in fill):
            raise ValueError(f"Augment: fill must be a finite number or one per channel, got {fill}")
        self.flip, self.shift, self.fill = float(flip), int(shift), fill

    def config(self) -> dict:
        return {"flip": self.flip, "shift": self.shift, "fill": list(self.fill)}

    def __repr__(self) -> str:
        fill = self.fill[0] if len(self.fill) == 1 else self.fill
        return f"Augment(flip={self.flip!r}, shift={self.shift!r}, fill={fill!r})"

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
        """Each image framed by ``shift`` pixels of fill, then cropped back to H x W at the
        offset (dy, dx) in [0, 2·shift]: a move by (shift - dy, shift - dx)."""
        n, c, h, w = x.shape
        s = self.shift
        if len(self.fill) not in (1, c):
            raise ValueError(f"Augment: fill has {len(self.fill)} values for images of {c} channels")
        if s >= min(h, w):  # some images would hold nothing but fill
            raise ValueError(f"Augment: a shift of {s} can move {h}x{w} images wholly out of "
                             f"their frame; give a shift below {min(h, w)}")
        padded = xp.empty((n, c, h + 2 * s, w + 2 * s), dtype=x.dtype)
        for channel in range(c):  # Python numbers: no per-channel array sent to the device
            padded[:, channel] = self.fill[channel % len(self.fill)]
        padded[:, :, s:s + h, s:s + w] = x
        rows = (dy[:, None] + xp.arange(h)[None, :])[:, None, :, None]   # (N, 1, H, 1)
        cols = (dx[:, None] + xp.arange(w)[None, :])[:, None, None, :]   # (N, 1, 1, W)
        batch = xp.arange(n)[:, None, None, None]
        chans = xp.arange(c)[None, :, None, None]
        return padded[batch, chans, rows, cols]
