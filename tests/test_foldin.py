"""Fold-in: users' factors from a history with the item side fixed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, BPR, SVD, WARP
from mfdask._warnings import MfdaskWarning
from mfdask.engine.als import SolveSpec, Source, solve_block
from mfdask.engine.blocks import RowBlock
from mfdask.models.base import UnknownIdError
from mfdask.models.foldin import EmptyHistoryError
from tests.test_als import clustered_ratings


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    frame, _ = clustered_ratings(n_users=200, n_items=100, seed=3)
    return frame


@pytest.fixture(scope="module")
def split(ratings):
    """Ratings of 20 users held out of the fit, and the rest."""
    users = np.sort(ratings.user_id.unique())
    held = users[::10]
    out = ratings.user_id.isin(held)
    return ratings[~out].reset_index(drop=True), ratings[out].reset_index(drop=True)


def normal_equation_solve(model: ALS, items: np.ndarray, values: np.ndarray) -> np.ndarray:
    """NumPy twin of the ALS user solve: (YᵀY + Yᵤᵀ(Cᵤ-I)Yᵤ + λᵤI) x = YᵤᵀCᵤpᵤ."""
    y = model.item_factors_.astype(np.float64)
    yu = y[items]
    offset = 1.0 if model.confidence == "paper" else 0.0
    c = offset + model.params_["alpha"] * values
    count = len(items) ** model.params_["regularization_exponent"]
    lam = model.params_["regularization"] * (
        count + model.regularization_offset if model.regularization_scaling == "count" else 1
    )
    a = y.T @ y + (yu.T * (c - 1.0)) @ yu + lam * np.eye(y.shape[1])
    b = yu.T @ c
    return np.linalg.solve(a, b)


@pytest.mark.parametrize(
    "params",
    [
        {"solver": "cg"},
        {"solver": "cholesky", "regularization_scaling": "none", "regularization": 0.5},
        {"confidence": "implicit", "preference": "rating", "alpha": 1.5},
        {"solver": "cholesky", "regularization_offset": 20.0},
        {"solver": "cholesky", "regularization_exponent": 0.5, "regularization": 2.0},
    ],
)
def test_als_fold_in_is_the_half_step_solve(client, split, params):
    train, held = split
    model = ALS(factors=6, iterations=4, random_state=0, **params).fit(train)
    folded = model.fold_in_users(held)
    assert list(folded.user_id) == sorted(held.user_id.unique())
    binary = model.preference == "binary"
    for uid, factors in zip(folded.user_id, folded.factors, strict=True):
        rows = held[(held.user_id == uid) & (held.rating >= 4)]
        items = model.item_index(rows.item_id)
        values = np.ones(len(rows)) if binary else rows.rating.to_numpy(np.float64)
        np.testing.assert_allclose(
            factors, normal_equation_solve(model, items, values), rtol=2e-4, atol=2e-6
        )
    # ... and the training half-step routine itself, on one row, gives the same factors.
    uid = folded.user_id.iloc[0]
    rows = held[(held.user_id == uid) & (held.rating >= 4)]
    items = np.sort(model.item_index(rows.item_id)).astype(np.int32)
    value = 1.0 if binary else None
    data = (
        np.ones(len(items), np.float32)
        if binary
        else rows.set_index(model.item_index(rows.item_id)).rating.loc[items].to_numpy(np.float32)
    )
    assert value is None or data[0] == value
    block = RowBlock(0, 1, 1, model.n_items, np.array([0, len(items)], np.int64), items, data)
    y = model.item_factors_
    spec = model._spec()
    spec = SolveSpec(**{**spec.__dict__, "solver": "cholesky"})
    half = solve_block(block, Source(y, y.astype(np.float64).T @ y), np.zeros((1, 6)), spec)
    np.testing.assert_allclose(folded.factors.iloc[0], half[0], rtol=1e-6, atol=1e-7)


def test_fold_in_of_a_training_user_matches_its_fitted_factors(client, ratings):
    """ALS's last user half-step solves against the previous items: close, not equal."""
    model = ALS(factors=6, iterations=12, solver="cholesky", random_state=0).fit(ratings)
    uid = ratings.user_id.iloc[0]
    folded = model.fold_in_users(ratings[ratings.user_id == uid])
    fitted = model.user_factors_[model.user_index([uid])[0]]
    assert np.linalg.norm(folded.factors.iloc[0] - fitted) < 0.05 * np.linalg.norm(fitted)


def test_recommend_with_history_folds_in_and_filters_the_history(client, split):
    train, held = split
    model = ALS(factors=6, iterations=5, random_state=0).fit(train)
    users = list(np.unique(held.user_id)[:5])
    with pytest.raises(UnknownIdError):
        model.recommend(users, n=5)
    recs = model.recommend(users, n=5, history=held)
    assert list(pd.unique(recs.user_id)) == users
    assert (recs.groupby("user_id").size() == 5).all()
    assert recs.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    seen = set(zip(held.user_id, held.item_id, strict=True))
    assert not any((u, i) in seen for u, i in zip(recs.user_id, recs.item_id, strict=True))
    # The fold-in's factors give the scores.
    folded = model.fold_in_users(held[held.user_id == users[0]])
    top = recs[recs.user_id == users[0]].iloc[0]
    expected = folded.factors.iloc[0] @ model.item_factors_[model.item_index([top.item_id])[0]]
    assert top.score == pytest.approx(expected, rel=1e-5)
    # One user at a time or all together: the same answer.
    alone = model.recommend([users[2]], n=5, history=held)
    pd.testing.assert_frame_equal(
        alone.reset_index(drop=True),
        recs[recs.user_id == users[2]].reset_index(drop=True),
    )


def test_known_user_uses_the_new_history_and_others_their_fit(client, ratings):
    model = ALS(factors=6, iterations=5, random_state=0).fit(ratings)
    u0, u1 = np.unique(ratings.user_id)[:2]
    history = ratings[ratings.user_id == u1].iloc[:3]  # u0's history is u1's first rows
    history = history.assign(user_id=u0)
    recs = model.recommend([u0, u1], n=5, history=history)
    plain = model.recommend([u0, u1], n=5)
    pd.testing.assert_frame_equal(
        recs[recs.user_id == u1].reset_index(drop=True),
        plain[plain.user_id == u1].reset_index(drop=True),
    )
    mine = recs[recs.user_id == u0]
    assert not set(mine.item_id) & set(history.item_id)
    # Training items of u0 that are not in the new history may come back.
    assert not mine.reset_index(drop=True).equals(plain[plain.user_id == u0].reset_index(drop=True))


def test_unknown_item_is_named_or_skipped_with_a_count(client, split):
    train, held = split
    model = ALS(factors=4, iterations=2, random_state=0).fit(train)
    bad = pd.concat(
        [
            held,
            pd.DataFrame(
                {"user_id": [held.user_id.iloc[0]], "item_id": [999_999], "rating": [5.0]}
            ),
        ]
    )
    with pytest.raises(UnknownIdError, match="999999"):
        model.fold_in_users(bad)
    with pytest.raises(UnknownIdError, match="999999"):
        model.recommend([held.user_id.iloc[0]], history=bad)
    with pytest.warns(MfdaskWarning, match="1 history row"):
        folded = model.fold_in_users(bad, unknown_items="skip")
    assert folded.attrs["skipped"] == 1
    np.testing.assert_allclose(
        np.stack(folded.factors), np.stack(model.fold_in_users(held).factors)
    )
    with pytest.raises(ValueError, match="unknown_items"):
        model.fold_in_users(held, unknown_items="ignore")


def test_empty_history_is_a_clear_error(client, split):
    train, held = split
    model = ALS(factors=4, iterations=2, random_state=0).fit(train)
    uid = held.user_id.iloc[0]
    negatives_only = held[(held.user_id == uid)].assign(rating=1.0)
    with pytest.raises(EmptyHistoryError, match=f"no positive.*{uid}"):
        model.fold_in_users(negatives_only)
    with pytest.raises(EmptyHistoryError, match=str(uid)):
        model.recommend([uid], history=negatives_only)
    # A listed user who is neither in the history nor in the model.
    other = held.user_id.iloc[-1]
    with pytest.raises(UnknownIdError, match=str(other)):
        model.recommend([uid, other], history=held[held.user_id == uid])
    with pytest.raises(EmptyHistoryError):
        model.fold_in_users(held.iloc[:0])


def test_history_columns_are_checked(client, split):
    train, held = split
    svd = SVD(factors=4, epochs=3, early_stopping_rounds=None).fit(train)
    with pytest.raises(ValueError, match="rating"):
        svd.fold_in_users(held[["user_id", "item_id"]])
    als = ALS(factors=4, iterations=2, random_state=0).fit(train)
    with pytest.raises(ValueError, match="item_id"):
        als.fold_in_users(held[["user_id", "rating"]])
    # Without a rating column every row of an implicit model's history is a positive.
    pos = held[held.rating >= 4]
    np.testing.assert_allclose(
        np.stack(als.fold_in_users(pos[["user_id", "item_id"]]).factors),
        np.stack(als.fold_in_users(pos).factors),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: SVD(factors=6, epochs=15, early_stopping_rounds=None, random_state=0),
        lambda: SVD(factors=6, members=2, epochs=15, early_stopping_rounds=None, random_state=0),
        lambda: BPR(factors=6, epochs=15, random_state=0),
        lambda: WARP(factors=6, epochs=8, random_state=0),
        lambda: WARP(factors=6, epochs=8, optimizer="sgd", learning_rate=0.05, random_state=0),
    ],
    ids=["svd", "svd-members", "bpr", "warp", "warp-sgd"],
)
def test_sgd_fold_in_is_seeded_per_user_and_fits_the_history(client, split, make):
    train, held = split
    model = make().fit(train)
    folded = model.fold_in_users(held)
    k = model.factors
    assert np.stack(folded.factors).shape == (held.user_id.nunique(), k)
    # Seeded by the user id: alone or in a batch, the same floats.
    uid = folded.user_id.iloc[3]
    alone = model.fold_in_users(held[held.user_id == uid])
    np.testing.assert_array_equal(alone.factors.iloc[0], folded.factors.iloc[3])
    recs = model.recommend(list(folded.user_id), n=10, history=held)
    assert (recs.groupby("user_id").size() == 10).all()
    if isinstance(model, SVD):
        # The folded users' own ratings are fitted better than by the biases alone.
        vec = dict(zip(folded.user_id, folded.factors, strict=True))
        bias = dict(zip(folded.user_id, folded.bias, strict=True))
        i = model.item_index(held.item_id)
        p = np.stack([vec[u] for u in held.user_id])
        pred = (
            model.global_mean_
            + np.array([bias[u] for u in held.user_id])
            + model.item_bias_[i]
            + (p * model.item_factors_[i]).sum(1)
        )
        base = model.global_mean_ + model.item_bias_[i]
        r = held.rating.to_numpy()
        assert np.sqrt(np.mean((pred - r) ** 2)) < np.sqrt(np.mean((base - r) ** 2))
    else:
        # The users' held positives rank above a random item most of the time (AUC).
        _, items = model._score_vectors()
        fold = dict(zip(folded.user_id, folded.factors, strict=True))
        pos = held[held.rating >= 4]
        u = np.stack([fold[x] for x in pos.user_id])
        if model._p("use_bias"):
            u = np.hstack([u, np.ones((len(u), 1), np.float32)])
        s_pos = (u * items[model.item_index(pos.item_id)]).sum(1)
        rng = np.random.default_rng(0)
        s_rand = (u * items[rng.integers(0, model.n_items, len(u))]).sum(1)
        assert np.mean(s_pos > s_rand) > 0.7


def test_weight_column_sums_repeated_events(client, split):
    """Event histories (``weight``, no ``rating``): repeats of a pair add up, all positive."""
    train, held = split
    model = ALS(factors=5, iterations=3, preference="rating", random_state=0).fit(train)
    uid = held.user_id.iloc[0]
    rows = held[held.user_id == uid].iloc[:6]
    events = pd.DataFrame(
        {
            "user_id": uid,
            "item_id": np.concatenate([rows.item_id, rows.item_id.iloc[:2]]),
            "weight": np.concatenate([np.full(len(rows), 2.0), [1.0, 3.0]]),
        }
    )
    folded = model.fold_in_users(events)
    weights = np.full(len(rows), 2.0)
    weights[:2] += [1.0, 3.0]
    expected = normal_equation_solve(model, model.item_index(rows.item_id), weights)
    np.testing.assert_allclose(folded.factors.iloc[0], expected, rtol=2e-4, atol=2e-6)
    with pytest.raises(ValueError, match="weight"):
        model.fold_in_users(events.assign(weight=-1.0))


@pytest.mark.parametrize("cls", [ALS, SVD, BPR, WARP])
def test_fold_in_item_side_is_the_models(cls, client, split):
    from mfdask.models.foldin import fold_in_spec

    train, _ = split
    kwargs = {"iterations": 1} if cls is ALS else {"epochs": 1}
    model = cls(factors=3, **kwargs).fit(train)
    np.testing.assert_array_equal(fold_in_spec(model).item_vectors, model._score_vectors()[1])
