"""Finite-difference gradient checking (seed 000 §1.3), with central differences in float64.

Seed 000 uses the one-sided quotient (J(w+ε) - J(w))/ε, whose error is O(ε). The central one,

    ∂J/∂w_i ≈ (J(w + ε e_i) - J(w - ε e_i)) / (2ε),

is O(ε²), which is what lets a float64 check reach relative errors near 1e-10. Its error is
the truncation ε²|J‴|/6 plus the rounding of J, about u·S/ε (u = 2.2e-16, S the objective's
scale, below); the two balance near ε = (3u)^(1/3) ≈ 1e-5 for S/|J‴| near 1, the default
step. (With ε = 1e-6 rounding dominates: the errors measured on the preset models are ~10x
larger, and the small input gradients of a model that averages 784 pixels reach ~1e-6.)

The error reported for an array of gradients g (analytic) and n (numeric) is

    max_i |g_i - n_i| / max(max_i |g_i|, max_i |n_i|)

i.e. the worst element, relative to the gradient's own scale, or 0 when both arrays lie
within the noise floor, max(max_i |g_i|, max_i |n_i|) <= floor (below). With ``max_elements``,
i runs over the elements checked but max_i |g_i| over the whole array (g is known everywhere),
so a subset that happens to hold only small gradients is measured on the array's scale, as a
full check would measure it. The floor is

    floor = 100 · 2.2e-16 · S / ε        (2.2e-16: float64's machine epsilon)

and S is the objective's scale: |J| for a loss, Σ |forward(x) ⊙ u| for the weighted sum
(``gradcheck``). J is computed to about one rounding unit of S, so a difference quotient
carries noise near 2.2e-16·S/ε even where the exact gradient is 0 (a conv bias before a batch
norm cancels in the normalisation): without the floor, ~1e-17 against ~1e-10 of noise would
be reported as an error of 1. Above the floor a gradient is still compared relative to its
own size, so a small but wrongly non-zero gradient fails.

Kinks. ReLU and max pooling make J piecewise smooth: where a ReLU input lies within ε of 0,
or two max-pool candidates within ε of each other, w ± ε lands on two pieces and the central
quotient averages two slopes, (s₋(ε + t) + s₊(ε - t)) / 2ε for a kink at distance t, though
the analytic gradient is exactly one of them. Seen at random: a 1x1 conv whose 16 channels see
1568 inputs each has one within 1e-6 of 0 often enough to fail `cnnx gradcheck` on a correct
bias (error 2.5e-4 with ε = 1e-6; kinks within 1e-5 are ten times as common). So an element
whose central difference misses its analytic gradient by more than the noise floor is looked
at again from each side alone, with the second-order one-sided quotients

    left:  (3 J(w) - 4 J(w - ε) + J(w - 2ε)) / 2ε
    right: (-3 J(w) + 4 J(w + ε) - J(w + 2ε)) / 2ε

(four more evaluations of J, for those elements only), and is compared with whichever is
closest to it; if none is within the noise floor, again with ε/4 and ε/16 for ε (a second
kink within 2ε on the other side: a bias shifts many inputs at once). On a smooth J every
quotient is within O(ε²) of the derivative plus rounding noise, so a wrong gradient is no
closer to a one-sided one than to the central one and still fails; at a kink the side that
does not cross it gives that side's slope, which is what the analytic gradient is (ReLU'(0) = 0
and the first maximum's convention at a tie included). Only kinks within ε/8 on both sides
of an element escape this.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from .backends import make_rng
from .losses import Loss

#: The default finite-difference step: where truncation and rounding errors balance (above).
DEFAULT_EPS = 1e-5

#: How many rounding units of the objective the noise floor allows (a few are observed).
NOISE_FLOOR_ULPS = 100

#: The one-sided steps tried near a kink, in units of ε: each narrows the interval in which
#: another kink spoils the quotient (from 2ε to ε/8), at 16x the rounding noise at the end.
KINK_STEPS = (1.0, 0.25, 0.0625)


def _max_abs(a) -> float:
    return float(abs(a).max()) if a.size else 0.0


def noise_floor(objective_scale: float, eps: float) -> float:
    """The gradient size below which central differences of step ``eps`` cannot tell a value
    from 0, for an objective computed to rounding error of ``objective_scale``."""
    return NOISE_FLOOR_ULPS * sys.float_info.epsilon * objective_scale / eps


def relative_error(analytic, numeric, floor: float = 0.0, analytic_max: float = 0.0) -> float:
    """max_i |g_i - n_i| / max(max_i |g_i|, max_i |n_i|), or 0 when that scale is at most
    ``floor``; ``analytic_max``: the largest |g_i| of the whole array when g and n are a
    subset of it."""
    scale = max(_max_abs(analytic), _max_abs(numeric), analytic_max)
    if scale <= floor:  # both are 0 up to finite-difference noise: they agree
        return 0.0
    return _max_abs(analytic - numeric) / scale


def numeric_gradient(f, array, eps: float = DEFAULT_EPS, indices=None):
    """Central differences of the scalar ``f()`` w.r.t. each (or each listed) element of
    ``array``, perturbed in place and restored. Returns an array like ``array``."""
    if not array.flags.c_contiguous:
        raise ValueError("gradcheck: arrays must be C-contiguous (perturbed in place through a view)")
    grad = array * 0
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in (range(flat.size) if indices is None else indices):
        saved = flat[i].copy()
        flat[i] = saved + eps
        plus = float(f())
        flat[i] = saved - eps
        minus = float(f())
        flat[i] = saved
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def one_sided_gradients(f, array, index: int, eps: float, at_w: float) -> tuple[float, float]:
    """The second-order one-sided differences of the scalar ``f()`` w.r.t. element ``index``
    (flat) of ``array``, from the left and from the right; ``at_w``: f() unperturbed."""
    flat = array.reshape(-1)
    saved = flat[index].copy()
    values = {}
    for steps in (-2, -1, 1, 2):
        flat[index] = saved + steps * eps
        values[steps] = float(f())
    flat[index] = saved
    left = (3 * at_w - 4 * values[-1] + values[-2]) / (2 * eps)
    right = (-3 * at_w + 4 * values[1] - values[2]) / (2 * eps)
    return left, right


def _closest_across_kinks(f, array, analytic, numeric, indices, eps, floor):
    """Where the central difference ``numeric`` misses ``analytic`` by more than ``floor``,
    replaces it by the one-sided difference closest to ``analytic`` if that is closer (see
    "Kinks" in the module docstring). ``indices``: the flat elements ``analytic`` and
    ``numeric`` (both flat) hold, or None for all of them."""
    misses = abs(analytic - numeric) > floor
    if not bool(misses.any()):
        return numeric
    numeric = numeric.copy()
    at_w = float(f())
    for position in [int(i) for i in misses.nonzero()[0]]:
        index = position if indices is None else indices[position]
        want = float(analytic[position])
        for step in KINK_STEPS:
            for candidate in one_sided_gradients(f, array, index, eps * step, at_w):
                if abs(want - candidate) < abs(want - float(numeric[position])):
                    numeric[position] = candidate
            if abs(want - float(numeric[position])) <= floor:
                break
    return numeric


def _check_float64(obj):
    layers = getattr(obj, "layers", [obj])
    for layer in layers:
        if getattr(layer, "dtype", "float64") != "float64":
            raise ValueError(f"gradcheck: {layer.name} is {layer.dtype}; build it with "
                             f"dtype='float64' (float32 differences are too coarse)")


def gradcheck(target, x, y=None, loss: Loss | None = None, eps: float = DEFAULT_EPS, seed: int = 0,
              max_elements: int | None = None) -> dict:
    """Compare analytic gradients g with central differences n (step ``eps``); returns
    ``{"input": err, "<param>": err, ...}``, per array the relative error
    max_i |g_i - n_i| / max(max_i |g_i|, max_i |n_i|), or 0 when g and n are both within the
    noise floor 100·2.2e-16·S/ε of zero (S: the objective's scale; see the module docstring).

    - A layer (or a Sequential) without ``loss``: J = Σ forward(x) ⊙ u for a fixed random u,
      so dJ/dy = u exercises every output.
    - A layer or Sequential with ``loss`` and targets ``y``: J = loss(forward(x), y) (one of
      the two without the other is refused).
    - A Loss object: J = target(x, y), gradient w.r.t. the predictions ``x``.
    ``max_elements`` checks a random subset of that many elements per array (for big models),
    relative to the largest analytic gradient of the whole array.
    An element near a kink (a ReLU input or a max-pool tie within ε) is compared with the
    one-sided difference from its smooth side (module docstring, "Kinks").
    Dropout stays in training mode with its masks held fixed: every forward pass starts from
    the buffers as they were (running statistics, Dropout's call counter), and they end so;
    the gradients (``.grads``) are those of the check.
    """
    _check_arguments(target, y, loss)
    rng = make_rng(seed)
    layers = [] if isinstance(target, Loss) else getattr(target, "layers", [target])
    with _buffers_restored(layers) as restore_buffers:
        if isinstance(target, Loss):
            def objective():
                return target.forward(x, y)
            objective_scale = abs(float(objective()))
            analytic = {"input": target.backward()}
            arrays = {"input": x}
        else:
            _check_float64(target)
            objective, analytic, objective_scale = _model_objective(target, x, y, loss, rng,
                                                                    restore_buffers)
            arrays = {"input": x, **_named_params(target)}
        floor = noise_floor(objective_scale, eps)
        errors = {}
        for name, array in arrays.items():
            indices = None
            if max_elements is not None and array.size > max_elements:
                chosen = rng.choice(array.size, size=max_elements, replace=False)
                indices = [int(i) for i in chosen]
            numeric = numeric_gradient(objective, array, eps, indices)
            got = analytic[name]
            # the whole array's scale: a subset of only small elements is judged as a full
            # check would judge it, not by rounding noise relative to its own small values
            analytic_max = _max_abs(got)
            got, numeric = got.reshape(-1), numeric.reshape(-1)
            if indices is not None:
                got, numeric = got[indices], numeric[indices]
            numeric = _closest_across_kinks(objective, array, got, numeric, indices, eps, floor)
            errors[name] = relative_error(got, numeric, floor, analytic_max)
    return errors


def _check_arguments(target, y, loss) -> None:
    """One line for what gradcheck cannot check, before anything runs: a class instead of an
    object, something that is no layer, model or loss, and targets without a loss to use
    them on (or a loss without targets), which would check another objective than meant."""
    if isinstance(target, type):
        raise TypeError(f"gradcheck: got the class {target.__name__}; pass an object built in "
                        f"float64, such as {target.__name__}(..., dtype='float64')")
    if isinstance(target, Loss):
        if y is None:
            raise ValueError(f"gradcheck: checking the loss {target.name} needs its targets: "
                             f"gradcheck(loss, predictions, y)")
        return
    if not (callable(getattr(target, "forward", None)) and callable(getattr(target, "backward", None))):
        raise TypeError(f"gradcheck: expected a layer, a Sequential or a loss, got a "
                        f"{type(target).__name__}")
    if (y is None) != (loss is None):
        given, missing = ("targets y", "loss=") if loss is None else ("loss=", "targets y")
        raise ValueError(f"gradcheck: {given} given without {missing}; a model is checked on "
                         f"loss(forward(x), y) with both, gradcheck(model, x, y, loss=...), "
                         f"or on a fixed random projection of its output with neither")


@contextmanager
def _buffers_restored(layers):
    """Saves a copy of every layer's buffers (batch norm's running statistics, Dropout's call
    counter), which each forward pass in training mode moves; yields a function that puts the
    saved values back, and puts them back on exit, so a check leaves the model as it was."""
    saved = [{key: value.copy() for key, value in layer.buffers.items()} for layer in layers]

    def restore():
        for layer, buffers in zip(layers, saved):
            current = layer.buffers
            for key, value in buffers.items():
                current[key][...] = value  # in place: the layer keeps its own arrays
            layer.buffers = current  # what sets a buffer computed on read (Dropout's counter)
    try:
        yield restore
    finally:
        restore()


def _named_params(target) -> dict:
    if hasattr(target, "parameters"):
        return {name: layer.params[key] for name, layer, key in target.parameters()}
    return dict(target.params)


def _named_grads(target) -> dict:
    if hasattr(target, "parameters"):
        return {name: layer.grads[key] for name, layer, key in target.parameters()}
    target.check_grads()  # Sequential.backward checks its layers' own
    return dict(target.grads)


def _check_output_shapes(target, x) -> None:
    """ValueError naming the first layer whose ``output_shape`` (what ``Sequential.shapes``
    and ``summary`` report, and what sizes the next layer) is not the shape of the examples
    its last forward returned: a layer of one's own that changes the shape must say so."""
    shape = tuple(x.shape[1:])
    for layer in getattr(target, "layers", [target]):
        if layer._output_shape is None:  # a forward that skips _record_output: unknown
            return
        returned = tuple(layer._output_shape[1:])
        predicted = tuple(layer.output_shape(shape))
        if predicted != returned:
            raise ValueError(f"{layer.name}: forward returned examples of shape {returned}, "
                             f"but output_shape({shape}) says {predicted}; override "
                             f"output_shape to compute what forward returns")
        shape = returned


def _model_objective(target, x, y, loss, rng, restore_buffers):
    """J, its analytic gradients and its scale (for the noise floor) for a layer or
    Sequential (see ``gradcheck``). Every forward pass starts from the saved buffers: Dropout
    draws its k-th mask from its call counter k, so each pass, the analytic one included,
    uses the same masks and J is one function of the weights."""
    out = target.forward(x)
    if loss is None:
        # a stream of its own: drawn from the caller's seed, u could equal x, and for layers
        # such as batch norm (whose dx is u projected away from x) the gradient would vanish
        u = make_rng((int(rng.integers(2**31)), 7)).standard_normal(out.shape)
        weights = target.backend.asarray(u, dtype=out.dtype)

        def objective():
            restore_buffers()
            return (target.forward(x) * weights).sum()
        # the size of the terms summed, not of the sum: they round, however much they cancel
        objective_scale = float(abs(out * weights).sum())
        upstream = weights
    else:
        loss.to(target.backend)  # as fit does: the model's backend, not the array type's

        def objective():
            restore_buffers()
            return loss.forward(target.forward(x), y)
        objective_scale = abs(float(objective()))
        upstream = loss.backward()
    restore_buffers()
    target.forward(x)
    _check_output_shapes(target, x)
    dx = target.backward(upstream)
    analytic = {"input": dx.copy(), **{k: v.copy() for k, v in _named_grads(target).items()}}
    return objective, analytic, objective_scale
