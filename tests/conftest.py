"""Shared fixtures: every backend test runs once per available backend (CPU always, CUDA when
a GPU is usable), never as a per-backend copy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from cnnx.backends import available_backends, get_backend

# Deterministic property tests: the same examples on every run and machine.
settings.register_profile(
    "cnnx", derandomize=True, max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("cnnx")

BACKENDS = available_backends()


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request):
    return get_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tie_free(rng, shape, low=-1.0, high=1.0, away_from_zero=0.0):
    """Distinct values, spaced far wider than a finite-difference step, in random order
    (so max-pool has no ties and ReLU no kinks within ε of an input)."""
    size = int(np.prod(shape))
    values = np.linspace(low, high, size) if size > 1 else np.array([0.5 * (low + high) + 0.3])
    if away_from_zero:
        values = np.sign(values + 1e-12) * (away_from_zero + np.abs(values))
    return rng.permutation(values).reshape(shape)
