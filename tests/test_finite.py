"""The finite check of factor blocks finds every NaN and infinity, and allocates nothing."""

from __future__ import annotations

import numpy as np
import pytest

from mfdask.engine.finite import all_finite


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_bad_entry_is_found(dtype: type, bad: float) -> None:
    a = np.ones((1000, 16), dtype=dtype)
    assert all_finite(a)
    a[537, 3] = bad
    assert not all_finite(a)


def test_opposite_infinities_and_huge_finite_values() -> None:
    a = np.zeros(10, np.float32)
    a[1], a[2] = np.inf, -np.inf
    assert not all_finite(a)
    huge = np.full(100_000, np.finfo(np.float32).max, np.float32)
    assert all_finite(huge)  # no false alarm from an overflowing sum
    assert all_finite(np.empty((0, 8), np.float32))
