"""CPU benchmark: cnnx on NumPy against PyTorch on the same machine, side by side.

    python benchmarks/cpu.py                 # everything (a few minutes on 2 cores)
    python benchmarks/cpu.py --quick         # fewer rounds, for a smoke run
    python benchmarks/cpu.py --no-rss --batches 64,256

Sections (markdown tables on stdout):
  1. training-step throughput (forward + backward + SGD momentum, float32) of the reference
     CNN for a batch sweep, cnnx vs PyTorch, with the median of per-round ratios;
  2. inference (forward only, eval mode) at batch 256;
  3. per-layer forward / backward times at one batch size;
  4. peak RSS of a one-epoch Fashion-MNIST training run, each framework in its own process.

The machine is shared and noisy, so every comparison is interleaved: each round times cnnx,
then PyTorch (the order alternates between rounds), and the ratio is taken within the round.
Only the median ratio means anything; absolute img/s move with the load. PyTorch runs with
``torch.set_num_threads(2)``; its columns are skipped when torch is not installed.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnnx import config, losses, models, optim  # noqa: E402
from cnnx.train import train_step  # noqa: E402

try:
    import torch
except ImportError:  # the PyTorch columns are optional
    torch = None

if torch is not None:
    torch.set_num_threads(2)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_torch as torch_twin  # noqa: E402  (benchmarks/cpu_torch.py: the PyTorch side)
from cpu_rss import peak_rss_table  # noqa: E402  (benchmarks/cpu_rss.py)


# ----------------------------------------------------------------------------- timing
def per_call_seconds(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def interleaved(fns: dict, reps: int, rounds: int) -> dict:
    """Median seconds per call of each function, timed in alternating order round by round,
    and ``ratio``: the median over rounds of t[last] / t[first] (> 1: the first is faster)."""
    names = list(fns)
    times = {name: [] for name in names}
    ratios = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(per_call_seconds(fns[name], reps))
        if len(names) == 2:
            ratios.append(times[names[1]][-1] / times[names[0]][-1])
    result = {name: statistics.median(ts) for name, ts in times.items()}
    result["ratio"] = statistics.median(ratios) if ratios else None
    return result


IMAGES = 8192  # distinct training images the timed steps cycle through


def dataset():
    """``(x, y)``: the first IMAGES Fashion-MNIST training images, standardized as ``cnnx
    train`` does, or random images with random labels when the dataset is not installed.

    Real data matters: repeating one batch drives the loss to 0, the gradients into float32
    denormals, and every framework's arithmetic into slow microcode (measured: -30% for cnnx).
    """
    try:
        from cnnx import data
        ds = data.load_dataset("fashion-mnist", download=False)
        x, y = ds.x_train[:IMAGES], ds.y_train[:IMAGES]
        return data.standardize(x, *data.channel_stats(x)), y.astype("int64")
    except Exception as exc:  # noqa: BLE001 - any failure: say so, use random data
        print(f"(Fashion-MNIST not available: {exc}; timing on random data)", file=sys.stderr)
        rng = numpy.random.default_rng(0)
        return (rng.standard_normal((IMAGES, 1, 28, 28)).astype("float32"),
                rng.integers(0, 10, IMAGES))


_DATA = None


def data_batches(batch: int) -> list:
    """The dataset cut into contiguous batches (cut once, so slicing is not timed)."""
    global _DATA
    if _DATA is None:
        _DATA = dataset()
    x, y = _DATA
    return [(numpy.ascontiguousarray(x[i:i + batch]), y[i:i + batch])
            for i in range(0, len(y) - batch + 1, batch)]


def cycling(items):
    """A function returning the next item of ``items`` on each call, round and round."""
    state = {"i": -1}

    def next_item():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]
    return next_item


def cnnx_model(batch: int):
    model = models.build("reference", seed=0)
    return model, losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.01, momentum=0.9)


def cnnx_step_fn(batch: int):
    model, loss, opt = cnnx_model(batch)
    next_batch = cycling(data_batches(batch))

    def step():
        with config.finite_checks(False):  # as fit() runs its steps
            train_step(model, loss, opt, *next_batch())
    return step


def cnnx_inference_fn(batch: int):
    model, _, _ = cnnx_model(batch)
    model.eval()
    next_batch = cycling(data_batches(batch))

    def forward():
        with config.finite_checks(False):
            model.forward(next_batch()[0])
    return forward


# ----------------------------------------------------------------------------- sections
def fmt_ratio(r) -> str:
    return "—" if r is None else f"{r:.2f}"


def step_sweep(batches, rounds: int, images_per_round: int) -> list[str]:
    lines = ["| batch | cnnx img/s | PyTorch img/s | cnnx / PyTorch (median of rounds) |",
             "|---:|---:|---:|---:|"]
    for batch in batches:
        fns = {"cnnx": cnnx_step_fn(batch)}
        if torch is not None:
            fns["torch"] = torch_twin.step_fn(data_batches(batch))
        for fn in fns.values():  # warm-up: first-call allocations, thread pools
            for _ in range(3):
                fn()
        t = interleaved(fns, max(2, images_per_round // batch), rounds)
        torch_rate = f"{batch / t['torch']:,.0f}" if "torch" in t else "—"
        lines.append(f"| {batch} | {batch / t['cnnx']:,.0f} | {torch_rate} | {fmt_ratio(t['ratio'])} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def inference(batch: int, rounds: int, images_per_round: int) -> list[str]:
    fns = {"cnnx": cnnx_inference_fn(batch)}
    if torch is not None:
        fns["torch"] = torch_twin.inference_fn(data_batches(batch))
    for fn in fns.values():
        for _ in range(3):
            fn()
    t = interleaved(fns, max(2, images_per_round // batch), rounds)
    torch_rate = f"{batch / t['torch']:,.0f}" if "torch" in t else "—"
    return ["| batch | cnnx img/s | PyTorch img/s | cnnx / PyTorch |", "|---:|---:|---:|---:|",
            f"| {batch} | {batch / t['cnnx']:,.0f} | {torch_rate} | {fmt_ratio(t['ratio'])} |"]


def recorded_inputs(model, loss, x, y):
    """Each layer's input and upstream gradient in a real step (so layouts are the real ones)."""
    inputs, grads = [], [None] * len(model.layers)
    a = x
    for layer in model.layers:
        inputs.append(a)
        a = layer.forward(a)
    loss.forward(a, y)
    g = loss.backward()
    for i in reversed(range(len(model.layers))):
        grads[i] = g
        g = model.layers[i].backward(g)
    return inputs, grads


def per_layer(batch: int, rounds: int) -> list[str]:
    model, loss, _ = cnnx_model(batch)
    x, y = data_batches(batch)[0]
    with config.finite_checks(False):
        inputs, grads = recorded_inputs(model, loss, x, y)
    twin = torch_twin.layer_fns(batch, inputs, grads) if torch is not None else None
    lines = [f"batch {batch}; milliseconds per call, median of {rounds} interleaved rounds", "",
             "| layer | cnnx fwd | PyTorch fwd | cnnx bwd | PyTorch bwd | fwd ratio | bwd ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    reps = max(2, 2048 // batch)
    for i, layer in enumerate(model.layers):
        fwd = {"cnnx": lambda layer=layer, a=inputs[i]: layer.forward(a)}
        # the first layer of a training step computes no input gradient (Sequential.backward)
        backward = layer.backward_params if i == 0 else layer.backward
        bwd = {"cnnx": lambda backward=backward, g=grads[i]: backward(g)}
        if twin is not None:
            fwd["torch"], bwd["torch"] = twin[i]
        with config.finite_checks(False):
            tf = interleaved(fwd, reps, rounds)
            layer.forward(inputs[i])
            tb = interleaved(bwd, reps, rounds)
        tt = (f"{tf['torch'] * 1e3:.3f}", f"{tb['torch'] * 1e3:.3f}") if twin else ("—", "—")
        lines.append(f"| {layer.describe()} | {tf['cnnx'] * 1e3:.3f} | {tt[0]} | "
                     f"{tb['cnnx'] * 1e3:.3f} | {tt[1]} | {fmt_ratio(tf['ratio'])} | "
                     f"{fmt_ratio(tb['ratio'])} |")
    return lines


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux): runs on two machines differ by it."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header() -> list[str]:
    blas = "?"
    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older NumPy: the BLAS name is only printed
        pass
    torch_text = f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else \
        "PyTorch not installed (its columns are skipped)"
    return [f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}",
            f"Python {platform.python_version()}, NumPy {numpy.__version__} ({blas}), {torch_text}",
            "ratio = cnnx throughput / PyTorch throughput (> 1: cnnx is faster)"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="16,32,64,128,256")
    parser.add_argument("--layers-batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 rounds, short rounds")
    parser.add_argument("--no-rss", action="store_true", help="skip the one-epoch RSS runs")
    parser.add_argument("--only", choices=["steps", "inference", "layers", "rss"])
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    images = 1024 if args.quick else 4096
    batches = [int(b) for b in args.batches.split(",")]
    sections = {
        "steps": ("Training step (img/s)", lambda: step_sweep(batches, rounds, images)),
        "inference": ("Inference, forward only", lambda: inference(256, rounds, images)),
        "layers": ("Per layer", lambda: per_layer(args.layers_batch, rounds)),
        "rss": ("Peak RSS, one epoch of Fashion-MNIST", peak_rss_table),
    }
    if args.no_rss:
        sections.pop("rss")
    print("\n".join(header()))
    for key, (title, run) in sections.items():
        if args.only and key != args.only:
            continue
        print(f"\n### {title}\n")
        print("\n".join(run()), flush=True)


if __name__ == "__main__":
    main()
