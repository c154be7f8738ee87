"""Distributed evaluation equals a direct NumPy computation; the evaluate job end to end."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mfdask._warnings import MfdaskWarning
from mfdask.data.dataset import id_map_fingerprint, write_dataset
from mfdask.data.training import InputError
from mfdask.evaluate import RankingEvaluator, evaluate, evaluate_ranking, evaluate_rating
from mfdask.metrics import rmse
from mfdask.models.base import FactorModel, ModelMismatchError
from tests.test_metrics import twin_means

N_USERS, N_ITEMS = 60, 40


class PlantedModel(FactorModel):
    """A model whose factors are set by the test (no fit): its right answers are known."""

    model_name = "planted"
    implicit: ClassVar[bool] = True

    def __init__(self, factors: int = 4) -> None:
        self.factors = factors


class PlantedExplicit(PlantedModel):
    implicit: ClassVar[bool] = False

    def predict_indices(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        p = self.user_factors_[users] * self.item_factors_[items]
        return 3.0 + p.sum(axis=1)


def _ratings(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint train and test ratings (original ids) over the planted id space."""
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((N_USERS, N_ITEMS)) < 0.3)
    r = rng.integers(1, 6, len(u)).astype("float32")
    is_test = rng.random(len(u)) < 0.3
    frame = pd.DataFrame({"user_id": u + 1000, "item_id": i + 5000, "rating": r})
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)


def _model(train: pd.DataFrame, cls: type[PlantedModel] = PlantedModel, seed: int = 1):
    rng = np.random.default_rng(seed)
    m = cls()
    m.user_ids_ = pd.Index(np.arange(N_USERS) + 1000, name="user_id")
    m.item_ids_ = pd.Index(np.arange(N_ITEMS) + 5000, name="item_id")
    m.user_factors_ = rng.normal(size=(N_USERS, m.factors)).astype(np.float32)
    m.item_factors_ = rng.normal(size=(N_ITEMS, m.factors)).astype(np.float32)
    m.seen_items_ = _csr(train)
    m.fingerprint_ = id_map_fingerprint(m.user_ids_, m.item_ids_)
    m.items_, m.history_, m.metrics_ = None, [], {}
    return m


def _csr(frame: pd.DataFrame) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.ones(len(frame), bool), (frame.user_id - 1000, frame.item_id - 5000)),
        shape=(N_USERS, N_ITEMS),
    )


def _expected(model, train, test, k=10, threshold=4.0, filter_seen=True):
    """The metrics computed directly: full score matrix, per-user sort in plain Python."""
    scores = model.user_factors_ @ model.item_factors_.T
    pos = test[test.rating >= threshold] if threshold is not None else test
    rel_sets = [set() for _ in range(N_USERS)]
    for u, i in zip(pos.user_id - 1000, pos.item_id - 5000, strict=True):
        rel_sets[u].add(int(i))
    seen_sets = [set() for _ in range(N_USERS)]
    if filter_seen:
        for u, i in zip(train.user_id - 1000, train.item_id - 5000, strict=True):
            seen_sets[u].add(int(i))
    recs = np.full((N_USERS, k), -1)
    for u in range(N_USERS):
        order = [int(i) for i in np.argsort(-scores[u]) if int(i) not in seen_sets[u]][:k]
        recs[u, : len(order)] = order
    return twin_means(recs, rel_sets, k, N_ITEMS, scores, seen_sets)


def _assert_matches(got: dict, want: dict) -> None:
    for name, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.fixture(scope="module")
def data():
    return _ratings()


@pytest.mark.parametrize("npartitions", [1, 4])
@pytest.mark.parametrize("n_blocks", [1, 3])
def test_distributed_equals_direct(client, data, npartitions, n_blocks):
    train, test = data
    model = _model(train)
    got = evaluate_ranking(
        model, dd.from_pandas(test, npartitions=npartitions), k=5, n_blocks=n_blocks
    )
    _assert_matches(got, _expected(model, train, test, k=5))
    assert got["test_ratings"] == len(test)
    assert got["skipped_unknown"] == 0
    assert got["positives"] == int((test.rating >= 4).sum())
    assert got["test_users"] == test.user_id.nunique()
    assert got["users"] + got["users_without_positives"] == got["test_users"]
    assert got["test_in_train"] == 0
    assert got["n_blocks"] == n_blocks


def test_a_ranking_evaluator_places_once_and_follows_the_factors(client, data):
    train, test = data
    model = _model(train)
    keys = ("precision", "recall", "ndcg", "map", "hit_rate", "auc", "coverage", "users")

    def same(got, want):
        _assert_matches({k: got[k] for k in keys}, {k: want[k] for k in keys})

    evaluator = RankingEvaluator(model, test, k=5, n_blocks=3)
    first = evaluator.score(model)
    same(first, evaluate_ranking(model, test, k=5, n_blocks=3))
    assert first["test_ratings"] == len(test)
    # new factors: the metrics follow them, the placed ratings are reused
    placed = evaluator._placed
    model.user_factors_ = model.user_factors_[::-1].copy()
    moved = evaluator.score(model)
    assert evaluator._placed is placed
    same(moved, evaluate_ranking(model, test, k=5, n_blocks=3))
    assert moved["ndcg"] != first["ndcg"]
    # a worker holding a block left: placed again on the workers there are
    placed.workers = ["tcp://192.0.2.1:1"]
    again = evaluator.score(model)
    assert evaluator._placed is not placed
    same(again, moved)


def test_dataset_paths_and_train_give_the_same(client, data, tmp_path):
    train, test = data
    model = _model(train)
    users = pd.DataFrame({"user_id": model.user_ids_, "user_idx": np.arange(N_USERS)})
    items = pd.DataFrame({"item_id": model.item_ids_, "item_idx": np.arange(N_ITEMS)})

    def write(frame, name):
        dense = pd.DataFrame(
            {
                "user_idx": (frame.user_id - 1000).astype("int32"),
                "item_idx": (frame.item_id - 5000).astype("int32"),
                "rating": frame.rating,
                "timestamp": np.zeros(len(frame), "int64"),
            }
        )
        return write_dataset(
            dd.from_pandas(dense, npartitions=3), users, items, tmp_path / name, n_user_blocks=2
        )

    test_ds, train_ds = write(test, "test"), write(train, "train")
    want = _expected(model, train, test)
    _assert_matches(evaluate_ranking(model, test_ds.path), want)
    # Seen items read from a train set instead of the model's record: same answer.
    model.seen_items_ = None
    _assert_matches(evaluate_ranking(model, str(test_ds.path), train=train_ds), want)
    got = evaluate_ranking(model, test_ds, train=train)
    _assert_matches(got, want)
    assert got["train_ratings"] == len(train)
    with pytest.raises(ValueError, match="no record of its training items"):
        evaluate_ranking(model, test_ds)


def test_planted_answer_is_perfect(client, data):
    """Test positives = each user's 3 best unseen items: every metric is at its maximum."""
    train, _ = data
    model = _model(train)
    scores = model.user_factors_ @ model.item_factors_.T
    scores[model.seen_items_.nonzero()] = -np.inf
    best = np.argsort(-scores, axis=1)[:, :3]
    test = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(N_USERS), 3) + 1000,
            "item_id": best.ravel() + 5000,
            "rating": 5.0,
        }
    )
    got = evaluate_ranking(model, test, k=10)
    assert got["users"] == N_USERS
    for name in ("recall", "ndcg", "map", "hit_rate", "auc", "implicit_precision"):
        assert got[name] == pytest.approx(1.0), name
    assert got["precision"] == pytest.approx(0.3)
    # The opposite: positives are the 3 worst items, nothing is found and the AUC is 0.
    worst = np.argsort(np.where(np.isinf(scores), np.inf, scores), axis=1)[:, :3]
    test["item_id"] = worst.ravel() + 5000
    got = evaluate_ranking(model, test, k=10)
    assert got["ndcg"] == 0.0 and got["auc"] == 0.0


def test_unfiltered_and_threshold(client, data):
    train, test = data
    model = _model(train)
    got = evaluate_ranking(model, test, filter_seen=False, positive_threshold=None, k=7)
    _assert_matches(got, _expected(model, train, test, k=7, threshold=None, filter_seen=False))
    assert got["users_without_positives"] == 0


def test_unknown_pairs_are_counted_not_dropped(client, data):
    train, test = data
    model = _model(train)
    extra = pd.DataFrame(
        {"user_id": [1, 1000, 2], "item_id": [5000, 9, 7], "rating": [5.0, 5.0, 5.0]}
    )
    with pytest.warns(MfdaskWarning, match="3 of .* test ratings name a user"):
        got = evaluate_ranking(model, pd.concat([test, extra], ignore_index=True))
    assert got["skipped_unknown"] == 3
    assert got["unknown_user_rows"] == 2 and got["unknown_item_rows"] == 2
    _assert_matches(got, _expected(model, train, test))


def test_leakage_is_reported(client, data):
    train, test = data
    model = _model(train)
    leaked = pd.concat([test, train.iloc[:5]], ignore_index=True)
    got = evaluate_ranking(model, leaked)
    assert got["test_in_train"] == 5


def test_rating_metrics(client, data):
    train, test = data
    model = _model(train, PlantedExplicit)
    want = rmse(
        model.predict_indices(test.user_id.to_numpy() - 1000, test.item_id.to_numpy() - 5000),
        test.rating,
    )
    for parts in (1, 3):
        got = evaluate_rating(model, dd.from_pandas(test, npartitions=parts))
        assert got["rmse"] == pytest.approx(want, rel=1e-9)
        assert got["count"] == len(test)
        assert "ndcg" not in got
    both = evaluate(model, test, k=5)  # explicit: rating and ranking in one pass
    assert both["rmse"] == pytest.approx(want, rel=1e-9)
    _assert_matches(both, _expected(model, train, test, k=5))


def test_errors_are_named(client, data, tmp_path):
    train, test = data
    model = _model(train)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        evaluate_ranking(model, test, k=0)
    with pytest.raises(ValueError, match="implicit model"):
        evaluate_rating(model, test)
    with pytest.raises(ValueError, match="implicit model: its scores are preferences"):
        evaluate(model, test, rating=True)
    with pytest.raises(ValueError, match=r"no test user has a positive \(rating >= 6\)"):
        evaluate_ranking(model, test, positive_threshold=6)
    with pytest.raises(InputError, match=r"missing column\(s\) \['user_id'\]"):
        evaluate_ranking(model, test.drop(columns="user_id"))
    # Without a rating column the test set is an event list: every row is relevant.
    as_events = evaluate_ranking(model, test.drop(columns="rating"))
    assert as_events["positives"] == len(test)
    bad = test.copy()
    bad.loc[3, "rating"] = np.nan
    with pytest.raises(InputError, match="rating nan is missing or not a number"):
        evaluate_ranking(model, bad)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_ranking(model, tmp_path / "nope")
    with pytest.warns(MfdaskWarning), pytest.raises(ValueError, match="no test rating to"):
        evaluate_ranking(model, test.assign(user_id=test.user_id + 10**6))
    diverged = _model(train)
    diverged.item_factors_[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite item factors"):
        evaluate_ranking(diverged, test)


def test_mismatched_dataset_is_refused(client, data, tmp_path):
    train, _ = data
    model = _model(train)
    users = pd.DataFrame({"user_id": np.arange(N_USERS), "user_idx": np.arange(N_USERS)})
    items = pd.DataFrame({"item_id": np.arange(N_ITEMS), "item_idx": np.arange(N_ITEMS)})
    dense = pd.DataFrame(
        {
            "user_idx": np.array([0], "int32"),
            "item_idx": np.array([0], "int32"),
            "rating": np.array([5.0], "float32"),
            "timestamp": np.array([0], "int64"),
        }
    )
    ds = write_dataset(dd.from_pandas(dense, npartitions=1), users, items, tmp_path / "other")
    with pytest.raises(ModelMismatchError, match="id-map fingerprint"):
        evaluate_ranking(model, ds)


# --------------------------------------------------------------------------- the job


def _saved(model_cls, train, tmp_path, name, **params):
    """A real model class with planted factors, saved as `mfdask train` would save it."""
    planted = _model(train)
    model = model_cls(**params)
    for attr in ("user_ids_", "item_ids_", "user_factors_", "item_factors_", "seen_items_"):
        setattr(model, attr, getattr(planted, attr))
    model.fingerprint_, model.items_, model.history_, model.metrics_ = (
        planted.fingerprint_,
        None,
        [],
        {},
    )
    if not model.implicit:
        rng = np.random.default_rng(7)
        model.user_bias_ = rng.normal(0, 0.1, N_USERS).astype(np.float32)
        model.item_bias_ = rng.normal(0, 0.1, N_ITEMS).astype(np.float32)
        model.global_mean_ = 3.5
        model.rating_range_ = (1.0, 5.0)
    return model, model.save(tmp_path / name)


def _test_dataset(test, tmp_path):
    users = pd.DataFrame({"user_id": np.arange(N_USERS) + 1000, "user_idx": np.arange(N_USERS)})
    items = pd.DataFrame({"item_id": np.arange(N_ITEMS) + 5000, "item_idx": np.arange(N_ITEMS)})
    dense = pd.DataFrame(
        {
            "user_idx": (test.user_id - 1000).astype("int32"),
            "item_idx": (test.item_id - 5000).astype("int32"),
            "rating": test.rating,
            "timestamp": np.zeros(len(test), "int64"),
        }
    )
    return write_dataset(dd.from_pandas(dense, npartitions=2), users, items, tmp_path / "test")


def test_job_writes_json_and_table(client, data, tmp_path, capsys):
    from mfdask.cli import main
    from mfdask.models import ALS, SVD

    train, test = data
    ds = _test_dataset(test, tmp_path)
    als, als_dir = _saved(ALS, train, tmp_path, "als", factors=4)
    out = tmp_path / "als.json"
    assert main(["evaluate", str(als_dir), str(ds.path), "--k", "5", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NDCG@5" in printed and "AUC (exact)" in printed
    report = json.loads(out.read_text())
    assert report["model_class"] == "ALS" and report["k"] == 5
    direct = evaluate_ranking(als, ds, k=5)
    for key in ("precision", "recall", "ndcg", "map", "auc", "implicit_precision", "users"):
        assert report["metrics"][key] == pytest.approx(direct[key]), key
    assert "rmse" not in report["metrics"]

    svd, svd_dir = _saved(SVD, train, tmp_path, "svd", factors=4)
    out = tmp_path / "svd.json"
    assert main(["evaluate", str(svd_dir), str(ds.path), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    want = rmse(
        svd.predict_indices(test.user_id.to_numpy() - 1000, test.item_id.to_numpy() - 5000),
        test.rating,
    )
    assert metrics["rmse"] == pytest.approx(want, rel=1e-6)
    assert metrics["count"] == len(test) and "ndcg" in metrics
    assert "RMSE" in capsys.readouterr().out


def test_job_errors(client, data, tmp_path, capsys):
    from mfdask.cli import main
    from mfdask.models import ALS

    train, test = data
    ds = _test_dataset(test, tmp_path)
    _, als_dir = _saved(ALS, train, tmp_path, "als", factors=4)
    out = tmp_path / "m.json"
    out.write_text("{}")
    assert main(["evaluate", str(als_dir), str(ds.path), "--output", str(out)]) == 2
    assert f"{out} already exists: choose another --output or pass --overwrite" in (
        capsys.readouterr().err
    )
    args = ["evaluate", str(tmp_path / "nomodel"), str(ds.path), "--output", str(out)]
    assert main([*args, "--overwrite"]) == 2
    assert "is not a saved mfdask model: model.json is missing" in capsys.readouterr().err
    other = tmp_path / "other"
    users = pd.DataFrame({"user_id": np.arange(3), "user_idx": np.arange(3)})
    items = pd.DataFrame({"item_id": np.arange(3), "item_idx": np.arange(3)})
    dense = pd.DataFrame(
        {
            "user_idx": np.array([0], "int32"),
            "item_idx": np.array([1], "int32"),
            "rating": np.array([5.0], "float32"),
            "timestamp": np.array([0], "int64"),
        }
    )
    write_dataset(dd.from_pandas(dense, npartitions=1), users, items, other)
    args = ["evaluate", str(als_dir), str(other), "--output", str(out), "--overwrite"]
    assert main(args) == 2
    assert "the model was trained on a dataset with id-map fingerprint" in capsys.readouterr().err
    assert (
        main(
            ["evaluate", str(als_dir), str(tmp_path / "none"), "--output", str(out), "--overwrite"]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert out.read_text() == "{}"  # nothing was overwritten by a failed run


# implicit advises single-threaded OpenBLAS for its own speed; the metrics do not depend on it.
@pytest.mark.filterwarnings("ignore:OpenBLAS is configured:RuntimeWarning:implicit")
def test_agrees_with_implicit_ranking_metrics(client, data):
    """implicit's precision/map/ndcg/auc equal our implicit_precision/map/ndcg/implicit_auc."""
    pytest.importorskip("implicit")
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.evaluation import ranking_metrics_at_k

    train, test = data
    model = _model(train, PlantedModel)
    theirs = AlternatingLeastSquares(factors=model.factors, num_threads=1)
    theirs.user_factors = model.user_factors_.copy()
    theirs.item_factors = model.item_factors_.copy()
    pos = test[test.rating >= 4]
    test_pos = sp.csr_matrix(
        (np.ones(len(pos), np.float32), (pos.user_id - 1000, pos.item_id - 5000)),
        shape=(N_USERS, N_ITEMS),
    )
    want = ranking_metrics_at_k(
        theirs, model.seen_items_.astype(np.float32), test_pos, K=5, show_progress=False
    )
    got = evaluate_ranking(model, test, k=5)
    for a, b in (
        ("precision", "implicit_precision"),
        ("map", "map"),
        ("ndcg", "ndcg"),
        ("auc", "implicit_auc"),
    ):
        assert got[b] == pytest.approx(float(want[a]), rel=1e-6), a
