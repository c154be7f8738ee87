"""The exceptions mfdask raises, under one base class.

Catch :class:`MfdaskError` for anything mfdask reports about your data, parameters,
model files or cluster. Each class also keeps the builtin base it always had
(``ValueError``, ``KeyError``, ``RuntimeError``, ``FloatingPointError``), so code that
catches those keeps working.
"""

from __future__ import annotations


class MfdaskError(Exception):
    """Base of every exception mfdask raises on purpose."""


class ModelFitError(MfdaskError, FloatingPointError):
    """A fit diverged: non-finite statistics or factors.

    Raised for every model (it replaces the ``FloatingPointError`` SVD, BPR and WARP
    raised); it still is a ``FloatingPointError``.
    """
