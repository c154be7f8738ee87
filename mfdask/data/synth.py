"""MovieLens-shaped synthetic ratings of any size, with a planted answer to check against.

The generator writes a canonical dataset (:mod:`mfdask.data.schema`) of ``n_ratings``
ratings from 1e4 up to 1e9, one Dask task per partition, each task building its
partition from ``(spec, partition)`` alone, so the client never holds the ratings and
memory per worker is one partition (about two million ratings by default).

The model
---------
Items. Item ``i`` has a Zipf-like popularity ``p_i ∝ (rank_i + 1 + r0)^-s`` over a random
rank permutation (``s = 1.2``, ``r0 = 1.35%`` of the items). After sampling without
replacement and the cluster tilt below, at ML-1M's size the top 10% of items hold about
42% of the ratings and the top 1% about 9% (ML-1M: 44% and 9%). Each item belongs to
one of ``n_clusters`` equally sized clusters and its planted vector is the cluster centre
plus a little noise, ``q_i = c_{g(i)} + ε_i`` with ``c ~ N(0, I/f)`` and
``ε ~ N(0, spread² I/f)``: an item's nearest neighbours by planted vector are its
cluster mates, which is what similar-item quality is checked against. The ``cluster``
column of ``items.parquet`` and the titles (``"Cluster 07 item 123"``) give the truth.

Users. User activity ``n_u`` is a floor (at most 20, MovieLens' own minimum) plus a
Lomax (Pareto II, shape 2.5) share of the remaining ratings, capped and rounded so the
total is exactly ``n_ratings``: a heavy right tail like ML-1M's (median 96, max 2,314).
Each user has a favourite cluster ``f_u`` and a planted vector leaning towards its centre,
``p_u = σ (a c_{f_u} + sqrt(1 - a²) z_u)``.

Which items. User ``u`` rates ``n_u`` distinct items, drawn without replacement with
weights ``(1 - a) p_i + a p_i / m_c [c_i = f_u]`` (popularity, tilted towards the
favourite cluster; see :mod:`mfdask.kernels.synth`), so co-occurrence carries the
cluster structure too, as genres do in MovieLens.

Ratings. ``r = round(clip(μ + b_u + b_i + p_u·q_i + noise·N(0, 1), 1, 5))`` with user and
item biases (popular items a little better liked), calibrated so the histogram resembles
ML-1M's (mean about 3.57, 4 the commonest star; ML-1M: 3.58), though with fewer
1-star ratings (about 4% against 6%): the noise is Gaussian, not skewed. Timestamps fall
in a per-user active window inside ML-1M's time span (April 2000 - February 2003).

Determinism. All per-user randomness is a counter-based hash of ``(seed, user, ...)``
(:mod:`mfdask.data.hashing`) and all global arrays come from ``seed`` alone, so the
ratings depend on the seed and the sizes, not on ``n_partitions`` or on the cluster.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from mfdask.data import schema
from mfdask.data.dataset import DEFAULT_USER_BLOCKS, Dataset, write_dataset
from mfdask.data.hashing import hash_keys, hash_normal, hash_uniform
from mfdask.kernels.synth import sample_distinct_items

GENERATOR_VERSION = 1
"""Bumped whenever the same parameters would give different data."""

RATINGS_PER_PARTITION = 2_000_000
"""Target partition size of the default ``n_partitions``: bounds a worker's memory."""

ML_TIME_RANGE = (956_703_932, 1_046_454_590)
"""First and last timestamp of ML-1M (seconds since the epoch)."""

# Stream constants of the counter-based hashes (arbitrary, distinct).
_S_ITEMS, _S_COUNTS = 0x17E45, 0xC0B7
_S_FAV, _S_UVEC, _S_UBIAS = 0xFA7, 0x0FEC, 0xB1A5
_S_MIX, _S_PICK, _S_GUMBEL = 0x313, 0x91C, 0x6B1
_S_NOISE, _S_START, _S_SPAN, _S_TIME = 0x701E, 0x57A7, 0x5BA7, 0x713E


def default_shape(n_ratings: int) -> tuple[int, int]:
    """MovieLens-like ``(n_users, n_items)`` for ``n_ratings`` ratings.

    Power laws through ML-1M (1M ratings, 6,040 users, 3,706 items) and ML-20M (20M,
    138,493, 26,744): users grow as ``n^1.045``, items as ``n^0.66``. Below about 1M
    ratings that would be denser than MovieLens ever is, so both are scaled up together
    until the density is at most 5% (ML-100K: 6.3%, ML-1M: 4.5%); 1e5 ratings give about
    1,160 users and 1,720 items, near ML-100K's 943 and 1,682.
    """
    x = n_ratings / 1e6
    users = 6040.0 * x**1.045
    items = 3706.0 * x**0.66
    density = n_ratings / (users * items)
    if density > 0.05:
        scale = math.sqrt(density / 0.05)
        users, items = users * scale, items * scale
    return max(1, round(users)), max(1, round(items))


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a synthetic dataset (recorded in its manifest).

    Attributes
    ----------
    n_ratings, n_users, n_items : int
        Sizes; every user has at least one rating, items may have none.
    factors : int
        Rank ``f`` of the planted preference.
    n_clusters : int
        Item clusters (ground truth for similar items).
    noise : float
        Standard deviation of the Gaussian rating noise before rounding.
    seed : int
        Non-negative seed of every random choice.
    n_partitions : int
        Tasks and hive user blocks (``user_block = user_idx % n_partitions``).
    min_user_ratings, max_user_ratings : int
        Bounds of a user's activity.
    popularity_exponent : float
        Zipf exponent ``s`` of item popularity.
    activity_shape : float
        Lomax shape of user activity (smaller: heavier tail).
    affinity : float
        Share of a user's draws from the favourite cluster, and lean ``a`` of the user
        vector towards its centre.
    spread : float
        Item-vector noise relative to the cluster centres.
    interaction_scale : float
        Standard deviation of the planted ``p_u · q_i`` over random pairs.
    mean_rating : float
        ``μ`` before rounding.
    user_bias, item_bias : float
        Standard deviations of the user and item biases.
    """

    n_ratings: int
    n_users: int
    n_items: int
    factors: int = 8
    n_clusters: int = 20
    noise: float = 0.75
    seed: int = 0
    n_partitions: int = 1
    min_user_ratings: int = 20
    max_user_ratings: int = 1
    popularity_exponent: float = 1.2
    activity_shape: float = 2.5
    affinity: float = 0.5
    spread: float = 0.15
    interaction_scale: float = 0.6
    mean_rating: float = 3.2
    user_bias: float = 0.5
    item_bias: float = 0.35

    def to_manifest(self) -> dict[str, Any]:
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}


def make_spec(
    n_ratings: int,
    *,
    n_users: int | None = None,
    n_items: int | None = None,
    factors: int = 8,
    n_clusters: int = 20,
    noise: float = 0.75,
    seed: int = 0,
    n_partitions: int | None = None,
) -> SynthSpec:
    """Validate the parameters of :func:`synthesize` and fill in the defaults.

    Raises
    ------
    ValueError
        Naming the parameter that is out of range and what would fit.
    """
    n_ratings = int(n_ratings)
    if n_ratings < 1:
        raise ValueError(f"n_ratings must be positive, got {n_ratings}")
    du, di = default_shape(n_ratings)
    n_users = du if n_users is None else int(n_users)
    n_items = di if n_items is None else int(n_items)
    if n_users < 1 or n_items < 1:
        raise ValueError(f"n_users and n_items must be positive, got {n_users} and {n_items}")
    if n_users > np.iinfo(np.int32).max or n_items > np.iinfo(np.int32).max:
        raise ValueError("n_users and n_items must fit in int32 (the canonical index type)")
    if n_ratings < n_users:
        raise ValueError(
            f"{n_ratings} ratings cannot give each of {n_users} users one: lower --users"
        )
    if n_ratings > n_users * n_items * 0.6:
        raise ValueError(
            f"{n_ratings} ratings over {n_users} users x {n_items} items is denser than 60%: "
            f"raise --users or --items (the defaults for this size are {du} and {di})"
        )
    if factors < 1:
        raise ValueError(f"factors must be at least 1, got {factors}")
    if not 1 <= n_clusters <= n_items:
        raise ValueError(f"n_clusters must be between 1 and n_items={n_items}, got {n_clusters}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number, got {noise}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if n_partitions is None:
        n_partitions = max(DEFAULT_USER_BLOCKS, math.ceil(n_ratings / RATINGS_PER_PARTITION))
    n_partitions = int(min(n_partitions, n_users))
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be at least 1, got {n_partitions}")
    mean_activity = n_ratings / n_users
    min_user = max(1, min(20, int(mean_activity // 4)))
    # The cap leaves room for the heavy tail without users rating nearly every item.
    max_user = min(n_items, max(math.ceil(0.6 * n_items), math.ceil(2.0 * mean_activity)))
    return SynthSpec(
        n_ratings=n_ratings,
        n_users=n_users,
        n_items=n_items,
        factors=int(factors),
        n_clusters=int(n_clusters),
        noise=float(noise),
        seed=int(seed),
        n_partitions=n_partitions,
        min_user_ratings=min_user,
        max_user_ratings=max_user,
    )


# ---------------------------------------------------------------------------------------
# Global arrays: a function of the spec alone, cached per process


@dataclass(frozen=True)
class ItemModel:
    """The planted item side (all arrays indexed by ``item_idx``).

    Attributes
    ----------
    popularity : (n_items,) float64
        Normalised Zipf-like popularity ``p``.
    cluster : (n_items,) int64
    centres : (n_clusters, factors) float64
    vectors : (n_items, factors) float64
        Planted item vectors ``q``.
    bias : (n_items,) float64
    cluster_mass : (n_clusters,) float64
    cluster_keys, cluster_items : (n_items,)
        Concatenated per-cluster CDFs (see :func:`mfdask.kernels.synth.sample_distinct_items`).
    """

    popularity: np.ndarray
    cluster: np.ndarray
    centres: np.ndarray
    vectors: np.ndarray
    bias: np.ndarray
    cluster_mass: np.ndarray
    cluster_keys: np.ndarray
    cluster_items: np.ndarray


@functools.lru_cache(maxsize=4)
def item_model(spec: SynthSpec) -> ItemModel:
    """The planted items of ``spec`` (identical in every process)."""
    rng = np.random.default_rng([spec.seed, _S_ITEMS])
    n, f, c = spec.n_items, spec.factors, spec.n_clusters
    rank = rng.permutation(n)
    p = (rank + 1.0 + 0.0135 * n) ** -spec.popularity_exponent
    p /= p.sum()
    cluster = (rng.permutation(n) % c).astype(np.int64)
    centres = rng.normal(0.0, 1.0 / math.sqrt(f), (c, f))
    vectors = centres[cluster] + rng.normal(0.0, spec.spread / math.sqrt(f), (n, f))
    logp = np.log(p)
    pop_z = (logp - logp.mean()) / (logp.std() or 1.0)
    bias = spec.item_bias * rng.normal(0.0, 1.0, n) + 0.15 * pop_z
    mass = np.bincount(cluster, weights=p, minlength=c)
    order = np.argsort(cluster, kind="stable")
    sorted_cluster = cluster[order]
    within = np.cumsum(p[order] / mass[sorted_cluster])
    starts = np.flatnonzero(np.r_[True, sorted_cluster[1:] != sorted_cluster[:-1]])
    before = np.r_[0.0, within][starts]  # cumulative sum up to each cluster's start
    within = within - np.repeat(before, np.diff(np.r_[starts, n]))
    keys = sorted_cluster + within
    ends = np.r_[starts[1:], n] - 1
    keys[ends] = sorted_cluster[ends] + 1.0  # exact upper edge of each cluster's CDF
    return ItemModel(
        popularity=p,
        cluster=cluster,
        centres=centres,
        vectors=vectors,
        bias=bias,
        cluster_mass=mass,
        cluster_keys=keys,
        cluster_items=order.astype(np.int64),
    )


@functools.lru_cache(maxsize=4)
def user_counts(spec: SynthSpec) -> np.ndarray:
    """``(n_users,) int64`` ratings per user, summing to exactly ``spec.n_ratings``.

    ``min_user_ratings`` plus a Lomax-proportional share of the rest; shares above
    ``max_user_ratings`` are capped and their excess re-spread over the others
    (water-filling), then rounded by largest remainder.
    """
    rng = np.random.default_rng([spec.seed, _S_COUNTS])
    lo, hi = spec.min_user_ratings, spec.max_user_ratings
    w = rng.pareto(spec.activity_shape, spec.n_users) + 1e-3
    target = lo + (spec.n_ratings - lo * spec.n_users) * w / w.sum()
    for _ in range(200):
        over = target > hi
        if not over.any():
            break
        excess = float((target[over] - hi).sum())
        target[over] = hi
        free = target < hi
        target[free] += excess * w[free] / w[free].sum()
    counts = np.floor(target).astype(np.int64)
    short = spec.n_ratings - int(counts.sum())
    if short > 0:
        room = np.flatnonzero(counts < hi)
        frac = (target - counts)[room]
        counts[room[np.argsort(-frac, kind="stable")[:short]]] += 1
    if int(counts.sum()) != spec.n_ratings or counts.max() > hi or counts.min() < 1:
        raise ValueError(
            f"cannot spread {spec.n_ratings} ratings over {spec.n_users} users with at most "
            f"{hi} each: raise --users or --items"
        )
    return counts


def user_model(spec: SynthSpec, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planted vectors ``(n, factors)``, biases ``(n,)`` and favourite clusters ``(n,)``.

    A pure function of ``(spec.seed, user)`` for each user (counter-based hashes).
    """
    users = np.asarray(users, dtype=np.int64)
    f, a = spec.factors, spec.affinity
    im = item_model(spec)
    fav = np.minimum(
        (hash_uniform(spec.seed, _S_FAV, users) * spec.n_clusters).astype(np.int64),
        spec.n_clusters - 1,
    )
    z = hash_normal(spec.seed, _S_UVEC, users[:, None], np.arange(f)[None, :]) / math.sqrt(f)
    # E|c|^2 = E|z|^2 = 1, so the lean keeps the norm; sigma sets sd(p_u . q_i) over pairs.
    sigma = spec.interaction_scale * math.sqrt(f / (1.0 + spec.spread**2))
    vectors = sigma * (a * im.centres[fav] + math.sqrt(1.0 - a * a) * z)
    bias = spec.user_bias * hash_normal(spec.seed, _S_UBIAS, users)
    return vectors, bias, fav


def _prefix(seed: int, stream: int) -> np.uint64:
    return np.uint64(hash_keys(seed, stream)[0])


def partition_users(spec: SynthSpec, partition: int) -> np.ndarray:
    """The users of one partition: ``user_idx % n_partitions == partition``."""
    return np.arange(partition, spec.n_users, spec.n_partitions, dtype=np.int64)


def generate_partition(spec: SynthSpec, partition: int) -> pd.DataFrame:
    """The canonical ratings of one partition (all ratings of its users)."""
    im = item_model(spec)
    users = partition_users(spec, partition)
    counts = user_counts(spec)[users]
    vectors, ubias, fav = user_model(spec, users)
    items = sample_distinct_items(
        users,
        counts,
        fav,
        _prefix(spec.seed, _S_MIX),
        _prefix(spec.seed, _S_PICK),
        _prefix(spec.seed, _S_GUMBEL),
        spec.affinity,
        im.popularity,
        np.cumsum(im.popularity),
        im.cluster,
        im.cluster_mass,
        im.cluster_keys,
        im.cluster_items,
        4.0,
    )
    row = np.repeat(np.arange(len(users)), counts)
    user = users[row]
    item = items.astype(np.int64)
    score = np.einsum(
        "ij,ij->i",
        vectors.astype(np.float32)[row],
        im.vectors.astype(np.float32)[item],
    ).astype(np.float64)
    score += spec.mean_rating + ubias[row] + im.bias[item]
    score += spec.noise * hash_normal(spec.seed, _S_NOISE, user, item)
    rating = np.clip(np.floor(score + 0.5), 1.0, 5.0).astype(np.float32)
    t0, t1 = ML_TIME_RANGE
    span = t1 - t0
    start = t0 + 0.9 * span * hash_uniform(spec.seed, _S_START, users)
    active = np.minimum(t1 - start, -np.log(hash_uniform(spec.seed, _S_SPAN, users)) * span / 8)
    when = start[row] + active[row] * hash_uniform(spec.seed, _S_TIME, user, item)
    return pd.DataFrame(
        {
            schema.USER_IDX: user.astype(np.int32),
            schema.ITEM_IDX: items,
            schema.RATING: rating,
            schema.TIMESTAMP: when.astype(np.int64),
        }
    )


def _title_width(n_clusters: int) -> int:
    return max(2, len(str(n_clusters - 1)))


def items_frame(spec: SynthSpec) -> pd.DataFrame:
    """The item id map: ``item_id`` (1-based), ``item_idx``, ``title``, ``cluster``."""
    im = item_model(spec)
    idx = np.arange(spec.n_items)
    w = _title_width(spec.n_clusters)
    titles = (
        "Cluster "
        + pd.Series(im.cluster).astype(str).str.zfill(w)
        + " item "
        + pd.Series(idx + 1).astype(str)
    )
    return pd.DataFrame(
        {
            schema.ITEM_ID: idx.astype(np.int64) + 1,
            schema.ITEM_IDX: idx.astype(np.int32),
            "title": titles.to_numpy(dtype=object),
            "cluster": im.cluster.astype(np.int32),
        }
    )


def users_frame(spec: SynthSpec) -> pd.DataFrame:
    """The user id map: ``user_id`` (1-based) and ``user_idx``."""
    idx = np.arange(spec.n_users)
    return pd.DataFrame(
        {schema.USER_ID: idx.astype(np.int64) + 1, schema.USER_IDX: idx.astype(np.int32)}
    )


_META = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in schema.RATING_DTYPES.items()})


def _partition_task(partition: int, spec: SynthSpec) -> pd.DataFrame:
    return generate_partition(spec, partition)


def synthetic_ratings(spec: SynthSpec) -> dd.DataFrame:
    """The ratings of ``spec`` as a lazy Dask DataFrame, one task per partition."""
    return dd.from_map(
        _partition_task,
        range(spec.n_partitions),
        spec=spec,
        meta=_META,
        label="synth-ratings",
        enforce_metadata=False,
    )


def synthesize(
    dest: str | os.PathLike[str],
    *,
    n_ratings: int,
    n_users: int | None = None,
    n_items: int | None = None,
    factors: int = 8,
    n_clusters: int = 20,
    noise: float = 0.75,
    seed: int = 0,
    n_partitions: int | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Generate and write a synthetic canonical dataset (see the module docstring).

    Parameters
    ----------
    dest : path
        Output dataset directory, written atomically.
    n_ratings : int
        Exact number of ratings.
    n_users, n_items : int, optional
        Default: :func:`default_shape` (MovieLens-like for the size).
    factors : int
        Rank of the planted preference.
    n_clusters : int
        Item clusters.
    noise : float
        Rating noise (standard deviation, in stars, before rounding).
    seed : int
        Same seed and sizes, same data.
    n_partitions : int, optional
        Tasks and user blocks; default one per two million ratings, at least 8.
    overwrite : bool
        Replace an existing ``dest`` once the new dataset is complete.

    Returns
    -------
    Dataset
        With ``users.parquet``, ``items.parquet`` (``title``, ``cluster``) and a manifest
        whose ``synthetic`` entry records the full :class:`SynthSpec`.
    """
    spec = make_spec(
        n_ratings,
        n_users=n_users,
        n_items=n_items,
        factors=factors,
        n_clusters=n_clusters,
        noise=noise,
        seed=seed,
        n_partitions=n_partitions,
    )
    ds = write_dataset(
        synthetic_ratings(spec),
        users_frame(spec),
        items_frame(spec),
        dest,
        n_user_blocks=spec.n_partitions,
        manifest_extra={"synthetic": spec.to_manifest()},
        overwrite=overwrite,
    )
    if ds.n_ratings != spec.n_ratings:
        raise RuntimeError(
            f"the synthetic dataset in {dest} has {ds.n_ratings} ratings, not "
            f"{spec.n_ratings}: the generator is broken for these parameters"
        )
    return ds
