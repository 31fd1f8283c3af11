"""Capturing GPU work into a CUDA graph with CuPy, and replaying it (used by cnnx/graph.py).

A CUDA graph records the kernels a stream would run, with their arguments and memory
addresses, and replays them all with one launch: the host's cost per step (Python, CuPy's
argument handling, ~40 kernel launches at 5-30 µs each) disappears. What that asks of the
recorded work, and how ``CudaGraphCapture`` provides it:

- Recording happens on a stream of our own (capture needs a non-default stream); the work
  queued before on the caller's stream is waited for first, and the recording stream is
  synchronized after, so the two never overlap.
- Every address a graph uses must stay valid and must not be handed to anyone else: the
  warm-up steps and the capture allocate from a private CuPy memory pool that nothing else
  uses. Arrays freed during the capture go back to that pool, where only the graph uses them.
- Warm-up steps (ordinary steps, on the same stream and pool) come first: kernels compile,
  and the pool caches a block of every size the step asks for.
- Matrix products go to a cuBLAS handle of our own (``cublas.CublasHandle``), bound to the
  recording stream with its own workspace: CuPy refuses cuBLAS calls during capture.
- Nothing in the recorded step may wait on the GPU from the host (a ``float(array)``): that
  is an error during capture. fit's steps never do (tests/test_model.py checks it on a GPU).
- Python's cyclic garbage collector does not run during the capture: it would run the
  finalizers of whatever garbage it finds (CuPy streams, events, arrays of other pools) in the
  middle of the recording, work that has nothing to do with the step. Garbage is collected
  just before instead.

CuPy appears only here and in cupy_backend.py.
"""

from __future__ import annotations

import contextlib
import gc

from .cublas import CublasHandle


class CudaGraphCapture:
    """Warm-up runs, capture and replay of CUDA graphs for one ``CupyBackend``."""

    def __init__(self, backend):
        cupy = backend.xp
        self.backend, self.cupy = backend, cupy
        with backend.device:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.pool = cupy.cuda.MemoryPool()
            with cupy.cuda.using_allocator(self.pool.malloc):
                self.blas = CublasHandle(cupy, self.stream.ptr)

    @contextlib.contextmanager
    def _recording_stream(self):
        cupy = self.cupy
        with self.backend.device:
            cupy.cuda.get_current_stream().synchronize()  # e.g. the batch copied in before
            with self.stream, cupy.cuda.using_allocator(self.pool.malloc), \
                    self.backend.products_by(self.blas.matmul):
                yield
            self.stream.synchronize()

    def run(self, step) -> None:
        """Run ``step()`` now, as the capture will record it (a warm-up step)."""
        with self._recording_stream():
            step()

    def capture(self, step):
        """Record ``step()`` into a graph without running it; returns the graph."""
        gc.collect()
        collecting = gc.isenabled()
        gc.disable()
        try:
            with self._recording_stream():
                self.stream.begin_capture()
                try:
                    step()
                except BaseException:
                    with contextlib.suppress(Exception):  # leave capture mode; report step's error
                        self.stream.end_capture()
                    raise
                return self.stream.end_capture()
        finally:
            if collecting:
                gc.enable()

    def launch(self, graph) -> None:
        """Replay ``graph`` on the caller's current stream (ordered with its other work)."""
        with self.backend.device:
            graph.launch(self.cupy.cuda.get_current_stream())

    def close(self) -> None:
        self.blas.close()
