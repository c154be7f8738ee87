"""partial_fit: continue from the fitted factors on the updated training data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, BPR, SVD, WARP, load_model
from mfdask.models.base import NotFittedError
from tests.test_als import clustered_ratings


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Old ratings, and the updated set: the old plus new ratings, new users and items."""
    frame, _ = clustered_ratings(n_users=160, n_items=90, seed=5)
    rng = np.random.default_rng(0)
    new_users = frame.user_id >= frame.user_id.max() - 9
    new_items = frame.item_id >= frame.item_id.max() - 4
    added = (rng.random(len(frame)) < 0.1) | new_users | new_items
    return frame[~added].reset_index(drop=True), frame


MODELS = {
    "als": lambda: ALS(factors=6, iterations=6, random_state=0),
    "svd": lambda: SVD(factors=6, epochs=8, early_stopping_rounds=None, random_state=0),
    "bpr": lambda: BPR(factors=6, epochs=8, random_state=0),
    "warp": lambda: WARP(factors=6, epochs=4, random_state=0),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_partial_fit_before_fit_is_an_error(name, data):
    with pytest.raises(NotFittedError, match=r"partial_fit.*fit"):
        MODELS[name]().partial_fit(data[1])


@pytest.mark.parametrize("name", list(MODELS))
def test_partial_fit_appends_ids_and_starts_from_the_fitted_factors(client, data, name):
    old, updated = data
    model = MODELS[name]().fit(old)
    before_users, before_items = model.user_ids_.copy(), model.item_ids_.copy()
    first = model.user_factors_.copy()
    n_before = len(model.history_)
    count = "iterations" if name == "als" else "epochs"
    setting = getattr(model, count)
    model.partial_fit(updated)
    # Known ids keep their positions; the new ones follow in ascending order.
    assert list(model.user_ids_[: len(before_users)]) == list(before_users)
    assert list(model.item_ids_[: len(before_items)]) == list(before_items)
    new_users = np.setdiff1d(updated.user_id.unique(), before_users)
    assert list(model.user_ids_[len(before_users) :]) == sorted(new_users)
    assert model.n_users == updated.user_id.nunique()
    assert model.n_items == updated.item_id.nunique()
    assert model.user_factors_.shape[0] == model.n_users
    # Three iterations by default, recorded as the first update after the old records.
    assert len(model.history_) == n_before + 3
    assert all(h.get("update") == 1 for h in model.history_[n_before:])
    assert not any("update" in h for h in model.history_[:n_before])
    assert getattr(model, count) == setting  # the parameter is left as it was
    assert model.metrics_["updates"][0]["new_users"] == len(new_users)
    assert model.metrics_["updates"][0]["iterations"] == 3
    # Seen items and recommendations cover the new ratings.
    assert model.seen_items_.shape == (model.n_users, model.n_items)
    uid = new_users[0]
    recs = model.recommend([uid], n=5)
    assert not set(recs.item_id) & set(updated[updated.user_id == uid].item_id)
    # The start was the fitted state: the known users moved less than a fresh start is away.
    moved = np.linalg.norm(model.user_factors_[: len(before_users)] - first)
    fresh = MODELS[name]().fit(updated)
    assert moved < np.linalg.norm(fresh.user_factors_[: len(before_users)] - first)


def test_partial_fit_starts_exactly_from_the_fitted_factors(client, data):
    """With the data unchanged, one ALS iteration from the fit equals one more iteration."""
    old, _ = data
    longer = ALS(factors=6, iterations=5, solver="cholesky", random_state=0).fit(old)
    model = ALS(factors=6, iterations=4, solver="cholesky", random_state=0).fit(old)
    model.partial_fit(old, iterations=1)
    np.testing.assert_allclose(model.user_factors_, longer.user_factors_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.item_factors_, longer.item_factors_, rtol=1e-4, atol=1e-6)


def test_partial_fit_records_the_update_in_the_checkpoint_identity(client, data, tmp_path):
    old, updated = data
    model = BPR(factors=4, epochs=4, random_state=0, checkpoint_dir=str(tmp_path / "ck"))
    model.checkpoint_every = 1
    model.fit(old)
    fingerprint = model.fingerprint_
    model.partial_fit(updated, iterations=2)
    from mfdask.engine.checkpoint import FitCheckpoints

    saved = FitCheckpoints(str(tmp_path / "ck"), 1, resume=True).peek()
    identity = saved.state["identity"]
    assert identity["updated_from"]["fingerprint"] == fingerprint
    assert identity["updated_from"]["update"] == 1
    assert identity["n_users"] == model.n_users
    assert model.fingerprint_ != fingerprint  # the id maps grew


def test_partial_fit_of_a_loaded_model_and_twice(client, data, tmp_path):
    old, updated = data
    SVD(factors=4, epochs=4, early_stopping_rounds=None, random_state=0).fit(old).save(
        tmp_path / "m"
    )
    model = load_model(tmp_path / "m")
    model.partial_fit(updated, iterations=2).partial_fit(updated, iterations=1)
    assert [u["update"] for u in model.metrics_["updates"]] == [1, 2]
    assert [h.get("update") for h in model.history_] == [None] * 4 + [1, 1, 2]
    assert model.metrics_["updates"][1]["new_users"] == 0
    model.save(tmp_path / "m2")
    again = load_model(tmp_path / "m2")
    assert again.metrics_["updates"] == model.metrics_["updates"]
    with pytest.raises(ValueError, match="iterations"):
        model.partial_fit(updated, iterations=0)


def test_partial_fit_with_validation(client, data):
    old, updated = data
    model = BPR(factors=4, epochs=3, random_state=0).fit(old)
    held = updated.sample(frac=0.1, random_state=0)
    model.partial_fit(updated, iterations=2, validation=held)
    assert all("ndcg" in h for h in model.history_[3:])
    assert "_initial_state" not in model.__dict__ and "_update_of" not in model.__dict__


# ---------------------------------------------------------------- placing what changed
def _updated_twice(name, old, updated, keep=True, **kwargs):
    import dask

    with dask.config.set({"mfdask.partial-fit.keep-blocks": keep}):
        model = MODELS[name]().set_params(**kwargs).fit(old)
    return model.partial_fit(updated, iterations=2)


def _assert_same_model(a, b):
    assert list(a.user_ids_) == list(b.user_ids_) and list(a.item_ids_) == list(b.item_ids_)
    np.testing.assert_allclose(a.user_factors_, b.user_factors_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.item_factors_, b.item_factors_, rtol=1e-5, atol=1e-6)
    for name in ("user_bias_", "item_bias_"):
        if getattr(a, name, None) is not None:
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    assert (a.seen_items_ != b.seen_items_).nnz == 0
    np.testing.assert_array_equal(a.item_counts_, b.item_counts_)


@pytest.mark.parametrize("name", list(MODELS))
def test_partial_fit_places_only_the_added_ratings(client, data, name):
    """Extending the kept blocks gives the model that placing everything again gives
    (new users and items included)."""
    old, updated = data
    fast = _updated_twice(name, old, updated)
    slow = _updated_twice(name, old, updated, keep=False)
    assert fast.metrics_["updates"][-1]["placed"] == "added"
    assert slow.metrics_["updates"][-1]["placed"] == "all"
    assert fast.metrics_["updates"][-1]["new_users"] > 0
    assert fast.metrics_["updates"][-1]["new_items"] > 0
    _assert_same_model(fast, slow)
    # The update keeps its own blocks: a second update extends them again.
    more = pd.concat(
        [
            updated,
            pd.DataFrame({"user_id": [10**6], "item_id": [updated.item_id[0]], "rating": [5.0]}),
        ],
        ignore_index=True,
    )
    fast.partial_fit(more, iterations=1)
    assert fast.metrics_["updates"][-1]["placed"] == "added"
    assert fast.n_users == slow.n_users + 1


def test_partial_fit_of_a_model_without_its_blocks_places_everything(client, data, tmp_path):
    """A loaded model, or one whose blocks are gone from the cluster, places all the
    ratings again, and ends where the extended blocks would have taken it."""
    old, updated = data
    model = MODELS["als"]().fit(old)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert "_kept_blocks" not in loaded.__dict__
    loaded.partial_fit(updated, iterations=2)
    assert loaded.metrics_["updates"][-1]["placed"] == "all"
    gone = MODELS["als"]().fit(old)
    kept = gone.__dict__["_kept_blocks"]
    client.cancel(kept.user + kept.item)
    gone.partial_fit(updated, iterations=2)
    assert gone.metrics_["updates"][-1]["placed"] == "all"
    model.partial_fit(updated, iterations=2)
    assert model.metrics_["updates"][-1]["placed"] == "added"
    _assert_same_model(loaded, model)
    _assert_same_model(gone, model)


def test_partial_fit_with_a_changed_or_removed_rating_places_everything(client, data):
    old, updated = data
    changed = updated.copy()
    row = int(np.flatnonzero(changed.rating.to_numpy() < 5)[0])
    changed.loc[row, "rating"] += 1.0
    removed = updated.iloc[1:].reset_index(drop=True)
    for name in ("bpr", "als"):
        for new in (changed, removed):
            fast = _updated_twice(name, old, new)
            assert fast.metrics_["updates"][-1]["placed"] == "all"
            _assert_same_model(fast, _updated_twice(name, old, new, keep=False))


def test_partial_fit_extension_keeps_the_duplicate_check(client, data):
    from mfdask.errors import DuplicateRatingError

    old, updated = data
    model = MODELS["bpr"]().fit(old)
    new = updated[~updated.index.isin(old.index)].head(1)
    twice = pd.concat([updated, new], ignore_index=True)
    with pytest.raises(DuplicateRatingError, match="duplicate rating"):
        model.partial_fit(twice)


def test_partial_fit_extends_log_weighted_events_but_not_bm25(client, data):
    old, updated = data
    events = {"user_id": "user_id", "item_id": "item_id", "rating": "weight"}
    old_e, new_e = old.rename(columns=events), updated.rename(columns=events)
    fast = _updated_twice("als", old_e, new_e, weighting="log")
    assert fast.metrics_["updates"][-1]["placed"] == "added"
    _assert_same_model(fast, _updated_twice("als", old_e, new_e, keep=False, weighting="log"))
    bm25 = _updated_twice("als", old_e, new_e, weighting="bm25")
    assert bm25.metrics_["updates"][-1]["placed"] == "all"
    assert "_kept_blocks" not in bm25.__dict__


def test_kept_blocks_stay_out_of_copies_and_pickles(client, data):
    import copy
    import pickle

    old, _ = data
    model = MODELS["svd"]().fit(old)
    assert "_kept_blocks" in model.__dict__ and "_kept_ratings" in model.__dict__
    for other in (copy.copy(model), pickle.loads(pickle.dumps(model))):
        assert "_kept_blocks" not in other.__dict__ and "_kept_ratings" not in other.__dict__
    model.fit(old.iloc[:-1])  # a new fit lets the old blocks go
    assert len(model.__dict__["_kept_ratings"]) == len(old) - 1


def test_merge_row_block_equals_building_the_block_from_everything():
    from mfdask.engine.blocks import build_row_block, merge_row_block, split_partition

    rng = np.random.default_rng(3)
    pairs = rng.choice(40 * 30, 300, replace=False)
    frame = pd.DataFrame(
        {
            "user_idx": (pairs // 30).astype("int32"),
            "item_idx": (pairs % 30).astype("int32"),
            "rating": rng.random(300).astype("float32"),
        }
    )
    old = frame[(frame.user_idx < 35) & (frame.item_idx < 25)].iloc[::2]
    new = frame.drop(old.index)
    for b in range(3):
        full = build_row_block(
            b, 3, 40, 30, [split_partition(frame, 3, "user_idx", "item_idx", "rating")[b]]
        )
        base = build_row_block(
            b, 3, 35, 25, [split_partition(old, 3, "user_idx", "item_idx", "rating")[b]]
        )
        pieces = [
            split_partition(p, 3, "user_idx", "item_idx", "rating")[b]
            for p in (new.iloc[:50], new.iloc[50:])
        ]
        merged = merge_row_block(base, 40, 30, pieces)
        assert (merged.n_rows, merged.n_cols) == (40, 30)
        for a in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(merged, a), getattr(full, a))


def test_added_rows_against_a_set_difference():
    from mfdask.models.incremental import added_rows

    rng = np.random.default_rng(4)
    pairs = rng.choice(50 * 40, 600, replace=False)
    new = pd.DataFrame(
        {
            "user_idx": (pairs // 40).astype("int32"),
            "item_idx": (pairs % 40).astype("int32"),
            "rating": rng.integers(1, 6, 600).astype("float32"),
        }
    )
    keep = (rng.random(600) < 0.8) & (new.user_idx < 45).to_numpy()
    old = new[keep].sample(frac=1.0, random_state=0)
    np.testing.assert_array_equal(added_rows(old, new), np.flatnonzero(~keep))
    appended = pd.concat([old, new[~keep]], ignore_index=True)
    np.testing.assert_array_equal(added_rows(old, appended), np.arange(len(old), 600))
    assert added_rows(old, pd.concat([old.iloc[1:], new[~keep]])) is None
    assert len(added_rows(old.iloc[:0], new)) == 600
    changed = new.copy()
    changed.loc[int(np.flatnonzero(keep)[0]), "rating"] += 1
    assert added_rows(old, changed) is None  # a changed rating
    first, second = (int(r) for r in np.flatnonzero(keep)[:2])
    assert added_rows(old, new.drop(index=first)) is None  # a removed rating
    swapped = pd.concat([new.drop(index=first), new.iloc[[second]]])
    assert added_rows(old, swapped) is None  # one removed, another repeated
