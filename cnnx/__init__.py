"""cnnx: convolutional networks whose every forward and backward pass is written out by hand,
once, against an array module (NumPy on the CPU, CuPy on NVIDIA GPUs)."""

from __future__ import annotations

__version__ = "0.1.0"

from . import augment, checkpoint, layers, losses, models, optim, schedules  # noqa: E402
from .backends import available_backends, get_backend  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402
from .model import ModelSpecError, Sequential, from_spec  # noqa: E402
from .train import TrainingDiverged, evaluate, fit, predict  # noqa: E402

__all__ = [
    "Sequential", "from_spec", "ModelSpecError", "layers", "losses", "optim", "checkpoint",
    "models", "schedules", "augment", "fit",
    "evaluate", "predict", "TrainingDiverged", "gradcheck", "get_backend", "available_backends",
    "__version__",
]
