"""The command line: every sub-command has --help, and both entry forms agree."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from mfdask.cli import COMMANDS, build_parser, main


def _available() -> list[str]:
    out = []
    for name, module in COMMANDS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        out.append(name)
    return out


def test_version(capsys):
    from mfdask import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("name", _available())
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0
    assert f"mfdask {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", _available()[:1])
def test_job_module_runs_standalone(name):
    proc = subprocess.run(
        [sys.executable, "-m", COMMANDS[name], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"python -m {COMMANDS[name]}" in proc.stdout


@pytest.mark.parametrize("name", _available()[:1])
def test_checkout_entry_script_runs(name):
    """``python -m jobs.NAME`` from the top of a checkout runs the job in ``mfdask.jobs``."""
    proc = subprocess.run(
        [sys.executable, "-m", f"jobs.{name}", "--help"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"python -m jobs.{name}" in proc.stdout


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
