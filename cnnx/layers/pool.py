"""Max and average pooling over kh x kw windows (seed 000 §1.4.8, seed 001 eq. 4, seed 002)."""

from __future__ import annotations

from ..backends import Window
from ..shapes import check_positive, pair
from .base import Layer


class _Pool2D(Layer):
    config_keys = ("kernel_size", "stride", "padding")

    def __init__(self, kernel_size, stride=None, padding=0, dtype="float32"):
        super().__init__(dtype)
        layer = self.name
        self.kernel_size = pair(kernel_size, "kernel_size", layer)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", layer)
        self.padding = pair(padding, "padding", layer)
        check_positive(self.kernel_size, "kernel_size", layer)
        check_positive(self.stride, "stride", layer)
        ph, pw = self.padding
        if not (0 <= ph <= self.kernel_size[0] // 2 and 0 <= pw <= self.kernel_size[1] // 2):
            # a wider padding would let a window hold nothing but padding
            raise ValueError(f"{layer}: padding must be between 0 and half the kernel size, "
                             f"got padding {self.padding} for kernel {self.kernel_size}")
        self.window = Window(*self.kernel_size, *self.stride, ph, ph, pw, pw)
        self._cache = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input (C, H, W), got {tuple(input_shape)}")
        ho, wo = self.window.out_hw(input_shape[1], input_shape[2], self.name)
        return (input_shape[0], ho, wo)

    def _check(self, x):
        self.check_input(x, rank=4)
        self.window.out_hw(x.shape[2], x.shape[3], self.name)


class MaxPool2D(_Pool2D):
    """P[n,c,y,x] = max_{i,j} X_pad[n, c, y*s_h + i, x*s_w + j]   (seed 001 eq. 4).

    Padding is -inf, so a padded cell never wins. Forward caches, for every output, the offset
    of its maximum (seed 000 §2.1.1's cache I); ties go to the first offset in row-major order.
    """

    def forward(self, x):
        self._check(x)
        y, argmax = self.backend.max_pool_forward(x, self.window)
        self._cache = (argmax, x.shape)
        return self._record_output(y)

    def backward(self, dy):
        """dL/dX[n,c,u,v] = Σ over windows (y,x) whose cached argmax is (u,v) of dL/dP[n,c,y,x];
        0 for every other cell (seed 000 §2.1.1, seed 003 eq. 17)."""
        self.check_grad(dy)
        argmax, x_shape = self._cache
        return self.backend.max_pool_backward(dy, argmax, x_shape, self.window)


class AvgPool2D(_Pool2D):
    """P[n,c,y,x] = (1/(kh·kw)) Σ_{i,j} X_pad[n, c, y*s_h + i, x*s_w + j]; zero padding counts
    in the divisor (PyTorch's default)."""

    def forward(self, x):
        self._check(x)
        self._cache = x.shape
        return self._record_output(self.backend.avg_pool_forward(x, self.window))

    def backward(self, dy):
        """dL/dX[n,c,u,v] = Σ over windows (y,x) containing (u,v) of dL/dP[n,c,y,x] / (kh·kw)
        (seed 002: each cell of a 2x2 pool gets 1/4 of dP)."""
        self.check_grad(dy)
        return self.backend.avg_pool_backward(dy, self._cache, self.window)
