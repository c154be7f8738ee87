"""One vocabulary: history keys, the learning-rate names, random_state, the progress switch.

Old names keep working for one release with a ``DeprecationWarning``.
"""

from __future__ import annotations

import json
import warnings

import pytest

from mfdask import ALS, BPR, SVD, WARP
from mfdask._progress import progress_bar, progress_hidden
from mfdask._warnings import FitMetrics, HistoryRecord
from mfdask.jobfile import coerce_params

MODELS = [SVD, ALS, BPR, WARP]


def test_history_records_say_iteration_and_read_epoch_with_a_warning():
    record = HistoryRecord({"epoch": 3, "loss": 0.5})
    assert dict(record) == {"iteration": 3, "loss": 0.5}
    assert json.loads(json.dumps(record)) == {"iteration": 3, "loss": 0.5}
    with pytest.warns(DeprecationWarning, match="'epoch' is deprecated.*'iteration'"):
        assert record["epoch"] == 3
    with pytest.warns(DeprecationWarning):
        assert record.get("epoch") == 3
    with pytest.warns(DeprecationWarning):
        assert "epoch" in record
    with pytest.raises(KeyError):
        record["missing"]


def test_metrics_say_best_iteration():
    metrics = FitMetrics({"best_epoch": 4, "epochs_run": 7})
    assert dict(metrics) == {"best_iteration": 4, "iterations_run": 7}
    with pytest.warns(DeprecationWarning, match="best_iteration"):
        assert metrics["best_epoch"] == 4


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_one_random_state_default(cls):
    assert cls().random_state == 0


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_one_learning_rate_decay_name(cls):
    names = cls._param_names()
    assert not {"lr_decay", "lr_schedule"} & set(names)
    if cls is not ALS:  # the SGD models
        assert "learning_rate_decay" in names


def test_svd_old_learning_rate_names_still_work():
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        model = SVD(lr_schedule="constant", lr_decay=0.9)
    assert model.learning_rate_schedule == "constant" and model.learning_rate_decay == 0.9
    params = model.get_params()
    assert params["learning_rate_schedule"] == "constant" and "lr_schedule" not in params
    with pytest.warns(DeprecationWarning):
        assert model.lr_decay == 0.9
    with pytest.warns(DeprecationWarning):
        model.lr_decay = 0.8
    assert model.learning_rate_decay == 0.8 and "lr_decay" not in vars(model)
    with pytest.warns(DeprecationWarning):
        model.set_params(lr_schedule="bold_driver")
    assert model.learning_rate_schedule == "bold_driver"
    with pytest.raises(TypeError, match="unexpected keyword argument 'lr_rate'"):
        SVD(lr_rate=0.1)


def test_svd_messages_name_the_parameter_as_given():
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"^lr_schedule must"):
        SVD(lr_schedule="cosine")._validate_params()
    with pytest.raises(ValueError, match=r"^learning_rate_schedule must be one of"):
        SVD(learning_rate_schedule="cosine")._validate_params()


def test_job_files_accept_the_old_names():
    params = coerce_params(SVD, {"lr_decay": "0.9", "learning_rate_schedule": "decay"})
    assert params == {"lr_decay": 0.9, "learning_rate_schedule": "decay"}
    with pytest.warns(DeprecationWarning):
        assert SVD(**params).learning_rate_decay == 0.9


def test_progress_switch(monkeypatch):
    assert progress_bar(False, 3, "epoch") is None
    for value, hidden in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("MFDASK_NO_PROGRESS", value)
        assert progress_hidden() is hidden
        bar = progress_bar(True, 3, "epoch")
        assert bar.disable is hidden
        bar.close()


def test_a_fit_records_iteration_and_best_iteration(client, planted):
    validation = planted.sample(frac=0.1, random_state=0)
    train = planted.drop(validation.index)
    model = SVD(factors=4, epochs=4, n_threads=1, early_stopping_rounds=1, random_state=0)
    model.fit(train, validation=validation)
    assert [r["iteration"] for r in model.history_] == list(range(1, len(model.history_) + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not any(dict.__contains__(r, "epoch") for r in model.history_)
    assert "iterations_run" in model.metrics_
    with pytest.warns(DeprecationWarning):
        assert model.history_[0]["epoch"] == 1
