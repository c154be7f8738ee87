"""The wheel installs ``mfdask`` only; ``jobs/`` of a checkout holds entry scripts, not code."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

from mfdask.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_top_level_is_mfdask_only(tmp_path):
    # hatchling is the build backend (and in the `test` extra): build in process, no network.
    from hatchling.builders.wheel import WheelBuilder

    (wheel,) = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1, sorted(top)
    assert top - dist_info == {"mfdask"}, f"the wheel installs more than mfdask: {sorted(top)}"
    # The jobs travel inside the package, so ``mfdask NAME`` works from an installed wheel.
    for module in COMMANDS.values():
        path = module.replace(".", "/") + ".py"
        assert (ROOT / path).exists() == (path in names), path


def test_commands_dispatch_to_mfdask_jobs():
    bad = {name: module for name, module in COMMANDS.items() if not module.startswith("mfdask.")}
    assert not bad, f"sub-commands must live under mfdask.jobs (the wheel has no `jobs`): {bad}"


def test_checkout_jobs_are_entry_scripts():
    """Each ``jobs/NAME.py`` imports ``main`` from ``mfdask.jobs.NAME`` and nothing else."""
    scripts = sorted(p for p in (ROOT / "jobs").glob("*.py") if p.name != "__init__.py")
    assert scripts
    for path in scripts:
        tree = ast.parse(path.read_text())
        imports = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module is not None
        }
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        message = (
            f"{path.relative_to(ROOT)}: a job lives in mfdask/jobs/{path.name}; the file in "
            f"jobs/ only does `from mfdask.jobs.{path.stem} import main` and calls it"
        )
        assert f"mfdask.jobs.{path.stem}" in imports, message
        assert not defs, message
        assert (ROOT / "mfdask" / "jobs" / path.name).exists(), message
