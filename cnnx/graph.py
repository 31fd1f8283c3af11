"""Training steps replayed from a CUDA graph (``cnnx train --cuda-graph``, ``fit(cuda_graph=True)``).

An eager step on the GPU spends more time on the host than the GPU spends computing, up to
batch 256 for the reference CNN (BENCHMARKS.md): Python and ~40 kernel launches. A CUDA graph
records one whole step (forward, loss, backward, update) once; every later step of the same
batch shape is one launch. ``GraphedTrainStep`` does that behind the same call as
``train_step``, and computes the same step:

1. The batch is copied into buffers that stay put ("static"): the graph reads those addresses.
2. The numbers that change from step to step without Python running (the learning rate under
   a schedule, Adam's bias corrections ``1-β^t``) live in a small device array that the
   optimizer's update kernels read when they run (``Optimizer.graph_scalars``). The host
   writes it before a launch when they changed: every step for Adam or a per-step schedule
   (one 12-byte copy), once for SGD at a constant rate. Everything else is captured once.
3. The first ``warmup`` steps run normally but the way the capture will (``run``); the next
   one is captured and then launched; all later ones are launched.
4. Loss and logits are copied into output buffers inside the step, so the caller gets them
   from every replay; the loss is handed back as a copy (a later replay overwrites the buffer).
5. A batch of another shape (the last, smaller one of an epoch) is an ordinary ``train_step``.

What may not be in a graphed step: work whose inputs the host changes from step to step
without going through the static buffers or the scalars, such as a dropout mask drawn from a
host-side counter. ``GraphedTrainStep`` refuses such models up front.
"""

from __future__ import annotations

from . import config
from .backends import DeviceError
from .train import train_step


def check_replayable(model) -> None:
    """Raise DeviceError when the model's backend has no CUDA graphs, ValueError naming the
    first layer whose step a graph cannot replay."""
    if not model.backend.has_cuda_graphs:
        model.backend.graph_capture()  # raises the one-line DeviceError
    for i, layer in enumerate(model.layers):
        if not layer.replayable_in_graph():
            raise ValueError(
                f"--cuda-graph cannot replay layer {i} ({type(layer).__name__}): it draws new "
                "random numbers on the host every step; train without --cuda-graph")


def _graph_setup(what: str, call, *args):
    """``call(*args)``, with a failure of CUDA's or CuPy's (a capture they refuse, a missing
    cuBLAS) turned into one DeviceError line that says how to train anyway."""
    try:
        return call(*args)
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(f"{what} a CUDA graph failed ({type(exc).__name__}: {exc}); "
                          "train without --cuda-graph") from exc


class GraphedTrainStep:
    """``step(xb, yb)``: one training step, like ``train_step(model, loss, optimizer, xb, yb)``,
    returning ``(loss 0-d array, logits)``; the logits are valid until the next step."""

    def __init__(self, model, loss, optimizer, warmup: int = 3):
        check_replayable(model)
        if warmup < 1:
            raise ValueError(f"a graphed step needs at least one warm-up step, got {warmup}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.backend = model.backend
        self.recorder = _graph_setup("setting up", self.backend.graph_capture)
        self.warmup = warmup
        self.warmed_up = 0
        self.graph = None
        self.x = self.y = None  # static batch buffers
        self.scalars = None  # device copy of optimizer.graph_scalars()
        self._scalars_now = None  # the host values last written into it
        self.loss_out = self.logits_out = None  # static output buffers

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, xb, yb):
        if self.x is None:
            self._allocate(xb, yb)
        elif xb.shape != self.x.shape or yb.shape != self.y.shape or yb.dtype != self.y.dtype:
            return train_step(self.model, self.loss, self.optimizer, xb, yb)
        self.x[...] = xb
        self.y[...] = yb
        self._write_scalars()
        if self.graph is not None:
            self.recorder.launch(self.graph)
        elif self.warmed_up < self.warmup:
            before = self._state_arrays()
            self.recorder.run(self._step)
            self._check_updated_in_place(before)
            self.warmed_up += 1
        else:
            self.graph = _graph_setup("capturing a training step in", self.recorder.capture,
                                      self._step)
            self.recorder.launch(self.graph)
        self.optimizer.count_step()
        return self.loss_out.copy(), self.logits_out

    def _allocate(self, xb, yb):
        xp = self.backend.xp
        self.x = xp.empty_like(xb)
        self.y = xp.empty_like(yb)
        self.scalars = xp.empty(len(self.optimizer.graph_scalars()), dtype=self.model.dtype)

    def _write_scalars(self):
        values = [float(v) for v in self.optimizer.graph_scalars()]
        if values != self._scalars_now:  # SGD at a constant rate: written once
            self.scalars[...] = self.backend.asarray(values, dtype=self.scalars.dtype)
            self._scalars_now = values

    def _state_arrays(self) -> dict:
        """Every array a step updates for the next one: parameters, buffers (running
        statistics), optimizer state."""
        arrays = {f"optimizer state {name}": a for name, a in self.optimizer.state.items()}
        for name, layer, group, key in self.model._state_arrays():
            stored = getattr(layer, group)
            # a group computed on each read (Dropout's host counter) holds no stored arrays
            if stored is getattr(layer, group):
                arrays[f"{group[:-1]} {name} ({type(layer).__name__})"] = stored[key]
        return arrays

    def _check_updated_in_place(self, before: dict) -> None:
        """A replay keeps writing to the arrays the step had when it was captured, so a step
        that puts a new array in their place (``w = w - ...`` instead of ``w -= ...``) would
        train a copy nobody reads. Checked on the warm-up steps, which run the Python."""
        after = self._state_arrays()
        for name, array in before.items():
            if after.get(name) is not array:
                raise RuntimeError(f"cnnx: a training step replaced {name} instead of "
                                   "updating it in place, so a CUDA graph cannot replay it")

    def _step(self):
        """The recorded step: reads only the static buffers and the scalars. Without the
        per-call NaN/inf checks, which read a device value on the host (capture forbids it)."""
        model, loss = self.model, self.loss
        if loss.backend is not model.backend:
            loss.to(model.backend)
        with config.finite_checks(False):
            logits = model.forward(self.x)
            value = loss.forward(logits, self.y)
            model.backward(loss.backward(), input_grad=False)
        self.optimizer.step(scalars=self.scalars)
        if self.loss_out is None:  # first warm-up step: the outputs' shapes are known now
            self.loss_out = self.backend.xp.empty_like(value)
            self.logits_out = self.backend.xp.empty_like(logits)
        self.loss_out[...] = value
        self.logits_out[...] = logits

    def close(self) -> None:
        self.graph = None
        self.recorder.close()
