"""Running the CPU backend's large operations on every core, with NumPy alone.

NumPy computes each operation on one core, except the matrix products, which OpenBLAS splits
over its own threads. Two things go wrong with that on a small machine: the copies, additions
and comparisons (half of a training step) use one core, and OpenBLAS's idle threads spin for a
while after each product, competing with whatever runs next (measured: some products 3x slower
on a busy 2-core machine, one shape 100x; BENCHMARKS.md, CPU section).

So the backend cuts its large operations into one piece per core itself (``parallel``) and
runs the pieces on a small pool of Python threads. NumPy releases the GIL inside its loops and
inside BLAS, so the pieces really run at the same time; while they do, BLAS is held to one
thread (``one_blas_thread``) so the two kinds of threads never compete. Small operations run
in the calling thread: handing a piece to another thread costs tens of microseconds.

Small steps are the exception (``blas_threads_only``): a training step on a few images is
mostly operations too small to cut, and the hand-offs of the few that are cut cost what the
second core gains. There every operation runs in one piece and BLAS threads the matrix
products as it likes, for the whole step, so that its threads never spin against ours
(measured: BENCHMARKS.md, CPU log). A step's size is the count of numbers its layers output
(``Sequential.outputs_per_example`` times the batch), known before it starts.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import queue
import re
import threading


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: pieces per operation (1 turns the pool off); CNNX_CPU_THREADS overrides the core count.
#: None until first used (``worker_count()``): a bad CNNX_CPU_THREADS read at import would stop
#: ``import cnnx`` with a traceback that the command line cannot turn into its one-line error.
WORKERS: int | None = None


def worker_count() -> int:
    """WORKERS: read from CNNX_CPU_THREADS (else the usable cores), at most 8, on first use."""
    global WORKERS
    if WORKERS is None:
        text = os.environ.get("CNNX_CPU_THREADS", "").strip() or "0"  # unset: the cores
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"CNNX_CPU_THREADS={text!r}: the number of CPU threads cnnx uses "
                             "must be a whole number (unset or 0: the usable cores, at most 8)")
        WORKERS = max(1, min(int(text) or _usable_cores(), 8))
    return WORKERS


#: operations touching fewer elements than this run in one piece (a multiply-add of a matrix
#: product counts 1/16: BLAS does them that much faster than NumPy moves an element)
MIN_ELEMENTS = 1 << 18


class _Piece:
    """One piece handed to the workers: its call, a lock taken by whichever thread runs it,
    and a lock held until its result is in. It runs in a copy of the caller's context, so
    the caller's ``numpy.errstate`` (a context variable since NumPy 2) holds in it too."""

    __slots__ = ("fn", "args", "context", "taken", "done", "result", "error")

    def __init__(self, fn, args):
        self.fn, self.args, self.result, self.error = fn, args, None, None
        self.context = contextvars.copy_context()
        self.taken = threading.Lock()
        self.done = threading.Lock()
        self.done.acquire()

    def take(self) -> bool:
        """True for the first thread to ask: that one runs the piece."""
        return self.taken.acquire(blocking=False)

    def run(self):
        try:
            self.result = self.context.run(self.fn, *self.args)
        except BaseException as exc:  # handed back to the caller by wait()
            self.error = exc
        self.done.release()

    def wait(self):
        self.done.acquire()
        if self.error is not None:
            raise self.error
        return self.result


# Why not concurrent.futures: its hand-off costs ~18 us against ~10 us for a queue and a lock,
# and a step at batch 16 makes about 15 hand-offs (BENCHMARKS.md).
_jobs: queue.SimpleQueue = queue.SimpleQueue()
_workers: list = []
_workers_lock = threading.Lock()


def _work():
    while True:
        piece = _jobs.get()
        if piece.take():
            piece.run()


def _forget_workers() -> None:
    # a forked child has no copies of the parent's threads: start its own when needed
    global _jobs
    _jobs = queue.SimpleQueue()
    _workers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _start_workers() -> None:
    with _workers_lock:
        while len(_workers) < worker_count() - 1:
            thread = threading.Thread(target=_work, name=f"cnnx-cpu-{len(_workers)}", daemon=True)
            thread.start()
            _workers.append(thread)


def pieces(total: int, elements: int, min_elements: int | None = None) -> list[tuple[int, int]]:
    """``[(start, stop)]`` cutting ``range(total)`` into up to WORKERS near-equal pieces; one
    piece when the work (``elements`` touched in all) is too small to be worth splitting."""
    min_elements = MIN_ELEMENTS if min_elements is None else min_elements
    count = min(worker_count(), total, max(1, elements // min_elements))
    bounds = [total * k // count for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


#: training steps and forward passes whose layers output at most this many numbers in all run
#: ``blas_threads_only``. Measured on 2 cores (whole step, that way against cut into pieces;
#: BENCHMARKS.md): reference CNN (25k numbers per image) +29% at batch 8, +23% at 16, even at
#: 24 and 32, -7% at 48; lenet5 (8.5k) +28% at 16, +30% at 32, +16% at 64; fmnist-small (92k)
#: +24% at 8, even at 16; fmnist-bn (167k) -3% at 8, -14% at 16
SMALL_WORK = 3 << 18
_blas_threads_only = 0  # depth of blas_threads_only blocks


class blas_threads_only:  # noqa: N801 - used like a function: ``with blas_threads_only():``
    """Inside this block ``parallel`` runs every operation in one piece, in the calling
    thread, and leaves BLAS's thread count alone (re-entrant)."""

    def __enter__(self):
        global _blas_threads_only
        _blas_threads_only += 1

    def __exit__(self, *exc_info):
        global _blas_threads_only
        _blas_threads_only -= 1


def parallel(fn, total: int, elements: int, min_elements: int | None = None) -> list:
    """Call ``fn(start, stop)`` on the pieces of ``range(total)`` (see ``pieces``), at the same
    time, and return their results in order. ``fn`` must write disjoint parts of its outputs."""
    if _blas_threads_only:
        return [fn(0, total)]
    parts = pieces(total, elements, min_elements)
    if len(parts) > 1 and threading.current_thread() in _workers:
        parts = [(0, total)]  # called from a piece: waiting for the other workers could deadlock
    with one_blas_thread():  # even for one piece: BLAS's own threads would spin after it
        if len(parts) == 1:
            return [fn(0, total)]
        _start_workers()
        handed = [_Piece(fn, part) for part in parts[1:]]
        for piece in handed:
            _jobs.put(piece)
        try:
            first = fn(*parts[0])  # the calling thread does a piece too...
            for piece in handed:
                if piece.take():  # ...and any piece no worker has started (waking one is slow)
                    piece.run()
        finally:  # even on an error: no piece may still be writing when we return
            rest = [piece.wait() for piece in handed]
        return [first] + rest


# ---------------------------------------------------------------- BLAS thread control
def _find_blas_setters():
    """(get, set) for the number of OpenBLAS threads NumPy uses, or None when not found
    (another BLAS, another OS): then the pieces just share the cores with BLAS's threads."""
    try:
        with open("/proc/self/maps") as maps:
            paths = set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read()))
    except OSError:
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return None


_blas = None
_blas_searched = False
_blas_depth = 0
_blas_lock = threading.Lock()


class one_blas_thread:  # noqa: N801 - used like a function: ``with one_blas_thread():``
    """BLAS uses a single thread inside this block (restored on exit; re-entrant).

    A class rather than a @contextmanager generator: it runs about 20 times per training step,
    and the generator machinery alone cost a few microseconds each time.
    """

    __slots__ = ("saved",)

    def __enter__(self):
        global _blas, _blas_searched, _blas_depth
        with _blas_lock:
            if not _blas_searched:
                _blas, _blas_searched = _find_blas_setters(), True
            _blas_depth += 1
            self.saved = _blas[0]() if _blas is not None and _blas_depth == 1 else None
            if self.saved not in (None, 1):
                _blas[1](1)

    def __exit__(self, *exc_info):
        global _blas_depth
        with _blas_lock:
            _blas_depth -= 1
            if self.saved not in (None, 1):
                _blas[1](self.saved)
