"""Matrix products on a cuBLAS handle of our own, called through ctypes, for CUDA-graph capture.

Why not ``cupy.matmul``: CuPy refuses every cuBLAS call while a stream is being captured (its
``cublas.setStream`` raises NotImplementedError; cupy#6290 tracks lifting that), although
cuBLAS itself supports capture ("CUDA Graphs support" in the cuBLAS documentation: GEMMs may
be captured; coefficients given by host pointer are copied into the graph at capture). So
inside a capture (cnnx/graph.py) the products go to this handle, which we point at the
capturing stream ourselves and give a workspace of our own, so that cuBLAS allocates nothing
while it is being captured.

Row-major arrays, column-major cuBLAS. cuBLAS reads a matrix as column-major: the memory of a
C-contiguous (rows, cols) array is, to cuBLAS, its transpose, with leading dimension cols; an
F-contiguous one is itself, with leading dimension rows. We want C = A @ B with C row-major,
i.e. C^T = B^T A^T in column-major terms: one GEMM with the operands swapped and no copy of
the result. ``gemm_plan`` works the arguments out; it is pure Python, and the tests check it
against a column-major GEMM written in NumPy (no GPU needed).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

OP_N, OP_T = 0, 1  # cublasOperation_t: use the matrix as stored / its transpose
_SUCCESS = 0
INT32_MAX = 2**31 - 1
#: cuBLAS's recommended workspace for Hopper is 32 MiB (4 MiB before); one, reused by every call
WORKSPACE_BYTES = 32 << 20


@dataclass(frozen=True)
class GemmPlan:
    """The arguments of one column-major ``cublas?gemm`` computing row-major C = A @ B."""

    transa: int  # op applied to the first operand cuBLAS sees (our B)
    transb: int  # op applied to the second operand (our A)
    m: int  # rows of the column-major result C^T: our n
    n: int  # its columns: our m
    k: int
    lda: int  # leading dimension of our B's memory
    ldb: int  # leading dimension of our A's memory
    ldc: int  # leading dimension of C's memory: our n (C is C-contiguous)


def layout(shape: tuple, strides: tuple, itemsize: int):
    """``(op, leading dimension)`` under which cuBLAS reads a row-major 2-D array as its
    transpose, or None when the array's memory is neither row- nor column-major (copy it)."""
    rows, cols = shape
    row_stride, col_stride = (s // itemsize for s in strides)
    if any(s % itemsize for s in strides):
        return None
    # row-major with rows ld apart (C-contiguous, or rows of a wider matrix): to cuBLAS it
    # is the transpose already (op N); a single column or row can use either stride freely
    if (col_stride == 1 or cols == 1) and (row_stride >= max(1, cols) or rows == 1):
        return OP_N, max(1, cols if rows == 1 else row_stride)
    # column-major (F-contiguous, e.g. the .T of a C-contiguous array): to cuBLAS it is the
    # matrix itself, so ask for its transpose (op T)
    if (row_stride == 1 or rows == 1) and (col_stride >= max(1, rows) or cols == 1):
        return OP_T, max(1, rows if cols == 1 else col_stride)
    return None


def readable(x, ascontiguousarray):
    """``(x, layout(x))``, ``x`` first made C-contiguous when cuBLAS cannot read its memory."""
    found = layout(x.shape, x.strides, x.itemsize)
    if found is None:
        x = ascontiguousarray(x)
        found = layout(x.shape, x.strides, x.itemsize)
    return x, found


def gemm_plan(a_shape, a_layout, b_shape, b_layout) -> GemmPlan:
    """Arguments for C (m, n) = A (m, k) @ B (k, n), given each operand's ``layout``."""
    (m, k), (k2, n) = a_shape, b_shape
    if k != k2:
        raise ValueError(f"matmul: shapes {tuple(a_shape)} and {tuple(b_shape)} do not align")
    if max(m, n, k) > INT32_MAX:
        raise ValueError(f"matmul: {m}x{k} @ {k}x{n} exceeds cuBLAS's 32-bit dimensions")
    (op_a, ld_a), (op_b, ld_b) = a_layout, b_layout
    return GemmPlan(transa=op_b, transb=op_a, m=n, n=m, k=k, lda=ld_b, ldb=ld_a, ldc=max(1, n))


def _find_library() -> str:
    """The path of the libcublas that CuPy has loaded into this process (so that both use
    the same cuBLAS), else the first one the dynamic loader finds by name."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = path.rsplit("/", 1)[-1]
                if name.startswith("libcublas.so"):  # not libcublasLt
                    return path
    except OSError:  # not Linux
        pass
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    raise OSError("libcublas is not loaded and not found by the dynamic loader")


class CublasHandle:
    """One cuBLAS handle, bound to one stream, with its own workspace (``xp.empty`` bytes).

    ``matmul(a, b)`` computes ``a @ b`` for 2-D float32 or float64 CuPy arrays of the same
    dtype and returns a new C-contiguous array.
    """

    def __init__(self, cupy, stream_ptr: int):
        cupy.ones((2, 2), "float32") @ cupy.ones((2, 2), "float32")  # have CuPy load libcublas
        self.cupy = cupy
        self.lib = ctypes.CDLL(_find_library())
        handle = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        self._check(self.lib.cublasSetStream_v2(handle, ctypes.c_void_p(stream_ptr)),
                    "cublasSetStream")
        self.workspace = cupy.empty(WORKSPACE_BYTES, dtype="uint8")
        self._check(self.lib.cublasSetWorkspace_v2(
            handle, ctypes.c_void_p(self.workspace.data.ptr), ctypes.c_size_t(WORKSPACE_BYTES)),
            "cublasSetWorkspace")
        # host pointer mode (cuBLAS's default): alpha and beta are read, and captured, per call
        self._scalars = {"float32": (ctypes.c_float(1.0), ctypes.c_float(0.0)),
                         "float64": (ctypes.c_double(1.0), ctypes.c_double(0.0))}
        self._gemm = {"float32": self.lib.cublasSgemm_v2, "float64": self.lib.cublasDgemm_v2}

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status != _SUCCESS:
            raise RuntimeError(f"cnnx: {call} failed with cuBLAS status {status}")

    def matmul(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.name not in self._gemm:
            raise TypeError(f"cnnx: graph-safe matmul takes two 2-D float32/float64 arrays of "
                            f"one dtype, got {a.shape} {a.dtype} @ {b.shape} {b.dtype}")
        a, a_layout = readable(a, self.cupy.ascontiguousarray)
        b, b_layout = readable(b, self.cupy.ascontiguousarray)
        plan = gemm_plan(a.shape, a_layout, b.shape, b_layout)
        c = self.cupy.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
        if c.size == 0:
            return c
        if plan.k == 0:
            c.fill(0)
            return c
        one, zero = self._scalars[a.dtype.name]
        status = self._gemm[a.dtype.name](
            self.handle, plan.transa, plan.transb, plan.m, plan.n, plan.k, ctypes.byref(one),
            ctypes.c_void_p(b.data.ptr), plan.lda, ctypes.c_void_p(a.data.ptr), plan.ldb,
            ctypes.byref(zero), ctypes.c_void_p(c.data.ptr), plan.ldc)
        self._check(status, "cublas gemm")
        return c

    def close(self) -> None:
        if self.handle is not None:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = None
