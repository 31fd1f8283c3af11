"""Finite-difference gradient checking (seed 000 §1.3), with central differences in float64.

Seed 000 uses the one-sided quotient (J(w+ε) - J(w))/ε, whose error is O(ε). The central one,

    ∂J/∂w_i ≈ (J(w + ε e_i) - J(w - ε e_i)) / (2ε),

is O(ε²), which is what lets a float64 check reach relative errors near 1e-10.

The error reported for an array of gradients g (analytic) and n (numeric) is

    max_i |g_i - n_i| / max(max_i |g_i|, max_i |n_i|, tiny)

i.e. the worst element, relative to the gradient's own scale (so exact zeros, such as the
non-maximal cells of a max-pool, do not divide by zero).
"""

from __future__ import annotations

from .backends import make_rng
from .losses import Loss


def _max_abs(a) -> float:
    return float(abs(a).max()) if a.size else 0.0


def relative_error(analytic, numeric) -> float:
    scale = max(_max_abs(analytic), _max_abs(numeric), 1e-300)
    return _max_abs(analytic - numeric) / scale


def numeric_gradient(f, array, eps: float = 1e-6, indices=None):
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


def _check_float64(obj):
    layers = getattr(obj, "layers", [obj])
    for layer in layers:
        if getattr(layer, "dtype", "float64") != "float64":
            raise ValueError(f"gradcheck: {layer.name} is {layer.dtype}; build it with "
                             f"dtype='float64' (float32 differences are too coarse)")


def gradcheck(target, x, y=None, loss: Loss | None = None, eps: float = 1e-6, seed: int = 0,
              max_elements: int | None = None) -> dict:
    """Compare analytic and numeric gradients; returns ``{"input": err, "<param>": err, ...}``.

    - A layer (or a Sequential) without ``loss``: J = Σ forward(x) ⊙ u for a fixed random u,
      so dJ/dy = u exercises every output.
    - A layer or Sequential with ``loss`` and targets ``y``: J = loss(forward(x), y).
    - A Loss object: J = target(x, y), gradient w.r.t. the predictions ``x``.
    ``max_elements`` checks a random subset of that many elements per array (for big models).
    """
    rng = make_rng(seed)
    if isinstance(target, Loss):
        def objective():
            return target.forward(x, y)
        objective()
        analytic = {"input": target.backward()}
        arrays = {"input": x}
    else:
        _check_float64(target)
        objective, analytic = _model_objective(target, x, y, loss, rng)
        arrays = {"input": x, **_named_params(target)}
    errors = {}
    for name, array in arrays.items():
        indices = None
        if max_elements is not None and array.size > max_elements:
            indices = [int(i) for i in rng.choice(array.size, size=max_elements, replace=False)]
        numeric = numeric_gradient(objective, array, eps, indices)
        got = analytic[name]
        if indices is not None:
            got, numeric = got.reshape(-1)[indices], numeric.reshape(-1)[indices]
        errors[name] = relative_error(got, numeric)
    return errors


def _named_params(target) -> dict:
    if hasattr(target, "parameters"):
        return {name: layer.params[key] for name, layer, key in target.parameters()}
    return dict(target.params)


def _named_grads(target) -> dict:
    if hasattr(target, "parameters"):
        return {name: layer.grads[key] for name, layer, key in target.parameters()}
    return dict(target.grads)


def _model_objective(target, x, y, loss, rng):
    """J and its analytic gradients for a layer or Sequential (see ``gradcheck``)."""
    out = target.forward(x)
    if loss is None:
        # a stream of its own: drawn from the caller's seed, u could equal x, and for layers
        # such as batch norm (whose dx is u projected away from x) the gradient would vanish
        u = make_rng((int(rng.integers(2**31)), 7)).standard_normal(out.shape)
        weights = target.backend.asarray(u, dtype=out.dtype)

        def objective():
            return (target.forward(x) * weights).sum()
        upstream = weights
    else:
        loss.to(target.backend)  # as fit does: the model's backend, not the array type's

        def objective():
            return loss.forward(target.forward(x), y)
        objective()
        upstream = loss.backward()
    target.forward(x)
    dx = target.backward(upstream)
    analytic = {"input": dx.copy(), **{k: v.copy() for k, v in _named_grads(target).items()}}
    return objective, analytic
