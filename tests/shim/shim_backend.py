"""Run cnnx's CUDA kernels on the CPU: compile them as C++ and drive them from the real backend.

``build_library(dir)`` compiles common.cuh + every kernels/*.cu (the exact text NVRTC gets,
from ``kernel_source``) together with ``cuda_shim.h`` into a shared library with g++.
``ShimBackend`` is the CUDA backend's own class with NumPy as ``xp`` and one method replaced:
``_run`` launches through that library instead of CuPy. So everything above the launch (shape
arithmetic, contiguity, casts, allocation) is the shipped code, and every launch is checked
against the parameter list the kernel declares -- the check CuPy itself does not make.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy
from numpy.lib.stride_tricks import as_strided

from cnnx.backends import kernel_source
from cnnx.backends.cublas import OP_N, gemm_plan, readable
from cnnx.backends.cupy_backend import CupyBackend

SHIM_DIR = Path(__file__).resolve().parent

# C type of a kernel parameter -> what a launch must pass there (a NumPy scalar type, or an
# array dtype for pointers). CuPy would pass a Python int as long long and a float as double
# whatever the kernel says, so we demand exact NumPy scalars, as the backend promises.
_SCALARS = {"long long": numpy.int64, "int": numpy.int32, "float": numpy.float32,
            "double": numpy.float64}
_CTYPES = {numpy.int64: ctypes.c_int64, numpy.int32: ctypes.c_int32,
           numpy.float32: ctypes.c_float, numpy.float64: ctypes.c_double}


def gxx() -> str | None:
    return shutil.which("g++")


def missing_toolchain(reason: str):
    """Skip for lack of a compiler -- but fail where CI promised one (CNNX_REQUIRE_TOOLCHAIN)."""
    import pytest

    if os.environ.get("CNNX_REQUIRE_TOOLCHAIN", "") not in ("", "0"):
        pytest.fail(f"{reason} (CNNX_REQUIRE_TOOLCHAIN is set)")
    pytest.skip(reason)


def build_library(out_dir: Path) -> ctypes.CDLL:
    """Compile all kernels for the CPU; raises CalledProcessError with g++'s messages."""
    parts = ['#include "cuda_shim.h"', kernel_source.file_text(kernel_source.COMMON_HEADER)]
    parts += [kernel_source.file_text(f) for f in kernel_source.kernel_files()]
    parts += [f"SHIM_EXPORT({name})" for name in kernel_source.KERNEL_FILES]
    cpp = Path(out_dir) / "kernels_shim.cpp"
    cpp.write_text("\n".join(parts) + "\n")
    lib = Path(out_dir) / "libcnnx_kernels_shim.so"
    # -ffp-contract=off: no fused multiply-add, so float results match NumPy bit for bit.
    cmd = [gxx(), "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-shared",
           "-fPIC", f"-I{SHIM_DIR}", str(cpp), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def kernel_signatures() -> dict[str, list[str]]:
    """kernel name -> its parameters' C types with T left symbolic, read from the .cu files."""
    found = {}
    pattern = re.compile(r"template <typename T>\s*__global__ void (\w+)\((.*?)\)", re.S)
    for filename in kernel_source.kernel_files():
        for name, params in pattern.findall(kernel_source.file_text(filename)):
            found[name] = [" ".join(p.split()[:-1]) for p in params.split(",")]
    return found


def check_arguments(kernel: str, ctype: str, params: list[str], args: tuple) -> None:
    """Raise TypeError when ``args`` do not match the kernel's declared parameter types."""
    if len(params) != len(args):
        raise TypeError(f"{kernel}: {len(params)} parameters, launched with {len(args)}")
    for number, (declared, arg) in enumerate(zip(params, args)):
        ctype_param = re.sub(r"\bT\b", ctype, declared)  # "const T*" -> "const float*"
        base = ctype_param.replace("const", "").replace("*", "").strip()
        expected = _SCALARS[base]
        if ctype_param.endswith("*"):
            ok = isinstance(arg, numpy.ndarray) and arg.dtype == expected \
                and arg.flags.c_contiguous and (arg.flags.writeable or "const" in ctype_param)
        else:
            ok = type(arg) is expected
        if not ok:
            raise TypeError(f"{kernel}<{ctype}> parameter {number} is '{ctype_param}', "
                            f"launched with {type(arg).__name__} {getattr(arg, 'dtype', '')}")


def _pointer_array(args: tuple):
    """The ``void**`` cuLaunchKernel takes: one pointer to each argument's storage."""
    storage = []
    for arg in args:
        if isinstance(arg, numpy.ndarray):
            storage.append(ctypes.c_void_p(arg.ctypes.data))
        else:
            storage.append(_CTYPES[type(arg)](arg))
    pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(s) for s in storage])
    return pointers, storage  # keep storage alive for the call


class ShimBackend(CupyBackend):
    """The CUDA backend running its kernels through the CPU shim.

    ``grid_cap`` = (blocks, threads) shrinks launches so each simulated thread walks several
    elements of its grid-stride loop, as on a GPU whose grid is capped by MAX_BLOCKS.
    """

    def __init__(self, library: ctypes.CDLL, grid_cap: tuple[int, int] | None = None):
        # Not CupyBackend.__init__: there is no CuPy and no device here.
        self.xp = numpy
        self.index = -1
        self.device = contextlib.nullcontext()
        self.name = "cpu-shim"
        self.kernels_enabled = True
        self.library = library
        self.grid_cap = grid_cap
        self.signatures = kernel_signatures()
        self.launches: list[str] = []
        self._products = None

    def to_numpy(self, a):
        return numpy.asarray(a)

    def owns(self, a) -> bool:
        return isinstance(a, numpy.ndarray)

    def synchronize(self) -> None:
        pass  # every shim launch has finished when it returns

    def _run(self, kernel, dtype_name, blocks, threads, args):
        ctype = kernel_source.ctype_of(dtype_name)
        check_arguments(kernel, ctype, self.signatures[kernel], args)
        if self.grid_cap is not None:
            blocks, threads = min(blocks, self.grid_cap[0]), min(threads, self.grid_cap[1])
        pointers, _storage = _pointer_array(args)
        getattr(self.library, f"{kernel}_{ctype}")(
            ctypes.c_uint(blocks), ctypes.c_uint(threads), pointers
        )
        self.launches.append(kernel)

    def graph_capture(self):
        return ReplayByCall(self)


# ----------------------------------------------------------------------------- CUDA graphs
class ReplayByCall:
    """``CudaGraphCapture``'s stand-in on the CPU (cnnx/backends/cuda_graph.py), for testing
    ``cnnx.graph.GraphedTrainStep`` without a GPU: ``capture`` keeps the step without running
    it, as a capture records without running; ``launch`` runs it. Products inside warm-up
    steps and launches go through ``emulated_cublas_matmul``, as they go through our own
    cuBLAS handle on a GPU. What this cannot show: that CUDA accepts the recording (no
    host waits, every allocation from the private pool) -- the GPU tests do."""

    def __init__(self, backend):
        self.backend = backend
        self.runs = self.captures = self.launches = 0
        self.closed = False

    def run(self, step) -> None:
        self.runs += 1
        with self.backend.products_by(emulated_cublas_matmul):
            step()

    def capture(self, step):
        self.captures += 1
        return step

    def launch(self, graph) -> None:
        self.launches += 1
        with self.backend.products_by(emulated_cublas_matmul):
            graph()

    def close(self) -> None:
        self.closed = True


def _column_major(x, op: int, rows: int, cols: int, ld: int):
    """The (rows, cols) matrix cuBLAS reads from ``x``'s memory under (op, ld): stored
    column-major, element (i, j) at i + j*ld for op N, its transpose for op T."""
    size = x.itemsize
    strides = (size, ld * size) if op == OP_N else (ld * size, size)
    return as_strided(x, shape=(rows, cols), strides=strides, writeable=False)


def emulated_cublas_matmul(a, b):
    """``a @ b`` the way ``cnnx.backends.cublas.CublasHandle`` has cuBLAS compute it: the
    operands are read back from raw memory under ``gemm_plan``'s ops and leading dimensions,
    so a wrong argument reads wrong numbers. Equal to ``a @ b`` bit for bit when right (the
    views read back have ``a``'s and ``b``'s own strides, so NumPy makes the same call)."""
    a, found_a = readable(a, numpy.ascontiguousarray)
    b, found_b = readable(b, numpy.ascontiguousarray)
    plan = gemm_plan(a.shape, found_a, b.shape, found_b)
    # cuBLAS computes C' (m x n, column-major) = op(first) @ op(second), first = b's memory
    first = _column_major(b, plan.transa, plan.m, plan.k, plan.lda)
    second = _column_major(a, plan.transb, plan.k, plan.n, plan.ldb)
    # our row-major C is C' transposed: second^T @ first^T
    return second.T @ first.T
