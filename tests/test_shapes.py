"""Output-size arithmetic (seed 000 §1.4.6) and padding resolution (seed 003 §III.1)."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnx import layers
from cnnx.shapes import output_size, pair, resolve_padding


@given(n=st.integers(1, 60), f=st.integers(1, 9), s=st.integers(1, 4),
       p0=st.integers(0, 4), p1=st.integers(0, 4))
def test_output_size_counts_window_positions(n, f, s, p0, p1):
    padded = n + p0 + p1
    if f > padded:
        with pytest.raises(ValueError, match="kernel size"):
            output_size(n, f, s, p0, p1, "Conv2D")
        return
    # count the window starts that fit, by brute force
    starts = [t for t in range(0, padded) if t % s == 0 and t + f <= padded]
    assert output_size(n, f, s, p0, p1) == len(starts)
    if p0 == p1:
        assert output_size(n, f, s, p0, p1) == (n + 2 * p0 - f) // s + 1


def test_seed_chain_39_37_17_7():
    # seed 000 §1.4.7: 39 -(3, s1)-> 37 -(5, s2)-> 17 -(5, s2)-> 7
    assert output_size(39, 3, 1, 0, 0) == 37
    assert output_size(37, 5, 2, 0, 0) == 17
    assert output_size(17, 5, 2, 0, 0) == 7


@pytest.mark.parametrize("k, expected", [(1, (0, 0)), (2, (0, 1)), (3, (1, 1)), (4, (1, 2))])
def test_same_padding_puts_the_odd_extra_bottom_right(k, expected):
    (pt, pb), (pl, pr) = resolve_padding("same", (k, k), (1, 1), "Conv2D")
    assert (pt, pb) == expected and (pl, pr) == expected


def test_same_padding_needs_stride_one():
    with pytest.raises(ValueError, match="stride 1"):
        resolve_padding("same", (3, 3), (2, 2), "Conv2D")


@pytest.mark.parametrize("bad", [-1, "full", (1,), (1, 2, 3), 1.5, True])
def test_bad_padding_is_rejected_by_name(bad):
    with pytest.raises(ValueError, match="Conv2D: padding"):
        resolve_padding(bad, (3, 3), (1, 1), "Conv2D")


def test_pair_takes_numpy_integers_and_still_refuses_bools_and_floats():
    for value, expected in [(np.int64(3), (3, 3)), ((np.int32(2), 3), (2, 3)), ([1, np.uint8(2)], (1, 2))]:
        got = pair(value, "kernel_size", "Conv2D")
        assert got == expected and all(type(v) is int for v in got)  # JSON-able in a spec
    for bad in [True, np.bool_(True), 3.0, np.float64(3.0), (1, 2.5), (1, True)]:
        with pytest.raises(ValueError, match="Conv2D: kernel_size must be an int or a pair of ints"):
            pair(bad, "kernel_size", "Conv2D")


def test_layers_take_numpy_integer_sizes():
    conv = layers.Conv2D(np.int64(1), np.int32(2), np.int64(3), stride=np.int64(2),
                         padding=(np.int64(1), 0))
    pool = layers.MaxPool2D(np.int32(2), stride=np.int64(1), padding=np.int64(1))
    dense = layers.Dense(np.int64(4), np.uint8(2))
    assert conv.config() == layers.Conv2D(1, 2, 3, stride=2, padding=(1, 0)).config()
    assert pool.config() == layers.MaxPool2D(2, stride=1, padding=1).config()
    assert dense.config() == layers.Dense(4, 2).config()
    json.dumps([conv.config(), pool.config(), dense.config()])
