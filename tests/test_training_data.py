"""What ``fit`` makes of its input: pandas frames stay on the client and are scattered."""

from __future__ import annotations

import warnings

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from mfdask import BPR
from mfdask.data.training import InputError, LocalRatings, as_training_data, count_ratings
from mfdask.engine.dsgd import DSGD


def _ratings(n: int, n_users: int = 3000, n_items: int = 800, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, n_users * n_items, int(n * 1.1)))[:n]
    return pd.DataFrame(
        {
            "user_id": pairs // n_items + 10_000,  # sparse original ids
            "item_id": pairs % n_items,
            "rating": rng.integers(1, 6, len(pairs)).astype(float),
        }
    )


def test_a_pandas_frame_is_indexed_on_the_client_and_cut_into_pieces():
    frame = _ratings(2_500)
    data = as_training_data(frame)
    assert isinstance(data.ratings, LocalRatings) and count_ratings(data.ratings) == len(frame)
    local = data.ratings.frame
    assert local.dtypes.astype(str).tolist() == ["int32", "int32", "float32"]
    np.testing.assert_array_equal(data.user_ids[local.user_idx], frame.user_id)
    np.testing.assert_array_equal(data.item_ids[local.item_idx], frame.item_id)
    pieces = LocalRatings(local, piece_rows=1000).pieces()
    assert [len(p) for p in pieces] == [1000, 1000, 500]
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), local)
    assert LocalRatings(local.iloc[:0]).pieces()[0].empty  # one (empty) piece, not none
    # a Dask frame stays lazy
    lazy = as_training_data(dd.from_pandas(frame, npartitions=3))
    assert isinstance(lazy.ratings, dd.DataFrame) and count_ratings(lazy.ratings) == len(frame)


def test_bad_ratings_in_a_pandas_frame_are_named_at_once():
    frame = _ratings(100)
    frame.loc[7, "rating"] = np.nan
    with pytest.raises(InputError, match=f"user_id={int(frame.user_id[7])}, item_id="):
        as_training_data(frame)


def test_a_large_pandas_frame_is_not_sent_inside_a_task_graph(client):
    frame = _ratings(1_200_000, n_users=20_000, n_items=2_000)  # about 29 MB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BPR(factors=4, epochs=1, random_state=0).fit(frame)
    assert not [w for w in caught if "large graph" in str(w.message)]
    assert model.metrics_["n_positives"] == int((frame.rating >= 4).sum())


def test_client_side_ratings_are_scattered_again_when_the_engine_rebuilds(client):
    frame = _ratings(5_000)
    data = as_training_data(frame)
    engine = DSGD(client, data.ratings, data.n_users, data.n_items)
    assert engine.nnz == len(frame)
    client.cancel(list(client.futures))  # nothing of the first placement is left
    engine.rebuild()
    assert engine.nnz == len(frame)
    summary = engine.value_summary()
    assert summary["count"] == len(frame)
    assert summary["mean"] == pytest.approx(frame.rating.mean())
