"""A fitted model's state where it was computed: factor and seen-item blocks on workers.

A model of ten million users holds 2.4 GiB of user factors at 64 factors; gathering them
(or the record of every user's seen items) into the client is what bounded a fit by one
process's memory. So a side whose factors exceed :data:`GATHER_BELOW_BYTES` stays where
the fit left it, as residue blocks on the workers (block ``b`` holds global rows ``g`` with
``g % R == b``, the layout of :mod:`mfdask.engine.blocks`), the way Spark keeps factors as
distributed DataFrames:

- :class:`FactorBlocks` is one side's ``(n_rows, k)`` float32 matrix: ``take(rows)``
  fetches the rows of a few ids (``recommend`` for a handful of users moves ``len(rows) *
  k`` floats, not the matrix), ``to_numpy()`` gathers it when asked, ``write_parquet``
  and ``write_npy`` have each worker write its own block (outputs, checkpoints), and
  ``read_parquet`` / ``read_npy`` load blocks onto workers from shared storage;
- :class:`SeenBlocks` is the ``(n_users, n_items)`` pattern of the training ratings,
  block-aligned with the user factors, so that top-k on a worker filters seen items
  without asking anyone.

Whether a side stays on the workers is decided by :func:`keeps_on_workers`: only when
the cluster outlives the fit (a client the caller made, not a ``LocalCluster`` started for
the call) and the side is large, or when the Dask config ``mfdask.state.keep`` says
``"workers"`` (``"client"`` always gathers). Blocks live as long as the client: save the
model (``model.save(path)``) before closing it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from distributed import Client, Future

from mfdask._warnings import MfdaskWarning
from mfdask.engine.blocks import n_local_rows
from mfdask.engine.cluster import is_transient
from mfdask.errors import StateLostError
from mfdask.kernels.init import hashed_normal_rows

GATHER_BELOW_BYTES = 256 * 2**20
"""A side at most this large (float32 bytes) is gathered to the client after a fit
(Dask config ``mfdask.state.gather-below-bytes``); a larger one stays on the workers."""

KEEP_MODES = ("auto", "workers", "client")


class GatherWarning(MfdaskWarning):
    """A large distributed matrix was gathered into the client's memory."""


def gather_below_bytes() -> int:
    return int(dask.config.get("mfdask.state.gather-below-bytes", GATHER_BELOW_BYTES))


def keeps_on_workers(client: Client, nbytes: int) -> bool:
    """Whether a fitted side of ``nbytes`` stays as blocks on the workers of ``client``."""
    mode = str(dask.config.get("mfdask.state.keep", "auto"))
    if mode not in KEEP_MODES:
        raise ValueError(f"mfdask.state.keep must be one of {list(KEEP_MODES)}, got {mode!r}")
    if mode == "client" or is_transient(client):
        return False
    return mode == "workers" or nbytes > gather_below_bytes()


# ---------------------------------------------------------------------- worker tasks


def draw_normal_block(
    block: int, n_blocks: int, n_rows: int, k: int, seed: int, scale: float
) -> np.ndarray:
    """Block ``block``'s rows of ``scale * N(0, 1)`` factors keyed by global row (a task)."""
    rows = np.arange(block, n_rows, n_blocks, dtype=np.int64)
    out = np.empty((len(rows), k), dtype=np.float32)
    hashed_normal_rows(rows, k, np.uint64(seed % 2**64), float(scale), out)
    return out


def zero_block(block: int, n_blocks: int, n_rows: int, k: int) -> np.ndarray:
    """Block ``block``'s rows of a zero factor matrix (a task; the pages are untouched
    until written)."""
    return np.zeros((len(range(block, n_rows, n_blocks)), k), dtype=np.float32)


def take_local_rows(factors: np.ndarray, local: np.ndarray) -> np.ndarray:
    return factors[local]


def _column_slice(factors: np.ndarray, block: int, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(factors[:, start:stop])


def _with_columns(factors: np.ndarray, extra: np.ndarray) -> np.ndarray:
    extra = np.broadcast_to(extra, (factors.shape[0], extra.shape[1]))
    return np.hstack([factors, extra]).astype(np.float32, copy=False)


def _save_npy(factors: np.ndarray, path: str) -> str:
    np.save(path, np.ascontiguousarray(factors), allow_pickle=False)
    return path


def _load_npy(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _factor_table(
    id_name: str, ids: np.ndarray, factors: np.ndarray, extra: dict[str, np.ndarray]
) -> pa.Table:
    k = factors.shape[1]
    flat = pa.array(np.ascontiguousarray(factors, dtype=np.float32).ravel())
    columns = {id_name: pa.array(ids), "factors": pa.FixedSizeListArray.from_arrays(flat, k)}
    for name, values in extra.items():
        columns[name] = pa.array(np.asarray(values, dtype=np.float32))
    return pa.table(columns)


def _write_factor_block(
    factors: np.ndarray, ids: np.ndarray, id_name: str, path: str, extra: dict[str, np.ndarray]
) -> int:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_factor_table(id_name, ids, factors, extra), path)
    return len(ids)


READ_BATCH_ROWS = 65_536
"""Rows decoded at a time when a worker reads a factor block from Parquet."""


def release_arrow_memory() -> None:
    """Hand the memory Arrow's pool keeps after a read back to the system.

    Arrow's allocator keeps freed pages for reuse; after a worker has read a block into
    NumPy they would stay in its process, memory Dask sees as unmanaged.
    """
    pa.default_memory_pool().release_unused()


def _read_factor_block(path: str) -> np.ndarray:
    """A block's ``factors`` column as ``(rows, k) float32``, decoded batch by batch into
    one array (reading the whole column first held about four times the block while it
    was converted: 1.27 GiB of RSS for a 244 MiB block of 1M users at 64 factors, 0.40
    GiB this way)."""
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    k = parquet.schema_arrow.field("factors").type.list_size
    out = np.empty((parquet.metadata.num_rows, k), dtype=np.float32)
    at = 0
    for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=["factors"]):
        col = batch.column(0)
        values = col.flatten().to_numpy(zero_copy_only=False)
        out[at : at + len(col)] = values.reshape(len(col), k)
        at += len(col)
    del parquet
    release_arrow_memory()
    return out


# ---------------------------------------------------------------------- factor blocks


@dataclass(eq=False)
class FactorBlocks:
    """One side's ``(n_rows, k) float32`` factors as residue blocks held on workers.

    Attributes
    ----------
    blocks : list of Future
        Block ``b``: ``(n_local_rows(n_rows, R, b), k) float32``, rows ``b, b + R, ...``.
    where : list of str
        The worker holding each block.
    n_rows, k : int
    """

    blocks: list[Future]
    where: list[str]
    n_rows: int
    k: int
    backups: list[Future] = field(default_factory=list)
    """A copy of each block on another worker, under a key of its own (:meth:`replicate`)."""

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.k)

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.k * 4

    @property
    def client(self) -> Client:
        client = self.blocks[0].client
        if client.status not in ("running", "connecting"):
            raise StateLostError(
                "the Dask client holding this model's factor blocks is closed: save the "
                "model (model.save(path)) before closing the client, then load_model(path)"
            )
        return client

    def _pinned(self, func: Callable[..., Any], *args: Any, where: str) -> Future:
        return self.client.submit(
            func, *args, workers=[where], allow_other_workers=True, pure=False
        )

    def _gather(self, futures: list[Future]) -> list[Any]:
        """Results of tasks on the blocks; :class:`StateLostError` when a worker holding
        them is gone (its blocks cannot come back: their tasks are pinned there), rather
        than a wait for that worker."""
        from mfdask.engine.resilience import ClusterFailure, gather

        try:
            return gather(self.client, futures, set(self.where))
        except ClusterFailure as exc:
            raise StateLostError(
                f"factor blocks of this model are lost ({exc}): the worker holding them left "
                "the cluster; load the model from a saved copy or fit again"
            ) from exc

    @classmethod
    def normal(
        cls, client: Client, n_rows: int, k: int, scale: float, seed: int, where: list[str]
    ) -> FactorBlocks:
        """``scale * N(0, 1)`` factors drawn on the workers by global row index.

        The values depend on ``(seed, row, column)`` only (:mod:`mfdask.kernels.init`), so
        on neither the block count nor the cluster.
        """
        r = len(where)
        blocks = [
            client.submit(
                draw_normal_block,
                b,
                r,
                n_rows,
                k,
                int(seed),
                float(scale),
                workers=[w],
                allow_other_workers=False,
                pure=False,
            )
            for b, w in enumerate(where)
        ]
        return cls(blocks, list(where), int(n_rows), int(k))

    @classmethod
    def zeros(cls, client: Client, n_rows: int, k: int, where: list[str]) -> FactorBlocks:
        """Zero factors, block ``b`` made on ``where[b]``."""
        r = len(where)
        blocks = [
            client.submit(
                zero_block, b, r, n_rows, k, workers=[w], allow_other_workers=False, pure=False
            )
            for b, w in enumerate(where)
        ]
        return cls(blocks, list(where), int(n_rows), int(k))

    def to_numpy(self) -> np.ndarray:
        """The whole matrix in the client's memory (warns above the gather threshold)."""
        if self.nbytes > gather_below_bytes():
            warnings.warn(
                f"gathering a {self.n_rows:,} x {self.k} factor matrix "
                f"({self.nbytes / 2**30:.2f} GiB) into the client; use recommend_all, "
                "save or take(rows) to work on the blocks where they are",
                GatherWarning,
                stacklevel=3,
            )
        parts = self._gather(self.blocks)
        full = np.empty(self.shape, dtype=np.float32)
        for b, f in enumerate(parts):
            full[b :: self.n_blocks] = f
        return full

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.to_numpy()
        return out if dtype is None else out.astype(dtype)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), k)`` factors of global ``rows`` (any order, repeats allowed).

        Each block sends only the rows asked of it.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.k), dtype=np.float32)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.n_rows:
            raise IndexError(f"row index out of range 0..{self.n_rows - 1}")
        owner = rows % self.n_blocks
        asked = [b for b in range(self.n_blocks) if (owner == b).any()]
        futures = [
            self._pinned(
                take_local_rows,
                self.blocks[b],
                rows[owner == b] // self.n_blocks,
                where=self.where[b],
            )
            for b in asked
        ]
        for b, part in zip(asked, self._gather(futures), strict=True):
            out[owner == b] = part
        return out

    def map_blocks(self, func: Callable[..., Any], *args: Any) -> list[Future]:
        """``func(block_b, b, *args)`` for every block, on its worker."""
        return [
            self._pinned(func, f, b, *args, where=w)
            for b, (f, w) in enumerate(zip(self.blocks, self.where, strict=True))
        ]

    def columns(self, start: int, stop: int) -> FactorBlocks:
        """Columns ``start:stop`` of every block, cut on its worker (the same blocks when
        that is all of them): a DSGD state's factors without its bias column, say."""
        if (start, stop) == (0, self.k):
            return self
        return FactorBlocks(
            self.map_blocks(_column_slice, start, stop), list(self.where), self.n_rows, stop - start
        )

    def append_columns(self, extra: Callable[[int], np.ndarray]) -> FactorBlocks:
        """Every block with ``extra(b)`` (``(rows of b, e)``, or ``(1, e)`` for every row)
        appended on the right, on its worker: a model's user score vectors
        ``[p_u, 1, ...]`` from its factors."""
        futures = []
        for b, (f, w) in enumerate(zip(self.blocks, self.where, strict=True)):
            cols = np.ascontiguousarray(extra(b), dtype=np.float32)
            futures.append(self._pinned(_with_columns, f, cols, where=w))
        width = int(np.asarray(extra(0)).shape[1]) if self.n_blocks else 0
        return FactorBlocks(futures, list(self.where), self.n_rows, self.k + width)

    def write_npy(self, directory: Path, name: str) -> list[str]:
        """Each worker writes its block as ``<name>.block-<b>-of-<R>.npy`` in ``directory``."""
        files = [
            str(directory / f"{name}.block-{b}-of-{self.n_blocks}.npy")
            for b in range(self.n_blocks)
        ]
        futures = [
            self._pinned(_save_npy, f, path, where=w)
            for f, path, w in zip(self.blocks, files, self.where, strict=True)
        ]
        self._gather(futures)
        return [Path(p).name for p in files]

    @classmethod
    def read_npy(
        cls,
        client: Client,
        directory: Path,
        files: list[str],
        n_rows: int,
        k: int,
        where: list[str],
    ) -> FactorBlocks:
        """Blocks written by :meth:`write_npy`, each loaded by the worker it will live on."""
        blocks = [
            client.submit(
                _load_npy, str(directory / name), workers=[w], allow_other_workers=False, pure=False
            )
            for name, w in zip(files, _cycle(where, len(files)), strict=True)
        ]
        return cls(blocks, _cycle(where, len(files)), int(n_rows), int(k))

    def write_parquet(
        self,
        directory: Path,
        id_name: str,
        ids: pd.Index,
        extra: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Each worker writes ``directory/block=<b>/part-0.parquet`` (``id, factors``).

        The same columns as a small model's single file (``factors`` a fixed-size list),
        hive-partitioned by block, so pandas, Spark and DuckDB read the directory as one
        table. ``extra`` per-row columns (biases) are cut by block on the client.
        """
        values = ids.to_numpy()
        futures = []
        for b, (f, w) in enumerate(zip(self.blocks, self.where, strict=True)):
            block_extra = {
                name: np.asarray(v)[b :: self.n_blocks] for name, v in (extra or {}).items()
            }
            path = str(directory / f"block={b}" / "part-0.parquet")
            futures.append(
                self._pinned(
                    _write_factor_block,
                    f,
                    values[b :: self.n_blocks],
                    id_name,
                    path,
                    block_extra,
                    where=w,
                )
            )
        return int(sum(self._gather(futures)))

    @classmethod
    def read_parquet(
        cls, client: Client, directory: Path, n_blocks: int, n_rows: int, k: int, where: list[str]
    ) -> FactorBlocks:
        """Blocks written by :meth:`write_parquet`, each read by the worker it will live on."""
        placed = _cycle(where, n_blocks)
        blocks = [
            client.submit(
                _read_factor_block,
                str(directory / f"block={b}" / "part-0.parquet"),
                workers=[w],
                allow_other_workers=False,
                pure=False,
            )
            for b, w in enumerate(placed)
        ]
        return cls(blocks, placed, int(n_rows), int(k))

    def replicate(self) -> None:
        """Copy each block to another worker under a key of its own (when there are two
        workers), so that one lost worker leaves a copy of every block: an in-memory
        checkpoint's only safeguard.

        Not ``client.replicate``: Dask's active memory manager (its ``ReduceReplicas``
        policy, on by default) drops extra replicas within seconds, and a copy under
        another key is not a replica. The block itself never moves (a transfer would make
        it a replica, which the memory manager may then drop on its home worker): a copy
        is made next to it, copied again on the other worker, and the first released.
        """
        client = self.client
        workers = sorted(client.nthreads())
        if len(workers) < 2 or self.backups:
            return
        from mfdask.engine.resilience import collect

        near = []
        for f, w in zip(self.blocks, self.where, strict=True):
            other = workers[(workers.index(w) + 1) % len(workers)] if w in workers else workers[0]
            first = client.submit(
                _copy_block, f, workers=[w], allow_other_workers=False, pure=False
            )
            near.append(first)
            self.backups.append(
                client.submit(
                    _copy_block, first, workers=[other], allow_other_workers=False, pure=False
                )
            )
        collect(client, self.backups, [])
        del near

    def surviving(self) -> list[Future]:
        """Block ``b``'s key, or its copy's when the block was lost with its worker."""
        if not self.backups:
            return list(self.blocks)
        who = self.client.who_has(self.blocks + self.backups)
        return [
            main if who.get(main.key) or not who.get(copy.key) else copy
            for main, copy in zip(self.blocks, self.backups, strict=True)
        ]

    def alive(self) -> bool:
        """Whether every block has a copy (under its key or its backup's) on some worker."""
        try:
            who = self.client.who_has(self.blocks + self.backups)
        except StateLostError:
            return False
        backup = {f.key: c.key for f, c in zip(self.blocks, self.backups, strict=False)}
        return all(who.get(f.key) or who.get(backup.get(f.key, f.key)) for f in self.blocks)

    def release(self) -> None:
        self.blocks = []
        self.backups = []


def _copy_block(block: np.ndarray) -> np.ndarray:
    return block.copy()  # under a key of its own: not a replica of the block


def _cycle(where: list[str], n: int) -> list[str]:
    return [where[b % len(where)] for b in range(n)]


# ---------------------------------------------------------------------- seen items


def _pattern_rows(
    pattern: tuple[int, int, np.ndarray, np.ndarray], local: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths, indices)`` of the given local rows of one block's CSR pattern."""
    _, _, indptr, indices = pattern
    starts, stops = indptr[local], indptr[local + 1]
    lengths = stops - starts
    if not lengths.sum():
        return lengths, np.empty(0, np.int32)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return lengths, indices[np.arange(int(lengths.sum())) + offsets]


def _write_seen_block(pattern: tuple[int, int, np.ndarray, np.ndarray], path: str) -> int:
    block, n_blocks, indptr, indices = pattern
    local = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "user_idx": pa.array((local * n_blocks + block).astype(np.int32)),
            "item_idx": pa.array(indices.astype(np.int32)),
        }
    )
    pq.write_table(table, path)
    return len(indices)


def _read_seen_block(
    path: str, block: int, n_blocks: int, n_rows: int
) -> tuple[int, int, np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    users = table.column("user_idx").to_numpy().astype(np.int64)
    items = table.column("item_idx").to_numpy().astype(np.int32)
    del table
    release_arrow_memory()
    local = users // n_blocks
    order = np.lexsort((items, local))
    counts = np.bincount(local, minlength=n_local_rows(n_rows, n_blocks, block))
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return block, n_blocks, indptr, items[order]


@dataclass(eq=False)
class SeenBlocks:
    """The training ratings' ``(n_rows, n_cols)`` pattern as residue row blocks on workers.

    Block ``b`` is ``(b, R, indptr, indices)`` over local rows with global column
    indices, block-aligned with the model's user :class:`FactorBlocks`.
    """

    blocks: list[Future]
    where: list[str]
    n_rows: int
    n_cols: int

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.n_cols)

    def _factors_like(self) -> FactorBlocks:
        return FactorBlocks(self.blocks, self.where, self.n_rows, 0)

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        """``(len(rows), n_cols)`` bool CSR of the given global rows."""
        rows = np.asarray(rows, dtype=np.int64)
        like = self._factors_like()
        owner = rows % self.n_blocks
        asked = [b for b in range(self.n_blocks) if (owner == b).any()]
        futures = [
            like._pinned(
                _pattern_rows,
                self.blocks[b],
                rows[owner == b] // self.n_blocks,
                where=self.where[b],
            )
            for b in asked
        ]
        lengths = np.zeros(len(rows), dtype=np.int64)
        pieces: dict[int, np.ndarray] = {}
        for b, (lens, idx) in zip(asked, like._gather(futures), strict=True):
            lengths[owner == b] = lens
            pieces[b] = idx
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        for b in asked:
            sel = np.flatnonzero(owner == b)
            lens = lengths[sel]
            dest = np.repeat(indptr[sel], lens) + (
                np.arange(int(lens.sum()))
                - np.repeat(np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
            )
            indices[dest] = pieces[b]
        data = np.ones(len(indices), dtype=bool)
        return sp.csr_matrix((data, indices, indptr), shape=(len(rows), self.n_cols))

    def tocsr(self) -> sp.csr_matrix:
        """The whole pattern in the client's memory."""
        return self.take(np.arange(self.n_rows, dtype=np.int64))

    def __getitem__(self, rows: Any) -> sp.csr_matrix:
        return self.take(np.asarray(rows))

    def write_parquet(self, directory: Path) -> int:
        """Each worker writes ``directory/block=<b>/part-0.parquet`` (``user_idx, item_idx``)."""
        like = self._factors_like()
        futures = [
            like._pinned(
                _write_seen_block, f, str(directory / f"block={b}" / "part-0.parquet"), where=w
            )
            for b, (f, w) in enumerate(zip(self.blocks, self.where, strict=True))
        ]
        return int(sum(like._gather(futures)))

    @classmethod
    def read_parquet(
        cls,
        client: Client,
        directory: Path,
        n_blocks: int,
        n_rows: int,
        n_cols: int,
        where: list[str],
    ) -> SeenBlocks:
        placed = _cycle(where, n_blocks)
        blocks = [
            client.submit(
                _read_seen_block,
                str(directory / f"block={b}" / "part-0.parquet"),
                b,
                n_blocks,
                n_rows,
                workers=[w],
                allow_other_workers=False,
                pure=False,
            )
            for b, w in enumerate(placed)
        ]
        return cls(blocks, placed, int(n_rows), int(n_cols))
