"""Batch normalization for the CPU backend: the contract of ``Backend.batch_norm_forward`` and
``batch_norm_backward`` (base.py), on channel-major memory, on every core.

The CPU convolution hands out batch-last activations (cpu_conv.py): the NCHW view of
``(C, H, W, N)`` memory. Then each channel's ``m = H*W*N`` values are one contiguous row of a
``(C, m)`` matrix, so every statistic is a row sum and every per-channel scale a broadcast down
a column: long contiguous passes, split over the threads by blocks of channels. The defaults
in base.py reduce over axes (0, 2, 3) of a strided view and make a temporary per operation,
which measured about 4x slower on the fmnist-bn preset's maps (BENCHMARKS.md, CPU log).

Inputs that are not channel-major (an NCHW-contiguous array, a 2-D BatchNorm1D input) go to the
defaults. The output keeps the input's layout, as a view.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy

from .cpu_threads import parallel


class RowsSaved(NamedTuple):
    """What ``batch_norm_forward`` keeps for the backward pass, as ``(C, m)`` matrices."""

    x_hat: object
    inv_std: object
    y: object  # the output, for the fused ReLU's mask (None without ReLU)
    batch_stats: bool
    shape: tuple  # (N, C, H, W)


def channel_rows(x):
    """The ``(C, m)`` matrix of a channel-major NCHW ``x`` (a view), or None when ``x``'s
    memory is not ``(C, H, W, N)`` contiguous."""
    if x.ndim != 4:
        return None
    batch_last = x.transpose(1, 2, 3, 0)
    if not batch_last.flags.c_contiguous:
        return None
    return batch_last.reshape(x.shape[1], -1)


def as_nchw(rows, shape):
    """The NCHW view of a ``(C, m)`` matrix laid out as ``(C, H, W, N)``."""
    n, c, h, w = shape
    return rows.reshape(c, h, w, n).transpose(3, 0, 1, 2)


def batch_norm_forward(x, gamma, beta, eps: float, relu: bool, stats=None):
    """As ``Backend.batch_norm_forward``; None when ``x`` is not channel-major."""
    rows = channel_rows(x)
    if rows is None:
        return None
    c, m = rows.shape
    x_hat = numpy.empty_like(rows)
    y = numpy.empty_like(rows)
    mean = numpy.empty(c, rows.dtype) if stats is None else stats[0]
    var = numpy.empty(c, rows.dtype) if stats is None else stats[1]
    inv_std = numpy.empty(c, rows.dtype)

    def channels(c0, c1):
        xs, xh, ys = rows[c0:c1], x_hat[c0:c1], y[c0:c1]
        if stats is None:
            mean[c0:c1] = xs.sum(axis=1) / m  # pairwise summation along each row
        numpy.subtract(xs, mean[c0:c1, None], out=xh)
        if stats is None:  # y's memory holds the squares for a moment (two-pass variance)
            var[c0:c1] = numpy.multiply(xh, xh, out=ys).sum(axis=1) / m
        inv_std[c0:c1] = 1 / numpy.sqrt(var[c0:c1] + eps)
        numpy.multiply(xh, inv_std[c0:c1, None], out=xh)
        numpy.multiply(xh, gamma[c0:c1, None], out=ys)
        numpy.add(ys, beta[c0:c1, None], out=ys)
        if relu:
            numpy.maximum(ys, 0, out=ys)
    parallel(channels, c, 8 * rows.size)  # about eight passes over x
    saved = RowsSaved(x_hat, inv_std, y if relu else None, stats is None, tuple(x.shape))
    return as_nchw(y, x.shape), saved, mean, var


def batch_norm_backward(dy, saved, gamma):
    """As ``Backend.batch_norm_backward``, for what ``batch_norm_forward`` above saved."""
    x_hat, inv_std, y, batch_stats, shape = saved
    rows = channel_rows(dy)
    if rows is None:  # e.g. from an NCHW-contiguous gradient: one transposing copy
        rows = numpy.ascontiguousarray(dy.transpose(1, 2, 3, 0)).reshape(shape[1], -1)
    c, m = rows.shape
    dx = numpy.empty_like(rows)
    scratch = numpy.empty_like(rows)
    dgamma = numpy.empty(c, rows.dtype)
    dbeta = numpy.empty(c, rows.dtype)

    def channels(c0, c1):
        delta, xh, tmp = dx[c0:c1], x_hat[c0:c1], scratch[c0:c1]
        if y is None:
            delta[...] = rows[c0:c1]
        else:  # δ = dy ⊙ 1[y > 0], built in dx's memory
            numpy.multiply(rows[c0:c1], numpy.greater(y[c0:c1], 0), out=delta)
        dbeta[c0:c1] = delta.sum(axis=1)
        dgamma[c0:c1] = numpy.multiply(delta, xh, out=tmp).sum(axis=1)
        scale = (gamma[c0:c1] * inv_std[c0:c1])[:, None]
        if batch_stats:  # dx = (γ/s)(δ − Σδ/m − x̂ Σ(δ ⊙ x̂)/m)
            numpy.subtract(delta, (dbeta[c0:c1] / m)[:, None], out=delta)
            numpy.multiply(xh, (dgamma[c0:c1] / m)[:, None], out=tmp)
            numpy.subtract(delta, tmp, out=delta)
        numpy.multiply(delta, scale, out=delta)
    parallel(channels, c, 10 * rows.size)  # about ten passes over dy
    return as_nchw(dx, shape), dgamma, dbeta
