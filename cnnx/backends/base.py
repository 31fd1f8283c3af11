"""The backend seam: one class holding ``xp`` and the hot-path operations written once against it.

Every operation here is the plain array-module version: it runs unchanged on NumPy and on CuPy,
and it is the reference the CUDA kernels are tested against. A subclass replaces an operation
only where it has something faster (see ``cupy_backend.py``); the layers never know which.

Layouts (public, like PyTorch and seed 000 §2): images are NCHW, convolution weights
``(out, in, kh, kw)``. The im2col matrix ("col") has one row per output pixel ``(n, y, x)`` and
one column per ``(c, i, j)`` of the receptive field: shape ``(N*Ho*Wo, C*kh*kw)`` (seed 004).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..shapes import output_size


@dataclass(frozen=True)
class Window:
    """Geometry of a sliding window over an ``(H, W)`` image: kernel, stride, per-side padding."""

    kh: int
    kw: int
    sh: int
    sw: int
    pt: int = 0  # padding above
    pb: int = 0  # padding below
    pl: int = 0  # padding left
    pr: int = 0  # padding right

    def out_hw(self, h: int, w: int, layer: str = "layer") -> tuple[int, int]:
        return (
            output_size(h, self.kh, self.sh, self.pt, self.pb, layer),
            output_size(w, self.kw, self.sw, self.pl, self.pr, layer),
        )

    def offsets(self):
        """The kernel offsets ``(i, j)`` in row-major order; ``i * kw + j`` is the window index."""
        for i in range(self.kh):
            for j in range(self.kw):
                yield i, j

    def tap(self, i: int, j: int, ho: int, wo: int):
        """Slices of the padded image that kernel offset ``(i, j)`` reads for all outputs."""
        return (
            slice(i, i + self.sh * (ho - 1) + 1, self.sh),
            slice(j, j + self.sw * (wo - 1) + 1, self.sw),
        )


class Backend:
    """A device plus the array module ``xp`` that computes on it.

    Subclasses set ``xp`` and ``name``; hot-path methods may be overridden by faster versions
    that must give the same results (tested in ``tests/test_cpu_fast_paths.py``,
    ``tests/test_kernels_cpu_shim.py`` and ``tests/test_cuda_backend.py``).
    """

    xp = None
    name = "abstract"
    kernels_enabled = False

    # ---------------------------------------------------------------- transfers and helpers
    def asarray(self, a, dtype=None, copy: bool = False):
        """``a`` (any array-like, NumPy or this backend's) as this backend's array: a view of it
        where it can be, unless ``copy``."""
        return self.xp.array(a, dtype=dtype, copy=True) if copy else self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        raise NotImplementedError

    def owns(self, a) -> bool:
        """True when ``a`` is an array of this backend (and so can be computed on here)."""
        return isinstance(a, self.xp.ndarray)

    def synchronize(self) -> None:
        """Wait until all queued work is done (a no-op on the CPU)."""

    def scalar(self, a) -> float:
        """A 0-d array as a Python float (on a GPU this is the one host copy of a step)."""
        return float(a)

    def uniform(self, shape, dtype, key):
        """Uniform [0, 1) numbers of ``shape`` drawn from the stream named by ``key`` (a tuple
        of ints): the same key gives the same numbers, so stochastic layers are replayable."""
        from . import make_rng

        return self.asarray(make_rng(key).random(shape, dtype=dtype))

    def work_scope(self, elements: int):
        """A context for the work on one batch (a training step, a forward pass) whose layers
        output ``elements`` numbers in all: where a backend arranges that work by its size.
        Here: nothing."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"<cnnx backend {self.name}>"

    def _pad(self, x, win: Window, value: float = 0.0):
        if win.pt == win.pb == win.pl == win.pr == 0:
            return x
        widths = ((0, 0), (0, 0), (win.pt, win.pb), (win.pl, win.pr))
        return self.xp.pad(x, widths, mode="constant", constant_values=value)

    def _crop(self, xp_padded, h: int, w: int, win: Window):
        return xp_padded[:, :, win.pt : win.pt + h, win.pl : win.pl + w]

    # ---------------------------------------------------------------- convolution helpers
    def im2col(self, x, win: Window):
        """``(N, C, H, W)`` -> ``(N*Ho*Wo, C*kh*kw)``: row ``(n, y, x)`` holds the patch
        ``x_pad[n, c, y*sh + i, x*sw + j]`` for all ``(c, i, j)`` (seed 004, IM2COL)."""
        xp = self.xp
        n, c, h, w = x.shape
        ho, wo = win.out_hw(h, w)
        padded = self._pad(x, win)
        col = xp.empty((n, ho, wo, c, win.kh, win.kw), dtype=x.dtype)
        for i, j in win.offsets():
            rows, cols = win.tap(i, j, ho, wo)
            col[:, :, :, :, i, j] = padded[:, :, rows, cols].transpose(0, 2, 3, 1)
        return col.reshape(n * ho * wo, c * win.kh * win.kw)

    def col2im(self, col, x_shape, win: Window):
        """Adjoint of ``im2col``: each input pixel sums the entries of ``col`` that copied it.

        The sum runs over kernel offsets in a fixed order, so the result is deterministic.
        """
        xp = self.xp
        n, c, h, w = x_shape
        ho, wo = win.out_hw(h, w)
        col6 = col.reshape(n, ho, wo, c, win.kh, win.kw)
        padded = xp.zeros((n, c, h + win.pt + win.pb, w + win.pl + win.pr), dtype=col.dtype)
        for i, j in win.offsets():
            rows, cols = win.tap(i, j, ho, wo)
            padded[:, :, rows, cols] += col6[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        return self._crop(padded, h, w, win)

    def matmul(self, a, b):
        """The matrix product ``a @ b``: every product of the layers' default forms goes through
        here, so a backend may run them its own way (the CPU one splits them over its own
        threads instead of BLAS's)."""
        return a @ b

    #: whether ``graph_capture`` works here (the CUDA backend)
    has_cuda_graphs = False

    def graph_capture(self):
        """What ``cnnx.graph.GraphedTrainStep`` records and replays steps with: CUDA only."""
        from . import DeviceError

        raise DeviceError(f"CUDA graphs need the CUDA backend, and this is {self.name}: "
                          "use --device cuda, or leave out --cuda-graph")

    def bias_activation(self, z, b, relu: bool):
        """``z + b`` (bias along the last axis of ``z``), then ReLU when ``relu`` is True."""
        y = z + b
        if relu:
            self.xp.maximum(y, 0, out=y)
        return y

    def relu_backward(self, dy, y):
        """dL/dz = dL/dy * 1[z > 0]; ``y = relu(z)`` so ``y > 0`` exactly when ``z > 0``."""
        return dy * (y > 0)

    def conv2d_forward(self, x, w, b, win: Window, relu: bool):
        """Y = act(im2col(X) @ W_mat^T + b) as NCHW, plus what ``conv2d_backward`` needs.

        The default is the plain im2col form (seed 004); a backend may override the pair with
        a faster formulation of the same equations (tested equal in test_backend_ops.py).
        """
        n, _, h, wd = x.shape
        out = w.shape[0]
        ho, wo = win.out_hw(h, wd)
        col = self.im2col(x, win)
        rows = self.bias_activation(self.matmul(col, w.reshape(out, -1).T), b, relu)
        y = rows.reshape(n, ho, wo, out).transpose(0, 3, 1, 2)
        return y, (col, x.shape, rows)

    def conv2d_backward(self, dy, saved, w, win: Window, relu: bool):
        """Returns (dL/dX, dL/dW, dL/db) from dL/dY and what ``conv2d_forward`` saved."""
        col, x_shape, rows = saved
        out = w.shape[0]
        delta = dy.transpose(0, 2, 3, 1).reshape(-1, out)
        if relu:
            delta = self.relu_backward(delta, rows)
        dw = self.matmul(delta.T, col).reshape(w.shape)
        db = delta.sum(axis=0)
        dx = self.col2im(self.matmul(delta, w.reshape(out, -1)), x_shape, win)
        return dx, dw, db

    def conv2d_backward_params(self, dy, saved, w, win: Window, relu: bool):
        """(dL/dW, dL/db) alone, for a first layer. The default computes and drops dL/dX;
        a backend may skip it."""
        return self.conv2d_backward(dy, saved, w, win, relu)[1:]

    # ---------------------------------------------------------------- pooling
    def max_pool_forward(self, x, win: Window):
        """Max over each window (seed 001 eq. 4); padding counts as -inf so it never wins.

        Returns ``(y, argmax)`` where ``argmax[n, c, y, x] = i * kw + j`` is the window offset
        of the (first, in row-major order) maximum: seed 000 §2.1.1's cache I.
        """
        xp = self.xp
        n, c, h, w = x.shape
        ho, wo = win.out_hw(h, w)
        padded = self._pad(x, win, value=-xp.inf)
        y = None
        argmax = xp.zeros((n, c, ho, wo), dtype=xp.int32)
        for k, (i, j) in enumerate(win.offsets()):
            rows, cols = win.tap(i, j, ho, wo)
            v = padded[:, :, rows, cols]
            if y is None:
                y = v.copy()
                continue
            better = v > y  # strict: ties keep the earlier offset
            # not argmax[better] = k: CuPy counts a mask's True values on the host first
            xp.copyto(argmax, k, where=better)
            xp.maximum(y, v, out=y)
        return y, argmax

    def max_pool_backward(self, dy, argmax, x_shape, win: Window):
        """dL/dx routes each dL/dy to its window's argmax, zero elsewhere (seed 000 §2.1.1)."""
        xp = self.xp
        n, c, h, w = x_shape
        ho, wo = dy.shape[2], dy.shape[3]
        padded = xp.zeros((n, c, h + win.pt + win.pb, w + win.pl + win.pr), dtype=dy.dtype)
        for k, (i, j) in enumerate(win.offsets()):
            rows, cols = win.tap(i, j, ho, wo)
            padded[:, :, rows, cols] += xp.where(argmax == k, dy, 0)
        return self._crop(padded, h, w, win)

    def avg_pool_forward(self, x, win: Window):
        """Mean over each kh*kw window; zero padding counts in the divisor (as PyTorch's default)."""
        n, c, h, w = x.shape
        ho, wo = win.out_hw(h, w)
        padded = self._pad(x, win)
        y = None
        for i, j in win.offsets():
            rows, cols = win.tap(i, j, ho, wo)
            v = padded[:, :, rows, cols]
            y = v.copy() if y is None else y + v
        return y / (win.kh * win.kw)

    def avg_pool_backward(self, dy, x_shape, win: Window):
        """Each input in a window gets dL/dy / (kh*kw) (seed 002: the 1/4 of a 2x2 pool)."""
        xp = self.xp
        n, c, h, w = x_shape
        ho, wo = dy.shape[2], dy.shape[3]
        share = dy / (win.kh * win.kw)
        padded = xp.zeros((n, c, h + win.pt + win.pb, w + win.pl + win.pr), dtype=dy.dtype)
        for i, j in win.offsets():
            rows, cols = win.tap(i, j, ho, wo)
            padded[:, :, rows, cols] += share
        return self._crop(padded, h, w, win)

    # ---------------------------------------------------------------- batch normalization
    def batch_norm_forward(self, x, gamma, beta, eps: float, relu: bool, stats=None):
        """y = act(γ x̂ + β), x̂ = (x − μ)/√(σ² + ε), per channel (axis 1) over every other axis.

        ``stats=None`` (training): μ, σ² are the batch's (biased variance); otherwise the pair
        ``(μ, σ²)`` given (evaluation: the running estimates). Returns ``(y, saved, μ, σ²)``;
        ``saved`` is what ``batch_norm_backward`` needs (x̂, 1/√(σ² + ε), y, and whether the
        statistics came from the batch).
        """
        xp = self.xp
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if stats is None:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
        else:
            mean, var = stats
        inv_std = 1 / xp.sqrt(var + eps)
        x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        y = x_hat * gamma.reshape(shape) + beta.reshape(shape)
        if relu:
            xp.maximum(y, 0, out=y)
        return y, (x_hat, inv_std, y if relu else None, stats is None), mean, var

    def batch_norm_backward(self, dy, saved, gamma):
        """(dL/dx, dL/dγ, dL/dβ); with δ = dy ⊙ 1[y > 0] (ReLU fused) or δ = dy, sums Σ over
        the m values of a channel (docs/math.md, "Batch normalization"):

            dβ = Σ δ,   dγ = Σ δ ⊙ x̂,
            batch statistics:  dx = (γ/(m s)) (m δ − Σ δ − x̂ Σ (δ ⊙ x̂)),   s = √(σ² + ε)
            fixed statistics:  dx = γ δ / s
        """
        x_hat, inv_std, y, batch_stats = saved
        axes = (0,) + tuple(range(2, dy.ndim))
        shape = (1, -1) + (1,) * (dy.ndim - 2)
        delta = dy if y is None else self.relu_backward(dy, y)
        dbeta = delta.sum(axis=axes)
        dgamma = (delta * x_hat).sum(axis=axes)
        scale = (gamma * inv_std).reshape(shape)
        if not batch_stats:
            return delta * scale, dgamma, dbeta
        m = delta.size // delta.shape[1]
        dx = scale * (delta - (dbeta / m).reshape(shape) - x_hat * (dgamma / m).reshape(shape))
        return dx, dgamma, dbeta

    # ---------------------------------------------------------------- loss and update
    def softmax_cross_entropy(self, logits, labels):
        """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

        Stable form: log p_k = z_k - m - log sum_j exp(z_j - m), m = max_j z_j.
        Gradient (seed 001 eq. 15, averaged over the batch): (p - y) / B.
        Returns ``(loss, dlogits)`` with ``loss`` a 0-d array (no host copy here).
        """
        xp = self.xp
        batch = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = xp.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        rows = xp.arange(batch)
        # -log p_y as log Σ - (z_y - m), not -(z_y - m - log Σ): the same number, but +0, not
        # -0, where the prediction is certain (as PyTorch and the CUDA kernel's mean give)
        loss = (xp.log(total[:, 0]) - shifted[rows, labels]).mean()
        grad = exp / total
        grad[rows, labels] -= 1
        grad /= batch
        return loss, grad

    def sgd_update(self, param, grad, velocity, lr: float, momentum: float, weight_decay: float):
        """In place: g' = g + λ·w;  v = μ·v + g';  w -= lr·v   (v is None when μ = 0).

        This is PyTorch's SGD convention, so runs can be compared step for step.
        """
        g = grad + weight_decay * param if weight_decay else grad
        if velocity is None:
            param -= lr * g
            return
        velocity *= momentum
        velocity += g
        param -= lr * velocity

    def sgd_update_device_scalars(self, param, grad, velocity, scalars, momentum: float,
                                  weight_decay: float):
        """``sgd_update`` with the rate read from the device array ``scalars = [lr]`` (in the
        parameter's dtype) when the update runs, not when it is issued: what a CUDA graph
        replay needs (cnnx/graph.py). The same numbers as ``sgd_update``."""
        Backend.sgd_update(self, param, grad, velocity, scalars[0], momentum, weight_decay)

    def adam_update(self, param, grad, m, v, lr: float, betas: tuple, eps: float,
                    weight_decay: float, decoupled: bool, step: int):
        """In place, Adam's step ``step`` (1, 2, ...) with L2 or decoupled (AdamW) decay:

            g' = g + λ·w (L2 only);   m = β1·m + (1-β1)·g';   v = β2·v + (1-β2)·g'·g'
            w -= lr·[ (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε)  (+ λ·w if decoupled) ]

        PyTorch's Adam and AdamW, so runs can be compared step for step.
        """
        b1, b2 = betas
        self._adam(param, grad, m, v, lr, betas, eps, weight_decay, decoupled,
                   1 - b1 ** step, 1 - b2 ** step)

    def adam_update_device_scalars(self, param, grad, m, v, scalars, betas: tuple, eps: float,
                                   weight_decay: float, decoupled: bool):
        """``adam_update`` with the rate and the bias corrections read from the device array
        ``scalars = [lr, 1-β1^t, 1-β2^t]`` when the update runs (see
        ``sgd_update_device_scalars``). The same numbers as ``adam_update``."""
        Backend._adam(self, param, grad, m, v, scalars[0], betas, eps, weight_decay, decoupled,
                      scalars[1], scalars[2])

    def _adam(self, param, grad, m, v, lr, betas, eps, weight_decay, decoupled, correction1,
              correction2):
        xp = self.xp
        b1, b2 = betas
        if weight_decay and not decoupled:
            grad = grad + weight_decay * param
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        update = (m / correction1) / (xp.sqrt(v / correction2) + eps)
        if weight_decay and decoupled:
            update += weight_decay * param
        param -= lr * update
