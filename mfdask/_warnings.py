"""Warnings raised by mfdask itself (tests turn them into errors), and the deprecation
helpers that keep renamed names working for one release."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar


class MfdaskWarning(UserWarning):
    """A condition the user should know about but that does not stop the job."""


def warn_renamed(old: str, new: str, what: str = "", stacklevel: int = 3) -> None:
    """A ``DeprecationWarning`` that ``old`` is now called ``new`` (kept one release)."""
    warnings.warn(
        f"{what}{old!r} is deprecated and will be removed in the next release: use {new!r}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


class RenamedKeys(dict):
    """A ``dict`` whose keys were renamed: the old names still read, with a warning.

    Only the new names are stored (so JSON written from it has one set of keys); reading
    an old name (``d[old]``, ``d.get(old)``, ``old in d``) gives the new key's value and a
    ``DeprecationWarning``. Built from a mapping with old keys, it renames them in place
    of order (an old saved model's history reads as a new one).
    """

    RENAMED: ClassVar[dict[str, str]] = {}
    WHAT: ClassVar[str] = "the key "

    def __init__(self, data: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        items = dict(data or {}, **kwargs)
        super().__init__((self.RENAMED.get(k, k), v) for k, v in items.items())

    def _new(self, key: Any) -> Any:
        new = self.RENAMED.get(key) if isinstance(key, str) else None
        if new is not None and not dict.__contains__(self, key):
            warn_renamed(key, new, self.WHAT, stacklevel=4)
            return new
        return key

    def __missing__(self, key: Any) -> Any:
        new = self._new(key)
        if new is key:
            raise KeyError(key)
        return dict.__getitem__(self, new)

    def get(self, key: Any, default: Any = None) -> Any:
        return dict.get(self, self._new(key), default)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, self._new(key))

    def __reduce__(self) -> Any:  # pickles (checkpoints, workers) as a plain subclass
        return (type(self), (dict(self),))


class HistoryRecord(RenamedKeys):
    """One record of ``model.history_``: ``iteration`` (1-based) for every model.

    SGD models called it ``epoch`` before; ``record["epoch"]`` still reads, with a
    ``DeprecationWarning`` (one iteration of an SGD model is one epoch).
    """

    RENAMED: ClassVar[dict[str, str]] = {"epoch": "iteration"}
    WHAT: ClassVar[str] = "the history key "


class FitMetrics(RenamedKeys):
    """``model.metrics_``: ``best_iteration`` and ``iterations_run`` for every model
    (``best_epoch`` and ``epochs_run`` still read, with a ``DeprecationWarning``)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "best_epoch": "best_iteration",
        "epochs_run": "iterations_run",
    }
    WHAT: ClassVar[str] = "the metrics key "
