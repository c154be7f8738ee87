"""Fits that survive a lost worker and fail fast on a lost scheduler.

Two things go wrong on a real cluster while a fit iterates:

- **A worker dies** (a killed container, an OOM kill, a lost machine). Its rating blocks
  and the factor blocks it held are gone, and the tasks pinned to it can never run: Dask
  would wait for that worker forever. :func:`gather` therefore polls while it waits and
  raises :class:`WorkerLostError` as soon as a worker holding blocks of the fit has left,
  or when Dask reports the loss itself (``KilledWorker``, cancelled futures, closed
  comms). :func:`run_fit` catches it, places the ratings again on the workers that remain
  (or on a worker a nanny restarted) by reading the input again, puts back the state of
  the last checkpoint and replays the iterations since. Because every random stream is
  derived from ``(random_state, epoch, block)`` and the number of blocks is kept, the
  replay computes the same floats the lost iterations did: the recovered model is the
  model of an undisturbed fit (bitwise for ALS and for SGD with one thread per worker).
- **The scheduler dies**. Nothing can be recovered in the driver; every wait raises
  :class:`SchedulerLostError` at once (the client's futures are cancelled when the
  connection drops; Dask's own reconnect would block for 30 s) with the last checkpoint
  named, so that the job can be resumed on a restarted cluster.

:func:`run_fit` is also where checkpoints are taken (every ``checkpoint_every``
iterations and at the end) and where lineage is cut: after a checkpoint the engine is
re-seeded from the concrete arrays, so the scheduler holds a bounded task graph however
long the fit runs (the "StackOverflowError after many ALS iterations" that Spark users
meet without checkpointing).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from distributed import Client, Future, wait
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker

from mfdask.engine.checkpoint import Checkpoint, FitCheckpoints
from mfdask.errors import ClusterFailure, RecoveryError, SchedulerLostError, WorkerLostError

log = logging.getLogger("mfdask")

POLL_SECONDS = 0.5
"""How often a waiting driver checks that the workers it needs are still there."""

WORKER_WAIT_SECONDS = 30.0
"""How long a recovery waits for at least one worker (a nanny restarting a killed one)."""


DISTRIBUTED_ERRORS: tuple[type[BaseException], ...] = (
    KilledWorker,
    concurrent.futures.CancelledError,  # FutureCancelledError, FuturesCancelledError
    CommClosedError,
)
"""What Dask raises when a worker (or the scheduler) disappears under a computation."""

CLIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, *DISTRIBUTED_ERRORS)
"""What a call to the scheduler raises when the cluster is going away."""


def _address(client: Client) -> str:
    return str(getattr(client.scheduler, "address", None) or "the scheduler")


def check_scheduler(client: Client) -> None:
    """Raise :class:`SchedulerLostError` unless the client is connected."""
    if client.status != "running":
        raise SchedulerLostError(
            f"lost the connection to the Dask scheduler at {_address(client)} "
            f"(client status {client.status!r})"
        )


def _classify(client: Client, exc: BaseException) -> ClusterFailure:
    if client.status != "running":
        return SchedulerLostError(
            f"lost the connection to the Dask scheduler at {_address(client)}: "
            f"{type(exc).__name__}: {exc}"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return WorkerLostError(f"a worker was lost: {type(exc).__name__}: {first[:200]}")


def collect(client: Client, futures: Sequence[Future], workers: Iterable[str | None]) -> None:
    """Wait for ``futures``; raise a :class:`ClusterFailure` instead of hanging.

    Parameters
    ----------
    workers
        Addresses the futures' tasks are pinned to. If one of them leaves the cluster
        while we wait, :class:`WorkerLostError` is raised (its tasks could never run).
    """
    watched = {w for w in workers if w}
    futures = list(futures)
    while True:
        check_scheduler(client)
        try:
            with client.as_current():
                wait(futures, timeout=POLL_SECONDS)
            break
        except TimeoutError as exc:
            # The timeout's traceback holds the frames of Dask's wait, which hold the
            # futures, in a reference cycle (through the frame that stored the error):
            # kept until the garbage collector runs, each poll would keep the blocks it
            # waited for alive, a whole iteration's factors after a few polls.
            exc.__traceback__ = None
        except DISTRIBUTED_ERRORS as exc:
            raise _classify(client, exc) from exc
        check_scheduler(client)
        try:
            present = set(client.nthreads())
        except CLIENT_ERRORS as exc:
            raise _classify(client, exc) from exc
        gone = sorted(watched - present)
        if gone:
            raise WorkerLostError(f"worker(s) {gone} left the cluster while the fit needed them")
        stranded = stranded_tasks(client, [f.key for f in futures])
        if stranded:
            raise WorkerLostError(
                f"task(s) {stranded} must run again on a worker that left the cluster (their "
                "results were lost with it, and they are pinned there)"
            )
    for f in futures:
        if f.status == "error":
            try:
                f.result()
            except DISTRIBUTED_ERRORS as exc:
                raise _classify(client, exc) from exc
        elif f.status != "finished":
            raise _classify(client, RuntimeError(f"task {f.key} ended {f.status!r}"))


def _stranded_on_scheduler(
    keys: list[Any], dask_scheduler: Any = None, limit: int = 5
) -> list[str]:
    """Tasks that ``keys`` wait on which can never run: pinned, without loose
    restrictions, to workers of which none is left (runs on the scheduler)."""
    present = set(dask_scheduler.workers)
    present |= {ws.name for ws in dask_scheduler.workers.values()}
    present |= {str(ws.name) for ws in dask_scheduler.workers.values()}
    stuck = {
        ts.key
        for ts in list(dask_scheduler.unrunnable)
        if ts.worker_restrictions
        and not ts.loose_restrictions
        and not set(ts.worker_restrictions) & present
    }
    if not stuck:
        return []
    found: list[str] = []
    seen: set[Any] = set()
    stack = [dask_scheduler.tasks[k] for k in keys if k in dask_scheduler.tasks]
    while stack and len(found) < limit:
        ts = stack.pop()
        if ts.key in seen or ts.state == "memory":
            continue
        seen.add(ts.key)
        if ts.key in stuck:
            found.append(str(ts.key))
        stack.extend(ts.dependencies)
    return found


def stranded_tasks(client: Client, keys: list[Any]) -> list[str]:
    """Keys among ``keys`` and their unfinished dependencies that wait for a departed
    worker they are pinned to.

    A result lost with its worker is computed again by the scheduler, but a task pinned
    to that worker (``allow_other_workers=False``, as block tasks are) waits for it
    forever: without this check a fit would hang instead of recovering.
    """
    try:
        return list(client.run_on_scheduler(_stranded_on_scheduler, keys))
    except CLIENT_ERRORS as exc:
        raise _classify(client, exc) from exc


def gather(client: Client, futures: Sequence[Future], workers: Iterable[str | None]) -> list[Any]:
    """:func:`collect` then ``client.gather``: results, or a :class:`ClusterFailure`."""
    futures = list(futures)
    collect(client, futures, workers)
    try:
        return client.gather(futures)
    except DISTRIBUTED_ERRORS as exc:
        raise _classify(client, exc) from exc


def wait_for_workers(client: Client, timeout: float = WORKER_WAIT_SECONDS) -> list[str]:
    """The current workers, waiting up to ``timeout`` s for one if none is left."""
    check_scheduler(client)
    if not client.nthreads():
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as exc:
            raise RecoveryError(
                f"no worker is left on the cluster at {_address(client)} and none joined "
                f"within {timeout:g} s: start workers, then resume from the last checkpoint"
            ) from exc
    return sorted(client.nthreads())


Arrays = dict[str, np.ndarray]


def run_fit(
    client: Client,
    n_iterations: int,
    step: Callable[[int], bool],
    capture: Callable[[], tuple[Arrays, dict[str, Any]]],
    restore: Callable[[Checkpoint | None], None],
    reseed: Callable[[Arrays], None],
    rebuild: Callable[[], None],
    checkpoints: FitCheckpoints,
    start: Checkpoint | None,
    max_recoveries: int = 3,
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Run iterations ``start.iteration .. n_iterations - 1`` with checkpoints and recovery.

    Parameters
    ----------
    client
        The fit's client (to check on the cluster while recovering).
    step
        ``step(i)`` runs iteration ``i`` (0-based) on the engine and records it; it
        returns False to stop early (a callback, early stopping).
    capture
        The fit's state after the last completed iteration: named arrays (factors,
        biases, best-so-far factors) and a JSON-serialisable dict (history, learning
        rates, best score...). Gathers from the workers.
    restore
        Make the engine and the model hold a checkpoint's state (None: the initial state).
    reseed
        Place the given arrays on the engine as fresh blocks (cuts the lineage).
    rebuild
        Place the ratings again on the current workers after a worker was lost.
    checkpoints
        Where checkpoints go (disk with ``checkpoint_dir``, else memory only).
    start
        The checkpoint to resume from, or None to start from scratch.
    max_recoveries
        Worker losses tolerated; one more raises :class:`RecoveryError`.

    Returns
    -------
    final : Checkpoint
        The state at the end of the fit (also saved to disk when checkpointing).
    recoveries : list of dict
        One record per recovered worker loss: ``failed_at`` (iteration), ``restarted_from``,
        ``seconds`` (to rebuild and restore), ``error``.
    """
    restore(start)
    done = start is not None and bool(start.state.get("finished"))
    iteration = start.iteration if start is not None else 0
    recoveries: list[dict[str, Any]] = []
    final: Checkpoint | None = start if done else None
    while final is None:
        try:
            keep_going = True
            while keep_going and iteration < n_iterations:
                keep_going = step(iteration) is not False
                iteration += 1
                last = not keep_going or iteration >= n_iterations
                if last or checkpoints.due(iteration):
                    arrays, state = capture()
                    saved = checkpoints.save(iteration, arrays, {**state, "finished": last})
                    if last:
                        final = saved
                    else:
                        reseed(saved.arrays)  # lineage cut: start again from concrete arrays
                        # Held here, this iteration's blocks would stay alive next to the
                        # next iteration's until its checkpoint: twice the state.
                        del arrays, saved
            if final is None:  # zero iterations left (resumed at the end without a flag)
                arrays, state = capture()
                final = checkpoints.save(iteration, arrays, {**state, "finished": True})
        except SchedulerLostError as exc:
            raise SchedulerLostError(f"{exc}; {checkpoints.describe_resume()}") from exc
        except WorkerLostError as exc:
            if len(recoveries) >= max_recoveries:
                raise RecoveryError(
                    f"gave up after {max_recoveries} recoveries from lost workers "
                    f"(last: {exc}); {checkpoints.describe_resume()}"
                ) from exc
            started = time.perf_counter()
            failed_at = iteration
            point = checkpoints.recovery_point()
            log.warning(
                "%s during iteration %d; placing the ratings again on the remaining workers "
                "and restarting from %s (recovery %d of at most %d)",
                exc,
                failed_at + 1,
                f"the checkpoint after iteration {point.iteration}" if point else "the start",
                len(recoveries) + 1,
                max_recoveries,
            )
            try:
                workers = wait_for_workers(client)
                rebuild()
                restore(point)
            except SchedulerLostError as lost:
                raise SchedulerLostError(f"{lost}; {checkpoints.describe_resume()}") from lost
            except WorkerLostError as again:  # lost another one while rebuilding
                recoveries.append(
                    {"failed_at": failed_at, "restarted_from": None, "error": str(again)}
                )
                continue
            iteration = point.iteration if point is not None else 0
            recoveries.append(
                {
                    "failed_at": failed_at + 1,
                    "restarted_from": iteration,
                    "workers": len(workers),
                    "seconds": time.perf_counter() - started,
                    "error": str(exc),
                }
            )
            log.warning(
                "recovered on %d worker(s) in %.1f s; replaying from iteration %d",
                len(workers),
                recoveries[-1]["seconds"],
                iteration + 1,
            )
    return final, recoveries
