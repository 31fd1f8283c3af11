"""Shared fixtures: every backend test runs once per backend, never as a per-backend copy:
the CPU always; "cuda:0" when a GPU is usable; and "cuda-shim" everywhere g++ is: the CUDA
backend's own code (CupyBackend) with NumPy as ``xp`` and its .cu kernels compiled as C++
(tests/shim), so every layer, loss, optimizer and training test also runs the GPU path's
logic and kernels on a machine without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from cnnx.backends import available_backends, get_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shim.shim_backend import ShimBackend, build_library, gxx, missing_toolchain  # noqa: E402

# Deterministic property tests: the same examples on every run and machine.
settings.register_profile(
    "cnnx", derandomize=True, max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("cnnx")

if os.environ.get("CNNX_CUPY_POOL", "1") in ("0", "off"):
    # benchmarks/gpu_run.sh's compute-sanitizer run: every CuPy array its own cudaMalloc, so
    # memcheck reports an access past its end (inside the memory pool it would go unseen)
    import cupy

    cupy.cuda.set_allocator(None)

BACKENDS = available_backends() + ["cuda-shim"]


@pytest.fixture(scope="session")
def shim_library(tmp_path_factory):
    """cnnx's CUDA kernels compiled as C++ for the CPU (tests/shim), once per session."""
    if gxx() is None:
        missing_toolchain("g++ not found: the CPU shim cannot compile the kernels")
    try:
        return build_library(tmp_path_factory.mktemp("shim"))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"g++ failed on the kernel sources:\n{exc.stderr}")


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request):
    if request.param == "cuda-shim":
        return ShimBackend(request.getfixturevalue("shim_library"))
    return get_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tie_free(rng, shape, low=-1.0, high=1.0, away_from_zero=0.0):
    """Distinct values, spaced far wider than a finite-difference step, in random order
    (so max-pool has no ties and ReLU no kinks within ε of an input)."""
    size = int(np.prod(shape))
    values = np.linspace(low, high, size) if size > 1 else np.array([0.5 * (low + high) + 0.3])
    if away_from_zero:
        values = np.sign(values + 1e-12) * (away_from_zero + np.abs(values))
    return rng.permutation(values).reshape(shape)
