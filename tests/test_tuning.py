"""mfdask.tune: the search, its pruning and failures, shared data, worker groups, the job."""

from __future__ import annotations

import builtins
import gc
import threading
import time

import pandas as pd
import pytest

import mfdask
from mfdask import ALS, BPR, SVD
from mfdask.cli import main
from mfdask.data.split import split_dataset
from mfdask.data.synth import synthesize
from mfdask.data.training import LocalRatings
from mfdask.engine.cluster import live_workers, worker_addresses, worker_group
from mfdask.engine.trainer import iteration_hook
from mfdask.jobfile import dump_job_file, load_job_file
from mfdask.models.base import load_model
from tests.conftest import planted_ratings

pytest.importorskip("optuna")


def _settled(client) -> int:
    """Futures this client holds once cycles are collected."""
    gc.collect()
    time.sleep(0.2)
    return len(client.futures)


def test_a_tiny_tune_finds_the_planted_regularization_region(client):
    # Low noise on rank-4 ratings: a light penalty fits (RMSE near the noise), a heavy one
    # shrinks the factors away (RMSE near the ratings' spread). The region is lambda < 0.03.
    ratings = planted_ratings(n_users=200, n_items=100, rank=4, density=0.3, noise=0.2)
    model = SVD(factors=16, epochs=12, learning_rate=0.03, n_threads=1, early_stopping_rounds=None)
    space = {"regularization": {"low": 1e-3, "high": 10.0, "log": True}}
    result = mfdask.tune(model, ratings, n_trials=6, metric="rmse", search_space=space)
    assert result.best_params["regularization"] < 0.03
    assert result.best_score < 0.8
    heavy = result.trials[result.trials["regularization"] > 0.5]
    assert (heavy["score"] > result.best_score + 0.15).all()
    assert set(result.trials.columns) >= {
        "number",
        "state",
        "score",
        "regularization",
        "iterations",
        "best_iteration",
        "seconds",
    }
    assert model.regularization == 0.055  # the estimator itself is left alone
    assert result.validation["validation_ratings"] > 0
    SVD(**{**model.get_params(), **result.best_params})  # best_params are parameters


def test_ranking_trials_share_one_validation_placement_and_never_rescatter_train(
    client, monkeypatch
):
    pieces = []
    original = LocalRatings.pieces
    monkeypatch.setattr(LocalRatings, "pieces", lambda self: pieces.append(1) or original(self))
    before = _settled(client)
    result = mfdask.tune(
        ALS(factors=4, iterations=4, n_threads=1), planted_ratings(), n_trials=4, pruning=False
    )
    assert result.validation["placements"] == 1
    assert pieces == []  # the training ratings were persisted once, not scattered per fit
    assert (result.trials["state"] == "COMPLETE").all()
    assert (result.trials["iterations"] == 4).all()
    assert result.best_params["iterations"] == int(
        result.trials.loc[result.trials["score"].idxmax(), "best_iteration"]
    )
    assert _settled(client) == before  # nothing of the search is left on the cluster


def test_a_diverging_trial_is_recorded_as_failed_and_the_search_goes_on(client):
    space = {"learning_rate": {"choices": [1e30, 0.05]}}
    result = mfdask.tune(
        BPR(factors=4, epochs=3, n_threads=1), planted_ratings(), n_trials=6, search_space=space
    )
    states = dict(zip(result.trials["learning_rate"], result.trials["state"], strict=False))
    assert states[1e30] == "FAIL"
    assert "COMPLETE" in result.trials["state"].tolist()
    failed = result.trials[result.trials["state"] == "FAIL"]
    assert failed["error"].str.contains("diverged").all()
    assert result.best_params["learning_rate"] == 0.05


def test_hopeless_trials_are_pruned_and_stop_cleanly(client):
    space = {"regularization": {"low": 0.01, "high": 1e5, "log": True}}
    before = _settled(client)
    result = mfdask.tune(
        ALS(factors=4, iterations=8, n_threads=1, random_state=0),
        planted_ratings(),
        n_trials=10,
        search_space=space,
        random_state=1,
    )
    pruned = result.trials[result.trials["state"] == "PRUNED"]
    assert len(pruned), result.trials
    assert (pruned["iterations"] < 8).all()
    assert pruned["score"].max() < result.best_score
    assert _settled(client) == before


def test_an_iteration_hook_stops_a_fit_like_a_callback(client, planted):
    seen = []

    def hook(event):
        seen.append((event.iteration, event.score, event.model))
        return event.iteration < 1

    with iteration_hook(hook):
        model = ALS(factors=4, iterations=6, n_threads=1, random_state=0).fit(
            planted, validation=planted.sample(200, random_state=0)
        )
    assert len(model.history_) == 2
    assert [s[0] for s in seen] == [0, 1] and all(s[1] is not None for s in seen)
    ALS(factors=4, iterations=2, n_threads=1).fit(planted)  # outside the context: no hook
    assert len(seen) == 2


def test_concurrent_trials_run_side_by_side_on_worker_groups(client):
    workers = live_workers(client)
    with worker_group(workers[:1]):
        assert worker_addresses(client) == workers[:1]
        placed = []

        def watch(event):
            placed.append(threading.current_thread().name)

        with iteration_hook(watch):
            ALS(factors=4, iterations=1, n_threads=1).fit(planted_ratings())
    assert worker_addresses(client) == workers
    result = mfdask.tune(
        ALS(factors=4, iterations=4, n_threads=1),
        planted_ratings(),
        n_trials=4,
        workers_per_trial=1,
        pruning=False,
    )
    assert result.concurrency == len(workers) == 2
    trials = result.trials
    assert set(trials["group"]) == {0, 1}
    spans = [(r.start, r.start + r.seconds, r.group) for r in trials.itertuples()]
    overlap = any(
        a0 < b1 and b0 < a1 and ga != gb
        for a0, a1, ga in spans
        for b0, b1, gb in spans
        if (a0, ga) != (b0, gb)
    )
    assert overlap, spans


def test_bad_arguments_are_named(client):
    with pytest.raises(ValueError, match="metric='rmse'"):
        mfdask.tune(SVD(), planted_ratings(), n_trials=1)
    with pytest.raises(ValueError, match="not a ALS parameter"):
        mfdask.tune(
            ALS(), planted_ratings(), n_trials=1, search_space={"lr": {"low": 1, "high": 2}}
        )
    with pytest.raises(ValueError, match="n_trials"):
        mfdask.tune(ALS(), planted_ratings(), n_trials=0)


def test_without_optuna_the_error_names_the_extra(monkeypatch, capsys, tmp_path):
    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ModuleNotFoundError("No module named 'optuna'", name="optuna")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(ImportError, match=r"pip install 'mfdask\[tune\]'"):
        mfdask.tune(ALS(), planted_ratings(), n_trials=1)
    code = main(["tune", "--model", "als", "--train", str(tmp_path), "--output", "x.toml"])
    assert code == 2
    assert "pip install 'mfdask[tune]'" in capsys.readouterr().err


def test_job_file_values_round_trip(tmp_path):
    params = {"factors": 8, "regularization": 1e-05, "alpha": 2.0, "solver": "cg", "n_blocks": None}
    path = dump_job_file(
        tmp_path / "j.toml",
        {"model": "als", "train": "a b/train", "output": "m", "params": params},
        comment="two\nlines",
    )
    job = load_job_file(path)
    assert job["params"] == {**params, "n_blocks": "none"}
    assert (job["model"], job["train"], job["output"]) == ("als", "a b/train", "m")


def test_tune_job_writes_a_job_file_that_train_accepts(client, capsys, tmp_path):
    ds = synthesize(tmp_path / "dataset", n_ratings=4000, seed=0)
    train, _ = split_dataset(ds, tmp_path / "split", method="user_holdout", seed=0)
    best = tmp_path / "best.toml"
    code = main(
        [
            "tune",
            "--model",
            "als",
            "--train",
            str(train.path),
            "--trials",
            "3",
            "--output",
            str(best),
            "--param",
            "factors=4",
            "--param",
            "iterations=3",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "3 trials" in out
    job = load_job_file(best)
    assert job["model"] == "als" and job["train"] == str(train.path)
    assert {"regularization", "alpha", "iterations", "factors"} <= set(job["params"])
    assert (tmp_path / "best.trials.csv").exists() and (tmp_path / "best.trials.png").exists()
    trials = pd.read_csv(tmp_path / "best.trials.csv")
    assert len(trials) == 3
    code = main(["train", "--config", str(best)])
    assert code == 0, capsys.readouterr().err
    model = load_model(job["output"])
    for name, value in job["params"].items():
        assert getattr(model, name) == pytest.approx(value)
    assert main(["tune", "--model", "als", "--train", str(train.path), "--output", str(best)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_carved_validation_holds_out_positives_per_user(client, tmp_path):
    from mfdask.tuning import _prepare

    ds = synthesize(tmp_path / "dataset", n_ratings=4000, seed=0)
    prepared = _prepare(client, ALS(), ds.path, None, k=10, fraction=0.2, seed=0)
    held = prepared.validation.test.compute()
    kept = prepared.train.ratings.compute()
    assert len(held) + len(kept) == ds.n_ratings
    assert (held["rating"] >= 4).all()
    assert prepared.info["validation_ratings"] == len(held) > 0
    positives = kept[kept["rating"] >= 4].groupby("user_idx").size()
    users = ds.users().set_index("user_id")["user_idx"]
    per_user = held.groupby(held["user_id"].map(users)).size()
    assert (per_user <= positives.reindex(per_user.index)).all()  # most positives stay in train
    prepared.keep.clear()


def test_the_trials_plot_draws_the_best_so_far_across_pruned_trials(tmp_path):
    from mfdask.report import plot_trials

    trials = pd.DataFrame(
        {
            "number": [0, 1, 2, 3],
            "state": ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"],
            "score": [0.2, 0.1, float("nan"), 0.3],
        }
    )
    path = plot_trials(trials, tmp_path / "t.png", "ndcg")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_trials(trials.iloc[:0], tmp_path / "e.png", "ndcg") is None


def test_the_first_trial_is_the_estimators_own_point(client):
    # Defaults left None are resolved for ratings; an explicit value is kept; a value
    # outside the space is drawn by the sampler instead.
    result = mfdask.tune(
        ALS(factors=4, iterations=2, n_threads=1, alpha=100.0),
        planted_ratings(),
        n_trials=2,
        pruning=False,
    )
    first = result.trials.iloc[0]
    assert first["source"] == "estimator"
    assert first["regularization"] == ALS.RATING_DEFAULTS["regularization"]
    assert first["regularization_exponent"] == ALS.RATING_DEFAULTS["regularization_exponent"]
    assert 1.0 <= first["alpha"] <= 30.0  # 100 is outside the space: drawn
    assert (result.trials["source"].iloc[1:] == "sampler").all()
    assert result.best_score >= first["score"]
    result = mfdask.tune(
        ALS(factors=4, iterations=2, n_threads=1, regularization=2.5),
        planted_ratings(),
        n_trials=1,
        pruning=False,
        search_space={"regularization": {"low": 0.1, "high": 10.0, "log": True}},
    )
    assert result.trials["regularization"].tolist() == [2.5]
    assert result.best_params == {
        "regularization": 2.5,
        "iterations": result.best_params["iterations"],
    }
    result = mfdask.tune(
        ALS(factors=4, iterations=2, n_threads=1),
        planted_ratings(),
        n_trials=1,
        pruning=False,
        start_from_estimator=False,
    )
    assert result.trials["source"].tolist() == ["sampler"]


def test_events_are_tuned_as_events(client):
    # Play counts: every event is a positive (most weights are below the rating threshold
    # of 4), and the first trial is ALS's event defaults.
    from tests.test_events import play_counts

    events = play_counts()
    assert (events["weight"] < 4).mean() > 0.2
    result = mfdask.tune(
        ALS(factors=4, iterations=2, n_threads=1), events, n_trials=1, pruning=False
    )
    first = result.trials.iloc[0]
    assert first["regularization"] == ALS.EVENT_DEFAULTS["regularization"]
    assert first["alpha"] == ALS.EVENT_DEFAULTS["alpha"]
    held = result.validation["validation_ratings"]
    assert held >= 0.15 * len(events)  # a fifth of every user's events, not of its >= 4s
