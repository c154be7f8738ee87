"""Evaluate a fitted model on held-out ratings, per user block, on the Dask workers.

:func:`evaluate_ranking` (precision, recall, NDCG, MAP, hit rate at ``k``, exact AUC,
coverage, and implicit's precision and AUC for comparison) and :func:`evaluate_rating`
(RMSE, MAE) take a fitted :class:`~mfdask.models.base.FactorModel` and a test set, and
return a flat ``dict`` of numbers. The metric definitions and which library shares each
convention are in :mod:`mfdask.metrics.ranking` and :mod:`mfdask.metrics.rating`.

How the work is spread (the test ratings never pass through the client):

1. The test partitions are read on the workers and, for a DataFrame in original ids,
   mapped to the model's dense indices there (the id maps are broadcast once). Test
   pairs whose user or item the model does not know are counted and reported as
   ``skipped_unknown``, never dropped silently.
2. Ranking needs all of a user's test items together, so the partitions are shuffled
   once into ``R`` user blocks by residue (block ``b`` holds users ``u % R == b``,
   :func:`mfdask.engine.blocks.place_row_blocks`), each pinned to a worker.
3. The item score vectors are scattered once to every worker; each block's user vectors
   and its seen items (the model's ``seen_items_`` rows, or a ``train`` set shuffled the
   same way) go only to the worker that scores that block.
4. A worker scores its users that have a positive in chunks of at most ``chunk_cells``
   cells (users x items), computes the exact AUC from the full score rows, keeps the top
   ``k`` with :func:`mfdask.recommend.top_k_of_scores` (the routine ``recommend`` uses)
   and returns only the block's :class:`~mfdask.metrics.ranking.RankingSums`; the client
   adds them. The result does not depend on ``R`` or on the number of partitions.
5. Rating error needs no grouping: each test partition is predicted where it lives with
   the model's ``predict_indices`` and returns its :class:`~mfdask.metrics.rating.RatingSums`.

The client comes from :func:`mfdask.engine.cluster.session`: the caller's default client,
or a ``LocalCluster`` started for the call.
"""

from __future__ import annotations

import copy
import math
import operator
import os
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfdask._warnings import MfdaskWarning
from mfdask.data import schema
from mfdask.data.dataset import Dataset, is_dataset, open_dataset
from mfdask.data.training import InputError, frame_feedback
from mfdask.engine.blocks import RowBlock, persist_partitions, place_row_blocks
from mfdask.engine.cluster import current_client, live_workers, session, worker_addresses
from mfdask.engine.resilience import ClusterFailure, gather
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.metrics.ranking import RankingSums, auc, ranking_sums
from mfdask.metrics.rating import RatingSums, rating_sums
from mfdask.recommend import chunk_rows, top_k_of_scores

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

PREDICT_CHUNK = 262_144
"""(user, item) pairs predicted at a time, bounding the gathered factor rows."""


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _IdMaps:
    """The model's original ids (position = dense index), broadcast as one object."""

    users: pd.Index
    items: pd.Index


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value (for readable error messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _index_partition(
    part: pd.DataFrame,
    maps: _IdMaps | None,
    n_users: int,
    n_items: int,
    need_rating: bool,
    what: str,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Dense ``user_idx, item_idx, rating`` of one partition, unknown pairs removed.

    Returns the clean frame and the counts ``[rows, unknown user, unknown item, skipped]``
    (a pair with both unknown is skipped once). Runs on the worker holding ``part``.
    """
    if maps is None:
        u = part[schema.USER_IDX].to_numpy(dtype=np.int64)
        i = part[schema.ITEM_IDX].to_numpy(dtype=np.int64)
        u = np.where((u >= 0) & (u < n_users), u, -1)
        i = np.where((i >= 0) & (i < n_items), i, -1)
    else:
        u = maps.users.get_indexer(part[schema.USER_ID]).astype(np.int64)
        i = maps.items.get_indexer(part[schema.ITEM_ID]).astype(np.int64)
    if need_rating:
        r = pd.to_numeric(part[schema.RATING], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(r)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            ident = ", ".join(
                f"{c}={_plain(part[c].iloc[j])!r}" for c in part.columns if c != schema.RATING
            )
            raise InputError(
                f"{what} rating {_plain(part[schema.RATING].iloc[j])!r} is missing or not a "
                f"number for {ident}: clean the {what} set (re-run `mfdask ingest`/`mfdask split`)"
            )
    else:
        r = np.ones(len(part), dtype=np.float64)
    unknown_u = u < 0
    unknown_i = i < 0
    keep = ~(unknown_u | unknown_i)
    counts = np.array([len(part), unknown_u.sum(), unknown_i.sum(), (~keep).sum()], dtype=np.int64)
    clean = pd.DataFrame(
        {
            schema.USER_IDX: u[keep].astype(np.int32),
            schema.ITEM_IDX: i[keep].astype(np.int32),
            schema.RATING: r[keep].astype(np.float32),
        }
    )
    return clean, counts


def _local_csr(exclude: Any, n_rows: int, n_cols: int) -> sp.csr_matrix | None:
    """A block's seen items as CSR over its local rows, from a CSR slice or a RowBlock."""
    if exclude is None:
        return None
    if isinstance(exclude, RowBlock):
        return sp.csr_matrix(
            (np.ones(exclude.nnz, dtype=np.int8), exclude.indices, exclude.indptr),
            shape=(n_rows, n_cols),
        )
    if isinstance(exclude, tuple):  # a SeenBlocks block: (block, n_blocks, indptr, indices)
        _, _, indptr, indices = exclude
        return sp.csr_matrix(
            (np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n_rows, n_cols)
        )
    return sp.csr_matrix(exclude)


@dataclass(frozen=True)
class _RankJob:
    """The scalars of one block's ranking evaluation (cheap to ship)."""

    k: int
    positive_threshold: float | None
    chunk_cells: int


def _rank_block(
    test: RowBlock,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    exclude: Any,
    job: _RankJob,
) -> tuple[RankingSums, np.ndarray]:
    """Ranking sums of one user block; runs on the worker that holds the block.

    ``user_vectors`` are the block's users' score vectors in local-row order, ``exclude``
    its seen items (CSR slice, :class:`RowBlock` or None). Returns the sums and the counts
    ``[users with test ratings, users without positives, positives, test pairs seen in
    training]``.
    """
    n_local, n_items = test.n_local_rows, test.n_cols
    data = test.data
    positive = (
        np.ones(len(data), dtype=bool)
        if job.positive_threshold is None
        else data >= np.float32(job.positive_threshold)
    )
    per_row = np.diff(test.indptr)
    row_of = np.repeat(np.arange(n_local), per_row)
    pos_per_row = np.bincount(row_of[positive], minlength=n_local)
    rel_indptr = np.zeros(n_local + 1, dtype=np.int64)
    np.cumsum(pos_per_row, out=rel_indptr[1:])
    rel = sp.csr_matrix(
        (np.ones(int(positive.sum()), dtype=np.int8), test.indices[positive], rel_indptr),
        shape=(n_local, n_items),
    )
    ex = _local_csr(exclude, n_local, n_items)
    in_train = 0
    if ex is not None:
        pattern = sp.csr_matrix(
            (np.ones(test.nnz, dtype=np.int8), test.indices, test.indptr),
            shape=(n_local, n_items),
        )
        in_train = int(pattern.multiply(ex).count_nonzero())
    users = np.flatnonzero(pos_per_row > 0)
    counts = np.array(
        [
            int((per_row > 0).sum()),
            int(((per_row > 0) & (pos_per_row == 0)).sum()),
            int(positive.sum()),
            in_train,
        ],
        dtype=np.int64,
    )
    sums = RankingSums(k=job.k, n_items=n_items)
    step = chunk_rows(n_items, job.chunk_cells)
    for start in range(0, len(users), step):
        rows = users[start : start + step]
        scores = np.asarray(user_vectors[rows] @ item_vectors.T, dtype=np.float32)
        rel_c = rel[rows]
        ex_c = ex[rows] if ex is not None else None
        auc_c = auc(scores, rel_c, ex_c)  # before top-k masks the scores in place
        recs, _ = top_k_of_scores(scores, job.k, ex_c)
        sums = sums + ranking_sums(recs, rel_c, k=job.k, auc_values=auc_c)
    return sums, counts


def _all_finite(factors: np.ndarray, block: int) -> bool:
    return bool(np.isfinite(factors).all())


def _rating_partition(part: pd.DataFrame, model: FactorModel) -> RatingSums:
    """Prediction error sums of one test partition (dense indices); runs on a worker."""
    u = part[schema.USER_IDX].to_numpy(dtype=np.int64)
    i = part[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    r = part[schema.RATING].to_numpy(dtype=np.float64)
    total = RatingSums()
    for start in range(0, len(u), PREDICT_CHUNK):
        sl = slice(start, start + PREDICT_CHUNK)
        predicted = np.asarray(model.predict_indices(u[sl], i[sl]), dtype=np.float64)
        if not np.isfinite(predicted).all():
            raise ValueError(
                f"{type(model).__name__} predicted a non-finite rating: the model diverged; "
                "retrain with a larger regularization or a smaller learning_rate"
            )
        total = total + rating_sums(predicted, r[sl])
    return total


# --------------------------------------------------------------------------- client side


@dataclass
class _Prepared:
    """Test (or train) partitions on the workers in the model's dense indices."""

    parts: list[Any]
    rows: int
    unknown_users: int
    unknown_items: int
    skipped: int
    feedback: str = schema.FEEDBACK_RATINGS

    def threshold(self, positive_threshold: float | None) -> float | None:
        """The relevance threshold for this data: ``positive_threshold`` applies to
        ratings; on events every event with weight > 0 is relevant."""
        if positive_threshold is not None and self.feedback == schema.FEEDBACK_EVENTS:
            return schema.EVENT_POSITIVE_CUT
        return positive_threshold


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


def _prepare(client: Any, model: FactorModel, data: Any, what: str, need_rating: bool) -> _Prepared:
    ddf, dense, feedback = _as_frame(model, data, what, need_rating)
    raw = persist_partitions(client, ddf)
    maps = None
    if not dense:
        [maps] = client.scatter(
            [_IdMaps(model.user_ids_, model.item_ids_)], broadcast=True, hash=False
        )
    mapped = [
        client.submit(
            _index_partition,
            p,
            maps,
            model.n_users,
            model.n_items,
            need_rating,
            what,
            pure=False,
        )
        for p in raw
    ]
    clean = [client.submit(operator.getitem, f, 0, pure=False) for f in mapped]
    counts = client.gather([client.submit(operator.getitem, f, 1, pure=False) for f in mapped])
    total = np.sum(counts, axis=0) if counts else np.zeros(4, dtype=np.int64)
    return _Prepared(
        parts=clean,
        rows=int(total[0]),
        unknown_users=int(total[1]),
        unknown_items=int(total[2]),
        skipped=int(total[3]),
        feedback=feedback,
    )


def _check_known(test: _Prepared) -> None:
    if test.rows == test.skipped:
        raise ValueError(
            f"no test rating to evaluate: {test.rows} read, {test.skipped} name users "
            "or items the model does not know (is this test set from the same ingest?)"
        )


def _report_skipped(prepared: _Prepared, what: str, model: FactorModel) -> None:
    if prepared.skipped:
        warnings.warn(
            f"{prepared.skipped} of {prepared.rows} {what} ratings name a user "
            f"({prepared.unknown_users} rows) or an item ({prepared.unknown_items} rows) that "
            f"this {type(model).__name__} does not know; they are left out and counted as "
            + ("skipped_unknown" if what == "test" else f"{what}_skipped_unknown"),
            MfdaskWarning,
            stacklevel=3,
        )


def _light_copy(model: FactorModel) -> FactorModel:
    """The model without what prediction does not need (seen items, history, titles)."""
    light = copy.copy(model)
    light.seen_items_ = None
    light.history_ = []
    light.items_ = None
    light.metrics_ = {}
    light._validator = None
    return light


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


@dataclass
class _PlacedRanking:
    """Test ratings (and the items to filter) placed in user blocks on the workers."""

    blocks: list[Any]
    exclude: list[Any]
    workers: list[str]
    n_blocks: int
    rows: int
    skipped: int
    extra: dict[str, float]


def _place_ranking(
    client: Any,
    model: FactorModel,
    test: _Prepared,
    *,
    train: Any,
    filter_seen: bool,
    n_blocks: int,
) -> _PlacedRanking:
    """Cut the prepared test ratings into user blocks, with each block's items to filter."""
    workers = worker_addresses(client)
    n_users, n_items = model.n_users, model.n_items
    extra: dict[str, float] = {}
    blocks = place_row_blocks(client, test.parts, n_blocks, n_users, n_items)
    if not filter_seen:
        exclude: list[Any] = [None] * n_blocks
    elif train is not None:
        train_p = _prepare(client, model, train, "train", need_rating=False)
        _report_skipped(train_p, "train", model)
        extra["train_ratings"] = train_p.rows
        extra["train_skipped_unknown"] = train_p.skipped
        exclude = place_row_blocks(client, train_p.parts, n_blocks, n_users, n_items)
    else:
        seen = getattr(model, "seen_items_", None)
        if isinstance(seen, SeenBlocks) and seen.n_blocks == n_blocks:
            exclude = list(seen.blocks)  # each block's seen items, where they are
            seen = None
        elif seen is None:
            raise ValueError(
                f"this {type(model).__name__} has no record of its training items "
                "(seen_items_), so seen items cannot be filtered: pass train= (--train) "
                "or filter_seen=False (--no-filter-seen)"
            )
        if seen is not None:
            seen = seen.tocsr() if isinstance(seen, SeenBlocks) else sp.csr_matrix(seen)
            exclude = [
                client.scatter(seen[b::n_blocks], workers=[workers[b % len(workers)]], hash=False)
                for b in range(n_blocks)
            ]
    return _PlacedRanking(
        blocks=blocks,
        exclude=exclude,
        workers=workers,
        n_blocks=n_blocks,
        rows=test.rows,
        skipped=test.skipped,
        extra=extra,
    )


def _score_ranking(
    client: Any,
    model: FactorModel,
    placed: _PlacedRanking,
    *,
    k: int,
    positive_threshold: float | None,
    chunk_cells: int,
) -> dict[str, float]:
    """Rank every placed user block with the model's current factors; the means."""
    n_items = model.n_items
    held = model.__dict__.get("_user_factors")
    blocks = None
    if isinstance(held, FactorBlocks) and held.n_blocks == placed.n_blocks:
        blocks = model._user_score_blocks()  # biases appended on the blocks' workers
    if blocks is not None:  # each block ranked on the worker holding its factors
        uvec, ivec = None, model._item_vectors()
        checked = [("item", ivec)]
        if not all(gather(client, blocks.map_blocks(_all_finite), [])):
            checked.append(("user", np.array([np.nan])))
    else:
        uvec, ivec = model._score_vectors()
        checked = [("user", uvec), ("item", ivec)]
    for name, v in checked:
        if not np.isfinite(v).all():
            raise ValueError(
                f"{type(model).__name__} has non-finite {name} factors: the fit diverged; "
                "retrain with a larger regularization or a smaller learning_rate"
            )
    workers, n_blocks = placed.workers, placed.n_blocks
    ivec_f = client.scatter(
        np.ascontiguousarray(ivec, dtype=np.float32), broadcast=True, hash=False
    )
    job = _RankJob(k=k, positive_threshold=positive_threshold, chunk_cells=int(chunk_cells))
    futures = []
    for b in range(n_blocks):
        if blocks is not None:
            target, uvec_f = blocks.where[b], blocks.blocks[b]
        else:
            assert uvec is not None
            target = workers[b % len(workers)]
            uvec_f = client.scatter(
                np.ascontiguousarray(uvec[b::n_blocks], dtype=np.float32),
                workers=[target],
                hash=False,
            )
        futures.append(
            client.submit(
                _rank_block,
                placed.blocks[b],
                uvec_f,
                ivec_f,
                placed.exclude[b],
                job,
                workers=[target],
                allow_other_workers=True,
                pure=False,
            )
        )
    results = gather(client, futures, [])
    sums = RankingSums(k=k, n_items=n_items)
    counts = np.zeros(4, dtype=np.int64)
    for s, c in results:
        sums = sums + s
        counts += c
    means = sums.means()
    if not means["users"]:
        rule = (
            "every test rating counts"
            if positive_threshold is None
            else f"rating >= {positive_threshold:g}"
        )
        raise ValueError(
            f"no test user has a positive ({rule}) among {placed.rows - placed.skipped} "
            "known test ratings: check the split, or lower positive_threshold "
            "(--positive-threshold)"
        )
    out: dict[str, float] = dict(placed.extra)
    out.update(means)
    out.update(
        {
            "k": k,
            "test_users": int(counts[0]),
            "users_without_positives": int(counts[1]),
            "positives": int(counts[2]),
            "test_in_train": int(counts[3]),
            "n_blocks": n_blocks,
        }
    )
    return out


def _rank(
    client: Any,
    model: FactorModel,
    test: _Prepared,
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
        self._placed: _PlacedRanking | None = None
        self._threshold: float | None = self.positive_threshold
        self._place(model)

    def _place(self, model: FactorModel) -> _PlacedRanking:
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
            [model_f] = client.scatter([_light_copy(model)], broadcast=True, hash=False)
            parts = client.gather(
                [client.submit(_rating_partition, p, model_f, pure=False) for p in test_p.parts]
            )
            total = RatingSums()
            for s in parts:
                total = total + s
            out.update(total.means())
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
