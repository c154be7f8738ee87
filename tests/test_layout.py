"""The layers hold: the engine takes arrays (no model import), evaluate.py schedules nothing."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mfdask"

SCHEDULING = {"submit", "scatter", "gather", "compute", "persist", "map"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "engine").glob("*.py")), ids=lambda p: p.name)
def test_the_engine_imports_no_model(path):
    assert [m for m in _imports(path) if m.startswith("mfdask.models")] == []


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_neither_engine_nor_models(path):
    bad = [m for m in _imports(path) if m.startswith(("mfdask.engine", "mfdask.models"))]
    assert bad == []


def test_evaluate_schedules_nothing():
    """Evaluation's Dask work is in mfdask.engine.evaluation; evaluate.py is the API."""
    tree = ast.parse((ROOT / "evaluate.py").read_text())
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SCHEDULING - {"map"}
    ]
    assert calls == []
    assert "distributed" not in " ".join(_imports(ROOT / "evaluate.py"))


def test_old_topk_entry_points_forward_with_a_warning(tmp_path):
    from mfdask.engine import topk

    calls = []

    class Stub:
        def recommend_all(self, n, path, **options):
            calls.append(("recommend_all", n, path, options))
            return "out"

        def similar_items_all(self, n, path, **options):
            calls.append(("similar_items_all", n, path, options))
            return "out"

    with pytest.warns(DeprecationWarning, match=r"model\.recommend_all"):
        assert topk.recommend_all(Stub(), 5, tmp_path / "r", users=[1]) == "out"
    with pytest.warns(DeprecationWarning, match=r"model\.similar_items_all"):
        assert topk.similar_items_all(Stub(), 3, tmp_path / "s") == "out"
    assert calls == [
        ("recommend_all", 5, tmp_path / "r", {"users": [1]}),
        ("similar_items_all", 3, tmp_path / "s", {}),
    ]


def test_fold_in_arrays_keep_their_old_import_path():
    from mfdask.engine import foldin as engine_foldin
    from mfdask.models import foldin as model_foldin

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("FoldIn", "History", "build_history", "top_k_block", "user_seeds"):
            assert getattr(model_foldin, name) is getattr(engine_foldin, name)
