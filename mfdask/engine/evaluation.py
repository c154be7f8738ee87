"""Evaluation on the workers: the scheduling behind :mod:`mfdask.evaluate`.

:mod:`mfdask.evaluate` is the public API: it reads a model (its id maps, factors, seen
items, predictor) and hands this module arrays, id maps and plain settings. Nothing here
knows which model it evaluates.

1. :func:`prepare` reads the test partitions on the workers and, for a frame in original
   ids, maps them to dense indices there (the id maps are broadcast once); pairs whose user
   or item is unknown are counted (``skipped``), never dropped silently.
2. :func:`place_ranking` shuffles them once into ``R`` user blocks by residue (block ``b``
   holds users ``u % R == b``, :func:`mfdask.engine.blocks.place_row_blocks`), each
   pinned to a worker, with each block's items to filter beside it.
3. :func:`score_ranking` scatters the item score vectors once to every worker and each
   block's user vectors only to the worker that scores that block (or uses user factor
   blocks where they already are); a worker scores its users with a positive in chunks of
   at most ``chunk_cells`` cells, computes the exact AUC, keeps the top ``k`` with
   :func:`mfdask.recommend.top_k_of_scores` and returns only the block's
   :class:`~mfdask.metrics.ranking.RankingSums`; the client adds them.
4. :func:`rating_means` predicts each test partition where it lives with the predictor
   given (a picklable ``predict(user_idx, item_idx)``) and adds the
   :class:`~mfdask.metrics.rating.RatingSums`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import scipy.sparse as sp

from mfdask.data import schema
from mfdask.engine.blocks import RowBlock, persist_partitions, place_row_blocks
from mfdask.engine.cluster import worker_addresses
from mfdask.engine.finite import all_finite
from mfdask.engine.resilience import gather
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.errors import InputError
from mfdask.metrics.ranking import RankingSums, auc, ranking_sums
from mfdask.metrics.rating import RatingSums, rating_sums
from mfdask.recommend import chunk_rows, top_k_of_scores

PREDICT_CHUNK = 262_144
"""(user, item) pairs predicted at a time, bounding the gathered factor rows."""

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Predicted ratings of ``(user_idx, item_idx)`` pairs (a model's ``predict_indices``)."""


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
    return all_finite(factors)


def _rating_partition(part: pd.DataFrame, predict: Predict, name: str) -> RatingSums:
    """Prediction error sums of one test partition (dense indices); runs on a worker."""
    u = part[schema.USER_IDX].to_numpy(dtype=np.int64)
    i = part[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    r = part[schema.RATING].to_numpy(dtype=np.float64)
    total = RatingSums()
    for start in range(0, len(u), PREDICT_CHUNK):
        sl = slice(start, start + PREDICT_CHUNK)
        predicted = np.asarray(predict(u[sl], i[sl]), dtype=np.float64)
        if not np.isfinite(predicted).all():
            raise ValueError(
                f"{name} predicted a non-finite rating: the model diverged; "
                "retrain with a larger regularization or a smaller learning_rate"
            )
        total = total + rating_sums(predicted, r[sl])
    return total


BlockPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""Predicted ratings of ``(local user rows, item_idx)`` pairs of one user block, given the
block's ``(rows, k)`` factors first."""


def _rating_block(
    block: RowBlock, factors: np.ndarray, predict: BlockPredict, name: str
) -> RatingSums:
    """Error sums of one user block's test ratings, on the worker of its factor block."""
    local = np.repeat(np.arange(block.n_local_rows, dtype=np.int64), np.diff(block.indptr))
    part = pd.DataFrame(
        {
            schema.USER_IDX: local,
            schema.ITEM_IDX: block.indices.astype(np.int64),
            schema.RATING: block.data,
        }
    )
    return _rating_partition(part, lambda u, i: predict(factors, u, i), name)


# --------------------------------------------------------------------------- client side


@dataclass
class Prepared:
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


def prepare(
    client: Any,
    ddf: dd.DataFrame,
    *,
    dense: bool,
    feedback: str,
    user_ids: pd.Index,
    item_ids: pd.Index,
    what: str,
    need_rating: bool,
) -> Prepared:
    """Read ``ddf``'s partitions on the workers in dense indices; count the unknown pairs.

    ``dense``: the frame already has ``user_idx, item_idx`` (a dataset sharing the id
    maps); otherwise ``user_id, item_id`` are looked up in ``user_ids`` / ``item_ids``
    (original ids, position = dense index) on the workers.
    """
    raw = persist_partitions(client, ddf)
    maps = None
    if not dense:
        [maps] = client.scatter([_IdMaps(user_ids, item_ids)], broadcast=True, hash=False)
    mapped = [
        client.submit(
            _index_partition,
            p,
            maps,
            len(user_ids),
            len(item_ids),
            need_rating,
            what,
            pure=False,
        )
        for p in raw
    ]
    clean = [client.submit(operator.getitem, f, 0, pure=False) for f in mapped]
    counts = client.gather([client.submit(operator.getitem, f, 1, pure=False) for f in mapped])
    total = np.sum(counts, axis=0) if counts else np.zeros(4, dtype=np.int64)
    return Prepared(
        parts=clean,
        rows=int(total[0]),
        unknown_users=int(total[1]),
        unknown_items=int(total[2]),
        skipped=int(total[3]),
        feedback=feedback,
    )


def rating_means(client: Any, test: Prepared, predict: Predict, name: str) -> dict[str, float]:
    """RMSE, MAE and count of ``predict`` on the prepared test partitions, where they are.

    ``predict`` is broadcast once (keep it light: a model without its seen items).
    """
    [predict_f] = client.scatter([predict], broadcast=True, hash=False)
    parts = client.gather(
        [client.submit(_rating_partition, p, predict_f, name, pure=False) for p in test.parts]
    )
    total = RatingSums()
    for s in parts:
        total = total + s
    return total.means()


def rating_means_on_blocks(
    client: Any,
    test: Prepared,
    factors: FactorBlocks,
    predictors: Sequence[BlockPredict],
    name: str,
    n_users: int,
    n_items: int,
) -> dict[str, float]:
    """RMSE, MAE and count when the user factors live on the workers: the test ratings
    are cut into the factors' user blocks and block ``b`` is predicted by
    ``predictors[b]`` next to factor block ``b`` (only the ratings move)."""
    blocks = place_row_blocks(client, test.parts, factors.n_blocks, n_users, n_items)
    futures = [
        client.submit(
            _rating_block,
            rb,
            f,
            predict,
            name,
            workers=[where],
            allow_other_workers=True,
            pure=False,
        )
        for rb, f, predict, where in zip(
            blocks, factors.blocks, predictors, factors.where, strict=True
        )
    ]
    total = RatingSums()
    for s in gather(client, futures, []):
        total = total + s
    return total.means()


@dataclass
class PlacedRanking:
    """Test ratings (and the items to filter) placed in user blocks on the workers."""

    blocks: list[Any]
    exclude: list[Any]
    workers: list[str]
    n_blocks: int
    rows: int
    skipped: int
    extra: dict[str, float]


def place_ranking(
    client: Any,
    test: Prepared,
    *,
    n_blocks: int,
    n_users: int,
    n_items: int,
    exclude: Prepared | SeenBlocks | sp.spmatrix | None,
    extra: dict[str, float] | None = None,
) -> PlacedRanking:
    """Cut the prepared test ratings into user blocks, with each block's items to filter.

    ``exclude``: None (no filter), prepared training partitions (shuffled into the same
    blocks), :class:`~mfdask.engine.state.SeenBlocks` with ``n_blocks`` blocks (each
    used where it lives), or a ``(n_users, n_items)`` sparse matrix (cut by residue and
    sent to each block's worker).
    """
    workers = worker_addresses(client)
    blocks = place_row_blocks(client, test.parts, n_blocks, n_users, n_items)
    placed: list[Any]
    if exclude is None:
        placed = [None] * n_blocks
    elif isinstance(exclude, Prepared):
        placed = place_row_blocks(client, exclude.parts, n_blocks, n_users, n_items)
    elif isinstance(exclude, SeenBlocks) and exclude.n_blocks == n_blocks:
        placed = list(exclude.blocks)  # each block's seen items, where they are
    else:
        seen = exclude.tocsr() if isinstance(exclude, SeenBlocks) else sp.csr_matrix(exclude)
        placed = [
            client.scatter(seen[b::n_blocks], workers=[workers[b % len(workers)]], hash=False)
            for b in range(n_blocks)
        ]
    return PlacedRanking(
        blocks=blocks,
        exclude=placed,
        workers=workers,
        n_blocks=n_blocks,
        rows=test.rows,
        skipped=test.skipped,
        extra=dict(extra or {}),
    )


def score_ranking(
    client: Any,
    placed: PlacedRanking,
    *,
    item_vectors: np.ndarray,
    user_vectors: np.ndarray | None = None,
    user_blocks: FactorBlocks | None = None,
    k: int,
    positive_threshold: float | None,
    chunk_cells: int,
    name: str,
) -> dict[str, float]:
    """Rank every placed user block with the vectors given; the means and counts.

    Either ``user_vectors`` ``(n_users, d)`` (cut by residue and sent to each block's
    worker) or ``user_blocks`` with ``placed.n_blocks`` blocks (each block ranked on the
    worker holding its factors). ``name`` (the model's) names it in the messages.
    """
    n_items = int(item_vectors.shape[0])
    if user_blocks is not None:
        checked = [("item", item_vectors)]
        if not all(gather(client, user_blocks.map_blocks(_all_finite), [])):
            checked.append(("user", np.array([np.nan])))
    else:
        assert user_vectors is not None
        checked = [("user", user_vectors), ("item", item_vectors)]
    for side, v in checked:
        if not np.isfinite(v).all():
            raise ValueError(
                f"{name} has non-finite {side} factors: the fit diverged; "
                "retrain with a larger regularization or a smaller learning_rate"
            )
    workers, n_blocks = placed.workers, placed.n_blocks
    ivec_f = client.scatter(
        np.ascontiguousarray(item_vectors, dtype=np.float32), broadcast=True, hash=False
    )
    job = _RankJob(k=k, positive_threshold=positive_threshold, chunk_cells=int(chunk_cells))
    futures = []
    for b in range(n_blocks):
        if user_blocks is not None:
            target, uvec_f = user_blocks.where[b], user_blocks.blocks[b]
        else:
            assert user_vectors is not None
            target = workers[b % len(workers)]
            uvec_f = client.scatter(
                np.ascontiguousarray(user_vectors[b::n_blocks], dtype=np.float32),
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
