"""Optimizers: update every parameter of a model from the gradients of the last backward."""

from __future__ import annotations


class Optimizer:
    def __init__(self, model, lr: float):
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: learning rate must be > 0, got {lr}")
        self.model = model
        self.lr = float(lr)
        self.state: dict = {}  # per-parameter buffers, keyed by parameter name

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Host (NumPy) copies of the buffers plus the hyper-parameters, for checkpoints."""
        backend = self.model.backend
        return {"lr": self.lr,
                "buffers": {name: backend.to_numpy(v).copy() for name, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        backend = self.model.backend
        self.lr = float(state["lr"])
        self.state = {name: backend.asarray(v) for name, v in state["buffers"].items()}


class SGD(Optimizer):
    """Mini-batch SGD (seed 000 §1.3.2, seed 001 eq. 21: w ← w - η ∂J/∂w), with optional
    momentum μ and weight decay λ (the gradient of the L2 penalty (λ/2)‖w‖², seed 000 §1.5.1):

        g ← ∂J/∂w + λ w;   v ← μ v + g;   w ← w - η v        (PyTorch's convention)
    """

    def __init__(self, model, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(model, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)

    def step(self) -> None:
        backend = self.model.backend
        for name, layer, key in self.model.parameters():
            param = layer.params[key]
            velocity = None
            if self.momentum:
                velocity = self.state.get(name)
                if velocity is None:
                    velocity = self.state[name] = backend.xp.zeros_like(param)
            backend.sgd_update(param, layer.grads[key], velocity, self.lr, self.momentum,
                               self.weight_decay)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "momentum": self.momentum,
                "weight_decay": self.weight_decay}
