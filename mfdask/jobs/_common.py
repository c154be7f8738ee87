"""What every job shares: cluster flags, error reporting, the standalone ``main``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from mfdask.engine.cluster import ClusterSpec
from mfdask.errors import JobError as JobError
from mfdask.errors import MfdaskError

log = logging.getLogger("mfdask")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scheduler`` for a running cluster, or the shape of the LocalCluster to start."""
    g = parser.add_argument_group("cluster")
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler (tcp://host:8786); default: start a LocalCluster",
    )
    g.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default 2)")
    g.add_argument(
        "--threads-per-worker", type=int, default=1, help="LocalCluster threads per worker"
    )
    g.add_argument("--memory-limit", default=None, help="LocalCluster memory per worker, e.g. 4GiB")
    g.add_argument(
        "--scheduler-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for --scheduler before failing",
    )


def cluster_spec(args: argparse.Namespace) -> ClusterSpec:
    return ClusterSpec(
        scheduler=getattr(args, "scheduler", None),
        n_workers=getattr(args, "workers", None),
        threads_per_worker=getattr(args, "threads_per_worker", 1) or 1,
        memory_limit=getattr(args, "memory_limit", None),
        timeout=getattr(args, "scheduler_timeout", 10.0),
    )


def print_dashboard(client) -> None:
    """Tell the user where to watch the job."""
    link = getattr(client, "dashboard_link", None)
    if link:
        print(f"Dask dashboard: {link}", file=sys.stderr)


def run_job(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run a job; expected failures print one clear line and exit with status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(run(args) or 0)
    except (MfdaskError, ValueError, KeyError, OSError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def standalone_main(module: ModuleType, argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.NAME`` or ``python -m mfdask.jobs.NAME``: the arguments of ``mfdask NAME``.

    ``module`` is the job module; its ``main`` calls this, and so does the ``jobs/NAME.py``
    entry script of a checkout, through that ``main``.
    """
    # Under ``python -m mfdask.jobs.NAME`` the module is ``__main__``; its spec keeps the real name.
    spec = getattr(module, "__spec__", None)
    name = (spec.name if spec is not None else module.__name__).rsplit(".", 1)[-1]
    # Name the program the way it was started: ``jobs.NAME`` or ``mfdask.jobs.NAME``.
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    started = main_spec.name if main_spec is not None else None
    if started not in (f"jobs.{name}", f"mfdask.jobs.{name}"):
        started = f"jobs.{name}"
    parser = argparse.ArgumentParser(
        prog=f"python -m {started}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    return run_job(module.run, args, f"mfdask {name}")
