"""Shape arithmetic shared by convolution and pooling: the one place output sizes are computed.

Seed 000 §1.4.6 gives the output size of a convolution or pooling window along one axis:

    n_out = floor((n + 2p - f) / s) + 1

We allow the padding to differ between the two sides of an axis (seed 003 §III.1 puts the
extra row/column of an odd total padding at the bottom/right), so the formula we use is

    n_out = floor((n + p_before + p_after - f) / s) + 1
"""

from __future__ import annotations

import math
import numbers


def pair(value, name: str, layer: str) -> tuple[int, int]:
    """Return ``(a, b)`` from an int or a pair of ints, rejecting anything else by name."""
    if isinstance(value, bool):
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")


def whole_number(value, name: str, layer: str) -> int:
    """``value`` as an int: an int, or a float with a whole value (16.0); anything else (a
    string from a JSON model file, 2.5, inf, a bool) is a ValueError naming ``name``, not
    int()'s message that names nothing."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():  # False for inf and NaN
        return int(value)
    raise ValueError(f"{layer}: {name} must be a whole number, got {value!r}")


def real_number(value, name: str, layer: str) -> float:
    """``value`` as a finite float; a ValueError naming ``name`` otherwise (see whole_number)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{layer}: {name} must be a finite number, got {value!r}")


def output_size(n: int, f: int, s: int, p_before: int, p_after: int, layer: str = "layer") -> int:
    """Output length along one axis (seed 000 §1.4.6, with per-side padding).

    Raises ValueError naming ``layer`` when the window does not fit the padded input.
    """
    padded = n + p_before + p_after
    if f > padded:
        raise ValueError(
            f"{layer}: kernel size {f} is larger than the padded input size {padded} "
            f"(input {n} + padding {p_before}+{p_after}); use a smaller kernel or more padding"
        )
    return (padded - f) // s + 1


def resolve_padding(padding, kernel: tuple[int, int], stride: tuple[int, int], layer: str):
    """Turn a padding spec into ``((top, bottom), (left, right))``.

    ``padding`` is an int, a pair ``(ph, pw)`` (the same on both sides of an axis), ``"valid"``
    (no padding) or ``"same"`` (stride 1 only: total padding f - 1 per axis; when that total is
    odd the extra row/column goes to the bottom/right, as in seed 003 §III.1).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{layer}: padding='same' needs stride 1, got stride {stride}")
            pads = []
            for f in kernel:
                total = f - 1
                pads.append((total // 2, total - total // 2))
            return (pads[0], pads[1])
        raise ValueError(
            f"{layer}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}"
        )
    ph, pw = pair(padding, "padding", layer)
    if ph < 0 or pw < 0:
        raise ValueError(f"{layer}: padding must be >= 0, got {padding!r}")
    return ((ph, ph), (pw, pw))


def check_positive(values: tuple[int, ...], name: str, layer: str) -> None:
    if any(v <= 0 for v in values):
        raise ValueError(f"{layer}: {name} must be positive, got {values}")
