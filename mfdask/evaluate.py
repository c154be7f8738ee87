"""Evaluate a fitted model on held-out ratings, per user block, on the Dask workers.

:func:`evaluate_ranking` (precision, recall, NDCG, MAP, hit rate at ``k``, exact AUC,
coverage, and implicit's precision and AUC for comparison) and :func:`evaluate_rating`
(RMSE, MAE) take a fitted :class:`~mfdask.models.base.FactorModel` and a test set, and
return a flat ``dict`` of numbers. The metric definitions and which library shares each
convention are in :mod:`mfdask.metrics.ranking` and :mod:`mfdask.metrics.rating`.

The work is spread over the workers by :mod:`mfdask.engine.evaluation` (the test
ratings never pass through the client): test partitions are read and mapped to dense
indices on the workers, shuffled once into user blocks, and each block is ranked where it
is against item vectors broadcast once; only the blocks' sums come back. Test pairs whose
user or item the model does not know are counted and reported as ``skipped_unknown``,
never dropped silently. This module reads the model (its id maps, factors, training items
and predictor) and hands the engine arrays and plain settings.

The client comes from :func:`mfdask.engine.cluster.session`: the caller's default client,
or a ``LocalCluster`` started for the call.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import TYPE_CHECKING, Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from mfdask._warnings import MfdaskWarning
from mfdask.data import schema
from mfdask.data.dataset import Dataset, is_dataset, open_dataset
from mfdask.data.training import InputError, frame_feedback
from mfdask.engine import evaluation
from mfdask.engine.cluster import current_client, live_workers, session, worker_addresses
from mfdask.engine.evaluation import PlacedRanking, Prepared
from mfdask.engine.resilience import ClusterFailure
from mfdask.engine.state import FactorBlocks

if TYPE_CHECKING:
    from mfdask.models.base import FactorModel

__all__ = [
    "DEFAULT_K",
    "EVAL_CHUNK_CELLS",
    "RankingEvaluator",
    "evaluate",
    "evaluate_ranking",
    "evaluate_rating",
]

DEFAULT_K = 10

EVAL_CHUNK_CELLS = 2_000_000
"""Score cells (users x items) per chunk on a worker: the AUC's sort keys take about 24
bytes per cell, so a chunk stays near 50 MB whatever the catalogue size."""

BLOCK_USERS = 65_536
"""Target users per evaluation block (more blocks than workers only for large user sets)."""


# --------------------------------------------------------------------------- client side


def _as_frame(
    model: FactorModel, data: Any, what: str, need_rating: bool
) -> tuple[dd.DataFrame, bool, str]:
    """``data`` as a Dask DataFrame, whether it is already in the model's dense indices,
    and its feedback (``"ratings"`` or ``"events"``: an event frame's ``weight``, or 1
    for an event list, is read as the value)."""
    if isinstance(data, (str, os.PathLike)) and is_dataset(data):
        data = open_dataset(data)
    if isinstance(data, Dataset):
        model.check_dataset(data)
        cols = [schema.USER_IDX, schema.ITEM_IDX] + ([schema.RATING] if need_rating else [])
        return data.ratings(cols), True, data.feedback
    if isinstance(data, (str, os.PathLike)):
        if not os.path.exists(data):
            raise InputError(f"{what} data {os.fspath(data)!r} does not exist")
        data = dd.read_parquet(os.fspath(data))
    if isinstance(data, pd.DataFrame):
        data = dd.from_pandas(data, npartitions=max(1, math.ceil(len(data) / 1_000_000)))
    if not isinstance(data, dd.DataFrame):
        raise InputError(
            f"cannot evaluate on {what} data of type {type(data).__name__}: pass a dataset "
            "path, a Dataset, or a pandas/Dask DataFrame with user_id, item_id, rating"
        )
    feedback = (
        schema.FEEDBACK_EVENTS
        if schema.RATING not in data.columns and model.implicit
        else schema.FEEDBACK_RATINGS
    )
    if feedback == schema.FEEDBACK_EVENTS:
        frame_feedback(data.columns, what)  # the id columns, named if missing
        if schema.WEIGHT in data.columns:
            data = data.rename(columns={schema.WEIGHT: schema.RATING})
        else:
            data = data.assign(**{schema.RATING: 1.0})
    required = [schema.USER_ID, schema.ITEM_ID] + ([schema.RATING] if need_rating else [])
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise InputError(
            f"{what} data is missing column(s) {missing}; it has {list(data.columns)} "
            f"(expected {', '.join(required)} in original ids)"
        )
    return data[required], False, feedback


def _prepare(client: Any, model: FactorModel, data: Any, what: str, need_rating: bool) -> Prepared:
    ddf, dense, feedback = _as_frame(model, data, what, need_rating)
    return evaluation.prepare(
        client,
        ddf,
        dense=dense,
        feedback=feedback,
        user_ids=model.user_ids_,
        item_ids=model.item_ids_,
        what=what,
        need_rating=need_rating,
    )


def _check_known(test: Prepared) -> None:
    if test.rows == test.skipped:
        raise ValueError(
            f"no test rating to evaluate: {test.rows} read, {test.skipped} name users "
            "or items the model does not know (is this test set from the same ingest?)"
        )


def _report_skipped(prepared: Prepared, what: str, model: FactorModel) -> None:
    if prepared.skipped:
        warnings.warn(
            f"{prepared.skipped} of {prepared.rows} {what} ratings name a user "
            f"({prepared.unknown_users} rows) or an item ({prepared.unknown_items} rows) that "
            f"this {type(model).__name__} does not know; they are left out and counted as "
            + ("skipped_unknown" if what == "test" else f"{what}_skipped_unknown"),
            MfdaskWarning,
            stacklevel=3,
        )


class _BlockPredictor:
    """``predict_indices`` of a model restricted to one user block's users, given the
    block's factor rows (picklable, built on the client, called on the block's worker)."""

    def __init__(self, light: FactorModel) -> None:
        self.light = light

    def __call__(self, factors: np.ndarray, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self.light.user_factors_ = factors
        return self.light.predict_indices(users, items)


def _rating_on_blocks(
    client: Any, model: FactorModel, held: FactorBlocks, test: Prepared
) -> dict[str, float]:
    """Rating errors of a model whose user factors live on the workers: each user block's
    test ratings are predicted where the block is (a copy of the model scattered whole
    would hold futures that its tasks cannot wait on)."""
    base = model._prediction_copy()
    items = base.__dict__.get("_item_factors")
    if isinstance(items, FactorBlocks):
        base.item_factors_ = items.to_numpy()
    r = held.n_blocks
    predictors = [
        _BlockPredictor(base._user_block_copy(np.arange(b, model.n_users, r, dtype=np.int64)))
        for b in range(r)
    ]
    return evaluation.rating_means_on_blocks(
        client, test, held, predictors, type(model).__name__, model.n_users, model.n_items
    )


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _n_blocks(requested: int | None, n_workers: int, n_users: int, model: Any = None) -> int:
    held = getattr(model, "__dict__", {}).get("_user_factors")
    if requested is None and isinstance(held, FactorBlocks):
        return held.n_blocks  # rank each user block where its factors are
    if requested is not None:
        if isinstance(requested, bool) or int(requested) != requested or requested < 1:
            raise ValueError(f"n_blocks must be a positive integer, got {requested!r}")
        return int(requested)
    return max(n_workers, math.ceil(n_users / BLOCK_USERS), 1)


def _place_ranking(
    client: Any,
    model: FactorModel,
    test: Prepared,
    *,
    train: Any,
    filter_seen: bool,
    n_blocks: int,
) -> PlacedRanking:
    """Cut the prepared test ratings into user blocks, with each block's items to filter."""
    extra: dict[str, float] = {}
    exclude: Any
    if not filter_seen:
        exclude = None
    elif train is not None:
        exclude = _prepare(client, model, train, "train", need_rating=False)
        _report_skipped(exclude, "train", model)
        extra["train_ratings"] = exclude.rows
        extra["train_skipped_unknown"] = exclude.skipped
    else:
        exclude = getattr(model, "seen_items_", None)
        if exclude is None:
            raise ValueError(
                f"this {type(model).__name__} has no record of its training items "
                "(seen_items_), so seen items cannot be filtered: pass train= (--train) "
                "or filter_seen=False (--no-filter-seen)"
            )
    return evaluation.place_ranking(
        client,
        test,
        n_blocks=n_blocks,
        n_users=model.n_users,
        n_items=model.n_items,
        exclude=exclude,
        extra=extra,
    )


def _score_ranking(
    client: Any,
    model: FactorModel,
    placed: PlacedRanking,
    *,
    k: int,
    positive_threshold: float | None,
    chunk_cells: int,
) -> dict[str, float]:
    """Rank every placed user block with the model's current factors; the means."""
    held = model.__dict__.get("_user_factors")
    blocks = None
    if isinstance(held, FactorBlocks) and held.n_blocks == placed.n_blocks:
        blocks = model._user_score_blocks()  # biases appended on the blocks' workers
    if blocks is not None:  # each block ranked on the worker holding its factors
        uvec, ivec = None, model._item_vectors()
    else:
        uvec, ivec = model._score_vectors()
    return evaluation.score_ranking(
        client,
        placed,
        item_vectors=ivec,
        user_vectors=uvec,
        user_blocks=blocks,
        k=k,
        positive_threshold=positive_threshold,
        chunk_cells=chunk_cells,
        name=type(model).__name__,
    )


def _rank(
    client: Any,
    model: FactorModel,
    test: Prepared,
    *,
    k: int,
    train: Any,
    positive_threshold: float | None,
    filter_seen: bool,
    n_blocks: int,
    chunk_cells: int,
) -> dict[str, float]:
    placed = _place_ranking(
        client, model, test, train=train, filter_seen=filter_seen, n_blocks=n_blocks
    )
    return _score_ranking(
        client,
        model,
        placed,
        k=k,
        positive_threshold=test.threshold(positive_threshold),
        chunk_cells=chunk_cells,
    )


class RankingEvaluator:
    """Ranking metrics of successive states of one model on the same held-out ratings.

    :func:`evaluate_ranking` reads, indexes and places the test ratings (and the training
    items to filter) on every call. A fit that validates after every epoch would pay that
    each time; this places them once, and each :meth:`score` only sends the current
    factors. The model's ids and training items must not change between calls (they do
    not within a fit). If a worker holding a placed block leaves, the next call places
    the ratings again on the workers there are.

    Parameters
    ----------
    model, test, k, positive_threshold, filter_seen, n_blocks, chunk_cells
        As for :func:`evaluate_ranking` (the training items filtered are the model's
        ``seen_items_``).
    client : distributed.Client, optional
        Default: the current default client (one must exist: the placed blocks live on
        its cluster; :class:`~mfdask.engine.cluster.ClusterError` otherwise).
    """

    def __init__(
        self,
        model: FactorModel,
        test: Any,
        *,
        k: int = DEFAULT_K,
        positive_threshold: float | None = schema.DEFAULT_POSITIVE_THRESHOLD,
        filter_seen: bool = True,
        n_blocks: int | None = None,
        chunk_cells: int = EVAL_CHUNK_CELLS,
        client: Any = None,
    ) -> None:
        self.client = client if client is not None else current_client()
        self.test = test
        self.k = _check_k(k)
        self.positive_threshold = None if positive_threshold is None else float(positive_threshold)
        self.filter_seen = filter_seen
        self.n_blocks = n_blocks
        self.chunk_cells = chunk_cells
        self._placed: PlacedRanking | None = None
        self._threshold: float | None = self.positive_threshold
        self._place(model)

    def _place(self, model: FactorModel) -> PlacedRanking:
        self._placed = None
        client = self.client
        blocks = _n_blocks(self.n_blocks, len(worker_addresses(client)), model.n_users, model)
        need_rating = self.positive_threshold is not None
        test_p = _prepare(client, model, self.test, "test", need_rating)
        _report_skipped(test_p, "test", model)
        _check_known(test_p)
        self._threshold = test_p.threshold(self.positive_threshold)
        self._placed = _place_ranking(
            client, model, test_p, train=None, filter_seen=self.filter_seen, n_blocks=blocks
        )
        return self._placed

    def score(self, model: FactorModel) -> dict[str, float]:
        """The metrics of ``model``'s current factors (keys as :func:`evaluate_ranking`)."""
        model._check_fitted()
        started = time.perf_counter()
        placed = self._placed
        if placed is None or not set(placed.workers) <= set(live_workers(self.client)):
            placed = self._place(model)
        try:
            out = _score_ranking(
                self.client,
                model,
                placed,
                k=self.k,
                positive_threshold=self._threshold,
                chunk_cells=self.chunk_cells,
            )
        except ClusterFailure:
            self._placed = None  # placed again on the next call
            raise
        out["test_ratings"] = placed.rows
        out["skipped_unknown"] = placed.skipped
        out["seconds"] = time.perf_counter() - started
        return out

    def close(self) -> None:
        """Release the placed blocks."""
        self._placed = None


def evaluate(
    model: FactorModel,
    test: Any,
    *,
    k: int = DEFAULT_K,
    train: Any = None,
    positive_threshold: float | None = schema.DEFAULT_POSITIVE_THRESHOLD,
    filter_seen: bool = True,
    ranking: bool = True,
    rating: bool | None = None,
    n_blocks: int | None = None,
    chunk_cells: int = EVAL_CHUNK_CELLS,
) -> dict[str, float]:
    """Ranking and/or rating metrics of ``model`` on ``test``, reading ``test`` once.

    Parameters
    ----------
    model : FactorModel
        A fitted (or loaded) model.
    test
        A canonical dataset path or :class:`~mfdask.data.dataset.Dataset` that shares the
        model's id maps (checked: :class:`~mfdask.models.base.ModelMismatchError`), or a
        pandas/Dask DataFrame (or plain Parquet path) with ``user_id, item_id, rating`` in
        original ids.
    k : int
        Cut-off of the ranking metrics.
    train
        The training interactions to filter from the lists and to leave out of the AUC's
        negatives (same forms as ``test``); default: the model's ``seen_items_``.
    positive_threshold : float or None
        Test ratings at or above it are the relevant items; None: every test rating.
        Ratings only: on event test data (a frame with ``weight`` or only ``user_id,
        item_id``, or an event dataset) every event with weight > 0 is relevant.
    filter_seen : bool
        Drop training items from the lists (and from the AUC's negatives). Without it
        the training items compete with the test items, as in an unfiltered evaluation.
    ranking : bool
        Compute the ranking metrics.
    rating : bool or None
        Compute RMSE and MAE (needs ``model.predict_indices``); default: for explicit
        models (``not model.implicit``).
    n_blocks : int, optional
        User blocks (default: one per worker, more for over 65,536 users per worker).
    chunk_cells : int
        Score cells per chunk on a worker (memory bound).

    Returns
    -------
    dict
        Ranking: ``precision, recall, ndcg, map, hit_rate, auc, coverage,
        implicit_precision, implicit_auc`` (see :mod:`mfdask.metrics.ranking`) with
        ``k, users`` (users with a positive: the mean's denominator), ``auc_users``,
        ``test_users``, ``users_without_positives`` (left out), ``positives``,
        ``test_in_train`` (test pairs also among the training items: leakage),
        ``n_blocks``. Rating: ``rmse, mae, count``. Always ``test_ratings`` (rows read),
        ``skipped_unknown`` (rows whose user or item the model does not know, also
        split as ``unknown_user_rows`` / ``unknown_item_rows``) and ``seconds``.

    Raises
    ------
    ValueError
        Bad ``k``, no user with a positive, no known test rating, non-finite factors, a
        model without ``seen_items_`` when filtering without ``train``.
    """
    model._check_fitted()
    k = _check_k(k)
    if rating is None:
        rating = not model.implicit
    if not (ranking or rating):
        raise ValueError("nothing to evaluate: ranking and rating are both off")
    if rating and model.implicit:
        raise ValueError(
            f"{type(model).__name__} is an implicit model: its scores are preferences, not "
            "ratings, so RMSE/MAE do not apply; evaluate its ranking only (rating=False)"
        )
    if positive_threshold is not None:
        positive_threshold = float(positive_threshold)
    started = time.perf_counter()
    out: dict[str, float] = {}
    with session() as client:
        blocks = _n_blocks(n_blocks, len(worker_addresses(client)), model.n_users, model)
        need_rating = bool(rating) or positive_threshold is not None
        test_p = _prepare(client, model, test, "test", need_rating)
        _report_skipped(test_p, "test", model)
        out.update(
            {
                "test_ratings": test_p.rows,
                "skipped_unknown": test_p.skipped,
                "unknown_user_rows": test_p.unknown_users,
                "unknown_item_rows": test_p.unknown_items,
            }
        )
        _check_known(test_p)
        if rating:
            held = model.__dict__.get("_user_factors")
            if isinstance(held, FactorBlocks):  # predicted next to each user block
                out.update(_rating_on_blocks(client, model, held, test_p))
            else:
                light = model._prediction_copy()
                out.update(
                    evaluation.rating_means(
                        client, test_p, light.predict_indices, type(model).__name__
                    )
                )
        if ranking:
            out.update(
                _rank(
                    client,
                    model,
                    test_p,
                    k=k,
                    train=train,
                    positive_threshold=positive_threshold,
                    filter_seen=filter_seen,
                    n_blocks=blocks,
                    chunk_cells=chunk_cells,
                )
            )
    out["seconds"] = time.perf_counter() - started
    return out


def evaluate_ranking(
    model: FactorModel,
    test: Any,
    *,
    k: int = DEFAULT_K,
    train: Any = None,
    positive_threshold: float | None = schema.DEFAULT_POSITIVE_THRESHOLD,
    filter_seen: bool = True,
    n_blocks: int | None = None,
    chunk_cells: int = EVAL_CHUNK_CELLS,
) -> dict[str, float]:
    """Top-``k`` ranking metrics of ``model`` on ``test``; see :func:`evaluate`."""
    return evaluate(
        model,
        test,
        k=k,
        train=train,
        positive_threshold=positive_threshold,
        filter_seen=filter_seen,
        ranking=True,
        rating=False,
        n_blocks=n_blocks,
        chunk_cells=chunk_cells,
    )


def evaluate_rating(model: FactorModel, test: Any) -> dict[str, float]:
    """RMSE and MAE of ``model``'s predicted ratings on ``test`` (plus ``count`` and the
    skipped-pair counts); see :func:`evaluate`.

    Raises
    ------
    ValueError
        For an implicit model (ALS, BPR, WARP): its scores are preferences, not ratings.
    """
    model._check_fitted()
    return evaluate(model, test, ranking=False, rating=True, positive_threshold=None)
