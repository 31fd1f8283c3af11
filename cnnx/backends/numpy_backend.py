"""The CPU backend: NumPy for ``xp``, with faster NumPy formulations of the hot paths.

Every override computes the same function as the default in ``base.py`` (tests compare them:
tests/test_backend_ops.py, tests/test_cpu_fast_paths.py); only the arrangement in memory
differs. Convolution works in a batch-last layout (cpu_conv.py) and hands out NCHW views of
it; max-pooling keeps whatever layout it receives (cpu_pool.py); batch norm works on the
channel rows of batch-last memory (cpu_norm.py). BENCHMARKS.md ("CPU") logs
what each change was predicted to gain and what it gained.
"""

from __future__ import annotations

import contextlib

import numpy

from . import cpu_conv, cpu_norm, cpu_pool, cpu_threads
from .base import Backend, Window
from .cpu_threads import parallel


#: parameters with at least this many numbers get the threaded, subnormal-free SGD update
LARGE_PARAMETER = 4096
#: ... and the threaded, subnormal-free Adam update: below it base.py's update was faster
#: (threaded against base.py's, per call, float32: 37k numbers 186 / 77 us, 74k 201 / 154,
#: 147k 305 / 359, 201k 381 / 553, 401k 717 / 1,619; BENCHMARKS.md, CPU log)
LARGE_ADAM_PARAMETER = 100_000


class NumpyBackend(Backend):
    xp = numpy
    name = "cpu"

    def to_numpy(self, a):
        return numpy.asarray(a)

    def work_scope(self, elements: int):
        """A step of at most ``cpu_threads.SMALL_WORK`` output numbers leaves the cores to BLAS."""
        if elements <= cpu_threads.SMALL_WORK:
            return cpu_threads.blas_threads_only()
        return contextlib.nullcontext()

    def matmul(self, a, b):
        """``a @ b`` cut into bands of the result's rows over the CPU threads.

        With a few rows (a small batch) and more columns it computes ``(b^T @ a^T)^T``
        instead: OpenBLAS is up to 1.5x faster with the long side first (BENCHMARKS.md). The
        result is then a transposed view; weight gradients (128 rows or more) stay contiguous.
        """
        if a.shape[0] <= 64 and a.shape[0] < b.shape[1]:
            return self.matmul(b.T, a.T).T
        m, k, n = a.shape[0], a.shape[1], b.shape[1]
        out = numpy.empty((m, n), dtype=numpy.result_type(a, b))

        def band(s, e):
            numpy.matmul(a[s:e], b, out=out[s:e])
        parallel(band, m, m * k * n // 16)  # (multiply-adds weigh 1/16: cpu_threads.parallel)
        return out

    def conv2d_forward(self, x, w, b, win: Window, relu: bool):
        return cpu_conv.conv2d_forward(x, w, b, win, relu)

    def conv2d_backward(self, dy, saved, w, win: Window, relu: bool):
        return cpu_conv.conv2d_backward(dy, saved, w, win, relu)

    def conv2d_backward_params(self, dy, saved, w, win: Window, relu: bool):
        return cpu_conv.conv2d_backward(dy, saved, w, win, relu, input_grad=False)[1:]

    def sgd_update(self, param, grad, velocity, lr: float, momentum: float, weight_decay: float):
        """The default rule. A large parameter is updated on the CPU threads, and its subnormal
        velocities are set to 0 (``flush_subnormals``); a small one (a bias, a 3x3 kernel) takes
        the default's few calls, where a handful of subnormals costs nothing."""
        arrays = [a for a in (param, velocity) if a is not None]
        if param.size < LARGE_PARAMETER or not all(a.flags.c_contiguous for a in arrays):
            super().sgd_update(param, grad, velocity, lr, momentum, weight_decay)
            return
        p = param.reshape(-1)
        g = numpy.ascontiguousarray(grad).reshape(-1)  # one copy beats strided passes over it
        v = None if velocity is None else velocity.reshape(-1)

        def piece(s, e):
            step = g[s:e] + weight_decay * p[s:e] if weight_decay else g[s:e]
            if v is not None:
                v[s:e] *= momentum
                v[s:e] += step
                flush_subnormals(v[s:e])
                step = v[s:e]
            p[s:e] -= numpy.multiply(step, lr)
        parallel(piece, p.size, 8 * p.size)  # about eight passes over the parameter

    def adam_update(self, param, grad, m, v, lr: float, betas: tuple, eps: float,
                    weight_decay: float, decoupled: bool, step: int):
        """base.py's Adam, the same operations in the same order, over pieces of a large
        parameter on the CPU threads. m, which decays by β1 a step where the gradient is 0
        (a dead ReLU unit's weights), is kept free of subnormals (``flush_subnormals``): with
        20% of m subnormal, base.py's update of 200k numbers took 3.4 ms instead of 0.49."""
        arrays = (param, m, v)
        if param.size < LARGE_ADAM_PARAMETER or not all(a.flags.c_contiguous for a in arrays):
            super().adam_update(param, grad, m, v, lr, betas, eps, weight_decay, decoupled, step)
            return
        p, m, v = (a.reshape(-1) for a in arrays)
        g = numpy.ascontiguousarray(grad).reshape(-1)
        b1, b2 = betas
        correction1, correction2 = 1 - b1 ** step, 1 - b2 ** step

        def piece(s, e):
            gs, ms, vs = g[s:e], m[s:e], v[s:e]
            if weight_decay and not decoupled:
                gs = gs + weight_decay * p[s:e]
            scratch = numpy.multiply(gs, 1 - b1)
            ms *= b1
            ms += scratch
            flush_subnormals(ms)
            numpy.multiply(gs, 1 - b2, out=scratch)
            scratch *= gs
            vs *= b2
            vs += scratch
            numpy.divide(vs, correction2, out=scratch)
            numpy.sqrt(scratch, out=scratch)
            scratch += eps
            update = numpy.divide(ms, correction1)
            update /= scratch
            if weight_decay and decoupled:
                update += numpy.multiply(p[s:e], weight_decay, out=scratch)
            update *= lr
            p[s:e] -= update
        parallel(piece, p.size, 16 * p.size)  # about sixteen passes over the parameter

    def batch_norm_forward(self, x, gamma, beta, eps: float, relu: bool, stats=None):
        fast = cpu_norm.batch_norm_forward(x, gamma, beta, eps, relu, stats)
        return fast if fast is not None else super().batch_norm_forward(x, gamma, beta, eps,
                                                                         relu, stats)

    def batch_norm_backward(self, dy, saved, gamma):
        if isinstance(saved, cpu_norm.RowsSaved):
            return cpu_norm.batch_norm_backward(dy, saved, gamma)
        return super().batch_norm_backward(dy, saved, gamma)

    def max_pool_forward(self, x, win: Window):
        return cpu_pool.max_pool_forward(x, win)

    def max_pool_backward(self, dy, argmax, x_shape, win: Window):
        return cpu_pool.max_pool_backward(dy, argmax, x_shape, win)


def flush_subnormals(a) -> None:
    """Set the entries of ``a`` smaller in size than the smallest normal float to 0, in place.

    Why: the momentum of a weight whose gradient stays 0 (a dead ReLU unit) decays by μ every
    step until it is subnormal (below 1.2e-38 in float32), and x86 CPUs run arithmetic on
    subnormals through a slow microcode path: on the reference CNN, 20% of the first dense
    layer's velocities got there after 1,000 steps and the step slowed by 20% (BENCHMARKS.md).
    Setting them to 0 is what flush-to-zero hardware modes (GPUs, TensorFlow's CPU kernels)
    do; the change to the weights is below 1e-38 per step. Integer arithmetic on the bits does
    the zeroing, so it never touches the slow path itself.
    """
    keep = numpy.less(numpy.abs(a), numpy.finfo(a.dtype).tiny)  # subnormals (and zeros)...
    numpy.logical_not(keep, out=keep)  # ...are dropped; a NaN compares False, so it stays
    bits = a.view(numpy.int32 if a.dtype.itemsize == 4 else numpy.int64)
    numpy.multiply(bits, keep, out=bits)
