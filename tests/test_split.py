"""Implicit view and train/test splits: per-block assignment, then whole datasets on Dask."""

from __future__ import annotations

import json
import os

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdask.data import schema
from mfdask.data.dataset import DatasetError, open_dataset, write_dataset
from mfdask.data.implicit import count_positives, implicit_view, is_positive
from mfdask.data.split import (
    assign_test,
    holdout_count,
    split_dataset,
    user_block_frame,
)

COLS = list(schema.RATING_DTYPES)


def random_ratings(seed: int, n_users: int = 40, n_items: int = 30, density: float = 0.3):
    """Unique (user, item) pairs with ratings 1-5 and timestamps with ties."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(mask)
    return pd.DataFrame(
        {
            schema.USER_IDX: u.astype("int32"),
            schema.ITEM_IDX: i.astype("int32"),
            schema.RATING: rng.integers(1, 6, len(u)).astype("float32"),
            schema.TIMESTAMP: rng.integers(0, 50, len(u)).astype("int64"),
        }
    )


def write(frame: pd.DataFrame, dest, npartitions: int = 3, n_user_blocks: int = 4):
    n_users = int(frame[schema.USER_IDX].max()) + 1
    n_items = int(frame[schema.ITEM_IDX].max()) + 1
    users = pd.DataFrame(
        {schema.USER_ID: np.arange(n_users) + 100, schema.USER_IDX: np.arange(n_users)}
    )
    items = pd.DataFrame(
        {schema.ITEM_ID: np.arange(n_items) + 7, schema.ITEM_IDX: np.arange(n_items)}
    )
    shuffled = frame.sample(frac=1.0, random_state=npartitions).reset_index(drop=True)
    return write_dataset(
        dd.from_pandas(shuffled, npartitions=npartitions, sort=False),
        users,
        items,
        dest,
        n_user_blocks=n_user_blocks,
    )


def read_all(ds) -> pd.DataFrame:
    frame = pd.read_parquet(ds.ratings_path, columns=COLS).astype(schema.RATING_DTYPES)
    return frame.sort_values([schema.USER_IDX, schema.ITEM_IDX]).reset_index(drop=True)


def assign(frame: pd.DataFrame, **params) -> np.ndarray:
    return assign_test(
        frame[schema.USER_IDX].to_numpy(),
        frame[schema.ITEM_IDX].to_numpy(),
        frame[schema.RATING].to_numpy(),
        frame[schema.TIMESTAMP].to_numpy(),
        **params,
    )


# --- implicit view ---------------------------------------------------------------------


def test_implicit_view_keeps_positives_and_their_values(client):
    frame = random_ratings(0)
    expected = frame[frame[schema.RATING] >= 4]
    lazy = implicit_view(dd.from_pandas(frame, npartitions=3))
    got = lazy.compute().sort_values([schema.USER_IDX, schema.ITEM_IDX])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    assert lazy.npartitions == 3
    assert dict(lazy.dtypes) == dict(frame.dtypes)
    assert count_positives(dd.from_pandas(frame, npartitions=2)) == (len(frame), len(expected))
    strict = implicit_view(frame, threshold=4.5)
    assert (strict[schema.RATING] == 5).all()
    assert is_positive(np.array([3.5, 4.0, 4.0001], dtype=np.float32), 4).tolist() == [
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "four"])
def test_implicit_view_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="positive_threshold"):
        implicit_view(random_ratings(0), threshold=bad)


def test_implicit_view_needs_rating_column():
    with pytest.raises(ValueError, match="needs a 'rating' column"):
        implicit_view(pd.DataFrame({"user_idx": [1]}))


# --- assignment within a block (NumPy, many random cases) ------------------------------

METHOD_PARAMS = st.sampled_from(
    [
        {"method": "random", "fraction": 0.3},
        {"method": "user_holdout", "fraction": 0.2, "min_positives": 2},
        {"method": "user_holdout", "fraction": 0.5, "min_positives": 4, "positive_threshold": 3},
        {"method": "last_n", "n_last": 1},
        {"method": "last_n", "n_last": 3},
    ]
)


@settings(max_examples=60, deadline=None)
@given(data_seed=st.integers(0, 10_000), seed=st.integers(0, 2**63), params=METHOD_PARAMS)
def test_assignment_is_a_function_of_the_rows_not_their_order(data_seed, seed, params):
    frame = random_ratings(data_seed, n_users=25, n_items=20)
    test = assign(frame, seed=seed, **params)
    perm = np.random.default_rng(data_seed).permutation(len(frame))
    np.testing.assert_array_equal(assign(frame.iloc[perm], seed=seed, **params), test[perm])
    np.testing.assert_array_equal(assign(frame, seed=seed, **params), test)


@settings(max_examples=60, deadline=None)
@given(
    data_seed=st.integers(0, 10_000),
    fraction=st.floats(0.05, 0.95),
    min_positives=st.integers(2, 8),
    threshold=st.sampled_from([3.0, 4.0, 5.0]),
)
def test_user_holdout_holds_out_the_right_number_of_positives(
    data_seed, fraction, min_positives, threshold
):
    frame = random_ratings(data_seed, n_users=30, n_items=40, density=0.4)
    test = assign(
        frame,
        method="user_holdout",
        fraction=fraction,
        seed=data_seed,
        positive_threshold=threshold,
        min_positives=min_positives,
    )
    positive = frame[schema.RATING].to_numpy() >= threshold
    assert not (test & ~positive).any(), "a non-positive rating went to test"
    per_user = pd.DataFrame({"u": frame[schema.USER_IDX], "pos": positive, "test": test})
    per_user = per_user.groupby("u").sum()
    for p, t in zip(per_user["pos"], per_user["test"], strict=True):
        # Slow twin of holdout_count.
        want = 0 if p < min_positives else min(max(int(np.floor(fraction * p + 0.5)), 1), p - 1)
        assert t == want
    np.testing.assert_array_equal(
        holdout_count(per_user["pos"].to_numpy(), fraction, min_positives), per_user["test"]
    )


@settings(max_examples=40, deadline=None)
@given(data_seed=st.integers(0, 10_000), n_last=st.integers(1, 4), seed=st.integers(0, 99))
def test_last_n_holds_out_the_latest(data_seed, n_last, seed):
    frame = random_ratings(data_seed, n_users=20, n_items=15, density=0.5)
    frame["test"] = assign(frame, method="last_n", n_last=n_last, seed=seed)
    for _, g in frame.groupby(schema.USER_IDX):
        n_test = int(g["test"].sum())
        assert n_test == (n_last if len(g) > n_last else 0)
        if n_test:
            # Every held-out rating is at least as late as every kept one.
            assert (
                g.loc[g["test"], schema.TIMESTAMP].min()
                >= g.loc[~g["test"], schema.TIMESTAMP].max()
            )


def test_random_split_fraction_is_binomial():
    n = 200_000
    u = np.arange(n) // 50
    i = np.arange(n) % 50
    test = assign_test(u, i, np.ones(n), np.zeros(n), method="random", fraction=0.2, seed=3)
    sd = np.sqrt(n * 0.2 * 0.8)
    assert abs(test.sum() - 0.2 * n) < 5 * sd
    other = assign_test(u, i, np.ones(n), np.zeros(n), method="random", fraction=0.2, seed=4)
    assert (test != other).any()


# --- whole datasets through Dask -------------------------------------------------------


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data_seed=st.integers(0, 1000), seed=st.integers(0, 1000), params=METHOD_PARAMS)
def test_split_is_disjoint_covers_and_repeats(client, tmp_path_factory, data_seed, seed, params):
    tmp = tmp_path_factory.mktemp("split")
    frame = random_ratings(data_seed)
    a = write(frame, tmp / "a", npartitions=1)
    b = write(frame, tmp / "b", npartitions=5)  # same data, more files per user block
    train, test = split_dataset(a, tmp / "sa", seed=seed, **params)
    train2, test2 = split_dataset(b, tmp / "sb", seed=seed, **params)

    tr, te = read_all(train), read_all(test)
    keys = [schema.USER_IDX, schema.ITEM_IDX]
    assert tr.merge(te, on=keys).empty, "train and test overlap"
    both = pd.concat([tr, te]).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(both, read_all(a))
    assert train.n_ratings + test.n_ratings == a.n_ratings
    # Same seed, same split, whatever the input partitioning.
    pd.testing.assert_frame_equal(read_all(train2), tr)
    pd.testing.assert_frame_equal(read_all(test2), te)
    for ds in (train, test):
        assert ds.fingerprint() == a.fingerprint()
        assert ds.n_users == a.n_users and ds.n_items == a.n_items
        assert ds.manifest["n_user_blocks"] == a.manifest["n_user_blocks"]
        assert ds.manifest["split"]["method"] == params["method"]
        assert ds.manifest["split"]["seed"] == seed
    assert test.manifest["split"]["part"] == "test"


def test_split_of_split_and_manifest(client, tmp_path):
    ds = write(random_ratings(1, n_users=60, density=0.5), tmp_path / "full")
    train, test = split_dataset(ds, tmp_path / "s", method="user_holdout", seed=2)
    sub, validation = split_dataset(train, tmp_path / "tune", method="user_holdout", seed=3)
    assert sub.n_ratings + validation.n_ratings == train.n_ratings
    assert sub.fingerprint() == ds.fingerprint()
    split = json.loads((tmp_path / "tune" / "test" / "manifest.json").read_text())["split"]
    assert split["source_split"]["part"] == "train"
    assert split["source_split"]["seed"] == 2
    assert split["train_rows"] == sub.n_ratings and split["test_rows"] == validation.n_ratings
    assert split["fraction"] == 0.2 and split["min_positives"] == 5
    assert read_all(validation).merge(read_all(test), on=[schema.USER_IDX, schema.ITEM_IDX]).empty
    assert (train.manifest["split"]["depth"], split["depth"]) == (0, 1)


def test_random_split_of_random_train_with_the_same_seed(client, tmp_path):
    ds = write(random_ratings(5, n_users=80, density=0.5), tmp_path / "full")
    train, _ = split_dataset(ds, tmp_path / "s", method="random", fraction=0.2, seed=0)
    _, validation = split_dataset(train, tmp_path / "t", method="random", fraction=0.2, seed=0)
    # Fresh keys at depth 1: about 20% of train again, not an empty validation set.
    share = validation.n_ratings / train.n_ratings
    assert 0.15 < share < 0.25, share


def test_split_refuses_bad_requests(client, tmp_path):
    ds = write(random_ratings(2), tmp_path / "d")
    with pytest.raises(ValueError, match="unknown split method 'kfold'"):
        split_dataset(ds, tmp_path / "x", method="kfold")
    with pytest.raises(ValueError, match="fraction must be strictly between 0 and 1"):
        split_dataset(ds, tmp_path / "x", fraction=1.0)
    with pytest.raises(ValueError, match="min_positives must be at least 2"):
        split_dataset(ds, tmp_path / "x", method="user_holdout", min_positives=1)
    with pytest.raises(ValueError, match="n_last must be at least 1"):
        split_dataset(ds, tmp_path / "x", method="last_n", n_last=0)
    with pytest.raises(ValueError, match="leaves test empty: lower --min-positives"):
        split_dataset(ds, tmp_path / "x", method="user_holdout", min_positives=1000)
    with pytest.raises(ValueError, match="overlaps the dataset"):
        split_dataset(ds, tmp_path / "d" / "inner")
    assert not (tmp_path / "x").exists(), "a failed split left output behind"
    split_dataset(ds, tmp_path / "x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        split_dataset(ds, tmp_path / "x")
    train, _ = split_dataset(ds, tmp_path / "x", seed=5, overwrite=True)
    assert train.manifest["split"]["seed"] == 5
    with pytest.raises(DatasetError, match="not an mfdask dataset"):
        split_dataset(tmp_path, tmp_path / "y")


def test_user_block_frame_one_partition_per_block(client, tmp_path):
    frame = random_ratings(3)
    ds = write(frame, tmp_path / "d", npartitions=4, n_user_blocks=3)
    assert ds.ratings().npartitions > 3  # several files per block
    blocks = user_block_frame(ds)
    assert blocks.npartitions == 3
    parts = [blocks.get_partition(k).compute() for k in range(3)]
    for k, part in enumerate(parts):
        assert (part[schema.USER_IDX] % 3 == k).all()
    assert sum(map(len, parts)) == len(frame)
    # A file in the wrong block is caught, not silently mis-split.
    src = ds.ratings_path / "user_block=1"
    os.replace(next(src.iterdir()), ds.ratings_path / "user_block=2" / "stray.parquet")
    with pytest.raises(DatasetError, match="belong to block 1 of 3"):
        user_block_frame(ds).compute()


def test_split_command(client, tmp_path, capsys):
    from mfdask.cli import main

    write(random_ratings(4), tmp_path / "d")
    args = ["split", str(tmp_path / "d"), str(tmp_path / "s"), "--method", "last_n"]
    assert main([*args, "--n-last", "2", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "test:" in out
    assert open_dataset(tmp_path / "s" / "test").manifest["split"]["n_last"] == 2
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


# --- real data -------------------------------------------------------------------------


def ml1m_dataset(ml1m_dir, dest):
    """ML-1M as a canonical dataset (ids mapped to dense indices in sorted order)."""
    raw = pd.read_csv(
        ml1m_dir / "ratings.dat", sep=":", header=None, usecols=[0, 2, 4, 6], engine="c"
    )
    raw.columns = ["user_id", "item_id", "rating", "timestamp"]
    user_ids, item_ids = np.unique(raw["user_id"]), np.unique(raw["item_id"])
    frame = pd.DataFrame(
        {
            schema.USER_IDX: np.searchsorted(user_ids, raw["user_id"]),
            schema.ITEM_IDX: np.searchsorted(item_ids, raw["item_id"]),
            schema.RATING: raw["rating"],
            schema.TIMESTAMP: raw["timestamp"],
        }
    ).astype(schema.RATING_DTYPES)
    users = pd.DataFrame({schema.USER_ID: user_ids, schema.USER_IDX: np.arange(len(user_ids))})
    items = pd.DataFrame({schema.ITEM_ID: item_ids, schema.ITEM_IDX: np.arange(len(item_ids))})
    return write_dataset(dd.from_pandas(frame, npartitions=4), users, items, dest), frame


@pytest.mark.data
# The test builds ML-1M from an in-memory frame on purpose (its own id mapping), so the
# graph carries the 19 MiB frame; jobs read Parquet on the workers instead.
@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")
def test_ml1m_user_holdout_protocol(client, ml1m_dir, tmp_path):
    ds, frame = ml1m_dataset(ml1m_dir, tmp_path / "ml1m")
    assert ds.n_ratings == 1_000_209
    train, test = split_dataset(ds, tmp_path / "s", method="user_holdout", fraction=0.2)
    assert train.n_ratings + test.n_ratings == 1_000_209
    te = read_all(test)
    assert (te[schema.RATING] >= 4).all()
    positives = (frame[schema.RATING] >= 4).groupby(frame[schema.USER_IDX]).sum()
    held = te.groupby(schema.USER_IDX).size().reindex(positives.index, fill_value=0)
    np.testing.assert_array_equal(held.to_numpy(), holdout_count(positives.to_numpy(), 0.2, 5))
    # 20% of ML-1M's 575,281 positives, per user, rounded.
    assert 114_000 < test.n_ratings < 116_500


def test_writing_no_ratings_is_refused_and_leaves_nothing(client, tmp_path):
    empty = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in schema.RATING_DTYPES.items()})
    users = pd.DataFrame({"user_id": [7], "user_idx": [0]})
    items = pd.DataFrame({"item_id": [9], "item_idx": [0]})
    dest = tmp_path / "empty"
    with pytest.raises(DatasetError, match=r"no ratings to write to .*empty"):
        write_dataset(dd.from_pandas(empty, npartitions=1), users, items, dest)
    assert not dest.exists()
