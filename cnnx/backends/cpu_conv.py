"""Convolution for the CPU backend in a batch-last layout: the same equations as
``Backend.conv2d_forward/backward`` (base.py), arranged so NumPy copies long contiguous runs,
makes few calls, and keeps the big intermediate matrices in cache where that pays.

Layout. Inside these functions an activation lives as ``(C, H, W, N)``: the batch axis is the
innermost (fastest) one. The caller still sees NCHW: what we return is the NCHW *view*
``a.transpose(3, 0, 1, 2)`` of that memory, which any NumPy code reads correctly. The next CPU op
(max-pool, the next convolution) finds the batch-last memory under the view and uses it as is.

Why batch-last. A kernel tap ``(i, j)`` of a stride-1 convolution reads the window
``x_pad[c, i:i+Ho, j:j+Wo, :]``: each of its rows is ``Wo*N`` consecutive numbers, so im2col
copies long rows (NCHW would give rows of Wo numbers and a transpose). All kh*kw taps together
are one strided view of the padded input (``windows``), so im2col is a single copy. The
column matrix has one row per ``(c, i, j)`` as in base.py and one column per output pixel,
ordered ``(y, x, n)``. Then

    Z (O, Ho*Wo*N) = W_mat (O, C*kh*kw) @ col        is already batch-last, no transpose;
    dW_mat = delta @ col^T;   dcol = W_mat^T @ delta;   dX = col2im(dcol) as kh*kw block adds.

Bands and chunks. Each thread (cpu_threads.parallel) takes a band of output rows. The column
matrix is 9x the input (3x3 kernels); while it is small the forward pass keeps it for the
backward pass. A big one (``KEEP_COL_BYTES``) costs more in its trip through memory than it
takes to rebuild: then each thread walks its band a few rows at a time (``CHUNK_COLUMNS``) and,
for every chunk, builds those columns in a buffer that stays in its core's cache, multiplies and
applies ReLU before moving on; the backward pass rebuilds them the same way.

dL/dX by bands too: each band owns a run of padded input rows and adds its col2im sums straight
into them; only the kh - sh rows its last windows share with the next band go through a small
buffer of its own, added in once every band is done (no second full-size buffer to sum).

Bias for free: ``col`` gets one extra row of ones and ``W_mat`` the bias as an extra column,
so the product adds b (no separate pass over Z) and ``col @ delta^T`` returns db in its last
row (no separate sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy
from numpy.lib.stride_tricks import as_strided

from .base import Window
from .cpu_threads import parallel


def batch_last(x):
    """(N, C, H, W) -> (C, H, W, N), a view (no copy)."""
    return x.transpose(1, 2, 3, 0)


def batch_first(a):
    """(C, H, W, N) -> (N, C, H, W), a view (no copy): how batch-last arrays are handed out."""
    return a.transpose(3, 0, 1, 2)


#: the column matrix is kept from the forward to the backward pass while it is at most this
#: big; a bigger one is rebuilt chunk by chunk in the backward pass, which measured faster than
#: its trip through memory (reference CNN, conv2 at batch 64 and 128: BENCHMARKS.md, CPU log)
#: and bounds the memory of large batches
KEEP_COL_BYTES = 6 << 20
#: a column matrix of at most FEW_ROWS rows (a first layer: 1 or 3 input channels) is kept up
#: to KEEP_FEW_ROWS_FACTOR times that: rebuilding it is a copy as large as the matrix itself,
#: with little arithmetic per column to hide it behind
FEW_ROWS = 32
KEEP_FEW_ROWS_FACTOR = 3
#: columns (output pixels) per chunk when the column matrix is built chunk by chunk
CHUNK_COLUMNS = 4096
#: columns per matrix product: OpenBLAS runs the skinny products of a convolution with few
#: channels up to 2x faster cut to this width than in one call (BENCHMARKS.md, CPU log)
GEMM_COLUMNS = 4096


@dataclass
class ConvSaved:
    """What the forward pass keeps for the backward pass (private to the CPU backend)."""

    padded: object  # (C, H+pt+pb, W+pl+pr, N): the input, zero-padded, batch-last
    col: object  # (C*kh*kw + 1, Ho*Wo*N): the column matrix and its row of ones, or None
    out: object  # (O, Ho*Wo*N): the layer's output, kept for the ReLU mask (None without ReLU)
    x_shape: tuple  # (N, C, H, W)


def pad_batch_last(x, win: Window):
    """A new ``(C, H+pt+pb, W+pl+pr, N)`` array: ``x`` (NCHW, any strides) in the middle,
    zeros around it. One pass over ``x``; fast when ``x`` is already batch-last memory."""
    n, c, h, w = x.shape
    padded = numpy.empty((c, h + win.pt + win.pb, w + win.pl + win.pr, n), dtype=x.dtype)
    padded[:, :win.pt] = 0  # only the border: the middle is overwritten right below
    padded[:, win.pt + h:] = 0
    padded[:, :, :win.pl] = 0
    padded[:, :, win.pl + w:] = 0
    source = batch_last(x)

    def copy_rows(r0, r1):
        padded[:, win.pt + r0:win.pt + r1, win.pl:win.pl + w, :] = source[:, r0:r1]
    parallel(copy_rows, h, x.size)
    return padded


def keeps_columns(rows: int, columns: int, itemsize: int) -> bool:
    """Whether the forward pass keeps a ``rows x columns`` column matrix for the backward pass
    (see KEEP_COL_BYTES) instead of the backward pass rebuilding it."""
    limit = KEEP_COL_BYTES * (KEEP_FEW_ROWS_FACTOR if rows <= FEW_ROWS else 1)
    return rows * columns * itemsize <= limit


def chunks(y0: int, y1: int, row_columns: int, whole: bool = False):
    """``[(r0, r1)]`` cutting output rows ``[y0, y1)`` into chunks of about CHUNK_COLUMNS
    columns (``row_columns`` per output row), at least one row each; one chunk if ``whole``."""
    step = y1 - y0 if whole else max(1, CHUNK_COLUMNS // row_columns)
    return [(r, min(r + step, y1)) for r in range(y0, y1, step)]


def blocks(columns: int):
    """Column slices of at most GEMM_COLUMNS, for the matrix products of a chunk."""
    return [slice(s, min(s + GEMM_COLUMNS, columns)) for s in range(0, columns, GEMM_COLUMNS)]


def new_patches(rows: int, columns: int, dtype):
    """A column-matrix buffer for one chunk: ``rows`` patch rows, then the row of ones."""
    patches = numpy.empty((rows + 1, columns), dtype=dtype)
    patches[-1] = 1
    return patches


def fill_patches(patches, padded, win: Window, y0: int, y1: int, wo: int):
    """Write the column matrix of output rows ``[y0, y1)`` into ``patches`` (all rows but the
    last, which stays ones): row ``(c, i, j)``, column ``(y - y0, x, n)`` holds
    ``x_pad[n, c, y*sh + i, x*sw + j]``."""
    c, n = padded.shape[0], padded.shape[3]
    taps = patches[:-1].reshape(c, win.kh, win.kw, y1 - y0, wo, n)
    taps[...] = windows(padded, win, y0, y1, wo)  # one copy, not kh*kw: measured 1.6x faster
    return patches


def windows(padded, win: Window, y0: int, y1: int, wo: int):
    """The read-only view ``v[c, i, j, y - y0, x, n] = padded[c, y*sh + i, x*sw + j, n]`` for
    output rows ``[y0, y1)``: every window of the input at once, without copying anything
    (neighbouring windows share memory, which is why the view must not be written)."""
    sc, sh, sw, sn = padded.strides
    return as_strided(padded[:, y0 * win.sh:], shape=(padded.shape[0], win.kh, win.kw, y1 - y0, wo,
                      padded.shape[3]), strides=(sc, sh, sw, sh * win.sh, sw * win.sw, sn),
                      writeable=False)


def add_patches(target, dpatches, win: Window, y0: int, y1: int, wo: int, limit: int,
                overflow=None):
    """The adjoint of ``fill_patches``: add each entry of ``dpatches`` (no ones row) to the
    input cell it was copied from. Padded input rows below ``limit`` are rows of ``target``;
    rows from ``limit`` on go to ``overflow``, whose row 0 is padded row ``limit`` (a band's
    edge rows that the next band owns). Adds over kernel offsets in a fixed order, so the
    result is deterministic."""
    c, n = target.shape[0], target.shape[3]
    taps = dpatches.reshape(c, win.kh, win.kw, y1 - y0, wo, n)
    for i, j in win.offsets():
        cols = slice(j, j + win.sw * (wo - 1) + 1, win.sw)
        # outputs y in [y0, split) read rows y*sh + i < limit; the others read rows >= limit
        split = min(max(y0, -(-(limit - i) // win.sh)), y1)
        if split > y0:
            rows = slice(y0 * win.sh + i, (split - 1) * win.sh + i + 1, win.sh)
            target[:, rows, cols, :] += taps[:, i, j, :split - y0]
        if split < y1:
            rows = slice(split * win.sh + i - limit, (y1 - 1) * win.sh + i + 1 - limit, win.sh)
            overflow[:, rows, cols, :] += taps[:, i, j, split - y0:]


def conv2d_forward(x, w, b, win: Window, relu: bool):
    """Y = act(W_mat @ col + b), returned as an NCHW view of batch-last memory."""
    n, c, h, wd = x.shape
    out_ch = w.shape[0]
    ho, wo = win.out_hw(h, wd)
    m = ho * wo * n
    padded = pad_batch_last(x, win)
    w_aug = numpy.concatenate([w.reshape(out_ch, -1), b.reshape(out_ch, 1)], axis=1)
    k = w_aug.shape[1] - 1
    out = numpy.empty((out_ch, m), dtype=x.dtype)
    keep = keeps_columns(k + 1, m, x.itemsize)
    col = new_patches(k, m, x.dtype) if keep else None

    def band(y0, y1):
        parts = chunks(y0, y1, wo * n, whole=keep)
        scratch = None if keep else new_patches(k, (parts[0][1] - parts[0][0]) * wo * n, x.dtype)
        for r0, r1 in parts:
            z = out[:, r0 * wo * n:r1 * wo * n]
            target = col[:, r0 * wo * n:r1 * wo * n] if keep else scratch[:, :z.shape[1]]
            p = fill_patches(target, padded, win, r0, r1, wo)
            for cols in blocks(z.shape[1]):
                numpy.matmul(w_aug, p[:, cols], out=z[:, cols])
                if relu:  # while the block of Z is still in cache
                    numpy.maximum(z[:, cols], 0, out=z[:, cols])
    # work: copies into col, one pass for ReLU, the product (see cpu_threads.parallel)
    parallel(band, ho, (k + 1 + out_ch) * m + out_ch * (k + 1) * m // 16)
    y = batch_first(out.reshape(out_ch, ho, wo, n))
    return y, ConvSaved(padded, col, out if relu else None, tuple(x.shape))


def conv2d_backward(dy, saved: ConvSaved, w, win: Window, relu: bool, input_grad: bool = True):
    """(dL/dX, dL/dW, dL/db) from dL/dY (NCHW, any strides), as in ``Backend.conv2d_backward``;
    dL/dX is None when ``input_grad`` is False (then it costs nothing)."""
    n, out_ch, ho, wo = dy.shape
    w_mat = w.reshape(out_ch, -1)
    k, m = w_mat.shape[1], ho * wo * n
    dy_flat = numpy.reshape(batch_last(dy), (out_ch, m))  # a view when dy is batch-last memory
    work = 2 * out_ch * m + out_ch * (k + 1) * m // 16  # the mask (two passes), the product
    if input_grad:
        work += out_ch * k * m // 16 + k * m  # the second product, the adds of col2im
    dx_pad = numpy.empty(saved.padded.shape, dy.dtype) if input_grad else None
    band = _backward_band(dy_flat, wo, saved, w_mat, win, relu, dx_pad)
    results = parallel(band, ho, work)
    grads = sum(r[0] for r in results).T  # (O, K + 1): dW_mat, then db in the last column
    dw = grads[:, :-1].reshape(w.shape).copy()
    db = grads[:, -1].copy()
    if not input_grad:
        return None, dw, db
    for _, edge, limit in results:  # each band's edge rows into the rows the next band owns
        if edge is not None:
            dx_pad[:, limit:limit + edge.shape[1]] += edge
    _, _, h, wd = saved.x_shape
    return batch_first(dx_pad[:, win.pt:win.pt + h, win.pl:win.pl + wd, :]), dw, db


def _backward_band(dy, wo: int, saved: ConvSaved, w_mat, win: Window, relu: bool, dx_pad):
    """The work of one thread in ``conv2d_backward``: for output rows [y0, y1), chunk by chunk,
    dL/dZ (ReLU mask applied), its share of dW and db, and (when ``dx_pad`` is given) the
    gradient of the input rows those outputs read.

    ``dy``: dL/dY as an (O, Ho*Wo*N) batch-last matrix. Each band owns the padded input rows
    from its first window's top row to the next band's: it zeroes them in ``dx_pad`` and adds
    into them directly. Its last windows also reach kh - sh rows into the next band's rows;
    those sums go to a small ``edge`` buffer of its own, added in after every band is done."""
    out_ch, n = dy.shape[0], saved.x_shape[0]
    k, dtype, padded, ho = w_mat.shape[1], dy.dtype, saved.padded, dy.shape[1] // (wo * n)

    def band(y0, y1):
        parts = chunks(y0, y1, wo * n, whole=saved.col is not None)
        width = (parts[0][1] - parts[0][0]) * wo * n
        delta = numpy.empty((out_ch, min(width, GEMM_COLUMNS)), dtype)
        mask_block = numpy.empty_like(delta) if relu else None
        scratch = new_patches(k, width, dtype) if saved.col is None else None
        grads = numpy.zeros((k + 1, out_ch), dtype)
        edge, limit = None, padded.shape[1]
        if dx_pad is not None:
            first = 0 if y0 == 0 else y0 * win.sh
            if y1 < ho:
                limit = y1 * win.sh  # where the next band's rows begin
                edge = numpy.zeros((padded.shape[0], max(0, (y1 - 1) * win.sh + win.kh - limit))
                                   + padded.shape[2:], dtype)
            dx_pad[:, first:limit] = 0
            dpatches = numpy.empty((k, width), dtype)
        for r0, r1 in parts:
            start, m = r0 * wo * n, (r1 - r0) * wo * n
            p = saved.col[:, start:start + m] if scratch is None else \
                fill_patches(scratch[:, :m], padded, win, r0, r1, wo)
            for b in blocks(m):
                # dL/dZ of this block, used by both products while it is in cache
                d = dy[:, start + b.start:start + b.stop]
                if relu:  # the mask as 0.0/1.0: float x bool multiplies measured 1.3x slower
                    mask = numpy.greater(saved.out[:, start + b.start:start + b.stop], 0,
                                         out=mask_block[:, :b.stop - b.start])
                    d = numpy.multiply(d, mask, out=delta[:, :b.stop - b.start])
                grads += numpy.matmul(p[:, b], d.T)  # (K + 1, O); see BENCHMARKS.md
                if dx_pad is not None:
                    numpy.matmul(w_mat.T, d, out=dpatches[:, b])
            if dx_pad is not None:
                add_patches(dx_pad, dpatches[:, :m], win, r0, r1, wo, limit, edge)
        return grads, edge, limit
    return band
