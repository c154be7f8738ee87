"""WARP: rank estimate and its block rescaling, SGD and Adagrad steps against numerical
gradients and by hand, learning, Adagrad's state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfdask import WARP
from mfdask.kernels import warp as kw
from tests.test_bpr import held_out_auc, numerical_gradient, planted_implicit


def grad_scratch(item_factors: np.ndarray) -> np.ndarray:
    """The ``(3, k)`` gradient scratch :func:`warp_update_adagrad` takes."""
    return np.empty((3, item_factors.shape[1]), np.float32)


def test_rank_with_one_block_is_lightfms():
    for n_items, tries in ((3706, 1), (3706, 7), (100, 99), (10, 10)):
        assert kw.warp_rank(tries, n_items, n_items) == np.floor((n_items - 1) / tries)
    assert kw.warp_weight(1, 3706, 3706, 10.0) == pytest.approx(np.log(3705))
    assert kw.warp_weight(50, 10, 10, 10.0) == 0.0  # ln max(1, 0)


def test_rank_weight_is_clipped_as_lightfms():
    # LightFM clips ln(rank) at MAX_LOSS = 10: only ranks above e^10 (about 22,026) bind.
    assert kw.MAX_RANK_WEIGHT == 10.0
    assert kw.warp_weight(1, 22_000, 22_000, 10.0) == pytest.approx(np.log(21_999))
    assert kw.warp_weight(1, 100_000, 100_000, 10.0) == 10.0
    assert kw.warp_weight(1, 100_000, 100_000, np.inf) == pytest.approx(np.log(99_999))
    assert kw.warp_weight(10, 100_000, 100_000, 10.0) == pytest.approx(np.log(9_999))
    # from a block: the rescaled rank is clipped, not the block's
    assert kw.warp_weight(1, 25_000, 100_000, 10.0) == 10.0
    assert kw.warp_weight(1, 25_000, 100_000, 4.0) == 4.0


def test_rank_from_a_block_is_scaled_to_the_catalogue():
    assert kw.warp_rank(3, 1000, 4000) == np.floor(999 / 3) * 4.0
    # A catalogue with a share of violating items, spread evenly over residue blocks
    # (as residue blocking spreads items regardless of their scores). The draws until a
    # violator are geometric; the expected estimate from one block, rescaled, must match
    # the expected estimate from the whole catalogue (computed exactly, no sampling).
    n_items, n_blocks, share = 4000, 4, 0.05

    def expected_rank(n_pool: int) -> float:
        t = np.arange(1, 20000)
        prob = share * (1 - share) ** (t - 1)
        ranks = np.array([kw.warp_rank(int(n), n_pool, n_items) for n in t])
        return float(prob @ ranks)

    catalogue = expected_rank(n_items)
    scaled = expected_rank(n_items // n_blocks)
    assert scaled == pytest.approx(catalogue, rel=0.01)
    unscaled = scaled / n_blocks
    assert unscaled == pytest.approx(catalogue / n_blocks, rel=0.01)  # what ln would miss
    # ⌊(n-1)/N⌋ over geometric N estimates the violators to within its known upward bias.
    assert share * n_items < catalogue < 4 * share * n_items


def warp_objective(p, qi, qj, weight, user_dims, reg_user, reg_pos, reg_neg) -> float:
    """Slow twin: L (1 - x_ui + x_uj) + ½ Σ λ‖·‖² for a fixed rank weight L (float64)."""
    hinge = 1.0 - p @ qi + p @ qj
    pen = 0.5 * (reg_user * p[:user_dims] @ p[:user_dims] + reg_pos * qi @ qi + reg_neg * qj @ qj)
    return float(weight * hinge + pen)


def random_rows(rng: np.random.Generator, use_bias: bool, k: int = 6):
    """One user row and four item rows of ``k`` columns, the last the bias with ``use_bias``."""
    P = rng.normal(0, 0.5, (1, k)).astype(np.float32)
    Q = rng.normal(0, 0.5, (4, k)).astype(np.float32)
    if use_bias:
        P[:, -1] = 1.0
    return (k - 1 if use_bias else k), P, Q


@pytest.mark.parametrize("use_bias", [False, True])
def test_warp_step_is_minus_learning_rate_times_the_numerical_gradient(use_bias):
    user_dims, P, Q = random_rows(np.random.default_rng(3), use_bias)
    regs = (0.01, 0.04, 0.02)
    weight, lr = 2.7, 1e-3
    p0, qi0, qj0 = P[0].astype(np.float64), Q[1].astype(np.float64), Q[3].astype(np.float64)
    P1, Q1 = P.copy(), Q.copy()
    pen = kw.warp_update(P1, Q1, 0, 1, 3, weight, user_dims, lr, *regs)
    args = (weight, user_dims, *regs)
    hinge = 1 - p0 @ (qi0 - qj0)
    assert pen == pytest.approx(warp_objective(p0, qi0, qj0, *args) - weight * hinge)
    gp = numerical_gradient(lambda p: warp_objective(p, qi0, qj0, *args), p0)
    gi = numerical_gradient(lambda q: warp_objective(p0, q, qj0, *args), qi0)
    gj = numerical_gradient(lambda q: warp_objective(p0, qi0, q, *args), qj0)
    gp[user_dims:] = 0.0
    np.testing.assert_allclose((P1[0] - P[0]) / -lr, gp, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose((Q1[1] - Q[1]) / -lr, gi, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose((Q1[3] - Q[3]) / -lr, gj, rtol=1e-3, atol=1e-3)


def test_adagrad_step_by_hand():
    # One user, items 0 (positive) and 1 (negative), k = 2 with a bias column (user_dims 1).
    P = np.array([[0.5, 1.0]], np.float32)
    Q = np.array([[0.2, 0.1], [-0.4, 0.3]], np.float32)
    GP = np.array([[1.0, 1.0]], np.float32)
    GQ = np.array([[1.0, 1.0], [4.0, 2.0]], np.float32)
    w, lr, ru, ri, rj = 2.0, 0.1, 0.1, 0.2, 0.3
    pen = kw.warp_update_adagrad(P, Q, GP, GQ, 0, 0, 1, w, 1, lr, ru, ri, rj, grad_scratch(Q))
    assert pen == pytest.approx(0.5 * (0.1 * 0.25 + 0.2 * 0.05 + 0.3 * 0.25))
    # User coordinate: g = 0.1·0.5 - 2·(0.2 + 0.4) = -1.15; G = 1 + 1.3225 = 2.3225.
    assert GP[0, 0] == pytest.approx(2.3225)
    assert P[0, 0] == pytest.approx(0.5 + 0.1 * 1.15 / np.sqrt(2.3225))
    assert P[0, 1] == 1.0 and GP[0, 1] == 1.0  # the bias entry of the user stays fixed
    # Positive: g = 0.2·q - 2·p with p = (0.5, 1): (-0.96, -1.98).
    np.testing.assert_allclose(GQ[0], [1 + 0.96**2, 1 + 1.98**2], rtol=1e-6)
    expect_qi = [0.2 + 0.1 * 0.96 / np.sqrt(1 + 0.96**2), 0.1 + 0.1 * 1.98 / np.sqrt(1 + 1.98**2)]
    np.testing.assert_allclose(Q[0], expect_qi, rtol=1e-6)
    # Negative: g = 0.3·q + 2·p: (0.88, 2.09), on accumulators (4, 2).
    np.testing.assert_allclose(GQ[1], [4 + 0.88**2, 2 + 2.09**2], rtol=1e-6)
    expect_qj = [-0.4 - 0.1 * 0.88 / np.sqrt(4 + 0.88**2), 0.3 - 0.1 * 2.09 / np.sqrt(2 + 2.09**2)]
    np.testing.assert_allclose(Q[1], expect_qj, rtol=1e-6)


@pytest.mark.parametrize("use_bias", [False, True])
def test_adagrad_step_scales_the_numerical_gradient_per_coordinate(use_bias):
    rng = np.random.default_rng(5)
    user_dims, P, Q = random_rows(rng, use_bias)
    GP = rng.uniform(1, 3, P.shape).astype(np.float32)
    GQ = rng.uniform(1, 3, Q.shape).astype(np.float32)
    regs = (0.01, 0.04, 0.02)
    weight, lr = 2.7, 1e-3
    p0, qi0, qj0 = P[0].astype(np.float64), Q[1].astype(np.float64), Q[3].astype(np.float64)
    P1, Q1, GP1, GQ1 = P.copy(), Q.copy(), GP.copy(), GQ.copy()
    kw.warp_update_adagrad(
        P1, Q1, GP1, GQ1, 0, 1, 3, weight, user_dims, lr, *regs, grad_scratch(Q1)
    )
    args = (weight, user_dims, *regs)
    gp = numerical_gradient(lambda p: warp_objective(p, qi0, qj0, *args), p0)
    gi = numerical_gradient(lambda q: warp_objective(p0, q, qj0, *args), qi0)
    gj = numerical_gradient(lambda q: warp_objective(p0, qi0, q, *args), qj0)
    gp[user_dims:] = 0.0
    for new, old, acc, grad in ((P1[0], P[0], GP[0], gp), (Q1[1], Q[1], GQ[1], gi),
                                (Q1[3], Q[3], GQ[3], gj)):  # fmt: skip
        np.testing.assert_allclose((new - old) / -lr * np.sqrt(acc + grad**2), grad, atol=2e-3)
    np.testing.assert_allclose(GQ1[1], GQ[1] + gi**2, rtol=1e-3)
    np.testing.assert_allclose(
        GP1[0, :user_dims], GP[0, :user_dims] + gp[:user_dims] ** 2, rtol=1e-3
    )
    np.testing.assert_array_equal(GQ1[[0, 2]], GQ[[0, 2]])  # rows not in the triple


def _one_user_cell(score_gap: float):
    """User 0 owns global items 0 and 2 of block 0 (of 2 blocks, 3 local items: 0, 2, 4).

    The only negative in the block is global 4 (local 2); ``score_gap`` is
    x_ui - x_uj at the start.
    """
    k = 3
    P = np.array([[1.0, 0.0, 0.0]], np.float32)
    Q = np.array([[score_gap, 0.1, 0.0], [0.0, 0.2, 0.3], [0.0, -0.1, 0.2]], np.float32)
    cell = {
        "users": np.array([0], np.int32),
        "items": np.array([0], np.int32),
        "values": np.array([5.0], np.float32),
        "indptr": np.array([0, 3], np.int64),
        "indices": np.array([0, 1, 2], np.int32),  # global 1 is in the other block
    }
    return k, P, Q, cell


def _run(
    cell, P, Q, n_items, max_sampled=5, lr=0.1, sq_grad=None, max_weight=10.0, decay=1.0,
    popular=0.0,
):  # fmt: skip
    stats = np.zeros(kw.N_STATS)
    GP, GQ = sq_grad if sq_grad is not None else (np.zeros((0, 0), np.float32),) * 2
    kw.warp_sgd(
        cell["users"], cell["items"], cell["values"], 4.0, 0, 1, 5, cell["indptr"],
        cell["indices"], P, Q, GP, GQ, sq_grad is not None, 0, 2, 3, n_items, P.shape[1], lr,
        0.0, 0.0, 0.0, max_sampled, 1, 0, stats, max_weight, 0.0, False, decay, popular,
    )  # fmt: skip
    return stats


def test_a_first_draw_violator_in_a_large_catalogue_steps_with_the_clipped_weight():
    n_items = 300_000  # rank 2 in the block of 3, 200,000 in the catalogue: ln = 12.2
    runs = {}
    for max_weight in (10.0, np.inf):
        _, P, Q, cell = _one_user_cell(score_gap=0.5)
        p, qi = P[0].copy(), Q[0].copy()
        stats = _run(cell, P, Q, n_items, max_weight=max_weight)
        runs[max_weight] = stats[kw.STAT_LOSS], Q[0] - qi, p
    unclipped = np.log(2 * n_items / 3)
    assert runs[10.0][0] == pytest.approx(10.0 * 0.5, rel=1e-6)
    assert runs[np.inf][0] == pytest.approx(unclipped * 0.5, rel=1e-6)
    np.testing.assert_allclose(runs[10.0][1], 0.1 * 10.0 * runs[10.0][2], rtol=1e-5)


def test_violation_on_the_first_draw_uses_the_pre_step_values_and_the_scaled_rank():
    _, P, Q, cell = _one_user_cell(score_gap=0.5)  # x_ui - x_uj = 0.5 < 1: a violation
    n_items = 6
    weight = np.log(np.floor((3 - 1) / 1) * n_items / 3)  # rank 2 in the block, 4 overall
    expect_P, expect_Q = P.copy(), Q.copy()
    p, qi, qj = P[0].copy(), Q[0].copy(), Q[2].copy()
    expect_P[0] = p + 0.1 * weight * (qi - qj)  # with the item vectors from before the step
    expect_Q[0] = qi + 0.1 * weight * p
    expect_Q[2] = qj - 0.1 * weight * p
    stats = _run(cell, P, Q, n_items)
    np.testing.assert_allclose(P, expect_P, rtol=1e-6)
    np.testing.assert_allclose(Q, expect_Q, rtol=1e-6)
    assert stats[kw.STAT_SAMPLED] == 1 and stats[kw.STAT_POSITIVES] == 1
    assert stats[kw.STAT_LOSS] == pytest.approx(weight * 0.5, rel=1e-6)


def test_adagrad_pass_steps_by_the_accumulated_squares():
    _, P, Q, cell = _one_user_cell(score_gap=0.5)
    n_items = 6
    weight = np.log(np.floor((3 - 1) / 1) * n_items / 3)
    GP, GQ = np.ones_like(P), np.ones_like(Q)
    p, qi, qj = P[0].astype(np.float64), Q[0].astype(np.float64), Q[2].astype(np.float64)
    grads = {"p": -weight * (qi - qj), "qi": -weight * p, "qj": weight * p}
    stats = _run(cell, P, Q, n_items, sq_grad=(GP, GQ))
    for new, old, acc, g in ((P[0], p, GP[0], grads["p"]), (Q[0], qi, GQ[0], grads["qi"]),
                             (Q[2], qj, GQ[2], grads["qj"])):  # fmt: skip
        np.testing.assert_allclose(acc, 1 + g**2, rtol=1e-6)
        np.testing.assert_allclose(new, old - 0.1 * g / np.sqrt(1 + g**2), rtol=1e-5)
    np.testing.assert_array_equal(GQ[1], [1, 1, 1])  # global 2 is a positive, never a negative
    assert stats[kw.STAT_LOSS] == pytest.approx(weight * 0.5, rel=1e-6)


def test_adagrad_sums_forget_by_the_accumulator_decay():
    # G ← ρ G + g², then x ← x - lr · g / √G, per coordinate of each row.
    x = np.array([1.0, -2.0], np.float32)
    G = np.array([4.0, 2.0], np.float32)
    g = np.array([0.5, -1.0], np.float32)
    kw.adagrad_step(x, G, g, 2, 0.1, 0.5)
    np.testing.assert_allclose(G, [0.5 * 4 + 0.25, 0.5 * 2 + 1.0], rtol=1e-6)
    np.testing.assert_allclose(x, [1 - 0.1 * 0.5 / 1.5, -2 + 0.1 / np.sqrt(2.0)], rtol=1e-6)
    # ρ = 1 is Adagrad, bitwise the pass without the argument
    runs = []
    for decay in (None, 1.0):
        _, P, Q, cell = _one_user_cell(score_gap=0.5)
        GP, GQ = np.ones_like(P), np.ones_like(Q)
        if decay is None:
            _run(cell, P, Q, 6, sq_grad=(GP, GQ))
        else:
            _run(cell, P, Q, 6, sq_grad=(GP, GQ), decay=decay)
        runs.append((P, Q, GP, GQ))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_popular_negatives_are_drawn_from_the_cells_ratings():
    # The cell's only rating is the user's own positive (global 0): every popular draw
    # lands on a positive and is skipped, so no step within max_sampled.
    _, P, Q, cell = _one_user_cell(score_gap=0.5)
    before = (P.copy(), Q.copy())
    stats = _run(cell, P, Q, n_items=6, max_sampled=7, popular=1.0)
    np.testing.assert_array_equal(P, before[0])
    np.testing.assert_array_equal(Q, before[1])
    assert stats[kw.STAT_SAMPLED] == 7 and stats[kw.STAT_LOSS] == 0.0
    # uniform draws (the default) find the violator, global 4, at once
    _, P, Q, cell = _one_user_cell(score_gap=0.5)
    assert _run(cell, P, Q, n_items=6, max_sampled=7)[kw.STAT_LOSS] > 0


def test_no_violator_within_max_sampled_means_no_step():
    _, P, Q, cell = _one_user_cell(score_gap=3.0)
    before = (P.copy(), Q.copy())
    stats = _run(cell, P, Q, n_items=6, max_sampled=7)
    np.testing.assert_array_equal(P, before[0])
    np.testing.assert_array_equal(Q, before[1])
    assert stats[kw.STAT_SAMPLED] == 7 and stats[kw.STAT_LOSS] == 0.0
    assert stats[kw.STAT_CORRECT] == 1


@pytest.mark.parametrize(
    "kos_n, optimizer, learning_rate", [(0, "sgd", 0.01), (5, "sgd", 0.01), (0, "adagrad", 0.05)]
)
def test_warp_learns_planted_preferences(client, kos_n, optimizer, learning_rate):
    frame, like, watched = planted_implicit(seed=4)
    test = frame[frame.rating >= 4].sample(frac=0.2, random_state=0)
    train = frame.drop(test.index)
    model = WARP(
        factors=8,
        epochs=30,
        learning_rate=learning_rate,
        learning_rate_decay=0.0,
        optimizer=optimizer,
        kos_n=kos_n,
        kos_k=2,
        random_state=0,
    ).fit(train)
    assert held_out_auc(model, test, ~like & ~watched) > 0.9
    history = pd.DataFrame(model.history_)
    assert history.auc.iloc[-1] > 0.9
    assert history.sampled_per_positive.iloc[-1] > history.sampled_per_positive.iloc[0]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_sampled": 0}, "max_sampled"),
        ({"max_rank_weight": 0}, "max_rank_weight"),
        ({"max_rank_weight": "10"}, "max_rank_weight"),
        ({"kos_n": -1}, "kos_n"),
        ({"kos_n": 3, "kos_k": 4}, "kos_k"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"accumulator_decay": 0.0}, "accumulator_decay"),
        ({"accumulator_decay": 1.5}, "accumulator_decay"),
        ({"popular_negatives": -0.1}, "popular_negatives"),
        ({"popular_negatives": 2}, "popular_negatives"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        WARP(**params).fit(pd.DataFrame({"user_id": [1], "item_id": [1], "rating": [5.0]}))


def test_adagrad_state_starts_at_one_and_sgd_carries_none():
    class Data:  # the two attributes of TrainingData that the start reads
        n_users, n_items = 5, 7

    user, item = WARP(factors=3, optimizer="adagrad", random_state=0)._initial_state(Data())
    assert user["sq_grad"].shape == user["factors"].shape == (5, 4)
    assert item["sq_grad"].shape == item["factors"].shape == (7, 4)
    assert user["sq_grad"].dtype == np.float32 and (item["sq_grad"] == 1).all()
    user, item = WARP(factors=3, optimizer="sgd", random_state=0)._initial_state(Data())
    assert set(user) == set(item) == {"factors"}


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_rated_items_are_never_stepped_on_as_negatives(optimizer):
    """Draws that land on a rated item are skipped, whatever their score: items a user
    rated below the threshold (never a positive, never a negative) keep their factors."""
    rng = np.random.default_rng(0)
    n_items, k = 40, 4
    rated_low = np.arange(10, 30)  # rated 1: in the user's row, not positives
    positives = np.arange(0, 10)
    row = np.sort(np.concatenate([positives, rated_low])).astype(np.int32)
    values = np.where(np.isin(row, positives), 5.0, 1.0).astype(np.float32)
    P = rng.standard_normal((1, k)).astype(np.float32)
    Q = rng.standard_normal((n_items, k)).astype(np.float32)
    Q[rated_low] = 10.0 * P[0]  # scored far above every positive: always violators
    before = Q.copy()
    G = (np.ones_like(P), np.ones_like(Q))
    stats = np.zeros(kw.N_STATS)
    for seed in range(20):
        kw.warp_sgd(
            np.zeros(len(row), np.int32), row, values, 4.0, 0, len(row), seed,
            np.array([0, len(row)], np.int64), row, P, Q, *G, optimizer == "adagrad",
            0, 1, n_items, n_items, k, 0.05, 0.0, 0.0, 0.0, 20, 1, 0, stats,
        )  # fmt: skip
    np.testing.assert_array_equal(Q[rated_low], before[rated_low])
    assert stats[kw.STAT_LOSS] > 0  # the unrated items were stepped on
    assert not np.array_equal(Q[30:], before[30:])
