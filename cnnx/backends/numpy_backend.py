"""The CPU backend: NumPy for ``xp``; every hot path is the default written in ``base.py``."""

from __future__ import annotations

import numpy

from .base import Backend


class NumpyBackend(Backend):
    xp = numpy
    name = "cpu"

    def to_numpy(self, a):
        return numpy.asarray(a)
