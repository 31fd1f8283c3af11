"""GPU benchmark of the CUDA backend: our RawKernels vs the pure-CuPy path vs PyTorch.

    PYTHONPATH=. python3 benchmarks/gpu.py            # all sections (benchmarks/gpu_run.sh)
    PYTHONPATH=. python3 benchmarks/gpu.py --quick    # fewer steps, for a smoke run

Sections (markdown tables on stdout):
  1. training-step throughput (img/s) of the reference CNN at batch 64, 256, 1024 for
     (a) cnnx with kernels, (b) cnnx with kernels off, (c) PyTorch eager with cuDNN,
     (d) cnnx with kernels, each step replayed from a CUDA graph (cnnx/graph.py), and
     (e) PyTorch's whole step in a CUDA graph;
  2. per-op time, our kernel vs the pure-xp path, reference-CNN shapes;
  3. kernel compile cost: first use in a fresh process with an empty and a warm CuPy cache.

Timing: GPU work is asynchronous, so every measurement synchronizes before starting and
stopping the clock; per-op times are CUDA events around many back-to-back calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import cupy
import numpy

from cnnx import config, losses, models, optim
from cnnx.backends import Window, get_backend
from cnnx.graph import GraphedTrainStep
from cnnx.train import train_step

CONV = Window(3, 3, 1, 1, 1, 1, 1, 1)
POOL = Window(2, 2, 2, 2)


def device_line() -> str:
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    driver = cupy.cuda.runtime.driverGetVersion()
    return (f"{name}, compute capability {props['major']}.{props['minor']}, CUDA driver {driver}, "
            f"CuPy {cupy.__version__}, NumPy {numpy.__version__}")


# ----------------------------------------------------------------------------- training steps
def random_batch(batch: int):
    rng = numpy.random.default_rng(0)
    return (rng.standard_normal((batch, 1, 28, 28)).astype("float32"),
            rng.integers(0, 10, batch))


def cnnx_step(backend, batch: int, cuda_graph: bool = False):
    model = models.build("reference", seed=0).to(backend)
    opt = optim.SGD(model, lr=0.01, momentum=0.9)
    loss_fn = losses.SoftmaxCrossEntropy()
    x, y = random_batch(batch)
    xb, yb = backend.asarray(x), backend.asarray(y)
    if cuda_graph:  # warm-up and capture happen in images_per_second's untimed steps
        graphed = GraphedTrainStep(model, loss_fn, opt)
        return lambda: graphed(xb, yb)
    return lambda: train_step(model, loss_fn, opt, xb, yb)  # loss stays on the GPU


def torch_reference(batch: int):
    """PyTorch's reference CNN on the GPU: (model, SGD momentum 0.9, loss, images, labels)."""
    import torch
    from torch import nn

    torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithms
    torch.backends.cudnn.allow_tf32 = False  # full float32, like cnnx (CuPy does not use TF32)
    torch.backends.cuda.matmul.allow_tf32 = False
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10),
    ).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = random_batch(batch)
    return model, opt, nn.CrossEntropyLoss(), torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()


def torch_step(batch: int):
    model, opt, loss_fn, xb, yb = torch_reference(batch)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()

    return step


def torch_graph_step(batch: int):
    """PyTorch's whole step (forward, backward, SGD) captured in one CUDA graph, the way
    PyTorch's documentation shows (warm-up on a side stream, then torch.cuda.graph)."""
    import torch

    model, opt, loss_fn, xb, yb = torch_reference(batch)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss_fn(model(xb), yb).backward()
        opt.step()
    return graph.replay


def images_per_second(step, sync, batch: int, steps: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of batch*steps / wall time, synchronized at both ends."""
    for _ in range(5):  # warm-up: kernel compiles, cuDNN autotuning, memory pool growth
        step()
    sync()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def _measured(name: str, batch: int, make_step, sync, steps: int) -> float:
    """img/s of ``make_step()``'s step, or NaN (and the error on stderr) when it fails: one
    broken column must not cost the rest of the table."""
    try:
        return images_per_second(make_step(), sync, batch, steps)
    except Exception as exc:
        print(f"{name} at batch {batch} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return float("nan")


def throughput_table(batches, quick: bool) -> list[str]:
    on, off = get_backend("cuda", kernels=True), get_backend("cuda", kernels=False)
    try:
        import torch
        torch_sync = torch.cuda.synchronize
    except ImportError:
        torch = torch_sync = None
    rows = ["| batch | (a) cnnx, kernels | (b) kernels off | (d) kernels + CUDA graph "
            "| (c) PyTorch eager cuDNN | (e) PyTorch CUDA graph | a / b | d / a | a / c | d / c "
            "| d / e |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for batch in batches:
        steps = max(10, (2000 if quick else 12800) // batch)
        with config.finite_checks(False):
            a = _measured("cnnx kernels", batch, lambda: cnnx_step(on, batch), on.synchronize,
                          steps)
            b = _measured("cnnx kernels off", batch, lambda: cnnx_step(off, batch),
                          off.synchronize, steps)
            d = _measured("cnnx CUDA graph", batch, lambda: cnnx_step(on, batch, cuda_graph=True),
                          on.synchronize, steps)
        if torch is not None:
            c = _measured("PyTorch eager", batch, lambda: torch_step(batch), torch_sync, steps)
            e = _measured("PyTorch graph", batch, lambda: torch_graph_step(batch), torch_sync,
                          steps)
        else:
            c = e = float("nan")
        rows.append(f"| {batch} | {a:,.0f} | {b:,.0f} | {d:,.0f} | {c:,.0f} | {e:,.0f} "
                    f"| {a / b:.2f}x | {d / a:.2f}x | {a / c:.2f} | {d / c:.2f} | {d / e:.2f} |")
        print(rows[-1], file=sys.stderr, flush=True)  # progress
    return rows


# ----------------------------------------------------------------------------- per-op times
def op_cases(batch: int):
    """(op, shape text, function of a backend) for the reference CNN's hot paths."""
    rng = cupy.random.default_rng(1)

    def r(*shape):
        return rng.standard_normal(shape, dtype="float32")

    x1, x2, p1 = r(batch, 1, 28, 28), r(batch, 16, 14, 14), r(batch, 16, 28, 28)
    dcol2, z1, dy1 = r(batch * 196, 144), r(batch * 784, 16), r(batch * 784, 16)
    y1, arg1 = get_backend("cuda", kernels=False).max_pool_forward(p1, POOL)
    dyp = r(*y1.shape)
    logits, labels = r(batch, 10), rng.integers(0, 10, batch)
    w, g, v = r(128, 1568), r(128, 1568), r(128, 1568)
    m, s = r(128, 1568), cupy.abs(r(128, 1568))  # Adam's moments (s: second, non-negative)
    shape = f"({batch},16,28,28) k2s2"
    w2, b2 = r(32, 16, 3, 3), r(32)
    pure = get_backend("cuda", kernels=False)
    y2, saved2 = pure.conv2d_forward(x2, w2, b2, CONV, True)
    dy2 = r(*y2.shape)
    return [
        ("conv2 forward (layer)", f"({batch},16,14,14)->32",
         lambda b: b.conv2d_forward(x2, w2, b2, CONV, True)),
        ("conv2 backward (layer)", f"({batch},32,14,14)->16",
         lambda b: b.conv2d_backward(dy2, saved2, w2, CONV, True)),
        ("im2col conv1", f"({batch},1,28,28) k3p1", lambda b: b.im2col(x1, CONV)),
        ("im2col conv2", f"({batch},16,14,14) k3p1", lambda b: b.im2col(x2, CONV)),
        ("col2im conv2", f"({batch * 196},144)", lambda b: b.col2im(dcol2, x2.shape, CONV)),
        ("bias+ReLU conv1", f"({batch * 784},16)", lambda b: b.bias_activation(z1, z1[0], True)),
        ("ReLU backward conv1", f"({batch * 784},16)", lambda b: b.relu_backward(dy1, z1)),
        ("max-pool forward", shape, lambda b: b.max_pool_forward(p1, POOL)),
        ("max-pool backward", shape, lambda b: b.max_pool_backward(dyp, arg1, p1.shape, POOL)),
        ("avg-pool forward", shape, lambda b: b.avg_pool_forward(p1, POOL)),
        ("avg-pool backward", shape, lambda b: b.avg_pool_backward(dyp, p1.shape, POOL)),
        ("softmax CE fwd+grad", f"({batch},10)", lambda b: b.softmax_cross_entropy(logits, labels)),
        ("SGD momentum update", "(128,1568)", lambda b: b.sgd_update(w, g, v, 0.01, 0.9, 0.0)),
        ("Adam update", "(128,1568)",
         lambda b: b.adam_update(w, g, m, s, 1e-3, (0.9, 0.999), 1e-8, 0.0, False, 10)),
    ]


def microseconds_per_call(fn, calls: int = 100) -> float:
    for _ in range(3):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    cupy.cuda.Device().synchronize()
    start.record()
    for _ in range(calls):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) * 1000 / calls


def op_table(batches) -> list[str]:
    on, off = get_backend("cuda", kernels=True), get_backend("cuda", kernels=False)
    rows = ["| op | shape | kernel (µs) | pure xp (µs) | speed-up |", "|---|---|---:|---:|---:|"]
    for batch in batches:
        for name, shape, fn in op_cases(batch):
            k = microseconds_per_call(lambda: fn(on))
            p = microseconds_per_call(lambda: fn(off))
            rows.append(f"| {name} | {shape} | {k:,.1f} | {p:,.1f} | {p / k:.1f}x |")
    return rows


# ----------------------------------------------------------------------------- compile cost
FIRST_USE = """
import time, cupy
from cnnx.backends import Window, get_backend
b = get_backend("cuda")
x = cupy.zeros((1, 1, 4, 4), "float32"); b.synchronize()
t = time.perf_counter(); b.im2col(x, Window(2, 2, 1, 1)); b.synchronize()
print(f"{(time.perf_counter() - t) * 1000:.1f}")
"""


def first_use_ms() -> list[str]:
    """First im2col in a fresh process: compile (empty cache), then load (warm cache)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "CUPY_CACHE_DIR": cache}
        times = [subprocess.run([sys.executable, "-c", FIRST_USE], env=env, check=True,
                                capture_output=True, text=True).stdout.strip() for _ in range(2)]
    return ["| first im2col in a new process | ms |", "|---|---:|",
            f"| empty CuPy kernel cache (NVRTC compile of conv.cu) | {times[0]} |",
            f"| warm cache (second process) | {times[1]} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--op-batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--sections", nargs="+", choices=["steps", "ops", "compile"],
                        default=["steps", "ops", "compile"])
    args = parser.parse_args()
    print(f"device: {device_line()}\n")
    if "steps" in args.sections:
        print("Training step, reference CNN, float32, SGD momentum 0.9 "
              "(median of 5 timed runs):\n")
        print("\n".join(throughput_table(args.batches, args.quick)) + "\n")
    if "ops" in args.sections:
        print("Per op, float32, CUDA events over 100 back-to-back calls "
              "(launch overhead included):\n")
        print("\n".join(op_table(args.op_batches)) + "\n")
    if "compile" in args.sections:
        print("Kernel compile cost:\n")
        print("\n".join(first_use_ms()))


if __name__ == "__main__":
    main()
