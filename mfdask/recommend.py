"""Batch top-k: score a chunk of users (or items) against all items, keep the k best.

Everything is vectorised over a chunk of rows: one matrix product, then one pass of the
selection kernel :func:`mfdask.kernels.topk.top_k_rows` over each row (a size-``k`` heap,
no ``(m, n)`` temporaries). Already-seen items are masked to ``-inf`` through the CSR of
the chunk's rows, so no Python loop runs per user.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mfdask.kernels.topk import top_k_rows

DEFAULT_CHUNK_CELLS = 16_000_000
"""Score-matrix cells per chunk (64 MB of float32): bounds memory for any catalogue size."""


def chunk_rows(n_cols: int, chunk_cells: int = DEFAULT_CHUNK_CELLS) -> int:
    """Rows per chunk so that a chunk's score matrix holds at most ``chunk_cells`` cells."""
    return max(1, chunk_cells // max(1, n_cols))


def top_k_of_scores(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores``, best first.

    Parameters
    ----------
    scores : (m, n) float32
        Modified in place where ``exclude`` is set.
    k : int
        Number of columns to keep (clipped to ``n``).
    exclude : (m, n) CSR, optional
        Columns to drop per row (seen items, or the query item itself).

    Returns
    -------
    indices : (m, k) int64
        Column indices, by descending score (equal scores: lower column first); ``-1``
        where fewer than ``k`` columns with a finite score remain.
    values : (m, k) float32
        Their scores; ``-inf`` where the index is ``-1``.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    m, n = scores.shape
    k = min(k, n)
    if exclude is not None and exclude.nnz:
        indptr = exclude.indptr.astype(np.int64, copy=False)
        indices = exclude.indices.astype(np.int64, copy=False)
    else:
        indptr = np.zeros(m + 1, dtype=np.int64)
        indices = np.empty(0, dtype=np.int64)
    idx = np.empty((m, k), dtype=np.int64)
    val = np.empty((m, k), dtype=np.float32)
    if k > 0:
        top_k_rows(scores, k, indptr, indices, idx, val)
    return idx, val
