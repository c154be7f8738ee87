"""Block-partitioned alternating least squares on Dask, the way Spark MLlib runs it.

Layout (once per fit). The ratings are shuffled once into ``R`` user blocks (CSR of the
rating matrix) and ``R`` item blocks (CSR of its transpose) by residue (see
:mod:`mfdask.engine.blocks`); block ``b`` of each side is pinned to worker
``b % n_workers``. The full blocks give the model its record of seen items; then each
block is compacted on its worker to the positives (rating >= threshold) with the value
``r`` the confidence uses. After that, ratings never move again.

One half-iteration (``src`` -> ``dst``; the user half has src = items, the item half
src = users; one routine serves both)::

    src factor blocks --(per block)--> partial Gram src_b^T src_b
            |                                   |
            +------> assemble: full src matrix, Gram = sum of partials  (one task)
                                   |
                   sent once to each worker holding dst blocks
                                   |
    dst rating block b + previous dst factors b --solve--> new dst factors b  (on b's worker)

The source factors are small next to the ratings (ML-1M: 3,706 x 64 float32 is 0.9 MB),
so every destination block receives the whole source matrix, which Dask transfers once
per worker. Spark instead sends each block only the rows it needs (its "out-blocks").
That saves little at the block counts a factor-sized cluster uses: on ML-1M's positives a
residue user block refers to 97 % of the items with 2 blocks, 92 % with 4, 76 % with 16
and 54 % with 64 (item blocks: 100 %, 100 %, 90 %, 61 % of the users), so a routing plan
would cut the traffic by under a tenth below 16 blocks while adding a gather task per
block. Broadcasting is what is implemented; routing pays off only with many dozens of
blocks. Old factor futures are released as soon as the next ones exist.

Inside a worker, a block's rows are cut into ranges of about equal work, one per thread;
the numba kernels release the GIL, so the ranges run in parallel.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import dask.dataframe as dd
import numpy as np
from distributed import Client, Future, get_worker

from mfdask.data.training import LocalRatings
from mfdask.engine.blocks import (
    RowBlock,
    assemble_seen,
    block_workers,
    persist_partitions,
    place_row_blocks,
)
from mfdask.engine.checkpoint import block_digest, combine_digests
from mfdask.engine.cluster import worker_addresses
from mfdask.engine.resilience import collect, gather
from mfdask.kernels.als import objective_rows, penalty_rows, solve_rows_cg, solve_rows_cholesky


class ALSNumericalError(FloatingPointError):
    """A solve produced NaN/inf factors or met indefinite normal equations."""


@dataclass(frozen=True)
class SolveSpec:
    """How each row's normal equations are formed and solved (see :mod:`mfdask.kernels.als`).

    Attributes
    ----------
    solver : {"cg", "cholesky"}
        Conjugate gradient warm-started from the previous factors, or exact Cholesky.
    cg_steps : int
        CG steps per row and half-iteration.
    regularization : float
        λ.
    count_scaled : bool
        Use ``λ * n_u`` (ALS-WR, Spark) instead of ``λ``.
    alpha : float
        Confidence slope.
    confidence_offset : float
        1 for the paper's ``C = 1 + alpha * r``, 0 for implicit 0.7's ``C = alpha * r``.
    n_threads : int or None
        Threads per block solve; None uses the worker's thread count.
    """

    solver: str = "cg"
    cg_steps: int = 3
    regularization: float = 0.01
    count_scaled: bool = False
    alpha: float = 1.0
    confidence_offset: float = 1.0
    n_threads: int | None = None


@dataclass
class Source:
    """What every destination block of a half-iteration receives.

    Attributes
    ----------
    factors : (n_src, k) float32
    gram : (k, k) float64
        ``factors^T factors``.
    """

    factors: np.ndarray
    gram: np.ndarray


# ---------------------------------------------------------------------- worker tasks


def positive_block(block: RowBlock, threshold: float, binary: bool) -> RowBlock:
    """Keep the entries with ``value >= threshold``; their value becomes 1 when ``binary``.

    Runs on the block's worker: entries below the threshold are, for implicit ALS,
    exactly like missing ones (``P = 0``, ``C = 1``), so they are dropped rather than
    carried through every solve.
    """
    keep = block.data >= threshold
    kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    indptr = kept_before[block.indptr]
    data = np.ones(int(keep.sum()), np.float32) if binary else block.data[keep]
    return RowBlock(
        block=block.block,
        n_blocks=block.n_blocks,
        n_rows=block.n_rows,
        n_cols=block.n_cols,
        indptr=indptr,
        indices=np.ascontiguousarray(block.indices[keep]),
        data=np.ascontiguousarray(data, dtype=np.float32),
    )


def block_nnz(block: RowBlock) -> int:
    return block.nnz


def partial_gram(factors: np.ndarray) -> np.ndarray:
    """``factors^T factors`` in float64 for one factor block."""
    f = factors.astype(np.float64)
    return f.T @ f


def assemble_source(n_rows: int, blocks: list[np.ndarray], grams: list[np.ndarray]) -> Source:
    """Interleave residue factor blocks into the full matrix; sum the partial Grams."""
    n_blocks = len(blocks)
    full = np.empty((n_rows, blocks[0].shape[1]), dtype=np.float32)
    for b, f in enumerate(blocks):
        full[b::n_blocks] = f
    return Source(factors=full, gram=np.sum(grams, axis=0))


@lru_cache(maxsize=4)
def _executor(n_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n_threads, thread_name_prefix="mfdask-als")


def _thread_count(spec: SolveSpec) -> int:
    if spec.n_threads:
        return spec.n_threads
    try:
        return max(1, int(get_worker().state.nthreads))
    except (ValueError, AttributeError):
        return 1


def row_ranges(indptr: np.ndarray, k: int, parts: int) -> list[tuple[int, int]]:
    """Cut rows into ``parts`` contiguous ranges of about equal work (``nnz * k + rows * k^2``)."""
    n = len(indptr) - 1
    if parts <= 1 or n == 0:
        return [(0, n)]
    work = indptr[1:].astype(np.float64) * k + np.arange(1, n + 1) * float(k * k)
    cuts = np.searchsorted(work, work[-1] * np.arange(1, parts) / parts)
    bounds = np.unique(np.concatenate([[0], cuts, [n]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def solve_block(
    block: RowBlock, source: Source, previous: np.ndarray, spec: SolveSpec
) -> np.ndarray:
    """New destination factors ``(n_local, k) float32`` of one block (runs on its worker)."""
    out = np.array(previous, dtype=np.float32, copy=True)
    k = out.shape[1]
    common = (block.indptr, block.indices, block.data, source.factors)
    scale = (float(spec.regularization), bool(spec.count_scaled), float(spec.alpha))
    offset = float(spec.confidence_offset)
    if spec.solver == "cholesky":
        gram = source.gram

        def run(lo: int, hi: int) -> int:
            return solve_rows_cholesky(*common, gram, out, *scale, offset, lo, hi)

    else:
        gram = source.gram.astype(np.float32)
        steps = int(spec.cg_steps)

        def run(lo: int, hi: int) -> int:
            solve_rows_cg(*common, gram, out, *scale, offset, steps, lo, hi)
            return -1

    ranges = row_ranges(block.indptr, k, _thread_count(spec))
    if len(ranges) == 1:
        failed = [run(*ranges[0])]
    else:
        failed = list(_executor(len(ranges)).map(lambda r: run(*r), ranges))
    bad = [f for f in failed if f >= 0]
    if bad:
        row = int(block.global_rows[bad[0]])
        raise ALSNumericalError(
            f"the normal equations of row {row} are not positive definite "
            f"(confidence {'1 + ' if offset else ''}alpha * r with alpha={spec.alpha}): "
            "raise regularization, raise alpha, or use confidence='paper'"
        )
    if not np.isfinite(out).all():
        raise ALSNumericalError(
            f"ALS produced NaN/inf factors in block {block.block}: raise regularization "
            f"(now {spec.regularization}) or lower alpha (now {spec.alpha})"
        )
    return out


def block_objective(
    block: RowBlock, source: Source, factors: np.ndarray, spec: SolveSpec
) -> tuple[float, float]:
    """Weighted squared error and L2 penalty of one destination block's rows."""
    return objective_rows(
        block.indptr,
        block.indices,
        block.data,
        source.factors,
        source.gram,
        factors,
        float(spec.regularization),
        bool(spec.count_scaled),
        float(spec.alpha),
        float(spec.confidence_offset),
    )


def block_penalty(block: RowBlock, factors: np.ndarray, spec: SolveSpec) -> float:
    return penalty_rows(block.indptr, factors, float(spec.regularization), bool(spec.count_scaled))


def _take_rows(full: np.ndarray, block: int, n_blocks: int) -> np.ndarray:
    return np.ascontiguousarray(full[block::n_blocks])


# ---------------------------------------------------------------------- the driver


class BlockALS:
    """Alternating least squares over row blocks pinned to workers.

    Parameters
    ----------
    client : distributed.Client
    ratings : dask.dataframe.DataFrame or LocalRatings
        ``user_idx:int32, item_idx:int32, rating:float32`` (any partitioning; client-side
        ratings are scattered, see :func:`~mfdask.engine.blocks.persist_partitions`).
    n_users, n_items : int
    spec : SolveSpec
    positive_threshold : float
        Entries with ``rating >= positive_threshold`` are the observed positives.
    binary : bool
        ``r = 1`` for every positive (else ``r`` is the rating).
    n_blocks : int, optional
        Blocks per side; default one per worker.

    Attributes
    ----------
    seen : scipy.sparse.csr_matrix
        ``(n_users, n_items)`` bool, every rated item (positive or not).
    n_positives : int
    digest : str
        Content digest of the ratings (identifies the data in checkpoints).

    Every wait goes through :func:`mfdask.engine.resilience.gather`: a lost worker
    raises :class:`~mfdask.engine.resilience.WorkerLostError` instead of hanging on
    tasks pinned to it, and :meth:`rebuild` places the ratings again.
    """

    def __init__(
        self,
        client: Client,
        ratings: dd.DataFrame | LocalRatings,
        n_users: int,
        n_items: int,
        spec: SolveSpec,
        positive_threshold: float,
        binary: bool,
        n_blocks: int | None = None,
    ) -> None:
        self.client = client
        self.n_users = n_users
        self.n_items = n_items
        self.spec = spec
        self._ratings = ratings
        self._positive = (float(positive_threshold), bool(binary))
        self.n_blocks = int(n_blocks or len(worker_addresses(client)))
        self.user_blocks: list[Future] = []
        self.item_blocks: list[Future] = []
        self._place(first=True)
        self.n_positives = sum(
            gather(
                client,
                [client.submit(block_nnz, b, pure=False) for b in self.user_blocks],
                self._watched,
            )
        )
        self.user_factors: list[Future] = []
        self.item_factors: list[Future] = []
        self._item_source: Future | None = None

    def _place(self, first: bool = False) -> None:
        """Shuffle the ratings into blocks on the current workers and compact them.

        The first time, also record the seen items and the content digest of the ratings
        (for checkpoints); :meth:`rebuild` calls it again after a worker was lost.
        """
        client = self.client
        parts = persist_partitions(client, self._ratings)
        user_full = place_row_blocks(client, parts, self.n_blocks, self.n_users, self.n_items)
        item_full = place_row_blocks(
            client, parts, self.n_blocks, self.n_items, self.n_users, transpose=True
        )
        del parts
        if first:
            self.seen = assemble_seen(client, user_full, self.n_users, self.n_items)
            self.digest = combine_digests(
                gather(
                    client,
                    [client.submit(block_digest, b, pure=False) for b in user_full],
                    [],
                )
            )
        self.user_blocks = self._compact(user_full, *self._positive)
        self.item_blocks = self._compact(item_full, *self._positive)
        # Where each block lives, fixed until the next rebuild: tasks are pinned there.
        self._user_where = block_workers(client, self.user_blocks)
        self._item_where = block_workers(client, self.item_blocks)
        self._watched = self._user_where + self._item_where

    def rebuild(self) -> None:
        """Place the ratings again on the workers there are now (after losing one).

        Reads the input again (the lost blocks are not recoverable from anywhere else);
        the factors must then be put back with :meth:`initialize`.
        """
        self.close()
        self._place()

    # -- placement ---------------------------------------------------------------
    def _compact(self, blocks: list[Future], threshold: float, binary: bool) -> list[Future]:
        where = block_workers(self.client, blocks)
        out = [
            self.client.submit(
                positive_block,
                b,
                threshold,
                binary,
                workers=[w],
                allow_other_workers=False,
                pure=False,
            )
            for b, w in zip(blocks, where, strict=True)
        ]
        collect(self.client, out, where)
        return out

    def _scatter_rows(self, full: np.ndarray, where: list[str | None]) -> list[Future]:
        return [
            self.client.scatter(_take_rows(full, b, self.n_blocks), workers=[w], hash=False)
            for b, w in enumerate(where)
        ]

    def initialize(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        """Start from the given factors (drawn by the caller by global row index)."""
        self.user_factors = self._scatter_rows(
            np.asarray(user_factors, np.float32), self._user_where
        )
        self.item_factors = self._scatter_rows(
            np.asarray(item_factors, np.float32), self._item_where
        )
        self._item_source = None

    @property
    def rating_block_keys(self) -> list[Hashable]:
        """Keys of the compacted rating blocks (for checking that they never move)."""
        return [f.key for f in self.user_blocks + self.item_blocks]

    # -- iterations ---------------------------------------------------------------
    def _source(self, factor_blocks: list[Future], n_rows: int) -> Future:
        grams = [self.client.submit(partial_gram, f, pure=False) for f in factor_blocks]
        return self.client.submit(assemble_source, n_rows, factor_blocks, grams, pure=False)

    def _half(
        self,
        dst_blocks: list[Future],
        source: Future,
        previous: list[Future],
        where: list[str | None],
    ) -> list[Future]:
        """One half-iteration: solve every destination block against ``source``."""
        return [
            self.client.submit(solve_block, block, source, prev, self.spec, workers=[w], pure=False)
            for block, prev, w in zip(dst_blocks, previous, where, strict=True)
        ]

    def iterate(self) -> None:
        """One full iteration: users against items, then items against users."""
        item_source = self._item_source or self._source(self.item_factors, self.n_items)
        self.user_factors = self._half(
            self.user_blocks, item_source, self.user_factors, self._user_where
        )
        user_source = self._source(self.user_factors, self.n_users)
        self.item_factors = self._half(
            self.item_blocks, user_source, self.item_factors, self._item_where
        )
        self._item_source = self._source(self.item_factors, self.n_items)

    def loss(self) -> float:
        """The objective of the current factors, divided by the number of positives.

        Computed block by block over the user blocks (weighted squared error and user L2)
        and item blocks (item L2); only one float per block comes back.
        """
        item_source = self._item_source or self._source(self.item_factors, self.n_items)
        self._item_source = item_source
        where_u, where_i = self._user_where, self._item_where
        parts = [
            self.client.submit(
                block_objective, b, item_source, f, self.spec, workers=[w], pure=False
            )
            for b, f, w in zip(self.user_blocks, self.user_factors, where_u, strict=True)
        ]
        penalties = [
            self.client.submit(block_penalty, b, f, self.spec, workers=[w], pure=False)
            for b, f, w in zip(self.item_blocks, self.item_factors, where_i, strict=True)
        ]
        errors = gather(self.client, parts, self._watched)
        pens = gather(self.client, penalties, self._watched)
        total = sum(e + p for e, p in errors) + sum(pens)
        return float(total) / max(1, self.n_positives)

    def wait(self) -> None:
        """Block until the current factors exist (for timing)."""
        collect(self.client, self.user_factors + self.item_factors, self._watched)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """The current ``(user_factors, item_factors)`` gathered to the client."""
        users = gather(self.client, self.user_factors, self._watched)
        items = gather(self.client, self.item_factors, self._watched)
        return _interleave(users, self.n_users), _interleave(items, self.n_items)

    def close(self) -> None:
        """Release every future this fit holds."""
        self.user_blocks = self.item_blocks = []
        self.user_factors = self.item_factors = []
        self._item_source = None


def _interleave(blocks: list[np.ndarray], n_rows: int) -> np.ndarray:
    full = np.empty((n_rows, blocks[0].shape[1]), dtype=np.float32)
    for b, f in enumerate(blocks):
        full[b :: len(blocks)] = f
    return full
