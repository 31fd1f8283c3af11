"""Slow, obviously-correct loop implementations: the oracle the fast paths are tested against.

Written straight from the definitions (seed 000 §1.4, seed 001 eqs. 1-4) with explicit loops,
sharing no code with cnnx.
"""

from __future__ import annotations

import numpy as np


def pad(x, pads, value=0.0):
    (pt, pb), (pl, pr) = pads
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def out_size(n, k, s, p0, p1):
    return (n + p0 + p1 - k) // s + 1


def conv2d(x, w, b, stride, pads):
    """Cross-correlation: y[n,o,i,j] = b[o] + Σ_{c,p,q} w[o,c,p,q] x_pad[n,c,i*sh+p,j*sw+q]."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    sh, sw = stride
    xp = pad(x, pads)
    ho = out_size(h, kh, sh, *pads[0])
    wo = out_size(wd, kw, sw, *pads[1])
    y = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return y + b[None, :, None, None]


def pool2d(x, kernel, stride, pads, mode):
    n, c, h, wd = x.shape
    kh, kw = kernel
    sh, sw = stride
    xp = pad(x, pads, -np.inf if mode == "max" else 0.0)
    ho = out_size(h, kh, sh, *pads[0])
    wo = out_size(wd, kw, sw, *pads[1])
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = win.max(axis=(2, 3)) if mode == "max" else win.sum(axis=(2, 3)) / (kh * kw)
    return y


def max_pool_backward(x, dy, kernel, stride, pads):
    """Route each dy to the first maximum of its window (row-major), loop by loop."""
    n, c, h, wd = x.shape
    kh, kw = kernel
    sh, sw = stride
    xp = pad(x, pads, -np.inf)
    dxp = np.zeros_like(xp)
    for b in range(n):
        for ch in range(c):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    win = xp[b, ch, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    p, q = np.unravel_index(np.argmax(win), win.shape)
                    dxp[b, ch, i * sh + p, j * sw + q] += dy[b, ch, i, j]
    (pt, _), (pl, _) = pads
    return dxp[:, :, pt:pt + h, pl:pl + wd]
