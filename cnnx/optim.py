"""Optimizers: update every parameter of a model from the gradients of the last backward."""

from __future__ import annotations

import math

from .layers.base import is_number


def _setting(optimizer, name: str, value, low: float, high: float = math.inf,
             low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float when it is a real number in the range, else a one-line ValueError.
    The range is finite (inf and NaN are refused): one NaN or inf setting would turn every
    weight into NaN at the first step, with nothing to say why."""
    if not (is_number(value) and math.isfinite(value)
            and (low < value if low_open else low <= value)
            and (value < high if high_open else value <= high)):
        interval = (f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                    if high < math.inf else f"{'>' if low_open else '>='} {low:g}")
        what = f"in {interval}" if high < math.inf else f"a finite number {interval}"
        raise ValueError(f"{type(optimizer).__name__}: {name} must be {what}, got {value!r}")
    return float(value)


def _how_to_wrap(layers) -> str:
    """The hint for an optimizer given layers instead of a model: how to make one of them."""
    if hasattr(layers, "params"):
        return "; wrap it: cnnx.Sequential([layer])"
    if isinstance(layers, (list, tuple)) and layers and all(hasattr(item, "params") for item in layers):
        return "; wrap them: cnnx.Sequential(layers)"
    return ""


class Optimizer:
    """Base class: ``Optimizer(model, lr)`` updates every parameter of ``model`` (a
    ``Sequential``) from the gradients its last ``backward`` left in the layers' ``.grads``,
    one ``step()`` at a time. ``lr`` may be changed between steps (schedules do)."""

    def __init__(self, model, lr: float):
        if not (callable(getattr(model, "parameters", None)) and hasattr(model, "backend")):
            raise TypeError(f"{type(self).__name__}: expected the model whose parameters it "
                            f"updates (a cnnx.Sequential), got a {type(model).__name__}"
                            f"{_how_to_wrap(model)}")
        lr = _setting(self, "learning rate", lr, 0, low_open=True)
        self.model = model
        self.lr = float(lr)
        self.state: dict = {}  # per-parameter buffers, keyed by parameter name

    def step(self, scalars=None) -> None:
        """Update every parameter from its gradient. ``scalars``: a device array holding
        ``graph_scalars()``, read when the update runs instead of when it is issued (a CUDA
        graph replays the step without running this Python again: cnnx/graph.py); the caller
        then counts the step with ``count_step()``."""
        raise NotImplementedError

    def graph_scalars(self) -> list:
        """The numbers of the next step that may change from step to step (the learning rate
        under a schedule, Adam's bias corrections): what ``step(scalars)`` reads."""
        return [self.lr]

    def count_step(self) -> None:
        """Account for a step made with ``step(scalars)`` (or replayed from a graph)."""

    def hyperparameters(self) -> dict:
        """The constructor's settings, by keyword."""
        return {"lr": self.lr}

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={tuple(value) if isinstance(value, list) else value!r}"
                             for key, value in self.hyperparameters().items())
        return f"{type(self).__name__}({settings})"

    def state_dict(self) -> dict:
        """Host (NumPy) copies of the buffers plus the hyper-parameters and the optimizer's
        type, for checkpoints."""
        backend = self.model.backend
        return {"type": type(self).__name__, **self.hyperparameters(),
                "buffers": {name: backend.to_numpy(v).copy() for name, v in self.state.items()}}

    def load_state_dict(self, state: dict, hyperparameters: bool = True) -> None:
        """Continue from ``state``: its buffers, and (unless ``hyperparameters`` is False:
        cnnx train --resume keeps the run's settings, which the command line may change) the
        settings it was saved with; a setting the state lacks keeps its value here. A state
        of another optimizer type is refused: its buffers mean something else here."""
        kind = type(self).__name__
        if not isinstance(state, dict):
            saved_without = (" (the checkpoint was saved without an optimizer: leave this one "
                             "to start empty)" if state is None else "")
            raise TypeError(f"{kind}: expected a state as state_dict() returns it, got a "
                            f"{type(state).__name__}{saved_without}")
        saved_type = state.get("type", kind)  # files before the type was saved: trusted
        if saved_type != kind:
            raise ValueError(f"{kind}: the state was saved from {saved_type}, whose buffers "
                             f"mean something else here; continue with optim.{saved_type}(model) "
                             f"or leave this {kind} to start empty")
        if hyperparameters:
            saved = {key: state[key] for key in self.hyperparameters() if key in state}
            # through the constructor, which checks them (and empties the buffers, loaded next)
            type(self).__init__(self, self.model, **{**self.hyperparameters(), **saved})
        params = {key: layer.params[k] for key, layer, k in self.model.parameters()}
        self.state = {name: self._buffer_for(name, value, params)
                      for name, value in state["buffers"].items()}

    def _buffer_for(self, name: str, value, params: dict):
        """A saved buffer as a copy on the model's backend in its parameter's dtype (a float64
        state would otherwise turn the updates of a float32 model into float64 arithmetic);
        ValueError when it belongs to no parameter (of ``params``, by name) of its shape."""
        # SGD keys a velocity by its parameter's name ("0.W"), Adam adds ".m" and ".v"
        param = params.get(name, params.get(name.rpartition(".")[0]))
        if param is None or tuple(value.shape) != tuple(param.shape):
            where = ("no parameter of this model" if param is None
                     else f"shape {tuple(param.shape)}")
            raise ValueError(f"{type(self).__name__}: the saved buffer {name} "
                             f"{tuple(value.shape)} does not fit this model ({where})")
        return self.model.backend.asarray(value, dtype=param.dtype, copy=True)


class SGD(Optimizer):
    """Mini-batch SGD (seed 001 eq. 21, seeds 002 and 004: w ← w - η ∂J/∂w, with ∂J/∂w the
    batch mean of seed 000 §1.3.2), with optional momentum μ and weight decay λ (the gradient
    of the L2 penalty (λ/2)‖w‖², seed 000 §1.5.1):

        g ← ∂J/∂w + λ w;   v ← μ v + g;   w ← w - η v        (PyTorch's convention)

    ``nesterov=True`` steps by g + μ v instead of v (PyTorch's Nesterov form).
    """

    def __init__(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(model, lr)
        momentum = _setting(self, "momentum", momentum, 0, 1)
        weight_decay = _setting(self, "weight_decay", weight_decay, 0)
        if nesterov and not momentum:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = bool(nesterov)

    def step(self, scalars=None) -> None:
        backend = self.model.backend
        for name, layer, key in self.model.parameters():
            param = layer.params[key]
            velocity = None
            if self.momentum:
                velocity = self.state.get(name)
                if velocity is None:
                    velocity = self.state[name] = backend.xp.zeros_like(param)
            grad = layer.grads[key]
            if self.nesterov:
                self._nesterov_update(param, grad, velocity,
                                      self.lr if scalars is None else scalars[0])
            elif scalars is None:
                backend.sgd_update(param, grad, velocity, self.lr, self.momentum,
                                   self.weight_decay)
            else:
                backend.sgd_update_device_scalars(param, grad, velocity, scalars, self.momentum,
                                                  self.weight_decay)

    def _nesterov_update(self, param, grad, velocity, lr):
        """Nesterov momentum (PyTorch's form): v ← μ v + g;  w ← w - η (g + μ v)."""
        g = grad + self.weight_decay * param if self.weight_decay else grad
        velocity *= self.momentum
        velocity += g
        param -= lr * (g + self.momentum * velocity)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), with L2 or decoupled (AdamW) weight decay:

        g ← ∂J/∂w (+ λ w unless decoupled);   m ← β1 m + (1-β1) g;   v ← β2 v + (1-β2) g²
        w ← w - η [ m/(1-β1^t) / (sqrt(v/(1-β2^t)) + ε)  (+ λ w if decoupled) ]
    """

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(model, lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        b1, b2 = (_setting(self, name, b, 0, 1) for name, b in zip(("beta1", "beta2"), betas))
        self.betas = (b1, b2)
        self.eps = _setting(self, "eps", eps, 0, low_open=True)
        self.weight_decay = _setting(self, "weight_decay", weight_decay, 0)
        self.decoupled = bool(decoupled)
        self.steps = 0

    def step(self, scalars=None) -> None:
        backend = self.model.backend
        if scalars is None:
            self.steps += 1
        for name, layer, key in self.model.parameters():
            param = layer.params[key]
            if name + ".m" not in self.state:
                self.state[name + ".m"] = backend.xp.zeros_like(param)
                self.state[name + ".v"] = backend.xp.zeros_like(param)
            m, v = self.state[name + ".m"], self.state[name + ".v"]
            if scalars is None:
                backend.adam_update(param, layer.grads[key], m, v, self.lr, self.betas,
                                    self.eps, self.weight_decay, self.decoupled, self.steps)
            else:
                backend.adam_update_device_scalars(param, layer.grads[key], m, v, scalars,
                                                   self.betas, self.eps, self.weight_decay,
                                                   self.decoupled)

    def graph_scalars(self) -> list:
        """[lr, 1-β1^t, 1-β2^t] for the next step t."""
        t = self.steps + 1
        return [self.lr, 1 - self.betas[0] ** t, 1 - self.betas[1] ** t]

    def count_step(self) -> None:
        self.steps += 1

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "decoupled": self.decoupled}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict, hyperparameters: bool = True) -> None:
        super().load_state_dict(state, hyperparameters)
        self.steps = int(state.get("steps", 0))


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
