"""The CPU backend's Adam update against base.py's, per call (float32, microseconds).

1. one parameter of each size: the backend's update (threaded above LARGE_ADAM_PARAMETER,
   m kept free of subnormals) against base.py's xp form;
2. a whole Adam step of each preset (random gradients);
3. base.py's update when 20% of m is subnormal (a dead unit's m after ~800 steps at β1 = 0.9;
   no weight decay, which would give those units a gradient).
Each figure is the best of 5 rounds of 200 calls (50 in part 3).

    python benchmarks/cpu_optim.py
"""

from __future__ import annotations

import time

import numpy as np

from cnnx import models, optim
from cnnx.backends import Backend, get_backend

CPU = get_backend("cpu")
ARGS = (1e-3, (0.9, 0.999), 1e-8, 1e-4, False)  # lr, betas, eps, weight decay, decoupled
NO_DECAY = (1e-3, (0.9, 0.999), 1e-8, 0.0, False)


def arrays(size: int, dead: float = 0.0):
    rng = np.random.default_rng(0)
    w, g, m = (rng.standard_normal(size).astype(np.float32) for _ in range(3))
    v = rng.random(size).astype(np.float32)
    zero = rng.random(size) < dead
    g[zero], m[zero] = 0, 1e-39  # no gradient, and m already subnormal
    return w, g, m, v


def microseconds(update, size: int, calls: int = 200, dead: float = 0.0, args=ARGS) -> float:
    best = float("inf")
    for _ in range(5):
        w, g, m, v = arrays(size, dead)
        start = time.perf_counter()
        for step in range(1, calls + 1):
            update(w, g, m, v, *args, step)
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def base_update(*args):
    Backend.adam_update(CPU, *args)


def main() -> None:
    print("| numbers | backend (µs) | base.py (µs) |\n|---:|---:|---:|")
    for size in (4096, 18432, 36864, 73728, 147456, 200704, 401408):
        print(f"| {size:,} | {microseconds(CPU.adam_update, size):,.0f} "
              f"| {microseconds(base_update, size):,.0f} |", flush=True)
    print("\n| preset | parameters | Adam step (ms) |\n|---|---:|---:|")
    for name in ("reference", "fmnist-small", "fmnist-bn"):
        model = models.build(name)
        rng = np.random.default_rng(0)
        for _, layer, key in model.parameters():
            layer.grads[key] = rng.standard_normal(layer.params[key].shape).astype(np.float32)
        opt = optim.Adam(model, lr=1e-3, weight_decay=1e-4)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(100):
                opt.step()
            best = min(best, (time.perf_counter() - start) / 100 * 1e3)
        count = sum(layer.params[key].size for _, layer, key in model.parameters())
        print(f"| {name} | {count:,} | {best:.3f} |", flush=True)
    size = 200704
    clean, subnormal, ours = (microseconds(update, size, 50, dead, NO_DECAY) for update, dead in
                              ((base_update, 0.0), (base_update, 0.2), (CPU.adam_update, 0.2)))
    print(f"\n{size:,} numbers, no weight decay: base.py {clean:,.0f} µs; with 20% of m "
          f"subnormal {subnormal:,.0f} µs; the backend's, same case: {ours:,.0f} µs")

if __name__ == "__main__":
    main()
