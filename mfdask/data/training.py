"""Turn whatever a user passes to ``fit`` into dense-indexed ratings plus id maps.

``fit`` accepts a canonical dataset path (or :class:`~mfdask.data.dataset.Dataset`), a
pandas DataFrame or a Dask DataFrame in original ids, holding one of two kinds of
feedback (:attr:`TrainingData.feedback`):

- **ratings**: ``user_id, item_id, rating``; one row per (user, item) pair;
- **events**: ``user_id, item_id, weight`` and no ``rating`` column (a play count, a
  purchase quantity, a duration: any scale, finite and ``>= 0``), or just ``user_id,
  item_id`` (an event list: one row is one event of weight 1). Repeated (user, item)
  pairs are folded into one row with their total weight (their count for an event
  list), as ``mfdask ingest --duplicates sum`` does. Every event with weight > 0 is a
  positive; ``positive_threshold`` applies to ratings only.

Everything becomes values in dense indices (``user_idx, item_idx, rating``: for events
the ``rating`` column holds the folded weight) plus the ordered original ids:

- a dataset or a Dask DataFrame becomes a lazy Dask DataFrame: the ratings never pass
  through the client;
- a pandas DataFrame is already in the client's memory: it is indexed there and kept as
  :class:`LocalRatings`, which the engines place by scattering pieces of it to the
  workers (:func:`mfdask.engine.blocks.persist_partitions`) rather than by embedding it
  in a task graph, and scatter again should a worker holding a piece be lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from mfdask.data import schema
from mfdask.data.dataset import Dataset, id_map_fingerprint, is_dataset, open_dataset
from mfdask.errors import InputError, UnknownIdError


@dataclass(frozen=True)
class LocalRatings:
    """Dense-indexed ratings held by the client (a pandas DataFrame given to ``fit``).

    Attributes
    ----------
    frame : pandas.DataFrame
        Columns ``user_idx:int32, item_idx:int32, rating:float32``.
    piece_rows : int
        Rows per piece scattered to the workers.
    """

    frame: pd.DataFrame
    piece_rows: int = 1_000_000

    def __len__(self) -> int:
        return len(self.frame)

    def pieces(self) -> list[pd.DataFrame]:
        """The frame cut into pieces of at most ``piece_rows`` rows (at least one)."""
        n = len(self.frame)
        bounds = range(0, max(n, 1), self.piece_rows)
        return [self.frame.iloc[a : a + self.piece_rows].reset_index(drop=True) for a in bounds]


Ratings = dd.DataFrame | LocalRatings
"""What :class:`TrainingData` holds and the engines place on the workers."""


def map_ratings(ratings: Ratings, func: Callable[..., pd.DataFrame], *args: Any) -> Ratings:
    """``func(frame, *args)`` applied to every partition (to the frame of local ratings);
    ``func`` keeps the columns of :data:`RATINGS_META`."""
    if isinstance(ratings, LocalRatings):
        return LocalRatings(func(ratings.frame, *args), ratings.piece_rows)
    return ratings.map_partitions(func, *args, meta=RATINGS_META)


def count_ratings(ratings: Ratings) -> int:
    """Number of ratings (computed on the workers for a Dask DataFrame)."""
    if isinstance(ratings, LocalRatings):
        return len(ratings)
    return int(ratings.map_partitions(len).sum().compute())


@dataclass
class TrainingData:
    """Dense-indexed ratings and the id maps that give them meaning.

    Attributes
    ----------
    ratings : dask.dataframe.DataFrame or LocalRatings
        Columns ``user_idx:int32, item_idx:int32, rating:float32``.
    user_ids, item_ids : pandas.Index
        Original ids; position = dense index.
    items : pandas.DataFrame or None
        Item metadata (``item_id, item_idx, title, genres``) when the source has it.
    fingerprint : str
        Hash of the id maps (see :func:`~mfdask.data.dataset.id_map_fingerprint`).
    source : str
        A human description of where the data came from, for error messages.
    """

    ratings: Ratings
    user_ids: pd.Index
    item_ids: pd.Index
    items: pd.DataFrame | None
    fingerprint: str
    source: str
    feedback: str = schema.FEEDBACK_RATINGS
    """``"ratings"`` or ``"events"`` (see the module docstring)."""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _from_dataset(ds: Dataset) -> TrainingData:
    users = ds.users().sort_values(schema.USER_IDX)
    items = ds.items().sort_values(schema.ITEM_IDX)
    ratings = ds.ratings([schema.USER_IDX, schema.ITEM_IDX, schema.RATING])
    ratings = _check_dataset(ds, ratings)
    return TrainingData(
        ratings=ratings,
        user_ids=pd.Index(users[schema.USER_ID].to_numpy(), name=schema.USER_ID),
        item_ids=pd.Index(items[schema.ITEM_ID].to_numpy(), name=schema.ITEM_ID),
        items=items.reset_index(drop=True),
        fingerprint=ds.fingerprint()
        or id_map_fingerprint(users[schema.USER_ID], items[schema.ITEM_ID]),
        source=str(ds.path),
        feedback=ds.feedback,
    )


def _check_dataset(ds: Dataset, ratings: dd.DataFrame) -> dd.DataFrame:
    """Refuse an empty dataset at once; check every rating as the workers read it.

    An ingested dataset was validated row by row when it was written, so its values are
    not read twice: each partition is checked on the worker that reads it for placement
    (fused with the read), and a non-finite rating (a file changed since) stops the fit
    there, naming the row by its dense indices.
    """
    source = f"training dataset {ds.path}"
    if int(ds.manifest.get("rows", 1)) == 0:
        check_values(_REPORT_META, source)  # raises: empty
    return ratings.map_partitions(_checked_partition, source, meta=ratings._meta)


def _checked_partition(part: pd.DataFrame, source: str, partition_info=None) -> pd.DataFrame:
    report = _value_report(part, schema.USER_IDX, schema.ITEM_IDX, -1)
    if int(report["bad_rows"].iloc[0]):
        number = -1 if partition_info is None else int(partition_info["number"])
        report["partition"] = number
        try:
            check_values(report, source)
        except InputError as exc:
            raise InputError(
                str(exc).replace("user_id=", "user_idx=").replace("item_id=", "item_idx=")
                + " (the dataset was validated when it was written: was a file changed?)"
            ) from None
    return part


def _plain(value: object) -> object:
    """A NumPy scalar as the Python value it holds (for messages), anything else as is."""
    return value.item() if isinstance(value, np.generic) else value


def as_id_type(values: pd.Index, index: pd.Index, what: str) -> pd.Index:
    """``values`` cast to the id type of ``index`` (a model's id map), or
    :class:`~mfdask.errors.UnknownIdError` naming the first few that cannot be."""
    if not len(values) or values.dtype == index.dtype:
        return values
    try:
        return values.astype(index.dtype)
    except (TypeError, ValueError) as exc:
        raise UnknownIdError(
            f"{what} {list(values[:5])} are not of the model's id type {index.dtype}"
        ) from exc


LOOKUP_SPAN = 1 << 20
"""Integer ids spanning fewer values than this (or than four times the values looked up)
are mapped through a table indexed by id (8 bytes per value of the span)."""


def dense_index(ids: pd.Index, values: pd.Series) -> np.ndarray:
    """Positions of ``values`` in the sorted unique ``ids`` (-1 where absent).

    Integer ids of a span no longer than :data:`LOOKUP_SPAN` or four times the values
    (MovieLens' 1..6040, any dense numbering) are looked up in a table indexed by id, in
    one pass; other numeric ids by a binary search: no hash table of every id is built
    per partition, which for ten million users costs more time and memory than the
    partition itself.
    """
    if ids.dtype.kind == "i" and values.dtype.kind == "i" and len(ids) and len(values):
        sorted_ids = ids.to_numpy(dtype=np.int64)
        lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
        if hi - lo < max(LOOKUP_SPAN, 4 * len(values)):
            table = np.full(hi - lo + 1, -1, dtype=np.int64)
            table[sorted_ids - lo] = np.arange(len(sorted_ids))
            v = values.to_numpy(dtype=np.int64)
            inside = (v >= lo) & (v <= hi)
            if inside.all():
                return table[v - lo]
            pos = np.full(len(v), -1, dtype=np.int64)
            pos[inside] = table[v[inside] - lo]
            return pos
    if ids.dtype.kind in "iuf" and values.dtype.kind in "iuf":
        sorted_ids = ids.to_numpy()
        v = values.to_numpy()
        # Searching the values in ascending order walks the ids forward (NumPy narrows
        # each search from the last one): several times faster than searching them in
        # their own order when the ids far outgrow the caches.
        order = np.argsort(v, kind="stable")
        pos = np.empty(len(v), dtype=np.int64)
        pos[order] = np.searchsorted(sorted_ids, v[order])
        found = pos < len(sorted_ids)
        found[found] = sorted_ids[pos[found]] == v[found]
        return np.where(found, pos, -1)
    return ids.get_indexer(values)


def _index_partition(part: pd.DataFrame, user_ids: pd.Index, item_ids: pd.Index) -> pd.DataFrame:
    """Map one partition's original ids to dense indices (module level: picklable).

    The values were checked by :func:`check_values` before: a row that is still not
    finite here (a source that changed between the two reads) is refused all the same.
    """
    u = dense_index(user_ids, part[schema.USER_ID])
    i = dense_index(item_ids, part[schema.ITEM_ID])
    rating = pd.to_numeric(part[schema.RATING], errors="coerce").to_numpy(dtype="float64")
    if not np.isfinite(rating).all():
        row = int(np.flatnonzero(~np.isfinite(rating))[0])
        user, item = (_plain(part[col].iloc[row]) for col in (schema.USER_ID, schema.ITEM_ID))
        raise InputError(
            f"{_describe_value(part[schema.RATING].iloc[row], schema.RATING)} for "
            f"user_id={user!r}, item_id={item!r}"
        )
    return pd.DataFrame(
        {
            schema.USER_IDX: u.astype("int32"),
            schema.ITEM_IDX: i.astype("int32"),
            schema.RATING: rating.astype("float32"),
        }
    )


# ---------------------------------------------------------------------- value checks
VALUE_COLUMNS = (schema.RATING, "weight")
"""Columns whose every value must be a finite number (``weight`` where the input has one)."""

_REPORT_META = pd.DataFrame(
    {
        "partition": pd.Series([], dtype="int64"),
        "rows": pd.Series([], dtype="int64"),
        "bad_rows": pd.Series([], dtype="int64"),
        "position": pd.Series([], dtype="int64"),
        "user": pd.Series([], dtype="object"),
        "item": pd.Series([], dtype="object"),
        "problem": pd.Series([], dtype="object"),
    }
)


def _describe_value(value: object, column: str) -> str:
    """What is wrong with a value that is not a finite number, as a message fragment."""
    value = _plain(value)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return f"{column} is missing (NaN/None)"
    if isinstance(value, (int, float)):
        return f"{column} is {value!r}, not a finite number"
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if pd.isna(number):
        return f"{column} {value!r} is not a number"
    return f"{column} is {value!r}, not a finite number"


def _value_report(
    part: pd.DataFrame,
    user_col: str | None,
    item_col: str | None,
    partition: int,
    nonnegative: tuple[str, ...] = (),
) -> pd.DataFrame:
    """One row: how many rows ``part`` has, how many hold a bad value, the first.

    A bad value is one that is not a finite number, or a negative one in a column of
    ``nonnegative`` (an event weight). ``user_col`` / ``item_col`` name the id columns
    quoted for the first bad row (None: the ids are looked up afterwards).
    """
    bad = np.zeros(len(part), dtype=bool)
    columns = [c for c in VALUE_COLUMNS if c in part.columns]
    finite = {}
    negative = {}
    for col in columns:
        values = pd.to_numeric(part[col], errors="coerce").to_numpy(dtype="float64")
        finite[col] = np.isfinite(values)
        bad |= ~finite[col]
        if col in nonnegative:
            negative[col] = finite[col] & (values < 0)
            bad |= negative[col]
    report: dict[str, object] = {
        "partition": partition,
        "rows": len(part),
        "bad_rows": int(bad.sum()),
    }
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = next(c for c in columns if not finite[c][row] or (c in negative and negative[c][row]))
        if finite[col][row]:
            problem = (
                f"{col} is {_plain(part[col].iloc[row])!r}, negative: an event weight is a "
                "count or a strength >= 0"
            )
        else:
            problem = _describe_value(part[col].iloc[row], col)
        report.update(
            position=row,
            user="" if user_col is None else repr(_plain(part[user_col].iloc[row])),
            item="" if item_col is None else repr(_plain(part[item_col].iloc[row])),
            problem=problem,
        )
    else:
        report.update(position=-1, user="", item="", problem="")
    return pd.DataFrame({k: [v] for k, v in report.items()}).astype(_REPORT_META.dtypes)


def _partition_report(
    part: pd.DataFrame,
    user_col: str | None,
    item_col: str | None,
    nonnegative: tuple[str, ...] = (),
    partition_info: dict | None = None,
) -> pd.DataFrame:
    number = -1 if partition_info is None else int(partition_info["number"])
    return _value_report(part, user_col, item_col, number, nonnegative)


def value_report(
    frame: pd.DataFrame | dd.DataFrame,
    user_col: str,
    item_col: str,
    nonnegative: tuple[str, ...] = (),
) -> Any:
    """Rows and bad values of ``frame``, one report row per partition (see
    :func:`_value_report`; ``nonnegative`` names columns that must also be ``>= 0``).

    A Dask frame's report is lazy (one small task per partition, run on the workers next
    to the data, so it can share a pass over the data with other computations); a pandas
    frame's is computed here.
    """
    columns = [user_col, item_col] + [c for c in VALUE_COLUMNS if c in frame.columns]
    if isinstance(frame, dd.DataFrame):
        return frame[columns].map_partitions(
            _partition_report, user_col, item_col, nonnegative, meta=_REPORT_META
        )
    return _value_report(frame[columns], user_col, item_col, -1, nonnegative)


def check_values(
    report: pd.DataFrame,
    source: str,
    index: pd.Index | None = None,
    ids: tuple[pd.Index, pd.Index] | None = None,
) -> int:
    """Raise :class:`InputError` for an empty input or its first non-finite value.

    Parameters
    ----------
    report : pandas.DataFrame
        :func:`value_report`'s rows, computed.
    source : str
        What the data is, for the message ("the training DataFrame").
    index : pandas.Index, optional
        A pandas frame's row labels, to name the row by its label.
    ids : (user_ids, item_ids), optional
        Original ids by dense index, when the report names dense indices (a dataset).

    Returns
    -------
    int
        The number of rows.
    """
    rows = int(report["rows"].sum())
    if rows == 0:
        raise InputError(
            f"{source} is empty: it has no ratings (0 rows); "
            "check the path, filter or split that produced it"
        )
    bad = report[report["bad_rows"] > 0]
    if bad.empty:
        return rows
    first = bad.sort_values("partition").iloc[0]
    position = int(first["position"])
    if index is not None:
        where = f"row {_plain(index[position])!r}"
    elif int(first["partition"]) >= 0:
        where = f"partition {int(first['partition'])}, row {position}"
    else:
        where = f"row {position}"
    user, item = first["user"], first["item"]
    if ids is not None:
        user, item = repr(_plain(ids[0][int(user)])), repr(_plain(ids[1][int(item)]))
    n_bad = int(report["bad_rows"].sum())
    raise InputError(
        f"{source}, {where} (user_id={user}, item_id={item}): "
        + (
            f"{first['problem']}; fix or drop the row ({n_bad} of {rows} rows have a "
            "negative or non-finite weight)"
            if "negative" in str(first["problem"])
            else f"{first['problem']}; ratings and weights must be finite numbers: fix or "
            f"drop the row ({n_bad} of {rows} rows have a value that is not finite)"
        )
    )


RATINGS_META = pd.DataFrame(
    {
        schema.USER_IDX: pd.Series([], dtype="int32"),
        schema.ITEM_IDX: pd.Series([], dtype="int32"),
        schema.RATING: pd.Series([], dtype="float32"),
    }
)


def frame_feedback(columns: Any, what: str = "training") -> str:
    """``"ratings"`` for a frame with a ``rating`` column, else ``"events"`` (see the
    module docstring); a frame without ``user_id`` and ``item_id`` is refused."""
    missing = [c for c in (schema.USER_ID, schema.ITEM_ID) if c not in columns]
    if missing:
        raise InputError(
            f"{what} data is missing column(s) {missing}; it has {list(columns)} (expected "
            "user_id, item_id in original ids with rating (ratings), or with weight or "
            "nothing more (events))"
        )
    return schema.FEEDBACK_RATINGS if schema.RATING in columns else schema.FEEDBACK_EVENTS


def _fold_partition(part: pd.DataFrame) -> pd.DataFrame:
    """Repeated (user, item) pairs of one frame as one row with their total weight."""
    if not part[[schema.USER_ID, schema.ITEM_ID]].duplicated().any():
        return part
    return part.groupby([schema.USER_ID, schema.ITEM_ID], sort=False, as_index=False)[
        schema.WEIGHT
    ].sum()


def fold_events(frame: pd.DataFrame | dd.DataFrame) -> pd.DataFrame | dd.DataFrame:
    """``user_id, item_id, weight`` with repeated pairs summed (an event list without a
    weight column counts its rows). A Dask frame is folded by one hash shuffle on the
    pair, into as many partitions as it had (lazy)."""
    cols = [schema.USER_ID, schema.ITEM_ID]
    if schema.WEIGHT in frame.columns:
        events = frame[[*cols, schema.WEIGHT]]
        events = events.astype({schema.WEIGHT: "float64"})
    else:
        events = frame[cols].assign(**{schema.WEIGHT: 1.0})
    if isinstance(events, dd.DataFrame):
        return (
            events.groupby(cols, sort=False)
            .agg({schema.WEIGHT: "sum"}, split_out=max(1, events.npartitions))
            .reset_index()
        )
    return _fold_partition(events.reset_index(drop=True))


def _from_frame(frame: pd.DataFrame | dd.DataFrame) -> TrainingData:
    feedback = frame_feedback(frame.columns)
    events = feedback == schema.FEEDBACK_EVENTS
    nonnegative = (schema.WEIGHT,) if events else ()
    if isinstance(frame, dd.DataFrame):
        cols = frame[[schema.USER_ID, schema.ITEM_ID]]
        # The distinct ids are small (users + items), unlike the ratings: fine on the client.
        user_unique = cols[schema.USER_ID].drop_duplicates(split_out=1)
        item_unique = cols[schema.ITEM_ID].drop_duplicates(split_out=1)
        # The check of the values shares the pass: one small report per partition.
        report = value_report(frame, schema.USER_ID, schema.ITEM_ID, nonnegative)
        user_unique, item_unique, report = dd.compute(user_unique, item_unique, report)
        check_values(report, "the training Dask DataFrame")
    else:  # already on the client
        report = value_report(frame, schema.USER_ID, schema.ITEM_ID, nonnegative)
        check_values(report, "the training DataFrame", index=frame.index)
        user_unique = frame[schema.USER_ID].drop_duplicates()
        item_unique = frame[schema.ITEM_ID].drop_duplicates()
    for name, values in ((schema.USER_ID, user_unique), (schema.ITEM_ID, item_unique)):
        if pd.isna(values).any():
            raise InputError(f"column {name} has missing ids (NaN/None)")
    user_ids = pd.Index(np.sort(user_unique.to_numpy()), name=schema.USER_ID)
    item_ids = pd.Index(np.sort(item_unique.to_numpy()), name=schema.ITEM_ID)
    if events:  # checked above in the rows as given; folded, the weight is the value
        frame = fold_events(frame).rename(columns={schema.WEIGHT: schema.RATING})
    if isinstance(frame, dd.DataFrame):
        # The id maps enter the graph once, as keys every partition's task depends on
        # (sent to each worker once), not as literals copied into every task.
        ratings = frame.map_partitions(
            _index_partition,
            dask.delayed(user_ids, pure=True),
            dask.delayed(item_ids, pure=True),
            meta=RATINGS_META,
        )
    else:
        ratings = LocalRatings(_index_partition(frame, user_ids, item_ids))
    return TrainingData(
        ratings=ratings,
        user_ids=user_ids,
        item_ids=item_ids,
        items=None,
        fingerprint=id_map_fingerprint(user_ids, item_ids),
        source="DataFrame",
        feedback=feedback,
    )


def as_training_data(train: object) -> TrainingData:
    """Normalise ``fit``'s argument; see the module docstring for what is accepted.

    Raises
    ------
    InputError
        For an unsupported type or a frame without the required columns.
    """
    if isinstance(train, TrainingData):
        return train
    if isinstance(train, Dataset):
        return _from_dataset(train)
    if isinstance(train, (str, os.PathLike)):
        if is_dataset(train):
            return _from_dataset(open_dataset(train))
        if os.path.exists(train):
            # A plain Parquet dataset in original ids.
            return _from_frame(dd.read_parquet(str(train)))
        raise InputError(f"training data {os.fspath(train)!r} does not exist")
    if isinstance(train, (pd.DataFrame, dd.DataFrame)):
        return _from_frame(train)
    raise InputError(
        f"cannot train on a {type(train).__name__}: pass a dataset path, "
        "a pandas DataFrame or a Dask DataFrame"
    )
