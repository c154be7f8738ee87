"""Exact re-ranking of approximate candidates: drop excluded items, keep the ``n`` best.

An approximate index returns, for each query row, a short list of candidate columns (the
``k`` it believes best, ``-1`` where it found fewer). The kernel here turns that list into
the exact path's answer restricted to those candidates: every candidate's score is
recomputed as the dot product the exact path uses, excluded columns (seen items, the query
item itself) are dropped, and the ``n`` best are kept, best first, equal scores going to
the lower column, ``-1`` padding - the layout of :func:`mfdask.kernels.topk.top_k_rows`.
It also flags the rows the candidates could not fill, so the caller can score those
exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mfdask.kernels.topk import _sift_down, _sift_up


@njit(nogil=True, cache=True)
def rerank_candidates(
    query, items, cand, excl_indptr, excl_indices, n, mark, out_idx, out_val, short
):
    """Fill ``out_idx``/``out_val`` ``(m, n)`` from each row's candidates, best first.

    Parameters
    ----------
    query : (m, f) float32
        The rows' score vectors.
    items : (n_cols, f) float32
        Every column's score vector (the exact path's candidates).
    cand : (m, K) int64
        Candidate columns per row from the index; ``-1`` entries are ignored, as are
        repeats.
    excl_indptr : (m + 1,) int64
    excl_indices : (nnz,) int64
        CSR of the columns to drop per row.
    n : int
        Entries kept per row (``n <= n_cols``).
    mark : (n_cols,) int8, all zero
        Scratch; left all zero on return.
    out_idx : (m, n) int64
        Columns; ``-1`` past the last kept candidate.
    out_val : (m, n) float32
        Their scores; ``-inf`` where ``out_idx`` is ``-1``.
    short : (m,) bool
        Set where a row kept fewer than ``n`` columns although more than it kept remain
        unexcluded in the catalogue: only an exact pass can complete that row.
    """
    m = query.shape[0]
    f = query.shape[1]
    n_cols = items.shape[0]
    kk = cand.shape[1]
    hv = np.empty(max(n, 1), np.float32)
    hi = np.empty(max(n, 1), np.int64)
    inf = np.float32(np.inf)
    for r in range(m):
        # Mark the row's excluded columns (1) and count the distinct ones: what remains,
        # n_cols - excluded, bounds how many columns an exact pass could return.
        excluded = 0
        for p in range(excl_indptr[r], excl_indptr[r + 1]):
            c = excl_indices[p]
            if mark[c] == 0:
                mark[c] = 1
                excluded += 1
        # Score each new, unexcluded candidate (s = q_r . y_c, accumulated in float32 like
        # the exact path's product) and keep the n best in a min-heap; a kept or rejected
        # candidate is marked 2 so that a repeat is skipped.
        size = 0
        for t in range(kk):
            c = cand[r, t]
            if c < 0 or c >= n_cols or mark[c] != 0:
                continue
            mark[c] = 2
            s = np.float32(0.0)
            for j in range(f):
                s += query[r, j] * items[c, j]
            if not (s > -inf and s < inf):
                continue
            if size < n:
                hv[size] = s
                hi[size] = c
                _sift_up(hv, hi, size)
                size += 1
            elif s > hv[0] or (s == hv[0] and c < hi[0]):
                hv[0] = s
                hi[0] = c
                _sift_down(hv, hi, size, 0)
        short[r] = size < n and size < n_cols - excluded
        # Pop worst-first into the tail, so the output reads best-first.
        for t in range(n - 1, -1, -1):
            if t >= size:
                out_idx[r, t] = -1
                out_val[r, t] = -inf
                continue
            out_idx[r, t] = hi[0]
            out_val[r, t] = hv[0]
            hv[0] = hv[t]
            hi[0] = hi[t]
            _sift_down(hv, hi, t, 0)
        # Leave the scratch clean for the next row.
        for p in range(excl_indptr[r], excl_indptr[r + 1]):
            mark[excl_indices[p]] = 0
        for t in range(kk):
            c = cand[r, t]
            if c >= 0 and c < n_cols:
                mark[c] = 0
