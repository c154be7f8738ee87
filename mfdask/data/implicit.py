"""The implicit-feedback view of explicit ratings: which ratings count as positives.

ALS, BPR and WARP learn from "the user liked this item" rather than from the star value.
Following the course notebook (and the usual MovieLens protocol), a rating at or above a
threshold (default :data:`~mfdask.data.schema.DEFAULT_POSITIVE_THRESHOLD` = 4) is a
positive; everything else, rated or not, is not. The view keeps the rating itself so that
a model can turn it into a confidence (Hu, Koren and Volinsky 2008, eq. 2 use
``c = 1 + alpha * r``); a model that wants plain 0/1 preferences ignores the column.

The view is a filter: it is lazy on a Dask DataFrame (one ``map_partitions``, no shuffle)
and immediate on a pandas DataFrame, and it never changes the columns or their dtypes.
"""

from __future__ import annotations

import math
from typing import TypeVar

import dask.dataframe as dd
import numpy as np
import pandas as pd

from mfdask.data import schema

Frame = TypeVar("Frame", pd.DataFrame, dd.DataFrame)


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float, or raise ``ValueError`` if it is not a finite number."""
    try:
        value = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"positive_threshold must be a number, got {threshold!r}") from exc
    if not math.isfinite(value):
        raise ValueError(f"positive_threshold must be finite, got {threshold!r}")
    return value


def positive_cut(feedback: str, threshold: float) -> float:
    """The threshold that picks the positives of ``feedback`` data: ``threshold`` for
    ratings, :data:`~mfdask.data.schema.EVENT_POSITIVE_CUT` (weight > 0) for events."""
    if feedback == schema.FEEDBACK_EVENTS:
        return schema.EVENT_POSITIVE_CUT
    return check_threshold(threshold)


def is_positive(
    rating: np.ndarray, threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD
) -> np.ndarray:
    """``(n,) bool``: True where ``rating >= threshold``.

    Comparison is done in float64 so that a float32 rating of exactly 4.0 and a
    threshold of 4 agree (4.0 is exact in both), and so that no rating is ever
    reclassified by a cast.
    """
    return np.asarray(rating, dtype=np.float64) >= check_threshold(threshold)


def _positives_partition(part: pd.DataFrame, threshold: float) -> pd.DataFrame:
    return part[is_positive(part[schema.RATING].to_numpy(), threshold)]


def implicit_view(ratings: Frame, threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD) -> Frame:
    """The positive ratings of ``ratings`` (``rating >= threshold``), rating values kept.

    Parameters
    ----------
    ratings : pandas or Dask DataFrame
        Any frame with a ``rating`` column (canonical ``user_idx, item_idx, rating,
        timestamp`` or original ``user_id, item_id, rating``).
    threshold : float
        Smallest rating that counts as a positive (default 4, on MovieLens' 1-5 scale).

    Returns
    -------
    Same type as ``ratings``
        The rows that are positives, with all their columns. For a Dask DataFrame the
        result is lazy and has the same number of partitions.

    Raises
    ------
    ValueError
        If ``ratings`` has no ``rating`` column or ``threshold`` is not a finite number.
    """
    threshold = check_threshold(threshold)
    if schema.RATING not in ratings.columns:
        raise ValueError(
            f"the implicit view needs a {schema.RATING!r} column; the frame has "
            f"{list(ratings.columns)}"
        )
    if isinstance(ratings, dd.DataFrame):
        return ratings.map_partitions(_positives_partition, threshold, meta=ratings._meta)
    return _positives_partition(ratings, threshold)


def _count_partition(part: pd.DataFrame, threshold: float) -> pd.DataFrame:
    pos = is_positive(part[schema.RATING].to_numpy(), threshold)
    return pd.DataFrame({"rows": [len(part)], "positives": [int(pos.sum())]})


def count_positives(
    ratings: pd.DataFrame | dd.DataFrame, threshold: float = schema.DEFAULT_POSITIVE_THRESHOLD
) -> tuple[int, int]:
    """``(rows, positives)`` of ``ratings`` in one pass (computed now for a Dask frame).

    Useful to report how much of the data an implicit model will see, and to fail early
    when a threshold leaves no positives at all.
    """
    threshold = check_threshold(threshold)
    if isinstance(ratings, dd.DataFrame):
        counts = ratings.map_partitions(
            _count_partition,
            threshold,
            meta=pd.DataFrame(
                {"rows": pd.Series([], dtype="int64"), "positives": pd.Series([], dtype="int64")}
            ),
        ).sum()
        counts = counts.compute()
    else:
        counts = _count_partition(ratings, threshold).sum()
    return int(counts["rows"]), int(counts["positives"])
