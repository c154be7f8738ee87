"""The DSGD engine: stratum plans, cells on workers, and epochs of a loss-agnostic kernel."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mfdask.engine.blocks import build_row_block, split_partition
from mfdask.engine.dsgd import (
    DSGD,
    PlanError,
    build_shard,
    check_plan,
    stratum_plan,
    thread_bounds,
    train,
)
from mfdask.kernels.sgd_common import row_contains, seed_thread, shuffled_range


def _frame(n_users=37, n_items=23, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    r = rng.integers(1, 6, len(u)).astype("float32")
    perm = rng.permutation(len(u))
    frame = pd.DataFrame(
        {
            "user_idx": u[perm].astype("int32"),
            "item_idx": i[perm].astype("int32"),
            "rating": r[perm],
        }
    )
    return frame, sp.csr_matrix((r, (u, i)), shape=(n_users, n_items))


# ---------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("n_blocks", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shuffled", [False, True])
def test_plan_never_shares_rows_between_workers(n_blocks, shuffled):
    rng = np.random.default_rng(n_blocks)
    for _ in range(20 if shuffled else 1):
        plan = stratum_plan(n_blocks, rng if shuffled else None)
        check_plan(plan, n_blocks)
        assert len(plan) == n_blocks
        for stratum in plan:
            users = [w for w, _ in stratum]
            items = [j for _, j in stratum]
            assert sorted(users) == list(range(n_blocks)), "every worker busy, once"
            assert sorted(items) == list(range(n_blocks)), "no item block on two workers"
        cells = sorted(c for stratum in plan for c in stratum)
        assert cells == [(w, j) for w in range(n_blocks) for j in range(n_blocks)]


def test_base_plan_is_the_diagonal_schedule():
    assert stratum_plan(3) == [
        [(0, 0), (1, 1), (2, 2)],
        [(0, 1), (1, 2), (2, 0)],
        [(0, 2), (1, 0), (2, 1)],
    ]


def test_bad_plans_are_rejected():
    with pytest.raises(PlanError, match="share a user block or an item block"):
        check_plan([[(0, 0), (1, 0)], [(0, 1), (1, 1)]], 2)
    with pytest.raises(PlanError, match="trained twice"):
        check_plan([[(0, 0), (1, 1)], [(0, 0), (1, 1)]], 2)
    with pytest.raises(PlanError, match="3 of 4 cells"):
        check_plan([[(0, 0), (1, 1)], [(0, 1)]], 2)


# ---------------------------------------------------------------------- kernel helpers
def test_shuffled_range_is_a_reproducible_permutation():
    seed_thread(7)
    a = shuffled_range(10, 1010)
    seed_thread(7)
    b = shuffled_range(10, 1010)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(10, 1010))
    assert not np.array_equal(a, np.arange(10, 1010))
    assert shuffled_range(5, 5).shape == (0,)


def test_row_contains_binary_search():
    indptr = np.array([0, 3, 3, 5], dtype=np.int64)
    indices = np.array([1, 4, 9, 0, 7], dtype=np.int32)
    for row, cols in ((0, {1, 4, 9}), (1, set()), (2, {0, 7})):
        for col in range(11):
            assert row_contains(indptr, indices, row, col) == (col in cols)


def test_thread_bounds_cover_the_cell():
    for nnz, t in ((0, 1), (10, 3), (1000, 4)):
        b = thread_bounds(nnz, t)
        assert b[0][0] == 0 and b[-1][1] == nnz
        assert all(b[k][1] == b[k + 1][0] for k in range(t - 1))


# ---------------------------------------------------------------------- cells
@pytest.mark.parametrize("n_blocks", [1, 3])
def test_shard_cells_hold_local_indices_of_their_block(n_blocks):
    frame, matrix = _frame()
    pieces = [split_partition(frame, n_blocks, "user_idx", "item_idx", "rating")]
    rebuilt = np.zeros(matrix.shape, dtype=np.float32)
    for w in range(n_blocks):
        shard = build_shard(build_row_block(w, n_blocks, *matrix.shape, [p[w] for p in pieces]))
        assert len(shard.cells) == n_blocks
        for j, cell in enumerate(shard.cells):
            assert (cell.user_block, cell.item_block) == (w, j)
            assert cell.users.dtype == np.int32 and cell.items.dtype == np.int32
            assert np.all(np.diff(cell.users) >= 0), "users ascending within a cell"
            assert cell.items.max(initial=-1) < cell.n_local_items
            assert cell.n_local_items == len(range(j, matrix.shape[1], n_blocks))
            g_users = cell.users.astype(np.int64) * n_blocks + w
            g_items = cell.items.astype(np.int64) * n_blocks + j
            rebuilt[g_users, g_items] = cell.values
            # the shard's CSR row knows every positive of its users, in global indices
            for lu, gi in zip(cell.users[:5], g_items[:5], strict=False):
                assert row_contains(shard.indptr, shard.indices, lu, gi)
    np.testing.assert_array_equal(rebuilt, matrix.toarray())


# ---------------------------------------------------------------------- the engine
class CountingKernel:
    """Adds 1 to the ``visits`` of every user and item row per rating seen (test only)."""

    stat_names = ("ratings", "value_sum")

    def train(self, cell, shard, user, item, lo, hi, seed):
        np.add.at(user["visits"], cell.users[lo:hi], 1.0)
        np.add.at(item["visits"], cell.items[lo:hi], 1.0)
        return np.array([hi - lo, cell.values[lo:hi].sum()])

    def evaluate(self, cell, shard, user, item):
        # user visits x item visits summed over the cell's ratings
        return np.array(
            [cell.nnz, float((user["visits"][cell.users] * item["visits"][cell.items]).sum())]
        )


@pytest.mark.parametrize(("n_blocks", "n_threads"), [(None, 1), (2, 2), (4, 1)])
def test_an_epoch_visits_every_rating_once(client, n_blocks, n_threads):
    frame, matrix = _frame()
    n_users, n_items = matrix.shape
    engine = DSGD(
        client, dd.from_pandas(frame, npartitions=3), n_users, n_items, n_blocks, n_threads
    )
    assert engine.nnz == matrix.nnz
    engine.set_state(
        {"visits": np.zeros(n_users, np.float32)}, {"visits": np.zeros(n_items, np.float32)}
    )
    start = engine.snapshot()
    reports = train(engine, lambda e, r: CountingKernel(), epochs=2, seed=3)
    assert [r.stats["ratings"] for r in reports] == [matrix.nnz, matrix.nnz]
    assert reports[0].stats["value_sum"] == pytest.approx(matrix.data.sum())
    user, item = engine.gather_state()
    degree_u = np.diff(matrix.indptr)
    degree_i = np.bincount(matrix.indices, minlength=n_items)
    np.testing.assert_array_equal(user["visits"], 2 * degree_u)
    np.testing.assert_array_equal(item["visits"], 2 * degree_i)
    # evaluate sees the same state on every worker
    coo = matrix.tocoo()
    expect = float((user["visits"][coo.row] * item["visits"][coo.col]).sum())
    assert engine.evaluate(CountingKernel())["value_sum"] == pytest.approx(expect)
    # the snapshot taken before training is untouched (states are never mutated)
    engine.restore(start)
    user0, item0 = engine.gather_state()
    assert not user0["visits"].any() and not item0["visits"].any()
    np.testing.assert_array_equal(engine.seen_items().toarray(), matrix.toarray() != 0)


def test_holdout_is_evaluated_in_the_same_cells(client):
    frame, matrix = _frame(seed=1)
    held, _ = _frame(seed=2)
    n_users, n_items = matrix.shape
    engine = DSGD(client, dd.from_pandas(frame, npartitions=2), n_users, n_items)
    engine.set_state(
        {"visits": np.arange(n_users, dtype=np.float32)},
        {"visits": np.arange(n_items, dtype=np.float32)},
    )
    shards = engine.place_holdout(dd.from_pandas(held, npartitions=2))
    got = engine.evaluate(CountingKernel(), shards)
    assert got["ratings"] == len(held)
    expect = float((held.user_idx.astype(float) * held.item_idx.astype(float)).sum())
    assert got["value_sum"] == pytest.approx(expect)


def test_state_with_wrong_rows_is_refused(client):
    frame, matrix = _frame()
    engine = DSGD(client, dd.from_pandas(frame, npartitions=1), *matrix.shape)
    with pytest.raises(ValueError, match="user state 'visits' has 3 rows, expected 37"):
        engine.set_state({"visits": np.zeros(3, np.float32)}, {})
    with pytest.raises(RuntimeError, match="before set_state"):
        engine.run_epoch(CountingKernel(), 0, 0)


def test_a_submitted_epoch_can_be_collected_late_or_discarded(client):
    """Submitting epoch 1 before collecting epoch 0 trains the same; discard undoes it."""
    frame, matrix = _frame(seed=3)
    n_users, n_items = matrix.shape
    engine = DSGD(client, dd.from_pandas(frame, npartitions=2), n_users, n_items)
    zeros = ({"visits": np.zeros(n_users, np.float32)}, {"visits": np.zeros(n_items, np.float32)})
    engine.set_state(*zeros)
    first = engine.submit_epoch(CountingKernel(), 0, seed=5)
    second = engine.submit_epoch(CountingKernel(), 1, seed=5)  # chained on the first
    reports = [engine.collect(first), engine.collect(second)]
    assert [r.stats["ratings"] for r in reports] == [matrix.nnz, matrix.nnz]
    assert all(r.seconds >= 0 for r in reports)
    user, _ = engine.gather_state()
    np.testing.assert_array_equal(user["visits"], 2 * np.diff(matrix.indptr))
    # a look-ahead that is not wanted: the state goes back to the end of epoch 1
    third = engine.submit_epoch(CountingKernel(), 2, seed=5)
    engine.discard(third)
    user, item = engine.gather_state()
    np.testing.assert_array_equal(user["visits"], 2 * np.diff(matrix.indptr))
    np.testing.assert_array_equal(
        item["visits"], 2 * np.bincount(matrix.indices, minlength=n_items)
    )


@pytest.mark.parametrize("bad_user", [-1, 37, 1000])
def test_a_row_index_outside_the_matrix_is_named(bad_user):
    frame, matrix = _frame()  # 37 users
    frame.loc[3, "user_idx"] = bad_user
    n_blocks = 3
    pieces = [split_partition(frame, n_blocks, "user_idx", "item_idx", "rating")]
    block = bad_user % n_blocks
    with pytest.raises(IndexError, match=rf"user index out of range 0\.\.36 in block {block}"):
        build_row_block(block, n_blocks, *matrix.shape, [p[block] for p in pieces], "user")
