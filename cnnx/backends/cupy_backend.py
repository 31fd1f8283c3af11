"""The CUDA backend: CuPy for ``xp``. Hot paths are replaced by RawKernels (see ``kernels/``).

This file is the only place that imports cupy, and only inside functions: the module itself
imports without CuPy, so the CPU test shim can drive the very same op code (argument casts,
contiguity, output allocation) with the kernels compiled as C++. ``make_cupy_backend`` probes
the device once with a tiny allocation, so a missing driver or GPU is reported as one
DeviceError line.

Every kernel op below follows one pattern:
  1. fall back to the base.py method when kernels are off or the dtype has no kernel;
  2. make inputs C-contiguous and allocate the outputs;
  3. ``_launch(kernel, dtype, total, args)`` with every scalar cast to the exact C type the
     kernel declares (CuPy does not check: a Python int arrives as long long, a float as double).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile

import numpy

from . import CUDA_INSTALL_HINT, CUDA_LIBRARIES_HINT, DeviceError
from .base import Backend, Window
from .kernel_source import CTYPES, KERNEL_FILES, ctype_of, name_expression, source_of

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65536  # enough to fill any GPU; the kernels' grid-stride loops cover the rest
NVRTC_OPTIONS = ("--std=c++14",)  # no -arch: CuPy targets the device's own architecture
_NO_DEVICE = 100  # cudaErrorNoDevice
_KERNEL_DTYPES = {numpy.dtype(name): name for name in CTYPES}  # numpy dtype -> "float32", ...


def _import_cupy():
    cache = choose_kernel_cache_dir(os.environ)
    try:
        import cupy
    except ImportError as exc:  # no wheel, or a wheel that cannot load its CUDA libraries
        raise DeviceError(f"CUDA needs CuPy, which is not importable ({exc}); {CUDA_INSTALL_HINT}")
    except OSError as exc:  # CuPy creates its kernel cache on import
        raise DeviceError(f"CuPy cannot create its kernel cache directory {cache} "
                          f"({exc.strerror or exc}): set CUPY_CACHE_DIR to a writable directory")
    return cupy


def choose_kernel_cache_dir(environ) -> str:
    """The directory CuPy will keep compiled kernels in, made sure to be writable.

    CuPy creates its on-disk kernel cache when it is imported, in ``$CUPY_CACHE_DIR`` or else
    ``~/.cupy/kernel_cache``, and fails to import when it cannot (a read-only or missing home
    directory: containers, batch jobs, service users; cupy #2296). So when CUPY_CACHE_DIR is
    not set and the default cannot be written, this sets it to a directory of this user's in
    the temp directory (or, failing that, a fresh private one) before CuPy is imported. A
    CUPY_CACHE_DIR set by the user is left alone: if CuPy cannot use it, the error says so."""
    if environ.get("CUPY_CACHE_DIR"):
        return environ["CUPY_CACHE_DIR"]
    default = os.path.join(os.path.expanduser("~"), ".cupy", "kernel_cache")
    if _writable_dir(default):
        return default
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    fallback = os.path.join(tempfile.gettempdir(), f"cnnx-{user}-cupy-kernel-cache")
    if not _writable_dir(fallback):  # e.g. another user's directory of that name
        fallback = tempfile.mkdtemp(prefix="cnnx-cupy-kernel-cache-")
    environ["CUPY_CACHE_DIR"] = fallback
    return fallback


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def make_cupy_backend(index: int, kernels: bool) -> "CupyBackend":
    cupy = _import_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cudaErrorNoDevice, insufficient driver, ...
        raise DeviceError(f"CUDA is not usable: {_driver_problem(cupy, exc)}") from None
    if count == 0:
        raise DeviceError("CUDA is not usable: no GPU found. Use --device cpu")
    if index >= count:
        raise DeviceError(f"cuda:{index} does not exist: this machine has {count} GPU(s)")
    try:
        with cupy.cuda.Device(index):
            cupy.zeros(1).sum().item()  # a tiny allocation and kernel: fails fast when broken
    except Exception as exc:
        raise DeviceError(f"cuda:{index} failed its first use: {_one_line(exc)}; "
                          f"{CUDA_INSTALL_HINT}")
    try:
        with cupy.cuda.Device(index):
            # The sum above runs CuPy's precompiled CUB code: it loads neither NVRTC (which
            # compiles every elementwise kernel and ours) nor cuBLAS, which a CuPy wheel
            # installed without its [ctk] extra or a CUDA Toolkit lacks. Use both once.
            a = cupy.ones((2, 2), dtype="float32")
            float(((a + 1) @ a).sum())
    except Exception as exc:
        raise DeviceError(f"CuPy cannot load a CUDA library it needs on cuda:{index} "
                          f"({_one_line(exc)}): {CUDA_LIBRARIES_HINT}")
    return CupyBackend(cupy, index, kernels)


def _one_line(exc) -> str:
    return " ".join(str(exc).split())


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (1000 * major + 10 * minor) as text: 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _driver_problem(cupy, exc) -> str:
    """Why CUDA failed to start, told so a user can act on it. CUDA reports a machine with
    no driver and one whose driver is too old for CuPy's CUDA alike ("driver version is
    insufficient"); the driver's version (0: none installed) tells them apart."""
    runtime = cupy.cuda.runtime
    try:
        driver, built_for = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    except Exception:  # no answer either: say what CUDA said
        return f"{exc}. Check the NVIDIA driver; {CUDA_INSTALL_HINT}"
    if driver == 0:
        return ("no NVIDIA driver is installed, so this machine has no usable GPU. "
                "Use --device cpu (or auto), or install the NVIDIA driver")
    if driver // 1000 < built_for // 1000:
        have, need = cuda_version_text(driver), cuda_version_text(built_for)
        if driver // 1000 in (12, 13):
            fix = (f'install the CuPy for your driver with pip install "cnnx[cuda{driver // 1000}]" '
                   "(and pip uninstall the other cupy-cuda package), or update the driver")
        else:  # CuPy's wheels start at CUDA 12
            fix = "update the driver (CuPy needs CUDA 12 or newer)"
        return f"the NVIDIA driver supports CUDA {have}, but this CuPy is built for CUDA {need}: {fix}"
    if getattr(exc, "status", None) == _NO_DEVICE or "cudaErrorNoDevice" in str(exc):
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        if hidden is not None:
            return (f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU. Use --device cpu, or "
                    "set CUDA_VISIBLE_DEVICES to a GPU's index")
        return "the NVIDIA driver finds no GPU. Use --device cpu"
    return (f"{exc} (driver: CUDA {cuda_version_text(driver)}, CuPy built for CUDA "
            f"{cuda_version_text(built_for)}). Check the NVIDIA driver; {CUDA_INSTALL_HINT}")


def _nvrtc_version(cupy) -> str:
    try:
        return ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception:  # only used in an error message: never hide the real error behind this one
        return "unknown"


def _i64(value) -> numpy.int64:
    return numpy.int64(value)


def _geometry(c: int, h: int, w: int, ho: int, wo: int, win: Window) -> tuple:
    """The parameters every window kernel takes after its arrays, as ``long long``."""
    return tuple(_i64(v) for v in (c, h, w, ho, wo, win.kh, win.kw, win.sh, win.sw, win.pt, win.pl))


def _tiled(win: Window) -> bool:
    """True when pooling windows cannot overlap, so each input pixel has at most one window."""
    return win.sh >= win.kh and win.sw >= win.kw


def _kernel_op(method):
    """Run ``method`` on the backend's device, or the base.py version when kernels are off."""

    @functools.wraps(method)
    def op(self, *args, **kwargs):
        if not self.kernels_enabled:
            return getattr(Backend, method.__name__)(self, *args, **kwargs)
        with self.device:
            return method(self, *args, **kwargs)

    return op


class CupyBackend(Backend):
    """CuPy on one GPU. With ``kernels=False`` every op is the pure-xp default from ``base.py``."""

    def __init__(self, cupy, index: int, kernels: bool):
        self.xp = cupy
        self.index = index
        self.device = cupy.cuda.Device(index)
        self.name = f"cuda:{index}"
        self.kernels_enabled = kernels
        self._modules: dict = {}  # (file, dtype name) -> compiled RawModule, for this device
        self._functions: dict = {}  # (kernel, dtype name) -> RawKernel
        self._products = None  # a replacement for cuBLAS-through-CuPy (see products_by)

    # ---------------------------------------------------------------- products and graphs
    def matmul(self, a, b):
        """``a @ b`` through CuPy (cuBLAS), or through the product ``products_by`` installed."""
        if self._products is not None:
            return self._products(a, b)
        return a @ b

    @contextlib.contextmanager
    def products_by(self, matmul):
        """Within the block, ``matmul`` computes every product (CUDA-graph capture needs a
        cuBLAS handle of its own: cuda_graph.py)."""
        previous, self._products = self._products, matmul
        try:
            yield
        finally:
            self._products = previous

    has_cuda_graphs = True

    def graph_capture(self):
        from .cuda_graph import CudaGraphCapture

        return CudaGraphCapture(self)

    def make_current(self) -> None:
        """Make this GPU the thread's current device: CuPy allocates every new array (the
        layers' xp.zeros, reductions, elementwise results) on the current device, not on its
        inputs' one, so with cuda:1 they would land on GPU 0. get_backend calls this."""
        self.device.use()

    def asarray(self, a, dtype=None, copy: bool = False):
        with self.device:  # a copy, too, is made on the current device
            return self.xp.array(a, dtype=dtype, copy=True) if copy else self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def owns(self, a) -> bool:
        return isinstance(a, self.xp.ndarray) and a.device.id == self.index

    def synchronize(self) -> None:
        self.device.synchronize()

    # ---------------------------------------------------------------- kernel plumbing
    @staticmethod
    def _kernel_dtype(*arrays):
        """The dtype name shared by ``arrays`` when we have kernels for it, else None."""
        dtype = arrays[0].dtype
        if any(a.dtype != dtype for a in arrays[1:]):
            return None
        return _KERNEL_DTYPES.get(dtype)  # a dict lookup: dtype.name costs ~7 µs a call

    def _launch(self, kernel: str, dtype_name: str, total: int, args: tuple) -> None:
        """Start ``kernel`` with enough threads for ``total`` work items (none when 0)."""
        if total == 0:
            return
        blocks = min(-(-total // THREADS_PER_BLOCK), MAX_BLOCKS)
        self._run(kernel, dtype_name, blocks, THREADS_PER_BLOCK, args)

    def _run(self, kernel: str, dtype_name: str, blocks: int, threads: int, args: tuple) -> None:
        self._function(kernel, dtype_name)((blocks,), (threads,), args)

    def _function(self, kernel: str, dtype_name: str):
        key = (kernel, dtype_name)
        if key not in self._functions:
            module = self._module(KERNEL_FILES[kernel], dtype_name)
            self._functions[key] = module.get_function(name_expression(kernel, dtype_name))
        return self._functions[key]

    def _module(self, filename: str, dtype_name: str):
        """Compile one kernel file for one float type, on first use (CuPy caches it on disk)."""
        key = (filename, dtype_name)
        if key in self._modules:
            return self._modules[key]
        cupy = self.xp
        names = [name_expression(k, dtype_name) for k, f in KERNEL_FILES.items() if f == filename]
        module = cupy.RawModule(
            code=source_of(filename), options=NVRTC_OPTIONS, name_expressions=names
        )
        try:
            module.compile()
        except Exception as exc:  # CompileException carries NVRTC's log
            cc = self.device.compute_capability
            raise RuntimeError(
                f"cnnx: compiling {filename} for {ctype_of(dtype_name)} failed on {self.name} "
                f"(compute capability {cc}, NVRTC {_nvrtc_version(cupy)}): {exc}"
            ) from exc
        self._modules[key] = module
        return module

    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    # ---------------------------------------------------------------- convolution helpers
    @_kernel_op
    def im2col(self, x, win: Window):
        dtype = self._kernel_dtype(x)
        if dtype is None:
            return super().im2col(x, win)
        n, c, h, w = x.shape
        ho, wo = win.out_hw(h, w)
        x = self.xp.ascontiguousarray(x)
        col = self._empty((n * ho * wo, c * win.kh * win.kw), x.dtype)
        args = (x, col, *_geometry(c, h, w, ho, wo, win), _i64(col.size))
        self._launch("im2col", dtype, col.size, args)
        return col

    @_kernel_op
    def col2im(self, col, x_shape, win: Window):
        dtype = self._kernel_dtype(col)
        if dtype is None:
            return super().col2im(col, x_shape, win)
        n, c, h, w = x_shape
        ho, wo = win.out_hw(h, w)
        col = self.xp.ascontiguousarray(col)
        x = self._empty((n, c, h, w), col.dtype)
        args = (col, x, *_geometry(c, h, w, ho, wo, win), _i64(x.size))
        self._launch("col2im", dtype, x.size, args)
        return x

    @_kernel_op
    def bias_activation(self, z, b, relu: bool):
        dtype = self._kernel_dtype(z, b)
        if dtype is None or b.ndim != 1 or z.shape[-1:] != b.shape:
            return super().bias_activation(z, b, relu)
        z, b = self.xp.ascontiguousarray(z), self.xp.ascontiguousarray(b)
        y = self._empty(z.shape, z.dtype)
        args = (z, b, y, _i64(b.size), numpy.int32(bool(relu)), _i64(z.size))
        self._launch("bias_activation", dtype, z.size, args)
        return y

    @_kernel_op
    def relu_backward(self, dy, y):
        dtype = self._kernel_dtype(dy, y)
        if dtype is None or dy.shape != y.shape:
            return super().relu_backward(dy, y)
        dy, y = self.xp.ascontiguousarray(dy), self.xp.ascontiguousarray(y)
        dz = self._empty(dy.shape, dy.dtype)
        self._launch("relu_backward", dtype, dz.size, (dy, y, dz, _i64(dz.size)))
        return dz

    @_kernel_op
    def conv2d_backward(self, dy, saved, w, win: Window, relu: bool):
        if self._kernel_dtype(dy, w) is None:
            return super().conv2d_backward(dy, saved, w, win, relu)
        return self._conv2d_backward(dy, saved, w, win, relu, input_grad=True)

    @_kernel_op
    def conv2d_backward_params(self, dy, saved, w, win: Window, relu: bool):
        """A first layer's (dL/dW, dL/db): no dL/dX product and no col2im."""
        if self._kernel_dtype(dy, w) is None:
            return super().conv2d_backward_params(dy, saved, w, win, relu)
        return self._conv2d_backward(dy, saved, w, win, relu, input_grad=False)[1:]

    def _conv2d_backward(self, dy, saved, w, win: Window, relu: bool, input_grad: bool):
        """base.py's im2col form, but dL/db as cuBLAS's ones @ delta: CuPy's ``sum(axis=0)``
        of the tall (N*Ho*Wo, O) matrix took 7.6 ms at batch 1024 on an H100, this 0.07 ms.
        dL/dX is None when ``input_grad`` is False."""
        col, x_shape, rows = saved
        out = w.shape[0]
        delta = dy.transpose(0, 2, 3, 1).reshape(-1, out)  # rows (n, y, x), one copy
        if relu:
            delta = self.relu_backward(delta, rows)
        dw = self.matmul(delta.T, col).reshape(w.shape)
        db = self.matmul(self.xp.ones((1, delta.shape[0]), dtype=delta.dtype), delta)[0]
        dx = None
        if input_grad:
            dx = self.col2im(self.matmul(delta, w.reshape(out, -1)), x_shape, win)
        return dx, dw, db

    # ---------------------------------------------------------------- pooling
    @_kernel_op
    def max_pool_forward(self, x, win: Window):
        dtype = self._kernel_dtype(x)
        if dtype is None:
            return super().max_pool_forward(x, win)
        n, c, h, w = x.shape
        ho, wo = win.out_hw(h, w)
        x = self.xp.ascontiguousarray(x)
        y = self._empty((n, c, ho, wo), x.dtype)
        argmax = self._empty((n, c, ho, wo), numpy.int32)
        args = (x, y, argmax, *_geometry(c, h, w, ho, wo, win), _i64(y.size))
        self._launch("max_pool_forward", dtype, y.size, args)
        return y, argmax

    @_kernel_op
    def max_pool_backward(self, dy, argmax, x_shape, win: Window):
        dtype = self._kernel_dtype(dy)
        if dtype is None:
            return super().max_pool_backward(dy, argmax, x_shape, win)
        n, c, h, w = x_shape
        ho, wo = dy.shape[2], dy.shape[3]
        dy = self.xp.ascontiguousarray(dy)
        argmax = self.xp.ascontiguousarray(argmax, dtype=numpy.int32)
        if _tiled(win):  # one thread per window writes into zeros
            dx = self.xp.zeros((n, c, h, w), dtype=dy.dtype)
            kernel, threads = "max_pool_backward_tiled", dy.size
        else:  # one thread per pixel gathers its windows
            dx = self._empty((n, c, h, w), dy.dtype)
            kernel, threads = "max_pool_backward", dx.size
        args = (dy, argmax, dx, *_geometry(c, h, w, ho, wo, win), _i64(threads))
        self._launch(kernel, dtype, threads, args)
        return dx

    @_kernel_op
    def avg_pool_forward(self, x, win: Window):
        dtype = self._kernel_dtype(x)
        if dtype is None:
            return super().avg_pool_forward(x, win)
        n, c, h, w = x.shape
        ho, wo = win.out_hw(h, w)
        x = self.xp.ascontiguousarray(x)
        y = self._empty((n, c, ho, wo), x.dtype)
        args = (x, y, *_geometry(c, h, w, ho, wo, win), _i64(y.size))
        self._launch("avg_pool_forward", dtype, y.size, args)
        return y

    @_kernel_op
    def avg_pool_backward(self, dy, x_shape, win: Window):
        dtype = self._kernel_dtype(dy)
        if dtype is None:
            return super().avg_pool_backward(dy, x_shape, win)
        n, c, h, w = x_shape
        ho, wo = dy.shape[2], dy.shape[3]
        dy = self.xp.ascontiguousarray(dy)
        if _tiled(win):
            dx = self.xp.zeros((n, c, h, w), dtype=dy.dtype)
            kernel, threads = "avg_pool_backward_tiled", dy.size
        else:
            dx = self._empty((n, c, h, w), dy.dtype)
            kernel, threads = "avg_pool_backward", dx.size
        args = (dy, dx, *_geometry(c, h, w, ho, wo, win), _i64(threads))
        self._launch(kernel, dtype, threads, args)
        return dx

    # ---------------------------------------------------------------- loss and update
    @_kernel_op
    def softmax_cross_entropy(self, logits, labels):
        dtype = self._kernel_dtype(logits)
        if dtype is None or logits.ndim != 2:
            return super().softmax_cross_entropy(logits, labels)
        batch, classes = logits.shape
        logits = self.xp.ascontiguousarray(logits)
        labels = self.xp.ascontiguousarray(labels, dtype=numpy.int64)
        row_loss = self._empty((batch,), logits.dtype)
        grad = self._empty(logits.shape, logits.dtype)
        args = (logits, labels, row_loss, grad, _i64(batch), _i64(classes))
        self._launch("softmax_cross_entropy", dtype, batch, args)
        return row_loss.mean(), grad

    def _update_dtype(self, param, grad, *state):
        """The kernel dtype for an in-place update of ``param`` and its optimizer ``state``
        arrays, or None (fall back) when dtypes, shapes or contiguity do not allow it."""
        written = [param, *state]
        dtype = self._kernel_dtype(grad, *written)
        in_place_ok = all(a.flags.c_contiguous and a.shape == param.shape for a in written)
        return dtype if in_place_ok and grad.shape == param.shape else None

    @_kernel_op
    def sgd_update(self, param, grad, velocity, lr: float, momentum: float, weight_decay: float):
        state = [] if velocity is None else [velocity]  # updated in place
        dtype = self._update_dtype(param, grad, *state)
        if dtype is None:
            return super().sgd_update(param, grad, velocity, lr, momentum, weight_decay)
        self._sgd(dtype, "", param, grad, velocity, param.dtype.type(lr), momentum, weight_decay)

    @_kernel_op
    def sgd_update_device_scalars(self, param, grad, velocity, scalars, momentum: float,
                                  weight_decay: float):
        state = [] if velocity is None else [velocity]
        dtype = self._update_dtype(param, grad, *state)
        if dtype is None or scalars.dtype != param.dtype or not scalars.flags.c_contiguous:
            return super().sgd_update_device_scalars(param, grad, velocity, scalars, momentum,
                                                     weight_decay)
        self._sgd(dtype, "_device_scalars", param, grad, velocity, scalars, momentum,
                  weight_decay)

    def _sgd(self, dtype, variant, param, grad, velocity, rate, momentum, weight_decay):
        """Launch sgd_plain or sgd_momentum (+ ``variant``): ``rate`` is the learning rate as
        the kernel's T, or the device array the _device_scalars kernels read it from."""
        grad = self.xp.ascontiguousarray(grad)
        real = param.dtype.type  # the kernel's T: numpy.float32 or numpy.float64
        if velocity is None:
            args = (param, grad, rate, real(weight_decay), _i64(param.size))
            self._launch("sgd_plain" + variant, dtype, param.size, args)
        else:
            args = (param, grad, velocity, rate, real(momentum), real(weight_decay),
                    _i64(param.size))
            self._launch("sgd_momentum" + variant, dtype, param.size, args)

    @staticmethod
    def _adam_constants(real, betas, eps, weight_decay, decoupled) -> tuple:
        """Adam's kernel arguments that stay the same every step, as the kernel's types."""
        b1, b2 = betas
        return (real(b1), real(1 - b1), real(b2), real(1 - b2), real(eps), real(weight_decay),
                numpy.int32(bool(decoupled)))

    @_kernel_op
    def adam_update(self, param, grad, m, v, lr: float, betas: tuple, eps: float,
                    weight_decay: float, decoupled: bool, step: int):
        """One launch per parameter: the pure-xp form takes about 14 (one per operation)."""
        dtype = self._update_dtype(param, grad, m, v)  # all updated in place
        if dtype is None:
            return super().adam_update(param, grad, m, v, lr, betas, eps, weight_decay,
                                       decoupled, step)
        grad = self.xp.ascontiguousarray(grad)
        real = param.dtype.type
        b1, b2 = betas
        args = (param, grad, m, v, real(lr),
                *self._adam_constants(real, betas, eps, weight_decay, decoupled),
                real(1 - b1 ** step), real(1 - b2 ** step), _i64(param.size))
        self._launch("adam_update", dtype, param.size, args)

    @_kernel_op
    def adam_update_device_scalars(self, param, grad, m, v, scalars, betas: tuple, eps: float,
                                   weight_decay: float, decoupled: bool):
        dtype = self._update_dtype(param, grad, m, v)
        if dtype is None or scalars.dtype != param.dtype or not scalars.flags.c_contiguous:
            return super().adam_update_device_scalars(param, grad, m, v, scalars, betas, eps,
                                                      weight_decay, decoupled)
        grad = self.xp.ascontiguousarray(grad)
        args = (param, grad, m, v, scalars,
                *self._adam_constants(param.dtype.type, betas, eps, weight_decay, decoupled),
                _i64(param.size))
        self._launch("adam_update_device_scalars", dtype, param.size, args)
