"""2-D convolution through im2col (seed 004), with an optional fused ReLU.

Convention. We compute the *cross-correlation* (as PyTorch and seed 000 §1.4.1 do):

    Z[n, o, y, x] = b[o] + sum_{c, i, j} W[o, c, i, j] * X_pad[n, c, y*s_h + i, x*s_w + j]

Seed 001 eq. (1) writes the true convolution, with the kernel flipped:
C_ijk = sum_{p,q,r} x_{(s1 i + p)(s2 j + q) r} w_{(P-p)(Q-q) r k}. The two are the same layer with
the kernel rotated by 180°: our W[o, c, i, j] is the seed's w_{(P-i)(Q-j) c o}. Since the kernel is
learned, the choice changes nothing but the stored orientation; cross-correlation lets the
stored kernel be read the way it is applied (tests/test_seed_examples.py checks both forms).

Vectorized (seed 004): with col = im2col(X) of shape (N*Ho*Wo, C*kh*kw) and
W_mat = W.reshape(O, C*kh*kw), the layer is one matrix product  Z_rows = col @ W_mat^T + b.
"""

from __future__ import annotations

from ..backends import Window, make_rng
from ..shapes import check_positive, pair, positive_int, resolve_padding
from .base import Layer

ACTIVATIONS = (None, "relu")


class Conv2D(Layer):
    """Conv2D(in_channels, out_channels, kernel_size, stride=1, padding=0, activation=None).

    x: (N, C_in, H, W) -> y: (N, C_out, Ho, Wo),  Ho = floor((H + p_top + p_bottom - kh)/s_h) + 1
    (seed 000 §1.4.6). ``padding``: int, pair, "valid" or "same" (stride 1; an odd total padding
    puts the extra row/column at the bottom/right, seed 003 §III.1). ``activation="relu"``
    fuses a ReLU into the layer (one pass over the output instead of two layers).
    Parameters: W (out, in, kh, kw), b (out,). ``init`` ("he" or "xavier"; default He with the
    fused ReLU, else Xavier) and ``seed`` draw W; a Sequential redraws W from its own seed,
    keeping an ``init`` given here (see ``Sequential``).
    """

    config_keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "activation")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 activation=None, init=None, seed=0, dtype="float32"):
        super().__init__(dtype)
        layer = self.name
        self.in_channels = positive_int(in_channels, "in_channels", layer)
        self.out_channels = positive_int(out_channels, "out_channels", layer)
        self.kernel_size = pair(kernel_size, "kernel_size", layer)
        self.stride = pair(stride, "stride", layer)
        check_positive(self.kernel_size, "kernel_size", layer)
        check_positive(self.stride, "stride", layer)
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding", layer)
        (pt, pb), (pl, pr) = resolve_padding(padding, self.kernel_size, self.stride, layer)
        self.window = Window(*self.kernel_size, *self.stride, pt, pb, pl, pr)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{layer}: activation must be None or 'relu', got {activation!r}")
        self.activation = activation
        self.init = init  # None: the scheme is chosen by what follows the layer (Sequential)
        self._cache = None
        self.reset_parameters(make_rng(seed), init or ("he" if activation == "relu" else "xavier"))

    def reset_parameters(self, rng, init="he"):
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        fan_out = self.out_channels * kh * kw
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.params = {"W": self._init_weight(rng, shape, fan_in, fan_out, init),
                       "b": self._zeros((self.out_channels,))}
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.params.items()}

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            fix = (f" (set in_channels to {input_shape[0]})" if len(input_shape) == 3
                   else " (a Conv2D takes (C, H, W) images, not flat features)"
                   if len(input_shape) == 1 else "")
            raise ValueError(f"{self.name}: expected input (C={self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}{fix}")
        ho, wo = self.window.out_hw(input_shape[1], input_shape[2], self.name)
        return (self.out_channels, ho, wo)

    def forward(self, x):
        """Z_rows = im2col(X) @ W_mat^T + b; Y = relu(Z) when fused. Returns NCHW."""
        self.check_input(x, rank=4, channels=self.in_channels)
        self.window.out_hw(x.shape[2], x.shape[3], self.name)
        y, self._cache = self.backend.conv2d_forward(x, self.params["W"], self.params["b"],
                                                     self.window, self.activation == "relu")
        return self._record_output(y)

    def backward(self, dy):
        """Seed 000 §2.2 / seed 002, in im2col form (seed 004), with δ = dL/dZ:

            δ            = dL/dY ⊙ 1[Z > 0]     (only with the fused ReLU)
            dL/dW_mat    = δ_rows^T @ col        dL/dW[o,c,i,j] = Σ_{n,y,x} δ[n,o,y,x] X_pad[n,c,ys+i,xs+j]
            dL/db[o]     = Σ_{n,y,x} δ[n,o,y,x]
            dL/dX        = col2im(δ_rows @ W_mat)  dL/dX_pad[n,c,u,v] = Σ δ[n,o,y,x] W[o,c,u-ys,v-xs]

        The last line is seed 002's "conv(padded dZ, 180°-rotated K)" written as a gather.
        The backend computes these (``Backend.conv2d_backward``).
        """
        self.check_grad(dy)
        dx, self.grads["W"], self.grads["b"] = self.backend.conv2d_backward(
            dy, self._cache, self.params["W"], self.window, self.activation == "relu")
        return dx

    def backward_params(self, dy):
        """dL/dW and dL/db only: skips the dL/dX product and its col2im."""
        self.check_grad(dy)
        self.grads["W"], self.grads["b"] = self.backend.conv2d_backward_params(
            dy, self._cache, self.params["W"], self.window, self.activation == "relu")
