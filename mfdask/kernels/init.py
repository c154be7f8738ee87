"""Initial factors drawn by global row index from a counter-based generator.

A factor matrix too large for one process is drawn block by block on the workers that
hold it. For the model not to depend on how rows are blocked, entry ``(g, j)`` must be a
function of ``(seed, g, j)`` alone, which a sequential generator cannot give without
drawing every earlier row. Here each pair of entries hashes its counter
``g * ceil(k / 2) + j // 2`` with the seed through SplitMix64 (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014), cuts the hash into two
uniforms and turns those into two standard normals by the Box-Muller transform, which
fill two neighbouring columns of the row: every entry stays a function of its row, its
column and the seed alone.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(nogil=True, cache=True, inline="always")
def _splitmix64(x: np.uint64) -> np.uint64:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


_TWO_POW_M24 = np.float32(1.0 / 16777216.0)


@njit(nogil=True, cache=True, fastmath=True)
def hashed_normal_rows(
    rows: np.ndarray, k: int, seed: np.uint64, scale: float, out: np.ndarray
) -> None:
    """``out[r, j] = scale * N(0, 1)`` keyed by ``(seed, rows[r], j)``; ``out``: (len(rows), k).

    Columns ``2p`` and ``2p + 1`` of a row are the cosine and sine normals of one
    Box-Muller pair. Its two 24-bit uniforms are two disjoint bit fields of one hash of
    the pair's counter ``g * ceil(k / 2) + p``, and the transform runs in float32: the
    draw is an initial point, for which 24 bits (normals out to 5.8 sigma) are plenty,
    at under half the cost of 53-bit uniforms in float64.
    """
    key = _splitmix64(seed)
    pairs = (k + 1) // 2
    two_pi = np.float32(2.0 * np.pi)
    for r in range(rows.shape[0]):
        base = np.uint64(rows[r]) * np.uint64(pairs)
        for p in range(pairs):
            h = _splitmix64(key ^ (base + np.uint64(p)))
            # u1 in (0, 1] so that log(u1) is finite; u2 in [0, 1).
            u1 = (np.float32(h >> np.uint64(40)) + np.float32(1.0)) * _TWO_POW_M24
            u2 = np.float32((h >> np.uint64(8)) & np.uint64(0xFFFFFF)) * _TWO_POW_M24
            radius = np.float32(scale) * np.sqrt(np.float32(-2.0) * np.log(u1))
            angle = two_pi * u2
            out[r, 2 * p] = radius * np.cos(angle)
            if 2 * p + 1 < k:
                out[r, 2 * p + 1] = radius * np.sin(angle)
