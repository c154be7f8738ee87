"""Checkpoints in every fit: an interrupted fit resumed ends with the uninterrupted model.

The ``client`` fixture has one thread per worker, so SGD fits are bitwise reproducible
and the resumed models must equal the uninterrupted ones exactly, like ALS.
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from mfdask import ALS, BPR, SVD, WARP
from mfdask.engine.checkpoint import CheckpointMismatchError, CheckpointStore
from tests.conftest import planted_ratings

MODELS = {
    "als": lambda **kw: ALS(factors=6, iterations=9, random_state=0, **kw),
    "svd": lambda **kw: SVD(factors=6, epochs=9, lr_schedule="bold_driver", random_state=0, **kw),
    "bpr": lambda **kw: BPR(factors=6, epochs=9, learning_rate_decay=0.3, random_state=0, **kw),
    "warp": lambda **kw: WARP(factors=6, epochs=9, random_state=0, **kw),
}


class Crash(Exception):
    """Stands for the driver dying after an iteration."""


def crash_after(n: int):
    def callback(record):
        if record.get("iteration", record.get("epoch")) == n:
            raise Crash

    return callback


@pytest.fixture(scope="module")
def ratings():
    frame = planted_ratings(n_users=160, n_items=90, density=0.15, seed=3)
    frame["rating"] = np.clip(np.round(frame["rating"]), 1, 5).astype("float32")
    return frame


def _arrays(model):
    out = [model.user_factors_, model.item_factors_]
    for name in ("user_bias_", "item_bias_"):
        if getattr(model, name, None) is not None:
            out.append(getattr(model, name))
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_resumed_fit_equals_the_uninterrupted_one(client, ratings, tmp_path, name):
    clean = MODELS[name]().fit(ratings)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        MODELS[name](checkpoint_dir=str(ckpt), checkpoint_every=3).fit(
            ratings, callback=crash_after(7)
        )
    assert CheckpointStore(ckpt).latest().iteration == 6
    resumed = MODELS[name](checkpoint_dir=str(ckpt), checkpoint_every=3)
    resumed.fit(ratings, resume=True)
    assert resumed.metrics_["resumed_from"] == 6
    assert len(resumed.history_) == len(clean.history_) == 9
    for a, b in zip(_arrays(resumed), _arrays(clean), strict=True):
        np.testing.assert_array_equal(a, b)
    if name == "svd":  # the bold driver's rates were restored, not restarted
        assert [r["learning_rate"] for r in resumed.history_] == [
            r["learning_rate"] for r in clean.history_
        ]


def test_checkpoint_holds_factors_optimiser_state_and_history(client, ratings, tmp_path):
    ckpt = tmp_path / "ckpt"
    SVD(factors=4, epochs=4, random_state=0, checkpoint_dir=str(ckpt), checkpoint_every=2).fit(
        ratings
    )
    latest = CheckpointStore(ckpt).latest()
    assert latest.iteration == 4 and latest.state["finished"] is True
    assert {"user.factors", "user.bias", "item.factors", "item.bias"} <= set(latest.arrays)
    assert len(latest.state["rates"]) == len(latest.state["history"]) == 4
    assert latest.state["identity"]["params"]["factors"] == 4
    assert "checkpoint_dir" not in latest.state["identity"]["params"]
    pointer = json.loads((ckpt / "LATEST").read_text())
    assert pointer == {"checkpoint": "ckpt-000004"}


def test_early_stopping_best_epoch_survives_resume(client, tmp_path):
    ratings = planted_ratings(n_users=200, n_items=100, density=0.3, seed=4)
    valid = ratings.iloc[::5]
    train = ratings.drop(valid.index)

    def make():
        return SVD(
            factors=4,
            epochs=40,
            learning_rate=0.05,
            lr_schedule="constant",
            bias_learning_rate=0.05,
            bias_regularization=0.01,
            regularization=0.1,
            init_scale=0.3,
            early_stopping_rounds=2,
            random_state=0,
            checkpoint_dir=str(tmp_path / "ckpt"),
            checkpoint_every=4,
        )

    clean = make().fit(train, validation=valid)
    ran = len(clean.history_)
    assert 4 < ran < 40, "stopped early, after the best epoch"
    with pytest.raises(Crash):
        make().fit(train, validation=valid, callback=crash_after(ran - 1))
    resumed = make().fit(train, validation=valid, resume=True)
    assert resumed.metrics_["best_epoch"] == clean.metrics_["best_epoch"] < ran
    assert len(resumed.history_) == ran
    np.testing.assert_array_equal(resumed.user_factors_, clean.user_factors_)
    np.testing.assert_array_equal(resumed.item_bias_, clean.item_bias_)


def test_a_finished_checkpoint_resumes_to_the_same_model_without_training(
    client, ratings, tmp_path
):
    ckpt = str(tmp_path / "ckpt")
    first = ALS(factors=4, iterations=4, random_state=0, checkpoint_dir=ckpt).fit(ratings)
    again = ALS(factors=4, iterations=4, random_state=0, checkpoint_dir=ckpt)
    again.fit(ratings, resume=True, callback=crash_after(1))  # no iteration runs
    np.testing.assert_array_equal(again.item_factors_, first.item_factors_)
    assert len(again.history_) == 4


def test_checkpoint_of_another_fit_is_refused_naming_the_difference(client, ratings, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Crash):
        ALS(factors=4, iterations=6, random_state=0, checkpoint_dir=ckpt, checkpoint_every=2).fit(
            ratings, callback=crash_after(3)
        )
    other = ALS(factors=4, iterations=6, regularization=0.5, random_state=0, checkpoint_dir=ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"regularization \(checkpoint: 1.3"):
        other.fit(ratings, resume=True)
    fewer = ratings.iloc[:-10]
    same = ALS(factors=4, iterations=6, random_state=0, checkpoint_dir=ckpt)
    with pytest.raises(CheckpointMismatchError, match="ratings_digest"):
        same.fit(fewer, resume=True)
    # operational parameters may change: n_threads, checkpoint_every
    ok = ALS(factors=4, iterations=6, random_state=0, checkpoint_dir=ckpt, checkpoint_every=5)
    ok.fit(ratings, resume=True)
    assert ok.metrics_["resumed_from"] == 2


def test_resume_needs_a_directory_and_starts_afresh_when_it_is_empty(client, ratings, tmp_path):
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        ALS(factors=4, iterations=2).fit(ratings, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        ALS(factors=4, iterations=2, checkpoint_every=0).fit(ratings)
    fresh = ALS(factors=4, iterations=3, random_state=0, checkpoint_dir=str(tmp_path / "new"))
    fresh.fit(ratings, resume=True)
    assert "resumed_from" not in fresh.metrics_
    clean = ALS(factors=4, iterations=3, random_state=0).fit(ratings)
    np.testing.assert_array_equal(fresh.user_factors_, clean.user_factors_)


def test_a_fresh_fit_replaces_old_checkpoints(client, ratings, tmp_path):
    ckpt = tmp_path / "ckpt"
    ALS(factors=4, iterations=6, random_state=0, checkpoint_dir=str(ckpt)).fit(ratings)
    ALS(factors=4, iterations=2, random_state=1, checkpoint_dir=str(ckpt)).fit(ratings)
    assert sorted(p.name for p in ckpt.glob("ckpt-*")) == ["ckpt-000002"]


@pytest.mark.parametrize("name", ["als", "svd"])
def test_scheduler_task_count_stays_bounded_over_a_long_fit(client, ratings, name):
    """30 iterations do not leave more tasks on the scheduler than 5 (lineage is cut)."""
    scheduler = client.cluster.scheduler
    counts: dict[int, int] = {}

    def record(r):
        counts[r.get("iteration", r.get("epoch"))] = len(scheduler.tasks)

    model = {
        "als": ALS(factors=4, iterations=30, random_state=0, checkpoint_every=5),
        "svd": SVD(
            factors=4, epochs=30, random_state=0, early_stopping_rounds=None, checkpoint_every=5
        ),
    }[name]
    model.fit(ratings, callback=record)
    # Releases reach the scheduler asynchronously (late on a loaded machine), so single
    # counts jitter and can spike; a lineage that grew would add tasks every iteration
    # and raise the whole late window (20 iterations apart: 20+ tasks), not one reading.
    early = statistics.median(counts[i] for i in range(1, 11))
    late = statistics.median(counts[i] for i in range(21, 31))
    assert late <= early + 8, counts
