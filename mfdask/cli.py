"""The ``mfdask`` command line: one sub-command per batch job in :mod:`mfdask.jobs`.

Each job module provides ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; the same module runs standalone as ``python -m jobs.NAME`` from a
checkout (``jobs/NAME.py`` is its entry script) or ``python -m mfdask.jobs.NAME``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, str] = {
    "fetch": "mfdask.jobs.fetch",
    "ingest": "mfdask.jobs.ingest",
    "split": "mfdask.jobs.split",
    "synth": "mfdask.jobs.synth",
    "prepare": "mfdask.jobs.prepare",
    "train": "mfdask.jobs.train",
    "tune": "mfdask.jobs.tune",
    "recommend": "mfdask.jobs.recommend",
    "similar": "mfdask.jobs.similar",
    "evaluate": "mfdask.jobs.evaluate",
    "demo": "mfdask.jobs.demo",
}
"""Sub-command name -> job module. A module that is not there yet is left out of ``--help``."""


def build_parser() -> argparse.ArgumentParser:
    from mfdask import __version__

    parser = argparse.ArgumentParser(
        prog="mfdask",
        description="Matrix-factorization recommenders (SVD, ALS, BPR, WARP) as Dask batch jobs.",
    )
    parser.add_argument("--version", action="version", version=f"mfdask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _prog=f"mfdask {name}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mfdask`` console script."""
    from mfdask.jobs._common import run_job

    parser = build_parser()
    args = parser.parse_args(argv)
    return run_job(args._run, args, args._prog)


if __name__ == "__main__":
    sys.exit(main())
