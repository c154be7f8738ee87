"""The shared fit loop (mfdask/engine/trainer.py): restarts, layering, divergence."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mfdask import ALS, BPR, SVD, WARP
from mfdask.engine.resilience import WorkerLostError
from mfdask.errors import MfdaskError, ModelFitError

ROOT = Path(__file__).resolve().parents[1] / "mfdask"

NO_SEED = {
    "svd": (lambda: SVD(factors=4, epochs=3, random_state=None, n_threads=1), "train_rmse"),
    "bpr": (lambda: BPR(factors=4, epochs=3, random_state=None, n_threads=1), "objective"),
    "warp": (lambda: WARP(factors=4, epochs=3, random_state=None, n_threads=1), "objective"),
    "als": (
        lambda: ALS(factors=4, iterations=3, solver="cholesky", random_state=None),
        "loss",
    ),
}


@pytest.mark.parametrize("name", sorted(NO_SEED))
def test_a_restart_from_scratch_redraws_the_same_start_without_a_random_state(
    client, planted, name
):
    make, key = NO_SEED[name]
    records: list[dict] = []

    def lose_a_worker_once(record):
        records.append(dict(record))
        if len(records) == 1:  # before the first checkpoint: the fit restarts from scratch
            raise WorkerLostError("a worker left (simulated)")

    model = make().fit(planted, callback=lose_a_worker_once)
    (recovery,) = model.metrics_["recoveries"]
    assert recovery["restarted_from"] == 0
    assert len(model.history_) == 3
    # The first iteration ran twice from the start: the same start gives the same record.
    assert records[1][key] == records[0][key]


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Modules imported when the module runs (not under ``if TYPE_CHECKING:``)."""
    out: list[str] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom):
            out.append(node.module or "")
        elif isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        out.extend(_runtime_imports(node))
    return out


FIT_ENGINE = ("trainer.py", "pipeline.py", "resilience.py", "checkpoint.py", "dsgd.py", "als.py")
"""The engine modules a fit runs through."""


def test_the_fit_engine_never_imports_a_model_and_models_never_open_a_session():
    for path in (ROOT / "engine" / name for name in FIT_ENGINE):
        imports = _runtime_imports(ast.parse(path.read_text()))
        assert not [m for m in imports if m.startswith("mfdask.models")], path
    for path in (ROOT / "models").glob("*.py"):
        assert "session(" not in path.read_text(), path


def test_a_diverged_fit_raises_model_fit_error_naming_the_cause(client, planted):
    model = BPR(factors=4, epochs=3, learning_rate=1e30, n_threads=1, random_state=0)
    with pytest.raises(ModelFitError, match=r"BPR diverged in epoch 1 .*lower learning_rate"):
        model.fit(planted)
    assert issubclass(ModelFitError, FloatingPointError)
    assert issubclass(ModelFitError, MfdaskError)


def test_svd_divergence_is_caught_at_the_first_bad_epoch(client, planted):
    model = SVD(factors=4, epochs=5, learning_rate=1e6, n_threads=1, early_stopping_rounds=None)
    with pytest.raises(FloatingPointError, match="SVD diverged in epoch 1"):
        model.fit(planted)
