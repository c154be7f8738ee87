"""Checkpoints: a fit's factors and optimiser state, written atomically every K iterations.

Layout under a checkpoint directory::

    ckpt-000010/            one directory per checkpoint, written to a temporary name first
      state.json            iteration, optimiser state (learning rate, ...), history, params
      user_factors.npy ...  one .npy per named array
    LATEST                  JSON naming the newest complete checkpoint (replaced atomically)

A crash while writing leaves a hidden temporary directory that is ignored and cleaned up;
``LATEST`` only ever names a complete checkpoint. Reading a checkpoint back into the driver
also cuts the task lineage: a resumed (or recovered) fit starts from concrete arrays, not
from a chain of earlier iterations' tasks.

Randomness is not stored: drivers derive every random stream from
``(random_state, epoch, block)``, so the epoch number is enough to continue exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfdask.data.dataset import atomic_directory, write_json_atomic
from mfdask.engine.state import FactorBlocks
from mfdask.errors import CheckpointError, CheckpointMismatchError

log = logging.getLogger("mfdask")

LATEST_FILE = "LATEST"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    """One saved point of a fit.

    ``arrays`` hold matrices on the client, :class:`~mfdask.engine.state.FactorBlocks`
    (a large side kept on the workers, in memory), or :class:`BlockFiles` (such a side
    read back from a checkpoint directory: the engine loads it onto its workers).
    """

    iteration: int
    arrays: dict[str, Any]
    state: dict[str, Any]


@dataclass(frozen=True)
class BlockFiles:
    """A distributed matrix saved block by block by the workers (``*.block-B-of-R.npy``)."""

    directory: Path
    files: list[str]
    n_rows: int
    k: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.k)

    def load(self, client: Any, where: list[str]) -> FactorBlocks:
        """The blocks, each loaded by the worker it is placed on."""
        return FactorBlocks.read_npy(client, self.directory, self.files, self.n_rows, self.k, where)


class CheckpointStore:
    """Save and load checkpoints of one fit under ``directory``.

    Parameters
    ----------
    directory : path
        Where checkpoints live (created on first save).
    keep : int
        How many most recent checkpoints to keep on disk.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def _name(self, iteration: int) -> str:
        return f"ckpt-{iteration:06d}"

    def save(self, iteration: int, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> Path:
        """Write a checkpoint for the end of ``iteration`` atomically and prune old ones."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / self._name(iteration)
        blocks: dict[str, dict[str, Any]] = {}
        with atomic_directory(target, overwrite=True) as tmp:
            for name, array in arrays.items():
                if isinstance(array, FactorBlocks):  # each worker writes its own block
                    files = array.write_npy(tmp, name)
                    blocks[name] = {"files": files, "n_rows": array.n_rows, "k": array.k}
                else:
                    np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            write_json_atomic(
                tmp / STATE_FILE,
                {
                    "iteration": iteration,
                    "arrays": sorted(set(arrays) - set(blocks)),
                    "blocks": blocks,
                    "state": state,
                },
            )
        write_json_atomic(self.directory / LATEST_FILE, {"checkpoint": target.name})
        self._prune()
        return target

    def _complete(self) -> list[Path]:
        return sorted(
            p for p in self.directory.glob("ckpt-*") if p.is_dir() and (p / STATE_FILE).exists()
        )

    def _prune(self) -> None:
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in self.directory.glob(".ckpt-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None when there is none."""
        pointer = self.directory / LATEST_FILE
        if not pointer.exists():
            return None
        try:
            name = json.loads(pointer.read_text())["checkpoint"]
            return self.load(self.directory / name)
        except (KeyError, json.JSONDecodeError, OSError) as exc:
            raise CheckpointError(
                f"checkpoint pointer {pointer} is corrupt: {exc!r}, probably from an "
                "interrupted write; delete it to resume from the newest complete checkpoint, "
                "or start afresh without resume"
            ) from exc

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Checkpoint:
        """Read the checkpoint directory ``path``."""
        path = Path(path)
        try:
            meta = json.loads((path / STATE_FILE).read_text())
            arrays: dict[str, Any] = {
                name: np.load(path / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]
            }
            for name, spec in meta.get("blocks", {}).items():
                missing = [f for f in spec["files"] if not (path / f).is_file()]
                if missing:
                    raise OSError(f"block files {missing} are missing")
                arrays[name] = BlockFiles(path, list(spec["files"]), spec["n_rows"], spec["k"])
        except (KeyError, json.JSONDecodeError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path} is incomplete or corrupt: {exc!r}; delete it to "
                "resume from an earlier one, or start afresh without resume"
            ) from exc
        return Checkpoint(iteration=int(meta["iteration"]), arrays=arrays, state=meta["state"])

    def clear(self) -> None:
        """Remove every checkpoint (a fresh fit that is not resuming)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def block_digest(block: Any) -> str:
    """BLAKE2 digest of a rating block's content (runs on the block's worker).

    ``block`` is a :class:`mfdask.engine.blocks.RowBlock`; its arrays are sorted
    canonically, so the digest does not depend on how the input was partitioned.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray([block.block, block.n_blocks, block.n_rows, block.n_cols]).tobytes())
    for array in (block.indptr, block.indices, block.data):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def combine_digests(digests: list[str]) -> str:
    """One digest for the whole rating matrix from its blocks' digests, in block order."""
    return hashlib.blake2b("".join(digests).encode(), digest_size=16).hexdigest()


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key} (checkpoint: {a!r}, this fit: {b!r})")
    return out


def copies_fit(blocks: list[FactorBlocks]) -> bool:
    """Whether one copy of ``blocks`` on other workers fits in their memory
    (:func:`mfdask.engine.cluster.room_for_copy`; never with one worker).

    When it does not, a fit keeps its in-memory checkpoint uncopied and, on a lost
    worker, restarts from the newest checkpoint on disk (``checkpoint_dir``) or from the
    start.
    """
    from mfdask.engine.cluster import room_for_copy

    client = blocks[0].client
    if len(client.nthreads()) < 2:
        return False
    return room_for_copy(client, sum(b.nbytes for b in blocks))


class FitCheckpoints:
    """The checkpoint policy of one fit: when to save, where, and what may be resumed.

    Every ``every`` completed iterations (and at the end of the fit) the fit's state is
    saved: to ``directory`` through a :class:`CheckpointStore` when one is given, and
    always in memory as the point a fit recovering from a lost worker restarts from.

    A checkpoint records the fit's *identity*: the model class, its parameters (those
    that change the model; not ``checkpoint_dir``, ``checkpoint_every``, ``n_threads`` or
    ``show_progress``), the id-map fingerprint, a digest of the training ratings and the
    number of blocks. Resuming from a checkpoint of another identity is refused with
    :class:`CheckpointMismatchError` naming what differs.

    Parameters
    ----------
    directory : path or None
        Where checkpoints go; None keeps them in memory only.
    every : int
        Iterations between checkpoints.
    resume : bool
        Continue from the newest checkpoint in ``directory`` (a fresh fit when there is
        none); False removes earlier checkpoints there before the first save.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None, every: int, resume: bool = False
    ) -> None:
        if resume and directory is None:
            raise ValueError(
                "resume=True needs checkpoint_dir: set the model's checkpoint_dir to the "
                "directory the interrupted fit wrote its checkpoints to"
            )
        self.store = CheckpointStore(directory) if directory is not None else None
        self.every = int(every)
        self.resume = bool(resume)
        self.identity: dict[str, Any] = {}
        self.last: Checkpoint | None = None
        """The point a recovery restarts from without reading the disk (None: read it)."""
        self.saved_iteration: int | None = None
        """The iteration of the newest checkpoint on disk (None: none written)."""

    def peek(self) -> Checkpoint | None:
        """The checkpoint a resumed fit would start from (not yet checked), or None."""
        if not self.resume or self.store is None:
            return None
        return self.store.latest()

    def begin(self, identity: dict[str, Any]) -> Checkpoint | None:
        """Fix this fit's identity; return the checked checkpoint to resume from, or None.

        Raises
        ------
        CheckpointMismatchError
            The newest checkpoint belongs to a different fit.
        """
        self.identity = json.loads(json.dumps(identity))  # as it will read back
        start = self.peek()
        if start is None:
            if self.store is not None and not self.resume:
                self.store.clear()
            return None
        saved = start.state.get("identity", {})
        diff = _differences(saved, self.identity)
        if diff:
            assert self.store is not None  # peek() found a checkpoint, so there is a store
            raise CheckpointMismatchError(
                f"the checkpoint in {self.store.directory} belongs to a different fit: "
                + "; ".join(diff)
                + ". Resume with the parameters and data it was written with, or start "
                "afresh (without resume, or with another checkpoint_dir)"
            )
        self.last = start
        self.saved_iteration = start.iteration
        return start

    def due(self, iteration: int) -> bool:
        """Whether to checkpoint after ``iteration`` completed iterations."""
        return iteration % self.every == 0

    def save(
        self, iteration: int, arrays: dict[str, np.ndarray], state: dict[str, Any]
    ) -> Checkpoint:
        """Keep a checkpoint in memory and, with a directory, write it atomically."""
        state = json.loads(json.dumps({**state, "identity": self.identity}))
        arrays = {
            name: a if isinstance(a, (FactorBlocks, BlockFiles)) else np.asarray(a)
            for name, a in arrays.items()
        }
        point = Checkpoint(iteration=iteration, arrays=arrays, state=state)
        if self.store is not None:
            self.store.save(iteration, arrays, state)
            self.saved_iteration = iteration
        values: list[Any] = list(arrays.values())
        blocks = [a for a in values if isinstance(a, FactorBlocks)]
        if state.get("finished") or not blocks:
            self.last = point
        elif copies_fit(blocks):
            if self.store is None:
                for a in blocks:
                    a.replicate()  # the only copy of this point: survive one lost worker
            self.last = point
        else:
            # Holding the point would hold every block of this iteration until the next
            # checkpoint, while the next iteration makes new ones: twice the state on
            # every worker. Without copies, one lost worker takes the point with it, so
            # the recovery point is the checkpoint on disk (or the start) instead.
            self.last = None
        return point

    def recovery_point(self) -> Checkpoint | None:
        """Where a fit that lost a worker restarts: the last checkpoint if its state still
        exists, else the newest one on disk, else None (the start).

        An in-memory checkpoint's blocks on the lost worker survive only as the copies
        :meth:`FactorBlocks.replicate` made, and only when they fitted
        (:func:`copies_fit`); without them the point is gone, and restoring it would
        wait for blocks that no worker holds.
        """
        point = self.last
        if point is not None and all(
            a.alive() for a in point.arrays.values() if isinstance(a, FactorBlocks)
        ):
            return point
        disk = self.store.latest() if self.store is not None else None
        if point is not None:
            log.warning(
                "the checkpoint after iteration %d was held only in memory and lost blocks "
                "with the worker; restarting from %s",
                point.iteration,
                f"the one on disk after iteration {disk.iteration}" if disk else "the start",
            )
        return disk

    def describe_resume(self) -> str:
        """How to continue after the fit failed (for error messages)."""
        if self.store is None:
            return (
                "no checkpoint was written (checkpoint_dir is not set): restart the "
                "cluster and fit again"
            )
        if self.saved_iteration is None:
            return f"no checkpoint in {self.store.directory} yet: restart the cluster and fit again"
        return (
            f"the last checkpoint (after iteration {self.saved_iteration}) is in "
            f"{self.store.directory}: restart the cluster and fit with resume=True "
            "(mfdask train --resume) to continue from it"
        )
