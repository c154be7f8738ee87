"""Train/test splits of a canonical dataset: random, per-user holdout, leave-last-N-out.

Three protocols, each writing ``DEST/train`` and ``DEST/test`` as full canonical datasets
that share the input's id maps (so their id-map fingerprints are equal and a model trained
on one scores the other):

``random``
    Each rating goes to test with probability ``fraction``, independently (Bernoulli
    sampling, as Spark's ``randomSplit``): for explicit-rating evaluation (RMSE, MAE).
    The test size is Binomial(rows, fraction), not exactly ``fraction * rows``.
``user_holdout``
    The top-k protocol on MovieLens (e.g. Rendle et al. 2009, sec. 6.2; the course
    notebook): per user, hold out ``round(fraction * p)`` of the user's ``p`` positives
    (``rating >= positive_threshold``), at least one and at most ``p - 1``, chosen at
    random. All non-positive ratings stay in train, and users with fewer than
    ``min_positives`` positives keep everything in train.
``last_n``
    Leave-last-N-out by time: per user the ``n_last`` latest ratings go to test, ties in
    timestamp broken by a seeded hash; users with ``n_last`` ratings or fewer keep
    everything in train.

Determinism. The random key of a rating is a hash of ``(seed, user_idx, item_idx)``
(:mod:`mfdask.data.hashing`), never a generator advanced per partition, so the same seed
gives the same split whatever the partitioning of the input, the number of workers or
the order tasks run in. A split of a split salts the hash with its depth (recorded in the
manifest), so re-splitting a train set with the same seed still draws fresh keys.

Distribution. A canonical dataset is hive-partitioned by user block
(``user_block = user_idx % n_user_blocks``), so all ratings of a user lie in one
``user_block=k`` directory. Dask's ``read_parquet`` would give one partition per *file*,
and a block usually holds several files (one per partition of the job that wrote it), so
:func:`user_block_frame` reads each block directory as exactly one partition instead;
per-user work is then partition-local and needs no shuffle. Memory per task is one user
block, which is why large datasets are written with more blocks. Every block is checked
to hold only its own users.

Conservation. Train and test are a partition of the input by construction (one boolean
mask per row); the code also counts them before writing and checks that
``rows(train) + rows(test) == rows(input)`` on what was written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mfdask.data import schema
from mfdask.data.dataset import (
    Dataset,
    DatasetError,
    atomic_directory,
    open_dataset,
    write_dataset,
)
from mfdask.data.hashing import hash_keys, hash_uniform
from mfdask.data.implicit import is_positive, positive_cut

SPLIT_METHODS = ("random", "user_holdout", "last_n")
"""The split protocols :func:`split_dataset` knows."""

DEFAULT_MIN_POSITIVES = 5
"""Users with fewer positives keep them all in train under ``user_holdout`` (with the
default fraction 0.2, five positives is the least that rounds to one held-out item)."""

TRAIN = "train"
TEST = "test"

_STREAM_SPLIT = 0x5B117
_IS_TEST = "_is_test"
_BLOCK_DIR = re.compile(rf"^{schema.USER_BLOCK}=(\d+)$")

_RATINGS_META = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in schema.RATING_DTYPES.items()})


# ---------------------------------------------------------------------------------------
# Reading one partition per user block


def _block_dirs(ratings_path: Path) -> list[tuple[int, Path]]:
    if not ratings_path.is_dir():
        raise DatasetError(f"{ratings_path} is missing: the dataset has no ratings directory")
    found = []
    for entry in ratings_path.iterdir():
        m = _BLOCK_DIR.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), entry))
        elif not entry.name.startswith((".", "_")):
            raise DatasetError(
                f"{entry} is not a {schema.USER_BLOCK}=K directory: the ratings of a "
                "canonical dataset are hive-partitioned by user block (re-run `mfdask ingest`)"
            )
    return sorted(found)


def _read_user_block(path: str, block: int, n_user_blocks: int) -> pd.DataFrame:
    """All rating files of one ``user_block=k`` directory as one canonical frame."""
    files = sorted(str(p) for p in Path(path).iterdir() if p.suffix == ".parquet" and p.is_file())
    if not files:
        return _RATINGS_META.copy()
    table = pq.read_table(files, columns=list(schema.RATING_DTYPES))
    part = table.to_pandas().astype(schema.RATING_DTYPES)
    wrong = part[schema.USER_IDX].to_numpy() % n_user_blocks != block
    if wrong.any():
        user = int(part[schema.USER_IDX].to_numpy()[np.flatnonzero(wrong)[0]])
        raise DatasetError(
            f"{path} holds user_idx {user} (and {int(wrong.sum()) - 1} other rows) that "
            f"belong to block {user % n_user_blocks} of {n_user_blocks}: the dataset's "
            "partitioning is broken, re-write it with mfdask.data.dataset.write_dataset"
        )
    return part


def user_block_frame(dataset: Dataset) -> dd.DataFrame:
    """The ratings of ``dataset`` as a Dask DataFrame with one partition per user block.

    Unlike :meth:`Dataset.ratings` (one partition per file), every user's ratings are in
    one partition here, so per-user computations can run with ``map_partitions``.

    Raises
    ------
    DatasetError
        If the ratings directory is not laid out by user block, or a block holds a row
        of another block.
    """
    n_user_blocks = dataset.manifest.get("n_user_blocks")
    if not isinstance(n_user_blocks, int) or n_user_blocks < 1:
        raise DatasetError(
            f"{dataset.path}/{schema.MANIFEST_FILE} has no valid n_user_blocks "
            f"({n_user_blocks!r}): re-write the dataset with `mfdask ingest`"
        )
    blocks = _block_dirs(dataset.ratings_path)
    if not blocks:
        raise DatasetError(f"{dataset.ratings_path} holds no {schema.USER_BLOCK}=K directories")
    for k, path in blocks:
        if k >= n_user_blocks:
            raise DatasetError(
                f"{path} is block {k} but the manifest says n_user_blocks={n_user_blocks}"
            )
    return dd.from_map(
        _read_user_block,
        [str(p) for _, p in blocks],
        [k for k, _ in blocks],
        n_user_blocks=n_user_blocks,
        meta=_RATINGS_META,
        label="read-user-block",
        enforce_metadata=False,
    )


# ---------------------------------------------------------------------------------------
# The assignment of rows to test (NumPy, vectorised over a whole user block)


def _rank_within_groups(sorted_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For group labels sorted ascending: each row's 0-based rank in its group, and group sizes
    repeated per row."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n, dtype=np.int64) - np.repeat(starts, sizes)
    return rank, np.repeat(sizes, sizes)


def holdout_count(n_positives: np.ndarray, fraction: float, min_positives: int) -> np.ndarray:
    """Positives each user holds out under ``user_holdout``.

    ``round_half_up(fraction * p)`` clipped to ``[1, p - 1]`` for users with
    ``p >= min_positives`` positives, else 0 (``min_positives >= 2`` keeps at least one
    positive of every user in train).
    """
    p = np.asarray(n_positives, dtype=np.int64)
    k = np.floor(fraction * p + 0.5).astype(np.int64)
    k = np.minimum(np.maximum(k, 1), p - 1)
    return np.where(p >= min_positives, k, 0)


def assign_test(
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    *,
    method: str,
    fraction: float = 0.2,
    seed: int = 0,
    positive_threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD,
    min_positives: int = DEFAULT_MIN_POSITIVES,
    n_last: int = 1,
    depth: int = 0,
) -> np.ndarray:
    """``(n,) bool``: which of these ratings go to test (see the module docstring).

    The arrays must hold *all* ratings of every user they mention (a user block); the
    result does not depend on their order. ``depth`` (how many splits produced the
    input) salts the random keys, so that splitting a train set again with the same seed
    draws fresh keys: otherwise every rating left in a random split's train has a key
    above ``fraction`` and the second split's test would be empty.
    """
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    n = len(user)
    stream = _STREAM_SPLIT + int(depth)
    if method == "random":
        return hash_uniform(seed, stream, user, item) < fraction
    test = np.zeros(n, dtype=bool)
    if method == "user_holdout":
        rows = np.flatnonzero(is_positive(rating, positive_threshold))
        u = user[rows]
        key = hash_keys(seed, stream, u, item[rows])
        order = np.lexsort((key, u))  # by user, then by random key
        rank, size = _rank_within_groups(u[order])
        held = rank < holdout_count(size, fraction, min_positives)
        test[rows[order[held]]] = True
        return test
    if method == "last_n":
        key = hash_keys(seed, stream, user, item)
        ts = np.asarray(timestamp, dtype=np.int64)
        order = np.lexsort((key, -ts, user))  # by user, latest first, ties by random key
        rank, size = _rank_within_groups(user[order])
        held = (rank < n_last) & (size > n_last)
        test[order[held]] = True
        return test
    raise ValueError(f"unknown split method {method!r}; choose one of {', '.join(SPLIT_METHODS)}")


def _mark_block(part: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Sort a user block by (user, item) and add the boolean test-assignment column."""
    order = np.lexsort((part[schema.ITEM_IDX].to_numpy(), part[schema.USER_IDX].to_numpy()))
    out = part.iloc[order].reset_index(drop=True)
    out[_IS_TEST] = assign_test(
        out[schema.USER_IDX].to_numpy(),
        out[schema.ITEM_IDX].to_numpy(),
        out[schema.RATING].to_numpy(),
        out[schema.TIMESTAMP].to_numpy(),
        **params,
    )
    return out


def _count_block(part: pd.DataFrame) -> pd.DataFrame:
    test = int(part[_IS_TEST].sum())
    return pd.DataFrame({TRAIN: [len(part) - test], TEST: [test]})


def _select(part: pd.DataFrame, want_test: bool) -> pd.DataFrame:
    keep = part[_IS_TEST].to_numpy() == want_test
    return part.loc[keep, list(schema.RATING_DTYPES)]


# ---------------------------------------------------------------------------------------
# The job


def _validate(method: str, fraction: float, seed: int, min_positives: int, n_last: int) -> None:
    if method not in SPLIT_METHODS:
        raise ValueError(
            f"unknown split method {method!r}; choose one of {', '.join(SPLIT_METHODS)}"
        )
    if method in ("random", "user_holdout") and not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if method == "user_holdout" and min_positives < 2:
        raise ValueError(
            f"min_positives must be at least 2 (one positive to hold out, one to train on), "
            f"got {min_positives!r}"
        )
    if method == "last_n" and n_last < 1:
        raise ValueError(f"n_last must be at least 1, got {n_last!r}")


def split_dataset(
    dataset: Dataset | str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    method: str = "random",
    fraction: float = 0.2,
    seed: int = 0,
    positive_threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD,
    min_positives: int = DEFAULT_MIN_POSITIVES,
    n_last: int = 1,
    overwrite: bool = False,
) -> tuple[Dataset, Dataset]:
    """Split a canonical dataset into ``dest/train`` and ``dest/test``.

    Parameters
    ----------
    dataset : Dataset or path
        A canonical dataset (from ``mfdask ingest``, ``synth`` or an earlier split: a
        split of a train set gives train/validation for tuning).
    dest : path
        Output directory, written atomically; must not exist unless ``overwrite``.
    method : {"random", "user_holdout", "last_n"}
        The protocol (see the module docstring).
    fraction : float
        ``random``: probability that a rating goes to test. ``user_holdout``: share of
        each user's positives held out. Strictly between 0 and 1.
    seed : int
        Non-negative; the same seed gives the same split of the same data.
    positive_threshold : float
        ``user_holdout``: smallest rating that is a positive.
    min_positives : int
        ``user_holdout``: users with fewer positives keep all ratings in train (>= 2).
    n_last : int
        ``last_n``: latest ratings per user held out.
    overwrite : bool
        Replace an existing ``dest`` (only once the new split is complete).

    Returns
    -------
    (train, test) : tuple of Dataset
        Both with the input's id maps, ``n_user_blocks`` and a ``split`` manifest entry
        recording the method, its parameters, the source and the row counts.

    Raises
    ------
    ValueError
        For bad parameters, or a split that leaves train or test empty.
    DatasetError
        If the input is not a canonical dataset, or the row counts do not add up.
    FileExistsError
        If ``dest`` exists and ``overwrite`` is false.
    """
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    # Ratings: the threshold given; events: every event with weight > 0 is a positive.
    positive_threshold = positive_cut(ds.feedback, positive_threshold)
    fraction = float(fraction)
    _validate(method, fraction, seed, min_positives, n_last)
    dest = Path(dest)
    src, out = ds.path.resolve(), dest.resolve()
    if out == src or src in out.parents or out in src.parents:
        raise ValueError(
            f"the split destination {dest} overlaps the dataset {ds.path}: choose a "
            "directory outside it"
        )
    if dest.exists() and not overwrite:
        raise FileExistsError(
            f"{dest} already exists: choose another destination or pass --overwrite"
        )

    parent = ds.manifest.get("split")
    depth = int(parent.get("depth", 0)) + 1 if isinstance(parent, dict) else 0
    params: dict[str, Any] = {"method": method, "seed": int(seed), "depth": depth}
    if method in ("random", "user_holdout"):
        params["fraction"] = fraction
    if method == "user_holdout":
        params["positive_threshold"] = positive_threshold
        params["min_positives"] = int(min_positives)
    if method == "last_n":
        params["n_last"] = int(n_last)

    marked = user_block_frame(ds).map_partitions(
        _mark_block,
        params,
        meta=_RATINGS_META.assign(**{_IS_TEST: pd.Series([], dtype=bool)}),
    )
    counts = marked.map_partitions(
        _count_block,
        meta=pd.DataFrame(
            {TRAIN: pd.Series([], dtype="int64"), TEST: pd.Series([], dtype="int64")}
        ),
    )
    totals = counts.sum().compute()
    n_train, n_test = int(totals[TRAIN]), int(totals[TEST])
    if n_train + n_test != ds.n_ratings:
        raise DatasetError(
            f"{ds.path} reads as {n_train + n_test} ratings but its manifest says "
            f"{ds.n_ratings}: the dataset is damaged; re-write it"
        )
    for name, n in ((TRAIN, n_train), (TEST, n_test)):
        if n == 0:
            raise ValueError(
                f"the {method} split of {ds.path} ({ds.n_ratings} ratings) leaves {name} "
                "empty: "
                + (
                    "lower --min-positives, lower --positive-threshold or raise --fraction"
                    if method == "user_holdout"
                    else "lower --n-last or use a dataset whose users have more ratings"
                    if method == "last_n"
                    else "change --fraction or use more data"
                )
            )

    users, items = ds.users(), ds.items()
    provenance = {
        "source": str(ds.path.resolve()),
        "source_rows": ds.n_ratings,
        "source_fingerprint": ds.fingerprint(),
        "source_split": ds.manifest.get("split"),
        "train_rows": n_train,
        "test_rows": n_test,
    }
    carried: dict[str, Any] = {
        k: ds.manifest[k] for k in ("sources", "synthetic", "feedback") if k in ds.manifest
    }
    n_user_blocks = int(ds.manifest["n_user_blocks"])
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        for name, want_test in ((TRAIN, False), (TEST, True)):
            part = marked.map_partitions(_select, want_test, meta=_RATINGS_META)
            written = write_dataset(
                part,
                users,
                items,
                tmp / name,
                n_user_blocks=n_user_blocks,
                manifest_extra={**carried, "split": {**params, "part": name, **provenance}},
            )
            expected = n_test if want_test else n_train
            if written.n_ratings != expected:
                raise DatasetError(
                    f"writing {name} of the split of {ds.path} gave {written.n_ratings} rows "
                    f"instead of {expected}: nothing was written to {dest}"
                )
    train, test = open_dataset(dest / TRAIN), open_dataset(dest / TEST)
    if train.n_ratings + test.n_ratings != ds.n_ratings:
        raise DatasetError(f"the split in {dest} does not add up to the {ds.n_ratings} input rows")
    return train, test
