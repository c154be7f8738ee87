"""Initial factors drawn by global row index from a counter-based generator.

A factor matrix too large for one process is drawn block by block on the workers that
hold it. For the model not to depend on how rows are blocked, entry ``(g, j)`` must be a
function of ``(seed, g, j)`` alone, which a sequential generator cannot give without
drawing every earlier row. Here each entry hashes its counter ``g * k + j`` with the
seed through SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014), turns two hashes into two uniforms and those into a standard
normal by the Box-Muller transform; the second normal of each pair is discarded so that
every entry stays a function of its own counter.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_M53 = 1.0 / 9007199254740992.0


@njit(nogil=True, cache=True, inline="always")
def _splitmix64(x: np.uint64) -> np.uint64:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(nogil=True, cache=True)
def hashed_normal_rows(
    rows: np.ndarray, k: int, seed: np.uint64, scale: float, out: np.ndarray
) -> None:
    """``out[r, j] = scale * N(0, 1)`` keyed by ``(seed, rows[r], j)``; ``out``: (len(rows), k)."""
    key = _splitmix64(seed)
    for r in range(rows.shape[0]):
        base = np.uint64(rows[r]) * np.uint64(k)
        for j in range(k):
            c = (base + np.uint64(j)) * np.uint64(2)
            h1 = _splitmix64(key ^ c)
            h2 = _splitmix64(key ^ (c + np.uint64(1)))
            # 53-bit uniforms; u1 in (0, 1] so that log(u1) is finite.
            u1 = (np.float64(h1 >> np.uint64(11)) + 1.0) * _TWO_POW_M53
            u2 = np.float64(h2 >> np.uint64(11)) * _TWO_POW_M53
            out[r, j] = scale * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
