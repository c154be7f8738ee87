"""One exception hierarchy: every project error is an MfdaskError and keeps its builtin base."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest

import mfdask
import mfdask.errors as errors
from mfdask.errors import MfdaskError, ModelFitError

BUILTIN_BASES = {
    "ALSNumericalError": (FloatingPointError,),
    "AccountingError": (RuntimeError,),
    "BadRowsError": (ValueError,),
    "BlockExchangeError": (OSError,),  # through distributed's CommClosedError
    "CheckpointError": (RuntimeError,),
    "CheckpointMismatchError": (RuntimeError,),
    "ClusterError": (RuntimeError,),
    "ClusterFailure": (RuntimeError,),
    "DatasetError": (ValueError,),
    "DelimiterError": (ValueError,),
    "DuplicateRatingError": (ValueError,),
    "EmptyHistoryError": (ValueError,),
    "FetchError": (RuntimeError,),
    "IngestError": (ValueError,),
    "InputError": (ValueError,),
    "JobError": (RuntimeError,),
    "JobFileError": (ValueError,),
    "ModelFileError": (ValueError,),
    "ModelFitError": (FloatingPointError,),
    "ModelMismatchError": (ValueError,),
    "NotFittedError": (RuntimeError,),
    "OptunaMissingError": (ImportError, RuntimeError),
    "PlanError": (RuntimeError,),
    "RecoveryError": (RuntimeError,),
    "SchedulerLostError": (RuntimeError,),
    "StateLostError": (RuntimeError,),
    "UnknownIdError": (KeyError,),
    "WorkerLostError": (RuntimeError,),
}

OLD_PATHS = {
    "mfdask.engine.als": ["ALSNumericalError"],
    "mfdask.engine.resilience": [
        "ClusterFailure",
        "WorkerLostError",
        "SchedulerLostError",
        "RecoveryError",
    ],
    "mfdask.engine.cluster": ["ClusterError"],
    "mfdask.engine.dsgd": ["PlanError"],
    "mfdask.engine.state": ["StateLostError"],
    "mfdask.engine.checkpoint": ["CheckpointError", "CheckpointMismatchError"],
    "mfdask.engine.exchange": ["BlockExchangeError"],
    "mfdask.engine.blocks": ["DuplicateRatingError"],
    "mfdask.models.base": [
        "NotFittedError",
        "UnknownIdError",
        "ModelMismatchError",
        "ModelFileError",
    ],
    "mfdask.models.foldin": ["EmptyHistoryError"],
    "mfdask.data.dataset": ["DatasetError"],
    "mfdask.data.training": ["InputError"],
    "mfdask.data.validate": [
        "IngestError",
        "BadRowsError",
        "DuplicateRatingError",
        "DelimiterError",
        "AccountingError",
    ],
    "mfdask.data.fetch": ["FetchError"],
    "mfdask.tuning": ["OptunaMissingError"],
    "mfdask.jobs._common": ["JobError"],
    "mfdask.jobfile": ["JobFileError"],
}


def test_every_exported_error_is_listed():
    assert sorted(errors.__all__) == sorted([*BUILTIN_BASES, "MfdaskError"])


@pytest.mark.parametrize("name", sorted(BUILTIN_BASES))
def test_under_mfdask_error_and_keeps_its_builtin_base(name):
    cls = getattr(errors, name)
    assert issubclass(cls, MfdaskError)
    for base in BUILTIN_BASES[name]:
        assert issubclass(cls, base), f"{name} is no longer a {base.__name__}"


@pytest.mark.parametrize("module", sorted(OLD_PATHS))
def test_old_import_paths_are_the_same_classes(module):
    mod = __import__(module, fromlist=["_"])
    for name in OLD_PATHS[module]:
        assert getattr(mod, name) is getattr(errors, name), f"{module}.{name}"


def test_no_project_exception_outside_the_hierarchy():
    """Every exception class defined in an mfdask module derives from MfdaskError."""
    import importlib
    import pkgutil

    outside = []
    for info in pkgutil.walk_packages(mfdask.__path__, "mfdask."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if (
                obj.__module__ == info.name
                and issubclass(obj, BaseException)
                and not issubclass(obj, (MfdaskError, Warning))
            ):
                outside.append(f"{info.name}.{obj.__qualname__}")
    assert outside == []


def test_one_duplicate_rating_error():
    from mfdask.data.validate import DuplicateRatingError as ingest_dup
    from mfdask.engine.blocks import DuplicateRatingError as block_dup

    assert ingest_dup is block_dup
    assert issubclass(block_dup, errors.IngestError)


def test_als_numerical_error_is_a_fit_error():
    assert issubclass(errors.ALSNumericalError, ModelFitError)


@pytest.mark.parametrize("name", sorted(set(BUILTIN_BASES) - {"BlockExchangeError"}))
def test_errors_survive_pickling(name):
    """Errors raised on a worker reach the client as the same class with the same text."""
    cls = getattr(errors, name)
    exc = cls("something failed: change this")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc)


def test_block_duplicate_message_names_the_pair_and_the_fix():
    from mfdask.engine.blocks import build_row_block

    piece = (np.int32([0, 0]), np.int32([1, 1]), np.float32([1.0, 2.0]))
    with pytest.raises(errors.DuplicateRatingError) as info:
        build_row_block(0, 1, 1, 2, [piece], row_name="user", col_name="item")
    text = str(info.value)
    assert "duplicate rating for user index 0, item index 1" in text, text
    assert "--duplicates" in text, text  # what to change


def test_corrupt_checkpoint_message_says_what_to_do(tmp_path):
    from mfdask.engine.checkpoint import CheckpointStore

    broken = tmp_path / "ckpt-000001"
    broken.mkdir()
    with pytest.raises(errors.CheckpointError) as info:
        CheckpointStore.load(broken)
    text = str(info.value)
    assert "incomplete or corrupt" in text and "delete it" in text, text
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, MfdaskError)


def test_topk_id_map_mismatch_is_a_model_mismatch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mfdask.data import schema
    from mfdask.engine.topk import _BlockJob, _DatasetSeen, _seen_from_dataset

    ratings = tmp_path / "ratings"
    part = ratings / f"{schema.USER_BLOCK}=0"
    part.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                schema.USER_IDX: pa.array([0, 1], pa.int32()),
                schema.ITEM_IDX: pa.array([0, 9], pa.int32()),
            }
        ),
        part / "part-0.parquet",
    )
    job = _BlockJob(
        block=0,
        n_blocks=1,
        n=2,
        chunk_cells=100,
        out_dir=str(tmp_path),
        key="user",
        query_column="user_id",
        result_column="item_id",
        query_type=pa.int64(),
        result_type=pa.int64(),
    )
    with pytest.raises(errors.ModelMismatchError, match="id maps are not the model's"):
        _seen_from_dataset(_DatasetSeen(str(ratings), 1), job, np.array([0, 1]), n_cols=3)
