"""Compressed sparse rows from unordered ``(row, column, value)`` triples in linear time.

A rating block arrives as the pieces of many partitions in no order. Sorting the triples
by ``(row, column)`` with a comparison sort costs ``O(nnz log nnz)`` and several passes
over memory; a counting sort by row (the row counts are the CSR offsets anyway) followed
by a sort of each row's few columns costs ``O(nnz)`` plus ``O(n_r log n_r)`` per row of
``n_r`` entries, and gives exactly the same arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

INSERTION_SORT_BELOW = 32
"""Rows shorter than this are sorted by insertion (most rows of rating data are short)."""


@njit(nogil=True, cache=True)
def coo_to_csr(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.int64]:
    """``(indptr, indices, data, duplicate)`` of the triples, columns ascending per row.

    ``rows`` must lie in ``0..n_rows-1`` (the caller checks). ``duplicate`` is the
    position in ``indices`` of the first entry whose ``(row, column)`` equals its
    predecessor's, or -1 when every pair is distinct.
    """
    nnz = rows.shape[0]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    for e in range(nnz):
        indptr[rows[e] + 1] += 1
    for r in range(n_rows):
        indptr[r + 1] += indptr[r]
    fill = indptr[:-1].copy()
    indices = np.empty(nnz, dtype=np.int32)
    data = np.empty(nnz, dtype=np.float32)
    for e in range(nnz):
        r = rows[e]
        at = fill[r]
        indices[at] = cols[e]
        data[at] = vals[e]
        fill[r] = at + 1
    duplicate = np.int64(-1)
    for r in range(n_rows):
        lo = indptr[r]
        hi = indptr[r + 1]
        if hi - lo < INSERTION_SORT_BELOW:
            for a in range(lo + 1, hi):
                c = indices[a]
                v = data[a]
                b = a - 1
                while b >= lo and indices[b] > c:
                    indices[b + 1] = indices[b]
                    data[b + 1] = data[b]
                    b -= 1
                indices[b + 1] = c
                data[b + 1] = v
        else:
            order = np.argsort(indices[lo:hi], kind="mergesort")
            indices[lo:hi] = indices[lo:hi][order]
            data[lo:hi] = data[lo:hi][order]
        if duplicate < 0:
            for a in range(lo + 1, hi):
                if indices[a] == indices[a - 1]:
                    duplicate = np.int64(a)
                    break
    return indptr, indices, data, duplicate
