"""BPR: the kernel's step against numerical gradients and a NumPy twin; the model learns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfdask import BPR
from mfdask.kernels import bpr as kb
from mfdask.kernels.sampling import member_bitset


def bpr_objective(p, qi, qj, user_dims, reg_user, reg_pos, reg_neg) -> float:
    """Slow twin of one triple's loss: -ln σ(p·(q_i - q_j)) + ½ Σ λ‖·‖² (float64)."""
    x = float(p @ (qi - qj))
    pen = 0.5 * (reg_user * p[:user_dims] @ p[:user_dims] + reg_pos * qi @ qi + reg_neg * qj @ qj)
    return float(np.logaddexp(0.0, -x) + pen)


def numerical_gradient(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for k in range(x.size):
        up, down = x.copy(), x.copy()
        up.flat[k] += eps
        down.flat[k] -= eps
        g.flat[k] = (f(up) - f(down)) / (2 * eps)
    return g


@pytest.mark.parametrize("use_bias", [False, True])
def test_bpr_step_is_minus_learning_rate_times_the_numerical_gradient(use_bias):
    rng = np.random.default_rng(0)
    k = 5
    user_dims = k - 1 if use_bias else k
    P = rng.normal(0, 0.5, (2, k)).astype(np.float32)
    Q = rng.normal(0, 0.5, (3, k)).astype(np.float32)
    if use_bias:
        P[:, -1] = 1.0
    regs = (0.03, 0.02, 0.05)
    u, i, j, lr = 1, 0, 2, 1e-3
    p0, qi0, qj0 = (P[u].astype(np.float64), Q[i].astype(np.float64), Q[j].astype(np.float64))
    P1, Q1 = P.copy(), Q.copy()
    x, loss, pen = kb.bpr_update(P1, Q1, u, i, j, user_dims, lr, *regs)
    full = bpr_objective(p0, qi0, qj0, user_dims, *regs)
    assert loss + pen == pytest.approx(full, rel=1e-5)
    assert x == pytest.approx(p0 @ (qi0 - qj0), rel=1e-5)

    gp = numerical_gradient(lambda p: bpr_objective(p, qi0, qj0, user_dims, *regs), p0)
    gi = numerical_gradient(lambda q: bpr_objective(p0, q, qj0, user_dims, *regs), qi0)
    gj = numerical_gradient(lambda q: bpr_objective(p0, qi0, q, user_dims, *regs), qj0)
    gp[user_dims:] = 0.0  # the bias column of the user is fixed at 1
    np.testing.assert_allclose((P1[u] - P[u]) / -lr, gp, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose((Q1[i] - Q[i]) / -lr, gi, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose((Q1[j] - Q[j]) / -lr, gj, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(P1[0], P[0])  # other rows untouched
    np.testing.assert_array_equal(Q1[1], Q[1])


def test_bpr_sgd_on_a_cell_equals_the_twin_step():
    """One user who owns every item of the block but one: the negative is forced."""
    rng = np.random.default_rng(1)
    k, n_blocks, block = 4, 2, 1
    n_block_items = 3  # global items 1, 3, 5
    indptr = np.array([0, 3], np.int64)
    indices = np.array([1, 3, 4], np.int32)  # positives 1, 3 in the block, 4 elsewhere
    users = np.array([0, 0], np.int32)
    items = np.array([0, 1], np.int32)  # local rows of global 1 and 3
    values = np.array([5.0, 2.0], np.float32)  # only the first is a positive
    P = rng.normal(0, 0.3, (1, k)).astype(np.float32)
    Q = rng.normal(0, 0.3, (n_block_items, k)).astype(np.float32)
    expect_P, expect_Q = P.copy(), Q.copy()
    kb.bpr_update(expect_P, expect_Q, 0, 0, 2, k, 0.1, 0.01, 0.01, 0.01)  # j = global 5
    stats = np.zeros(kb.N_STATS)
    kb.bpr_sgd(
        users, items, values, 4.0, 0, 2, 7, indptr, indices, P, Q, block, n_blocks,
        n_block_items, k, 0.1, 0.01, 0.01, 0.01, stats,
    )  # fmt: skip
    np.testing.assert_allclose(P, expect_P, rtol=1e-6)
    np.testing.assert_allclose(Q, expect_Q, rtol=1e-6)
    assert stats[kb.STAT_TRIPLES] == 1  # the rating of 2 was skipped


def test_log_sigmoid_loss_is_stable():
    for x in (-800.0, -5.0, 0.0, 5.0, 800.0):
        assert kb.log_sigmoid_loss(x) == pytest.approx(np.logaddexp(0.0, -x), rel=1e-12)


def planted_implicit(n_users=200, n_items=120, seed=0):
    """Users like the items of their own cluster: a known right ranking."""
    rng = np.random.default_rng(seed)
    n_clusters = 4
    user_c = rng.integers(0, n_clusters, n_users)
    item_c = rng.integers(0, n_clusters, n_items)
    like = user_c[:, None] == item_c[None, :]
    watched = rng.random((n_users, n_items)) < np.where(like, 0.5, 0.05)
    u, i = np.nonzero(watched)
    rating = np.where(like[u, i], 5.0, 2.0).astype("float32")
    return pd.DataFrame({"user_id": u, "item_id": i, "rating": rating}), like, watched


def held_out_auc(model, frame_test: pd.DataFrame, negatives: np.ndarray) -> float:
    """Mean over users of P(score of a held-out positive > score of a true negative).

    ``negatives`` marks, per user, the items that are truly disliked and unwatched.
    """
    uvec, ivec = model._score_vectors()
    scores = uvec @ ivec.T
    aucs = []
    for u, group in frame_test.groupby("user_id"):
        neg = scores[u, negatives[u]]
        pos = scores[u, group.item_id.to_numpy()]
        aucs.append((pos[:, None] > neg[None, :]).mean())
    return float(np.mean(aucs))


def test_bpr_learns_planted_preferences(client):
    frame, like, watched = planted_implicit()
    positives = frame[frame.rating >= 4]
    test = positives.sample(frac=0.2, random_state=0)
    train = frame.drop(test.index)
    model = BPR(factors=8, epochs=30, random_state=0).fit(train)
    # Dense ids 0..n-1 are the original ids here (every user and item appears).
    assert list(model.user_ids_) == list(range(len(model.user_ids_)))
    auc = held_out_auc(model, test, ~like & ~watched)
    assert auc > 0.9
    history = pd.DataFrame(model.history_)
    assert history.objective.iloc[-1] < history.objective.iloc[0]
    assert history.auc.iloc[-1] > 0.9
    assert (history.positives == (train.rating >= 4).sum()).all()
    assert {"loss", "learning_rate", "positives_per_second"} <= set(history.columns)


def test_two_blocks_learn_as_well_as_one(client):
    frame, like, watched = planted_implicit(seed=2)
    test = frame[frame.rating >= 4].sample(frac=0.2, random_state=1)
    train = frame.drop(test.index)
    models = [BPR(factors=8, epochs=30, n_blocks=b, random_state=0).fit(train) for b in (1, 2)]
    aucs = [held_out_auc(m, test, ~like & ~watched) for m in models]
    assert abs(aucs[0] - aucs[1]) < 0.03


def test_learning_rate_schedule_and_regularization_defaults():
    model = BPR(learning_rate=0.1, learning_rate_decay=0.5, regularization=0.02)
    assert model.epoch_learning_rate(0) == pytest.approx(0.1)
    assert model.epoch_learning_rate(2) == pytest.approx(0.05)
    assert model._regularization() == (0.02, 0.02, 0.02)
    model.set_params(item_regularization=0.1, negative_regularization=0.3)
    assert model._regularization() == (0.02, 0.1, 0.3)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"regularization": -1.0}, "regularization"),
        ({"epochs": 0}, "epochs"),
        ({"factors": 2.5}, "factors"),
        ({"positive_threshold": float("nan")}, "positive_threshold"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        BPR(**params).fit(pd.DataFrame({"user_id": [1], "item_id": [1], "rating": [5.0]}))


def test_no_positive_is_an_error(client):
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "rating": [1.0, 2.0]})
    with pytest.raises(ValueError, match="positive_threshold"):
        BPR(factors=2, epochs=1).fit(frame)


def test_looking_ahead_one_epoch_changes_nothing(client):
    """Epochs submitted ahead (no validation, no checkpoint due) give the same model as
    epochs run one at a time (a checkpoint after every epoch forbids looking ahead), and
    a callback that stops the fit drops the epoch submitted ahead of it."""
    frame, _, _ = planted_implicit(seed=4)
    params = {"factors": 8, "epochs": 6, "random_state": 0, "n_threads": 1}
    ahead = BPR(checkpoint_every=100, **params).fit(frame)
    one_by_one = BPR(checkpoint_every=1, **params).fit(frame)
    np.testing.assert_array_equal(ahead.user_factors_, one_by_one.user_factors_)
    np.testing.assert_array_equal(ahead.item_factors_, one_by_one.item_factors_)
    stopped = BPR(checkpoint_every=100, **params).fit(
        frame, callback=lambda record: record["epoch"] < 3
    )
    three = BPR(checkpoint_every=100, **{**params, "epochs": 3}).fit(frame)
    assert len(stopped.history_) == 3
    np.testing.assert_array_equal(stopped.item_factors_, three.item_factors_)
    np.testing.assert_array_equal(stopped.user_factors_, three.user_factors_)


def test_bpr_pass_with_the_cells_bitset_equals_the_pass_with_binary_searches():
    frame, _, _ = planted_implicit(n_users=60, n_items=50, seed=5)
    frame = frame.sort_values(["user_id", "item_id"])
    users = frame.user_id.to_numpy(np.int32)
    items = frame.item_id.to_numpy(np.int32)
    values = frame.rating.to_numpy(np.float32)
    indptr = np.searchsorted(users, np.arange(61)).astype(np.int64)
    bits = member_bitset(users, items, 60, 50)
    rng = np.random.default_rng(0)
    start = (rng.normal(0, 0.1, (60, 5)).astype(np.float32), rng.normal(0, 0.1, (50, 5)))
    out = []
    for member_bits in (np.zeros(0, np.uint8), bits):
        P, Q = start[0].copy(), start[1].astype(np.float32)
        stats = np.zeros(kb.N_STATS)
        kb.bpr_sgd(
            users, items, values, 4.0, 0, len(values), 9, indptr, items, P, Q,
            0, 1, 50, 5, 0.05, 0.01, 0.01, 0.01, stats, member_bits,
        )  # fmt: skip
        out.append((P, Q, stats))
    for a, b in zip(out[0], out[1], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", ["BPR", "WARP"])
def test_validation_tracks_the_default_metric_and_keeps_the_best_epoch(client, cls):
    import mfdask

    frame, _, _ = planted_implicit(seed=3)
    positives = frame[frame.rating >= 4]
    valid = positives.sample(frac=0.2, random_state=2)
    train = frame.drop(valid.index)
    model = getattr(mfdask, cls)(factors=8, epochs=12, random_state=0, early_stopping_rounds=3)
    model.fit(train, validation=valid)
    scores = [h["ndcg"] for h in model.history_]
    assert model.metrics_["ndcg"] == pytest.approx(max(scores))
    assert model.metrics_["best_epoch"] == int(np.argmax(scores)) + 1
    assert max(scores) > scores[0]
    with pytest.raises(ValueError, match=r"validation_metric must be one of \['ndcg'"):
        getattr(mfdask, cls)(validation_metric="ndcg@10").fit(train, validation=valid)
