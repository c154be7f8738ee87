"""Cut the rating matrix into row blocks that live on workers for a whole fit.

Blocking is by residue: with ``R`` row blocks, global row ``g`` belongs to block
``g % R`` at local row ``g // R``. Interleaving spreads heavy users (and, for the
transposed matrix, popular items) evenly over blocks, and it makes "the rows of block
``b``" a strided slice ``factors[b::R]`` of a full factor matrix. A 5 x 4 example with
``R = 2``::

    global row   block  local row          block 0 = rows 0, 2, 4 -> local 0, 1, 2
        0          0        0              block 1 = rows 1, 3    -> local 0, 1
        1          1        0
        2          0        1
        3          1        1
        4          0        2

The shuffle happens once: every input partition is split into ``R`` pieces on the worker
that read it, then block ``b`` is assembled from its pieces on the worker it is pinned
to. After that only factors move (Spark's ALS does the same with its in/out blocks).
Each block is a CSR matrix over local rows with *global* column indices, sorted within
each row, so kernels can binary-search a row to test membership.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client, Future

from mfdask.data import schema
from mfdask.data.training import LocalRatings
from mfdask.engine.cluster import wait_for, worker_addresses
from mfdask.engine.sizes import sized
from mfdask.errors import DuplicateRatingError
from mfdask.kernels.csr import coo_to_csr


@sized
@dataclass
class RowBlock:
    """One block of rows of a sparse matrix, as CSR over local rows.

    Attributes
    ----------
    block, n_blocks : int
        This block is rows ``g`` with ``g % n_blocks == block``.
    n_rows, n_cols : int
        Shape of the whole matrix (global).
    indptr : (n_local_rows + 1,) int64
    indices : (nnz,) int32
        Global column indices, ascending within each row.
    data : (nnz,) float32
    """

    block: int
    n_blocks: int
    n_rows: int
    n_cols: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @property
    def n_local_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.data)

    @property
    def global_rows(self) -> np.ndarray:
        """``(n_local_rows,) int64`` global row index of each local row."""
        return np.arange(self.n_local_rows, dtype=np.int64) * self.n_blocks + self.block

    def row_counts(self) -> np.ndarray:
        return np.diff(self.indptr)


def n_local_rows(n_rows: int, n_blocks: int, block: int) -> int:
    """How many global rows ``0..n_rows-1`` fall in ``block`` under residue blocking."""
    return max(0, (n_rows - block + n_blocks - 1) // n_blocks)


def split_partition(
    part: pd.DataFrame, n_blocks: int, row_col: str, col_col: str, value_col: str
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Split one partition into ``n_blocks`` pieces by ``row % n_blocks``.

    Piece ``b`` holds ``(local_row, col, value)`` as int32, int32, float32 (12 bytes a
    rating): the local row ``row // n_blocks`` is all that block ``b`` needs of the row.
    Module level so that Dask can pickle it; runs on the worker holding ``part``.
    """
    rows = part[row_col].to_numpy(dtype=np.int64)
    cols = part[col_col].to_numpy(dtype=np.int32)
    vals = part[value_col].to_numpy(dtype=np.float32)
    owner = rows % n_blocks
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n_blocks + 1))
    local = (rows // n_blocks).astype(np.int32)
    pieces = []
    for b in range(n_blocks):
        sel = order[bounds[b] : bounds[b + 1]]
        pieces.append((local[sel], cols[sel], vals[sel]))
    return pieces


def build_row_block(
    block: int,
    n_blocks: int,
    n_rows: int,
    n_cols: int,
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    row_name: str = "row",
    col_name: str = "column",
) -> RowBlock:
    """Assemble block ``block`` from its piece of every split partition (runs on a worker).

    ``pieces`` are the ``block``-th outputs of :func:`split_partition`. Arrays are
    released as soon as they are reordered, so the peak stays near 24 bytes a rating
    besides the pieces themselves.
    """
    if pieces:
        local = np.concatenate([p[0] for p in pieces])
        cols = np.concatenate([p[1] for p in pieces])
        vals = np.concatenate([p[2] for p in pieces])
    else:
        local = np.empty(0, np.int32)
        cols = np.empty(0, np.int32)
        vals = np.empty(0, np.float32)
    n_local = n_local_rows(n_rows, n_blocks, block)
    # rows = local * n_blocks + block: 0 <= row < n_rows exactly when 0 <= local < n_local
    if local.size and (local.min() < 0 or local.max() >= n_local):
        raise IndexError(f"{row_name} index out of range 0..{n_rows - 1} in block {block}")
    if cols.size and (cols.min() < 0 or cols.max() >= n_cols):
        raise IndexError(f"{col_name} index out of range 0..{n_cols - 1} in block {block}")
    indptr, cols, vals, duplicate = coo_to_csr(local, cols, vals, n_local)
    del local
    if duplicate >= 0:
        k = int(duplicate)
        g = int(np.searchsorted(indptr, k, side="right") - 1) * n_blocks + block
        raise DuplicateRatingError(
            f"duplicate rating for {row_name} index {g}, {col_name} index {int(cols[k])}: "
            "deduplicate the input (`mfdask ingest --duplicates last|mean`)"
        )
    return RowBlock(
        block=block,
        n_blocks=n_blocks,
        n_rows=n_rows,
        n_cols=n_cols,
        indptr=indptr,
        indices=np.ascontiguousarray(cols, dtype=np.int32),
        data=np.ascontiguousarray(vals, dtype=np.float32),
    )


def submit_partitions(client: Client, ratings: dd.DataFrame | LocalRatings) -> list[Future]:
    """The input partitions as futures on the workers (never on the client), not waited
    for: what is built from them starts on each as soon as it exists.

    Ratings already on the client (:class:`~mfdask.data.training.LocalRatings`, from a
    pandas DataFrame) are scattered in pieces across the workers, so no task graph
    carries them; calling this again scatters them again (after a lost worker).
    """
    if isinstance(ratings, LocalRatings):
        return list(client.scatter(ratings.pieces()))
    return list(client.compute(ratings.to_delayed(), optimize_graph=True))


def persist_partitions(client: Client, ratings: dd.DataFrame | LocalRatings) -> list[Future]:
    """:func:`submit_partitions`, waited for: the partitions are on the workers."""
    futures = submit_partitions(client, ratings)
    wait_for(client, futures)
    return futures


def place_row_blocks(
    client: Client,
    partitions: list[Future],
    n_blocks: int,
    n_rows: int,
    n_cols: int,
    transpose: bool = False,
    value_col: str = schema.RATING,
) -> list[Future]:
    """Shuffle rating partitions into ``n_blocks`` :class:`RowBlock` futures pinned to
    workers, and wait for them (:func:`submit_row_blocks`, then :func:`wait_blocks`)."""
    blocks = submit_row_blocks(
        client, partitions, n_blocks, n_rows, n_cols, transpose=transpose, value_col=value_col
    )
    wait_blocks(client, blocks)
    return blocks


def submit_row_blocks(
    client: Client,
    partitions: list[Future],
    n_blocks: int,
    n_rows: int,
    n_cols: int,
    transpose: bool = False,
    value_col: str = schema.RATING,
) -> list[Future]:
    """Shuffle rating partitions into ``n_blocks`` :class:`RowBlock` futures pinned to
    workers, without waiting (a fit submits both sides' blocks, then waits once).

    With ``transpose`` the rows are items and the columns users (the CSR of Rᵀ).
    Block ``b`` is placed on worker ``b % n_workers`` (sorted addresses), so the same
    cluster shape always gives the same layout.
    """
    row_name, col_name = ("item", "user") if transpose else ("user", "item")
    workers = worker_addresses(client)
    pieces = _split_pieces(client, partitions, n_blocks, transpose, value_col)
    blocks = [
        client.submit(
            build_row_block,
            b,
            n_blocks,
            n_rows,
            n_cols,
            pieces[b],
            row_name,
            col_name,
            workers=[workers[b % len(workers)]],
            allow_other_workers=True,
            pure=False,
        )
        for b in range(n_blocks)
    ]
    del pieces
    return blocks


def _split_pieces(
    client: Client, partitions: list[Future], n_blocks: int, transpose: bool, value_col: str
) -> list[list[Future]]:
    """``pieces[b][p]``: block ``b``'s piece of partition ``p`` (:func:`split_partition`)."""
    row_col, col_col = (
        (schema.ITEM_IDX, schema.USER_IDX) if transpose else (schema.USER_IDX, schema.ITEM_IDX)
    )
    splits = [
        client.submit(split_partition, part, n_blocks, row_col, col_col, value_col, pure=False)
        for part in partitions
    ]
    # Each block's piece of each split, taken where the split is: a block's worker then
    # fetches only its own pieces, not every split's pieces for every block.
    return [
        [client.submit(operator.getitem, s, b, pure=False) for s in splits] for b in range(n_blocks)
    ]


def wait_blocks(client: Client, blocks: list[Future]) -> None:
    """Wait for ``blocks``; re-raise the first one's error as the worker raised it."""
    wait_for(client, blocks)
    for f in blocks:
        if f.status == "error":
            f.result()  # re-raise the worker's exception with its message


def merge_row_block(
    old: RowBlock,
    n_rows: int,
    n_cols: int,
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    row_name: str = "row",
    col_name: str = "column",
) -> RowBlock:
    """``old`` with the entries of ``pieces`` added, as a block of the ``(n_rows, n_cols)``
    matrix (at least ``old``'s shape: grown id maps add rows at the end of each block).

    The result is the block :func:`build_row_block` gives for the old entries and the new
    together (the CSR of a set of distinct entries is unique), built on the worker that
    holds ``old`` from its entries and the new pieces alone. A new entry at a position
    ``old`` already has is a :class:`~mfdask.errors.DuplicateRatingError`.
    """
    local = np.repeat(np.arange(old.n_local_rows, dtype=np.int32), old.row_counts())
    return build_row_block(
        old.block,
        old.n_blocks,
        n_rows,
        n_cols,
        [(local, old.indices, old.data), *pieces],
        row_name,
        col_name,
    )


def extend_row_blocks(
    client: Client,
    blocks: list[Future],
    partitions: list[Future],
    n_rows: int,
    n_cols: int,
    transpose: bool = False,
    value_col: str = schema.RATING,
) -> list[Future]:
    """Row blocks placed earlier (:func:`place_row_blocks`) with the ratings of
    ``partitions`` added, as blocks of the ``(n_rows, n_cols)`` matrix.

    Only the added ratings are shuffled: each block is merged with its pieces of them on
    the worker that holds it (:func:`merge_row_block`), so the cost follows the added
    ratings, not all of them. The old blocks are left as they are.
    """
    row_name, col_name = ("item", "user") if transpose else ("user", "item")
    pieces = _split_pieces(client, partitions, len(blocks), transpose, value_col)
    where = block_workers(client, blocks)
    out = [
        client.submit(
            merge_row_block,
            old,
            n_rows,
            n_cols,
            pieces[b],
            row_name,
            col_name,
            workers=None if w is None else [w],
            allow_other_workers=True,
            pure=False,
        )
        for b, (old, w) in enumerate(zip(blocks, where, strict=True))
    ]
    wait_blocks(client, out)
    del pieces
    return out


@dataclass
class KeptBlocks:
    """The row blocks a fit placed, kept with the fitted model so that an update can add
    its new ratings to them (:func:`extend_row_blocks`) instead of placing all again.

    Attributes
    ----------
    user, item : list of Future
        User-major and item-major :class:`RowBlock` futures (``item`` empty when the fit
        placed no item-major copy).
    n_blocks, n_users, n_items : int
        The layout and the matrix shape they were placed for.
    values : str
        What the block values are (the engine input: ``"rating"``, or an ALS weighting),
        so that blocks are only extended with values computed the same way.
    """

    user: list[Future]
    item: list[Future]
    n_blocks: int
    n_users: int
    n_items: int
    values: str

    def alive(self, client: Client) -> bool:
        """Whether every block is still held on ``client``'s cluster."""
        futures = self.user + self.item
        if not futures or any(f.client is not client or f.status != "finished" for f in futures):
            return False
        try:
            where = client.who_has(futures)
        except Exception:
            return False
        return all(where.get(f.key) for f in futures)


@dataclass
class BlockExtension:
    """How an engine may place its ratings by extending kept blocks.

    ``rows`` are the positions, in the engine's (client-side) ratings, of the ratings
    that ``kept`` lacks; every other rating is in ``kept`` with the same value.
    """

    kept: KeptBlocks
    rows: np.ndarray

    def added(self, ratings: LocalRatings | dd.DataFrame) -> LocalRatings | None:
        """The added ratings of ``ratings`` (None when they are not on the client)."""
        if not isinstance(ratings, LocalRatings):
            return None
        frame = ratings.frame.iloc[self.rows].reset_index(drop=True)
        return LocalRatings(frame, ratings.piece_rows)

    def usable(self, client: Client, n_blocks: int, item_major: bool) -> bool:
        """Whether the kept blocks fit a placement of ``n_blocks`` blocks per side (with an
        item-major copy when ``item_major``) on ``client``'s cluster."""
        kept = self.kept
        return (
            kept.n_blocks == n_blocks
            and len(kept.user) == n_blocks
            and (not item_major or len(kept.item) == n_blocks)
            and kept.alive(client)
        )


def block_workers(client: Client, blocks: list[Future]) -> list[str | None]:
    """The worker each block future currently lives on (for pinning follow-up tasks).

    None for a block the scheduler knows no holder of (lost with its worker).
    """
    where = client.who_has(blocks)
    return [sorted(where[f.key])[0] if where.get(f.key) else None for f in blocks]


def block_pattern(block: RowBlock) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(block, n_blocks, indptr, indices)``: the sparsity pattern of a block, no values."""
    return block.block, block.n_blocks, block.indptr, block.indices


def assemble_seen(client: Client, blocks: list[Future], n_rows: int, n_cols: int):
    """The sparsity pattern of all row blocks as one ``(n_rows, n_cols)`` boolean CSR.

    Only indices travel (4 bytes per rating, no values): this is the model's record of
    what each user has seen, used to filter recommendations, as ``implicit`` keeps its
    ``user_items``.
    """

    patterns = client.gather([client.submit(block_pattern, b, pure=False) for b in blocks])
    return seen_from_patterns(patterns, n_rows, n_cols)


def seen_from_patterns(
    patterns: list[tuple[int, int, np.ndarray, np.ndarray]], n_rows: int, n_cols: int
):
    """:func:`assemble_seen` from the blocks' gathered :func:`block_pattern`."""
    import scipy.sparse as sp

    counts = np.zeros(n_rows, dtype=np.int64)
    for block, n_blocks, indptr, _ in patterns:
        counts[block::n_blocks] = np.diff(indptr)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    for block, n_blocks, bptr, bidx in patterns:
        rows = np.arange(block, n_rows, n_blocks)
        # Scatter each local row's slice to its global position without a per-row loop.
        lengths = np.diff(bptr)
        starts = np.repeat(indptr[rows] - bptr[:-1], lengths)
        indices[starts + np.arange(len(bidx))] = bidx
    data = np.ones(len(indices), dtype=bool)
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


def block_positive_counts(
    block: RowBlock, threshold: float | None
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(block, n_blocks, row_counts, col_counts)``: entries ``>= threshold`` (all when
    None) per local row and per global column of one block (runs on its worker)."""
    if threshold is None:
        keep = np.ones(block.nnz, dtype=bool)
    else:
        keep = block.data >= threshold
    kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    rows = np.diff(kept_before[block.indptr])
    cols = np.bincount(block.indices[keep], minlength=block.n_cols).astype(np.int64)
    return block.block, block.n_blocks, rows, cols


def positive_counts(
    client: Client, blocks: list[Future], n_rows: int, n_cols: int, threshold: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Positives (entries ``>= threshold``; all with None) per row and per column of the
    row blocks ``blocks``: ``(n_rows,) int64`` and ``(n_cols,) int64``.

    One small task per block; only the counts travel. The model keeps them as its
    popularity summary (the fallback for users without a positive).
    """
    per_block = client.gather(
        [client.submit(block_positive_counts, b, threshold, pure=False) for b in blocks]
    )
    rows = np.zeros(n_rows, dtype=np.int64)
    cols = np.zeros(n_cols, dtype=np.int64)
    for block, n_blocks, r, c in per_block:
        rows[block::n_blocks] = r
        cols += c
    return rows, cols
