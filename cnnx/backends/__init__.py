"""Backends: which array library and device the math runs on.

``get_backend("cpu" | "cuda" | "cuda:N" | "auto")`` returns a Backend with ``xp`` (the array
module) and the hot-path operations. Only this package imports numpy or cupy; layers, losses and
optimizers receive ``xp`` from the backend they were moved to.
"""

from __future__ import annotations

import os

import numpy

from ..shapes import is_int
from .base import Backend, Window
from .numpy_backend import NumpyBackend

__all__ = [
    "Backend", "Window", "get_backend", "available_backends", "DeviceError", "backend_of", "make_rng",
]

_CPU = NumpyBackend()
_CACHE: dict = {"cpu": _CPU}

CUDA_INSTALL_HINT = 'pip install "cnnx[cuda12]" (CUDA 12 driver) or "cnnx[cuda13]" (CUDA 13)'
CUDA_LIBRARIES_HINT = ('install CuPy with the CUDA libraries it loads (NVRTC, cuBLAS), '
                       f'{CUDA_INSTALL_HINT}, or install the CUDA Toolkit')


class DeviceError(RuntimeError):
    """A requested device cannot be used; the message says what is missing and how to fix it."""


def _kernels_default() -> bool:
    # CNNX_KERNELS=0 runs the CuPy backend on the pure-xp path (benchmarks, bisecting bugs).
    return os.environ.get("CNNX_KERNELS", "1") not in ("0", "false", "off", "no")


def get_backend(device="cpu", kernels: bool | None = None) -> Backend:
    """Return the backend for ``device``: "cpu", "cuda", "cuda:N" or "auto".

    ``kernels`` (CUDA only) turns our RawKernels on or off; None reads ``$CNNX_KERNELS``.
    "auto" picks CUDA when a usable GPU is present, else the CPU.
    Raises DeviceError with a one-line reason when a CUDA device cannot be used.
    """
    if isinstance(device, Backend):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    device = device.strip().lower()
    if device == "cpu":
        return _CPU
    if device == "auto":
        try:
            return get_backend("cuda", kernels=kernels)
        except DeviceError:
            return _CPU
    if device == "cuda" or device.startswith("cuda:"):
        index_text = device[5:] if device.startswith("cuda:") else "0"
        if not index_text.isdigit():
            raise ValueError(f"device {device!r}: the GPU index must be a number, as in 'cuda:0'")
        use_kernels = _kernels_default() if kernels is None else bool(kernels)
        key = (int(index_text), use_kernels)
        if key not in _CACHE:
            from .cupy_backend import make_cupy_backend

            _CACHE[key] = make_cupy_backend(int(index_text), use_kernels)
        _CACHE[key].make_current()
        return _CACHE[key]
    raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'")


def available_backends() -> list[str]:
    """Names of the devices usable here: always "cpu", plus "cuda:0" when a GPU works."""
    names = ["cpu"]
    try:
        names.append(get_backend("cuda").name)
    except DeviceError:
        pass
    return names


def backend_of(array) -> Backend:
    """The backend whose arrays ``array`` is (CPU for NumPy arrays and anything array-like)."""
    for backend in list(_CACHE.values())[1:]:
        if backend.owns(array):
            return backend
    return _CPU


def make_rng(seed):
    """A host random Generator from an explicit seed (an int or a tuple of ints).

    All random draws (initial weights, shuffling, augmentation) come from such generators, on
    the host, so a seed gives the same numbers whatever the device. Anything else, None (which
    would draw fresh entropy: another result every run) or 1.5 included, is a ValueError.
    """
    parts = seed if isinstance(seed, tuple) else (seed,)
    if not (parts and all(is_int(part) and part >= 0 for part in parts)):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return numpy.random.default_rng(seed)
