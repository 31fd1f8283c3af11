"""The CPU backend's fast paths (cnnx/backends/cpu_*.py, numpy_backend.py) against the plain
defaults written in base.py, on the shapes where each path applies and where it does not.

Every test runs three times: with the library's own settings; "split": every operation cut
into pieces on two threads and products in blocks of a few columns; "split-rebuild": the same,
and convolutions that rebuild their column matrix in chunks of a few columns (as big batches
do). So piece, chunk and block boundaries are exercised on small inputs.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cnnx.backends import Backend, Window, cpu_conv, cpu_threads, get_backend
from cnnx.backends import numpy_backend
from cnnx.backends.numpy_backend import flush_subnormals

CPU = get_backend("cpu")

CONV_WINDOWS = [
    Window(3, 3, 1, 1, 1, 1, 1, 1),  # the reference CNN's convolutions
    Window(3, 3, 2, 2, 1, 1, 1, 1),  # strided
    Window(2, 3, 1, 2, 0, 1, 2, 0),  # rectangular, uneven padding
    Window(5, 5, 1, 1, 2, 2, 2, 2),
    Window(1, 1, 1, 1),
]
POOL_WINDOWS = [
    Window(2, 2, 2, 2),              # the tournament (windows tile the input)
    Window(2, 2, 1, 1),              # overlapping 2x2: tournament, and adds in backward
    Window(3, 3, 2, 2),              # overlapping, the sequential path
    Window(3, 3, 2, 2, 1, 1, 1, 1),  # with -inf padding
    Window(2, 2, 3, 3),              # gaps between windows: cells no window reads
    Window(1, 2, 1, 2),
]


@pytest.fixture(params=["default", "split", "split-rebuild", "split-many"])
def mode(request, monkeypatch):
    if request.param != "default":
        # "split-many": bands of one or two output rows, so a window's rows can reach past the
        # next band into the one after it (convolution's edge rows, cpu_conv._backward_band)
        monkeypatch.setattr(cpu_threads, "WORKERS", 7 if request.param == "split-many" else 2)
        monkeypatch.setattr(cpu_threads, "MIN_ELEMENTS", 1)
        monkeypatch.setattr(cpu_conv, "GEMM_COLUMNS", 5)
    if request.param == "split-rebuild":  # the column matrix rebuilt in chunks in backward
        monkeypatch.setattr(cpu_conv, "KEEP_COL_BYTES", 0)
        monkeypatch.setattr(cpu_conv, "CHUNK_COLUMNS", 7)
    return request.param


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}


def layouts(a):
    """The same NCHW values as a contiguous array, a batch-last view (what the CPU convolution
    hands out) and a view with a gap between rows (no contiguous axis order at all)."""
    batch_last = np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    wide = np.zeros(a.shape[:3] + (a.shape[3] + 3,), a.dtype)
    wide[..., :a.shape[3]] = a
    return {"nchw": np.ascontiguousarray(a), "batch_last": batch_last,
            "strided": wide[..., :a.shape[3]]}


# ----------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("win", CONV_WINDOWS, ids=str)
@pytest.mark.parametrize("n, c", [(1, 1), (3, 1), (2, 4)])
@pytest.mark.parametrize("layout", ["nchw", "batch_last", "strided"])
def test_conv2d_matches_the_default(mode, dtype, relu, win, n, c, layout):
    rng = np.random.default_rng(0)
    x = layouts(rng.standard_normal((n, c, 9, 8)).astype(dtype))[layout]
    w = rng.standard_normal((3, c, win.kh, win.kw)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    y, saved = CPU.conv2d_forward(x, w, b, win, relu)
    y0, saved0 = Backend.conv2d_forward(CPU, x, w, b, win, relu)
    np.testing.assert_allclose(y, y0, **tol(dtype))
    dy = layouts(rng.standard_normal(y.shape).astype(dtype))[layout]
    got = CPU.conv2d_backward(dy, saved, w, win, relu)
    want = Backend.conv2d_backward(CPU, dy, saved0, w, win, relu)
    for g, g0 in zip(got, want):
        assert g.shape == g0.shape and g.dtype == g0.dtype
        np.testing.assert_allclose(g, g0, **tol(dtype))
    dw, db = CPU.conv2d_backward_params(dy, saved, w, win, relu)
    np.testing.assert_array_equal(dw, got[1])
    np.testing.assert_array_equal(db, got[2])


def test_conv2d_backward_is_bitwise_repeatable(mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 11, 11)).astype("float32")
    w = rng.standard_normal((5, 3, 3, 3)).astype("float32")
    win = CONV_WINDOWS[0]
    y, saved = CPU.conv2d_forward(x, w, np.zeros(5, "float32"), win, True)
    dy = rng.standard_normal(y.shape).astype("float32")
    first = CPU.conv2d_backward(dy, saved, w, win, True)
    second = CPU.conv2d_backward(dy, saved, w, win, True)
    for a, b in zip(first, second):
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def test_conv2d_results_are_not_reused_by_later_calls(mode):
    # outputs are views of per-call memory: a second call must not overwrite the first's
    rng = np.random.default_rng(2)
    w, b, win = rng.standard_normal((4, 2, 3, 3)), np.zeros(4), CONV_WINDOWS[0]
    x1, x2 = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((2, 2, 6, 6))
    y1, saved1 = CPU.conv2d_forward(x1, w, b, win, True)
    kept = y1.copy()
    dy = rng.standard_normal(y1.shape)
    dx1 = CPU.conv2d_backward(dy, saved1, w, win, True)[0]
    kept_dx = dx1.copy()
    y2, saved2 = CPU.conv2d_forward(x2, w, b, win, True)
    dx2 = CPU.conv2d_backward(dy, saved2, w, win, True)[0]
    np.testing.assert_array_equal(y1, kept)
    np.testing.assert_array_equal(dx1, kept_dx)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)


def test_conv2d_hands_out_batch_last_views_and_reads_them_without_copies():
    x = np.random.default_rng(3).standard_normal((5, 2, 6, 6)).astype("float32")
    y, _ = CPU.conv2d_forward(x, np.ones((3, 2, 3, 3), "float32"), np.zeros(3, "float32"),
                              CONV_WINDOWS[0], True)
    assert y.shape == (5, 3, 6, 6)
    assert y.transpose(1, 2, 3, 0).flags.c_contiguous  # batch-last memory under the NCHW view


# ----------------------------------------------------------------------------- max-pooling
def tie_free(rng, shape):
    return rng.permutation(np.linspace(-1, 1, int(np.prod(shape)))).reshape(shape)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("win", POOL_WINDOWS, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 7, 5), (3, 2, 4, 9)])
@pytest.mark.parametrize("layout", ["nchw", "batch_last", "strided"])
def test_max_pool_matches_the_default(mode, dtype, win, shape, layout):
    rng = np.random.default_rng(4)
    x = layouts(tie_free(rng, shape).astype(dtype))[layout]
    y, argmax = CPU.max_pool_forward(x, win)
    y0, argmax0 = Backend.max_pool_forward(CPU, x, win)
    assert argmax.dtype == np.int32 and argmax.shape == argmax0.shape
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(argmax, argmax0)
    dy = layouts(rng.standard_normal(y.shape).astype(dtype))[layout]
    dx = CPU.max_pool_backward(dy, argmax, x.shape, win)
    np.testing.assert_allclose(dx, Backend.max_pool_backward(CPU, dy, argmax0, x.shape, win),
                               **tol(dtype))


@pytest.mark.parametrize("win", POOL_WINDOWS[:3], ids=str)
@pytest.mark.parametrize("pattern", ["constant", "pairs", "columns"])
def test_max_pool_ties_go_to_the_first_offset_as_in_the_default(mode, win, pattern):
    # ties everywhere: only the order of the comparisons decides the argmax
    rng = np.random.default_rng(5)
    x = {"constant": np.ones((2, 2, 6, 6)),
         "pairs": rng.integers(0, 2, (2, 2, 6, 6)).astype(float),
         "columns": np.tile(rng.integers(0, 3, 6).astype(float), (2, 2, 6, 1))}[pattern]
    np.testing.assert_array_equal(CPU.max_pool_forward(x, win)[1],
                                  Backend.max_pool_forward(CPU, x, win)[1])


def test_max_pool_keeps_the_memory_order_of_its_input():
    x = layouts(np.random.default_rng(6).standard_normal((4, 3, 8, 8)))["batch_last"]
    y, argmax = CPU.max_pool_forward(x, POOL_WINDOWS[0])
    dx = CPU.max_pool_backward(np.ones(y.shape), argmax, x.shape, POOL_WINDOWS[0])
    for a in (y, argmax, dx):
        assert a.transpose(1, 2, 3, 0).flags.c_contiguous


# ----------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (1, 5, 3, 3), (2, 1, 1, 7)])
@pytest.mark.parametrize("layout", ["nchw", "batch_last", "strided"])
@pytest.mark.parametrize("dy_layout", ["nchw", "batch_last"])
def test_batch_norm_matches_the_default(mode, dtype, relu, training, shape, layout, dy_layout):
    rng = np.random.default_rng(10)
    c = shape[1]
    x = layouts((rng.standard_normal(shape) * 3 + 2).astype(dtype))[layout]
    gamma = rng.uniform(-2, 2, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    stats = None if training else (rng.standard_normal(c).astype(dtype),
                                   rng.uniform(0.5, 2, c).astype(dtype))
    y, saved, mean, var = CPU.batch_norm_forward(x, gamma, beta, 1e-5, relu, stats)
    y0, saved0, mean0, var0 = Backend.batch_norm_forward(CPU, x, gamma, beta, 1e-5, relu, stats)
    assert y.shape == y0.shape and y.dtype == y0.dtype
    np.testing.assert_allclose(y, y0, **tol(dtype))
    np.testing.assert_allclose(mean, mean0, **tol(dtype))
    np.testing.assert_allclose(var, var0, **tol(dtype))
    if layout == "batch_last":  # the fast path ran, and kept the layout
        assert y.transpose(1, 2, 3, 0).flags.c_contiguous
    dy = layouts(rng.standard_normal(shape).astype(dtype))[dy_layout]
    got = CPU.batch_norm_backward(dy, saved, gamma)
    want = Backend.batch_norm_backward(CPU, dy, saved0, gamma)
    for g, g0 in zip(got, want):
        assert g.shape == g0.shape and g.dtype == g0.dtype
        np.testing.assert_allclose(g, g0, **tol(dtype))


# ----------------------------------------------------------------------------- dense, SGD
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m, k, n", [(16, 40, 8), (5, 30, 64), (1, 3, 1), (33, 7, 33)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_matches_numpy(mode, dtype, m, k, n, transposed):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T if transposed else \
        rng.standard_normal((k, n)).astype(dtype)
    np.testing.assert_allclose(CPU.matmul(a, b), a @ b, **tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_flush_subnormals_zeroes_only_subnormals(dtype):
    tiny = np.finfo(dtype).tiny
    a = np.array([tiny / 4, -tiny / 3, tiny, -tiny, 0.0, -0.0, 1.5, -2e-3, np.inf, np.nan], dtype)
    want = np.array([0, 0, tiny, -tiny, 0, 0, 1.5, -2e-3, np.inf, np.nan], dtype)
    flush_subnormals(a)
    np.testing.assert_array_equal(a, want)  # NaN stays NaN: a diverging run must still show


@pytest.mark.parametrize("momentum, decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2), (0.0, 1e-2)])
@pytest.mark.parametrize("size", [10, 5000])
def test_sgd_update_is_the_default_rule_exactly(mode, momentum, decay, size):
    rng = np.random.default_rng(8)
    w, g, v = (rng.standard_normal(size).astype("float32") for _ in range(3))
    w0, v0 = w.copy(), v.copy()
    CPU.sgd_update(w, g, v if momentum else None, 0.1, momentum, decay)
    Backend.sgd_update(CPU, w0, g, v0 if momentum else None, 0.1, momentum, decay)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(v, v0)


def test_sgd_update_lets_no_velocity_decay_into_subnormals():
    size = numpy_backend.LARGE_PARAMETER
    w = np.ones(size, "float32")
    v = np.full(size, 1e-36, "float32")
    for _ in range(100):  # a zero gradient: v shrinks by 0.9 a step
        CPU.sgd_update(w, np.zeros(size, "float32"), v, 0.1, 0.9, 0.0)
        assert not ((v != 0) & (np.abs(v) < np.finfo("float32").tiny)).any()
    assert (v == 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decay, decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
@pytest.mark.parametrize("size", [10, 5000, (700, 150)])
def test_adam_update_is_the_default_rule_exactly(mode, decay, decoupled, size, dtype):
    rng = np.random.default_rng(9)
    w, m = (rng.standard_normal(size).astype(dtype) for _ in range(2))
    v = rng.random(size).astype(dtype)
    w0, m0, v0 = w.copy(), m.copy(), v.copy()
    for step in (1, 2, 7):
        g = rng.standard_normal(size).astype(dtype).T.copy().T  # any layout of the gradient
        args = (2e-3, (0.9, 0.999), 1e-8, decay, decoupled, step)
        CPU.adam_update(w, g, m, v, *args)
        Backend.adam_update(CPU, w0, g, m0, v0, *args)
    for ours, default in ((w, w0), (m, m0), (v, v0)):
        np.testing.assert_array_equal(ours, default)


def test_adam_update_lets_no_first_moment_decay_into_subnormals():
    size = numpy_backend.LARGE_ADAM_PARAMETER
    w, v = np.ones(size, "float32"), np.ones(size, "float32")
    m = np.full(size, 1e-36, "float32")
    for step in range(1, 101):  # a zero gradient: m shrinks by 0.9 a step
        CPU.adam_update(w, np.zeros(size, "float32"), m, v, 1e-3, (0.9, 0.999), 1e-8, 0.0,
                        False, step)
        assert not ((m != 0) & (np.abs(m) < np.finfo("float32").tiny)).any()
    assert (m == 0).all()


# ----------------------------------------------------------------------------- threads
def test_parallel_covers_the_range_in_order_and_raises_piece_errors(mode):
    got = cpu_threads.parallel(lambda a, b: list(range(a, b)), 10, 1 << 30)
    assert sum(got, []) == list(range(10))
    if mode != "default":
        assert len(got) == cpu_threads.WORKERS

    def failing(a, b):
        if a > 0:
            raise ZeroDivisionError("in a worker")
        return a
    if mode != "default":
        with pytest.raises(ZeroDivisionError):
            cpu_threads.parallel(failing, 10, 1 << 30)


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0",
                    reason="numpy.errstate is a context variable only since NumPy 2")
def test_pieces_run_under_the_callers_errstate(monkeypatch):
    """A piece that a worker thread runs sees the caller's numpy.errstate (here: overflow
    raises), as the caller's own piece does."""
    monkeypatch.setattr(cpu_threads, "WORKERS", 2)
    on_worker = threading.Event()

    def overflow(a, b):
        if a == 0:  # the caller's piece: wait until a worker has taken the other one
            assert on_worker.wait(10)
            return None
        on_worker.set()
        return np.full(4, 3e38, np.float32) * np.float32(10)
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            cpu_threads.parallel(overflow, 2, 1 << 30)


def test_parallel_inside_a_piece_runs_in_one_piece(mode):
    def outer(a, b):
        return cpu_threads.parallel(lambda c, d: threading.current_thread().name, 4, 1 << 30)
    for names in cpu_threads.parallel(outer, 2, 1 << 30):
        assert len(names) in (1, min(cpu_threads.WORKERS, 4))  # no deadlock, whatever the thread


@pytest.mark.parametrize("total, pieces", [(1, 2), (2, 2), (7, 2), (10, 3)])
def test_pieces_cut_the_range_exactly(monkeypatch, total, pieces):
    monkeypatch.setattr(cpu_threads, "WORKERS", pieces)
    parts = cpu_threads.pieces(total, 1 << 30)
    assert parts[0][0] == 0 and parts[-1][1] == total
    assert all(a < b for a, b in parts) and all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
    assert len(parts) == min(pieces, total)


def test_one_blas_thread_restores_the_blas_setting():
    setters = cpu_threads._find_blas_setters()
    if setters is None:
        pytest.skip("no OpenBLAS found to control")
    get, set_ = setters
    before = get()
    with cpu_threads.one_blas_thread():
        assert get() == 1
        with cpu_threads.one_blas_thread():
            assert get() == 1
        assert get() == 1
    assert get() == before


class _CountingBlasLimit:
    """Stands in for cpu_threads.one_blas_thread and counts how often it is entered."""

    entered = 0

    def __enter__(self):
        type(self).entered += 1

    def __exit__(self, *exc_info):
        pass


def test_blas_threads_only_runs_every_operation_in_one_piece_and_leaves_blas_alone(monkeypatch):
    monkeypatch.setattr(cpu_threads, "WORKERS", 2)
    monkeypatch.setattr(cpu_threads, "one_blas_thread", _CountingBlasLimit)
    monkeypatch.setattr(_CountingBlasLimit, "entered", 0)
    split = cpu_threads.parallel(lambda a, b: (a, b), 10, 1 << 30)
    assert split == [(0, 5), (5, 10)] and _CountingBlasLimit.entered == 1
    with cpu_threads.blas_threads_only():
        with cpu_threads.blas_threads_only():  # re-entrant
            assert cpu_threads.parallel(lambda a, b: (a, b), 10, 1 << 30) == [(0, 10)]
        assert cpu_threads.parallel(lambda a, b: (a, b), 10, 1 << 30) == [(0, 10)]
    assert _CountingBlasLimit.entered == 1  # BLAS's own thread count was left as it was
    assert cpu_threads.parallel(lambda a, b: (a, b), 10, 1 << 30) == split


class _CountingPiece(cpu_threads._Piece):
    """cpu_threads._Piece, counting the pieces handed to the worker threads."""

    handed = 0

    def __init__(self, fn, args):
        super().__init__(fn, args)
        type(self).handed += 1


def test_outputs_per_example_counts_every_layers_output():
    from cnnx import models
    model = models.build("reference")
    # conv 16x28x28, pool 16x14x14, conv 32x14x14, pool 32x7x7, flatten 1568, dense 128, 10
    assert model.outputs_per_example((1, 28, 28)) == 12544 + 3136 + 6272 + 1568 + 1568 + 128 + 10
    assert model.outputs_per_example((3, 28, 28)) == 0  # does not fit: forward will say why


REFERENCE_OUTPUTS = 25226  # per 28x28 image, as counted above


@pytest.mark.parametrize("batch, handed", [
    (cpu_threads.SMALL_WORK // REFERENCE_OUTPUTS, False),  # the largest small step (31)
    (1, False),
    (cpu_threads.SMALL_WORK // REFERENCE_OUTPUTS + 1, True),
    (64, True),
])
def test_small_steps_and_forward_passes_leave_the_cores_to_blas(monkeypatch, batch, handed):
    from cnnx import losses, models, optim
    from cnnx.train import evaluate, predict, train_step
    monkeypatch.setattr(cpu_threads, "WORKERS", 2)
    monkeypatch.setattr(cpu_threads, "_Piece", _CountingPiece)
    model = models.build("reference", seed=0)
    loss, opt = losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, 1, 28, 28)).astype("float32")
    y = rng.integers(0, 10, batch)
    for work in (lambda: train_step(model, loss, opt, x, y), lambda: predict(model, x),
                 lambda: evaluate(model, loss, x, y)):
        monkeypatch.setattr(_CountingPiece, "handed", 0)
        work()
        assert (_CountingPiece.handed > 0) == handed
    assert cpu_threads._blas_threads_only == 0


def test_a_small_batch_step_is_the_split_step_to_rounding():
    # the two arrangements sum the same products in other orders (bands, BLAS's blocking)
    from cnnx import losses, models, optim
    from cnnx.train import train_step
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 1, 28, 28)).astype("float64")
    y = rng.integers(0, 10, 16)
    results = []
    for small in (cpu_threads.SMALL_WORK, 0):  # 0: cut into pieces as a large step is
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cpu_threads, "SMALL_WORK", small)
            patch.setattr(cpu_threads, "MIN_ELEMENTS", 1)
            model = models.build("reference", seed=0, dtype="float64")
            loss, opt = losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1, momentum=0.9)
            for _ in range(2):
                train_step(model, loss, opt, x, y)
            results.append([layer.params[k].copy() for _, layer, k in model.parameters()])
    for small, split in zip(*results):
        np.testing.assert_allclose(small, split, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("preset", ["reference", "seed-cnn"])
def test_training_backward_skips_only_the_input_gradient(mode, preset):
    # train_step asks for no dL/dX (the first convolution then skips its dX product and
    # col2im): every parameter gradient must be exactly the full backward pass's
    from cnnx import losses, models
    model = models.build(preset, seed=0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 1, 28, 28)).astype("float32")
    y = rng.integers(0, 10, 5)
    loss = losses.SoftmaxCrossEntropy()
    grads = []
    for input_grad in (True, False):
        loss.forward(model.forward(x), y)
        dx = model.backward(loss.backward(), input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([layer.grads[k].copy() for _, layer, k in model.parameters()])
    for full, skipped in zip(*grads):
        np.testing.assert_array_equal(full, skipped)
