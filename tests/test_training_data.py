"""What ``fit`` makes of its input: pandas frames stay on the client and are scattered."""

from __future__ import annotations

import re
import warnings

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, BPR, SVD
from mfdask.data.dataset import Dataset, write_dataset
from mfdask.data.training import (
    InputError,
    LocalRatings,
    as_training_data,
    count_ratings,
    value_report,
)
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


def _with(frame: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    out = frame.copy()
    if column not in out:
        out[column] = 1.0
    out[column] = out[column].astype(object if isinstance(value, str) else float)
    out.loc[row, column] = value
    return out


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("rating", np.nan, "rating is missing (NaN/None)"),
        ("rating", np.inf, "rating is inf, not a finite number"),
        ("rating", -np.inf, "rating is -inf, not a finite number"),
        ("rating", "lots", "rating 'lots' is not a number"),
        ("weight", np.inf, "weight is inf, not a finite number"),
        ("weight", np.nan, "weight is missing (NaN/None)"),
    ],
)
def test_a_non_finite_value_is_refused_naming_the_row(client, column, value, problem):
    frame = _with(_ratings(200), 37, column, value)
    user, item = int(frame.user_id[37]), int(frame.item_id[37])
    ids = rf"\(user_id={user}, item_id={item}\): {re.escape(problem)}"
    with pytest.raises(InputError, match=rf"^the training DataFrame, row 37 {ids}") as exc:
        as_training_data(frame)
    assert "(1 of 200 rows have a value that is not finite)" in str(exc.value)
    # a Dask frame is checked partition by partition on the workers, rows named in theirs
    lazy = dd.from_pandas(frame, npartitions=4, sort=False)
    with pytest.raises(
        InputError, match=rf"^the training Dask DataFrame, partition 0, row 37 {ids}"
    ):
        as_training_data(lazy)
    prefix = _ratings(100, seed=1).assign(**{c: 1.0 for c in frame.columns if c == "weight"})
    shifted = pd.concat([prefix, frame], ignore_index=True)
    with pytest.raises(InputError, match=rf"Dask DataFrame, partition 1, row 37 {ids}"):
        as_training_data(dd.from_pandas(shifted, npartitions=3, sort=False))


def test_the_dask_check_is_one_small_report_per_partition():
    lazy = dd.from_pandas(_ratings(300), npartitions=5)
    report = value_report(lazy, "user_id", "item_id")
    assert isinstance(report, dd.DataFrame) and report.npartitions == 5
    got = report.compute()
    assert got["rows"].tolist() == [len(p) for p in lazy.partitions] and not got["bad_rows"].any()
    assert got["partition"].tolist() == list(range(5))


@pytest.mark.parametrize("kind", ["pandas", "dask", "dask-filtered"])
def test_an_empty_input_says_it_is_empty(client, kind):
    frame = _ratings(50)
    given = {
        "pandas": frame.iloc[:0],
        "dask": dd.from_pandas(frame.iloc[:0], npartitions=1),
        "dask-filtered": (lambda d: d[d.rating > 10])(dd.from_pandas(frame, npartitions=3)),
    }[kind]
    with pytest.raises(InputError, match=r"is empty: it has no ratings \(0 rows\)"):
        as_training_data(given)
    for model in (ALS(factors=2, iterations=1), BPR(factors=2, epochs=1)):
        with pytest.raises(InputError, match="is empty") as exc:
            model.fit(given)
        assert "positive_threshold" not in str(exc.value)


def _dataset(frame: pd.DataFrame, dest) -> Dataset:
    users = pd.DataFrame({"user_id": np.arange(frame.user_idx.max() + 1) + 500})
    users["user_idx"] = np.arange(len(users))
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(frame.item_idx.max() + 1)]})
    items["item_idx"] = np.arange(len(items))
    return write_dataset(dd.from_pandas(frame, npartitions=3, sort=False), users, items, dest)


def test_a_dataset_with_a_non_finite_rating_is_refused_as_it_is_read(client, tmp_path):
    raw = _ratings(300, n_users=40, n_items=30)
    frame = pd.DataFrame(
        {
            "user_idx": (raw.user_id - 10_000).astype("int32"),
            "item_idx": raw.item_id.astype("int32"),
            "rating": raw.rating.astype("float32"),
            "timestamp": np.arange(len(raw), dtype="int64"),
        }
    )
    good = _dataset(frame, tmp_path / "good")
    assert as_training_data(good).n_users == good.n_users
    frame.loc[123, "rating"] = np.inf
    bad = _dataset(frame, tmp_path / "bad")
    user, item = int(frame.user_idx[123]), int(frame.item_idx[123])
    data = as_training_data(str(bad.path))  # checked as the workers read it
    with pytest.raises(InputError, match=rf"\(user_idx={user}, item_idx={item}\): rating is inf"):
        count_ratings(data.ratings)
    empty = Dataset(good.path, {**good.manifest, "rows": 0})
    with pytest.raises(InputError, match="is empty"):
        as_training_data(empty)


def test_an_infinite_rating_is_bad_input_not_divergence(client):
    frame = _with(_ratings(300), 5, "rating", np.inf)
    with pytest.raises(InputError, match="rating is inf") as exc:
        SVD(factors=2, epochs=1).fit(frame)
    assert "diverged" not in str(exc.value)


def test_no_positives_is_still_said_when_there_are_ratings(client):
    frame = _ratings(100)
    frame["rating"] = 1.0
    for model in (ALS(factors=2, iterations=1), BPR(factors=2, epochs=1)):
        with pytest.raises(ValueError, match=r"positive_threshold=4\.0"):
            model.fit(frame)


@pytest.mark.parametrize("span", [50, 5_000_000])
def test_dense_index_by_table_and_by_search_agree(span):
    """Integer ids of a short span are looked up in a table, of a long span by binary
    search (as floats are): the same positions either way, -1 for an id not there,
    inside the span or outside it."""
    from mfdask.data.training import LOOKUP_SPAN, dense_index

    rng = np.random.default_rng(3)
    ids = pd.Index(np.unique(rng.integers(-span // 2, span // 2, 40)))
    present = set(ids)
    absent = [v for v in range(-span // 2, -span // 2 + 100) if v not in present][:2]
    values = pd.Series(np.concatenate([rng.choice(ids.to_numpy(), 200), absent, [span, -span]]))
    expected = ids.get_indexer(values)
    assert (expected == -1).sum() == 4
    assert (ids.max() - ids.min() < LOOKUP_SPAN) == (span == 50)
    np.testing.assert_array_equal(dense_index(ids, values), expected)
    np.testing.assert_array_equal(dense_index(ids, values.astype("int32")), expected)
    floats = dense_index(pd.Index(ids.to_numpy(float)), values.astype(float))
    np.testing.assert_array_equal(floats, expected)
    huge = pd.Series([1 << 40, int(ids[0])])
    np.testing.assert_array_equal(dense_index(ids, huge), [-1, 0])
