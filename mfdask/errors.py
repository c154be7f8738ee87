"""The exceptions mfdask raises, under one base class.

Catch :class:`MfdaskError` for anything mfdask reports about your data, parameters,
model files or cluster. Each class also keeps the builtin base it always had
(``ValueError``, ``KeyError``, ``RuntimeError``, ``FloatingPointError``, ``ImportError``),
so code that catches those keeps working. Every message says what failed, the likely
cause and what to change.

The classes are defined here and re-exported where they are raised (``mfdask.models.base
.NotFittedError`` is this module's ``NotFittedError``), so either import path works.

::

    MfdaskError
    ├── ModelFitError (FloatingPointError)       a fit diverged
    │   └── ALSNumericalError                    an ALS solve met NaN or indefinite equations
    ├── InputError (ValueError)                  fit/score input malformed
    ├── IngestError (ValueError)                 raw input cannot be ingested (file, line)
    │   ├── BadRowsError
    │   ├── DuplicateRatingError                 also raised when blocks are built
    │   └── DelimiterError
    ├── AccountingError (RuntimeError)           rows in != rows out: a bug, never data
    ├── DatasetError (ValueError)                a dataset directory is inconsistent
    ├── FetchError (RuntimeError)                a download failed
    ├── NotFittedError (RuntimeError)
    ├── UnknownIdError (KeyError)
    ├── ModelMismatchError (ValueError)          model and dataset id maps differ
    ├── ModelFileError (ValueError)              a saved model is missing or corrupt
    ├── EmptyHistoryError (ValueError)           nothing to fold a user in from
    ├── ClusterError (RuntimeError)              no scheduler, or no workers
    ├── ClusterFailure (RuntimeError)            the cluster lost what a fit needs
    │   ├── WorkerLostError
    │   ├── SchedulerLostError
    │   └── RecoveryError
    ├── StateLostError (RuntimeError)            a model's blocks left with their worker
    ├── CheckpointError (RuntimeError)
    │   └── CheckpointMismatchError
    ├── PlanError (RuntimeError)                 an unsafe DSGD schedule: a bug
    ├── BlockExchangeError (CommClosedError)     defined in mfdask.engine.exchange
    ├── JobError (RuntimeError)
    ├── JobFileError (ValueError)
    └── OptunaMissingError (ImportError, RuntimeError)

``BlockExchangeError`` derives from Dask's ``CommClosedError`` (the fit's recovery treats
it as a lost peer), so it lives with the engine, the only layer that imports
``distributed``; it is importable from here all the same.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mfdask.engine.exchange import BlockExchangeError

__all__ = [
    "ALSNumericalError",
    "AccountingError",
    "BadRowsError",
    "BlockExchangeError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClusterError",
    "ClusterFailure",
    "DatasetError",
    "DelimiterError",
    "DuplicateRatingError",
    "EmptyHistoryError",
    "FetchError",
    "IngestError",
    "InputError",
    "JobError",
    "JobFileError",
    "MfdaskError",
    "ModelFileError",
    "ModelFitError",
    "ModelMismatchError",
    "NotFittedError",
    "OptunaMissingError",
    "PlanError",
    "RecoveryError",
    "SchedulerLostError",
    "StateLostError",
    "UnknownIdError",
    "WorkerLostError",
]


class MfdaskError(Exception):
    """Base of every exception mfdask raises on purpose."""


# ------------------------------------------------------------------------------ fitting
class ModelFitError(MfdaskError, FloatingPointError):
    """A fit diverged: non-finite statistics or factors.

    Raised for every model (it replaces the ``FloatingPointError`` SVD, BPR and WARP
    raised); it still is a ``FloatingPointError``.
    """


class ALSNumericalError(ModelFitError):
    """An ALS solve produced NaN/inf factors or met indefinite normal equations."""


# --------------------------------------------------------------------------------- data
class InputError(MfdaskError, ValueError):
    """Training or scoring input is malformed (missing columns, NaN, unknown ids...)."""


class IngestError(MfdaskError, ValueError):
    """Input cannot be ingested as it is; the message names the file, line and problem.

    Attributes
    ----------
    path : str or None
        The file at fault.
    line : int or None
        1-based line number in ``path`` (row number for Parquet input).
    problem : str
        What is wrong, and what to change.
    """

    def __init__(
        self, problem: str, path: str | os.PathLike[str] | None = None, line: Any = None
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = None if line is None else int(line)
        self.problem = problem
        where = ""
        if self.path is not None:
            where = (
                f"{self.path}, line {self.line}: " if self.line is not None else f"{self.path}: "
            )
        super().__init__(where + problem)


class BadRowsError(IngestError):
    """Rows that do not parse or validate, with ``on_bad_rows="error"``."""


class DuplicateRatingError(IngestError):
    """Two ratings of the same (user, item) pair.

    Raised by ingest (``duplicates="error"``, with the file and line) and when rating
    blocks are built from input that was not ingested (with the dense indices).
    """


class DelimiterError(IngestError):
    """A file does not split into the expected fields on the expected separator."""


class AccountingError(MfdaskError, RuntimeError):
    """Rows in != rows out + rows quarantined + duplicates merged: a bug, never data."""


class DatasetError(MfdaskError, ValueError):
    """A dataset directory is missing, incomplete or inconsistent."""


class FetchError(MfdaskError, RuntimeError):
    """A download failed, or its checksum did not match; the message says what to do."""


# ------------------------------------------------------------------------------- models
class NotFittedError(MfdaskError, RuntimeError):
    """The model was used before ``fit`` or ``load``."""


class UnknownIdError(MfdaskError, KeyError):
    """Ids passed to ``recommend``/``similar_items``/``predict`` are not in the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class ModelMismatchError(MfdaskError, ValueError):
    """A model is applied to a dataset (or id maps) other than the ones it was trained on."""


class ModelFileError(MfdaskError, ValueError):
    """A model directory is missing, incomplete or corrupt."""


class EmptyHistoryError(MfdaskError, ValueError):
    """A user to fold in has no usable interaction in the history given."""


# ------------------------------------------------------------------------------ cluster
class ClusterError(MfdaskError, RuntimeError):
    """The scheduler could not be reached or the cluster has no workers."""


class ClusterFailure(MfdaskError, RuntimeError):
    """The cluster lost something a fit needs."""


class WorkerLostError(ClusterFailure):
    """A worker holding blocks of the fit left, or Dask lost data the fit needs."""


class SchedulerLostError(ClusterFailure):
    """The connection to the scheduler is gone: the fit cannot continue in this driver."""


class RecoveryError(ClusterFailure):
    """Workers kept failing: the fit gave up after its allowed number of recoveries."""


class StateLostError(MfdaskError, RuntimeError):
    """A model's blocks are gone with the cluster (or worker) that held them."""


class CheckpointError(MfdaskError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to a different fit."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was written by a fit with other parameters or other data."""


class PlanError(MfdaskError, RuntimeError):
    """A stratum schedule would let two workers update the same rows at once."""


# --------------------------------------------------------------------------------- jobs
class JobError(MfdaskError, RuntimeError):
    """A job cannot go on; the message says what and what to change."""


class JobFileError(MfdaskError, ValueError):
    """A job file or a ``--param`` flag is malformed or names something unknown."""


class OptunaMissingError(MfdaskError, ImportError, RuntimeError):
    """:func:`mfdask.tune` needs Optuna, which is an optional extra (a ``RuntimeError``
    too, so that a job reports it in one line)."""


def __getattr__(name: str) -> Any:
    if name == "BlockExchangeError":
        from mfdask.engine.exchange import BlockExchangeError

        return BlockExchangeError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
