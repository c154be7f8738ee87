"""Synthetic data: sizes, uniqueness, shape, determinism and the planted clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfdask.data import schema
from mfdask.data.hashing import hash_keys, hash_uniform
from mfdask.data.synth import (
    ML_TIME_RANGE,
    default_shape,
    generate_partition,
    item_model,
    make_spec,
    synthesize,
    user_counts,
)
from mfdask.kernels.synth import sample_distinct_items

COLS = list(schema.RATING_DTYPES)


def frame_of(spec) -> pd.DataFrame:
    parts = [generate_partition(spec, p) for p in range(spec.n_partitions)]
    out = pd.concat(parts).sort_values([schema.USER_IDX, schema.ITEM_IDX])
    return out.reset_index(drop=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory, client):
    dest = tmp_path_factory.mktemp("synth") / "d"
    return synthesize(dest, n_ratings=30_000, n_partitions=3, seed=11)


def test_dataset_counts_maps_and_values(small):
    spec = make_spec(30_000, n_partitions=3, seed=11)
    assert small.n_ratings == 30_000
    assert (small.n_users, small.n_items) == (spec.n_users, spec.n_items)
    assert small.manifest["synthetic"]["seed"] == 11
    assert small.manifest["n_user_blocks"] == 3
    ratings = pd.read_parquet(small.ratings_path, columns=COLS)
    assert len(ratings) == 30_000
    assert not ratings.duplicated([schema.USER_IDX, schema.ITEM_IDX]).any()
    assert set(np.unique(ratings[schema.RATING])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ratings[schema.USER_IDX].nunique() == spec.n_users  # every user rates something
    assert ratings[schema.ITEM_IDX].between(0, spec.n_items - 1).all()
    assert ratings[schema.TIMESTAMP].between(*ML_TIME_RANGE).all()
    items = small.items()
    assert items["cluster"].between(0, spec.n_clusters - 1).all()
    assert np.bincount(items["cluster"]).min() >= spec.n_items // spec.n_clusters
    expected = [
        f"Cluster {c:02d} item {i}" for c, i in zip(items["cluster"], items["item_id"], strict=True)
    ]
    assert items["title"].tolist() == expected
    assert small.users()[schema.USER_ID].tolist() == list(range(1, spec.n_users + 1))


def test_movielens_like_shape():
    spec = make_spec(400_000, n_partitions=4)
    frame = frame_of(spec)
    item_counts = np.sort(np.bincount(frame[schema.ITEM_IDX], minlength=spec.n_items))[::-1]
    top10 = item_counts[: spec.n_items // 10].sum() / len(frame)
    assert 0.30 < top10 < 0.60, top10  # ML-1M: 0.44
    user_counts_ = np.sort(np.bincount(frame[schema.USER_IDX]))[::-1]
    assert user_counts_[: spec.n_users // 10].sum() / len(frame) > 0.25  # ML-1M: 0.38
    assert np.median(user_counts_) < user_counts_.mean()  # right-skewed activity
    assert user_counts_.min() >= spec.min_user_ratings
    hist = frame[schema.RATING].value_counts(normalize=True)
    assert 3.3 < frame[schema.RATING].mean() < 3.8  # ML-1M: 3.58
    assert hist.idxmax() == 4.0 and hist[1.0] > 0.01


def test_deterministic_by_seed_and_independent_of_partitions():
    spec = make_spec(20_000, n_partitions=2, seed=5)
    a = frame_of(spec)
    pd.testing.assert_frame_equal(a, frame_of(make_spec(20_000, n_partitions=2, seed=5)))
    pd.testing.assert_frame_equal(a, frame_of(make_spec(20_000, n_partitions=7, seed=5)))
    b = frame_of(make_spec(20_000, n_partitions=2, seed=6))
    assert len(b) == len(a) and not a.equals(b)


def test_planted_neighbours_share_a_cluster():
    spec = make_spec(200_000, n_clusters=20, seed=3)
    im = item_model(spec)
    q = im.vectors / np.linalg.norm(im.vectors, axis=1, keepdims=True)
    sims = q @ q.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :10]
    same = (im.cluster[top] == im.cluster[:, None]).mean()
    assert same > 0.95, same


def test_users_rate_their_favourite_cluster_higher():
    spec = make_spec(100_000, n_partitions=1, seed=2)
    frame = generate_partition(spec, 0)
    from mfdask.data.synth import user_model

    _, _, fav = user_model(spec, np.arange(spec.n_users))
    in_fav = item_model(spec).cluster[frame[schema.ITEM_IDX]] == fav[frame[schema.USER_IDX]]
    # Popularity alone would put 1/20 of the ratings in the favourite cluster; the tilt
    # (affinity 0.5, limited by the cluster running out of items for heavy users) more.
    assert in_fav.mean() > 3 / spec.n_clusters
    assert frame[schema.RATING][in_fav].mean() > frame[schema.RATING][~in_fav].mean() + 0.5


def test_user_counts_sum_and_bounds():
    for n in (10_000, 1_000_000):
        spec = make_spec(n)
        counts = user_counts(spec)
        assert counts.sum() == n
        assert counts.min() >= spec.min_user_ratings and counts.max() <= spec.max_user_ratings


def test_default_shape_is_movielens_like():
    assert default_shape(1_000_000) == (6040, 3706)
    users, items = default_shape(20_000_000)
    assert abs(users - 138_493) / 138_493 < 0.05 and abs(items - 26_744) / 26_744 < 0.05
    for n in (10**4, 10**5, 10**7, 10**9):
        users, items = default_shape(n)
        assert n / (users * items) <= 0.0501
        assert 20 <= n / users <= 400


def _successive_sampling_twin(seed, user, k, fav, im, affinity, budget_factor):
    """Slow, obvious twin of the kernel for one user (same hashes, same rules)."""
    n = len(im.popularity)
    cdf = np.cumsum(im.popularity)
    taken: list[int] = []
    budget = int(budget_factor * k) + 16
    j = 0
    while len(taken) < k and j < budget:
        x = hash_uniform(seed, 0x91C, user, j)[0]
        if hash_uniform(seed, 0x313, user, j)[0] < affinity:
            members = np.flatnonzero(im.cluster == fav)
            w = np.cumsum(im.popularity[members]) / im.cluster_mass[fav]
            item = members[min(np.searchsorted(w, x, side="right"), len(members) - 1)]
        else:
            item = min(np.searchsorted(cdf, x * cdf[-1], side="right"), n - 1)
        j += 1
        if item not in taken:
            taken.append(int(item))
    if len(taken) < k:
        w = (1 - affinity) * im.popularity + affinity * im.popularity / im.cluster_mass[fav] * (
            im.cluster == fav
        )
        g = -np.log(-np.log(hash_uniform(seed, 0x6B1, user, np.arange(n))))
        key = np.log(w) + g
        key[taken] = -np.inf
        taken += np.argsort(-key, kind="stable")[: k - len(taken)].tolist()
    return taken


@pytest.mark.parametrize("budget_factor", [4.0, 0.0])
def test_kernel_matches_slow_twin(budget_factor):
    spec = make_spec(10_000, n_items=300, n_users=100, n_clusters=6, seed=9)
    im = item_model(spec)
    users = np.array([0, 5, 17, 42], dtype=np.int64)
    counts = np.array([1, 30, 150, 290], dtype=np.int64)  # the last nearly every item
    fav = np.array([0, 3, 5, 2], dtype=np.int64)
    prefixes = [np.uint64(hash_keys(spec.seed, s)[0]) for s in (0x313, 0x91C, 0x6B1)]
    out = sample_distinct_items(
        users,
        counts,
        fav,
        *prefixes,
        0.5,
        im.popularity,
        np.cumsum(im.popularity),
        im.cluster,
        im.cluster_mass,
        im.cluster_keys,
        im.cluster_items,
        budget_factor,
    )
    bounds = np.r_[0, np.cumsum(counts)]
    for r, u in enumerate(users):
        got = out[bounds[r] : bounds[r + 1]]
        assert len(set(got.tolist())) == counts[r]
        twin = _successive_sampling_twin(spec.seed, u, counts[r], fav[r], im, 0.5, budget_factor)
        if budget_factor > 0:
            assert got.tolist() == twin
        else:  # pure Gumbel-top-k: the same set (argsort ties may order differently)
            assert sorted(got.tolist()) == sorted(twin)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_ratings": 0}, "n_ratings must be positive"),
        ({"n_ratings": 100, "n_users": 200}, "cannot give each of 200 users one"),
        ({"n_ratings": 10_000, "n_users": 20, "n_items": 30}, "denser than 60%"),
        ({"n_ratings": 10_000, "n_clusters": 10_000}, "n_clusters must be between 1"),
        ({"n_ratings": 10_000, "seed": -1}, "seed must be a non-negative integer"),
        ({"n_ratings": 10_000, "noise": float("nan")}, "noise must be a non-negative number"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_spec(**kwargs)


def test_synth_command(client, tmp_path, capsys):
    from mfdask.cli import main

    dest = tmp_path / "s"
    assert main(["synth", str(dest), "--ratings", "1e4", "--partitions", "2", "--seed", "4"]) == 0
    assert "10,000 ratings" in capsys.readouterr().out
    assert main(["synth", str(dest), "--ratings", "1e4"]) == 2
    assert "already exists" in capsys.readouterr().err
