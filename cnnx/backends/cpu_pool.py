"""Max-pooling for the CPU backend: the contract of ``Backend.max_pool_forward/backward``
(base.py) with fewer, cheaper passes over memory.

Each kernel offset ``(i, j)`` is a strided view of the input (``Window.tap``), so no patch
matrix is built. Outputs are allocated in the memory order of the input (``empty_like`` keeps
it), so a batch-last activation from the convolution (cpu_conv.py) stays batch-last and every
pass runs over long contiguous rows.

Masked NumPy operations (``copyto(..., where=)``, ``np.where``, boolean indexing) cost 5-10x a
plain ufunc pass here, so the argmax is built from comparisons and bit operations only.
"""

from __future__ import annotations

import numpy

from .base import Window
from .cpu_threads import parallel


def taps(x, win: Window, ho: int, wo: int):
    """The kh*kw strided views ``x[:, :, y*sh + i, x*sw + j]`` in row-major offset order."""
    views = []
    for i, j in win.offsets():
        rows, cols = win.tap(i, j, ho, wo)
        views.append(x[:, :, rows, cols])
    return views


def max_pool_forward(x, win: Window):
    """``(y, argmax)`` exactly as ``Backend.max_pool_forward``: argmax (int32) is the offset
    ``i*kw + j`` of the first maximum in row-major order; padding is -inf."""
    n, c, h, w = x.shape
    ho, wo = win.out_hw(h, w)
    padded = pad_like(x, win, -numpy.inf)
    first = taps(padded, win, ho, wo)[0]
    y = numpy.empty_like(first)  # in the input's memory order ("K")
    argmax = numpy.empty_like(first, dtype=numpy.int32)
    pool = _max2x2 if (win.kh, win.kw) == (2, 2) else _max_sequential

    def channels(c0, c1):
        part = (slice(None), slice(c0, c1))
        pool(taps(padded[part], win, ho, wo), y[part], argmax[part])
    parallel(channels, c, 3 * x.size)  # about three passes over x (see _max2x2)
    return y, argmax


def _max2x2(views, y, argmax):
    """A 2x2 window as a tournament: the top pair, the bottom pair, then the two winners.

    Ties go to the earlier offset because every comparison is strict (later must be larger).
    """
    a, b, c, d = views
    top, bottom = numpy.maximum(a, b), numpy.maximum(c, d)
    numpy.maximum(top, bottom, out=y)
    right_top = numpy.greater(b, a)      # winner of the top pair is offset 1 (else 0)
    right_bottom = numpy.greater(d, c)   # winner of the bottom pair is offset 3 (else 2)
    lower = numpy.greater(bottom, top)   # the bottom pair wins
    # column of the winner = right_bottom if lower else right_top, without a masked op:
    # a ^ (s & (a ^ b)) selects b where s is set
    numpy.bitwise_xor(right_bottom, right_top, out=right_bottom)
    numpy.bitwise_and(right_bottom, lower, out=right_bottom)
    numpy.bitwise_xor(right_top, right_bottom, out=right_top)
    numpy.left_shift(lower, 1, out=argmax, dtype=numpy.int32)  # row of the winner * kw
    numpy.add(argmax, right_top, out=argmax, dtype=numpy.int32)


def _max_sequential(views, y, argmax):
    """Any window: keep a running maximum; a later offset replaces it only when strictly larger."""
    y[...] = views[0]
    argmax[...] = 0
    better = numpy.empty_like(y, dtype=bool)
    offset = numpy.empty_like(argmax)
    for k, v in enumerate(views[1:], start=1):
        numpy.greater(v, y, out=better)
        # argmax += (k - argmax) * better, i.e. argmax = k where better, without a masked op
        numpy.subtract(k, argmax, out=offset)
        numpy.multiply(offset, better, out=offset)
        numpy.add(argmax, offset, out=argmax)
        numpy.maximum(y, v, out=y)


def max_pool_backward(dy, argmax, x_shape, win: Window):
    """dL/dx: each dL/dy goes to its window's argmax cell (``Backend.max_pool_backward``)."""
    n, c, h, w = x_shape
    ho, wo = argmax.shape[2], argmax.shape[3]
    if not same_order(dy, argmax):
        dy = copy_in_order_of(dy, argmax)  # one transposing copy instead of slow strided passes
    padded_shape = (n, c, h + win.pt + win.pb, w + win.pl + win.pr)
    tiled = (win.sh, win.sw) == (win.kh, win.kw) and (ho * win.kh, wo * win.kw) == padded_shape[2:]
    # when the windows tile the input every cell is written below, so no zero fill is needed
    dx = empty_in_order_of(argmax, padded_shape, zero=not tiled, dtype=dy.dtype)

    def channels(c0, c1):
        part = (slice(None), slice(c0, c1))
        _route(dy[part], argmax[part], taps(dx[part], win, ho, wo), win)
    parallel(channels, c, 3 * dx.size)  # about three passes over dx (see _route)
    return dx[:, :, win.pt:win.pt + h, win.pl:win.pl + w]


def _route(dy, argmax, views, win: Window):
    """views[k] (= the cells at offset k of every window) receive dy where argmax == k."""
    overlap = win.sh < win.kh or win.sw < win.kw
    mask = numpy.empty_like(argmax, dtype=bool)
    routed = numpy.empty_like(dy) if overlap else None
    if len(views) <= 127:  # one narrowing pass, then kh*kw comparisons 7x faster (BENCHMARKS.md)
        argmax = argmax.astype(numpy.int8)
    for k, view in enumerate(views):
        numpy.equal(argmax, k, out=mask)
        if overlap:  # a cell can sit in several windows: add, in a fixed order
            numpy.multiply(dy, mask, out=routed)
            view += routed
        else:
            numpy.multiply(dy, mask, out=view)


# ---------------------------------------------------------------- memory-order helpers
def _order(a):
    """Axes of ``a`` from the slowest-varying to the fastest (by stride; ties keep axis order)."""
    return sorted(range(a.ndim), key=lambda axis: -abs(a.strides[axis]))


def same_order(a, b) -> bool:
    return _order(a) == _order(b)


def empty_in_order_of(like, shape, zero: bool = False, dtype=None):
    """A new array of ``shape`` whose axes are laid out in memory in the order of ``like``'s."""
    order = _order(like)
    make = numpy.zeros if zero else numpy.empty
    block = make([shape[axis] for axis in order], dtype=dtype or like.dtype)
    return block.transpose(numpy.argsort(order))


def copy_in_order_of(a, like):
    out = empty_in_order_of(like, a.shape, dtype=a.dtype)
    out[...] = a
    return out


def pad_like(x, win: Window, value: float):
    """``x`` padded by ``value`` on H and W, in ``x``'s memory order (``x`` itself if no padding)."""
    if win.pt == win.pb == win.pl == win.pr == 0:
        return x
    n, c, h, w = x.shape
    padded = empty_in_order_of(x, (n, c, h + win.pt + win.pb, w + win.pl + win.pr))
    padded[...] = value
    padded[:, :, win.pt:win.pt + h, win.pl:win.pl + w] = x
    return padded
