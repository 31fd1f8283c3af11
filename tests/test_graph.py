"""CUDA-graph training (cnnx/graph.py, cnnx/backends/cuda_graph.py, cnnx/backends/cublas.py).

Runs on "cuda:0" when a GPU is usable (real capture and replay, our own cuBLAS handle) and on
"cuda-shim" everywhere: the CUDA backend's code and kernels on the CPU, with a stand-in that
records a step without running it and runs it at each launch (tests/shim/shim_backend.py),
and with every product computed from raw memory the way cuBLAS is asked to compute it.
"""

from __future__ import annotations

import contextlib
import gc
import types

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from cnnx import Sequential, fit, layers, losses, models, optim
from cnnx.backends import DeviceError, available_backends, cuda_graph, get_backend
from cnnx.backends.cublas import OP_N, OP_T, gemm_plan, layout
from cnnx.graph import GraphedTrainStep
from cnnx.schedules import SCHEDULES
from shim.shim_backend import ShimBackend, emulated_cublas_matmul
from test_model import REFERENCE_STEP_KERNELS, synthetic

GRAPH_BACKENDS = [name for name in available_backends() if name.startswith("cuda")] + ["cuda-shim"]


@pytest.fixture(params=GRAPH_BACKENDS, scope="module")
def graph_backend(request):
    if request.param == "cuda-shim":
        return ShimBackend(request.getfixturevalue("shim_library"))
    return get_backend(request.param)


def _on_gpu(backend) -> bool:
    return not isinstance(backend, ShimBackend)


# ----------------------------------------------------------------------------- cuBLAS arguments
def _operands(rng):
    """(name, a, b) pairs in every memory layout a training step hands to matmul."""
    base = rng.standard_normal((9, 13)).astype(np.float64)
    wide = rng.standard_normal((7, 20)).astype(np.float64)
    yield "C @ C", base[:, :5].copy(), rng.standard_normal((5, 4))
    yield "C @ F", base[:, :5].copy(), np.asfortranarray(rng.standard_normal((5, 4)))
    yield "F @ C", base.T.copy().T[:, :5], rng.standard_normal((5, 4))
    yield "transposes", rng.standard_normal((6, 9)).T, rng.standard_normal((3, 6)).T
    yield "rows of a wider matrix", wide[:, 2:9], rng.standard_normal((7, 4))
    yield "one row", rng.standard_normal((1, 8)), rng.standard_normal((8, 3))
    yield "one column", rng.standard_normal((8, 1)), rng.standard_normal((1, 5))
    yield "column of a matrix", base[:, 3:4], rng.standard_normal((1, 6))
    yield "row of a transpose", base.T[2:3, :], rng.standard_normal((9, 2))
    yield "1x1", rng.standard_normal((1, 1)), rng.standard_normal((1, 1))
    yield "ones @ delta (db)", np.ones((1, 12)), rng.standard_normal((12, 7))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_arguments_read_every_layout_right(dtype):
    """gemm_plan's ops and leading dimensions, applied to raw memory as cuBLAS applies them,
    give a @ b -- bit for bit, since the operands read back are a and b themselves."""
    for name, a, b in _operands(np.random.default_rng(3)):
        a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
        if a.dtype != dtype:  # astype(copy=False) may copy and change the layout: keep views
            continue
        assert layout(a.shape, a.strides, a.itemsize) is not None, name
        np.testing.assert_array_equal(emulated_cublas_matmul(a, b), a @ b, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_our_cublas_handle_computes_what_cupy_does(graph_backend, dtype):
    """On a GPU: the ctypes cuBLAS handle the capture uses, on every layout above."""
    if not _on_gpu(graph_backend):
        pytest.skip("needs a GPU (the layouts' arithmetic is checked on the CPU above)")
    from cnnx.backends.cublas import CublasHandle

    cupy = graph_backend.xp
    handle = CublasHandle(cupy, cupy.cuda.get_current_stream().ptr)
    try:
        for name, a, b in _operands(np.random.default_rng(3)):
            a_d = cupy.asarray(np.ascontiguousarray(a, dtype))
            b_d = cupy.asarray(np.ascontiguousarray(b, dtype))
            if not a.flags.c_contiguous:  # rebuild the same layout on the device
                a_d = cupy.asfortranarray(a_d) if a.flags.f_contiguous else a_d
            got, want = handle.matmul(a_d, b_d), a_d @ b_d
            np.testing.assert_allclose(cupy.asnumpy(got), cupy.asnumpy(want),
                                       rtol=1e-5 if dtype == "float32" else 1e-12, err_msg=name)
        wide = cupy.asarray(np.random.default_rng(4).standard_normal((7, 20)).astype(dtype))
        b_d = cupy.ones((7, 4), dtype)
        np.testing.assert_allclose(cupy.asnumpy(handle.matmul(wide[:, 2:9], b_d)),
                                   cupy.asnumpy(wide[:, 2:9] @ b_d), rtol=1e-5)
    finally:
        handle.close()


def test_gemm_plan_for_a_row_major_product():
    # C (2x3) = A (2x4) @ B (4x3), both C-contiguous: C^T = B^T A^T, cuBLAS (3x2) = (3x4)(4x2)
    plan = gemm_plan((2, 4), (OP_N, 4), (4, 3), (OP_N, 3))
    assert (plan.transa, plan.transb, plan.m, plan.n, plan.k) == (OP_N, OP_N, 3, 2, 4)
    assert (plan.lda, plan.ldb, plan.ldc) == (3, 4, 3)
    with pytest.raises(ValueError, match="do not align"):
        gemm_plan((2, 4), (OP_N, 4), (5, 3), (OP_N, 3))


def test_layout_refuses_memory_cublas_cannot_read():
    x = np.zeros((4, 6), np.float32)
    assert layout(x.shape, x.strides, 4) == (OP_N, 6)
    assert layout(x.T.shape, x.T.strides, 4) == (OP_T, 6)
    assert layout((4, 3), x[:, ::2].strides, 4) is None  # neither axis unit-stride
    assert layout((4, 6), x[::-1].strides, 4) is None  # negative stride
    broadcast = as_strided(x, shape=(4, 6), strides=(0, 4))
    assert layout(broadcast.shape, broadcast.strides, 4) is None  # rows overlap


# ----------------------------------------------------------------------------- graphed training
def _train(backend, model_fn, optimizer_fn, cuda_graph, n=100, batch_size=16, epochs=2,
           schedule=None, seed=0):
    model = model_fn().to(backend)
    opt = optimizer_fn(model)
    x, y = synthetic(n, seed=seed)
    history = fit(model, losses.SoftmaxCrossEntropy(), opt, x, y, epochs=epochs,
                  batch_size=batch_size, seed=1, schedule=schedule, cuda_graph=cuda_graph)
    return model, opt, history


def _assert_same_training(backend, graphed, eager):
    (model_g, opt_g, hist_g), (model_e, opt_e, hist_e) = graphed, eager
    state_g, state_e = model_g.state_dict(), model_e.state_dict()
    for key in state_e:
        if _on_gpu(backend):  # our cuBLAS handle may pick other GEMM algorithms than CuPy's
            np.testing.assert_allclose(state_g[key], state_e[key], rtol=1e-4, atol=1e-6,
                                       err_msg=key)
        else:
            np.testing.assert_array_equal(state_g[key], state_e[key], err_msg=key)
    for g, e in zip(hist_g, hist_e):
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-5)
        if _on_gpu(backend):  # a near-tie between two logits may go either way
            assert g["train_accuracy"] == pytest.approx(e["train_accuracy"], abs=0.02)
        else:
            assert g["train_accuracy"] == e["train_accuracy"]
    assert opt_g.state_dict()["lr"] == opt_e.state_dict()["lr"]
    assert getattr(opt_g, "steps", None) == getattr(opt_e, "steps", None)


OPTIMIZERS = {
    "sgd": lambda m: optim.SGD(m, lr=0.05),
    "momentum+decay": lambda m: optim.SGD(m, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda m: optim.SGD(m, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda m: optim.Adam(m, lr=2e-3, weight_decay=1e-4),
    "adamw": lambda m: optim.Adam(m, lr=2e-3, weight_decay=1e-2, decoupled=True),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_graphed_training_is_eager_training(graph_backend, optimizer):
    """Two epochs of 100 images at batch 16: per epoch six full batches (3 warm-up steps, one
    capture, then launches) and a last batch of 4 that runs eagerly, under a cosine schedule
    that changes the rate every step: the same weights, losses and step count as eager fit."""
    schedule = SCHEDULES["cosine"](0.05 if "adam" not in optimizer else 2e-3, 2, warmup_epochs=0.5)
    runs = [_train(graph_backend, lambda: models.build("reference", seed=0),
                   OPTIMIZERS[optimizer], cuda_graph, schedule=schedule)
            for cuda_graph in (True, False)]
    _assert_same_training(graph_backend, *runs)


def test_a_graphed_step_is_captured_once_and_then_launched(graph_backend):
    model = models.build("reference", seed=0).to(graph_backend)
    opt = optim.Adam(model)
    step = GraphedTrainStep(model, losses.SoftmaxCrossEntropy(), opt, warmup=2)
    x, y = synthetic(40)
    xs, ys = graph_backend.asarray(x), graph_backend.asarray(y)
    losses_seen = []
    for start in (0, 8, 16, 24, 32, 36):  # five batches of 8, then one of 4
        stop = min(start + 8, 40)
        value, logits = step(xs[start:stop], ys[start:stop])
        assert logits.shape == (stop - start, 10)
        losses_seen.append(graph_backend.scalar(value))
    assert opt.steps == 6
    assert step.captured
    if isinstance(graph_backend, ShimBackend):
        recorder = step.recorder
        assert (recorder.runs, recorder.captures, recorder.launches) == (2, 1, 3)
    assert len(set(losses_seen)) == 6  # each replay computed its own batch's loss
    step.close()


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam_update"])
def test_a_replayed_step_is_our_kernels(shim_library, optimizer):
    """What a graph records is the eager step's kernels, with the updates that read their
    scalars from the device: no fallback to the pure-xp path hides in a graphed step."""
    backend = ShimBackend(shim_library)
    model = models.build("reference", seed=0).to(backend)
    update = (optim.SGD(model, lr=0.05, momentum=0.9) if optimizer == "sgd_momentum" else
              optim.Adam(model))
    step = GraphedTrainStep(model, losses.SoftmaxCrossEntropy(), update, warmup=1)
    x, y = synthetic(16)
    for _ in range(3):  # warm-up, capture + launch, launch
        backend.launches.clear()
        step(backend.asarray(x), backend.asarray(y))
    assert backend.launches == REFERENCE_STEP_KERNELS + [optimizer + "_device_scalars"] * 8


def test_a_graphed_step_skips_the_per_call_finite_checks(shim_library):
    """They read a device value on the host, which a capture forbids; fit checks its data once
    up front instead."""
    from cnnx import config
    from cnnx.train import train_step

    backend = ShimBackend(shim_library)
    model = models.build("reference", seed=0).to(backend)
    x, y = synthetic(4)
    x[0, 0, 0, 0] = np.nan
    with config.finite_checks(True):
        with pytest.raises(ValueError, match="NaN"):
            train_step(model, losses.SoftmaxCrossEntropy(), optim.SGD(model), x, y)
        GraphedTrainStep(model, losses.SoftmaxCrossEntropy(), optim.SGD(model))(x, y)


def test_batch_norm_trains_the_same_in_a_graph(graph_backend):
    """Batch norm's running statistics are updated in place, so a replay keeps them current."""
    def model_fn():
        return Sequential([
            layers.Conv2D(1, 4, 3, padding=1), layers.BatchNorm2D(4, activation="relu"),
            layers.MaxPool2D(2), layers.Flatten(), layers.Dense(4 * 14 * 14, 10),
        ], input_shape=(1, 28, 28), seed=2)

    runs = [_train(graph_backend, model_fn, OPTIMIZERS["momentum+decay"], cuda_graph, n=64,
                   epochs=1) for cuda_graph in (True, False)]
    _assert_same_training(graph_backend, *runs)


def test_a_model_a_graph_cannot_replay_is_refused(graph_backend):
    model = Sequential([layers.Flatten(), layers.Dropout(0.5), layers.Dense(784, 10)],
                              input_shape=(1, 28, 28)).to(graph_backend)
    with pytest.raises(ValueError, match=r"cannot replay layer 1 \(Dropout\).*without --cuda-graph"):
        GraphedTrainStep(model, losses.SoftmaxCrossEntropy(), optim.SGD(model))
    model.layers[1].p = 0.0  # no randomness left: fine, and its host counter is no array
    step = GraphedTrainStep(model, losses.SoftmaxCrossEntropy(), optim.SGD(model), warmup=2)
    x, y = synthetic(8)
    for _ in range(3):
        step(graph_backend.asarray(x), graph_backend.asarray(y))
    step.close()


def test_a_capture_cuda_refuses_is_a_clear_error(shim_library, monkeypatch):
    from shim.shim_backend import ReplayByCall

    def refuse(self, step):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted")

    monkeypatch.setattr(ReplayByCall, "capture", refuse)
    backend = ShimBackend(shim_library)
    model = models.build("reference", seed=0).to(backend)
    step = GraphedTrainStep(model, losses.SoftmaxCrossEntropy(), optim.SGD(model), warmup=1)
    x, y = synthetic(8)
    step(backend.asarray(x), backend.asarray(y))  # the warm-up step runs
    with pytest.raises(DeviceError, match=r"capturing a training step in a CUDA graph failed "
                       r"\(RuntimeError: cudaErrorStreamCaptureUnsupported.*without --cuda-graph"):
        step(backend.asarray(x), backend.asarray(y))


def test_cuda_graphs_on_the_cpu_backend_are_a_clear_error():
    model = models.build("reference").to("cpu")
    with pytest.raises(DeviceError, match="CUDA graphs need the CUDA backend.*--device cuda"):
        GraphedTrainStep(model, losses.SoftmaxCrossEntropy(), optim.SGD(model))


def test_adam_counts_graphed_steps_through_count_step():
    """A replay runs no Python: step(scalars) must leave the count to the caller."""
    model = models.build("reference", seed=0)
    opt = optim.Adam(model)
    model.forward(np.zeros((2, 1, 28, 28), np.float32))
    model.backward(np.ones((2, 10), np.float32), input_grad=False)
    assert opt.graph_scalars() == [opt.lr, 1 - 0.9, 1 - 0.999]
    opt.step(scalars=np.asarray(opt.graph_scalars(), np.float32))
    assert opt.steps == 0
    opt.count_step()
    assert opt.steps == 1 and opt.graph_scalars()[1] == pytest.approx(1 - 0.9 ** 2)


# ----------------------------------------------------------------------------- the capture protocol
class _RecordingCupy:
    """Just the CuPy calls CudaGraphCapture makes, noting each one in ``log`` (no GPU needed):
    the protocol is checked here; that CUDA accepts it, by the GPU tests above."""

    def __init__(self):
        self.log, self.current, self.allocator = [], None, None
        recorder = self

        class Stream:
            def __init__(self, name="ours", non_blocking=False):
                self.name, self.ptr, self.capturing = name, 7, False

            def __enter__(self):
                self.outer, recorder.current = recorder.current, self
                return self

            def __exit__(self, *exc):
                recorder.current = self.outer

            def synchronize(self):
                assert not self.capturing, "a capturing stream was synchronized"
                recorder.log.append(f"synchronize {self.name}")

            def begin_capture(self):
                self.capturing = True
                recorder.log.append("begin capture")

            def end_capture(self):
                self.capturing = False
                recorder.log.append("end capture")
                return types.SimpleNamespace(launch=lambda stream: recorder.log.append(
                    f"launch on {stream.name}"))

        self.current = Stream("caller")
        self.cuda = types.SimpleNamespace(
            Stream=Stream, MemoryPool=lambda: types.SimpleNamespace(malloc="private pool"),
            using_allocator=lambda malloc: _swapped(self, "allocator", malloc),
            get_current_stream=lambda: self.current)


@contextlib.contextmanager
def _swapped(owner, name: str, value):
    """``owner.<name>`` is ``value`` inside the block, and what it was before after it."""
    outer = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, outer)


class _RecordingBackend:
    def __init__(self, cupy):
        self.xp, self.device, self.products = cupy, contextlib.nullcontext(), "cupy.matmul"
        self.products_by = lambda matmul: _swapped(self, "products", matmul)


@pytest.fixture
def recording(monkeypatch):
    handle = types.SimpleNamespace(matmul="our cuBLAS handle", close=lambda: None)
    monkeypatch.setattr(cuda_graph, "CublasHandle", lambda cupy, stream_ptr: handle)
    cupy = _RecordingCupy()
    backend = _RecordingBackend(cupy)
    return cupy, backend, cuda_graph.CudaGraphCapture(backend)


def _what_the_step_sees(cupy, backend, notes):
    def step():
        notes.append((cupy.current.name, cupy.allocator, backend.products, gc.isenabled()))
        cupy.log.append("step")
    return step


def test_a_capture_records_on_its_stream_pool_and_handle_without_the_collector(recording):
    cupy, backend, recorder = recording
    notes = []
    recorder.run(_what_the_step_sees(cupy, backend, notes))
    assert cupy.log == ["synchronize caller", "step", "synchronize ours"]
    assert notes == [("ours", "private pool", "our cuBLAS handle", True)]
    cupy.log.clear()
    graph = recorder.capture(_what_the_step_sees(cupy, backend, notes))
    assert cupy.log == ["synchronize caller", "begin capture", "step", "end capture",
                        "synchronize ours"]
    assert notes[1] == ("ours", "private pool", "our cuBLAS handle", False)
    assert gc.isenabled()
    assert (cupy.current.name, cupy.allocator, backend.products) == ("caller", None, "cupy.matmul")
    cupy.log.clear()
    recorder.launch(graph)
    assert cupy.log == ["launch on caller"]


def test_a_step_failing_in_capture_ends_the_capture_and_restores_everything(recording):
    cupy, backend, recorder = recording

    def step():
        raise RuntimeError("cudaErrorStreamCaptureUnsupported")
    with pytest.raises(RuntimeError, match="StreamCaptureUnsupported"):
        recorder.capture(step)
    assert cupy.log == ["synchronize caller", "begin capture", "end capture"]
    assert gc.isenabled()
    assert (cupy.current.name, cupy.allocator, backend.products) == ("caller", None, "cupy.matmul")
