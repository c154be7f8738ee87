"""Distributed stochastic gradient descent over stratified blocks (DSGD), loss-agnostic.

The rating matrix is cut into ``B x B`` cells by residue (``B = n_blocks``, by default
the number of workers): user ``u`` is in user block ``u % B`` at local row ``u // B``,
item ``i`` in item block ``i % B`` at local row ``i // B``. An epoch is ``B``
sub-epochs; a sub-epoch is a *stratum*, ``B`` cells no two of which share a user block or
an item block, so the cells of a stratum can be trained at the same time without locks
(Gemulla, Nijkamp, Haas & Sismanis, "Large-scale matrix factorization with distributed
stochastic gradient descent", KDD 2011, section 4). With ``B = 3`` and the base
schedule, sub-epoch ``s`` trains cell ``(w, (w + s) mod B)``::

              item block 0  1  2
    user block 0        s0 s1 s2
               1        s2 s0 s1
               2        s1 s2 s0

With ``shuffle_strata`` each epoch permutes both the order of the sub-epochs and the
item blocks (cell ``(w, pi[(w + sigma[s]) mod B])``): still ``B`` disjoint strata that
cover every cell once (:func:`check_plan` verifies every plan before it runs).

Where the data lives
--------------------
- Ratings move once. :meth:`DSGD.__init__` shuffles the input partitions into user row
  blocks (:func:`mfdask.engine.blocks.place_row_blocks`), and each worker then cuts its
  user block into a :class:`UserShard`: the block's CSR (global item indices, sorted
  within each row) and its ``B`` :class:`Cell` s. A shard never leaves its worker.
- User state block ``w`` stays on the worker of shard ``w``. Item state block ``j``
  travels to whichever worker trains a cell of column ``j`` next. Tasks only depend on
  their two inputs, so sub-epochs pipeline without a global barrier: worker ``w`` starts
  sub-epoch ``s + 1`` as soon as it holds its next item block.
- How item blocks travel. Each worker's epoch is one task that trains every cell of
  the user blocks it holds, sub-epoch by sub-epoch, and the tasks hand item blocks to
  each other directly (:mod:`mfdask.engine.exchange`): one RPC per hand-over between
  two workers, and none at all when the next cell of an item block is on the same
  worker (with ``B`` a multiple of the workers, or after a recovery left several user
  blocks on one worker) - the block simply stays in the task. Through the scheduler
  every cell would be a task and every hand-over a task-finished, ``getitem`` and
  next-task round trip (about 20 ms each on two local workers, as long as training a
  small cell; with ``B = 8`` on 2 workers an ML-100K epoch took 40x as long as with
  ``B = 2``). Several short epochs can even run in the same tasks
  (:meth:`DSGD.submit_epochs`), item blocks crossing epoch boundaries the same way.
  With ``direct_exchange=False`` every cell is a scheduler task instead. Both paths
  train the same cells with the same inputs and seeds, hence the same floats (the order
  of the cells within a sub-epoch does not matter: they share no rows).

The contract with a loss
------------------------
The engine never knows the loss. A model supplies

- a *state*: two dicts of named ``float32`` arrays whose first axis is the global user
  (resp. item) index, e.g. ``{"factors": (n_users, k), "bias": (n_users,)}``. The
  engine splits them by residue (:meth:`DSGD.set_state`) and reassembles them
  (:meth:`DSGD.gather_state`). A block's arrays are indexed by *local* rows.

  A side can also start and end on the workers, never whole on the client: given a
  :class:`Drawn` spec instead of an array, each block draws its rows on its worker by
  global row index (:mod:`mfdask.kernels.init`, so the start does not depend on the
  block count), and a side the engine keeps on the workers (``keep_on_workers``) is
  returned by :meth:`DSGD.gather_state` as one
  :class:`~mfdask.engine.state.FactorBlocks` per 2-d array (1-d arrays such as biases,
  ``1 / k`` of the factors, are still gathered). :meth:`DSGD.set_state` takes such
  blocks, or checkpoint :class:`~mfdask.engine.checkpoint.BlockFiles`, back.
- a *block kernel*: a small picklable object satisfying :class:`BlockKernel`, rebuilt
  each epoch with that epoch's hyper-parameters (the learning rate, say). Its
  ``train(cell, shard, user, item, lo, hi, seed)`` trains on ratings ``lo:hi`` of the
  cell, in place on the ``user`` and ``item`` block dicts, usually by calling a numba
  kernel with the GIL released, and returns a ``float64`` vector of statistics (named by
  ``stat_names``) that the engine sums over threads and cells. Its optional
  ``evaluate(cell, shard, user, item)`` returns the same kind of vector without
  updating anything (validation error, say).

What a kernel can rely on inside ``train``:

- ``cell.users`` / ``cell.items`` are local row indices into the user / item block
  arrays; ``cell.values`` the ratings (float32), in CSR order (users ascending).
- The item block holds ``cell.n_local_items`` items: local item ``l`` is global item
  ``l * cell.n_blocks + cell.item_block``; ``cell.n_items`` is the catalogue size.
  Negative samplers (BPR, WARP) draw local items in ``[0, cell.n_local_items)``: those
  are exactly the items whose state this worker holds during the task.
- ``shard.indptr`` / ``shard.indices`` is the user block's full CSR row (global item
  indices, ascending), so ``row_contains(shard.indptr, shard.indices, u_local, global)``
  tests whether a sampled item is a positive of the user.
- ``cell.member_bits``, when not empty, holds the same membership for the held block as
  a bitset (one load per test instead of a binary search).
- ``seed`` is distinct per (random_state, epoch, user block, item block, thread).
- Other threads run ``train`` concurrently on other slices of the same cell and the
  same ``user`` / ``item`` arrays, without locks: Hogwild (Niu, Recht, Ré & Wright,
  NIPS 2011). Races on a shared row are intentional; with sparse data they are rare
  and SGD tolerates them. With one thread a fit is bitwise reproducible.

The engine hands each task *copies* of the state blocks (a future's value is never
mutated in place) and returns the updated blocks as new futures, so older states remain
valid: :meth:`DSGD.snapshot` keeps an epoch's state for early stopping at no cost.
"""

from __future__ import annotations

import itertools
import operator
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import dask
import dask.dataframe as dd
import numpy as np
from distributed import Client, Future, get_worker

from mfdask._progress import progress_bar
from mfdask.data.training import LocalRatings
from mfdask.engine.blocks import (
    BlockExtension,
    KeptBlocks,
    RowBlock,
    assemble_seen,
    block_pattern,
    block_workers,
    extend_row_blocks,
    n_local_rows,
    persist_partitions,
    place_row_blocks,
    positive_counts,
    submit_partitions,
)
from mfdask.engine.checkpoint import BlockFiles, block_digest, combine_digests
from mfdask.engine.cluster import worker_addresses
from mfdask.engine.exchange import (
    BlockExchangeError,
    Exchange,
    abort_exchanges,
    install,
    writable,
)
from mfdask.engine.resilience import collect as collect_futures
from mfdask.engine.resilience import gather
from mfdask.engine.sizes import sized
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.errors import PlanError
from mfdask.kernels.init import hashed_normal_rows
from mfdask.kernels.sampling import member_bitset

State = dict[str, np.ndarray]
"""Named float32 arrays of one block (or, on the client, of all rows)."""

Plan = list[list[tuple[int, int]]]
"""An epoch: sub-epochs, each a list of ``(user_block, item_block)`` cells."""


MEMBER_BITS_BYTES = 64 * 2**20
"""Largest total size of a shard's membership bitsets (one bit per user and item of the
block; 1.4 MB for a worker's half of ML-1M). Above it samplers search the CSR rows."""


# ---------------------------------------------------------------------- data on workers
@sized
@dataclass
class Cell:
    """The ratings of one (user block, item block) cell, in local indices.

    Attributes
    ----------
    user_block, item_block, n_blocks : int
        The cell's coordinates; global user ``u = users * n_blocks + user_block`` and
        global item ``i = items * n_blocks + item_block``.
    users, items : (nnz,) int32
        Local row indices into the user and item state blocks, users ascending.
    values : (nnz,) float32
        Ratings (or whatever value column the engine was given).
    n_local_users, n_local_items : int
        Rows of the user and item state blocks.
    n_users, n_items : int
        Global matrix shape (``n_items`` is the catalogue size).
    member_bits : (n_local_users * ⌈n_local_items / 8⌉,) uint8
        Which local items each local user rated, as a bitset
        (:func:`mfdask.kernels.sampling.member_bitset`) for negative samplers: built when
        the shard's bitsets fit in :data:`MEMBER_BITS_BYTES`, else empty.
    """

    user_block: int
    item_block: int
    n_blocks: int
    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    n_local_users: int
    n_local_items: int
    n_users: int
    n_items: int
    member_bits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    @property
    def nnz(self) -> int:
        return len(self.values)


@sized
@dataclass
class UserShard:
    """A user block on its worker: its CSR rows and their cut into cells.

    Attributes
    ----------
    block : RowBlock
        CSR of the user block (local rows, *global* item indices sorted per row).
    cells : list of Cell
        ``cells[j]`` holds the block's ratings of item block ``j``.
    """

    block: RowBlock
    cells: list[Cell] = field(default_factory=list)

    @property
    def indptr(self) -> np.ndarray:
        return self.block.indptr

    @property
    def indices(self) -> np.ndarray:
        return self.block.indices

    @property
    def nnz(self) -> int:
        return self.block.nnz


def build_shard(block: RowBlock) -> UserShard:
    """Cut a user row block into its ``n_blocks`` cells (runs on the block's worker).

    Vectorised: one stable sort of the ratings by item block keeps users ascending
    within every cell.
    """
    n_blocks = block.n_blocks
    local_users = np.repeat(
        np.arange(block.n_local_rows, dtype=np.int32), np.diff(block.indptr)
    ).astype(np.int32)
    item_block = block.indices % n_blocks
    with_bits = block.n_local_rows * (block.n_cols + 8 * n_blocks) // 8 <= MEMBER_BITS_BYTES
    order = np.argsort(item_block, kind="stable")
    bounds = np.searchsorted(item_block[order], np.arange(n_blocks + 1))
    cells = []
    for j in range(n_blocks):
        sel = order[bounds[j] : bounds[j + 1]]
        users = np.ascontiguousarray(local_users[sel])
        items = np.ascontiguousarray(block.indices[sel] // n_blocks, dtype=np.int32)
        n_local_items = n_local_rows(block.n_cols, n_blocks, j)
        cells.append(
            Cell(
                user_block=block.block,
                item_block=j,
                n_blocks=n_blocks,
                users=users,
                items=items,
                values=np.ascontiguousarray(block.data[sel]),
                n_local_users=block.n_local_rows,
                n_local_items=n_local_items,
                n_users=block.n_rows,
                n_items=block.n_cols,
                member_bits=(
                    member_bitset(users, items, block.n_local_rows, n_local_items)
                    if with_bits
                    else np.zeros(0, np.uint8)
                ),
            )
        )
    return UserShard(block=block, cells=cells)


# ---------------------------------------------------------------------- the loss contract
class BlockKernel(Protocol):
    """What the engine needs of a loss: see "The contract with a loss" above."""

    stat_names: ClassVar[tuple[str, ...]]

    def train(
        self,
        cell: Cell,
        shard: UserShard,
        user: State,
        item: State,
        lo: int,
        hi: int,
        seed: int,
    ) -> np.ndarray:
        """Train on ratings ``lo:hi`` of ``cell`` in place; return ``float64`` statistics."""
        ...


# ---------------------------------------------------------------------- the schedule
def stratum_plan(n_blocks: int, rng: np.random.Generator | None = None) -> Plan:
    """The ``n_blocks`` sub-epochs of one epoch.

    Without ``rng``: sub-epoch ``s`` is cells ``(w, (w + s) mod B)``. With ``rng``: the
    sub-epoch order ``sigma`` and an item-block relabelling ``pi`` are drawn, giving
    cells ``(w, pi[(w + sigma[s]) mod B])``; a relabelling of a Latin square is still
    one, so the strata stay disjoint and cover every cell once.
    """
    b = n_blocks
    sigma = np.arange(b) if rng is None else rng.permutation(b)
    pi = np.arange(b) if rng is None else rng.permutation(b)
    return [[(w, int(pi[(w + int(sigma[s])) % b])) for w in range(b)] for s in range(b)]


def check_plan(plan: Plan, n_blocks: int) -> None:
    """Raise :class:`PlanError` unless ``plan`` is a valid DSGD epoch.

    Valid: in every sub-epoch no two cells share a user block or an item block (so no
    two workers touch the same rows), and over the epoch every cell appears once.
    """
    seen: set[tuple[int, int]] = set()
    for s, stratum in enumerate(plan):
        users = [w for w, _ in stratum]
        items = [j for _, j in stratum]
        if len(set(users)) != len(users) or len(set(items)) != len(items):
            raise PlanError(
                f"sub-epoch {s} gives two workers the same rows: cells {stratum} "
                "share a user block or an item block"
            )
        for cell in stratum:
            if not (0 <= cell[0] < n_blocks and 0 <= cell[1] < n_blocks):
                raise PlanError(f"sub-epoch {s} has cell {cell} outside {n_blocks}x{n_blocks}")
            if cell in seen:
                raise PlanError(f"cell {cell} is trained twice in one epoch")
            seen.add(cell)
    if len(seen) != n_blocks * n_blocks:
        raise PlanError(f"the epoch trains {len(seen)} of {n_blocks * n_blocks} cells")


# ---------------------------------------------------------------------- tasks on workers
def _task_threads(n_threads: int | None) -> int:
    if n_threads:
        return n_threads
    try:
        return max(1, get_worker().state.nthreads)
    except ValueError:  # not on a worker (a synchronous call)
        return 1


def thread_seeds(entropy: Sequence[int], n: int) -> list[int]:
    """``n`` independent 63-bit seeds from a SeedSequence over ``entropy``."""
    state = np.random.SeedSequence(list(entropy)).generate_state(n, dtype=np.uint64)
    return [int(s >> np.uint64(1)) for s in state]


def thread_bounds(nnz: int, n_threads: int) -> list[tuple[int, int]]:
    """Cut ``0..nnz`` into ``n_threads`` contiguous, near-equal slices."""
    edges = np.linspace(0, nnz, n_threads + 1).astype(np.int64)
    return [(int(edges[t]), int(edges[t + 1])) for t in range(n_threads)]


def run_cell(
    kernel: BlockKernel,
    cell: Cell,
    shard: UserShard,
    user: State,
    item: State,
    entropy: Sequence[int],
    n_threads: int,
) -> np.ndarray:
    """Run ``kernel.train`` Hogwild over ``cell`` with ``n_threads`` threads, in place.

    Each thread takes a contiguous slice of the cell's ratings (the kernel shuffles its
    slice); since cells are in user order, threads mostly update disjoint user rows and
    contend only on item rows. Returns the statistics summed over threads.
    """
    n_threads = max(1, min(n_threads, cell.nnz // 1024 or 1))
    seeds = thread_seeds(entropy, n_threads)
    bounds = thread_bounds(cell.nnz, n_threads)
    if n_threads == 1:
        return np.asarray(kernel.train(cell, shard, user, item, 0, cell.nnz, seeds[0]), np.float64)
    with ThreadPoolExecutor(n_threads) as pool:
        parts = list(
            pool.map(
                lambda t: kernel.train(cell, shard, user, item, *bounds[t], seeds[t]),
                range(n_threads),
            )
        )
    return np.sum(np.asarray(parts, dtype=np.float64), axis=0)


def _train_task(
    shard: UserShard,
    item_block: int,
    user: State,
    item: State,
    kernel: BlockKernel,
    entropy: tuple[int, ...],
    n_threads: int | None,
) -> tuple[State, State, np.ndarray]:
    """One cell of one sub-epoch, on the worker of the user block."""
    user = {name: arr.copy() for name, arr in user.items()}
    item = {name: arr.copy() for name, arr in item.items()}
    stats = run_cell(
        kernel, shard.cells[item_block], shard, user, item, entropy, _task_threads(n_threads)
    )
    return user, item, stats


@dataclass(frozen=True)
class WorkerRoute:
    """One worker's cells over the (fused) sub-epochs, and where each item block goes.

    ``steps[s]`` lists the worker's cells of sub-epoch ``s`` as ``(user_block,
    item_block, sender, receiver)``: the item block comes from worker ``sender`` (None:
    this task already holds it, as a task input in sub-epoch 0 or from its own previous
    cell) and goes to worker ``receiver`` after the cell (None: it stays in this task,
    for its next cell here or as an output after the last sub-epoch). Cells whose item
    block is already held come first, so a worker trains while its peers' blocks travel.
    """

    address: str
    user_blocks: tuple[int, ...]
    first_items: tuple[int, ...]
    steps: tuple[tuple[tuple[int, int, str | None, str | None], ...], ...]


def worker_routes(plan: Plan, workers: Sequence[str]) -> list[WorkerRoute]:
    """Each worker's cells of a checked ``plan`` (sub-epochs, possibly of several epochs),
    ``workers[w]`` being the address of user block ``w``'s worker."""
    trainer = [{j: w for w, j in stratum} for stratum in plan]
    routes = []
    for address in sorted(set(workers)):
        mine = tuple(w for w in range(len(workers)) if workers[w] == address)
        steps = []
        for s, stratum in enumerate(plan):
            cells = []
            for w, j in stratum:
                if workers[w] != address:
                    continue
                sender = workers[trainer[s - 1][j]] if s > 0 else None
                receiver = workers[trainer[s + 1][j]] if s + 1 < len(plan) else None
                cells.append(
                    (
                        w,
                        j,
                        None if sender == address else sender,
                        None if receiver == address else receiver,
                    )
                )
            cells.sort(key=lambda c: (c[2] is not None, c[0]))
            steps.append(tuple(cells))
        first = tuple(j for w, j in plan[0] if workers[w] == address)
        routes.append(WorkerRoute(address, mine, first, tuple(steps)))
    return routes


def _train_epochs_task(
    shards: dict[int, UserShard],
    users: dict[int, State],
    first_items: dict[int, State],
    kernels: tuple[BlockKernel, ...],
    seed: int,
    first_epoch: int,
    route: WorkerRoute,
    token: str,
    n_threads: int | None,
) -> tuple[dict[int, State], dict[int, State], np.ndarray]:
    """Every cell of one worker's user blocks over ``len(kernels)`` consecutive epochs.

    ``route.steps`` runs over the epochs' sub-epochs one after the other (``n_blocks``
    per epoch; epoch ``first_epoch + r`` is trained with ``kernels[r]``). The same cells
    with the same seeds as the per-cell tasks of the scheduled path, so both give the
    same floats. After each cell the item block goes to the worker that trains it next,
    or stays here when that is this worker; a block from another worker is awaited from
    it (:mod:`mfdask.engine.exchange`), across epoch boundaries too.

    Returns the user blocks, the item blocks held at the end (by block index) and the
    statistics summed per epoch, shape ``(len(kernels), n_stats)``.
    """
    threads = _task_threads(n_threads)
    exchange = Exchange(token)
    users = {w: {name: arr.copy() for name, arr in st.items()} for w, st in users.items()}
    held = {j: {name: arr.copy() for name, arr in st.items()} for j, st in first_items.items()}
    per_epoch = len(route.steps) // len(kernels)
    totals: list[np.ndarray | None] = [None] * len(kernels)
    for s, cells in enumerate(route.steps):
        r = s // per_epoch
        for w, j, sender, receiver in cells:
            if sender is not None:
                held[j] = writable(exchange.receive((s, j), sender))
            shard = shards[w]
            part = run_cell(
                kernels[r],
                shard.cells[j],
                shard,
                users[w],
                held[j],
                (seed, first_epoch + r, w, j),
                threads,
            )
            totals[r] = part if totals[r] is None else totals[r] + part
            if receiver is not None:
                exchange.send(receiver, (s + 1, j), held.pop(j))  # the receiver owns it now
    n_stats = len(kernels[0].stat_names)
    return (
        users,
        held,
        np.asarray([np.zeros(n_stats) if t is None else t for t in totals], dtype=np.float64),
    )


def _pick(out: tuple[dict[int, State], dict[int, State], np.ndarray], part: int, key: int) -> State:
    """Block ``key`` of a worker task's user (``part`` 0) or item (1) outputs."""
    return out[part][key]


def _evaluate_task(shard: UserShard, user: State, kernel: Any, *items: State) -> np.ndarray | None:
    """``kernel.evaluate`` over every cell of a shard (read-only), summed (None: no cells)."""
    total = None
    for cell, item in zip(shard.cells, items, strict=True):
        part = np.asarray(kernel.evaluate(cell, shard, user, item), dtype=np.float64)
        total = part if total is None else total + part
    return total


def _split_state(state: Mapping[str, np.ndarray], block: int, n_blocks: int) -> State:
    return {name: np.ascontiguousarray(arr[block::n_blocks]) for name, arr in state.items()}


def _shard_nnz(shard: UserShard) -> int:
    return shard.nnz


def _shard_value_summary(shard: UserShard) -> np.ndarray:
    data = shard.block.data
    if not len(data):
        return np.array([0.0, 0.0, np.inf, -np.inf])
    return np.array([len(data), float(data.sum(dtype=np.float64)), data.min(), data.max()])


@dataclass(frozen=True)
class Drawn:
    """A state array made by each block on its worker instead of sent from the client.

    Columns ``0 .. normal - 1`` are ``scale * N(0, 1)`` keyed by ``(seed, global row,
    column)`` (:func:`mfdask.kernels.init.hashed_normal_rows`), every other entry is
    ``fill``; ``columns = 0`` makes a 1-d ``(n_rows,)`` array of ``fill``. The values
    depend on the global row only, so on neither the block count nor the cluster.
    """

    columns: int
    normal: int = 0
    scale: float = 0.0
    seed: int = 0
    fill: float = 0.0

    def block(self, block: int, n_blocks: int, n_rows: int) -> np.ndarray:
        """Block ``block``'s rows (``block, block + n_blocks, ...``) of the array."""
        rows = np.arange(block, n_rows, n_blocks, dtype=np.int64)
        if self.columns == 0:
            return np.full(len(rows), self.fill, dtype=np.float32)
        out = np.full((len(rows), self.columns), self.fill, dtype=np.float32)
        if self.normal:
            drawn = np.empty((len(rows), self.normal), dtype=np.float32)
            hashed_normal_rows(rows, self.normal, np.uint64(self.seed % 2**64), self.scale, drawn)
            out[:, : self.normal] = drawn
        return out

    def full(self, n_rows: int) -> np.ndarray:
        """The whole array on the client (the same floats as the blocks)."""
        return self.block(0, 1, n_rows)


@dataclass(frozen=True, eq=False)
class Overlaid:
    """A :class:`Drawn` array whose first rows are replaced by fitted blocks: the start of
    a ``partial_fit`` of a model held on the workers.

    ``fitted`` holds ``(n_old, c)`` rows (``c <= base.columns``) in the same residue
    blocks, so in block ``b`` they are the first rows (global rows keep their block and
    local index when rows are appended). ``column`` (``(n_old,)``, optional) fills column
    ``c`` of those rows (a fitted bias next to the factors).
    """

    base: Drawn
    fitted: FactorBlocks
    column: np.ndarray | None = None


def _compose_state(
    names: tuple[str, ...], block: int, n_blocks: int, n_rows: int, *parts: Any
) -> State:
    """One state block from its arrays' parts (a task on the block's worker): a block
    array already (scattered, or a :class:`FactorBlocks` / checkpoint block), a
    :class:`Drawn` spec drawn here, or ``(spec, fitted block, column)`` of an
    :class:`Overlaid` array."""
    out: State = {}
    for name, part in zip(names, parts, strict=True):
        if isinstance(part, Drawn):
            out[name] = part.block(block, n_blocks, n_rows)
        elif isinstance(part, tuple):
            spec, fitted, column = part
            drawn = spec.block(block, n_blocks, n_rows)
            drawn[: len(fitted), : fitted.shape[1]] = fitted
            if column is not None:
                drawn[: len(column), fitted.shape[1]] = column
            out[name] = drawn
        else:  # training tasks copy their inputs: the source block is never written
            out[name] = np.ascontiguousarray(part)
    return out


def _state_array(state: State, name: str) -> np.ndarray:
    """Array ``name`` of a state block (a task next to the block)."""
    return state[name]


def _state_subset(state: State, names: tuple[str, ...]) -> State:
    return {name: state[name] for name in names}


def _array_sizes(state: Mapping[str, Any], n_rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of each named state array, whatever form it is given in."""
    out = {}
    for name, arr in state.items():
        if isinstance(arr, Overlaid):
            arr = arr.base
        if isinstance(arr, Drawn):
            shape: tuple[int, ...] = (n_rows, arr.columns) if arr.columns else (n_rows,)
            out[name] = (shape, np.dtype(np.float32).str)
        elif isinstance(arr, (FactorBlocks, BlockFiles)):
            out[name] = (tuple(arr.shape), np.dtype(np.float32).str)
        else:
            out[name] = (arr.shape, arr.dtype.str)
    return out


# ---------------------------------------------------------------------- the driver
@dataclass
class EpochReport:
    """What one epoch did: summed kernel statistics, its plan and its wall time."""

    epoch: int
    stats: dict[str, float]
    seconds: float
    plan: Plan


@dataclass
class EpochGroup:
    """Consecutive epochs trained by the same tasks (:meth:`DSGD.submit_epochs`).

    Their statistics arrive together; the group's wall time is shared evenly.
    """

    size: int
    submitted: float
    token: str
    totals: np.ndarray | None = None
    seconds: float = 0.0


@dataclass
class PendingEpoch:
    """A submitted epoch (:meth:`DSGD.submit_epoch`): its statistics futures and the state
    it started from.

    An epoch of a fused :class:`EpochGroup` (``group``) reads row ``row`` of its
    tasks' statistics; only a group's first epoch knows the state before it
    (``before`` is None for the others).
    """

    epoch: int
    plan: Plan
    stat_names: tuple[str, ...]
    stats: list[Future]
    before: tuple[list[Future], list[Future]] | None
    submitted: float
    group: EpochGroup | None = None
    row: int = 0


class DSGD:
    """Ratings cut into ``n_blocks x n_blocks`` cells on workers, and states trained over them.

    Parameters
    ----------
    client : distributed.Client
    ratings : dask.dataframe.DataFrame or LocalRatings
        Columns ``user_idx:int32, item_idx:int32`` and ``value_col``; read partition by
        partition on the workers, never on the client (client-side ratings are
        scattered, see :func:`~mfdask.engine.blocks.persist_partitions`).
    n_users, n_items : int
        Matrix shape.
    n_blocks : int, optional
        ``B``; default the number of workers. A multiple of it runs several cells per
        worker per sub-epoch (useful when a worker has several threads to fill).
    n_threads : int, optional
        Hogwild threads per cell; default the threads of the worker that runs it.
    value_col : str
        Column holding the values kernels see in ``cell.values``.
    direct_exchange : bool, optional
        When every user block has a worker of its own, run each block's epoch as one
        task and pass item blocks between workers directly
        (:mod:`mfdask.engine.exchange`) instead of one task per cell with the scheduler
        moving the blocks. Same floats, far fewer scheduler round trips. Default: the
        Dask config value ``mfdask.dsgd.direct-exchange`` (True when unset).
    keep_on_workers : (bool, bool)
        Whether :meth:`gather_state` leaves the user (resp. item) side on the workers as
        :class:`~mfdask.engine.state.FactorBlocks` instead of assembling it on the client
        (see :func:`mfdask.engine.state.keeps_on_workers`).
    seen_on_workers : bool
        Keep the training pattern as :class:`~mfdask.engine.state.SeenBlocks` aligned
        with the user blocks (:attr:`seen`), placed again after a lost worker.
    extension : BlockExtension, optional
        Row blocks placed by an earlier fit and which of ``ratings`` they lack: when they
        fit this placement, only those ratings are shuffled and merged into them (the
        same blocks as placing all; :func:`~mfdask.engine.blocks.extend_row_blocks`).
    keep_placed : bool
        Keep the row blocks as :attr:`placed` (a
        :class:`~mfdask.engine.blocks.KeptBlocks`) for a later ``extension``.

    Notes
    -----
    Tasks are pinned to the worker that holds their user block (strict restrictions):
    locality is the whole point, and it keeps a fit reproducible for a given cluster
    shape.
    """

    def __init__(
        self,
        client: Client,
        ratings: dd.DataFrame | LocalRatings,
        n_users: int,
        n_items: int,
        n_blocks: int | None = None,
        n_threads: int | None = None,
        value_col: str = "rating",
        direct_exchange: bool | None = None,
        keep_on_workers: tuple[bool, bool] = (False, False),
        seen_on_workers: bool = False,
        extension: BlockExtension | None = None,
        keep_placed: bool = False,
    ) -> None:
        workers = worker_addresses(client)
        self.keep_on_workers = (bool(keep_on_workers[0]), bool(keep_on_workers[1]))
        self.seen_on_workers = bool(seen_on_workers)
        self.client = client
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.n_blocks = int(n_blocks or len(workers))
        if self.n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks!r}")
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads!r}")
        self.n_threads = n_threads
        self.value_col = value_col
        if direct_exchange is None:
            direct_exchange = bool(dask.config.get("mfdask.dsgd.direct-exchange", True))
        self.direct_exchange = bool(direct_exchange)
        self._exchange_id = uuid.uuid4().hex
        self._submissions = itertools.count()
        if self.direct_exchange:
            install(client)
        self._ratings = ratings  # kept to place the ratings again after a lost worker
        self._holdouts: list[tuple[dd.DataFrame | LocalRatings, list[Future]]] = []
        added = None if extension is None else extension.added(ratings)
        self.extended = (
            added is not None
            and extension is not None
            and extension.usable(client, self.n_blocks, item_major=False)
        )
        if self.extended:
            assert extension is not None and added is not None
            parts = persist_partitions(client, added)
            self._row_blocks = extend_row_blocks(
                client, extension.kept.user, parts, self.n_users, self.n_items, value_col=value_col
            )
        else:  # the blocks start from each partition as soon as it is read
            parts = submit_partitions(client, ratings)
            self._row_blocks = place_row_blocks(
                client, parts, self.n_blocks, self.n_users, self.n_items, value_col=value_col
            )
        del parts
        self.placed = (
            KeptBlocks(list(self._row_blocks), [], self.n_blocks, self.n_users, self.n_items, "")
            if keep_placed
            else None
        )
        self._workers = block_workers(client, self._row_blocks)
        self._shards = self._build_shards(self._row_blocks)
        self.seen: SeenBlocks | None = self._seen_blocks() if self.seen_on_workers else None
        self._user: list[Future] = []
        self._item: list[Future] = []
        self._shapes: tuple[dict, dict] = ({}, {})
        self._last_collected = 0.0
        self.nnz = int(sum(client.gather([client.submit(_shard_nnz, s) for s in self._shards])))

    # -------------------------------------------------------------- placement
    def _build_shards(self, row_blocks: list[Future]) -> list[Future]:
        shards = [
            self.client.submit(build_shard, rb, workers=[w], pure=False)
            for rb, w in zip(row_blocks, self._workers, strict=True)
        ]
        # Pinned to their block's worker: if it leaves now, they could never run, so
        # wait watching the workers (WorkerLostError) rather than forever.
        collect_futures(self.client, shards, self._workers)
        return shards

    def place_holdout(self, ratings: dd.DataFrame | LocalRatings) -> list[Future]:
        """Place held-out ratings in the same cells and on the same workers, for evaluation.

        Returns shard futures to pass to :meth:`evaluate` (a list that :meth:`rebuild`
        refills in place).
        """
        shards = self._place_holdout(ratings)
        self._holdouts.append((ratings, shards))
        return shards

    def _place_holdout(self, ratings: dd.DataFrame | LocalRatings) -> list[Future]:
        parts = submit_partitions(self.client, ratings)
        rows = place_row_blocks(
            self.client,
            parts,
            self.n_blocks,
            self.n_users,
            self.n_items,
            value_col=self.value_col,
        )
        return self._build_shards(rows)

    @property
    def shards(self) -> list[Future]:
        """The training shards (to evaluate a kernel over the training ratings)."""
        return self._shards

    def value_summary(self, shards: list[Future] | None = None) -> dict[str, float]:
        """``count``, ``mean``, ``min`` and ``max`` of the values, reduced on the workers."""
        parts = gather(
            self.client,
            [self.client.submit(_shard_value_summary, s) for s in (shards or self._shards)],
            self._workers,
        )
        a = np.asarray(parts, dtype=np.float64).reshape(-1, 4)
        count = a[:, 0].sum()
        return {
            "count": float(count),
            "mean": float(a[:, 1].sum() / count) if count else float("nan"),
            "min": float(a[:, 2].min()),
            "max": float(a[:, 3].max()),
        }

    def seen_items(self):
        """The training pattern as a ``(n_users, n_items)`` boolean CSR (only indices move)."""
        return assemble_seen(self.client, self._row_blocks, self.n_users, self.n_items)

    def _seen_blocks(self) -> SeenBlocks:
        """The training pattern left where it is, block-aligned with the user state."""
        where = [str(w) for w in self._workers]
        return SeenBlocks(
            [
                self.client.submit(block_pattern, rb, workers=[w], pure=False)
                for rb, w in zip(self._row_blocks, where, strict=True)
            ],
            where,
            self.n_users,
            self.n_items,
        )

    @property
    def workers(self) -> list[str]:
        """The worker of each user block (where user state blocks live)."""
        return [str(w) for w in self._workers]

    def positive_counts(self, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Ratings ``>= threshold`` per user and per item (all ratings with None)."""
        return positive_counts(self.client, self._row_blocks, self.n_users, self.n_items, threshold)

    # -------------------------------------------------------------- state
    def set_state(self, user: Mapping[str, Any], item: Mapping[str, Any]) -> None:
        """Place the ``user`` and ``item`` state, block by block.

        User block ``w`` goes to the worker of shard ``w``; item block ``j`` starts on
        the worker of shard ``j``. Each named array is a full array on the client (split
        by residue and scattered), a :class:`Drawn` spec (each block drawn on its
        worker), :class:`~mfdask.engine.state.FactorBlocks` of this engine's block count
        (used where they are) or checkpoint
        :class:`~mfdask.engine.checkpoint.BlockFiles` (read by the workers).
        """
        for what, state, n in (("user", user, self.n_users), ("item", item, self.n_items)):
            for name, arr in state.items():
                if isinstance(arr, Overlaid):
                    if arr.fitted.n_blocks != self.n_blocks or arr.fitted.n_rows > n:
                        raise ValueError(
                            f"{what} state {name!r} lays {arr.fitted.n_rows} rows in "
                            f"{arr.fitted.n_blocks} blocks over {n} rows in {self.n_blocks}"
                        )
                    continue
                rows = arr.n_rows if isinstance(arr, (FactorBlocks, BlockFiles)) else None
                if not isinstance(arr, Drawn) and (rows or arr.shape[0]) != n:
                    raise ValueError(
                        f"{what} state {name!r} has {rows or arr.shape[0]} rows, expected {n}"
                    )
                if isinstance(arr, FactorBlocks) and arr.n_blocks != self.n_blocks:
                    raise ValueError(
                        f"{what} state {name!r} is in {arr.n_blocks} blocks, the engine in "
                        f"{self.n_blocks}"
                    )
        self._user = self._place_state(user, self.n_users)
        self._item = self._place_state(item, self.n_items)
        self._shapes = (_array_sizes(user, self.n_users), _array_sizes(item, self.n_items))

    def _place_state(self, state: Mapping[str, Any], n_rows: int) -> list[Future]:
        b = self.n_blocks
        if all(isinstance(a, np.ndarray) for a in state.values()):
            return [
                self.client.scatter([_split_state(state, w, b)], workers=[self._workers[w]])[0]
                for w in range(b)
            ]
        names = tuple(state)
        sources: list[Any] = []
        live: dict[int, list[Future]] = {}
        for n, arr in enumerate(state.values()):
            if isinstance(arr, BlockFiles):  # from a checkpoint directory: workers read it
                arr = arr.load(self.client, self.workers)
            if isinstance(arr, FactorBlocks):  # a copy of each block that still exists
                live[n] = arr.surviving()
            sources.append(arr)
        # A block from a checkpoint is composed where it is: moving it would make it a
        # replica, which the memory manager may drop at home (see FactorBlocks.replicate).
        held = [f for n in live for f in live[n]]
        who = self.client.who_has(held) if held else {}
        placed = []
        for w in range(b):
            where = self._workers[w]
            for n in live:
                holders = sorted(who.get(live[n][w].key, ()))
                if holders:
                    where = holders[0]
                    break
            parts: list[Any] = []
            for n, arr in enumerate(sources):
                if isinstance(arr, FactorBlocks):
                    parts.append(live[n][w])
                elif isinstance(arr, Overlaid):
                    column = None if arr.column is None else arr.column[w::b]
                    parts.append((arr.base, arr.fitted.blocks[w], column))
                elif isinstance(arr, Drawn):
                    parts.append(arr)
                else:
                    block = np.ascontiguousarray(np.asarray(arr)[w::b])
                    parts.append(self.client.scatter(block, workers=[where], hash=False))
            placed.append(
                self.client.submit(
                    _compose_state, names, w, b, n_rows, *parts, workers=[where], pure=False
                )
            )
        return placed

    def gather_state(
        self, snapshot: tuple[list[Future], list[Future]] | None = None
    ) -> tuple[State, State]:
        """The user and item state dicts: full arrays pulled onto the client block by
        block, except the 2-d arrays of a side kept on the workers (``keep_on_workers``),
        which stay there as :class:`~mfdask.engine.state.FactorBlocks`."""
        users, items = snapshot or (self._user, self._item)
        return (
            self._collect_side(users, self.n_users, self._shapes[0], self.keep_on_workers[0]),
            self._collect_side(items, self.n_items, self._shapes[1], self.keep_on_workers[1]),
        )

    def _collect_side(self, futures: list[Future], n_rows: int, shapes: dict, keep: bool) -> State:
        if not keep:
            return self._assemble(futures, n_rows, shapes)
        out: State = {}
        small = {name: spec for name, spec in shapes.items() if len(spec[0]) < 2}
        for name, (shape, _) in shapes.items():
            if name in small:
                continue
            picks = [self.client.submit(_state_array, f, name, pure=False) for f in futures]
            collect_futures(self.client, picks, self._workers)
            out[name] = FactorBlocks(  # type: ignore[assignment]
                picks, self._holders(picks), n_rows, int(shape[1])
            )
        if small:  # biases: a vector per side, 1 / k of the factors
            subsets = [
                self.client.submit(_state_subset, f, tuple(small), pure=False) for f in futures
            ]
            out.update(self._assemble(subsets, n_rows, small))
        return out

    def _holders(self, futures: list[Future]) -> list[str]:
        """A worker holding each (computed) future; block ``b``'s worker if none is known."""
        who = self.client.who_has(futures)
        return [
            str(sorted(who.get(f.key, ()))[0]) if who.get(f.key) else str(self._workers[b])
            for b, f in enumerate(futures)
        ]

    def _assemble(self, futures: list[Future], n_rows: int, shapes: dict) -> State:
        out = {
            name: np.empty((n_rows, *shape[1:]), dtype=dt) for name, (shape, dt) in shapes.items()
        }
        for b, block in enumerate(gather(self.client, futures, self._workers)):
            for name, arr in block.items():
                out[name][b :: self.n_blocks] = arr
        return out

    def snapshot(self) -> tuple[list[Future], list[Future]]:
        """Hold the current state blocks (immutable futures) to restore or gather later."""
        return list(self._user), list(self._item)

    def restore(self, snapshot: tuple[list[Future], list[Future]]) -> None:
        """Make a :meth:`snapshot` the current state again."""
        self._user, self._item = list(snapshot[0]), list(snapshot[1])

    # -------------------------------------------------------------- training
    @property
    def exchanges_directly(self) -> bool:
        """Whether epochs run as one task per worker, item blocks passed worker to worker
        or kept in the task (see ``direct_exchange``)."""
        return self.direct_exchange and self.n_blocks > 1

    def run_epoch(
        self,
        kernel: BlockKernel,
        epoch: int,
        seed: int,
        shuffle_strata: bool = True,
    ) -> EpochReport:
        """Train every cell once with ``kernel``, stratum by stratum; return the statistics.

        :meth:`submit_epoch` then :meth:`collect`.
        """
        return self.collect(self.submit_epoch(kernel, epoch, seed, shuffle_strata))

    def submit_epoch(
        self,
        kernel: BlockKernel,
        epoch: int,
        seed: int,
        shuffle_strata: bool = True,
    ) -> PendingEpoch:
        """Submit every task of an epoch and return at once; the state now points past it.

        The tasks are chained by their inputs (no global barrier between sub-epochs).
        Submitting epoch ``e + 1`` before collecting epoch ``e`` keeps the workers busy
        while the client reads ``e``'s statistics: the round trip between client and
        scheduler then overlaps training instead of sitting between epochs. That only
        works when epoch ``e + 1``'s kernel does not depend on epoch ``e``'s statistics
        (a fixed learning-rate schedule, no validation); :meth:`discard` undoes a
        look-ahead that turned out unwanted.
        """
        return self.submit_epochs([kernel], epoch, seed, shuffle_strata)[0]

    def submit_epochs(
        self,
        kernels: Sequence[BlockKernel],
        first_epoch: int,
        seed: int,
        shuffle_strata: bool = True,
    ) -> list[PendingEpoch]:
        """Submit epochs ``first_epoch, first_epoch + 1, ...``, one per kernel, at once.

        With direct exchange the epochs are *fused*: one task per user block trains all
        of them, passing item blocks worker to worker across epoch boundaries too, so
        the scheduler is not involved between them at all. Their statistics then arrive
        together, and only the state after the last one exists as futures:
        :meth:`discard` can only undo the group as a whole (from its first epoch).
        Otherwise each epoch is submitted as by :meth:`submit_epoch`.
        """
        if not self._user:
            raise RuntimeError("DSGD.submit_epoch before set_state: place an initial state first")
        if not kernels:
            return []
        plans = []
        for r in range(len(kernels)):
            rng = np.random.default_rng([seed, first_epoch + r]) if shuffle_strata else None
            plans.append(stratum_plan(self.n_blocks, rng))
            check_plan(plans[-1], self.n_blocks)
        names = tuple(kernels[0].stat_names)
        if not self.exchanges_directly:
            pending = []
            for r, (kernel, plan) in enumerate(zip(kernels, plans, strict=True)):
                before = self.snapshot()
                submitted = time.perf_counter()
                stats = self._submit_cells(plan, kernel, (seed, first_epoch + r))
                pending.append(PendingEpoch(first_epoch + r, plan, names, stats, before, submitted))
            return pending
        before = self.snapshot()
        group = EpochGroup(
            size=len(kernels),
            submitted=time.perf_counter(),
            token=f"{self._exchange_id}/{first_epoch}/{next(self._submissions)}",
        )
        stats = self._submit_exchanged(plans, tuple(kernels), seed, first_epoch, group.token)
        return [
            PendingEpoch(
                epoch=first_epoch + r,
                plan=plan,
                stat_names=names,
                stats=stats,
                before=before if r == 0 else None,
                submitted=group.submitted,
                group=group,
                row=r,
            )
            for r, plan in enumerate(plans)
        ]

    def _submit_cells(
        self, plan: Plan, kernel: BlockKernel, entropy: tuple[int, int]
    ) -> list[Future]:
        """One task per cell; the scheduler moves each item block between sub-epochs."""
        submit = self.client.submit
        stats: list[Future] = []
        for stratum in plan:
            for w, j in stratum:
                where = [self._workers[w]]
                out = submit(
                    _train_task,
                    self._shards[w],
                    j,
                    self._user[w],
                    self._item[j],
                    kernel,
                    (*entropy, w, j),
                    self.n_threads,
                    workers=where,
                    pure=False,
                )
                self._user[w] = submit(operator.getitem, out, 0, workers=where, pure=False)
                self._item[j] = submit(operator.getitem, out, 1, workers=where, pure=False)
                stats.append(submit(operator.getitem, out, 2, workers=where, pure=False))
        return stats

    def _submit_exchanged(
        self,
        plans: list[Plan],
        kernels: tuple[BlockKernel, ...],
        seed: int,
        first_epoch: int,
        token: str,
    ) -> list[Future]:
        """One task per worker for whole epochs; item blocks go worker to worker.

        Only the first sub-epoch's item blocks come through the scheduler (from where
        the previous submission left them); the last ones are the tasks' outputs.
        """
        submit = self.client.submit
        placed = [w for w in self._workers if w is not None]
        if len(placed) < self.n_blocks:  # seen as a lost worker by the recovery
            raise BlockExchangeError("a user block has no worker: it was lost with its worker")
        routes = worker_routes([stratum for plan in plans for stratum in plan], placed)
        outs = []
        for route in routes:
            outs.append(
                submit(
                    _train_epochs_task,
                    {w: self._shards[w] for w in route.user_blocks},
                    {w: self._user[w] for w in route.user_blocks},
                    {j: self._item[j] for j in route.first_items},
                    kernels,
                    seed,
                    first_epoch,
                    route,
                    token,
                    self.n_threads,
                    workers=[route.address],
                    pure=False,
                )
            )
        # The outputs are split on their worker ahead of any queued epoch task (higher
        # priority): the next epoch's tasks and the driver's statistics wait on them.
        last_item = dict(plans[-1][-1])  # user block -> the item block it trains last
        stats: list[Future] = []
        for route, out in zip(routes, outs, strict=True):
            opts = {"workers": [route.address], "pure": False, "priority": 1}
            for w in route.user_blocks:
                j = last_item[w]
                self._user[w] = submit(_pick, out, 0, w, **opts)
                self._item[j] = submit(_pick, out, 1, j, **opts)
            stats.append(submit(operator.getitem, out, 2, **opts))
        return stats

    def collect(self, pending: PendingEpoch) -> EpochReport:
        """Wait for a submitted epoch's statistics and sum them.

        ``seconds`` is the epoch's share of the wall time: from its submission, or from
        the previous collect if that came later (a look-ahead epoch runs while the
        previous one is still being collected, and is not charged for it).
        """
        group = pending.group
        if group is None:
            totals = np.sum(gather(self.client, pending.stats, self._workers), axis=0)
            now = time.perf_counter()
            seconds = now - max(pending.submitted, self._last_collected)
            self._last_collected = now
        else:
            if group.totals is None:
                group.totals = np.sum(gather(self.client, pending.stats, self._workers), axis=0)
                now = time.perf_counter()
                group.seconds = (now - max(group.submitted, self._last_collected)) / group.size
                self._last_collected = now
            totals, seconds = group.totals[pending.row], group.seconds
        return EpochReport(
            epoch=pending.epoch,
            stats=_named(pending.stat_names, totals),
            seconds=seconds,
            plan=pending.plan,
        )

    def discard(self, pending: PendingEpoch) -> None:
        """Drop a submitted epoch: the state goes back to what it was before it.

        Its tasks may already be waiting for one another's item blocks while the ones
        not yet started are forgotten with their futures: the epoch's exchanges are
        aborted so that no worker thread waits for a block that will never come.
        """
        if pending.before is None:
            raise RuntimeError(
                f"epoch {pending.epoch} is inside a fused group: discard the group's first epoch"
            )
        self.restore(pending.before)
        if pending.group is not None:
            abort_exchanges(self.client, pending.group.token)

    def evaluate(self, kernel: Any, shards: list[Future] | None = None) -> dict[str, float]:
        """Sum ``kernel.evaluate`` over every cell of ``shards`` (default: training shards).

        Read-only, so no schedule is needed: one task per user block on its worker,
        to which every item block is sent.
        """
        shards = shards if shards is not None else self._shards
        parts = [
            self.client.submit(
                _evaluate_task,
                shards[w],
                self._user[w],
                kernel,
                *self._item,
                workers=[self._workers[w]],
                pure=False,
            )
            for w in range(self.n_blocks)
        ]
        return _named(kernel.stat_names, np.sum(gather(self.client, parts, self._workers), axis=0))

    # -------------------------------------------------------------- recovery
    # Used by mfdask.engine.resilience.run_fit: a content digest for checkpoints, and
    # placing the ratings again after a worker (and the blocks it held) was lost.
    def digest(self) -> str:
        """Content digest of the training ratings (identifies the data in checkpoints)."""
        parts = [
            self.client.submit(block_digest, rb, workers=[w], pure=False)
            for rb, w in zip(self._row_blocks, self._workers, strict=True)
        ]
        return combine_digests(gather(self.client, parts, self._workers))

    def rebuild(self) -> None:
        """Place the ratings (and held-out ratings) again on the workers there are now.

        The blocks of a lost worker exist nowhere else, so the input is read again and
        cut into the same ``n_blocks`` blocks (several per worker on a smaller cluster).
        The state must be placed again with :meth:`set_state` afterwards.
        """
        self.close()
        self._exchange_id = uuid.uuid4().hex
        parts = persist_partitions(self.client, self._ratings)
        self._row_blocks = place_row_blocks(
            self.client, parts, self.n_blocks, self.n_users, self.n_items, value_col=self.value_col
        )
        del parts
        if self.placed is not None:
            self.placed = KeptBlocks(
                list(self._row_blocks), [], self.n_blocks, self.n_users, self.n_items, ""
            )
        self._workers = block_workers(self.client, self._row_blocks)
        self._shards = self._build_shards(self._row_blocks)
        if self.seen_on_workers:  # the lost worker's pattern blocks went with it
            self.seen = self._seen_blocks()
        for ratings, shards in self._holdouts:
            shards[:] = self._place_holdout(ratings)

    # -------------------------------------------------------------- end of recovery
    def close(self) -> None:
        """Release every block this engine holds on the cluster.

        Epochs still exchanging item blocks (a fit that failed or stopped with a
        look-ahead epoch in flight) are aborted, so no worker thread keeps waiting.
        """
        self._user, self._item, self._shards, self._row_blocks = [], [], [], []
        if self.direct_exchange:
            abort_exchanges(self.client, self._exchange_id)


def _named(names: Sequence[str], totals: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, np.atleast_1d(totals), strict=True)}


def train(
    engine: DSGD,
    make_kernel: Callable[[int, list[EpochReport]], BlockKernel],
    epochs: int,
    seed: int,
    shuffle_strata: bool = True,
    on_epoch: Callable[[EpochReport], bool | None] | None = None,
    progress: bool = False,
    progress_stats: Sequence[str] = (),
) -> list[EpochReport]:
    """Run up to ``epochs`` epochs; ``on_epoch`` returning ``False`` stops early.

    Parameters
    ----------
    make_kernel
        ``(epoch, reports so far) -> kernel`` so a model can set each epoch's learning
        rate from the previous losses (bold driver) or a fixed decay.
    on_epoch
        Called after each epoch: a model validates, records history, snapshots the best
        state and decides whether to stop. It may add derived figures (an RMSE) to
        ``report.stats``.
    progress
        Show a tqdm bar per epoch with the ``progress_stats`` of the last epoch
        (``MFDASK_NO_PROGRESS=1`` hides it).
    """
    reports: list[EpochReport] = []
    bar = None
    if progress:
        bar = progress_bar(True, epochs, "epoch")
    try:
        for epoch in range(epochs):
            report = engine.run_epoch(make_kernel(epoch, reports), epoch, seed, shuffle_strata)
            reports.append(report)
            stop = on_epoch is not None and on_epoch(report) is False
            if bar is not None:
                bar.update(1)
                shown = {k: f"{report.stats[k]:.4f}" for k in progress_stats if k in report.stats}
                if shown:
                    bar.set_postfix(shown)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    return reports
