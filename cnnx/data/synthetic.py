"""A procedurally generated dataset that needs nothing external: ten classes of simple shapes
and stripe patterns on 28x28 grey images, with random position, size, contrast and noise.

Deterministic from the seed; learnable (a small CNN separates the classes in one epoch), so it
serves for smoke tests, examples and CI where no real dataset is available.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = [
    "horizontal stripes", "vertical stripes", "diagonal stripes", "anti-diagonal stripes",
    "square", "ring", "disc", "plus", "cross", "checkerboard",
]
SIZE = 28


def make_synthetic(n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> dict:
    """``x_train, y_train, x_test, y_test`` (float32 NCHW in [0, 1], int64) and class names."""
    if n_train < 1 or n_test < 1:
        raise ValueError("the synthetic dataset needs at least one training and one test image")
    rng = np.random.default_rng(seed)
    x_train, y_train = _make_split(n_train, rng)
    x_test, y_test = _make_split(n_test, rng)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "class_names": list(CLASS_NAMES)}


def _make_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    images = np.empty((n, 1, SIZE, SIZE), dtype=np.float32)
    for k in range(len(CLASS_NAMES)):
        index = np.flatnonzero(labels == k)
        images[index, 0] = _draw(k, len(index), rng)
    return images, labels


def _draw(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` images of class ``k``: a shape mask times a random contrast, plus Gaussian noise."""
    grid = np.arange(SIZE, dtype=np.float32)
    dy = grid[None, :, None] - rng.uniform(10, 18, (n, 1, 1)).astype(np.float32)
    dx = grid[None, None, :] - rng.uniform(10, 18, (n, 1, 1)).astype(np.float32)
    r = rng.uniform(5, 9, (n, 1, 1)).astype(np.float32)
    period = rng.uniform(3.5, 6, (n, 1, 1)).astype(np.float32)
    mask = _shape(k, dy, dx, r, period)
    contrast = rng.uniform(0.6, 1.0, (n, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 0.1, (n, SIZE, SIZE)).astype(np.float32)
    return np.clip(mask * contrast + noise, 0, 1)


def _shape(k, dy, dx, r, period) -> np.ndarray:
    box = (np.abs(dy) < r) & (np.abs(dx) < r)
    dist = np.sqrt(dy * dy + dx * dx)
    thin = 1.5
    masks = {
        0: lambda: box & (np.sin(2 * np.pi * dy / period) > 0),
        1: lambda: box & (np.sin(2 * np.pi * dx / period) > 0),
        2: lambda: box & (np.sin(2 * np.pi * (dx + dy) / period) > 0),
        3: lambda: box & (np.sin(2 * np.pi * (dx - dy) / period) > 0),
        4: lambda: box,
        5: lambda: np.abs(dist - r) < thin,
        6: lambda: dist < r,
        7: lambda: box & ((np.abs(dx) < thin) | (np.abs(dy) < thin)),
        8: lambda: box & ((np.abs(dx - dy) < thin) | (np.abs(dx + dy) < thin)),
        9: lambda: box & ((np.floor(dx / (period / 2)) + np.floor(dy / (period / 2))) % 2 == 0),
    }
    return masks[k]().astype(np.float32)
