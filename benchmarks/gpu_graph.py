"""CUDA-graph probe for issue 3's stretch (``--cuda-graph``), to run on a GPU before building it.

    PYTHONPATH=. python3 benchmarks/gpu_graph.py [--batches 64 256 1024] [--quick]

It answers, in one run, what the feature's design depends on:
  1. Does CuPy allow a cuBLAS product (``cupy.matmul``) while a stream is being captured?
     CuPy refused library calls under capture when it added stream capture (cupy#4567, #6290).
  2. Can one whole training step of the reference CNN (forward, loss, backward, SGD update) be
     captured, and does replaying the graph compute what the eager step computes? Two ways
     to do the matrix products: ``cupy`` (as in eager mode) and ``raw-cublas`` (our own cuBLAS
     handle called through CuPy's thin bindings, which do not check for capture).
  3. Throughput of the replayed step beside the eager one (img/s), at each batch size, and
     PyTorch's whole step in a CUDA graph for reference.

Nothing in cnnx uses this file. How the capture is set up, and why:
  - a private CuPy memory pool serves the warm-up steps and the capture, and nothing else:
    the graph keeps using the addresses it was captured with, so no later allocation may be
    handed that memory;
  - three eager warm-up steps run first, on the capture stream: kernels compile, cuBLAS sets
    up, the pool caches a block of every size the step asks for (so the capture allocates
    from the cache instead of calling cudaMalloc, which a capture may not do);
  - the batch lives in static device buffers; a new batch is copied into them before a replay;
  - finite checks are off (they read a device value on the host: a synchronization);
  - the learning rate is a kernel argument, so it is baked into the graph (constant here).
"""

from __future__ import annotations

import argparse
import sys
import traceback

import cupy
import numpy

from cnnx import config, losses, models, optim
from cnnx.backends import get_backend
from cnnx.train import train_step
from gpu import images_per_second, random_batch, torch_reference  # benchmarks/gpu.py, beside this file

try:
    from cupy_backends.cuda.libs import cublas
except ImportError:  # older CuPy
    from cupy.cuda import cublas

OP_N, OP_T = 0, 1  # cublasOperation_t


def short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]


# ----------------------------------------------------------------------------- 1. cuBLAS probe
def cublas_under_capture() -> str:
    a = cupy.ones((64, 32), "float32")
    b = cupy.ones((32, 16), "float32")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        a @ b  # set cuBLAS up outside the capture
        stream.synchronize()
        stream.begin_capture()
        try:
            c = a @ b
            outcome = "ok"
        except Exception as exc:
            c, outcome = None, f"refused ({short(exc)})"
        try:
            graph = stream.end_capture()
        except Exception as exc:
            return f"{outcome}; end_capture failed ({short(exc)})"
        if c is not None:
            graph.launch(stream)
            stream.synchronize()
            outcome += f"; replay value {float(c[0, 0])} (expected 32.0)"
    return outcome


# ----------------------------------------------------------------------------- raw cuBLAS products
def _operand(x):
    """(array, cuBLAS op, leading dimension) for a row-major matrix read by column-major cuBLAS:
    a C-contiguous x is x^T to cuBLAS (op N gives x^T); an F-contiguous one is x (op T)."""
    if x.flags.c_contiguous:
        return x, OP_N, x.shape[1]
    if x.flags.f_contiguous:
        return x, OP_T, x.shape[0]
    x = cupy.ascontiguousarray(x)
    return x, OP_N, x.shape[1]


class RawCublasMatmul:
    """``a @ b`` for 2-D float arrays on our own cuBLAS handle: C^T = B^T A^T in cuBLAS's
    column-major terms, so the result comes out row-major without a copy."""

    def __init__(self):
        self.handle = cublas.create()
        self.pointer_scalars = None  # whether this CuPy's gemm takes alpha/beta as pointers

    def __call__(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.kind != "f":
            raise TypeError(f"raw-cublas matmul: unsupported {a.shape} {a.dtype} @ {b.shape} {b.dtype}")
        m, k = a.shape
        n = b.shape[1]
        a, op_a, ld_a = _operand(a)
        b, op_b, ld_b = _operand(b)
        c = cupy.empty((m, n), a.dtype)
        gemm = cublas.sgemm if a.dtype == numpy.float32 else cublas.dgemm
        one, zero = a.dtype.type(1), a.dtype.type(0)
        if self.pointer_scalars:
            alpha, beta = numpy.array(one), numpy.array(zero)  # host pointer mode: read at call
            gemm(self.handle, op_b, op_a, n, m, k, alpha.ctypes.data, b.data.ptr, ld_b,
                 a.data.ptr, ld_a, beta.ctypes.data, c.data.ptr, n)
        else:
            try:
                gemm(self.handle, op_b, op_a, n, m, k, float(one), b.data.ptr, ld_b,
                     a.data.ptr, ld_a, float(zero), c.data.ptr, n)
            except TypeError:
                if self.pointer_scalars is not None:
                    raise
                self.pointer_scalars = True
                return self(a, b)
            self.pointer_scalars = False
        return c


def check_raw_matmul(raw) -> str:
    rng = cupy.random.default_rng(3)
    worst = 0.0
    for (m, k, n) in [(7, 5, 3), (64, 1568, 128), (1, 9, 16)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k), dtype="float32")
                b = rng.standard_normal((n, k) if tb else (k, n), dtype="float32")
                a, b = (a.T if ta else a), (b.T if tb else b)
                got, want = raw(a, b), a @ b
                worst = max(worst, float(abs(got - want).max() / (abs(want).max() + 1e-30)))
    return f"max relative difference vs cupy.matmul {worst:.1e}"


# ----------------------------------------------------------------------------- 2. captured step
class GraphedStep:
    """The reference CNN's training step, captured once and replayed."""

    def __init__(self, batch: int, matmul: str, kernels: bool = True, seed: int = 0):
        self.backend = get_backend("cuda", kernels=kernels)
        self.model = models.build("reference", seed=seed).to(self.backend)
        if matmul == "raw-cublas":
            self.model.to(_with_matmul(self.backend, RawCublasMatmul()))
        self.opt = optim.SGD(self.model, lr=0.01, momentum=0.9)
        self.loss_fn = losses.SoftmaxCrossEntropy()
        x, y = random_batch(batch)
        self.x, self.y = cupy.asarray(x), cupy.asarray(y)
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.graph = None
        self.loss = None

    def eager(self):
        return train_step(self.model, self.loss_fn, self.opt, self.x, self.y)[0]

    def capture(self, warmup: int = 3):
        with self.stream, cupy.cuda.using_allocator(self.pool.malloc), config.finite_checks(False):
            for _ in range(warmup):
                self.eager()
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                self.loss = self.eager()
            except BaseException:
                try:  # leave capture mode, then report the first error, not end_capture's
                    self.stream.end_capture()
                except Exception:
                    pass
                raise
            self.graph = self.stream.end_capture()
        return warmup

    def replay(self):
        self.graph.launch(self.stream)

    def sync(self):
        self.stream.synchronize()


def _with_matmul(backend, matmul):
    """A shallow copy of ``backend`` whose matrix products go to ``matmul``."""
    import copy

    twin = copy.copy(backend)
    twin.matmul = matmul
    return twin


def params_of(model):
    return [cupy.asnumpy(layer.params[key]) for _, layer, key in model.parameters()]


def check_replay(matmul: str, batch: int = 64, replays: int = 5) -> str:
    """Graph run: warm-up + capture + replays; eager twin: the same number of steps. Compare."""
    graphed = GraphedStep(batch, matmul)
    warmup = graphed.capture()
    for _ in range(replays):
        graphed.replay()
    graphed.sync()
    twin = GraphedStep(batch, "cupy")
    with config.finite_checks(False):
        for _ in range(warmup + replays):
            last = twin.eager()
    twin.sync()
    cupy.cuda.Device().synchronize()
    diffs = [float(numpy.abs(p - q).max() / (numpy.abs(q).max() + 1e-30))
             for p, q in zip(params_of(graphed.model), params_of(twin.model))]
    return (f"ok: after {warmup} warm-up steps + {replays} replays vs {warmup + replays} eager "
            f"steps, max relative parameter difference {max(diffs):.1e}, loss {float(graphed.loss):.6f}"
            f" vs {float(last):.6f}")


# ----------------------------------------------------------------------------- 3. throughput
def torch_graph_step(batch: int):
    """PyTorch's whole step (forward, backward, SGD) captured in one CUDA graph."""
    import torch

    model, opt, loss_fn, xb, yb = torch_reference(batch)
    side = torch.cuda.Stream()  # warm-up off the default stream, as PyTorch's docs ask
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
    return graph.replay, torch.cuda.synchronize


def throughput(batches, matmul: str, quick: bool) -> list[str]:
    rows = ["| batch | cnnx eager (img/s) | cnnx graph (img/s) | graph / eager "
            "| PyTorch graph (img/s) | cnnx graph / PyTorch graph |",
            "|---:|---:|---:|---:|---:|---:|"]
    for batch in batches:
        steps = max(10, (2000 if quick else 12800) // batch)
        eager = GraphedStep(batch, "cupy")
        with config.finite_checks(False):
            e = images_per_second(eager.eager, eager.backend.synchronize, batch, steps)
        graphed = GraphedStep(batch, matmul)
        graphed.capture()
        g = images_per_second(graphed.replay, graphed.sync, batch, steps)
        try:
            t = images_per_second(*torch_graph_step(batch), batch, steps)
        except Exception as exc:
            print(f"PyTorch graph at batch {batch}: {short(exc)}", file=sys.stderr)
            t = float("nan")
        rows.append(f"| {batch} | {e:,.0f} | {g:,.0f} | {g / e:.2f}x | {t:,.0f} | {g / t:.2f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    args = parser.parse_args()
    print(f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}\n")
    print(f"1. cupy.matmul under capture: {cublas_under_capture()}")
    raw = RawCublasMatmul()
    try:
        print(f"   raw-cublas matmul: {check_raw_matmul(raw)} "
              f"(alpha/beta as {'pointers' if raw.pointer_scalars else 'values'})")
    except Exception as exc:
        print(f"   raw-cublas matmul failed: {short(exc)}")
    working = []
    for matmul in ("cupy", "raw-cublas"):
        try:
            print(f"2. captured step, {matmul} products: {check_replay(matmul)}")
            working.append(matmul)
        except Exception as exc:
            print(f"2. captured step, {matmul} products: failed: {short(exc)}")
            traceback.print_exc(limit=4, file=sys.stderr)
    if not working:
        print("\nno way of capturing the step worked: nothing to time")
        return
    print(f"\n3. throughput, reference CNN, float32, SGD momentum 0.9, products: {working[0]}\n")
    print("\n".join(throughput(args.batches, working[0], args.quick)))


if __name__ == "__main__":
    main()
