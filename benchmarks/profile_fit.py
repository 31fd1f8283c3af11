"""Profile one epoch of ``cnnx.fit`` (reference CNN, synthetic data) on a device, to find host
overhead that ``train_step`` alone does not show. Usage: python benchmarks/profile_fit.py cuda"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import numpy as np

from cnnx import fit, losses, models, optim
from cnnx.train import train_step


def main(device: str = "cpu", n: int = 8192, batch: int = 32) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n)
    model = models.build("reference").to(device)
    loss, opt = losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.01, momentum=0.9)
    fit(model, loss, opt, x[:256], y[:256], epochs=1, batch_size=batch)  # warm-up, compiles
    xb, yb = model.backend.asarray(x[:batch]), model.backend.asarray(y[:batch])
    start = time.perf_counter()
    for _ in range(200):
        train_step(model, loss, opt, xb, yb)
    model.backend.synchronize()
    print(f"train_step alone: {200 * batch / (time.perf_counter() - start):,.0f} img/s")
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    history = fit(model, loss, opt, x, y, epochs=1, batch_size=batch)
    profiler.disable()
    print(f"fit: {n / (time.perf_counter() - start):,.0f} img/s (fit says "
          f"{history[0]['images_per_second']:,.0f})")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cpu"]))
