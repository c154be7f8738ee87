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


def popular_top_k(
    popular: np.ndarray, k: int, exclude: sp.csr_matrix | None = None, n_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_of_scores` of ``n_rows`` rows that all score the columns ``popular``.

    The same answer as scoring ``np.broadcast_to(popular, (m, n))``, without that matrix
    (at 100k items, 4,000 rows without a training positive in a chunk made 1.6 GB of it):
    a row can lose at most its own excluded columns, so its ``k`` best are among the
    ``k + max excluded`` most popular columns, ranked once (equal scores: lower column
    first, as the selection kernel breaks ties).

    Parameters
    ----------
    popular : (n,) float32
        Every column's score.
    exclude : (m, n) CSR, optional
        Columns to drop per row; gives ``m`` (else ``n_rows``).
    """
    scores = np.asarray(popular, dtype=np.float32)
    n = scores.shape[0]
    m = exclude.shape[0] if exclude is not None else int(n_rows or 0)
    most = 0
    if exclude is not None and exclude.nnz:
        most = int(np.diff(exclude.indptr).max())
    width = min(n, max(0, k) + most)
    # Columns by descending score, ties to the lower column: a stable sort of -score.
    ranked = np.argsort(-scores, kind="stable")[:width]
    sub = None
    if exclude is not None and exclude.nnz:
        position = np.full(n, -1, dtype=np.int64)
        position[ranked] = np.arange(width)
        coo = exclude.tocoo()
        keep = position[coo.col] >= 0
        sub = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.int8), (coo.row[keep], position[coo.col[keep]])),
            shape=(m, width),
        )
    block = np.tile(scores[ranked], (m, 1))  # (m, k + most): written where excluded
    idx, val = top_k_of_scores(block, k, sub)
    out = np.where(idx >= 0, ranked[np.maximum(idx, 0)] if width else idx, -1)
    return out.astype(np.int64), val
