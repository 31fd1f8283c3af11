"""Learning-rate schedules: functions of training progress measured in epochs (a float, so a
schedule can change the rate inside an epoch). Each returns the learning rate to use."""

from __future__ import annotations

import math

from .layers.base import is_number


def _number(schedule, name: str, value) -> float:
    """``value`` as a float when it is a finite real number, else a one-line ValueError naming
    the schedule and the argument (a string or None would fail in a comparison instead)."""
    if not (is_number(value) and math.isfinite(value)):
        raise ValueError(f"{type(schedule).__name__}: {name} must be a number, got {value!r}")
    return float(value)


class Schedule:
    def __init__(self, lr: float, warmup_epochs: float = 0.0):
        lr, warmup_epochs = _number(self, "lr", lr), _number(self, "warmup_epochs", warmup_epochs)
        if lr <= 0 or warmup_epochs < 0:
            raise ValueError(f"{type(self).__name__}: need lr > 0 and warmup >= 0, "
                             f"got lr={lr}, warmup={warmup_epochs}")
        self.lr, self.warmup = float(lr), float(warmup_epochs)

    def __call__(self, progress: float) -> float:
        """Learning rate at ``progress`` epochs: a linear warm-up, then ``decay``."""
        if progress < self.warmup:
            # + 1e-3 epochs: the very first step moves a little; min: a warm-up shorter than
            # that offset must not overshoot the rate it warms up to
            return self.lr * min(1.0, (progress + 1e-3) / self.warmup)
        return self.lr * self.decay(progress)

    def decay(self, progress: float) -> float:
        return 1.0


class Constant(Schedule):
    """The same rate throughout (after an optional warm-up)."""


class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` every ``step_epochs`` epochs."""

    def __init__(self, lr, step_epochs: float, gamma: float = 0.1, warmup_epochs: float = 0.0):
        super().__init__(lr, warmup_epochs)
        step_epochs, gamma = _number(self, "step_epochs", step_epochs), _number(self, "gamma", gamma)
        if step_epochs <= 0 or not 0 < gamma <= 1:
            raise ValueError(f"StepDecay: need step_epochs > 0 and 0 < gamma <= 1, got "
                             f"step_epochs={step_epochs}, gamma={gamma}")
        self.step_epochs, self.gamma = float(step_epochs), float(gamma)

    def decay(self, progress):
        # + 1e-9 steps: a step that starts exactly at a boundary may come as a hair below it
        # (fit's epoch + step / steps: 1 + 2/3 is 1.6666666666666665, a third of 5 epochs
        # 1.6666666666666667); it takes the new rate, one step sooner than floor alone gives
        return self.gamma ** math.floor(progress / self.step_epochs + 1e-9)


class Cosine(Schedule):
    """Half a cosine from the rate down to ``final_fraction`` of it at ``total_epochs``."""

    def __init__(self, lr, total_epochs: float, warmup_epochs: float = 0.0,
                 final_fraction: float = 0.0):
        super().__init__(lr, warmup_epochs)
        total_epochs = _number(self, "total_epochs", total_epochs)
        final_fraction = _number(self, "final_fraction", final_fraction)
        if total_epochs <= warmup_epochs:
            raise ValueError("Cosine: total_epochs must exceed warmup_epochs")
        if not 0 <= final_fraction <= 1:
            raise ValueError(f"Cosine: final_fraction is the fraction of the rate to end at, "
                             f"between 0 and 1, got {final_fraction}")
        self.total, self.final = float(total_epochs), float(final_fraction)

    def decay(self, progress):
        t = min(1.0, (progress - self.warmup) / (self.total - self.warmup))
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t))


SCHEDULES = {"constant": Constant, "step": StepDecay, "cosine": Cosine}
