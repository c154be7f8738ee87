"""Block-partitioned alternating least squares on Dask, the way Spark MLlib runs it.

Layout (once per fit). The ratings are shuffled once into ``R`` user blocks (CSR of the
rating matrix) and ``R`` item blocks (CSR of its transpose) by residue (see
:mod:`mfdask.engine.blocks`); block ``b`` of each side is pinned to worker
``b % n_workers``. The full blocks give the model its record of seen items; then each
block is compacted on its worker to the positives (rating >= threshold) with the value
``r`` the confidence uses. After that, ratings never move again.

One half-iteration (``src`` -> ``dst``; the user half has src = items, the item half
src = users; one routine serves both). The Gram matrix ``YᵀY`` is a tree reduction of
per-block partials either way; the source rows reach the destination blocks in one of two
ways, chosen per half by the size of the source side (:func:`routing_for`)::

    broadcast (small src)                      routed (large src: Spark's out-blocks)

    src factor blocks --> assemble the full    src block s --take the rows dst block d
      src matrix (one task) --> sent once        rates (planned once per fit)--> dst d
      to each worker holding dst blocks                      (R x R small slices)
                        |                                          |
    dst rating block d + previous dst factors d --solve--> new dst factors d (on d's worker)

Broadcasting sends every destination the whole source (ML-1M: 3,706 x 64 float32 is
0.9 MB), which Dask transfers once per worker; on ML-1M's positives a residue user block
refers to 97 % of the items with 2 blocks, 92 % with 4, 76 % with 16 and 54 % with 64, so
routing would save little there. But a side of ten million users is 2.4 GiB at 64
factors: assembling it in one task and copying it to every worker is what bounded the
cluster by one process's memory. Routing plans, once per placement, which local rows of
each source block every destination block references (:func:`route_block`); each
iteration every source block sends each destination only those rows, and the
destination's ratings are renumbered to index the concatenation of its slices, source
block by source block. The source block on the destination's own worker is read in place
instead, whole, with the other blocks' slices indexed after it (the ``*_parts`` kernels):
at ten million users that saves copying a gigabyte per block and iteration. No task then
holds a whole side's factors. The floats are the same
either way: the same rows meet the same ratings in the same order, and both paths sum the
same partial Grams with :func:`sum_grams`.

Inside a worker, a block's rows are cut into ranges of about equal work, one per thread;
the numba kernels release the GIL, so the ranges run in parallel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import scipy.sparse as sp
from distributed import Client, Future, get_worker

from mfdask.data.training import LocalRatings
from mfdask.engine.blocks import (
    BlockExtension,
    KeptBlocks,
    RowBlock,
    block_pattern,
    block_workers,
    extend_row_blocks,
    persist_partitions,
    seen_from_patterns,
    submit_partitions,
    submit_row_blocks,
    wait_blocks,
)
from mfdask.engine.checkpoint import BlockFiles, block_digest, combine_digests
from mfdask.engine.cluster import worker_addresses
from mfdask.engine.finite import all_finite
from mfdask.engine.resilience import WorkerLostError, collect, gather
from mfdask.engine.sizes import sized
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.errors import ALSNumericalError
from mfdask.kernels.als import (
    cg_products_rows,
    objective_rows_parts,
    penalty_rows,
    route_columns,
    solve_rows_cg_parts,
    solve_rows_cholesky_parts,
)


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
        Use ``λ * n_u ** count_power`` (ALS-WR, Spark: ``count_power = 1``) instead of ``λ``.
    count_power : float
        The exponent ``ν`` of the count with ``count_scaled`` (Rendle et al. 2022).
    alpha : float
        Confidence slope.
    confidence_offset : float
        1 for the paper's ``C = 1 + alpha * r``, 0 for implicit 0.7's ``C = alpha * r``.
    n_threads : int or None
        Threads per block solve; None uses the worker's thread count.
    ridge : float
        Added to every row's ``λ`` (or ``λ * n_u``): the constant part of Rendle et al.'s
        frequency-scaled ``λ (n_u + α₀|I|)``. Added once to the shared ``YᵀY`` of a
        block's solve (``YᵀY + ridge I``), so the kernels are unchanged.
    """

    solver: str = "cg"
    cg_steps: int = 3
    regularization: float = 0.01
    count_scaled: bool = False
    count_power: float = 1.0
    alpha: float = 1.0
    confidence_offset: float = 1.0
    n_threads: int | None = None
    ridge: float = 0.0

    def power(self) -> float:
        """The kernels' exponent of a row's count in its ``λ``: 0 without count scaling."""
        return float(self.count_power) if self.count_scaled else 0.0

    def ridged(self, gram: np.ndarray) -> np.ndarray:
        """``YᵀY + ridge I`` (``gram`` itself when there is no ridge)."""
        if not self.ridge:
            return gram
        return gram + float(self.ridge) * np.eye(gram.shape[0], dtype=gram.dtype)


@sized
@dataclass
class Source:
    """What every destination block of a half-iteration receives.

    Attributes
    ----------
    factors : (n_src, k) float32
        The source rows (routed: the source block read in place, or none).
    gram : (k, k) float64
        ``YᵀY`` of the whole source side.
    rest : (n_rest, k) float32 or None
        Routed: the rows the other source blocks sent, indexed after ``factors``.
    """

    factors: np.ndarray
    gram: np.ndarray
    rest: np.ndarray | None = None

    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(factors, rest)`` for the ``*_parts`` kernels (``rest`` empty if None)."""
        if self.rest is not None:
            return self.factors, self.rest
        return self.factors, np.empty((0, self.factors.shape[1]), dtype=np.float32)


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


GRAM_CHUNK_ROWS = 16_384
"""Rows per float64 product in :func:`partial_gram` (a 64-factor chunk is 8 MiB)."""


def partial_gram(factors: np.ndarray) -> np.ndarray:
    """``factors^T factors`` in float64 for one factor block.

    Chunk by chunk: converting a whole block of millions of rows to float64 first would
    double its memory for the length of the product and cost more than the product.
    """
    k = factors.shape[1]
    gram = np.zeros((k, k), dtype=np.float64)
    for lo in range(0, factors.shape[0], GRAM_CHUNK_ROWS):
        chunk = factors[lo : lo + GRAM_CHUNK_ROWS].astype(np.float64)
        gram += chunk.T @ chunk
    return gram


GRAM_FAN_IN = 8
"""Partial Grams summed per task in the tree reduction (:meth:`BlockALS._gram`)."""


def sum_grams(*grams: np.ndarray) -> np.ndarray:
    """The sum of partial Grams, in the order given (both source paths use it)."""
    return np.sum(grams, axis=0)


def tree_sum_grams(grams: list[np.ndarray]) -> np.ndarray:
    """:func:`sum_grams` over ``grams`` in the grouping of :meth:`BlockALS._tree`, so a
    Gram summed in one task has the same floats as one reduced by a tree of tasks."""
    while len(grams) > 1:
        grams = [sum_grams(*grams[i : i + GRAM_FAN_IN]) for i in range(0, len(grams), GRAM_FAN_IN)]
    return grams[0]


FUSE_GRAM_MULTIPLY_ADDS = 2**26
"""A broadcast half-step whose source Gram costs at most this many multiply-adds
(``n_src * k * k``: 16,384 rows at 64 factors) is solved in one task per destination block,
which assembles the source and sums its Gram itself (:func:`solve_broadcast`).

A small fit's iteration is mostly waiting: each task of a chain costs a round trip to
the scheduler, and the broadcast half-step was four (partial Grams, their sum, the
assembled source, the solves). Computing the whole Gram on every destination worker
costs ``n_src * k * k`` multiply-adds more there (8 ms at this bound, about 1.1 ms for
ML-1M's 3,706 items) and saves three round trips per half-step."""


def fuses_broadcast(n_src: int, k: int, dst_where: list[str]) -> bool:
    """Whether a broadcast half-step is solved by :func:`solve_broadcast`: its Gram is
    recomputed for each destination block, so the blocks a worker holds count
    (:data:`FUSE_GRAM_MULTIPLY_ADDS`; the Dask config ``mfdask.als.fuse-broadcast: false``
    keeps the chain of tasks)."""
    if not dst_where or not dask.config.get("mfdask.als.fuse-broadcast", True):
        return False
    per_worker = len(dst_where) / len(set(dst_where))
    return n_src * k * k * per_worker <= FUSE_GRAM_MULTIPLY_ADDS


def solve_broadcast(
    block: RowBlock, previous: np.ndarray, spec: SolveSpec, n_src: int, *src_blocks: np.ndarray
) -> np.ndarray:
    """A broadcast half-step for one destination block in one task (runs on its worker).

    The source is interleaved from its blocks and its Gram summed from the blocks'
    partial Grams in the order of the tree reduction: the same floats as the chain of
    tasks it replaces (:meth:`BlockALS._sources` then :func:`solve_block`).
    """
    gram = tree_sum_grams([partial_gram(f) for f in src_blocks])
    return solve_block(block, assemble_source(n_src, list(src_blocks), gram), previous, spec)


def assemble_source(n_rows: int, blocks: list[np.ndarray], gram: np.ndarray) -> Source:
    """Interleave residue factor blocks into the full source matrix (the broadcast path)."""
    n_blocks = len(blocks)
    full = np.empty((n_rows, blocks[0].shape[1]), dtype=np.float32)
    for b, f in enumerate(blocks):
        full[b::n_blocks] = f
    return Source(factors=full, gram=gram)


def route_block(
    block: RowBlock, n_src_blocks: int, in_place: int = -1
) -> tuple[RowBlock, list[np.ndarray]]:
    """Plan the routed source of one destination block (runs on its worker, once).

    Returns the block with its column indices renumbered into the *compact source*, and
    for each source block ``s`` the ascending local rows of ``s`` that the block refers
    to. Source block ``in_place`` (the one on the destination's own worker, or -1) is
    read whole where it is and sends nothing; the compact source is that block followed
    by the other blocks' needed rows concatenated block by block, so a global column
    ``g`` (block ``g % R``, local row ``g // R``) becomes its position in that stack.
    With ``R = 2``, columns ``{1, 2, 4, 5}`` and no block in place::

        source block 0 needs local rows [1, 2] (columns 2, 4)   -> compact 0, 1
        source block 1 needs local rows [0, 2] (columns 1, 5)   -> compact 2, 3

    and with block 0 in place (3 local rows), columns 2, 4 -> 1, 2 and 1, 5 -> 3, 4.
    The order of entries within each row is unchanged, so a solve over the renumbered
    block visits the same values in the same order as over the original one.
    """
    compact, needed, offsets = route_columns(
        block.indices, int(block.n_cols), int(n_src_blocks), int(in_place)
    )
    rows = [needed[offsets[s] : offsets[s + 1]] for s in range(int(n_src_blocks))]
    return replace(block, indices=compact), rows


def needed_rows(plan: tuple[RowBlock, list[np.ndarray]], src_block: int) -> np.ndarray:
    """The rows source block ``src_block`` sends the planned destination each iteration."""
    return plan[1][src_block]


def routed_rating_block(plan: tuple[RowBlock, list[np.ndarray]]) -> RowBlock:
    return plan[0]


def take_rows(factors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The factors of ``rows`` of one source block (runs where the block is)."""
    return factors[rows]


def routed_source(gram: np.ndarray, whole: np.ndarray | None, *slices: np.ndarray) -> Source:
    """A destination's compact source: the source block read in place (``whole``, or
    None) and its slices of the other source blocks, in block order."""
    k = gram.shape[0]
    if not slices:
        rest = np.empty((0, k), dtype=np.float32)
    else:
        rest = slices[0] if len(slices) == 1 else np.concatenate(slices)
    factors = whole if whole is not None else np.empty((0, k), dtype=np.float32)
    return Source(factors=factors, gram=gram, rest=rest)


ROUTINGS = ("auto", "route", "broadcast", "reduce")

ROUTE_ABOVE_BYTES = 64 * 2**20
"""With ``routing="auto"``, a source side of more float32 bytes than this is routed."""


def routing_for(mode: str, n_src_rows: int, k: int, above_bytes: int) -> bool:
    """Whether a half-step routes its source (True) or broadcasts it (False)."""
    if mode not in ROUTINGS:
        raise ValueError(f"ALS routing must be one of {list(ROUTINGS)}, got {mode!r}")
    if mode == "auto":
        return n_src_rows * k * 4 > above_bytes
    return mode == "route"


def reduction_for(
    mode: str, spec: SolveSpec, n_src_rows: int, n_dst_rows: int, n_blocks: int, routes: bool
) -> bool:
    """Whether the item half solves by reduced CG products instead of routing users.

    Only the CG solver can (Cholesky needs each row's whole ``k x k`` matrix, which
    would be ``n_dst k^2`` floats per source block), and only when the source blocks
    still index the destination globally (the user half is not routed). With
    ``mode="auto"`` it replaces routing when its traffic, ``2 (cg_steps + 1)`` passes of
    one ``k``-vector per destination row and source block, is below the source side
    itself (what routing moves at most): at 10M users and 100k items on 2 blocks that
    is 1.6M against 10M rows.
    """
    if spec.solver != "cg" or mode not in ("auto", "reduce"):
        return False
    if mode == "reduce":
        return True
    passes = 2 * (int(spec.cg_steps) + 1) * int(n_blocks)
    return routes and passes * n_dst_rows < n_src_rows


@sized
@dataclass
class ReducedCG:
    """The destination side's conjugate-gradient state in a reduced half-step.

    All destination rows at once (the item side: small next to the users); CG runs per
    row exactly as in :func:`~mfdask.kernels.als.solve_rows_cg_parts`, with the sums over
    each row's observed entries summed from the source blocks' products.

    Attributes
    ----------
    x, r, p : (n_dst, k) float32
        The iterate, residual and search direction of every row.
    rs : (n_dst,) float32
        ``|r|^2`` of every row.
    active : (n_dst,) bool
        Rows still stepping (a row stops as the kernel's does: on ``|r|^2 < 1e-20`` or
        a non-positive curvature ``p . A p``; a row without entries is zero).
    """

    x: np.ndarray
    r: np.ndarray
    p: np.ndarray
    rs: np.ndarray
    active: np.ndarray


def column_counts(block: RowBlock) -> np.ndarray:
    """Entries per column of one block (summed: each destination row's ``n_i``)."""
    return np.bincount(block.indices, minlength=block.n_cols).astype(np.int64)


def sum_parts(*parts: np.ndarray) -> np.ndarray:
    """The sum of same-shaped arrays, in the order given, without stacking them."""
    total = np.array(parts[0], copy=True)
    for part in parts[1:]:
        total += part
    return total


def interleave_rows(n_rows: int, *blocks: np.ndarray) -> np.ndarray:
    """The whole side from its residue blocks (row ``g`` is row ``g // R`` of block ``g % R``)."""
    full = np.empty((n_rows, blocks[0].shape[1]), dtype=np.float32)
    for b, f in enumerate(blocks):
        full[b :: len(blocks)] = f
    return full


def cg_products(
    block: RowBlock, factors: np.ndarray, vectors: np.ndarray, spec: SolveSpec, residual: bool
) -> np.ndarray:
    """One source block's share of the destination's CG products (runs on its worker).

    See :func:`~mfdask.kernels.als.cg_products_rows`; with several threads each takes a
    range of rows into its own output, summed here.
    """
    k = factors.shape[1]
    args = (float(spec.alpha), float(spec.confidence_offset), bool(residual))
    ranges = row_ranges(block.indptr, k, _thread_count(spec))

    def run(lo: int, hi: int) -> np.ndarray:
        out = np.zeros((block.n_cols, k), dtype=np.float32)
        cg_products_rows(block.indptr, block.indices, block.data, factors, vectors, *args,
                         out, lo, hi)  # fmt: skip
        return out

    if len(ranges) == 1:
        return run(*ranges[0])
    return sum_parts(*_executor(len(ranges)).map(lambda r: run(*r), ranges))


def _row_lambdas(counts: np.ndarray, spec: SolveSpec) -> np.ndarray:
    """``(n, 1) float32`` L2 weight of each row: ``λ``, or ``λ n^ν`` with count scaling
    (the ridge is in the Gram, as in :func:`solve_block`)."""
    power = spec.power()
    if power == 0.0:
        scale = np.ones(len(counts), np.float32)
    elif power == 1.0:
        scale = counts.astype(np.float32)
    else:
        scale = (counts.astype(np.float64) ** power).astype(np.float32)
    lam = float(spec.regularization) * scale
    return lam.astype(np.float32)[:, None]


def _cg_terms(
    gram: np.ndarray, counts: np.ndarray, spec: SolveSpec
) -> tuple[np.ndarray, np.ndarray]:
    return spec.ridged(gram).astype(np.float32), _row_lambdas(counts, spec)


def begin_reduced_cg(
    previous: np.ndarray,
    residual: np.ndarray,
    gram: np.ndarray,
    counts: np.ndarray,
    spec: SolveSpec,
) -> ReducedCG:
    """``r = b - A x`` from the warm start ``previous`` and the summed residual products
    (``residual`` already holds ``b - sum (C - 1)(y . x) y``; ``YᵀY x + lam x`` is taken
    here)."""
    g, lam = _cg_terms(gram, counts, spec)
    empty = counts == 0
    x = np.array(previous, dtype=np.float32, copy=True)
    x[empty] = 0.0
    r = residual - x @ g - lam * x
    r[empty] = 0.0
    return ReducedCG(x=x, r=r, p=r.copy(), rs=np.einsum("ij,ij->i", r, r), active=~empty)


def cg_directions(state: ReducedCG) -> np.ndarray:
    """The search directions the source blocks multiply next."""
    return state.p


def step_reduced_cg(
    state: ReducedCG, products: np.ndarray, gram: np.ndarray, counts: np.ndarray, spec: SolveSpec
) -> ReducedCG:
    """One CG step of every active row, from ``sum (C - 1)(y . p) y`` over its entries."""
    g, lam = _cg_terms(gram, counts, spec)
    active = state.active & (state.rs >= 1e-20)
    ap = state.p @ g + lam * state.p + products
    pap = np.einsum("ij,ij->i", state.p, ap)
    active &= pap > 0.0
    step = np.divide(state.rs, pap, out=np.zeros_like(pap), where=active)[:, None]
    x = state.x + step * state.p
    r = state.r - step * ap
    rs_new = np.einsum("ij,ij->i", r, r)
    beta = np.divide(rs_new, state.rs, out=np.zeros_like(rs_new), where=active)[:, None]
    p = np.where(active[:, None], r + beta * state.p, np.float32(0.0)).astype(np.float32)
    rs = np.where(active, rs_new, state.rs).astype(np.float32)
    return ReducedCG(x=x, r=r, p=p, rs=rs, active=active)


def reduced_block(state: ReducedCG, block: int, n_blocks: int) -> np.ndarray:
    """Destination block ``block``'s new factors (its residue rows of the CG iterate)."""
    out = np.ascontiguousarray(state.x[block::n_blocks], dtype=np.float32)
    if not all_finite(out):
        raise ALSNumericalError(
            f"ALS produced NaN/inf factors in block {block}: raise regularization or lower alpha"
        )
    return out


BLOCK_BYTES = 512 * 2**20
"""With no ``n_blocks`` given, the largest factor block one side may have (float32 bytes)."""

BLOCK_SHARE_OF_MEMORY = 1 / 24
"""With no ``n_blocks`` given, a factor block is also at most this share of the smallest
worker memory limit, per worker thread (256 MiB for a 1-thread worker of 6 GiB).

A worker holds its share of a side's factors plus, while a block is solved, that block's
new copy (one per thread). Dask starts spilling a worker's results to disk once they
pass 60 % of its limit (``distributed.worker.memory.target``) or its process memory
passes 70 % (``spill``); with 20M users at 64 factors on 2 workers of 6 GiB the share
alone is 2.4 GiB, and a 512 MiB block's new copy is another 8 % of the limit. A block
of 1/24 of the limit keeps the new copies to about 4 % of it."""


def default_blocks(
    n_workers: int, n_rows: int, k: int, memory_limit: int | None = None, threads: int = 1
) -> int:
    """Blocks per side when ``n_blocks`` is not given: one per worker, or more when the
    larger side's block would pass ``mfdask.als.block-bytes`` (default: the smaller of
    :data:`BLOCK_BYTES` and :data:`BLOCK_SHARE_OF_MEMORY` of ``memory_limit`` per thread).

    A half-step holds a block's previous and new factors until its solve ends, so one
    block per worker would double the largest side on every worker (20M users at 64
    factors: 2 x 2.6 GB on each of 2 workers). In smaller blocks a worker's extra is one
    block per thread. Blocks stay a multiple of the workers, so each has as many.
    """
    configured = dask.config.get("mfdask.als.block-bytes", None)
    if configured is not None:
        limit = int(configured)
    else:
        limit = BLOCK_BYTES
        if memory_limit:
            limit = min(limit, int(memory_limit * BLOCK_SHARE_OF_MEMORY / max(1, threads)))
    per_worker = n_rows * k * 4 / max(1, n_workers)
    return max(1, n_workers) * max(1, math.ceil(per_worker / max(1, limit)))


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
    common = (block.indptr, block.indices, block.data, *source.parts())
    scale = (float(spec.regularization), spec.power(), float(spec.alpha))
    offset = float(spec.confidence_offset)
    if spec.solver == "cholesky":
        gram = spec.ridged(source.gram)

        def run(lo: int, hi: int) -> int:
            return solve_rows_cholesky_parts(*common, gram, out, *scale, offset, lo, hi)

    else:
        gram = spec.ridged(source.gram).astype(np.float32)
        steps = int(spec.cg_steps)

        def run(lo: int, hi: int) -> int:
            solve_rows_cg_parts(*common, gram, out, *scale, offset, steps, lo, hi)
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
    if not all_finite(out):
        raise ALSNumericalError(
            f"ALS produced NaN/inf factors in block {block.block}: raise regularization "
            f"(now {spec.regularization}) or lower alpha (now {spec.alpha})"
        )
    return out


def block_objective(
    block: RowBlock, source: Source, factors: np.ndarray, spec: SolveSpec
) -> tuple[float, float]:
    """Weighted squared error and L2 penalty of one destination block's rows."""
    error, penalty = objective_rows_parts(
        block.indptr,
        block.indices,
        block.data,
        *source.parts(),
        source.gram,
        factors,
        float(spec.regularization),
        spec.power(),
        float(spec.alpha),
        float(spec.confidence_offset),
    )
    return error, penalty + _ridge_penalty(factors, spec)


def _ridge_penalty(factors: np.ndarray, spec: SolveSpec) -> float:
    """``ridge · Σ‖x‖²``: the penalty of :attr:`SolveSpec.ridge` (0 without one)."""
    if not spec.ridge:
        return 0.0
    x = np.asarray(factors, dtype=np.float64)
    return float(spec.ridge) * float(np.einsum("ij,ij->", x, x))


def block_penalty(block: RowBlock, factors: np.ndarray, spec: SolveSpec) -> float:
    penalty = penalty_rows(block.indptr, factors, float(spec.regularization), spec.power())
    return penalty + _ridge_penalty(factors, spec)


def counts_penalty(
    counts: np.ndarray, factors: np.ndarray, block: int, n_blocks: int, spec: SolveSpec
) -> float:
    """:func:`block_penalty` of residue block ``block`` from the side's entry counts."""
    lam = _row_lambdas(counts[block::n_blocks], spec)
    penalty = float((lam[:, 0].astype(np.float64) * np.einsum("ij,ij->i", factors, factors)).sum())
    return penalty + _ridge_penalty(factors, spec)


def _take_rows(full: np.ndarray, block: int, n_blocks: int) -> np.ndarray:
    return np.ascontiguousarray(full[block::n_blocks])


# ---------------------------------------------------------------------- the driver


@dataclass
class HalfStep:
    """The fixed wiring of one half-iteration (``src`` -> ``dst``), set once per placement.

    Attributes
    ----------
    dst_blocks : list of Future
        The destination's rating blocks (renumbered into the compact source when routed).
    dst_where, src_where : list of str
        The worker of each destination and source block.
    n_src : int
        Rows of the source side.
    needed : list of list of Future, or None
        ``needed[d][s]``: the local rows of source block ``s`` that destination block
        ``d`` refers to, held on ``s``'s worker; None when the source is broadcast.
    in_place : list of int
        Routed: for each destination block, the source block on its own worker that it
        reads whole where it is (nothing taken, sent or copied), or -1.
    n_dst : int
        Rows of the destination side.
    reduced_from : list of Future, or None
        Reduced: the source side's rating blocks (columns index the destination).
    counts : Future or None
        Reduced: entries per destination row (for ``lam_i`` and empty rows).
    passes : int
        Reduced: products computed per half-step (``cg_steps + 1``).
    fused : bool
        Broadcast and solved in one task per destination block (:func:`fuses_broadcast`).
    """

    dst_blocks: list[Future]
    dst_where: list[str]
    src_where: list[str]
    n_src: int
    needed: list[list[Future]] | None = None
    in_place: list[int] | None = None
    n_dst: int = 0
    rows_sent: int = 0
    rows_crossing: int = 0
    reduced_from: list[Future] | None = None
    counts: Future | None = None
    passes: int = 0
    fused: bool = False

    @property
    def routed(self) -> bool:
        return self.needed is not None

    @property
    def reduced(self) -> bool:
        """Solved by reduced CG products (:func:`reduction_for`): the source's rating
        blocks (``reduced_from``) multiply the destination's vectors where they are."""
        return self.reduced_from is not None

    def traffic(self, k: int) -> dict[str, Any]:
        """Factor rows and bytes a half-step moves to its destinations per iteration.

        Routed: the planned rows taken from source blocks (all, and those crossing
        between workers; a block read in place moves nothing); broadcast: the whole
        source to each worker holding destination blocks but its own.
        """
        if self.reduced:
            # Each pass sends every source worker the vectors and takes back its sum of
            # products; the destination's CG state stays on one worker.
            per_pass = 2 * self.n_dst
            rows = per_pass * self.passes * len(set(self.src_where))
            crossing = per_pass * self.passes * max(0, len(set(self.src_where)) - 1)
        elif self.routed:
            rows, crossing = self.rows_sent, self.rows_crossing
        else:
            rows = self.n_src * len(set(self.dst_where))
            crossing = self.n_src * max(0, len(set(self.dst_where)) - 1)
        return {
            "routed": self.routed,
            "reduced": self.reduced,
            "rows": int(rows),
            "rows_between_workers": int(crossing),
            "bytes_between_workers": int(crossing) * k * 4,
        }


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
    routing : {"auto", "route", "broadcast"}, optional
        How a half-step's source rows reach the destination blocks (see the module
        docstring): ``"auto"`` routes a source side larger than ``route_above_bytes``
        and broadcasts a smaller one. Default: Dask config ``mfdask.als.routing``, else
        ``"auto"``.
    route_above_bytes : int, optional
        Default: Dask config ``mfdask.als.route-above-bytes``, else
        :data:`ROUTE_ABOVE_BYTES` (64 MiB, 262,144 rows at 64 factors).
    keep_on_workers : (bool, bool)
        Whether :meth:`factors` leaves the (user, item) side as
        :class:`~mfdask.engine.state.FactorBlocks` on the workers instead of gathering it.
    factors : int, optional
        The factor count, when known at placement: a fit whose item half will be reduced
        (:func:`reduction_for`) then places no item-major copy of the ratings.
    seen_on_workers : bool
        Keep the record of seen items as blocks on the workers
        (:class:`~mfdask.engine.state.SeenBlocks`, aligned with the user blocks) instead
        of assembling it on the client.
    extension : BlockExtension, optional
        Blocks placed by an earlier fit and which of ``ratings`` they lack: when they fit
        this placement (:meth:`~mfdask.engine.blocks.BlockExtension.usable`), only those
        ratings are shuffled and merged into them (the same blocks as placing all).
    keep_placed : bool
        Keep the placed blocks (before compaction) as :attr:`placed` for a later
        ``extension``.

    Attributes
    ----------
    seen : scipy.sparse.csr_matrix or SeenBlocks
        ``(n_users, n_items)`` bool, every rated item (positive or not).
    n_positives : int
    digest : str
        Content digest of the ratings (identifies the data in checkpoints).
    placed : KeptBlocks or None
        With ``keep_placed``: the placed blocks (values as given, not compacted).
    extended : bool
        Whether the ratings were placed by extending ``extension``'s blocks.

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
        routing: str | None = None,
        route_above_bytes: int | None = None,
        seen_on_workers: bool = False,
        keep_on_workers: tuple[bool, bool] = (False, False),
        factors: int | None = None,
        extension: BlockExtension | None = None,
        keep_placed: bool = False,
    ) -> None:
        self.client = client
        self._extension = extension
        self.keep_placed = bool(keep_placed)
        self.placed: KeptBlocks | None = None
        self.extended = False
        self.seen_on_workers = bool(seen_on_workers)
        self.keep_on_workers = (bool(keep_on_workers[0]), bool(keep_on_workers[1]))
        self.n_users = n_users
        self.n_items = n_items
        self.spec = spec
        self.routing = str(routing or dask.config.get("mfdask.als.routing", "auto"))
        routing_for(self.routing, 0, 0, 0)  # refuse an unknown mode before any work
        self.route_above_bytes = int(
            route_above_bytes
            if route_above_bytes is not None
            else dask.config.get("mfdask.als.route-above-bytes", ROUTE_ABOVE_BYTES)
        )
        self._ratings = ratings
        self._positive = (float(positive_threshold), bool(binary))
        self.n_blocks = int(n_blocks or len(worker_addresses(client)))
        # Known factors let placement see that the item half will be reduced: it then
        # reads only the user blocks, and the item-major copy of the ratings is not made.
        self.items_reduced = factors is not None and self._reduces_items(int(factors))
        self.user_blocks: list[Future] = []
        self.item_blocks: list[Future] = []
        self.n_positives = 0
        self._place(first=True)
        self.user_factors: list[Future] = []
        self.item_factors: list[Future] = []

    def _place(self, first: bool = False) -> None:
        """Shuffle the ratings into blocks on the current workers and compact them.

        The first time, also record the seen items and the content digest of the ratings
        (for checkpoints); :meth:`rebuild` calls it again after a worker was lost. The
        half-steps are wired (and routes planned) by the next :meth:`initialize`.
        """
        client = self.client
        extension, self._extension = self._extension, None  # (a rebuild places everything)
        added = None if extension is None else extension.added(self._ratings)
        if (
            added is not None
            and extension is not None
            and extension.usable(client, self.n_blocks, not self.items_reduced)
        ):
            parts = persist_partitions(client, added)
            kept = extension.kept
            user_full = extend_row_blocks(client, kept.user, parts, self.n_users, self.n_items)
            item_full = (
                []
                if self.items_reduced
                else extend_row_blocks(
                    client, kept.item, parts, self.n_items, self.n_users, transpose=True
                )
            )
            del parts
            self.extended = True
        else:
            # Both sides are submitted before anything is waited for: the item blocks'
            # splits run while the user blocks are built, and a small fit pays one wait.
            parts = submit_partitions(client, self._ratings)
            user_full = submit_row_blocks(client, parts, self.n_blocks, self.n_users, self.n_items)
            item_full = (
                []
                if self.items_reduced
                else submit_row_blocks(
                    client, parts, self.n_blocks, self.n_items, self.n_users, transpose=True
                )
            )
            del parts
            wait_blocks(client, user_full + item_full)
            self.extended = False
        self.placed = (
            KeptBlocks(user_full, item_full, self.n_blocks, self.n_users, self.n_items, "")
            if self.keep_placed
            else None
        )
        # Where each block lives, fixed until the next rebuild: tasks are pinned there.
        where = _placed(block_workers(client, user_full + item_full))
        self._user_where = where[: len(user_full)]
        # Item factor block b lives with item rating block b, or with user block b when
        # there are no item rating blocks (a reduced item half).
        self._item_where = list(self._user_where) if self.items_reduced else where[len(user_full) :]
        self._watched = self._user_where + self._item_where
        if self.seen_on_workers:  # again after a rebuild: the lost worker's blocks went too
            self.seen: sp.csr_matrix | SeenBlocks = SeenBlocks(
                [
                    self._pinned(block_pattern, b, where=w)
                    for b, w in zip(user_full, self._user_where, strict=True)
                ],
                list(self._user_where),
                self.n_users,
                self.n_items,
            )
        self.user_blocks = self._compact(user_full, self._user_where, *self._positive)
        self.item_blocks = self._compact(item_full, where[len(user_full) :], *self._positive)
        # What the first placement records, and the positives, in one round trip.
        digests = patterns = []
        if first:
            digests = [self._pinned(block_digest, b, where=w)
                       for b, w in zip(user_full, self._user_where, strict=True)]  # fmt: skip
            if not self.seen_on_workers:
                patterns = [self._pinned(block_pattern, b, where=w)
                            for b, w in zip(user_full, self._user_where, strict=True)]  # fmt: skip
        nnz = [self._pinned(block_nnz, b, where=w)
               for b, w in zip(self.user_blocks, self._user_where, strict=True)]  # fmt: skip
        collect(client, self.item_blocks, self._watched)
        got = gather(client, nnz + digests + patterns, self._watched)
        self.n_positives = int(sum(got[: len(nnz)]))
        if first:
            self.digest = combine_digests(got[len(nnz) : len(nnz) + len(digests)])
            if not self.seen_on_workers:
                self.seen = seen_from_patterns(
                    got[len(nnz) + len(digests) :], self.n_users, self.n_items
                )
        self._user_half: HalfStep | None = None  # src = items
        self._item_half: HalfStep | None = None  # src = users
        self._user_sources: list[Future] | None = None

    def rebuild(self) -> None:
        """Place the ratings again on the workers there are now (after losing one).

        Reads the input again (the lost blocks are not recoverable from anywhere else);
        the factors must then be put back with :meth:`initialize`.
        """
        self.close()
        self._place()

    # -- placement ---------------------------------------------------------------
    def _reduces_items(self, k: int) -> bool:
        """Whether the item half will be reduced (:func:`reduction_for`), the user half
        broadcasting its (small) item source."""
        users_routed = routing_for(self.routing, self.n_items, k, self.route_above_bytes)
        items_routed = routing_for(self.routing, self.n_users, k, self.route_above_bytes)
        return not users_routed and reduction_for(
            self.routing, self.spec, self.n_users, self.n_items, self.n_blocks, items_routed
        )

    def _compact(
        self, blocks: list[Future], where: list[str], threshold: float, binary: bool
    ) -> list[Future]:
        """The positives of ``blocks``, each computed where its block is (not waited for)."""
        return [
            self._pinned(positive_block, b, threshold, binary, where=w)
            for b, w in zip(blocks, where, strict=True)
        ]

    def _pinned(self, func: Callable[..., Any], *args: Any, where: str) -> Future:
        """``func(*args)`` as a task pinned to worker ``where``."""
        return self.client.submit(
            func, *args, workers=[where], allow_other_workers=False, pure=False
        )

    def _wire(
        self,
        dst_blocks: list[Future],
        dst_where: list[str],
        src_where: list[str],
        n_src: int,
        k: int,
        n_dst: int,
        src_half: HalfStep | None = None,
    ) -> HalfStep:
        """A half-step's wiring; plans the routes (one pass over the ratings) when routed.

        ``src_half`` (the other half, wired before) offers its rating blocks for a
        reduced solve (:func:`reduction_for`)."""
        half = HalfStep(dst_blocks, dst_where, src_where, n_src, n_dst=n_dst)
        routes = routing_for(self.routing, n_src, k, self.route_above_bytes)
        if (
            src_half is not None
            and not src_half.routed
            and reduction_for(self.routing, self.spec, n_src, n_dst, self.n_blocks, routes)
        ):
            half.reduced_from = list(src_half.dst_blocks)
            half.passes = int(self.spec.cg_steps) + 1
            half.counts = self._tree(
                sum_parts,
                [
                    self._pinned(column_counts, b, where=w)
                    for b, w in zip(half.reduced_from, src_where, strict=True)
                ],
            )
            collect(self.client, [half.counts], self._watched)
            return half
        if not routes:
            half.fused = fuses_broadcast(n_src, k, dst_where)
            return half
        # Each destination reads the first source block on its own worker in place.
        half.in_place = [next((s for s, w_src in enumerate(src_where) if w_src == w), -1)
                         for w in dst_where]  # fmt: skip
        plans = [
            self._pinned(route_block, b, self.n_blocks, s, where=w)
            for b, w, s in zip(dst_blocks, dst_where, half.in_place, strict=True)
        ]
        half.dst_blocks = [
            self._pinned(routed_rating_block, p, where=w)
            for p, w in zip(plans, dst_where, strict=True)
        ]
        half.needed = [
            [self._pinned(needed_rows, p, s, where=w) for s, w in enumerate(src_where)]
            for p in plans
        ]
        collect(
            self.client, half.dst_blocks + [f for row in half.needed for f in row], self._watched
        )
        sizes = gather(
            self.client,
            [self.client.submit(len, f, pure=False) for row in half.needed for f in row],
            self._watched,
        )
        r = self.n_blocks
        half.rows_sent = sum(sizes)
        half.rows_crossing = sum(
            n
            for (d, s), n in zip(itertools.product(range(r), range(r)), sizes, strict=True)
            if dst_where[d] != src_where[s]
        )
        return half

    def _scatter_rows(self, full: np.ndarray, where: list[str]) -> list[Future]:
        return [
            self.client.scatter(_take_rows(full, b, self.n_blocks), workers=[w], hash=False)
            for b, w in enumerate(where)
        ]

    def initialize(self, user_factors: Any, item_factors: Any) -> None:
        """Start from the given factors, drawn by global row index.

        Each side is a matrix on the client (scattered block by block),
        :class:`~mfdask.engine.state.FactorBlocks` with this run's block count (used where
        they are) or checkpoint :class:`~mfdask.engine.checkpoint.BlockFiles` (read by the
        workers). The first call after a placement wires the two half-steps
        (:class:`HalfStep`), planning the routes of a routed side.
        """
        k = self.k = int(item_factors.shape[1])
        if self._user_half is None or self._item_half is None:
            self._user_half = self._wire(
                self.user_blocks, self._user_where, self._item_where, self.n_items, k, self.n_users
            )
            self._item_half = self._wire(
                self.item_blocks, self._item_where, self._user_where, self.n_users, k, self.n_items,
                src_half=self._user_half,
            )  # fmt: skip
            if self.items_reduced and not self._item_half.reduced:
                raise RuntimeError(
                    f"BlockALS was placed for a reduced item half at another factor count "
                    f"than {k}: pass factors={k}"
                )
            self.user_blocks = self._user_half.dst_blocks
            if not self.items_reduced:
                self.item_blocks = self._item_half.dst_blocks
        self.user_factors = self._blocks_of(user_factors, self._user_where)
        self.item_factors = self._blocks_of(item_factors, self._item_where)
        self._user_sources = None

    def _blocks_of(self, factors: Any, where: list[str]) -> list[Future]:
        if isinstance(factors, BlockFiles):  # from a checkpoint directory: workers read it
            factors = factors.load(self.client, where)
        if isinstance(factors, FactorBlocks):
            if factors.n_blocks != self.n_blocks:
                raise ValueError(
                    f"factor blocks of {factors.n_blocks} blocks given to a run of "
                    f"{self.n_blocks} blocks"
                )
            return factors.surviving()  # a lost block's copy (a checkpoint's backup)
        return self._scatter_rows(np.asarray(factors, np.float32), where)

    def state(self, users_on_workers: bool, items_on_workers: bool) -> tuple[Any, Any]:
        """The current ``(user, item)`` factors: :class:`FactorBlocks` where asked, else
        matrices gathered to the client."""
        k = self.k
        out: list[Any] = []
        for on_workers, blocks, where, n in (
            (users_on_workers, self.user_factors, self._user_where, self.n_users),
            (items_on_workers, self.item_factors, self._item_where, self.n_items),
        ):
            if on_workers:
                out.append(FactorBlocks(list(blocks), list(where), n, k))
            else:
                out.append(_interleave(gather(self.client, blocks, self._watched), n))
        return out[0], out[1]

    @property
    def rating_block_keys(self) -> list[Hashable]:
        """Keys of the compacted rating blocks (for checking that they never move)."""
        return [f.key for f in self.user_blocks + self.item_blocks]

    @property
    def user_where(self) -> list[str]:
        """The worker of each user block (where user factor blocks are placed)."""
        return list(self._user_where)

    @property
    def item_where(self) -> list[str]:
        return list(self._item_where)

    def traffic(self) -> dict[str, dict[str, Any]]:
        """Per half-step (``user_half``: src = items; ``item_half``: src = users), the factor
        rows moved per iteration (:meth:`HalfStep.traffic`); for the cost model."""
        user_half, item_half = self._halves()
        return {"user_half": user_half.traffic(self.k), "item_half": item_half.traffic(self.k)}

    @property
    def routed(self) -> tuple[bool, bool]:
        """Whether the (user half, item half) route their source rather than broadcast it."""
        return (
            self._user_half is not None and self._user_half.routed,
            self._item_half is not None and self._item_half.routed,
        )

    # -- iterations ---------------------------------------------------------------
    def _gram(self, factor_blocks: list[Future], where: list[str]) -> Future:
        """``srcᵀsrc`` as a tree reduction of per-block partials (fan-in GRAM_FAN_IN)."""
        return self._tree(
            sum_grams,
            [
                self._pinned(partial_gram, f, where=w)
                for f, w in zip(factor_blocks, where, strict=True)
            ],
        )

    def _tree(self, add: Callable[..., Any], level: list[Future]) -> Future:
        """``add`` over ``level`` as a tree of fan-in :data:`GRAM_FAN_IN`."""
        while len(level) > 1:
            level = [
                self.client.submit(add, *level[i : i + GRAM_FAN_IN], pure=False)
                for i in range(0, len(level), GRAM_FAN_IN)
            ]
        return level[0]

    def _solve_reduced(
        self, half: HalfStep, src_factors: list[Future], previous: list[Future]
    ) -> list[Future]:
        """The destination's CG with every sum over observed entries reduced from the
        source blocks (:class:`ReducedCG`): ``cg_steps + 1`` passes, each sending the
        destination's vectors to the source blocks and summing their products back."""
        if half.reduced_from is None:
            raise RuntimeError("_solve_reduced needs a half-step wired as reduced")
        src = list(zip(half.reduced_from, src_factors, half.src_where, strict=True))
        gram = self._gram(src_factors, half.src_where)
        submit = self.client.submit

        def products(vectors: Future, residual: bool) -> Future:
            # A worker's blocks are summed where they are: one array per worker moves.
            per_worker: dict[str, list[Future]] = {}
            for b, f, w in src:
                per_worker.setdefault(w, []).append(
                    self._pinned(cg_products, b, f, vectors, self.spec, residual, where=w)
                )
            return self._tree(
                sum_parts,
                [
                    parts[0] if len(parts) == 1 else self._pinned(sum_parts, *parts, where=w)
                    for w, parts in per_worker.items()
                ],
            )

        x = submit(interleave_rows, half.n_dst, *previous, pure=False)
        state = submit(
            begin_reduced_cg, x, products(x, True), gram, half.counts, self.spec, pure=False
        )
        for _ in range(int(self.spec.cg_steps)):
            p = submit(cg_directions, state, pure=False)
            state = submit(
                step_reduced_cg, state, products(p, False), gram, half.counts, self.spec,
                pure=False,
            )  # fmt: skip
        return [
            self._pinned(reduced_block, state, b, self.n_blocks, where=w)
            for b, w in enumerate(half.dst_where)
        ]

    def _sources(self, half: HalfStep, factor_blocks: list[Future]) -> list[Future]:
        """What each destination block of ``half`` solves against, from the source factors."""
        gram = self._gram(factor_blocks, half.src_where)
        if half.needed is None:
            source = self.client.submit(
                assemble_source, half.n_src, factor_blocks, gram, pure=False
            )
            return [source] * len(half.dst_blocks)
        sources = []
        in_place = half.in_place or [-1] * len(half.needed)
        for needed, w_dst, whole in zip(half.needed, half.dst_where, in_place, strict=True):
            slices = [
                self._pinned(take_rows, f, rows, where=w_src)
                for s, (f, rows, w_src) in enumerate(
                    zip(factor_blocks, needed, half.src_where, strict=True)
                )
                if s != whole
            ]
            read_whole = factor_blocks[whole] if whole >= 0 else None
            sources.append(self._pinned(routed_source, gram, read_whole, *slices, where=w_dst))
        return sources

    def _solve_half(
        self,
        half: HalfStep,
        src_factors: list[Future],
        previous: list[Future],
        sources: list[Future] | None = None,
    ) -> list[Future]:
        """New destination factors of ``half`` from the source factors (or ``sources``
        already submitted for them)."""
        if sources is None and half.fused:
            return [
                self._pinned(
                    solve_broadcast, block, prev, self.spec, half.n_src, *src_factors, where=w
                )
                for block, prev, w in zip(half.dst_blocks, previous, half.dst_where, strict=True)
            ]
        if sources is None:
            sources = self._sources(half, src_factors)
        return self._solve(half, sources, previous)

    def _solve(self, half: HalfStep, sources: list[Future], previous: list[Future]) -> list[Future]:
        """Solve every destination block of ``half`` against its source."""
        return [
            self._pinned(solve_block, block, source, prev, self.spec, where=w)
            for block, source, prev, w in zip(
                half.dst_blocks, sources, previous, half.dst_where, strict=True
            )
        ]

    def _halves(self) -> tuple[HalfStep, HalfStep]:
        if self._user_half is None or self._item_half is None:
            raise RuntimeError("BlockALS.initialize must be called before iterating")
        return self._user_half, self._item_half

    def iterate(self) -> None:
        """One full iteration: users against items, then items against users."""
        user_half, item_half = self._halves()
        self.user_factors = self._solve_half(
            user_half, self.item_factors, self.user_factors, self._user_sources
        )
        if item_half.reduced:
            self.item_factors = self._solve_reduced(item_half, self.user_factors, self.item_factors)
        else:
            self.item_factors = self._solve_half(item_half, self.user_factors, self.item_factors)
        # The next user half's sources start now (a fused half-step makes its own).
        self._user_sources = (
            None if user_half.fused else self._sources(user_half, self.item_factors)
        )

    def loss(self) -> float:
        """The objective of the current factors, divided by the number of positives.

        Computed block by block over the user blocks (weighted squared error and user L2)
        and item blocks (item L2); only one float per block comes back.
        """
        user_half, _ = self._halves()
        if self._user_sources is None:
            self._user_sources = self._sources(user_half, self.item_factors)
        parts = [
            self._pinned(block_objective, b, source, f, self.spec, where=w)
            for b, source, f, w in zip(
                self.user_blocks,
                self._user_sources,
                self.user_factors,
                self._user_where,
                strict=True,
            )
        ]
        _, item_half = self._halves()
        items = list(zip(self.item_factors, self._item_where, strict=True))
        if self.items_reduced:  # no item rating blocks: the counts the reduction keeps
            counts = item_half.counts
            r = self.n_blocks
            penalties = [
                self._pinned(counts_penalty, counts, f, b, r, self.spec, where=w)
                for b, (f, w) in enumerate(items)
            ]
        else:
            penalties = [
                self._pinned(block_penalty, b, f, self.spec, where=w)
                for b, (f, w) in zip(self.item_blocks, items, strict=True)
            ]
        errors = gather(self.client, parts, self._watched)
        pens = gather(self.client, penalties, self._watched)
        total = sum(e + p for e, p in errors) + sum(pens)
        return float(total) / max(1, self.n_positives)

    def wait(self, mark: tuple[list[Future], list[Future], Any] | None = None) -> None:
        """Block until the current factors (or those of ``mark``) exist (for timing)."""
        users, items = (self.user_factors, self.item_factors) if mark is None else mark[:2]
        collect(self.client, users + items, self._watched)

    def mark(self) -> tuple[list[Future], list[Future], Any]:
        """The current factors (futures), to wait for or go back to after iterating on."""
        return list(self.user_factors), list(self.item_factors), self._user_sources

    def restore_mark(self, mark: tuple[list[Future], list[Future], Any]) -> None:
        """Make a :meth:`mark` current again (drops iterations submitted after it)."""
        self.user_factors, self.item_factors = list(mark[0]), list(mark[1])
        self._user_sources = mark[2]

    def factors(self) -> tuple[Any, Any]:
        """The current ``(user, item)`` factors: gathered to the client, except a side
        kept on the workers (``keep_on_workers``), which stays as FactorBlocks."""
        if any(self.keep_on_workers):
            return self.state(*self.keep_on_workers)
        users = gather(self.client, self.user_factors, self._watched)
        items = gather(self.client, self.item_factors, self._watched)
        return _interleave(users, self.n_users), _interleave(items, self.n_items)

    def close(self) -> None:
        """Release every future this fit holds."""
        self.user_blocks = self.item_blocks = []
        self.user_factors = self.item_factors = []
        self._user_half = self._item_half = None
        self._user_sources = None


def _placed(where: list[str | None]) -> list[str]:
    """Block workers, all known: a block without one is a worker lost during placement."""
    if any(w is None for w in where):
        raise WorkerLostError("a rating block lost its worker while being placed")
    return [w for w in where if w is not None]


def _interleave(blocks: list[np.ndarray], n_rows: int) -> np.ndarray:
    full = np.empty((n_rows, blocks[0].shape[1]), dtype=np.float32)
    for b, f in enumerate(blocks):
        full[b :: len(blocks)] = f
    return full
