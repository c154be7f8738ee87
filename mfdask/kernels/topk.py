"""Row-wise top-k selection over a dense score matrix, with per-row exclusions.

``numpy.argpartition`` over a ``(m, n)`` score matrix allocates an ``(m, n)`` int64
index array and a negated copy of the scores, and touches every cell several times; for
a catalogue of 50k items that is most of the cost of top-k for every user. This kernel
makes one pass over each row keeping a size-``k`` min-heap of the best entries seen so
far: a cell costs one comparison with the heap's root unless it enters the heap
(``O(n + k log k log n)`` per row in expectation for random order), and the only memory
is the ``(m, k)`` output.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, inline="always")
def _worse(v1, i1, v2, i2):
    # Heap order: (v1, i1) ranks below (v2, i2) when its score is lower, or equal with
    # a larger column index (ties go to the lower index, deterministically).
    return v1 < v2 or (v1 == v2 and i1 > i2)


@njit(nogil=True, cache=True)
def _sift_down(hv, hi, size, pos):
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and _worse(hv[right], hi[right], hv[left], hi[left]):
            child = right
        if _worse(hv[child], hi[child], hv[pos], hi[pos]):
            hv[pos], hv[child] = hv[child], hv[pos]
            hi[pos], hi[child] = hi[child], hi[pos]
            pos = child
        else:
            return


@njit(nogil=True, cache=True)
def _sift_up(hv, hi, pos):
    while pos > 0:
        parent = (pos - 1) // 2
        if _worse(hv[pos], hi[pos], hv[parent], hi[parent]):
            hv[pos], hv[parent] = hv[parent], hv[pos]
            hi[pos], hi[parent] = hi[parent], hi[pos]
            pos = parent
        else:
            return


@njit(nogil=True, cache=True)
def top_k_rows(scores, k, excl_indptr, excl_indices, out_idx, out_val):
    """Fill ``out_idx``/``out_val`` ``(m, k)`` with each row's ``k`` best columns, best first.

    Parameters
    ----------
    scores : (m, n) float32, C-contiguous
        Set to ``-inf`` in place at the excluded cells.
    k : int
        Entries kept per row (``k <= n``).
    excl_indptr : (m + 1,) int64
    excl_indices : (nnz,) int64
        CSR of the columns to drop per row (seen items, the query item itself).
    out_idx : (m, k) int64
        Column indices; ``-1`` past the last finite score of a row.
    out_val : (m, k) float32
        Scores; ``-inf`` where ``out_idx`` is ``-1``.

    Non-finite scores (NaN, +-inf) never enter the result, as in
    :func:`mfdask.recommend.top_k_of_scores`; equal scores go to the lower column.
    """
    m, n = scores.shape
    hv = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    inf = np.float32(np.inf)
    for r in range(m):
        # Mask this row's excluded columns; they then fail the finiteness test below.
        for p in range(excl_indptr[r], excl_indptr[r + 1]):
            scores[r, excl_indices[p]] = -inf
        # One pass: fill the heap with the first k finite scores, then a cell only costs
        # a comparison with the root thr = hv[0], the worst of the best k so far (NaN and
        # -inf never pass `s > thr` as thr is finite).
        size = 0
        j = 0
        while j < n and size < k:
            s = scores[r, j]
            if s > -inf and s < inf:
                hv[size] = s
                hi[size] = j
                _sift_up(hv, hi, size)
                size += 1
            j += 1
        if size == k:
            thr = hv[0]
            for jj in range(j, n):
                s = scores[r, jj]
                if s > thr and s < inf:
                    hv[0] = s
                    hi[0] = jj
                    _sift_down(hv, hi, size, 0)
                    thr = hv[0]
        # Pop worst-first into the tail, so the output reads best-first.
        for t in range(k - 1, -1, -1):
            if t >= size:
                out_idx[r, t] = -1
                out_val[r, t] = -inf
                continue
            out_idx[r, t] = hi[0]
            out_val[r, t] = hv[0]
            last = t  # heap holds t + 1 entries here; move the last to the root
            hv[0] = hv[last]
            hi[0] = hi[last]
            _sift_down(hv, hi, last, 0)
