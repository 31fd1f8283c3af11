"""Process-wide switches.

``check_finite``: layers and losses reject NaN/inf inputs (one pass over the data each call).
The training loop checks the whole dataset once up front and then turns this off for its
mini-batches (``finite_checks(False)``), so the per-step cost is not paid twice.
"""

from __future__ import annotations

from contextlib import contextmanager

check_finite = True


@contextmanager
def finite_checks(enabled: bool):
    """Temporarily turn the per-call NaN/inf input checks on or off."""
    global check_finite
    previous = check_finite
    check_finite = enabled
    try:
        yield
    finally:
        check_finite = previous
