"""Row blocks: the one-time shuffle of ratings into CSR blocks on workers."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mfdask.engine.blocks import (
    DuplicateRatingError,
    n_local_rows,
    persist_partitions,
    place_row_blocks,
)


def _frame(n_users=23, n_items=17, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(dense)
    r = rng.integers(1, 6, len(u)).astype("float32")
    perm = rng.permutation(len(u))
    return pd.DataFrame(
        {
            "user_idx": u[perm].astype("int32"),
            "item_idx": i[perm].astype("int32"),
            "rating": r[perm],
        }
    ), sp.csr_matrix((r, (u, i)), shape=(n_users, n_items))


@pytest.mark.parametrize("n_blocks", [1, 3, 4])
@pytest.mark.parametrize("transpose", [False, True])
def test_blocks_reassemble_the_matrix(client, n_blocks, transpose):
    frame, matrix = _frame()
    if transpose:
        matrix = matrix.T.tocsr()
    parts = persist_partitions(client, dd.from_pandas(frame, npartitions=5))
    blocks = client.gather(
        place_row_blocks(client, parts, n_blocks, matrix.shape[0], matrix.shape[1], transpose)
    )
    rebuilt = np.zeros(matrix.shape, dtype=np.float32)
    for b in blocks:
        assert b.n_local_rows == n_local_rows(matrix.shape[0], n_blocks, b.block)
        for local in range(b.n_local_rows):
            cols = b.indices[b.indptr[local] : b.indptr[local + 1]]
            assert np.all(np.diff(cols) > 0), "columns sorted within each row"
            rebuilt[b.global_rows[local], cols] = b.data[b.indptr[local] : b.indptr[local + 1]]
    np.testing.assert_array_equal(rebuilt, matrix.toarray())


def test_duplicate_pair_is_named(client):
    frame = pd.DataFrame(
        {
            "user_idx": np.int32([0, 1, 0]),
            "item_idx": np.int32([2, 2, 2]),
            "rating": np.float32([1, 2, 3]),
        }
    )
    parts = persist_partitions(client, dd.from_pandas(frame, npartitions=2))
    with pytest.raises(DuplicateRatingError, match="user index 0, item index 2"):
        place_row_blocks(client, parts, 2, 2, 3)


def test_assemble_seen_matches_input(client):
    from mfdask.engine.blocks import assemble_seen

    frame, matrix = _frame(seed=3)
    parts = persist_partitions(client, dd.from_pandas(frame, npartitions=4))
    blocks = place_row_blocks(client, parts, 3, *matrix.shape)
    seen = assemble_seen(client, blocks, *matrix.shape)
    np.testing.assert_array_equal(seen.toarray(), matrix.toarray() > 0)


def test_csr_kernel_equals_a_lexsort_and_finds_the_first_duplicate():
    from mfdask.kernels.csr import coo_to_csr

    rng = np.random.default_rng(3)
    # Short rows (insertion sort) and one long row (the sort of long rows) together.
    rows = np.concatenate([rng.integers(0, 50, 400), np.full(200, 7)]).astype(np.int32)
    cols = rng.permutation(10_000)[: len(rows)].astype(np.int32)
    vals = rng.random(len(rows)).astype(np.float32)
    indptr, indices, data, duplicate = coo_to_csr(rows, cols, vals, 60)
    order = np.lexsort((cols, rows))
    assert duplicate == -1
    np.testing.assert_array_equal(
        indptr, np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=60))])
    )
    np.testing.assert_array_equal(indices, cols[order])
    np.testing.assert_array_equal(data, vals[order])
    rows2 = np.array([2, 0, 2, 1, 2], np.int32)
    cols2 = np.array([5, 1, 3, 1, 5], np.int32)
    indptr, indices, _, duplicate = coo_to_csr(rows2, cols2, np.ones(5, np.float32), 3)
    assert duplicate == 4 and indices[duplicate] == 5  # row 2's second 5
