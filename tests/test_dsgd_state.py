"""SVD, BPR and WARP state on the workers: drawn there, kept there, outputs from the blocks.

Each fit is made twice on the same data with the same seed, once with the state left on
the workers (``mfdask.state.keep = "workers"``) and once gathered (``"client"``): the
kernels see the same blocks either way, so the factors, recommendations, saved files and
metrics must agree. With a tiny gather threshold both fits also draw their start on the
workers by global row.
"""

from __future__ import annotations

import json

import dask
import numpy as np
import pandas as pd
import pytest

from mfdask import BPR, SVD, WARP, load_model
from mfdask.engine.dsgd import Drawn
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.evaluate import evaluate_ranking
from tests.test_als import clustered_ratings

MODELS = {
    "bpr": lambda: BPR(factors=6, epochs=3, random_state=0, n_blocks=2, n_threads=1),
    "warp": lambda: WARP(factors=6, epochs=3, random_state=0, n_blocks=2, n_threads=1),
    "svd": lambda: SVD(factors=6, epochs=3, random_state=0, n_blocks=2, n_threads=1),
}


@pytest.fixture(scope="module")
def frame():
    return clustered_ratings(n_users=240, n_items=120, seed=5)[0]


def keep(mode: str, drawn_on_workers: bool = False):
    settings: dict = {"mfdask.state.keep": mode}
    if drawn_on_workers:  # every side "large": drawn by global row on the workers
        settings["mfdask.state.gather-below-bytes"] = 16
    return dask.config.set(settings)


def fit_pair(client, name, frame, drawn_on_workers=False):
    with keep("workers", drawn_on_workers):
        blocks = MODELS[name]().fit(frame)
    with keep("client", drawn_on_workers):
        plain = MODELS[name]().fit(frame)
    return blocks, plain


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request, client, frame):
    return request.param, *fit_pair(client, request.param, frame)


def test_state_stays_on_the_workers_and_equals_the_gathered_fit(pair):
    _name, blocks, plain = pair
    assert blocks.distributed and not plain.distributed
    assert isinstance(blocks.__dict__["_user_factors"], FactorBlocks)
    assert isinstance(blocks.__dict__["_item_factors"], FactorBlocks)
    assert isinstance(blocks.seen_items_, SeenBlocks)
    np.testing.assert_array_equal(blocks.user_factors_, plain.user_factors_)
    np.testing.assert_array_equal(blocks.item_factors_, plain.item_factors_)
    for bias in ("item_bias_", "user_bias_"):
        if getattr(plain, bias, None) is not None:
            np.testing.assert_array_equal(getattr(blocks, bias), getattr(plain, bias))
    assert (blocks.seen_items_.tocsr() != plain.seen_items_).nnz == 0
    assert [h.get("objective", h.get("train_rmse")) for h in blocks.history_] == [
        h.get("objective", h.get("train_rmse")) for h in plain.history_
    ]


def test_recommend_and_predict_from_blocks(pair):
    _name, blocks, plain = pair
    users = plain.user_ids_[[3, 0, 101, 3]]
    pd.testing.assert_frame_equal(blocks.recommend(users, n=7), plain.recommend(users, n=7))
    pairs = (plain.user_index(users), np.array([0, 5, 9, 1]))
    np.testing.assert_array_equal(blocks.predict_indices(*pairs), plain.predict_indices(*pairs))
    items = plain.item_ids_[:3]
    pd.testing.assert_frame_equal(blocks.similar_items(items, n=5), plain.similar_items(items, n=5))


def test_recommend_all_and_evaluate_from_blocks(pair, frame, tmp_path):
    _name, blocks, plain = pair
    out = blocks.recommend_all(n=5, path=tmp_path / "b")
    assert out.manifest["from_worker_blocks"] is True
    ref = plain.recommend_all(n=5, path=tmp_path / "p", n_blocks=2)
    got = pd.read_parquet(out.path).sort_values(["user_id", "rank"], ignore_index=True)
    want = pd.read_parquet(ref.path).sort_values(["user_id", "rank"], ignore_index=True)
    np.testing.assert_array_equal(got.item_id.to_numpy(), want.item_id.to_numpy())
    np.testing.assert_allclose(got.score.to_numpy(), want.score.to_numpy(), rtol=1e-6)
    test = frame.sample(frac=0.2, random_state=1)
    on_blocks = evaluate_ranking(blocks, test, k=5, filter_seen=False)
    gathered = evaluate_ranking(plain, test, k=5, filter_seen=False, n_blocks=2)
    for key in ("ndcg", "precision", "recall"):
        assert on_blocks[key] == pytest.approx(gathered[key], rel=1e-6), key


def test_save_writes_the_blocks_and_load_reads_them(pair, tmp_path):
    _name, blocks, plain = pair
    path = blocks.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    assert meta["layout"] == {
        "user_factors": {"blocks": 2},
        "item_factors": {"blocks": 2},
        "seen_items": {"blocks": 2},
    }
    table = pd.read_parquet(path / "user_factors").sort_values("user_id")
    saved = plain.save(tmp_path / "plain")
    reference = pd.read_parquet(saved / "user_factors.parquet").sort_values("user_id")
    np.testing.assert_array_equal(
        np.stack(table.factors.to_numpy()), np.stack(reference.factors.to_numpy())
    )
    back = load_model(path)  # small: read into the client
    assert not back.distributed
    np.testing.assert_array_equal(back.user_factors_, plain.user_factors_)
    users = plain.user_ids_[:4]
    pd.testing.assert_frame_equal(back.recommend(users, n=5), plain.recommend(users, n=5))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_start_drawn_on_the_workers_is_the_same_kept_or_gathered(client, frame, name):
    blocks, plain = fit_pair(client, name, frame, drawn_on_workers=True)
    assert blocks.distributed and not plain.distributed
    np.testing.assert_array_equal(blocks.user_factors_, plain.user_factors_)
    np.testing.assert_array_equal(blocks.item_factors_, plain.item_factors_)
    users = plain.user_ids_[:5]
    pd.testing.assert_frame_equal(blocks.recommend(users, n=5), plain.recommend(users, n=5))
    # The draw by global row is not the client's draw from the generator.
    with keep("client"):
        client_drawn = MODELS[name]().fit(frame)
    assert not np.array_equal(client_drawn.user_factors_, plain.user_factors_)


def test_drawn_start_does_not_depend_on_the_block_count():
    user, item = BPR(factors=6, random_state=0)._drawn_state(7)
    spec = user["factors"]
    assert isinstance(spec, Drawn)
    full = spec.full(101)
    assert full.shape == (101, 7) and (full[:, -1] == 1.0).all()  # the bias column
    for n_blocks in (2, 3):
        stitched = np.empty_like(full)
        for b in range(n_blocks):
            stitched[b::n_blocks] = spec.block(b, n_blocks, 101)
        np.testing.assert_array_equal(stitched, full)
    assert not np.array_equal(item["factors"].full(101)[:, :6], full[:, :6])


def test_checkpoints_of_kept_state_resume(client, frame, tmp_path):
    params = {"factors": 6, "epochs": 4, "random_state": 0, "n_blocks": 2, "n_threads": 1}
    with keep("workers", drawn_on_workers=True):
        full = WARP(checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, **params).fit(frame)
        latest = json.loads((tmp_path / "ck" / "LATEST").read_text())["checkpoint"]
        files = sorted(p.name for p in (tmp_path / "ck" / latest).glob("*.npy"))
        assert "user.factors.block-0-of-2.npy" in files
        assert "user.sq_grad.block-1-of-2.npy" in files
        # Resume from the checkpoint after epoch 2 (the finished one removed).
        (tmp_path / "ck" / latest).rename(tmp_path / "ck" / "done")
        (tmp_path / "ck" / "LATEST").write_text(json.dumps({"checkpoint": "ckpt-000002"}))
        again = WARP(checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, **params)
        again.fit(frame, resume=True)
        # A resumed fit that had already finished loads the final blocks.
        (tmp_path / "ck" / "LATEST").write_text(json.dumps({"checkpoint": latest}))
        done = WARP(checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, **params)
        done.fit(frame, resume=True)
    assert again.distributed and done.distributed
    np.testing.assert_array_equal(again.user_factors_, full.user_factors_)
    np.testing.assert_array_equal(again.item_factors_, full.item_factors_)
    np.testing.assert_array_equal(done.user_factors_, full.user_factors_)


def test_validation_and_early_stopping_on_kept_state(client, frame):
    rng = np.random.default_rng(0)
    held = rng.choice(len(frame), size=len(frame) // 5, replace=False)
    train, valid = frame.drop(index=frame.index[held]), frame.iloc[held]
    kwargs = {"factors": 6, "epochs": 4, "random_state": 0, "n_blocks": 2, "n_threads": 1}
    with keep("workers"):
        model = BPR(early_stopping_rounds=1, **kwargs).fit(train, validation=valid)
        svd = SVD(early_stopping_rounds=1, **kwargs).fit(train, validation=valid)
    with keep("client"):
        plain = BPR(early_stopping_rounds=1, **kwargs).fit(train, validation=valid)
    assert model.distributed and svd.distributed
    assert [h["ndcg"] for h in model.history_] == [h["ndcg"] for h in plain.history_]
    np.testing.assert_array_equal(model.user_factors_, plain.user_factors_)


def test_similar_users_searches_the_blocks_where_they_are(pair):
    _name, blocks, plain = pair
    users = plain.user_ids_[[7, 0, 200]]
    for n in (5, 1000):
        got = blocks.similar_users(users, n=n)
        want = plain.similar_users(users, n=n)
        assert len(got) == len(want) == (3 * 5 if n == 5 else 3 * (plain.n_users - 1))
        pd.testing.assert_frame_equal(
            got.drop(columns="score"), want.drop(columns="score"), check_dtype=False
        )
        np.testing.assert_allclose(got.score, want.score, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_partial_fit_of_kept_state_starts_on_the_workers(client, frame, name, monkeypatch):
    users = frame.user_id.unique()
    first = frame[~frame.user_id.isin(users[-20:])]  # 20 users (and their items) come later
    models = {}
    for mode in ("workers", "client"):
        with keep(mode, drawn_on_workers=True):
            model = MODELS[name]().fit(first)
            if mode == "workers":
                assert model.distributed

                def no_gather(self):
                    raise AssertionError("partial_fit gathered a factor matrix")

                with monkeypatch.context() as patch:
                    patch.setattr(FactorBlocks, "to_numpy", no_gather)
                    model.partial_fit(frame, iterations=1)
                assert model.distributed
            else:
                model.partial_fit(frame, iterations=1)
            models[mode] = model
    kept, plain = models["workers"], models["client"]
    assert kept.n_users == plain.n_users == frame.user_id.nunique()
    np.testing.assert_array_equal(kept.user_factors_, plain.user_factors_)
    np.testing.assert_array_equal(kept.item_factors_, plain.item_factors_)
    if getattr(plain, "item_bias_", None) is not None:
        np.testing.assert_array_equal(kept.item_bias_, plain.item_bias_)


def test_rating_evaluation_predicts_next_to_each_user_block(client, frame):
    from mfdask.evaluate import evaluate_rating

    test = frame.sample(frac=0.2, random_state=2)
    with keep("workers"):
        blocks = MODELS["svd"]().fit(frame)
    with keep("client"):
        plain = MODELS["svd"]().fit(frame)
    assert blocks.distributed
    on_blocks, gathered = evaluate_rating(blocks, test), evaluate_rating(plain, test)
    assert on_blocks["count"] == gathered["count"] == len(test)
    for key in ("rmse", "mae"):
        assert on_blocks[key] == pytest.approx(gathered[key], rel=1e-9), key
