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

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfdask.data.dataset import atomic_directory, write_json_atomic

LATEST_FILE = "LATEST"
STATE_FILE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to a different fit."""


@dataclass
class Checkpoint:
    """One saved point of a fit."""

    iteration: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]


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
        with atomic_directory(target, overwrite=True) as tmp:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            write_json_atomic(
                tmp / STATE_FILE,
                {"iteration": iteration, "arrays": sorted(arrays), "state": state},
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
            raise CheckpointError(f"checkpoint pointer {pointer} is corrupt: {exc!r}") from exc

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Checkpoint:
        """Read the checkpoint directory ``path``."""
        path = Path(path)
        try:
            meta = json.loads((path / STATE_FILE).read_text())
            arrays = {
                name: np.load(path / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]
            }
        except (KeyError, json.JSONDecodeError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is incomplete or corrupt: {exc!r}") from exc
        return Checkpoint(iteration=int(meta["iteration"]), arrays=arrays, state=meta["state"])

    def clear(self) -> None:
        """Remove every checkpoint (a fresh fit that is not resuming)."""
        shutil.rmtree(self.directory, ignore_errors=True)
