"""Where our CUDA kernels live and how their source is put together. Pure Python, no CuPy.

The kernels are C++ templates over the float type in ``kernels/*.cu``. This module only reads
text, so tests without a GPU (the nvcc PTX check, the CPU shim) use exactly what the CUDA
backend compiles:

    source_of("conv.cu")          -> common.cuh + conv.cu, with #line markers
    name_expression("im2col", "float32") -> "im2col<float>"

Each file is compiled by ``cupy.RawModule`` once per float type (see ``cupy_backend.py``).
"""

from __future__ import annotations

from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"

COMMON_HEADER = "common.cuh"

# kernel name -> the file that defines it
KERNEL_FILES = {
    "im2col": "conv.cu",
    "col2im": "conv.cu",
    "max_pool_forward": "pool.cu",
    "max_pool_backward": "pool.cu",
    "avg_pool_forward": "pool.cu",
    "avg_pool_backward": "pool.cu",
    "max_pool_backward_tiled": "pool.cu",
    "avg_pool_backward_tiled": "pool.cu",
    "bias_activation": "pointwise.cu",
    "relu_backward": "pointwise.cu",
    "sgd_momentum": "pointwise.cu",
    "sgd_plain": "pointwise.cu",
    "adam_update": "pointwise.cu",
    "sgd_momentum_device_scalars": "pointwise.cu",
    "sgd_plain_device_scalars": "pointwise.cu",
    "adam_update_device_scalars": "pointwise.cu",
    "softmax_cross_entropy": "loss.cu",
}

# NumPy dtype name -> the C++ type the templates are instantiated with
CTYPES = {"float32": "float", "float64": "double"}


def kernel_files() -> list[str]:
    """The ``.cu`` files, in a fixed order."""
    return sorted(set(KERNEL_FILES.values()))


def kernels_in(filename: str) -> list[str]:
    """Names of the kernels defined in ``filename``."""
    return [name for name, file in KERNEL_FILES.items() if file == filename]


def ctype_of(dtype_name: str) -> str:
    """The C++ float type for a dtype name; KeyError for dtypes we have no kernels for."""
    return CTYPES[dtype_name]


def name_expression(kernel: str, dtype_name: str) -> str:
    """The template instance NVRTC is asked for, e.g. ``"im2col<float>"``."""
    return f"{kernel}<{ctype_of(dtype_name)}>"


def file_text(filename: str) -> str:
    """One file's text behind a ``#line 1 "<path>"`` marker, so compiler errors cite the real
    file and line instead of a temporary name."""
    path = KERNEL_DIR / filename
    return f'#line 1 "{path}"\n' + path.read_text()


def source_of(filename: str) -> str:
    """Full compilable source of one kernel file: the common header, then the file."""
    if filename not in kernel_files():
        raise KeyError(f"no kernel file {filename!r}; known: {kernel_files()}")
    return file_text(COMMON_HEADER) + "\n" + file_text(filename)
