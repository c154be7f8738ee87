"""similar_items with shrinkage by support: cosine x n_j / (n_j + beta), kept with the model."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, BPR, SVD
from mfdask.engine.state import SeenBlocks
from mfdask.engine.topk import column_counts
from mfdask.models.base import ITEM_COUNTS_FILE, SEEN_FILE, load_model
from tests.conftest import planted_ratings


def _counts(ratings: pd.DataFrame, model) -> np.ndarray:
    per_item = ratings.groupby("item_id").size()
    return per_item.reindex(model.item_ids_, fill_value=0).to_numpy()


def _twin(model, item: int, n: int, beta: float) -> pd.DataFrame:
    """The NumPy reading of the definition, one query at a time."""
    q = model.item_factors_
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    i = model.item_index([item])[0]
    counts = model.item_counts_.astype(np.float64)
    score = (unit @ unit[i]) * (counts / (counts + beta) if beta else 1.0)
    score[i] = -np.inf
    order = np.argsort(-score, kind="stable")[:n]
    return pd.DataFrame({"similar_item_id": model.item_ids_[order], "score": score[order]})


@pytest.fixture(scope="module")
def skewed():
    """Planted ratings where a third of the items keep only a few ratings."""
    ratings = planted_ratings(n_users=300, n_items=200, density=0.15, seed=3)
    rare = ratings["item_id"] % 3 == 0
    keep = ~rare | (ratings.groupby("item_id").cumcount() < 3)
    return ratings[keep].reset_index(drop=True)


@pytest.fixture(scope="module")
def fitted(client, skewed):
    return SVD(factors=8, epochs=5, random_state=0, n_threads=1).fit(skewed)


def test_item_counts_are_the_training_ratings_per_item(fitted, skewed):
    np.testing.assert_array_equal(fitted.item_counts_, _counts(skewed, fitted))


@pytest.mark.parametrize("beta", [0.0, 3.0, 10.0])
def test_scores_are_cosine_times_support_weight(fitted, beta):
    item = int(fitted.item_ids_[1])
    got = fitted.similar_items([item], n=8, shrinkage=beta)
    want = _twin(fitted, item, 8, beta)
    np.testing.assert_array_equal(got["similar_item_id"].to_numpy(), want["similar_item_id"])
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-6)


def test_default_shrinkage_is_ten_and_discounts_rare_items(fitted, skewed):
    default = fitted.similar_items(fitted.item_ids_, n=10)
    plain = fitted.similar_items(fitted.item_ids_, n=10, shrinkage=0)
    assert fitted.similar_items_shrinkage == 10.0
    pd.testing.assert_frame_equal(default, fitted.similar_items(fitted.item_ids_, 10, 10.0))
    counts = pd.Series(fitted.item_counts_, index=fitted.item_ids_)
    assert counts[default["similar_item_id"]].mean() > counts[plain["similar_item_id"]].mean()


def test_batch_twin_applies_the_same_shrinkage(client, fitted, tmp_path):
    for beta in (None, 0.0, 4.0):
        out = fitted.similar_items_all(n=5, path=tmp_path / f"s{beta}", shrinkage=beta)
        batch = pd.read_parquet(out.path).drop(columns="item_block")
        single = fitted.similar_items(fitted.item_ids_, n=5, shrinkage=beta)
        key = ["item_id", "rank"]
        batch, single = batch.sort_values(key), single.sort_values(key)
        np.testing.assert_array_equal(batch["similar_item_id"], single["similar_item_id"])
        np.testing.assert_allclose(batch["score"], single["score"], rtol=1e-5, atol=1e-6)
        assert out.manifest["shrinkage"] == (None if beta == 0 else (beta or 10.0))


def test_counts_survive_save_and_load_even_without_seen_items(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    assert (tmp_path / "m" / ITEM_COUNTS_FILE).exists()
    loaded = load_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.item_counts_, fitted.item_counts_)
    (tmp_path / "m" / SEEN_FILE).unlink()
    bare = load_model(tmp_path / "m")
    assert bare.seen_items_ is None
    np.testing.assert_array_equal(bare.item_counts_, fitted.item_counts_)
    pd.testing.assert_frame_equal(
        bare.similar_items(bare.item_ids_[:5], n=4), fitted.similar_items(fitted.item_ids_[:5], 4)
    )


def test_without_counts_the_default_is_plain_cosine_and_an_explicit_beta_an_error(fitted):
    model = SVD()
    model.__dict__.update(fitted.__dict__)
    model.seen_items_ = None
    model.__dict__.pop("_item_counts", None)
    assert model.item_counts_ is None
    pd.testing.assert_frame_equal(
        model.similar_items(model.item_ids_[:3], n=4),
        fitted.similar_items(fitted.item_ids_[:3], n=4, shrinkage=0),
    )
    with pytest.raises(ValueError, match="shrinkage=0"):
        model.similar_items(model.item_ids_[:3], n=4, shrinkage=5)
    with pytest.raises(ValueError, match="shrinkage must be"):
        fitted.similar_items(fitted.item_ids_[:3], shrinkage=-1)


def test_partial_fit_recounts(client, skewed):
    model = BPR(factors=4, epochs=2, random_state=0, n_threads=1).fit(skewed)
    extra = skewed.sample(50, random_state=1).assign(user_id=lambda f: f["user_id"] + 10_000)
    updated = pd.concat([skewed, extra], ignore_index=True)
    model.partial_fit(updated, iterations=1)
    np.testing.assert_array_equal(model.item_counts_, _counts(updated, model))


def test_counts_of_seen_blocks_on_the_workers_equal_the_csr(client, skewed, tmp_path):
    with dask.config.set({"mfdask.state.keep": "workers"}):
        model = ALS(factors=4, iterations=1, random_state=0).fit(skewed)
        assert isinstance(model.seen_items_, SeenBlocks)
        counts = model.item_counts_
        np.testing.assert_array_equal(counts, column_counts(model.seen_items_.tocsr()))
        np.testing.assert_array_equal(counts, _counts(skewed, model))
        model.save(tmp_path / "d")
        np.testing.assert_array_equal(load_model(tmp_path / "d").item_counts_, counts)
