"""A/B of CPU-backend settings on the reference CNN's training step, interleaved in one process.

    python benchmarks/cpu_ab.py 64,128 old:cpu_conv.KEEP_COL_BYTES=16777216 \\
                                       new:cpu_conv.KEEP_COL_BYTES=6291456

Each variant is ``name:module.CONSTANT=value[,module.CONSTANT=value...]`` over the modules of
``cnnx.backends`` (values are Python literals) and starts from the shipped values of every
constant any variant sets; the first variant is the baseline. Every
round runs each variant for a fixed time (order alternating between rounds) and the table
gives the median img/s and the median of the per-round ratios to the baseline, which is what
BENCHMARKS.md's CPU log quotes as "A/B". Not part of the test suite.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu  # noqa: E402  (benchmarks/cpu.py: the same model, data and step as the main table)


def parse_variant(text: str):
    """``name:mod.CONST=value,...`` -> (name, [(module, attribute, value)])."""
    name, _, assignments = text.partition(":")
    settings = []
    for item in filter(None, assignments.split(",")):
        target, _, value = item.partition("=")
        module_name, _, attribute = target.strip().rpartition(".")
        module = importlib.import_module(f"cnnx.backends.{module_name}")
        if not hasattr(module, attribute):
            raise SystemExit(f"cpu_ab: cnnx.backends.{module_name} has no {attribute}")
        settings.append((module, attribute, ast.literal_eval(value.strip())))
    return name, settings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", help="comma-separated batch sizes, e.g. 16,64")
    parser.add_argument("variants", nargs="+", help="name:module.CONSTANT=value[,...]")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.5, help="per variant per round")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    # every constant any variant sets, at its shipped value: each variant starts from these
    shipped = {(m, a): getattr(m, a) for _, settings in variants for m, a, _ in settings}
    for batch in [int(b) for b in args.batches.split(",")]:
        steps = {name: cpu.cnnx_step_fn(batch) for name, _ in variants}
        rates = {name: [] for name, _ in variants}
        for r in range(args.rounds):
            for name, settings in (variants if r % 2 == 0 else variants[::-1]):
                for (module, attribute), value in shipped.items():
                    setattr(module, attribute, value)
                for module, attribute, value in settings:
                    setattr(module, attribute, value)
                for _ in range(3):  # warm-up under the new setting
                    steps[name]()
                start, count = time.perf_counter(), 0
                while time.perf_counter() - start < args.seconds:
                    steps[name]()
                    count += 1
                rates[name].append(count * batch / (time.perf_counter() - start))
        for (module, attribute), value in shipped.items():
            setattr(module, attribute, value)
        base = variants[0][0]
        cells = [f"{name} {statistics.median(rates[name]):,.0f} img/s "
                 f"({statistics.median(a / b for a, b in zip(rates[name], rates[base])):.3f})"
                 for name, _ in variants]
        print(f"batch {batch}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
