"""The popularity fallback's top-k equals scoring the whole broadcast popularity matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mfdask.recommend import popular_top_k, top_k_of_scores


def _dense(popular: np.ndarray, k: int, exclude: sp.csr_matrix | None, m: int):
    scores = np.broadcast_to(popular, (m, len(popular))).copy()
    return top_k_of_scores(scores, k, exclude)


def test_matches_the_dense_fallback_with_ties_and_exclusions():
    rng = np.random.default_rng(0)
    n, m = 500, 40
    popular = rng.integers(0, 20, n).astype(np.float32) / 20  # many ties
    dense = rng.random((m, n)) < 0.1
    dense[3] = True  # a row that has seen everything
    dense[4, np.argsort(-popular, kind="stable")[:30]] = True  # the 30 most popular seen
    exclude = sp.csr_matrix(dense.astype(np.int8))
    for k in (1, 10, 600):
        got_idx, got_val = popular_top_k(popular, k, exclude)
        want_idx, want_val = _dense(popular, k, exclude, m)
        np.testing.assert_array_equal(got_idx, want_idx)
        np.testing.assert_array_equal(got_val, want_val)
    assert (popular_top_k(popular, 10, exclude)[0][3] == -1).all()


def test_without_exclusions_every_row_gets_the_most_popular():
    popular = np.array([0.1, 0.5, 0.5, 0.2, 0.0], np.float32)
    idx, val = popular_top_k(popular, 3, None, n_rows=2)
    np.testing.assert_array_equal(idx, [[1, 2, 3], [1, 2, 3]])
    np.testing.assert_array_equal(val, np.broadcast_to(popular[[1, 2, 3]], (2, 3)))
    empty = sp.csr_matrix((0, 5), dtype=np.int8)
    assert popular_top_k(popular, 3, empty)[0].shape == (0, 3)
