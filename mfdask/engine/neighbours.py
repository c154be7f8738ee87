"""Nearest rows by cosine among factor blocks, searched where the blocks live.

``similar_users`` of a model whose user factors stay on the workers
(:class:`~mfdask.engine.state.FactorBlocks`) must not gather ten million rows to rank a
handful of queries against them. So the query rows are fetched (``take``), normalised on
the client and sent to every block; each worker ranks its own block's rows against them
(the query itself excluded) and returns its ``n`` best per query, global row and score;
the client merges ``n_blocks x n`` candidates per query. Only ``queries x n x n_blocks``
numbers come back: the map and the reduce of a distributed top-k.

The scores are the same float32 cosines as the gathered path
(:meth:`mfdask.models.base.FactorModel._similar`); equal scores rank the lower global row
first there and here.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mfdask.engine.state import FactorBlocks
from mfdask.recommend import top_k_of_scores


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    norms = np.linalg.norm(vectors, axis=1)
    return (vectors / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)


def _block_top(
    block: np.ndarray, b: int, n_blocks: int, query: np.ndarray, rows: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best rows of block ``b`` for each unit ``query`` (a task on its worker):
    ``(global rows (q, n') int64, -1 where none; scores (q, n') float32)``."""
    scores = query @ unit_rows(block).T
    mine = np.flatnonzero(rows % n_blocks == b)  # queries that live here: not their own match
    self_mask = sp.csr_matrix(
        (np.ones(len(mine)), (mine, rows[mine] // n_blocks)), shape=scores.shape
    )
    idx, val = top_k_of_scores(scores, n, self_mask)
    return np.where(idx >= 0, idx * n_blocks + b, -1), val


def nearest_rows(blocks: FactorBlocks, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of global ``rows``, the ``n`` rows of ``blocks`` of highest cosine.

    Returns
    -------
    indices : (len(rows), min(n, n_rows)) int64
        Global rows, best first; ``-1`` where fewer remain (the query is never its own).
    scores : same shape, float32
        ``-inf`` where the index is ``-1``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    query = unit_rows(blocks.take(rows))
    parts = blocks._gather(blocks.map_blocks(_block_top, blocks.n_blocks, query, rows, int(n)))
    idx = np.hstack([p[0] for p in parts])
    val = np.hstack([p[1] for p in parts])
    # Best first; equal scores: the lower global row first; the empty slots (-1) last.
    order = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), -val), axis=1)
    k = min(int(n), blocks.n_rows)
    order = order[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(val, order, axis=1)
