"""Top-k for every user / item on the workers: equal to the single-query path, to Parquet."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mfdask.data.dataset import open_dataset, write_dataset
from mfdask.engine import topk
from mfdask.engine.topk import read_manifest
from mfdask.models.base import ModelMismatchError
from mfdask.models.topk import recommend_all, similar_items_all
from mfdask.recommend import top_k_of_scores
from tests.conftest import planted_ratings
from tests.fixed_model import FixedModel


def _top_k_twin(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None):
    """Obviously correct top-k: sort each row by (-score, column), drop non-finite."""
    scores = scores.astype(np.float32).copy()
    if exclude is not None:
        scores[exclude.toarray().astype(bool)] = -np.inf
    m, n = scores.shape
    k = min(k, n)
    idx = np.full((m, k), -1, np.int64)
    val = np.full((m, k), -np.inf, np.float32)
    for r in range(m):
        ok = np.flatnonzero(np.isfinite(scores[r]))
        order = ok[np.lexsort((ok, -scores[r, ok]))][:k]
        idx[r, : len(order)] = order
        val[r, : len(order)] = scores[r, order]
    return idx, val


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 6),
    n=st.integers(1, 40),
    k=st.integers(1, 45),
    levels=st.integers(2, 50),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_top_k_kernel_matches_the_twin(m, n, k, levels, density, seed):
    rng = np.random.default_rng(seed)
    # Few distinct levels: ties are common, and must go to the lower column.
    scores = rng.integers(0, levels, (m, n)).astype(np.float32)
    scores[rng.random((m, n)) < 0.05] = np.nan
    exclude = sp.random(m, n, density=density, format="csr", random_state=seed)
    idx, val = top_k_of_scores(scores.copy(), k, exclude)
    want_idx, want_val = _top_k_twin(scores, k, exclude)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(val, want_val)
    assert idx.shape == (m, min(k, n))


def _fit(frame: pd.DataFrame, **params) -> FixedModel:
    return FixedModel(**params).fit(frame)


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return planted_ratings(n_users=61, n_items=47, density=0.2, seed=3)


@pytest.fixture(scope="module")
def model(client, ratings) -> FixedModel:
    return _fit(ratings, factors=6, biased=True, random_state=1)


def _read(path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    key = [c for c in frame.columns if c.endswith("_block")]
    return frame.drop(columns=key)


def _assert_same(batch: pd.DataFrame, single: pd.DataFrame, key: str, other: str) -> None:
    batch = batch.sort_values([key, "rank"]).reset_index(drop=True)
    single = single.sort_values([key, "rank"]).reset_index(drop=True)
    assert len(batch) == len(single)
    np.testing.assert_array_equal(batch[key].to_numpy(), single[key].to_numpy())
    np.testing.assert_array_equal(batch["rank"].to_numpy(), single["rank"].to_numpy())
    np.testing.assert_allclose(batch["score"], single["score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch[other].to_numpy(), single[other].to_numpy())


@pytest.mark.parametrize("n_blocks", [1, 3, 8])
def test_batch_equals_single_with_model_seen_items(client, model, tmp_path, n_blocks):
    out = recommend_all(model, 5, tmp_path / "recs", n_blocks=n_blocks)
    assert out.n_blocks == n_blocks
    single = model.recommend(model.user_ids_, n=5)
    batch = _read(out.path)
    _assert_same(batch, single, "user_id", "item_id")
    assert out.rows == len(batch) == 61 * 5
    manifest = read_manifest(out.path)
    assert manifest["rows_per_block"] == [
        int((batch["user_id"].isin(model.user_ids_[b::n_blocks])).sum()) * 1
        for b in range(n_blocks)
    ]
    assert manifest["seen_source"] == "model.seen_items_"


def test_seen_items_are_never_recommended(client, model, ratings, tmp_path):
    out = recommend_all(model, 47, tmp_path / "recs")
    recs = _read(out.path)
    seen = set(zip(ratings["user_id"], ratings["item_id"], strict=True))
    assert not any(pair in seen for pair in zip(recs["user_id"], recs["item_id"], strict=True))
    # Every unseen item is listed once per user: fewer than n rows where few remain.
    per_user = recs.groupby("user_id").size()
    expected = 47 - ratings.groupby("user_id").size()
    pd.testing.assert_series_equal(per_user, expected.reindex(per_user.index), check_names=False)
    assert (recs.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()


@pytest.mark.parametrize(("dataset_blocks", "n_blocks"), [(4, 4), (4, 8), (4, 3), (1, 2)])
def test_seen_read_on_workers_from_dataset(
    client, model, ratings, tmp_path, dataset_blocks, n_blocks
):
    # The training data as a canonical dataset with the model's id maps.
    users = pd.DataFrame({"user_id": model.user_ids_, "user_idx": np.arange(model.n_users)})
    items = pd.DataFrame({"item_id": model.item_ids_, "item_idx": np.arange(model.n_items)})
    dense = pd.DataFrame(
        {
            "user_idx": model.user_ids_.get_indexer(ratings["user_id"]),
            "item_idx": model.item_ids_.get_indexer(ratings["item_id"]),
            "rating": ratings["rating"],
            "timestamp": np.zeros(len(ratings), np.int64),
        }
    )
    ds = write_dataset(
        dd.from_pandas(dense, npartitions=3),
        users,
        items,
        tmp_path / "train",
        n_user_blocks=dataset_blocks,
    )
    assert ds.fingerprint() == model.fingerprint_
    out = recommend_all(model, 7, tmp_path / "recs", seen=ds.path, n_blocks=n_blocks)
    _assert_same(_read(out.path), model.recommend(model.user_ids_, n=7), "user_id", "item_id")
    assert out.manifest["seen_source"] == str(ds.path)


def test_users_subset_and_chunks_and_row_groups(client, model, tmp_path, monkeypatch):
    monkeypatch.setattr(topk, "ROW_GROUP_ROWS", 9)
    wanted = list(model.user_ids_[[0, 5, 7, 30, 60]])
    out = recommend_all(model, 4, tmp_path / "recs", users=wanted, n_blocks=2, chunk_cells=60)
    batch = _read(out.path)
    _assert_same(batch, model.recommend(wanted, n=4), "user_id", "item_id")
    assert out.manifest["queries"] == 5


def test_no_filter_keeps_seen_items(client, model, tmp_path):
    out = recommend_all(model, 3, tmp_path / "recs", filter_seen=False)
    single = model.recommend(model.user_ids_, n=3, filter_seen=False)
    _assert_same(_read(out.path), single, "user_id", "item_id")


@pytest.mark.parametrize("n_blocks", [1, 4])
def test_similar_items_all_equals_similar_items(client, model, tmp_path, n_blocks):
    out = similar_items_all(model, 6, tmp_path / "sim", n_blocks=n_blocks)
    batch = _read(out.path)
    _assert_same(batch, model.similar_items(model.item_ids_, n=6), "item_id", "similar_item_id")
    assert (batch["item_id"] != batch["similar_item_id"]).all()
    assert out.rows == 47 * 6


def test_model_methods_delegate(client, model, tmp_path):
    out = model.recommend_all(n=2, path=tmp_path / "r")
    sim = model.similar_items_all(n=2, path=tmp_path / "s")
    assert out.rows == 61 * 2 and sim.rows == 47 * 2


def test_string_ids_round_trip(client, tmp_path):
    frame = planted_ratings(n_users=20, n_items=15, density=0.3, seed=5)
    frame["user_id"] = "u" + frame["user_id"].astype(str)
    frame["item_id"] = "i" + frame["item_id"].astype(str)
    model = _fit(frame, factors=3)
    out = recommend_all(model, 3, tmp_path / "recs")
    batch = _read(out.path)
    assert batch["user_id"].str.startswith("u").all()
    _assert_same(batch, model.recommend(model.user_ids_, n=3), "user_id", "item_id")


def test_readable_by_pandas_pyarrow_duckdb(client, model, tmp_path):
    out = recommend_all(model, 5, tmp_path / "recs", n_blocks=3)
    expected = out.manifest["rows"]
    assert len(pd.read_parquet(out.path)) == expected
    table = pads.dataset(out.path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == expected
    assert set(table.column_names) >= {"user_id", "rank", "item_id", "score"}
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(
        f"SELECT count(*), min(rank), max(rank) FROM read_parquet('{out.path}/**/*.parquet', "
        "hive_partitioning = true)"
    ).fetchall()[0]
    assert got == (expected, 1, 5)


def test_existing_output_is_refused_then_replaced(client, model, tmp_path):
    path = tmp_path / "recs"
    recommend_all(model, 2, path)
    with pytest.raises(FileExistsError) as err:
        recommend_all(model, 3, path)
    assert str(err.value) == (
        f"{path} already exists: choose another destination or pass --overwrite"
    )
    assert read_manifest(path)["n"] == 2
    recommend_all(model, 3, path, overwrite=True)
    assert read_manifest(path)["n"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unwritable_output_is_named(client, model, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    path = blocker / "recs"
    with pytest.raises(PermissionError) as err:
        recommend_all(model, 2, path)
    assert str(err.value) == (
        f"cannot write recommendations to {path}: {blocker} is a file, not a directory; "
        "choose a writable --output"
    )


def test_dataset_with_other_id_maps_is_refused(client, model, tmp_path):
    other = planted_ratings(n_users=10, n_items=9, density=0.5, seed=9)
    dense = pd.DataFrame(
        {
            "user_idx": other["user_id"] - 1000,
            "item_idx": other["item_id"] - 5000,
            "rating": other["rating"],
            "timestamp": np.zeros(len(other), np.int64),
        }
    )
    ids = sorted(other["user_id"].unique())
    users = pd.DataFrame({"user_id": ids, "user_idx": np.arange(len(ids))})
    ids = sorted(other["item_id"].unique())
    items = pd.DataFrame({"item_id": ids, "item_idx": np.arange(len(ids))})
    ds = write_dataset(dd.from_pandas(dense, npartitions=1), users, items, tmp_path / "other")
    with pytest.raises(ModelMismatchError) as err:
        recommend_all(model, 2, tmp_path / "recs", seen=ds.path)
    assert str(err.value) == (
        f"the model was trained on a dataset with id-map fingerprint {model.fingerprint_}, "
        f"but {ds.path} has {open_dataset(ds.path).fingerprint()}: apply it to a split of "
        "the dataset it was trained on, or retrain"
    )
    assert not (tmp_path / "recs").exists()


def test_bad_n_is_named(client, model, tmp_path):
    with pytest.raises(ValueError, match=r"^n must be a positive integer, got 0$"):
        recommend_all(model, 0, tmp_path / "recs")
