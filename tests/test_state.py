"""A fitted model's state on the workers: factor and seen-item blocks, outputs from them."""

from __future__ import annotations

import json

import dask
import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, load_model
from mfdask.engine.state import FactorBlocks, GatherWarning, SeenBlocks, keeps_on_workers
from tests.test_als import clustered_ratings


@pytest.fixture(scope="module")
def frame():
    return clustered_ratings(n_users=300, n_items=140, seed=3)[0]


def on_workers():
    return dask.config.set({"mfdask.state.keep": "workers"})


def workers_of(client):
    return sorted(client.nthreads())


def test_drawn_blocks_do_not_depend_on_the_block_count(client):
    where = workers_of(client)
    one = FactorBlocks.normal(client, 1001, 7, 0.5, 42, where[:1]).to_numpy()
    three = FactorBlocks.normal(client, 1001, 7, 0.5, 42, [where[b % 2] for b in range(3)])
    np.testing.assert_array_equal(one, three.to_numpy())
    assert abs(one.mean()) < 0.05 and one.std() == pytest.approx(0.5, rel=0.05)
    other = FactorBlocks.normal(client, 1001, 7, 0.5, 43, where[:1]).to_numpy()
    assert not np.allclose(one, other)


def test_take_fetches_rows_in_the_order_asked(client):
    where = workers_of(client)
    blocks = FactorBlocks.normal(client, 50, 4, 1.0, 0, [where[b % 2] for b in range(3)])
    full = blocks.to_numpy()
    rows = np.array([49, 0, 7, 7, 31])
    np.testing.assert_array_equal(blocks.take(rows), full[rows])
    assert blocks.take(np.empty(0, np.int64)).shape == (0, 4)
    with pytest.raises(IndexError, match="out of range"):
        blocks.take(np.array([50]))


def test_gathering_a_large_side_warns(client):
    blocks = FactorBlocks.normal(client, 64, 4, 1.0, 0, workers_of(client))
    with dask.config.set({"mfdask.state.gather-below-bytes": 100}):
        with pytest.warns(GatherWarning, match="gathering a 64 x 4"):
            blocks.to_numpy()


def test_keep_modes(client):
    with dask.config.set({"mfdask.state.keep": "client"}):
        assert not keeps_on_workers(client, 10**12)
    with dask.config.set({"mfdask.state.keep": "auto", "mfdask.state.gather-below-bytes": 1000}):
        assert keeps_on_workers(client, 1001) and not keeps_on_workers(client, 1000)
    with dask.config.set({"mfdask.state.keep": "everywhere"}):
        with pytest.raises(ValueError, match=r"mfdask\.state\.keep must be one of"):
            keeps_on_workers(client, 1)


@pytest.fixture(scope="module")
def distributed_fit(client, frame):
    with on_workers():
        model = ALS(factors=6, iterations=3, random_state=0, n_blocks=3).fit(frame)
    return model


def plain_copy(model):
    """The same model with its factors gathered into the client."""
    other = ALS(**model.get_params())
    for name in ("user_ids_", "item_ids_", "items_", "fingerprint_", "history_", "metrics_"):
        setattr(other, name, getattr(model, name))
    other.user_factors_ = model.user_factors_
    other.item_factors_ = model.item_factors_
    other.seen_items_ = model.seen_items_.tocsr()
    return other


def test_fit_keeps_both_sides_on_the_workers(distributed_fit, frame):
    model = distributed_fit
    assert model.distributed
    assert isinstance(model.__dict__["_user_factors"], FactorBlocks)
    assert isinstance(model.seen_items_, SeenBlocks)
    assert model.user_factors_.shape == (frame.user_id.nunique(), 6)
    seen = model.seen_items_.tocsr()
    assert seen.nnz == len(frame)
    u = model.user_index(frame.user_id.to_numpy())
    i = model.item_index(frame.item_id.to_numpy())
    assert seen[u, i].all()


def test_distributed_model_does_not_depend_on_the_block_count(client, frame, distributed_fit):
    with on_workers():
        other = ALS(factors=6, iterations=3, random_state=0, n_blocks=2).fit(frame)
    np.testing.assert_allclose(other.user_factors_, distributed_fit.user_factors_, atol=1e-5)
    np.testing.assert_allclose(other.item_factors_, distributed_fit.item_factors_, atol=1e-5)


def test_recommend_from_blocks_equals_recommend_from_matrices(distributed_fit):
    model = distributed_fit
    plain = plain_copy(model)
    users = model.user_ids_[[5, 0, 77, 5]]
    pd.testing.assert_frame_equal(model.recommend(users, n=7), plain.recommend(users, n=7))
    pairs = (model.user_index(users), np.array([0, 3, 9, 1]))
    np.testing.assert_array_equal(model.predict_indices(*pairs), plain.predict_indices(*pairs))


def test_recommend_all_scores_each_block_where_it_lives(distributed_fit, tmp_path):
    model = distributed_fit
    out = model.recommend_all(n=5, path=tmp_path / "recs")
    assert out.manifest["from_worker_blocks"] is True
    assert out.n_blocks == 3
    written = pd.read_parquet(tmp_path / "recs").sort_values(["user_id", "rank"])
    expected = plain_copy(model).recommend(model.user_ids_, n=5).sort_values(["user_id", "rank"])
    np.testing.assert_array_equal(written.item_id.to_numpy(), expected.item_id.to_numpy())
    np.testing.assert_allclose(written.score.to_numpy(), expected.score.to_numpy(), rtol=1e-5)
    subset = model.recommend_all(n=5, path=tmp_path / "some", users=model.user_ids_[:10])
    assert subset.manifest["from_worker_blocks"] is False and subset.rows == 50


def test_save_writes_blocks_and_load_puts_them_back(client, frame, tmp_path):
    with on_workers():
        model = ALS(factors=6, iterations=3, random_state=0, n_blocks=3).fit(frame)
    path = model.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    assert meta["layout"] == {
        "user_factors": {"blocks": 3},
        "item_factors": {"blocks": 3},
        "seen_items": {"blocks": 3},
    }
    assert sorted(p.name for p in (path / "user_factors").iterdir()) == [
        "block=0",
        "block=1",
        "block=2",
    ]
    # Readers of the Parquet layout see one table with the ids and factors.
    table = pd.read_parquet(path / "user_factors")
    assert len(table) == model.n_users and set(table.user_id) == set(model.user_ids_)
    with on_workers():
        back = load_model(path)
    assert back.distributed
    users = model.user_ids_[:4]
    pd.testing.assert_frame_equal(back.recommend(users, n=5), model.recommend(users, n=5))
    local = load_model(path)  # small: read into the client
    assert not local.distributed
    np.testing.assert_array_equal(local.user_factors_, model.user_factors_)
    np.testing.assert_array_equal(local.seen_items_.toarray(), model.seen_items_.tocsr().toarray())


def test_load_keeps_the_seen_items_next_to_the_user_blocks(client, frame, tmp_path):
    # A threshold between the seen pattern's row pointer (8 bytes a user) and the user
    # factors (24 bytes a user): the pattern follows the factors onto the workers, so
    # recommend_all reads each block's seen items where the block lives.
    with on_workers():
        model = ALS(factors=6, iterations=2, random_state=0, n_blocks=3).fit(frame)
    path = model.save(tmp_path / "m")
    with dask.config.set({"mfdask.state.gather-below-bytes": 16 * model.n_users}):
        back = load_model(path)
        assert isinstance(back.__dict__["_user_factors"], FactorBlocks)
        assert isinstance(back.seen_items_, SeenBlocks)
        out = back.recommend_all(n=5, path=tmp_path / "recs")
        assert out.manifest["from_worker_blocks"] is True
    np.testing.assert_array_equal(
        back.seen_items_.tocsr().toarray(), model.seen_items_.tocsr().toarray()
    )
    written = pd.read_parquet(out.path).sort_values(["user_id", "rank"])
    expected = plain_copy(model).recommend(model.user_ids_, n=5).sort_values(["user_id", "rank"])
    np.testing.assert_array_equal(written.item_id.to_numpy(), expected.item_id.to_numpy())


def test_factor_blocks_read_back_batch_by_batch(client, tmp_path, monkeypatch):
    from mfdask.engine import state

    monkeypatch.setattr(state, "READ_BATCH_ROWS", 7)  # several batches, a short last one
    where = workers_of(client)
    blocks = FactorBlocks.normal(client, 50, 4, 1.0, 0, [where[b % 2] for b in range(3)])
    blocks.write_parquet(tmp_path / "f", "user_id", pd.Index(np.arange(50)))
    for b in range(3):
        got = state._read_factor_block(str(tmp_path / "f" / f"block={b}" / "part-0.parquet"))
        np.testing.assert_array_equal(got, blocks.to_numpy()[b::3])
        assert got.dtype == np.float32 and got.flags.c_contiguous


def test_checkpoints_are_written_block_by_block_and_resume(client, frame, tmp_path):
    params = {"factors": 6, "iterations": 4, "random_state": 0, "n_blocks": 2}
    with on_workers():
        full = ALS(checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, **params).fit(frame)
        latest = json.loads((tmp_path / "ck" / "LATEST").read_text())["checkpoint"]
        files = sorted(p.name for p in (tmp_path / "ck" / latest).glob("*.npy"))
        assert "user.factors.block-0-of-2.npy" in files
        again = ALS(checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, **params)
        again.fit(frame, resume=True)
    np.testing.assert_array_equal(again.user_factors_, full.user_factors_)


def test_evaluation_ranks_each_block_where_it_lives(distributed_fit, frame):
    from mfdask.evaluate import evaluate_ranking

    model = distributed_fit
    test = frame.sample(frac=0.2, random_state=0)
    on_blocks = evaluate_ranking(model, test, k=5, filter_seen=False)
    plain = evaluate_ranking(plain_copy(model), test, k=5, filter_seen=False, n_blocks=3)
    assert on_blocks["n_blocks"] == 3
    for key in ("ndcg", "precision", "recall", "auc"):
        assert on_blocks[key] == pytest.approx(plain[key], rel=1e-6), key
    seen_filtered = evaluate_ranking(model, test, k=5)
    assert seen_filtered["test_in_train"] == len(test)


def test_validation_and_early_stopping_on_distributed_factors(client, frame):
    rng = np.random.default_rng(0)
    held = rng.choice(len(frame), size=len(frame) // 5, replace=False)
    train, valid = frame.drop(index=frame.index[held]), frame.iloc[held]
    with on_workers():
        model = ALS(factors=6, iterations=4, random_state=0, early_stopping_rounds=1)
        model.fit(train, validation=valid)
    assert model.distributed
    assert all("ndcg" in h for h in model.history_)
    assert model.metrics_["best_iteration"] >= 1


def test_fold_in_on_a_distributed_model_fetches_only_the_rows_it_needs(distributed_fit, frame):
    model = distributed_fit
    user = model.user_ids_[3]
    history = frame[frame.user_id == user]
    folded = model.recommend([user], n=5, history=history)
    plain = plain_copy(model).recommend([user], n=5, history=history)
    pd.testing.assert_frame_equal(folded, plain)


def test_partial_fit_of_a_distributed_model_starts_from_its_factors(client, frame):
    with on_workers():
        model = ALS(factors=6, iterations=3, random_state=0, n_blocks=2).fit(frame)
        before = model.user_factors_
        model.partial_fit(frame, iterations=1)
        assert model.distributed
        after = model.user_factors_
    # One more iteration from the fitted factors moves them a little, not back to a start.
    assert np.abs(after - before).mean() < 0.5 * np.abs(before).mean()
