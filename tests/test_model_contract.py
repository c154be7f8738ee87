"""The contract every model keeps: one test suite, run against each model.

To add a model, append a factory to ``MODEL_FACTORIES``: a small, fast configuration
that learns something on a few hundred users.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, BPR, SVD, WARP, load_model
from mfdask.models.base import FactorModel, NotFittedError, UnknownIdError

MODEL_FACTORIES: list[Callable[[], FactorModel]] = [
    lambda: ALS(factors=8, iterations=3, random_state=0),
    lambda: ALS(factors=8, iterations=3, solver="cholesky", confidence="implicit", random_state=0),
    lambda: BPR(factors=8, epochs=3, random_state=0),
    lambda: WARP(factors=8, epochs=3, kos_n=4, kos_k=2, use_bias=False, random_state=0),
    lambda: SVD(factors=8, epochs=3, random_state=0),
]


def _ratings(n_users=120, n_items=60, density=0.15, seed=0) -> pd.DataFrame:
    """Ratings 1-5 from a rank-3 model; string item ids to catch id-type slips."""
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1, (n_users, 3))
    q = rng.normal(0, 1, (n_items, 3))
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    score = (p[u] * q[i]).sum(1)
    rating = np.clip(np.round(3 + score), 1, 5).astype("float32")
    return pd.DataFrame({"user_id": u + 1, "item_id": [f"m{j}" for j in i], "rating": rating})


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return _ratings()


@pytest.fixture(scope="module", params=range(len(MODEL_FACTORIES)), ids=lambda i: f"model{i}")
def fitted(request, client, ratings):
    return MODEL_FACTORIES[request.param]().fit(ratings)


def test_factors_have_the_documented_shapes(fitted, ratings):
    n_users, n_items = ratings.user_id.nunique(), ratings.item_id.nunique()
    assert fitted.user_factors_.shape[0] == n_users
    assert fitted.item_factors_.shape[0] == n_items
    assert fitted.user_factors_.dtype == np.float32 == fitted.item_factors_.dtype
    assert np.isfinite(fitted.user_factors_).all() and np.isfinite(fitted.item_factors_).all()
    assert fitted.history_, "one record per epoch/iteration"


def test_batch_recommend_equals_single(fitted, ratings):
    users = ratings.user_id.unique()[:15]
    batch = fitted.recommend(users, n=7)
    single = pd.concat([fitted.recommend(u, n=7) for u in users], ignore_index=True)
    pd.testing.assert_frame_equal(batch, single)
    assert batch.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 8))).all()
    assert (batch.groupby("user_id")["score"].diff().dropna() <= 0).all()


def test_seen_items_are_filtered(fitted, ratings):
    users = ratings.user_id.unique()[:30]
    recs = fitted.recommend(users, n=10)
    seen = set(zip(ratings.user_id, ratings.item_id, strict=True))
    assert not any((u, i) in seen for u, i in zip(recs.user_id, recs.item_id, strict=True))
    unfiltered = fitted.recommend(users, n=ratings.item_id.nunique(), filter_seen=False)
    assert len(unfiltered) == len(users) * ratings.item_id.nunique()


def test_recommend_restricted_to_candidates(fitted, ratings):
    items = sorted(ratings.item_id.unique())[:5]
    recs = fitted.recommend(ratings.user_id.iloc[0], n=3, filter_seen=False, items=items)
    assert set(recs.item_id) <= set(items) and len(recs) == 3


def test_similar_items_exclude_the_query(fitted, ratings):
    items = ratings.item_id.unique()[:4]
    sim = fitted.similar_items(items, n=5)
    assert len(sim) == 20 and not (sim.item_id == sim.similar_item_id).any()
    assert (sim.score <= 1 + 1e-5).all()


def test_save_load_round_trip(fitted, ratings, tmp_path):
    path = fitted.save(tmp_path / "model")
    loaded = load_model(path)
    assert type(loaded) is type(fitted) and loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.user_factors_, fitted.user_factors_)
    np.testing.assert_array_equal(loaded.item_factors_, fitted.item_factors_)
    users = ratings.user_id.unique()[:10]
    pd.testing.assert_frame_equal(loaded.recommend(users, n=5), fitted.recommend(users, n=5))
    assert loaded.history_ == fitted.history_


def test_unknown_ids_are_named(fitted):
    with pytest.raises(UnknownIdError, match="999999"):
        fitted.recommend([1, 999999])
    with pytest.raises(UnknownIdError, match="nope"):
        fitted.similar_items(["nope"])


@pytest.mark.parametrize("n", [0, -3, 2.5, "10"])
def test_bad_n_is_rejected(fitted, ratings, n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fitted.recommend(ratings.user_id.iloc[0], n=n)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fitted.similar_items(ratings.item_id.iloc[0], n=n)


@pytest.mark.parametrize("factory", MODEL_FACTORIES)
def test_unfitted_model_says_so(factory):
    with pytest.raises(NotFittedError, match="not fitted"):
        factory().recommend([1])


@pytest.mark.parametrize("factory", MODEL_FACTORIES)
def test_same_seed_same_model(client, ratings, factory):
    a, b = factory().fit(ratings), factory().fit(ratings)
    np.testing.assert_allclose(a.item_factors_, b.item_factors_, atol=1e-6)
