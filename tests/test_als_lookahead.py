"""ALS iterations submitted ahead of the one being waited for: the same model."""

from __future__ import annotations

import numpy as np

from mfdask.models import ALS
from tests.conftest import planted_ratings


def _fit(**kw):
    frame = planted_ratings(n_users=150, n_items=90, density=0.2, seed=7)
    frame["rating"] = frame.rating + 1.5  # enough positives
    params = {"factors": 6, "iterations": 6, "random_state": 0, **kw}
    return ALS(**{k: v for k, v in params.items() if k != "callback"}).fit(
        frame, callback=kw.get("callback")
    )


def test_looking_ahead_trains_the_same_floats(client):
    ahead = _fit(calculate_training_loss=False)  # iterations submitted one ahead
    waited = _fit(calculate_training_loss=True)  # the loss reads each iteration: no look-ahead
    np.testing.assert_array_equal(ahead.user_factors_, waited.user_factors_)
    np.testing.assert_array_equal(ahead.item_factors_, waited.item_factors_)
    assert len(ahead.history_) == 6 and all(h["seconds"] >= 0 for h in ahead.history_)


def test_a_callback_stopping_the_fit_takes_back_the_iteration_submitted_ahead(client):
    stopped = _fit(calculate_training_loss=False, callback=lambda r: r["iteration"] < 3)
    three = _fit(calculate_training_loss=False, iterations=3)
    assert len(stopped.history_) == 3
    np.testing.assert_array_equal(stopped.user_factors_, three.user_factors_)
    np.testing.assert_array_equal(stopped.item_factors_, three.item_factors_)
