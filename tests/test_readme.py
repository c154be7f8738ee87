"""The README's two commands stay true: CI runs exactly the documented test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S)
    assert block, "README has a Quick start bash block"
    return [ln for ln in block.group(1).splitlines() if ln and not ln.startswith("#")]


def test_readme_has_the_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("mfdask demo")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci
