"""A small FactorModel with fixed (seeded) factors, for testing top-k, jobs and reports.

Its factors do not depend on the ratings, only on ``random_state``, so the right answer
of every top-k query is computable with NumPy; ``fit`` still goes through the engine for
the seen-items matrix, as a real model does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mfdask.data.training import TrainingData
from mfdask.engine.blocks import assemble_seen, persist_partitions, place_row_blocks
from mfdask.engine.cluster import session
from mfdask.models.base import EpochCallback, FactorModel


class FixedModel(FactorModel):
    """Random normal factors drawn from ``random_state``; optional item biases (SVD-like)."""

    model_name = "fixed"
    implicit = True

    def __init__(
        self,
        factors: int = 8,
        epochs: int = 3,
        regularization: float = 0.01,
        biased: bool = False,
        random_state: int = 0,
    ) -> None:
        self.factors = factors
        self.epochs = epochs
        self.regularization = regularization
        self.biased = biased
        self.random_state = random_state

    def _validate_params(self) -> None:
        if not isinstance(self.factors, int) or not 1 <= self.factors <= 1024:
            raise ValueError(f"factors must be an integer in [1, 1024], got {self.factors!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not 0.0 <= float(self.regularization) < 10.0:
            raise ValueError(f"regularization must be in [0, 10), got {self.regularization!r}")

    def _fit(self, data: TrainingData, validation: Any, callback: EpochCallback | None) -> None:
        rng = np.random.default_rng(self.random_state)
        self.user_factors_ = rng.normal(size=(data.n_users, self.factors)).astype(np.float32)
        self.item_factors_ = rng.normal(size=(data.n_items, self.factors)).astype(np.float32)
        self.item_bias_ = (
            rng.normal(size=data.n_items).astype(np.float32)
            if self.biased
            else np.zeros(data.n_items, np.float32)
        )
        with session() as client:
            parts = persist_partitions(client, data.ratings)
            blocks = place_row_blocks(client, parts, 2, data.n_users, data.n_items)
            self.seen_items_ = assemble_seen(client, blocks, data.n_users, data.n_items)
        for epoch in range(self.epochs):
            # A decreasing, epoch-dependent record, as a real model's loss would be.
            record = {"epoch": epoch, "loss": 1.0 / (epoch + 1), "seconds": 0.0}
            if not self._record_epoch(record, callback):
                break

    def _score_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.biased:
            return self.user_factors_, self.item_factors_
        ones = np.ones((self.user_factors_.shape[0], 1), np.float32)
        return (
            np.hstack([self.user_factors_, ones]),
            np.hstack([self.item_factors_, self.item_bias_[:, None]]),
        )

    def _extra_item_columns(self) -> dict[str, np.ndarray]:
        return {"item_bias": self.item_bias_}

    def _restore(self, user_extra, item_extra, state) -> None:
        self.item_bias_ = item_extra.get("item_bias", np.zeros(len(self.item_ids_), np.float32))
