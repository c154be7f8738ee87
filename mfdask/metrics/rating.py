"""Rating-prediction error: RMSE and MAE, as per-block sums that add across workers.

``RMSE = sqrt(Σ (r̂ - r)² / n)`` and ``MAE = Σ |r̂ - r| / n`` over every test rating (a mean
over ratings, not over users: the convention of the Netflix Prize, Surprise and Spark's
``RegressionEvaluator``). Sums are accumulated in float64 whatever the input precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RatingSums", "mae", "rating_sums", "rmse"]


def _check_pair(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    if p.shape != a.shape:
        raise ValueError(f"predicted has {p.size} values but actual has {a.size}")
    for name, v in (("predicted", p), ("actual", a)):
        if not np.isfinite(v).all():
            bad = int(np.flatnonzero(~np.isfinite(v))[0])
            raise ValueError(f"{name} rating at position {bad} is {v[bad]}: not a finite number")
    return p, a


@dataclass
class RatingSums:
    """``count``, ``Σ e²`` and ``Σ |e|`` of prediction errors ``e``; ``+`` merges blocks."""

    count: int = 0
    squared_error: float = 0.0
    absolute_error: float = 0.0

    def __add__(self, other: RatingSums) -> RatingSums:
        return RatingSums(
            self.count + other.count,
            self.squared_error + other.squared_error,
            self.absolute_error + other.absolute_error,
        )

    def means(self) -> dict[str, float]:
        """``rmse``, ``mae`` (NaN for no rating) and ``count``."""
        if not self.count:
            return {"rmse": float("nan"), "mae": float("nan"), "count": 0}
        return {
            "rmse": float(np.sqrt(self.squared_error / self.count)),
            "mae": float(self.absolute_error / self.count),
            "count": int(self.count),
        }


def rating_sums(predicted: np.ndarray, actual: np.ndarray) -> RatingSums:
    """Error sums of one block of (prediction, rating) pairs; non-finite values raise."""
    p, a = _check_pair(predicted, actual)
    e = p - a
    return RatingSums(int(e.size), float(e @ e), float(np.abs(e).sum()))


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error over all pairs; ``ValueError`` when there is none."""
    sums = rating_sums(predicted, actual)
    if not sums.count:
        raise ValueError("cannot compute RMSE of no ratings")
    return sums.means()["rmse"]


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error over all pairs; ``ValueError`` when there is none."""
    sums = rating_sums(predicted, actual)
    if not sums.count:
        raise ValueError("cannot compute MAE of no ratings")
    return sums.means()["mae"]
