"""The training loop: mini-batch SGD over shuffled data (seed 003 §II.5), with per-epoch history.

Randomness is explicit: epoch e's shuffle order is drawn from ``make_rng((seed, e))``, so a run
resumed at (epoch, step) replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import math
import time
from functools import partial

from . import config
from .backends import make_rng
from .layers import BatchNorm1D, BatchNorm2D
from .model import check_example_shape
from .losses import BinaryCrossEntropy, SoftmaxCrossEntropy
from .shapes import is_int

#: How often (in steps) ``fit`` reads the running loss on the host to notice a divergence
#: early; on a GPU each read waits for the steps before it, so not every step.
FINITE_CHECK_STEPS = 50


class TrainingDiverged(ValueError):
    """The training loss (or a parameter) became NaN or infinite: the weights are lost."""


def check_finite_loss(total, backend, epoch: int, step: int, lr: float) -> None:
    """Raise TrainingDiverged when the running loss ``total`` is NaN or infinite."""
    value = backend.scalar(total)
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"training diverged: the loss became {value} in epoch {epoch + 1} (by step {step + 1}) "
            f"at learning rate {lr:g}; lower the learning rate (--lr) and train again")


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True):
    """Indices of the n examples in the order epoch ``epoch`` visits them (host array)."""
    order = make_rng((seed, epoch)).permutation(n)
    if not shuffle:
        order.sort()
    return order


def batch_slices(n: int, batch_size: int, drop_last: bool):
    """``[(start, stop)]`` of each mini-batch; a last, smaller batch is dropped if asked."""
    if not (is_int(batch_size) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    slices = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if drop_last and slices and slices[-1][1] - slices[-1][0] < batch_size:
        slices.pop()
    return slices


def correct_count(logits, target, loss):
    """Number of correct predictions in a batch as a 0-d device array (None for regression)."""
    if isinstance(loss, SoftmaxCrossEntropy):
        labels = target if target.ndim == 1 else target.argmax(axis=1)
        return (logits.argmax(axis=1) == labels).sum()
    if isinstance(loss, BinaryCrossEntropy):
        return ((logits > 0) == (target > 0.5)).sum() / (logits.size // logits.shape[0])
    return None


def prepare(model, x, y, name: str = "data"):
    """Validate a dataset once (finite values, matching lengths) and put it on model's device."""
    backend = model.backend
    given = x
    x = backend.asarray(x, dtype=model.dtype)
    y = backend.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} targets")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no examples")
    if not bool(backend.xp.isfinite(x).all()):
        _explain_non_finite(backend, given, model.dtype, name)
    if y.dtype.kind == "f" and not bool(backend.xp.isfinite(y).all()):
        raise ValueError(f"{name}: targets contain NaN or inf")
    check_example_shape(model, x, name)
    return x, y


def _explain_non_finite(backend, given, dtype, name: str):
    """Raise the ValueError for inputs that are not finite in ``dtype``: NaN or inf in the data,
    or finite numbers too large for ``dtype`` (float64 data cast to a float32 model)."""
    given = backend.asarray(given)
    if given.dtype.kind == "f" and bool(backend.xp.isfinite(given).all()):
        largest = float(abs(given).max())
        raise ValueError(f"{name}: inputs as large as {largest:.3g} overflow {dtype} to inf; "
                         "scale them (standardize), or build the model in float64")
    raise ValueError(f"{name}: inputs contain NaN or inf")


def forward_size(model, xb) -> int:
    """How many numbers the model's layers output for the batch ``xb``."""
    return xb.shape[0] * model.outputs_per_example(xb.shape[1:])


def train_step(model, loss, optimizer, xb, yb):
    """One SGD step: forward, loss, backward, update. Returns (loss 0-d array, logits)."""
    if loss.backend is not model.backend:
        loss.to(model.backend)
    with model.backend.work_scope(forward_size(model, xb)):
        logits = model.forward(xb)
        value = loss.forward(logits, yb)
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()
    return value, logits


def fit(model, loss, optimizer, x, y, epochs: int = 1, batch_size: int = 64, validation=None,
        seed: int = 0, shuffle: bool = True, drop_last: bool = False, start_epoch: int = 0,
        start_step: int = 0, on_batch=None, on_epoch=None, augment=None, schedule=None,
        patience: int | None = None, cuda_graph: bool = False):
    """Train ``model`` and return the history: one dict per epoch with ``epoch, train_loss,
    train_accuracy, val_loss, val_accuracy, images_per_second, seconds, lr`` (the accuracies
    None for a regression loss, the validation entries None without ``validation``).

    ``start_epoch``/``start_step`` resume inside a run (the shuffle order is re-derived).
    ``on_batch(info)`` is called after every step with a dict (``epoch, step, steps, images,
    loss, correct`` — loss and correct as 0-d device arrays: convert only when you log them).
    ``on_epoch(record)`` is called after every epoch; returning ``"stop"`` ends training.
    ``augment``: an ``cnnx.augment.Augment`` applied to each training batch.
    ``schedule(progress_in_epochs) -> lr`` sets the optimizer's rate before every step.
    ``patience``: stop when the validation loss has not improved for that many epochs
    (early stopping, so it needs ``validation``; the caller keeps the best checkpoint, e.g.
    from ``on_epoch``).
    ``cuda_graph``: replay each full-size step from a CUDA graph (cnnx/graph.py; CUDA only).

    Raises TrainingDiverged when the training loss becomes NaN or infinite: it is read on the
    host every ``FINITE_CHECK_STEPS`` steps and at the end of each epoch, before ``on_epoch``.
    """
    _check_fit_arguments(model, loss, optimizer, epochs, validation, seed, augment, schedule,
                         patience)
    x, y = prepare(model, x, y, "training data")
    loss.to(model.backend)
    _check_targets(model, loss, x[:1], y, "training data")
    if validation is not None:
        validation = prepare(model, *validation, name="validation data")
        _check_targets(model, loss, validation[0][:1], validation[1], "validation data")
    history = []
    slices = batch_slices(x.shape[0], batch_size, drop_last)
    if not slices:
        raise ValueError(f"fit: drop_last=True drops every batch: {x.shape[0]} training examples "
                         f"make no full batch of {batch_size}; use a smaller batch_size")
    _check_last_batch(model, tuple(x.shape[1:]), slices, batch_size)
    if cuda_graph:
        from .graph import GraphedTrainStep

        step = GraphedTrainStep(model, loss, optimizer)
    else:
        step = partial(train_step, model, loss, optimizer)
    try:
        for epoch in range(start_epoch, epochs):
            plan = (augment.plan(x.shape[0], make_rng((seed, epoch, 1)), model.backend)
                    if augment else None)
            record = _run_epoch(model, loss, optimizer, step, (x, y), slices,
                                (seed, epoch, shuffle), start_step if epoch == start_epoch else 0,
                                on_batch, (augment, plan), schedule)
            if validation is not None:
                val = evaluate(model, loss, *validation, batch_size=max(batch_size, 256))
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            else:
                record.update(val_loss=None, val_accuracy=None)
            record["lr"] = optimizer.lr
            history.append(record)
            if on_epoch is not None and on_epoch(record) == "stop":
                break
            if stop_early([r["val_loss"] for r in history], patience):
                break
    finally:
        if cuda_graph:
            step.close()
    return history


def _check_fit_arguments(model, loss, optimizer, epochs, validation, seed, augment, schedule,
                         patience) -> None:
    """One line, before anything trains, for an argument of ``fit`` that is not what it takes
    (a class where an object belongs, a loss and optimizer swapped, a float where a count
    belongs, patience without a validation set to be patient about)."""
    if not (is_int(epochs) and epochs >= 0):
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    check_loss(loss, "fit(model, loss, optimizer, x, y, ...)")
    if isinstance(optimizer, type) or not (callable(getattr(optimizer, "step", None))
                                           and hasattr(optimizer, "lr")):
        raise TypeError(f"fit: optimizer must be a cnnx optimizer built for the model, such as "
                        f"optim.SGD(model, lr=0.01), got {_what(optimizer)}; the arguments are "
                        f"fit(model, loss, optimizer, x, y, ...)")
    if getattr(optimizer, "model", model) is not model:
        raise ValueError("fit: the optimizer updates another model's parameters; build it for "
                         "this one, e.g. optim.SGD(model, lr=0.01)")
    if validation is not None and not (isinstance(validation, (tuple, list))
                                       and len(validation) == 2):
        raise ValueError(f"fit: validation must be a pair (x_val, y_val), got {_what(validation)}")
    if not (is_int(seed) and seed >= 0):
        raise ValueError(f"fit: seed must be an integer >= 0, got {seed!r}")
    if patience is not None:
        if not (is_int(patience) and patience >= 1):
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if validation is None:  # it would never stop early, without a word
            raise ValueError("fit: patience stops on the validation loss; pass "
                             "validation=(x_val, y_val) too")
    if schedule is not None and (isinstance(schedule, type) or not callable(schedule)):
        raise TypeError(f"fit: schedule must map epochs to a learning rate, such as "
                        f"schedules.Cosine(0.05, total_epochs=10), got {_what(schedule)}; for "
                        f"a constant rate set the optimizer's lr")
    if augment is not None and (isinstance(augment, type) or not hasattr(augment, "plan")):
        raise TypeError(f"fit: augment must be an augment.Augment(flip=..., shift=...), got "
                        f"{_what(augment)}")


def _what(value) -> str:
    """How an error names a wrong argument: a class by its name, anything else by its type."""
    if isinstance(value, type):
        return f"the class {value.__name__} (call it: {value.__name__}(...))"
    return f"a {type(value).__name__}"


def check_loss(loss, call: str) -> None:
    """TypeError unless ``loss`` is a loss object (not its class, not the optimizer): one with
    ``to``, ``forward`` and ``backward``, as a ``Loss`` has; ``call`` is the signature the
    message recalls, ``"evaluate(model, loss, x, y)"``."""
    if isinstance(loss, type) or not all(callable(getattr(loss, method, None))
                                         for method in ("to", "forward", "backward")):
        raise TypeError(f"{call.partition('(')[0]}: loss must be a cnnx loss object, such as "
                        f"losses.SoftmaxCrossEntropy(), got {_what(loss)}; the arguments are "
                        f"{call}")


def _check_last_batch(model, example_shape: tuple, slices, batch_size: int) -> None:
    """ValueError, before anything trains, when the last batch of every epoch holds one
    example and a batch-norm layer would get one value per channel from it (BatchNorm1D, or
    BatchNorm2D on 1x1 maps): training-mode batch norm has no statistics to normalise it by,
    and would fail at the end of the first epoch."""
    start, stop = slices[-1]
    if stop - start != 1:
        return
    inputs = [example_shape] + model.shapes(example_shape)[:-1]  # what each layer takes
    if not any(isinstance(layer, (BatchNorm1D, BatchNorm2D)) and math.prod(shape[1:]) == 1
               for layer, shape in zip(model.layers, inputs)):
        return
    n = stop
    better = next((size for size in range(batch_size + 1, n + 1) if n % size != 1), None)
    fix = (f"choose another --batch-size (e.g. {better})" if better else
           "give it more training examples")
    raise ValueError(f"the last batch would hold one example ({n} training examples in batches "
                     f"of {batch_size}), which batch norm cannot normalise: {fix}")


def stop_early(val_losses, patience: int | None) -> bool:
    """Early stopping, decided from the validation losses of all epochs so far (so a resumed run
    decides exactly as an uninterrupted one): True when the last ``patience`` epochs did not
    improve on the best loss before them. None disables it."""
    if patience is None:
        return False
    if not (is_int(patience) and patience >= 1):
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    if len(val_losses) <= patience or None in val_losses:
        return False
    return min(val_losses[-patience:]) >= min(val_losses[:-patience])


def _run_epoch(model, loss, optimizer, train_one, data, slices, when, first_step, on_batch,
               augmentation, schedule):
    backend = model.backend
    (x, y), (seed, epoch, shuffle), (augment, plan) = data, when, augmentation
    order = backend.asarray(epoch_order(x.shape[0], seed, epoch, shuffle))
    total_loss = total_correct = 0
    seen = 0
    started = time.perf_counter()
    model.train()
    with config.finite_checks(False):  # the data was checked once in prepare()
        for step in range(first_step, len(slices)):
            start, stop = slices[step]
            index = order[start:stop]
            xb, yb = x[index], y[index]
            if augment is not None:
                xb = augment.apply(xb, [p[start:stop] for p in plan], backend)
            if schedule is not None:
                optimizer.lr = schedule(epoch + step / len(slices))
            value, logits = train_one(xb, yb)
            count = stop - start
            total_loss = total_loss + value * count
            correct = correct_count(logits, yb, loss)
            total_correct = None if correct is None else total_correct + correct
            seen += count
            if (step + 1) % FINITE_CHECK_STEPS == 0 or step + 1 == len(slices):
                check_finite_loss(total_loss, backend, epoch, step, optimizer.lr)
            if on_batch is not None:
                on_batch({"epoch": epoch, "step": step, "steps": len(slices), "images": count,
                          "loss": value, "correct": correct})
    backend.synchronize()
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch + 1,
        "train_loss": backend.scalar(total_loss) / max(seen, 1),
        "train_accuracy": None if total_correct is None else backend.scalar(total_correct) / max(seen, 1),
        "images_per_second": seen / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
    }


@contextlib.contextmanager
def eval_mode(model):
    """The block runs with ``model`` in eval mode; afterwards it is back in the mode it was in."""
    was_training = model.layers[0].training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def _check_targets(model, loss, x_one, y, name: str):
    """Check the targets against the model's output once (e.g. labels within the class count)."""
    with config.finite_checks(True), eval_mode(model):
        out = model.forward(x_one)
        try:
            loss.forward(backend_repeat(model.backend, out, y.shape[0]), y)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None


def backend_repeat(backend, row, n):
    """``row`` (1, ...) broadcast to (n, ...) without copying."""
    return backend.xp.broadcast_to(row, (n,) + tuple(row.shape[1:]))


def predict(model, x, batch_size: int = 256):
    """Model outputs for every example, in eval mode, as one device array (no examples: an
    empty batch of outputs, shaped as the model's). ``x`` is a batch: a model built with
    ``input_shape`` refuses examples of another shape, as ``fit`` and ``evaluate`` do."""
    x = model.backend.asarray(x, dtype=model.dtype)
    check_example_shape(model, x, "prediction data")
    # no examples: one empty batch, whose output has the model's shape
    slices = batch_slices(x.shape[0], batch_size, drop_last=False) or [(0, 0)]
    outs = []
    with eval_mode(model):
        for start, stop in slices:
            xb = x[start:stop]
            with model.backend.work_scope(forward_size(model, xb)):
                outs.append(model.forward(xb))
    return model.backend.xp.concatenate(outs, axis=0)


def evaluate(model, loss, x, y, batch_size: int = 256) -> dict:
    """Mean loss and accuracy over a dataset (eval mode): ``{"loss", "accuracy",
    "predictions"}``. ``accuracy`` is None for a regression loss (MSE); ``predictions``, the
    host class indices, only for SoftmaxCrossEntropy (None for BCE and MSE)."""
    backend = model.backend
    check_loss(loss, "evaluate(model, loss, x, y, ...)")
    x, y = prepare(model, x, y, "evaluation data")
    loss.to(backend)
    _check_targets(model, loss, x[:1], y, "evaluation data")  # the loop skips the loss's checks
    total_loss = total_correct = 0
    predictions = []
    with config.finite_checks(False), eval_mode(model):
        for start, stop in batch_slices(x.shape[0], batch_size, drop_last=False):
            xb, yb = x[start:stop], y[start:stop]
            with backend.work_scope(forward_size(model, xb)):
                logits = model.forward(xb)
            total_loss = total_loss + loss.forward(logits, yb) * xb.shape[0]
            correct = correct_count(logits, yb, loss)
            total_correct = None if correct is None else total_correct + correct
            if isinstance(loss, SoftmaxCrossEntropy):
                predictions.append(logits.argmax(axis=1))
    n = x.shape[0]
    return {
        "loss": backend.scalar(total_loss) / n,
        "accuracy": None if total_correct is None else backend.scalar(total_correct) / n,
        "predictions": backend.to_numpy(backend.xp.concatenate(predictions)) if predictions else None,
    }
