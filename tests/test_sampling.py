"""Random numbers and negative sampling from a held item block."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from mfdask.kernels.sampling import (
    NO_NEGATIVE,
    count_in_block,
    draw_negatives,
    member_bitset,
    nth_non_member,
    randbelow,
    sample_negative,
    seed_state,
)


@njit(cache=True)
def _draw_negatives(seed, indices, lo, hi, block, n_blocks, n_block_items, n):
    state = seed_state(seed)
    out = np.empty(n, dtype=np.int64)
    for t in range(n):
        state, out[t] = sample_negative(state, indices, lo, hi, block, n_blocks, n_block_items)
    return out


@njit(cache=True)
def _draw_below(seed, n, m):
    state = seed_state(seed)
    out = np.empty(m, dtype=np.int64)
    for t in range(m):
        state, out[t] = randbelow(state, n)
    return out


def test_randbelow_is_uniform_and_in_range():
    draws = _draw_below(3, 7, 70_000)
    assert draws.min() == 0 and draws.max() == 6
    counts = np.bincount(draws, minlength=7)
    # chi-square with 6 degrees of freedom; 22.5 is its 0.999 quantile
    expected = len(draws) / 7
    assert ((counts - expected) ** 2 / expected).sum() < 22.5


def test_seeds_give_different_streams():
    a, b = _draw_below(1, 1000, 50), _draw_below(2, 1000, 50)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, _draw_below(1, 1000, 50))


def _non_members(row: np.ndarray, block: int, n_blocks: int, n_block_items: int) -> np.ndarray:
    """Slow twin: local items of the block not in the row."""
    local = np.arange(n_block_items)
    return np.setdiff1d(local, row[row % n_blocks == block] // n_blocks)


@st.composite
def _rows(draw):
    n_blocks = draw(st.integers(1, 4))
    n_items = draw(st.integers(n_blocks, 60))
    block = draw(st.integers(0, n_blocks - 1))
    members = draw(st.sets(st.integers(0, n_items - 1), max_size=n_items))
    row = np.array(sorted(members), dtype=np.int32)
    n_block_items = (n_items - block + n_blocks - 1) // n_blocks
    return row, block, n_blocks, n_block_items, draw(st.integers(0, 2**32))


@settings(max_examples=150, deadline=None)
@given(_rows())
def test_a_sampled_negative_is_never_a_positive_of_its_user(case):
    row, block, n_blocks, n_block_items, seed = case
    # The user's row sits between other users' rows in the shard's CSR.
    indices = np.concatenate([np.array([0, 5], np.int32), row, np.array([1, 2], np.int32)])
    lo, hi = 2, 2 + len(row)
    draws = _draw_negatives(seed, indices, lo, hi, block, n_blocks, n_block_items, 200)
    free = _non_members(row, block, n_blocks, n_block_items)
    if len(free) == 0:
        assert (draws == NO_NEGATIVE).all()
    else:
        assert np.isin(draws, free).all(), "a draw is a positive or outside the block"
        assert not np.isin(draws * n_blocks + block, row).any()


@settings(max_examples=100, deadline=None)
@given(_rows(), st.data())
def test_nth_non_member_matches_a_slow_twin(case, data):
    row, block, n_blocks, n_block_items, _ = case
    free = _non_members(row, block, n_blocks, n_block_items)
    assert count_in_block(row, 0, len(row), block, n_blocks) == n_block_items - len(free)
    if len(free):
        n = data.draw(st.integers(0, len(free) - 1))
        assert nth_non_member(row, 0, len(row), n, block, n_blocks) == free[n]


def test_negatives_are_uniform_even_when_the_user_owns_most_of_the_block():
    # Block 1 of 3 over 90 items: 30 block items, the user owns 27 of them, so most
    # draws go through the exact fallback; the 3 free ones must still be uniform.
    n_blocks, block = 3, 1
    free_local = np.array([4, 17, 29])
    owned_local = np.setdiff1d(np.arange(30), free_local)
    row = np.sort(np.concatenate([owned_local * n_blocks + block, [0, 3, 6, 89]])).astype(np.int32)
    draws = _draw_negatives(11, row, 0, len(row), block, n_blocks, 30, 30_000)
    assert set(np.unique(draws)) == set(free_local)
    counts = np.array([(draws == f).sum() for f in free_local])
    expected = len(draws) / 3
    assert ((counts - expected) ** 2 / expected).sum() < 13.8  # chi2(2) 0.999


def test_empty_block_has_no_negative():
    row = np.array([1], np.int32)
    assert (_draw_negatives(0, row, 0, 1, 0, 1, 0, 3) == NO_NEGATIVE).all()


@pytest.mark.parametrize("n_blocks", [1, 2, 5])
def test_every_free_item_is_drawn(n_blocks):
    row = np.array([0, 2, 3, 7, 11], np.int32)
    n_items = 20
    for block in range(n_blocks):
        n_block_items = (n_items - block + n_blocks - 1) // n_blocks
        free = _non_members(row, block, n_blocks, n_block_items)
        draws = _draw_negatives(block, row, 0, len(row), block, n_blocks, n_block_items, 5000)
        assert set(np.unique(draws)) == set(free)


@given(
    seed=st.integers(0, 2**31),
    n_blocks=st.integers(1, 4),
    density=st.floats(0.05, 0.95),
)
@settings(max_examples=40, deadline=None)
def test_a_bitset_draws_the_same_negatives_as_the_binary_search(seed, n_blocks, density):
    """Bitset membership gives the same answers, hence the very same draws, and the
    bitset of a cell marks exactly the pairs it holds."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 13, 37
    rated = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(rated)  # users ascending, items ascending within a user
    indptr = np.concatenate([[0], np.cumsum(rated.sum(axis=1))]).astype(np.int64)
    values = np.where(rng.random(len(u)) < 0.7, 5.0, 1.0).astype(np.float32)
    for block in range(n_blocks):
        n_block_items = len(range(block, n_items, n_blocks))
        in_block = i % n_blocks == block
        bits = member_bitset(
            u[in_block].astype(np.int32), (i[in_block] // n_blocks).astype(np.int32),
            n_users, n_block_items,
        )  # fmt: skip
        stride = (n_block_items + 7) // 8
        for user in range(n_users):
            for local in range(n_block_items):
                bit = (bits[user * stride + local // 8] >> (local % 8)) & 1
                assert bool(bit) == rated[user, local * n_blocks + block]
        args = (u.astype(np.int32), values, 4.0, 0, len(u), indptr, i.astype(np.int32))
        plain = np.empty(len(u), np.int32)
        fast = np.empty(len(u), np.int32)
        draw_negatives(np.uint64(seed_state(seed)), *args, block, n_blocks, n_block_items, plain)
        draw_negatives(
            np.uint64(seed_state(seed)), *args, block, n_blocks, n_block_items, fast, bits
        )
        np.testing.assert_array_equal(plain, fast)


def test_weighted_positives_visit_in_proportion_to_the_log_weight():
    from mfdask.kernels.sgd_common import shuffled_positives, weighted_positives

    values = np.array([0.0, 1.0, 10.0, 1000.0, 3.0], np.float32)
    positives = values > 0
    scale = 1.0 / np.log1p(values[positives].astype(np.float64)).mean()
    counts = np.zeros(len(values))
    runs = 4000
    state = seed_state(7)
    for _ in range(runs):
        state, order = weighted_positives(state, values, 0.5, 0, len(values), scale)
        counts += np.bincount(order, minlength=len(values))
    want = np.where(positives, np.log1p(values.astype(np.float64)) * scale, 0.0)
    np.testing.assert_allclose(counts / runs, want, atol=0.03)  # the mean: 1 visit each
    _, plain = shuffled_positives(seed_state(7), values, 0.5, 0, len(values))
    assert len(plain) == positives.sum() and counts.sum() / runs == pytest.approx(4, rel=0.02)
