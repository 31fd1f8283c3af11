"""Our CUDA kernels, checked on a machine without a GPU (CI).

1. Every kernels/*.cu, as the loader assembles it, compiles to PTX for sm_80 and sm_90 with
   nvcc, warnings as errors, and the PTX holds an entry point per kernel and float type.
2. The same sources compiled as C++ (tests/shim/cuda_shim.h) run thread by thread on the CPU,
   driven by the CUDA backend's own op code (ShimBackend), and must equal the NumPy reference
   (base.py's default methods on NumPy) over a seeded sweep of shapes: strides, asymmetric
   padding, windows wholly in the padding, rectangular kernels, batch 1, odd sizes, float32
   and float64, on a full grid and on a capped grid (grid-stride loops). The window kernels and
   SGD do the reference's arithmetic in the reference's order, so they must match bit for bit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shim.shim_backend import ShimBackend, check_arguments, missing_toolchain  # noqa: E402

from cnnx.backends import Backend, Window, kernel_source  # noqa: E402


class BaseNumpy(Backend):
    """base.py's defaults on NumPy, with no CPU fast paths: the reference every kernel equals."""

    xp = numpy
    name = "numpy-reference"

    def to_numpy(self, a):
        return numpy.asarray(a)


CPU = BaseNumpy()
DTYPES = ["float32", "float64"]
NVCC = shutil.which("nvcc") or next(
    (p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None
)


# ------------------------------------------------------------------------- PTX with nvcc
def _compile_ptx(source: str, arch: str, tmp_path: Path, names: list[str]) -> str:
    """Compile ``source`` to PTX, instantiating each template in ``names`` (like NVRTC's
    name_expressions do); return the PTX, or fail the test with nvcc's messages."""
    keep = [f"static void* keep_{i} = (void*)&{name};" for i, name in enumerate(names)]
    cu = tmp_path / f"kernels_{arch}.cu"
    cu.write_text(source + "\n" + "\n".join(keep) + "\n")
    ptx = tmp_path / f"kernels_{arch}.ptx"
    cmd = [NVCC, "--ptx", f"-arch={arch}", "-Werror", "all-warnings", str(cu), "-o", str(ptx)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"nvcc failed for {arch}:\n{result.stderr}")
    return ptx.read_text()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("filename", kernel_source.kernel_files())
def test_kernel_file_compiles_to_ptx(filename, arch, tmp_path):
    if NVCC is None:
        missing_toolchain("nvcc not found: cannot check that the CUDA sources compile")
    kernels = kernel_source.kernels_in(filename)
    names = [kernel_source.name_expression(k, d) for k in kernels for d in DTYPES]
    ptx = _compile_ptx(kernel_source.source_of(filename), arch, tmp_path, names)
    entries = re.findall(r"\.entry\s+(\w+)", ptx)
    for kernel in kernels:
        for code in ("f", "d"):  # Itanium mangling of the template argument float / double
            mangled = f"{len(kernel)}{kernel}I{code}E"
            assert any(mangled in e for e in entries), f"{kernel}<{code}> missing from PTX"


def test_nvcc_check_catches_a_type_error(tmp_path):
    """Negative control: the PTX check above really fails on a broken kernel."""
    if NVCC is None:
        missing_toolchain("nvcc not found")
    broken = kernel_source.source_of("conv.cu").replace("const bool inside", "bool* inside", 1)
    with pytest.raises(pytest.fail.Exception, match="nvcc failed"):
        _compile_ptx(broken, "sm_80", tmp_path, ["im2col<float>"])


# ------------------------------------------------------------------------- CPU shim
@pytest.fixture
def library(shim_library):  # built once per session (conftest.py)
    return shim_library


@pytest.fixture(params=["full-grid", "capped-grid"])
def shim(library, request):
    # the capped grid (3 blocks of 32) makes every thread loop: tests the grid-stride loops
    return ShimBackend(library, None if request.param == "full-grid" else (3, 32))


def _window_cases():
    """(x shape, Window) pairs: hand-picked edge cases, then a seeded random sweep."""
    cases = [
        ((1, 1, 5, 5), Window(3, 3, 1, 1, 1, 1, 1, 1)),  # 'same' 3x3, batch 1
        ((2, 3, 7, 6), Window(3, 3, 2, 2)),  # overlapping windows, stride 2
        ((2, 2, 6, 9), Window(2, 3, 2, 1, 1, 0, 0, 2)),  # rectangular, asymmetric padding
        ((1, 2, 4, 4), Window(2, 2, 2, 2)),  # tiled 2x2 pool
        ((3, 1, 5, 7), Window(1, 2, 3, 2)),  # stride > kernel: pixels no window reads
        ((1, 1, 3, 3), Window(5, 5, 1, 1, 1, 1, 1, 1)),  # kernel as large as the padded input
        ((1, 2, 3, 3), Window(2, 2, 1, 1, 2, 2, 2, 2)),  # corner windows wholly in padding
        ((2, 3, 1, 1), Window(1, 1, 1, 1)),  # 1x1 images
        ((2, 2, 5, 7), Window(2, 2, 2, 3, 1, 0, 0, 2)),  # non-overlapping, padded, gaps
    ]
    rng = numpy.random.default_rng(2026)
    while len(cases) < 32:
        kh, kw = rng.integers(1, 5, size=2)
        sh, sw = rng.integers(1, 4, size=2)
        pt, pb, pl, pr = rng.integers(0, 3, size=4)
        n, c = rng.integers(1, 4, size=2)
        h, w = rng.integers(1, 10, size=2)
        if kh <= h + pt + pb and kw <= w + pl + pr:
            win = Window(*(int(v) for v in (kh, kw, sh, sw, pt, pb, pl, pr)))
            cases.append(((int(n), int(c), int(h), int(w)), win))
    return cases


WINDOW_CASES = _window_cases()
CASE_IDS = [f"{'x'.join(map(str, s))}-{w.kh}{w.kw}s{w.sh}{w.sw}p{w.pt}{w.pb}{w.pl}{w.pr}"
            for s, w in WINDOW_CASES]


def _random(shape, dtype, seed, ties=False):
    rng = numpy.random.default_rng(seed)
    if ties:  # few distinct values: many tied maxima, to check which one wins
        return rng.integers(-3, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _transposed_view(a):
    """Same values as ``a`` but not C-contiguous: the kernels must cope."""
    return numpy.ascontiguousarray(numpy.swapaxes(a, -1, -2)).swapaxes(-1, -2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,win", WINDOW_CASES, ids=CASE_IDS)
def test_im2col_and_col2im_match_numpy(shim, shape, win, dtype):
    x = _transposed_view(_random(shape, dtype, seed=1))
    col = shim.im2col(x, win)
    numpy.testing.assert_array_equal(col, CPU.im2col(x, win))
    dcol = _random(col.shape, dtype, seed=2)
    numpy.testing.assert_array_equal(shim.col2im(dcol, shape, win), CPU.col2im(dcol, shape, win))
    assert shim.launches == ["im2col", "col2im"]


def _backward_kernel(pool: str, win: Window) -> str:
    # windows that cannot overlap take the one-thread-per-window path
    tiled = win.sh >= win.kh and win.sw >= win.kw
    return f"{pool}_pool_backward" + ("_tiled" if tiled else "")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,win", WINDOW_CASES, ids=CASE_IDS)
def test_max_pool_matches_numpy(shim, shape, win, dtype):
    for ties in (False, True):
        x = _random(shape, dtype, seed=3, ties=ties)
        y, argmax = shim.max_pool_forward(x, win)
        y_ref, argmax_ref = CPU.max_pool_forward(x, win)
        numpy.testing.assert_array_equal(y, y_ref)
        numpy.testing.assert_array_equal(argmax, argmax_ref)
        assert argmax.dtype == numpy.int32
        dy = _random(y.shape, dtype, seed=4)
        dx = shim.max_pool_backward(dy, argmax, shape, win)
        numpy.testing.assert_array_equal(dx, CPU.max_pool_backward(dy, argmax_ref, shape, win))
    assert shim.launches == ["max_pool_forward", _backward_kernel("max", win)] * 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,win", WINDOW_CASES, ids=CASE_IDS)
def test_avg_pool_matches_numpy(shim, shape, win, dtype):
    x = _random(shape, dtype, seed=5)
    y = shim.avg_pool_forward(x, win)
    numpy.testing.assert_array_equal(y, CPU.avg_pool_forward(x, win))
    dy = _random(y.shape, dtype, seed=6)
    dx = shim.avg_pool_backward(dy, shape, win)
    numpy.testing.assert_array_equal(dx, CPU.avg_pool_backward(dy, shape, win))
    assert shim.launches == ["avg_pool_forward", _backward_kernel("avg", win)]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape,win", WINDOW_CASES[:4], ids=CASE_IDS[:4])
def test_conv2d_backward_matches_numpy(shim, shape, win, relu):
    x, w = _random(shape, "float64", seed=30), _random((4, shape[1], win.kh, win.kw), "float64", 31)
    b = _random((4,), "float64", seed=32)
    y, saved = CPU.conv2d_forward(x, w, b, win, relu)
    dy = _random(y.shape, "float64", seed=33)
    got = shim.conv2d_backward(dy, saved, w, win, relu)
    reference = CPU.conv2d_backward(dy, saved, w, win, relu)
    for a, ref in zip(got, reference):
        numpy.testing.assert_allclose(a, ref, rtol=1e-12, atol=1e-12)
    assert "col2im" in shim.launches
    shim.launches.clear()  # a first layer: dL/dW and dL/db alone, without dL/dX's col2im
    for a, ref in zip(shim.conv2d_backward_params(dy, saved, w, win, relu), reference[1:]):
        numpy.testing.assert_allclose(a, ref, rtol=1e-12, atol=1e-12)
    assert "col2im" not in shim.launches


def test_max_pool_nan_propagates_like_numpy(shim):
    x = _random((1, 1, 4, 4), "float32", seed=7)
    x[0, 0, 1, 2] = numpy.nan
    win = Window(2, 2, 2, 2)
    y, argmax = shim.max_pool_forward(x, win)
    y_ref, argmax_ref = CPU.max_pool_forward(x, win)
    numpy.testing.assert_array_equal(y, y_ref)  # NaN where NaN, equal elsewhere
    numpy.testing.assert_array_equal(argmax, argmax_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,o", [(1, 1), (7, 10), (50, 16), (3, 128)])
@pytest.mark.parametrize("relu", [False, True])
def test_bias_activation_and_relu_backward_match_numpy(shim, m, o, relu, dtype):
    z = _transposed_view(_random((m, o), dtype, seed=8))
    z[0, 0] = 0.0  # the ReLU boundary
    b = _random((o,), dtype, seed=9)
    y = shim.bias_activation(z, b, relu)
    numpy.testing.assert_array_equal(y, CPU.bias_activation(z, b, relu))
    dy = _random((m, o), dtype, seed=10)
    numpy.testing.assert_array_equal(shim.relu_backward(dy, y), CPU.relu_backward(dy, y))
    assert shim.launches == ["bias_activation", "relu_backward"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_gives_the_numpy_path_zero_sign_and_nan(shim, dtype):
    # assert_array_equal takes -0.0 == +0.0, so the signs are compared on their own: the two
    # paths must agree to the bit, and NaN must pass through ReLU as it does through maximum
    z = numpy.array([[-0.0, 0.0, numpy.nan, -1.0, 2.0, -numpy.inf]], dtype=dtype)
    b = numpy.full((6,), -0.0, dtype=dtype)  # -0.0 + -0.0 stays -0.0
    for relu in (False, True):
        y, y_ref = shim.bias_activation(z, b, relu), CPU.bias_activation(z, b, relu)
        numpy.testing.assert_array_equal(y, y_ref)
        numpy.testing.assert_array_equal(numpy.signbit(y), numpy.signbit(y_ref))
    assert not numpy.signbit(y[0, 0]) and numpy.isnan(y[0, 2])  # relu(-0.0) = +0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(1, 10), (7, 10), (64, 10), (5, 1), (9, 13)])
@pytest.mark.parametrize("label_dtype", ["int64", "int32"])
def test_softmax_cross_entropy_matches_numpy(shim, batch, classes, label_dtype, dtype):
    logits = _random((batch, classes), dtype, seed=11) * 30  # large: needs the max shift
    labels = numpy.random.default_rng(12).integers(0, classes, batch).astype(label_dtype)
    loss, grad = shim.softmax_cross_entropy(logits, labels)
    loss_ref, grad_ref = CPU.softmax_cross_entropy(logits, labels)
    rtol, atol = (1e-5, 1e-7) if dtype == "float32" else (1e-13, 1e-16)
    numpy.testing.assert_allclose(loss, loss_ref, rtol=rtol)
    numpy.testing.assert_allclose(grad, grad_ref, rtol=rtol, atol=atol)
    assert numpy.asarray(loss).ndim == 0 and grad.dtype == logits.dtype
    assert shim.launches == ["softmax_cross_entropy"]


def test_softmax_cross_entropy_bad_label_gives_nan_row(shim):
    logits = _random((3, 10), "float32", seed=13)
    loss, grad = shim.softmax_cross_entropy(logits, numpy.array([1, 10, 2]))
    assert numpy.isnan(loss)
    assert numpy.isnan(grad[1]).all() and numpy.isfinite(grad[[0, 2]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,weight_decay",
                         [(0.0, 0.0), (0.0, 1e-3), (0.9, 0.0), (0.9, 5e-4)])
def test_sgd_update_matches_numpy(shim, momentum, weight_decay, dtype):
    shape = (33, 7)
    w, w_ref = _random(shape, dtype, seed=14), _random(shape, dtype, seed=14)
    v = numpy.zeros(shape, dtype) if momentum else None
    v_ref = None if v is None else v.copy()
    for step in range(3):
        g = _random(shape, dtype, seed=20 + step)
        shim.sgd_update(w, g, v, 0.05, momentum, weight_decay)
        CPU.sgd_update(w_ref, g, v_ref, 0.05, momentum, weight_decay)
    numpy.testing.assert_array_equal(w, w_ref)
    if v is not None:
        numpy.testing.assert_array_equal(v, v_ref)
    assert shim.launches == ["sgd_momentum" if momentum else "sgd_plain"] * 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_update_matches_numpy(shim, weight_decay, decoupled, dtype):
    shape = (33, 7)
    w, w_ref = _random(shape, dtype, seed=40), _random(shape, dtype, seed=40)
    m, v = numpy.zeros(shape, dtype), numpy.zeros(shape, dtype)
    m_ref, v_ref = m.copy(), v.copy()
    for step in range(1, 5):
        g = _random(shape, dtype, seed=40 + step)
        g[0, :3] = 0  # a unit with no gradient: its m and v only decay
        args = (1e-3, (0.9, 0.999), 1e-8, weight_decay, decoupled, step)
        shim.adam_update(w, g, m, v, *args)
        CPU.adam_update(w_ref, g, m_ref, v_ref, *args)
    for ours, reference in ((w, w_ref), (m, m_ref), (v, v_ref)):
        numpy.testing.assert_array_equal(ours, reference)
    assert shim.launches == ["adam_update"] * 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 1e-3), (0.9, 5e-4)])
def test_sgd_update_with_device_scalars_is_sgd_update(shim, momentum, weight_decay, dtype):
    """The CUDA-graph form (rate read from a device array) computes what the plain form does,
    and so does base.py's default for it; the rate changes between steps as under a schedule."""
    shape = (33, 7)
    w, w_default, w_ref = (_random(shape, dtype, seed=14) for _ in range(3))
    v, v_default, v_ref = ((numpy.zeros(shape, dtype) if momentum else None) for _ in range(3))
    for step, lr in enumerate((0.05, 0.02, 0.01)):
        g = _random(shape, dtype, seed=20 + step)
        scalars = numpy.array([lr], dtype)
        shim.sgd_update_device_scalars(w, g, v, scalars, momentum, weight_decay)
        Backend.sgd_update_device_scalars(CPU, w_default, g, v_default, scalars, momentum,
                                          weight_decay)
        CPU.sgd_update(w_ref, g, v_ref, lr, momentum, weight_decay)
    for ours in (w, w_default):
        numpy.testing.assert_array_equal(ours, w_ref)
    if momentum:
        numpy.testing.assert_array_equal(v, v_ref)
    kernel = "sgd_momentum_device_scalars" if momentum else "sgd_plain_device_scalars"
    assert shim.launches == [kernel] * 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam_update_with_device_scalars_is_adam_update(shim, weight_decay, decoupled, dtype):
    shape = (33, 7)
    w, w_default, w_ref = (_random(shape, dtype, seed=40) for _ in range(3))
    (m, v), (m_d, v_d), (m_ref, v_ref) = ((numpy.zeros(shape, dtype), numpy.zeros(shape, dtype))
                                          for _ in range(3))
    betas = (0.9, 0.999)
    for step in range(1, 5):
        g = _random(shape, dtype, seed=40 + step)
        lr = 1e-3 / step
        scalars = numpy.array([lr, 1 - betas[0] ** step, 1 - betas[1] ** step], dtype)
        shim.adam_update_device_scalars(w, g, m, v, scalars, betas, 1e-8, weight_decay, decoupled)
        Backend.adam_update_device_scalars(CPU, w_default, g, m_d, v_d, scalars, betas, 1e-8,
                                           weight_decay, decoupled)
        CPU.adam_update(w_ref, g, m_ref, v_ref, lr, betas, 1e-8, weight_decay, decoupled, step)
    for ours, theirs, reference in ((w, w_default, w_ref), (m, m_d, m_ref), (v, v_d, v_ref)):
        numpy.testing.assert_array_equal(ours, reference)
        numpy.testing.assert_array_equal(theirs, reference)
    assert shim.launches == ["adam_update_device_scalars"] * 4


# ------------------------------------------------------------------------- fallbacks and checks
def test_kernels_off_uses_base_path(library):
    off = ShimBackend(library)
    off.kernels_enabled = False
    x = _random((2, 3, 6, 6), "float32", seed=15)
    win = Window(3, 3, 2, 2, 1, 1, 1, 1)
    numpy.testing.assert_array_equal(off.im2col(x, win), CPU.im2col(x, win))
    off.max_pool_forward(x, win)
    assert off.launches == []


def test_dtype_without_kernel_falls_back(shim):
    x = _random((1, 2, 5, 5), "float16", seed=16)
    numpy.testing.assert_array_equal(shim.avg_pool_forward(x, Window(2, 2, 1, 1)),
                                     CPU.avg_pool_forward(x, Window(2, 2, 1, 1)))
    assert shim.launches == []


def test_argument_check_rejects_uncast_scalars():
    """The shim's launch check catches what CuPy would silently misread."""
    params = ["const T*", "T*", "long long"]
    arrays = (numpy.zeros(2, numpy.float32), numpy.zeros(2, numpy.float32))
    check_arguments("k", "float", params, arrays + (numpy.int64(2),))
    for wrong in (2, numpy.int32(2), 2.0):
        with pytest.raises(TypeError, match="parameter 2 is 'long long'"):
            check_arguments("k", "float", params, arrays + (wrong,))
    strided = numpy.zeros(4, numpy.float32)[::2]  # a view the kernel would read wrongly
    with pytest.raises(TypeError, match="parameter 1"):
        check_arguments("k", "float", params, (arrays[0], strided, numpy.int64(2)))
    with pytest.raises(TypeError, match="parameter 0"):  # float64 data for a float kernel
        check_arguments("k", "float", params, (arrays[0].astype(numpy.float64), *arrays[1:],
                                               numpy.int64(2)))
