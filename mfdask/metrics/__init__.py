"""Metric functions on in-memory blocks of users or ratings (NumPy only, no Dask).

:mod:`mfdask.evaluate` runs them per user block on the workers and adds the blocks' sums;
see :mod:`mfdask.metrics.ranking` for the conventions (and which library shares each).
"""

from mfdask.metrics.ranking import (
    RankingSums,
    auc,
    average_precision_at_k,
    catalogue_coverage,
    hit_rate_at_k,
    hits_at_k,
    implicit_auc_at_k,
    implicit_precision_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    ranking_sums,
    recall_at_k,
)
from mfdask.metrics.rating import RatingSums, mae, rating_sums, rmse

__all__ = [
    "RankingSums",
    "RatingSums",
    "auc",
    "average_precision_at_k",
    "catalogue_coverage",
    "hit_rate_at_k",
    "hits_at_k",
    "implicit_auc_at_k",
    "implicit_precision_at_k",
    "mae",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "ranking_sums",
    "rating_sums",
    "recall_at_k",
    "rmse",
]
