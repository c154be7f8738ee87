"""Open and write canonical mfdask datasets (see :mod:`mfdask.data.schema`).

Writing goes through a temporary sibling directory that is renamed into place once
complete, so a crashed job leaves either the old dataset or none, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from mfdask.data import schema
from mfdask.errors import DatasetError


@dataclass
class Dataset:
    """A canonical ratings dataset on disk.

    Attributes
    ----------
    path : Path
        The dataset directory.
    manifest : dict
        The parsed ``manifest.json`` (rows, users, items, rating range, ...).
    """

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def n_users(self) -> int:
        """Number of users in the id map (not only those with ratings here)."""
        return int(self.manifest["users"])

    @property
    def n_items(self) -> int:
        """Number of items in the id map (not only those with ratings here)."""
        return int(self.manifest["items"])

    @property
    def n_ratings(self) -> int:
        return int(self.manifest["rows"])

    @property
    def ratings_path(self) -> Path:
        return self.path / schema.RATINGS_DIR

    def ratings(self, columns: list[str] | None = None) -> dd.DataFrame:
        """The ratings as a lazy Dask DataFrame, one partition per Parquet file.

        The hive partition column ``user_block`` is dropped unless asked for.
        """
        cols = columns or list(schema.RATING_DTYPES)
        ddf = dd.read_parquet(
            str(self.ratings_path),
            columns=cols,
            engine="pyarrow",
            split_row_groups=False,
        )
        return ddf

    def users(self) -> pd.DataFrame:
        """The user id map: ``user_id`` (original) and ``user_idx`` (dense, int32)."""
        return pd.read_parquet(self.path / schema.USERS_FILE)

    def items(self) -> pd.DataFrame:
        """The item id map: ``item_id``, ``item_idx`` and ``title``/``genres`` if known."""
        return pd.read_parquet(self.path / schema.ITEMS_FILE)

    @property
    def feedback(self) -> str:
        """``"ratings"`` or ``"events"`` (manifest ``feedback``; datasets written before
        it was recorded hold ratings)."""
        return str(self.manifest.get("feedback", schema.FEEDBACK_RATINGS))

    def fingerprint(self) -> str:
        """A short hash of the id maps: models refuse datasets whose maps differ."""
        return str(self.manifest.get("id_map_fingerprint", ""))


def is_dataset(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a canonical dataset (it has a manifest)."""
    return (Path(path) / schema.MANIFEST_FILE).is_file()


def open_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Open a canonical dataset directory written by ``mfdask ingest`` or ``split``.

    Raises
    ------
    DatasetError
        If the directory, its manifest, its id maps or its ratings are missing.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset {p} does not exist: run `mfdask ingest` first")
    manifest_path = p / schema.MANIFEST_FILE
    if not manifest_path.is_file():
        raise DatasetError(
            f"{p} is not an mfdask dataset: it has no {schema.MANIFEST_FILE} "
            "(was it written by `mfdask ingest` or `mfdask split`?)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{manifest_path} is corrupt: {exc}") from exc
    version = manifest.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise DatasetError(
            f"{p} has schema version {version!r}; this mfdask reads version {schema.SCHEMA_VERSION}"
        )
    for name in (schema.USERS_FILE, schema.ITEMS_FILE, schema.RATINGS_DIR):
        if not (p / name).exists():
            raise DatasetError(f"dataset {p} is incomplete: {name} is missing")
    return Dataset(path=p, manifest=manifest)


def _id_hashes(ids: pd.Series | pd.Index) -> np.ndarray:
    """One 64-bit hash per id: of its integer value, or of its text for any other id.

    Integer ids are hashed as they are, not as text: turning ten million ids into strings
    cost more than every other step of indexing them.
    """
    index = pd.Index(ids)
    if index.dtype.kind in "iu":
        values = pd.Series(index.to_numpy(dtype=np.int64))
    else:
        values = pd.Series(index.astype(str))
    return pd.util.hash_pandas_object(values, index=False).to_numpy()


def id_map_fingerprint(user_ids: pd.Series | pd.Index, item_ids: pd.Series | pd.Index) -> str:
    """Hash the ordered original ids of users and items (dense index = position)."""
    h = _id_hashes(user_ids)
    g = _id_hashes(item_ids)
    import hashlib

    digest = hashlib.sha256()
    digest.update(h.tobytes())
    digest.update(b"|")
    digest.update(g.tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def atomic_directory(dest: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest`` that becomes ``dest`` on success.

    On an exception the temporary directory is removed and ``dest`` is untouched.
    With ``overwrite`` an existing ``dest`` is replaced only after the new one is
    complete.

    Raises
    ------
    FileExistsError
        If ``dest`` exists and ``overwrite`` is false.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(
            f"{dest} already exists: choose another destination or pass --overwrite"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def write_json_atomic(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


DEFAULT_USER_BLOCKS = 8
"""Hive partitions of a dataset's ratings (``user_block = user_idx % n``)."""


def _with_user_block(part: pd.DataFrame, n_user_blocks: int) -> pd.DataFrame:
    out = part.astype({c: t for c, t in schema.RATING_DTYPES.items() if c in part.columns})
    out[schema.USER_BLOCK] = (out[schema.USER_IDX].to_numpy() % n_user_blocks).astype("int32")
    return out


def _summarise_partition(part: pd.DataFrame) -> pd.DataFrame:
    hist = pd.Series(part[schema.RATING].to_numpy(dtype=np.float64)).value_counts(sort=False)
    return pd.DataFrame(
        {"value": hist.index.to_numpy(dtype=np.float64), "count": hist.to_numpy(dtype=np.int64)}
    )


def summarise_ratings(ratings: dd.DataFrame) -> dict[str, Any]:
    """Rows, rating range, histogram and distinct users/items with ratings (one Dask pass)."""
    hist = ratings.map_partitions(
        _summarise_partition,
        meta=pd.DataFrame(
            {"value": pd.Series([], dtype="float64"), "count": pd.Series([], dtype="int64")}
        ),
    )
    hist = hist.groupby("value")["count"].sum()
    n_users_rated = ratings[schema.USER_IDX].drop_duplicates(split_out=1).count()
    n_items_rated = ratings[schema.ITEM_IDX].drop_duplicates(split_out=1).count()
    hist, n_users_rated, n_items_rated = dd.compute(hist, n_users_rated, n_items_rated)
    return ratings_summary(
        hist.index.to_numpy(), hist.to_numpy(), int(n_users_rated), int(n_items_rated)
    )


def ratings_summary(
    values: np.ndarray, counts: np.ndarray, users_with_ratings: int, items_with_ratings: int
) -> dict[str, Any]:
    """The manifest's rating summary from a histogram (``values`` may repeat: summed here).

    Parameters
    ----------
    values, counts : array
        Rating values and how many ratings have each; pieces of several histograms may be
        concatenated.
    users_with_ratings, items_with_ratings : int
        Distinct users and items that have at least one rating.
    """
    hist = pd.Series(np.asarray(counts, dtype=np.int64), index=np.asarray(values, np.float64))
    hist = hist.groupby(level=0).sum().sort_index()
    rows = int(hist.sum())
    return {
        "rows": rows,
        "users_with_ratings": int(users_with_ratings),
        "items_with_ratings": int(items_with_ratings),
        "rating_min": float(hist.index.min()) if rows else None,
        "rating_max": float(hist.index.max()) if rows else None,
        "rating_mean": float((hist.index.to_numpy() * hist.to_numpy()).sum() / rows)
        if rows
        else None,
        "rating_histogram": {f"{v:g}": int(c) for v, c in hist.items()},
    }


def write_dataset(
    ratings: dd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    dest: str | os.PathLike[str],
    *,
    n_user_blocks: int = DEFAULT_USER_BLOCKS,
    manifest_extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    before_commit: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Dataset:
    """Write a canonical dataset atomically and return it opened.

    Parameters
    ----------
    ratings : dask DataFrame
        ``user_idx, item_idx, rating, timestamp`` (cast to the canonical dtypes here),
        written partition by partition: the client never holds it.
    users, items : pandas DataFrame
        Id maps with ``user_id, user_idx`` / ``item_id, item_idx`` (+ ``title``, ``genres``).
    dest : path
        Target directory; must not exist unless ``overwrite``.
    n_user_blocks : int
        Hive partitions ``ratings/user_block=k``.
    manifest_extra : dict
        Extra manifest fields (sources and their checksums, split parameters, ...).
    before_commit : callable, optional
        Called as ``before_commit(tmp_dir, manifest)`` once everything is written to the
        temporary directory and before it is renamed into place: it may add files (a
        quarantine, say) and manifest fields, or raise to abandon the whole write (an
        accounting check that fails, for instance), leaving ``dest`` untouched.
    """
    missing = [c for c in schema.RATING_DTYPES if c not in ratings.columns]
    if missing:
        raise DatasetError(f"cannot write a dataset without column(s) {missing}")
    ratings = ratings[list(schema.RATING_DTYPES)]
    meta = _with_user_block(ratings._meta, n_user_blocks)
    blocked = ratings.map_partitions(_with_user_block, n_user_blocks, meta=meta)

    def write_ratings(ratings_dir: Path) -> dict[str, Any]:
        blocked.to_parquet(
            str(ratings_dir),
            partition_on=[schema.USER_BLOCK],
            write_index=False,
            engine="pyarrow",
            write_metadata_file=False,
        )
        if not any(ratings_dir.rglob("*.parquet")):
            raise DatasetError(
                f"no ratings to write to {os.fspath(dest)!r}: a dataset needs at least one "
                "rating (was the input, or this part of the split, empty?)"
            )
        written = Dataset(ratings_dir.parent, {"users": 0, "items": 0, "rows": 0})
        return summarise_ratings(written.ratings())

    return write_dataset_from(
        write_ratings,
        users,
        items,
        dest,
        n_user_blocks=n_user_blocks,
        manifest_extra=manifest_extra,
        overwrite=overwrite,
        before_commit=before_commit,
    )


def write_dataset_from(
    write_ratings: Callable[[Path], dict[str, Any]],
    users: pd.DataFrame,
    items: pd.DataFrame,
    dest: str | os.PathLike[str],
    *,
    n_user_blocks: int = DEFAULT_USER_BLOCKS,
    manifest_extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    before_commit: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Dataset:
    """Write a canonical dataset atomically, its ratings written by ``write_ratings``.

    :func:`write_dataset` writes a Dask DataFrame through this; a producer that already
    holds its ratings grouped by user block (the ingest does) writes its own Parquet
    files and computes the summary on the way, saving a pass over the data.

    Parameters
    ----------
    write_ratings : callable
        ``write_ratings(ratings_dir) -> summary``: writes the ratings hive-partitioned
        under ``ratings_dir`` (``user_block=k/*.parquet``, ``user_block = user_idx %
        n_user_blocks``, the columns and dtypes of :data:`mfdask.data.schema.RATING_DTYPES`)
        and returns the summary of what it wrote, as :func:`ratings_summary` makes it.
        It runs inside the temporary directory: raising abandons the whole write.
    users, items, dest, n_user_blocks, manifest_extra, overwrite, before_commit
        As for :func:`write_dataset`.
    """
    users = users.sort_values(schema.USER_IDX).reset_index(drop=True)
    items = items.sort_values(schema.ITEM_IDX).reset_index(drop=True)
    users[schema.USER_IDX] = users[schema.USER_IDX].astype("int32")
    items[schema.ITEM_IDX] = items[schema.ITEM_IDX].astype("int32")
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        ratings_dir = tmp / schema.RATINGS_DIR
        summary = write_ratings(ratings_dir)
        users.to_parquet(tmp / schema.USERS_FILE, index=False)
        items.to_parquet(tmp / schema.ITEMS_FILE, index=False)
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "users": len(users),
            "items": len(items),
            "n_user_blocks": n_user_blocks,
            "id_map_fingerprint": id_map_fingerprint(users[schema.USER_ID], items[schema.ITEM_ID]),
            **summary,
            **(manifest_extra or {}),
        }
        if before_commit is not None:
            before_commit(tmp, manifest)
        write_json_atomic(tmp / schema.MANIFEST_FILE, manifest)
    return open_dataset(dest)
