"""Per-layer forward/backward milliseconds and whole-step img/s of any preset on the CPU.

    python benchmarks/cpu_layers.py fmnist-bn 128

One training step at a time (Adam, random images), each layer timed with perf_counter over 20
steps after 2 warm-up steps; the first layer computes no input gradient, as in training.
Used for the batch-norm entry of BENCHMARKS.md's CPU log. Not part of the test suite.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnnx import config, losses, models, optim  # noqa: E402


def main(name: str = "fmnist-bn", batch: int = 128, steps: int = 20) -> None:
    model = models.build(name)
    opt, loss = optim.Adam(model, lr=1e-3), losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    forward, backward, update = defaultdict(float), defaultdict(float), 0.0
    with config.finite_checks(False):
        for step in range(steps + 2):
            timed = step >= 2
            h = x
            for i, layer in enumerate(model.layers):
                start = time.perf_counter()
                h = layer.forward(h)
                forward[i] += (time.perf_counter() - start) * timed
            loss.forward(h, y)
            d = loss.backward()
            for i in reversed(range(len(model.layers))):
                start = time.perf_counter()
                if i == 0:
                    model.layers[0].backward_params(d)
                else:
                    d = model.layers[i].backward(d)
                backward[i] += (time.perf_counter() - start) * timed
            start = time.perf_counter()
            opt.step()
            update += (time.perf_counter() - start) * timed
    print(f"{name}, batch {batch}: milliseconds per step, mean of {steps} steps")
    for i, layer in enumerate(model.layers):
        print(f"{i:2d} {layer.describe():55s} fwd {forward[i] / steps * 1e3:7.2f}  "
              f"bwd {backward[i] / steps * 1e3:7.2f}")
    total = sum(forward.values()) + sum(backward.values()) + update
    print(f"optimizer {update / steps * 1e3:.2f} ms; step {total / steps * 1e3:.1f} ms "
          f"= {batch * steps / total:,.0f} img/s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fmnist-bn",
         int(sys.argv[2]) if len(sys.argv) > 2 else 128)
