"""Helpers shared by the stochastic-gradient kernels (SVD, BPR, WARP).

Every SGD kernel visits its slice ``[lo, hi)`` of a block's ratings in a fresh random
order each time it runs. The order is a Fisher-Yates shuffle drawn from numba's
generator, which is per thread: :func:`seed_thread` seeds only the calling thread, so
Hogwild threads that each seed themselves draw independent, reproducible streams.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def seed_thread(seed: int) -> None:
    """Seed numba's generator of the calling thread (``np.random`` inside kernels)."""
    np.random.seed(seed)  # noqa: NPY002 - numba keeps this legacy state per thread


@njit(nogil=True, cache=True)
def shuffled_range(lo: int, hi: int) -> np.ndarray:
    """``lo, ..., hi - 1`` in a uniformly random order (Fisher-Yates), as int64.

    Draws from the calling thread's numba generator: call :func:`seed_thread` first.
    """
    n = max(hi - lo, 0)
    order = np.empty(n, dtype=np.int64)
    for k in range(n):
        order[k] = lo + k
    # Durstenfeld's variant: swap each position with a uniform earlier-or-equal one.
    for k in range(n - 1, 0, -1):
        r = np.random.randint(0, k + 1)  # noqa: NPY002 - per-thread numba state
        tmp = order[k]
        order[k] = order[r]
        order[r] = tmp
    return order


@njit(nogil=True, cache=True)
def row_contains(indptr: np.ndarray, indices: np.ndarray, row: int, col: int) -> bool:
    """Whether sorted CSR row ``row`` holds column ``col`` (binary search).

    BPR and WARP use it to reject a sampled negative that is in fact a positive.
    """
    lo = indptr[row]
    hi = indptr[row + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        v = indices[mid]
        if v < col:
            lo = mid + 1
        elif v > col:
            hi = mid
        else:
            return True
    return False
