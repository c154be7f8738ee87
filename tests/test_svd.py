"""SVD: the SGD kernel against hand and NumPy computations, planted-truth fits, the model API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from mfdask import SVD, load_model
from mfdask.kernels.sgd import svd_predict, svd_sgd, svd_squared_error
from mfdask.kernels.sgd_common import seed_thread, shuffled_range
from mfdask.models.base import UnknownIdError
from tests.conftest import planted_ratings

MU, LR, LR_B, REG, REG_B = 3.0, 0.1, 0.05, 0.2, 0.3


def _sgd_twin(users, items, ratings, order, P, Q, bu, bi):
    """The update rules of mfdask.kernels.sgd, one rating at a time, in float64."""
    sse = 0.0
    for idx in order:
        u, i = users[idx], items[idx]
        err = ratings[idx] - (MU + bu[u] + bi[i] + P[u] @ Q[i])
        sse += err * err
        bu[u] += LR_B * (err - REG_B * bu[u])
        bi[i] += LR_B * (err - REG_B * bi[i])
        P[u], Q[i] = P[u] + LR * (err * Q[i] - REG * P[u]), Q[i] + LR * (err * P[u] - REG * Q[i])
    return sse


def test_one_update_on_a_2x2_example_matches_the_hand_computation():
    # users 0,1 x items 0,1 with k = 2; train on the single rating r(1, 0) = 5.
    P = np.array([[0.1, 0.2], [0.3, -0.1]], np.float32)
    Q = np.array([[0.5, 0.4], [-0.2, 0.1]], np.float32)
    bu = np.array([0.0, 0.2], np.float32)
    bi = np.array([-0.1, 0.0], np.float32)
    users, items, ratings = np.int32([1]), np.int32([0]), np.float32([5.0])
    sse = svd_sgd(users, items, ratings, 0, 1, 0, P, Q, bu, bi, MU, LR, LR_B, REG, REG_B)
    # prediction = 3 + 0.2 - 0.1 + (0.3*0.5 - 0.1*0.4) = 3.21, error e = 1.79
    e = 1.79
    assert sse == pytest.approx(e * e, rel=1e-5)
    assert bu[1] == pytest.approx(0.2 + 0.05 * (e - 0.3 * 0.2), rel=1e-5)  # 0.2865
    assert bi[0] == pytest.approx(-0.1 + 0.05 * (e + 0.3 * 0.1), rel=1e-5)  # -0.009
    # p_u += 0.1 (e q_i - 0.2 p_u); q_i += 0.1 (e p_u - 0.2 q_i), both from old values
    np.testing.assert_allclose(P[1], [0.3 + 0.1 * (e * 0.5 - 0.06), -0.1 + 0.1 * (e * 0.4 + 0.02)])
    np.testing.assert_allclose(Q[0], [0.5 + 0.1 * (e * 0.3 - 0.1), 0.4 + 0.1 * (e * -0.1 - 0.08)])
    # rows and biases not rated are untouched
    np.testing.assert_array_equal(P[0], np.float32([0.1, 0.2]))
    np.testing.assert_array_equal(Q[1], np.float32([-0.2, 0.1]))
    assert bu[0] == 0 and bi[1] == 0


def test_a_pass_matches_the_numpy_twin_in_the_kernels_own_order():
    rng = np.random.default_rng(0)
    n_u, n_i, k, nnz = 30, 20, 5, 300
    users = rng.integers(0, n_u, nnz).astype(np.int32)
    items = rng.integers(0, n_i, nnz).astype(np.int32)
    ratings = rng.uniform(1, 5, nnz).astype(np.float32)
    P = rng.normal(0, 0.1, (n_u, k)).astype(np.float32)
    Q = rng.normal(0, 0.1, (n_i, k)).astype(np.float32)
    bu = rng.normal(0, 0.1, n_u).astype(np.float32)
    bi = rng.normal(0, 0.1, n_i).astype(np.float32)
    twin = [a.astype(np.float64) for a in (P, Q, bu, bi)]
    seed_thread(11)
    order = shuffled_range(40, 260)
    sse = svd_sgd(users, items, ratings, 40, 260, 11, P, Q, bu, bi, MU, LR, LR_B, REG, REG_B)
    twin_sse = _sgd_twin(users, items, ratings.astype(np.float64), order, *twin)
    assert sse == pytest.approx(twin_sse, rel=1e-4)
    for got, want in zip((P, Q, bu, bi), twin, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_members_step_as_separate_models_sharing_the_biases():
    """``members=S``: each member's unscaled factors step as a model of their own on the
    member's error; the biases step on the mean error, which is the error returned."""
    rng = np.random.default_rng(2)
    n_u, n_i, w, S, nnz = 12, 9, 3, 3, 120
    users = rng.integers(0, n_u, nnz).astype(np.int32)
    items = rng.integers(0, n_i, nnz).astype(np.int32)
    ratings = rng.uniform(1, 5, nnz).astype(np.float32)
    p = [rng.normal(0, 0.1, (n_u, w)) for _ in range(S)]
    q = [rng.normal(0, 0.1, (n_i, w)) for _ in range(S)]
    bu, bi = np.zeros(n_u), np.zeros(n_i)
    P = (np.hstack(p) / np.sqrt(S)).astype(np.float32)
    Q = (np.hstack(q) / np.sqrt(S)).astype(np.float32)
    BU, BI = bu.astype(np.float32), bi.astype(np.float32)
    seed_thread(5)
    order = shuffled_range(0, nnz)
    sse = svd_sgd(users, items, ratings, 0, nnz, 5, P, Q, BU, BI, MU, LR, LR_B, REG, REG_B, S)
    want_sse = 0.0
    for idx in order:
        u, i = users[idx], items[idx]
        errs = [ratings[idx] - (MU + bu[u] + bi[i] + p[s][u] @ q[s][i]) for s in range(S)]
        mean = float(np.mean(errs))
        want_sse += mean * mean
        bu[u] += LR_B * (mean - REG_B * bu[u])
        bi[i] += LR_B * (mean - REG_B * bi[i])
        for s, e in enumerate(errs):
            pu, qi = p[s][u].copy(), q[s][i].copy()
            p[s][u], q[s][i] = pu + LR * (e * qi - REG * pu), qi + LR * (e * pu - REG * qi)
    assert sse == pytest.approx(want_sse, rel=1e-4)
    np.testing.assert_allclose(P, np.hstack(p) / np.sqrt(S), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(Q, np.hstack(q) / np.sqrt(S), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(BU, bu, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(BI, bi, rtol=1e-3, atol=1e-5)


def test_predict_and_error_kernels_clip_to_the_range():
    P = np.array([[1.0, 1.0]], np.float32)
    Q = np.array([[2.0, 2.0], [-2.0, -2.0], [0.1, 0.0]], np.float32)
    z1, z3 = np.zeros(1, np.float32), np.zeros(3, np.float32)
    u, i = np.int64([0, 0, 0]), np.int64([0, 1, 2])
    np.testing.assert_allclose(svd_predict(u, i, P, Q, z1, z3, 3.0, 1.0, 5.0), [5.0, 1.0, 3.1])
    sse = svd_squared_error(u, i, np.float32([5, 2, 3]), P, Q, z1, z3, 3.0, 1.0, 5.0)
    assert sse == pytest.approx(0 + 1 + 0.01, rel=1e-5)


# ---------------------------------------------------------------------- fitting
SIGMA = 0.25
FAST = dict(factors=8, learning_rate=0.02, regularization=0.02, epochs=60, lr_decay=0.97)


@pytest.fixture(scope="module")
def planted_split():
    frame = planted_ratings(n_users=400, n_items=300, rank=4, density=0.2, noise=SIGMA, seed=1)
    rng = np.random.default_rng(1)
    test = rng.random(len(frame)) < 0.1
    train, held = frame[~test], frame[test]
    known = held.user_id.isin(train.user_id) & held.item_id.isin(train.item_id)
    return train, held[known]


def _rmse(model, frame):
    return float(np.sqrt(np.mean((model.predict(frame) - frame.rating.to_numpy()) ** 2)))


def test_planted_low_rank_data_is_recovered_to_the_noise_level(client, planted_split):
    train, test = planted_split
    model = SVD(**FAST, random_state=0).fit(train)
    rmse = _rmse(model, test)
    # The best possible test RMSE is SIGMA; a model that learnt nothing scores ~1.0.
    assert SIGMA * 0.9 < rmse < SIGMA * 1.2, rmse
    assert model.history_[-1]["train_rmse"] < model.history_[0]["train_rmse"]


def test_members_default_to_one_per_64_factors_and_fit_planted_data(
    client, planted_split, tmp_path
):
    assert [SVD(factors=k)._members for k in (8, 64, 127, 128, 200, 256)] == [1, 1, 1, 2, 2, 4]
    assert SVD()._members == SVD().factors // 64
    train, test = planted_split
    model = SVD(**FAST, members=2, random_state=0).fit(train)
    assert model.user_factors_.shape[1] == FAST["factors"]
    assert SIGMA * 0.9 < _rmse(model, test) < SIGMA * 1.2
    loaded = load_model(model.save(tmp_path / "svd"))
    assert loaded.members == 2
    np.testing.assert_array_equal(loaded.predict(test), model.predict(test))
    with pytest.raises(ValueError, match="must be a multiple of members"):
        SVD(factors=8, members=3).fit(train)


def test_a_model_saved_without_members_loads_as_one_model(client, planted_split, tmp_path):
    import json

    train, _ = planted_split
    path = SVD(factors=128, epochs=1, members=1).fit(train).save(tmp_path / "old")
    meta_file = path / "model.json"
    meta = json.loads(meta_file.read_text())
    del meta["params"]["members"]
    meta_file.write_text(json.dumps(meta))
    assert load_model(path).members == 1


def test_one_worker_and_two_workers_reach_the_same_rmse(client, planted_split):
    train, test = planted_split
    two = _rmse(SVD(**FAST, random_state=0).fit(train), test)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as one_client,
        one_client.as_current(),
    ):
        one = _rmse(SVD(**FAST, random_state=0).fit(train), test)
    assert abs(one - two) / two < 0.01, (one, two)


def test_same_seed_same_model_and_hogwild_threads_agree(client, planted_split):
    train, test = planted_split
    a = SVD(**{**FAST, "epochs": 5}, random_state=3, n_threads=1).fit(train)
    b = SVD(**{**FAST, "epochs": 5}, random_state=3, n_threads=1).fit(train)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    np.testing.assert_array_equal(a.item_bias_, b.item_bias_)
    c = SVD(**{**FAST, "epochs": 5}, random_state=3, n_threads=2, n_blocks=4).fit(train)
    assert abs(_rmse(c, test) - _rmse(a, test)) / _rmse(a, test) < 0.05


def test_validation_rmse_and_early_stopping_keep_the_best_epoch(client, planted_split):
    train, test = planted_split
    # A learning rate too high to settle: validation error rises after a few epochs.
    model = SVD(
        factors=16,
        learning_rate=0.05,
        regularization=0.0,
        bias_regularization=0.0,
        lr_schedule="constant",
        epochs=40,
        early_stopping_rounds=2,
        random_state=0,
    ).fit(train, validation=test)
    val = [h["validation_rmse"] for h in model.history_]
    best = int(np.argmin(val))
    assert len(val) == best + 3, "stops two epochs after the best"
    assert model.metrics_["best_epoch"] == best + 1
    assert model.metrics_["validation_rmse"] == pytest.approx(val[best])
    assert _rmse(model, test) == pytest.approx(val[best], rel=1e-4)


@pytest.mark.parametrize("schedule", ["constant", "bold_driver"])
def test_schedules_record_their_learning_rates(client, planted_split, schedule):
    train, _ = planted_split
    model = SVD(**{**FAST, "epochs": 4}, lr_schedule=schedule).fit(train)
    rates = [h["learning_rate"] for h in model.history_]
    assert rates[0] == rates[1] == FAST["learning_rate"]
    if schedule == "constant":
        assert len(set(rates)) == 1
    else:  # the loss falls early on, so the bold driver speeds up by 5 %
        assert rates[2] == pytest.approx(rates[1] * 1.05)


def test_recommend_ranks_by_predicted_rating_and_save_load_round_trips(
    client, planted_split, tmp_path
):
    train, test = planted_split
    model = SVD(**{**FAST, "epochs": 5}).fit(train)
    users = train.user_id.unique()[:3]
    recs = model.recommend(users, n=5)
    u = model.user_index(recs.user_id)
    i = model.item_index(recs.item_id)
    expect = (
        model.global_mean_
        + model.user_bias_[u]
        + model.item_bias_[i]
        + (model.user_factors_[u] * model.item_factors_[i]).sum(1)
    )
    np.testing.assert_allclose(recs.score, expect, rtol=1e-5, atol=1e-5)
    loaded = load_model(model.save(tmp_path / "svd"))
    assert isinstance(loaded, SVD)
    np.testing.assert_array_equal(loaded.predict(test), model.predict(test))
    assert loaded.rating_range_ == model.rating_range_
    pd.testing.assert_frame_equal(loaded.recommend(users, n=5), recs)


def test_predict_handles_unknown_ids_as_asked(client, planted_split):
    train, _ = planted_split
    model = SVD(**{**FAST, "epochs": 2}).fit(train)
    known_u, known_i = train.user_id.iloc[0], train.item_id.iloc[0]
    pairs = pd.DataFrame({"user_id": [known_u, -1, known_u], "item_id": [known_i, known_i, -7]})
    with pytest.raises(UnknownIdError, match="unknown user id"):
        model.predict(pairs)
    got = model.predict(pairs, unknown="baseline")
    ui, ii = model.user_index([known_u])[0], model.item_index([known_i])[0]
    assert got[0] == model.predict_indices(np.array([ui]), np.array([ii]))[0]
    assert got[1] == pytest.approx(model.global_mean_ + model.item_bias_[ii])
    assert got[2] == pytest.approx(model.global_mean_ + model.user_bias_[ui])
    with pytest.raises(ValueError, match="unknown must be one of"):
        model.predict(pairs, unknown="zero")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"factors": 0}, "factors must be a positive integer"),
        ({"learning_rate": -1.0}, "learning_rate must be a finite number > 0"),
        ({"regularization": float("nan")}, "regularization must be a finite number >= 0"),
        ({"lr_schedule": "cosine"}, "lr_schedule must be one of"),
    ],
)
def test_bad_hyper_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        SVD(**params).fit(pd.DataFrame({"user_id": [1], "item_id": [1], "rating": [1.0]}))


def test_kernels_compile_once_per_process_not_per_task(client, planted_split):
    """Every task of every epoch reuses one compiled specialisation of each kernel.

    A task whose arrays arrive with another type (read-only after a transfer, another
    layout or dtype) would make numba compile a new specialisation inside the task.
    """
    train, _ = planted_split
    SVD(**{**FAST, "epochs": 2}, random_state=0).fit(train, validation=train)
    signatures = {k: list(k.signatures) for k in (svd_sgd, svd_squared_error)}
    misses = sum(k.stats.cache_misses.total() for k in signatures)
    SVD(**{**FAST, "epochs": 4}, random_state=1, n_blocks=3).fit(train, validation=train)
    for kernel, before in signatures.items():
        assert list(kernel.signatures) == before, kernel
    assert sum(k.stats.cache_misses.total() for k in signatures) == misses


def test_looking_ahead_one_epoch_changes_nothing(client):
    """Epochs submitted ahead give the model epochs run one at a time give (a checkpoint
    after every epoch forbids looking ahead); a stopping callback drops the look-ahead."""
    ratings = planted_ratings(n_users=60, n_items=40, seed=3)
    params = {"factors": 4, "epochs": 6, "random_state": 0, "n_threads": 1}
    ahead = SVD(checkpoint_every=100, **params).fit(ratings)
    one_by_one = SVD(checkpoint_every=1, **params).fit(ratings)
    np.testing.assert_array_equal(ahead.item_factors_, one_by_one.item_factors_)
    np.testing.assert_array_equal(ahead.user_bias_, one_by_one.user_bias_)
    assert [h["learning_rate"] for h in ahead.history_] == [
        h["learning_rate"] for h in one_by_one.history_
    ]
    stopped = SVD(checkpoint_every=100, **params).fit(ratings, callback=lambda r: r["epoch"] < 3)
    three = SVD(checkpoint_every=100, **{**params, "epochs": 3}).fit(ratings)
    assert len(stopped.history_) == 3
    np.testing.assert_array_equal(stopped.user_factors_, three.user_factors_)
    np.testing.assert_array_equal(stopped.item_bias_, three.item_bias_)
