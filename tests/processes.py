"""Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1, for topology tests.

The same topology as docker-compose.yml (one scheduler, N workers, a job submitted to
the scheduler's address), with processes instead of containers. Every process started here
is stopped (its whole process group) when the context exits, pass or fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Client

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ProcessCluster:
    """Handles on a scheduler and its workers running as separate processes."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` (and its nanny's children): a lost machine."""
        proc = self.workers[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def kill_scheduler(self) -> None:
        os.killpg(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait(timeout=10)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@contextmanager
def process_cluster(
    log_dir: Path,
    n_workers: int = 2,
    nthreads: int = 1,
    memory_limit: str = "4GiB",
    timeout: float = 60.0,
) -> Iterator[ProcessCluster]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on loopback."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    scheduler = _spawn(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        log_dir / "scheduler.log",
    )
    cluster = ProcessCluster(address=address, scheduler=scheduler, log_dir=log_dir)
    try:
        for w in range(n_workers):
            cluster.workers.append(
                _spawn(
                    [
                        DASK,
                        "worker",
                        address,
                        "--nthreads",
                        str(nthreads),
                        "--nworkers",
                        "1",
                        "--memory-limit",
                        memory_limit,
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        "--name",
                        f"worker-{w}",
                    ],
                    log_dir / f"worker-{w}.log",
                )
            )
        deadline = time.monotonic() + timeout
        client = None
        while client is None:
            try:
                client = Client(address, timeout=5, set_as_default=False)
            except OSError:
                if time.monotonic() > deadline or scheduler.poll() is not None:
                    raise RuntimeError(
                        f"scheduler at {address} did not start: "
                        f"{(log_dir / 'scheduler.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.3)
        try:
            client.wait_for_workers(n_workers, timeout=max(1.0, deadline - time.monotonic()))
        finally:
            client.close()
        yield cluster
    finally:
        for proc in [*cluster.workers, scheduler]:
            _stop(proc)
