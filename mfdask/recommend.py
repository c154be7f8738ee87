"""Batch top-k: score a chunk of users (or items) against all items, keep the k best.

Everything is vectorised over a chunk of rows: one matrix product, one ``argpartition``
along the rows, then a sort of the ``k`` survivors. Already-seen items are masked to
``-inf`` through the CSR of the chunk's rows, so no Python loop runs per user.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

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
        Column indices, by descending score; ``-1`` where fewer than ``k`` columns remain.
    values : (m, k) float32
        Their scores; ``-inf`` where the index is ``-1``.
    """
    m, n = scores.shape
    k = min(k, n)
    if exclude is not None and exclude.nnz:
        rows = np.repeat(np.arange(m), np.diff(exclude.indptr))
        scores[rows, exclude.indices] = -np.inf
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (m, n)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    val = np.take_along_axis(part_scores, order, axis=1)
    idx[~np.isfinite(val)] = -1
    return idx, val.astype(np.float32)
