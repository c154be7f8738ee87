"""Users of the fit without a training positive get the popular items, not items 0..k-1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfdask.cli import main
from mfdask.models import ALS, BPR, WARP
from mfdask.models.base import POSITIVES_FILE, load_model
from tests.conftest import planted_ratings

COLD = [1000, 1001, 1002]  # original ids of the users whose ratings are all below 4


def _with_cold_users() -> pd.DataFrame:
    """Planted ratings in which three users rated only below the threshold."""
    frame = planted_ratings(n_users=120, n_items=80, density=0.15, seed=3)
    cold = frame.user_id.isin(COLD)
    frame.loc[cold, "rating"] = 2.0
    # the popular items: a clear order, items 5000..5004 most liked, descending
    extra = []
    for rank, item in enumerate(range(5040, 5045)):
        users = frame.user_id.unique()[3 : 3 + 60 - 10 * rank]
        extra.append(pd.DataFrame({"user_id": users, "item_id": item, "rating": 5.0}))
    frame = pd.concat([frame, *extra], ignore_index=True)
    return frame.drop_duplicates(["user_id", "item_id"], keep="last").reset_index(drop=True)


def _popular_unseen(frame: pd.DataFrame, user: int, n: int) -> list:
    """Slow twin: items by training positives (descending, lower index first), unseen."""
    pos = frame[frame.rating >= 4]
    counts = pos.item_id.value_counts()
    items = np.sort(frame.item_id.unique())
    order = sorted(items, key=lambda i: (-counts.get(i, 0), i))
    seen = set(frame.item_id[frame.user_id == user])
    return [i for i in order if i not in seen][:n]


MODELS = [
    pytest.param(lambda: ALS(factors=4, iterations=2, random_state=0), id="als"),
    pytest.param(lambda: BPR(factors=4, epochs=2, random_state=0), id="bpr"),
    pytest.param(lambda: WARP(factors=4, epochs=2, random_state=0), id="warp"),
]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return _with_cold_users()


@pytest.mark.parametrize("make", MODELS)
def test_a_user_without_positives_gets_the_popular_unseen_items(client, frame, make, tmp_path):
    model = make().fit(frame)
    assert model.user_positives_[model.user_index(COLD)].tolist() == [0, 0, 0]
    recs = model.recommend([*COLD, 1010], n=5)
    assert recs.attrs["popularity_fallback"] == 3
    for user in COLD:
        got = recs[recs.user_id == user]
        assert got.item_id.tolist() == _popular_unseen(frame, user, 5)
        assert got["rank"].tolist() == [1, 2, 3, 4, 5]
        assert (np.diff(got.score.to_numpy()) <= 0).all()
    warm = recs[recs.user_id == 1010]
    assert len(warm) == 5  # a user with positives is scored by the model as before
    expected = model._user_rows(model.user_index([1010])) @ model._item_vectors().T
    assert warm.score.iloc[0] == pytest.approx(float(np.max(np.where(
        np.isin(model.item_ids_, frame.item_id[frame.user_id == 1010]), -np.inf, expected[0]
    ))), rel=1e-5)  # fmt: skip

    # candidates restricted: the popularity order among them
    some = [5040, 5043, 5001, 5002]
    restricted = model.recommend([COLD[0]], n=2, items=some)
    seen = set(frame.item_id[frame.user_id == COLD[0]])
    order = [i for i in _popular_unseen(frame, COLD[0], 80) if i in some and i not in seen]
    assert restricted.item_id.tolist() == order[:2]

    # the batch twin and a saved model agree
    out = model.recommend_all(n=5, path=tmp_path / "recs", n_blocks=3)
    assert out.manifest["popularity_fallback"] == int((model.user_positives_ == 0).sum())
    batch = pd.read_parquet(out.path)
    for user in COLD:
        assert batch[batch.user_id == user].sort_values("rank").item_id.tolist() == (
            _popular_unseen(frame, user, 5)
        )
    model.save(tmp_path / "model")
    assert (tmp_path / "model" / POSITIVES_FILE).exists()
    loaded = load_model(tmp_path / "model")
    pd.testing.assert_frame_equal(loaded.recommend(COLD, n=5), model.recommend(COLD, n=5))


def test_the_batch_job_and_ann_fall_back_too(client, frame, tmp_path, capsys):
    model = ALS(factors=4, iterations=2, random_state=0).fit(frame)
    model.save(tmp_path / "model")
    code = main(["recommend", str(tmp_path / "model"), str(tmp_path / "recs"), "-n", "4"])
    capsys.readouterr()
    assert code == 0
    batch = pd.read_parquet(tmp_path / "recs")
    for user in COLD:
        got = batch[batch.user_id == user].sort_values("rank").item_id.tolist()
        assert got == _popular_unseen(frame, user, 4)
    pytest.importorskip("faiss")
    out = model.recommend_all(n=4, path=tmp_path / "ann", method="ann", index="flat")
    ann = pd.read_parquet(out.path)
    for user in COLD:
        got = ann[ann.user_id == user].sort_values("rank").item_id.tolist()
        assert got == _popular_unseen(frame, user, 4)


def test_a_model_saved_without_counts_scores_as_before(client, frame, tmp_path):
    model = ALS(factors=4, iterations=2, random_state=0).fit(frame)
    model.save(tmp_path / "model")
    (tmp_path / "model" / POSITIVES_FILE).unlink()
    old = load_model(tmp_path / "model")
    assert old.user_positives_ is None
    recs = old.recommend(COLD, n=3)
    assert recs.attrs["popularity_fallback"] == 0 and len(recs) == 9


def test_a_distributed_model_falls_back_on_the_workers(client, frame, tmp_path):
    import dask

    from mfdask.engine.state import FactorBlocks

    with dask.config.set({"mfdask.state.keep": "workers"}):
        model = ALS(factors=4, iterations=2, random_state=0).fit(frame)
        assert isinstance(model.__dict__["_user_factors"], FactorBlocks)
        out = model.recommend_all(n=4, path=tmp_path / "recs")
        assert out.manifest["from_worker_blocks"]
        batch = pd.read_parquet(out.path)
        for user in COLD:
            got = batch[batch.user_id == user].sort_values("rank").item_id.tolist()
            assert got == _popular_unseen(frame, user, 4)
        single = model.recommend(COLD, n=4)
        assert single.item_id.tolist() == [i for u in COLD for i in _popular_unseen(frame, u, 4)]


@pytest.mark.parametrize("method", ["exact", "ann"])
def test_users_without_positives_are_neither_scored_nor_searched(
    client, frame, tmp_path, monkeypatch, method
):
    from mfdask.engine import topk

    if method == "ann":
        pytest.importorskip("faiss")
    model = ALS(factors=4, iterations=2, random_state=0).fit(frame)
    scored: list[int] = []
    top_k = topk._top_k

    def counting(job, q, *args):
        scored.append(len(q))
        return top_k(job, q, *args)

    monkeypatch.setattr(topk, "_top_k", counting)  # the workers run in this process
    options = {"index": "flat"} if method == "ann" else {}  # flat: exhaustive
    out = model.recommend_all(n=4, path=tmp_path / "recs", method=method, **options)
    cold = model.user_positives_ == 0
    assert cold[model.user_index(COLD)].all()
    assert (
        sum(scored)
        == model.n_users - int(cold.sum())
        == out.manifest["queries"] - int(out.manifest["popularity_fallback"])
    )
    batch = pd.read_parquet(out.path)
    for user in COLD:
        got = batch[batch.user_id == user].sort_values("rank").item_id.tolist()
        assert got == _popular_unseen(frame, user, 4)
    warm = list(model.user_ids_[~cold][:20])
    single = model.recommend(warm, n=4)
    mine = batch[batch.user_id.isin(warm)].sort_values(["user_id", "rank"])
    assert mine.item_id.tolist() == single.sort_values(["user_id", "rank"]).item_id.tolist()
