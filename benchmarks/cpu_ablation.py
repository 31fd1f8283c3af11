"""Turn the CPU backend's fast paths off one at a time and measure what each is worth.

    python benchmarks/cpu_ablation.py                    # reference CNN, batches 16, 64, 256
    python benchmarks/cpu_ablation.py --model fmnist-bn --batches 128

Each variant is the library as shipped with one change undone (listed in VARIANTS), timed
interleaved with the shipped version round by round on the same real images
(benchmarks/cpu.py's ``interleaved``); the ratio is shipped / variant throughput, median over
rounds: 1.25 means the fast path makes the step 1.25x faster. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cnnx import config, losses, models, optim  # noqa: E402
from cnnx.backends import Backend, cpu_conv, cpu_threads  # noqa: E402
from cnnx.backends.numpy_backend import NumpyBackend  # noqa: E402
from cnnx.train import train_step  # noqa: E402
from cpu import cycling, data_batches, interleaved  # noqa: E402  (benchmarks/cpu.py)


class _NoLimit:
    """Stands in for ``cpu_threads.one_blas_thread``: leaves BLAS's thread count alone."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


@contextmanager
def patched(obj, **values):
    saved = {k: getattr(obj, k) for k in values}
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(obj, k, v)


def default_of(*names):
    """Replace the CPU backend's overrides ``names`` by base.py's defaults."""
    return lambda: patched(NumpyBackend, **{n: getattr(Backend, n) for n in names})


#: name -> (what is undone, a context manager factory that undoes it)
VARIANTS = {
    "conv default": ("base.py's im2col convolution (NCHW, col2im by scatter-add)",
                     default_of("conv2d_forward", "conv2d_backward", "conv2d_backward_params")),
    "pool default": ("base.py's max-pool (patch matrix, argmax, scatter)",
                     default_of("max_pool_forward", "max_pool_backward")),
    "batch norm default": ("base.py's batch norm (reductions over axes 0, 2, 3)",
                           default_of("batch_norm_forward", "batch_norm_backward")),
    "SGD default": ("base.py's SGD update (one thread, no subnormal flush)",
                    default_of("sgd_update")),
    "matmul default": ("dense layers through a plain a @ b", default_of("matmul")),
    "BLAS threads only": ("cnnx's own threads off; OpenBLAS threads its products as usual",
                          lambda: patched(cpu_threads, WORKERS=1, one_blas_thread=_NoLimit)),
    "small steps split": ("steps of <= SMALL_WORK outputs cut into pieces like larger ones",
                          lambda: patched(cpu_threads, SMALL_WORK=0)),
    "no GEMM blocks": ("each chunk's products in one call, not GEMM_COLUMNS-wide blocks",
                       lambda: patched(cpu_conv, GEMM_COLUMNS=1 << 30)),
    "always rebuild col": ("the column matrix rebuilt in backward even when small",
                           lambda: patched(cpu_conv, KEEP_COL_BYTES=0)),
    "never rebuild col": ("the column matrix kept from forward to backward at every size",
                          lambda: patched(cpu_conv, KEEP_COL_BYTES=1 << 40)),
}


def step_fn(model_name: str, batch: int, variant=None):
    model = models.build(model_name, seed=0)
    loss, opt = losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.01, momentum=0.9)
    next_batch = cycling(data_batches(batch))

    def step():
        with config.finite_checks(False):
            if variant is None:
                train_step(model, loss, opt, *next_batch())
            else:
                with variant():
                    train_step(model, loss, opt, *next_batch())
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=2048, help="images per timed round")
    parser.add_argument("--only", help="comma-separated variant names")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(VARIANTS)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"model {args.model}; ratio = shipped img/s / variant img/s, median of "
          f"{args.rounds} interleaved rounds\n")
    print("| variant (what is undone) | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    for name in names:
        what, variant = VARIANTS[name]
        cells = []
        for batch in batches:
            fns = {"variant": step_fn(args.model, batch, variant),
                   "shipped": step_fn(args.model, batch)}
            for fn in fns.values():
                for _ in range(2):
                    fn()
            t = interleaved(fns, max(2, args.images // batch), args.rounds)
            cells.append(f"{1 / t['ratio']:.2f}")  # ratio = t[shipped] / t[variant]
        print(f"| {name}: {what} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
