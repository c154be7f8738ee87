"""Connect to a Dask cluster, or start a ``LocalCluster`` when none is given.

Every entry point goes through :func:`session`: with an address it connects to that
scheduler (failing within ``timeout`` seconds with the address in the message); with a
default client already registered (``Client(...)`` in the caller) it uses that; otherwise
it starts a ``LocalCluster`` for the duration of the block and shuts it down afterwards.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed import Client, LocalCluster, default_client

from mfdask.errors import ClusterError


@dataclass(frozen=True)
class ClusterSpec:
    """How to reach or build the cluster a job runs on.

    Attributes
    ----------
    scheduler : str or None
        ``tcp://host:port`` of a running scheduler; None starts a ``LocalCluster``.
    n_workers : int or None
        Workers of the ``LocalCluster`` (default: min(2, CPUs)).
    threads_per_worker : int
        Threads per ``LocalCluster`` worker; Hogwild SGD runs this many threads.
    memory_limit : str or None
        Per-worker memory limit of the ``LocalCluster`` (e.g. ``"4GiB"``).
    timeout : float
        Seconds to wait for a remote scheduler before giving up.
    processes : bool
        False runs the ``LocalCluster`` in-process (threads), as tests do.
    """

    scheduler: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | None = None
    timeout: float = 5.0
    processes: bool = True


def _current_client() -> Client | None:
    try:
        return default_client()
    except ValueError:
        return None


def current_client() -> Client:
    """The caller's default client; :class:`ClusterError` when there is none.

    For objects that keep data on a cluster across calls (they cannot start a
    ``LocalCluster`` of their own that would end with the call, as :func:`session` does).
    """
    client = _current_client()
    if client is None:
        raise ClusterError(
            "no Dask client is running: create one (distributed.Client(...)) or call "
            "this from within a fit"
        )
    return client


def connect(address: str, timeout: float = 5.0) -> Client:
    """Connect to the scheduler at ``address`` or raise :class:`ClusterError` in ``timeout`` s."""
    try:
        return Client(address, timeout=timeout, set_as_default=True)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s: {exc}. "
            "Check the address and that `dask scheduler` is running, or omit --scheduler "
            "to start a local cluster"
        ) from exc


def start_local(spec: ClusterSpec) -> Client:
    """Start a ``LocalCluster`` per ``spec`` and return a client registered as default."""
    n_workers = spec.n_workers or max(1, min(2, os.cpu_count() or 1))
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=spec.threads_per_worker,
        memory_limit=spec.memory_limit or "auto",
        processes=spec.processes,
        dashboard_address=":0" if spec.processes else None,
    )
    return Client(cluster, set_as_default=True)


_TRANSIENT: set[int] = set()
"""Clients of a ``LocalCluster`` that :func:`session` started, unasked, for one call."""


def is_transient(client: Client) -> bool:
    """Whether ``client``'s cluster ends with the call that started it.

    True inside ``session()`` called without a spec and without a default client (a fit
    or ``recommend_all`` with no cluster around it); a job's session (with a spec) lives
    as long as the job. State kept on a transient cluster would vanish with it, so fits
    on it gather their factors to the client.
    """
    return id(client) in _TRANSIENT


@contextmanager
def session(spec: ClusterSpec | None = None) -> Iterator[Client]:
    """Yield a client: the given scheduler, the caller's default client, or a new local one.

    A cluster started here is closed on exit; a client the caller made is left alone.
    """
    implicit = spec is None
    spec = spec or ClusterSpec()
    if spec.scheduler:
        client = connect(spec.scheduler, spec.timeout)
        try:
            yield client
        finally:
            client.close()
        return
    existing = _current_client()
    if existing is not None:
        yield existing
        return
    client = start_local(spec)
    if implicit:
        _TRANSIENT.add(id(client))
    try:
        yield client
    finally:
        cluster = client.cluster
        _TRANSIENT.discard(id(client))
        client.close()
        if cluster is not None:
            cluster.close()


_WORKER_GROUP: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "mfdask_worker_group", default=None
)


@contextmanager
def worker_group(addresses: Iterable[str]) -> Iterator[None]:
    """Place the blocks of what runs in this context (thread) on these workers only.

    :func:`worker_addresses` then lists only the live workers of the group, so a fit
    started here puts one block on each of them (``n_blocks=None``) and pins its tasks
    there: several fits can share one cluster side by side (the tuner's concurrent
    trials), each on its own group of workers.
    """
    token = _WORKER_GROUP.set(frozenset(addresses))
    try:
        yield
    finally:
        _WORKER_GROUP.reset(token)


def live_workers(client: Client) -> list[str]:
    """Every worker of the cluster, sorted, whatever :func:`worker_group` is in force."""
    workers = sorted(client.nthreads())
    if not workers:
        raise ClusterError("the Dask cluster has no workers: start at least one `dask worker`")
    return workers


def worker_capacity(client: Client) -> tuple[int | None, int]:
    """``(memory_limit, threads)``: the smallest memory limit of the workers (bytes; None
    when none has one) and the most threads any of them runs.

    Asked of the scheduler, over the workers :func:`worker_addresses` lists. What block
    sizes are chosen from: a worker holds one new block per thread next to its share of
    a side's factors.
    """
    workers = set(worker_addresses(client))

    def capacity(dask_scheduler: Any) -> list[tuple[int, int]]:
        return [
            (int(ws.memory_limit or 0), int(ws.nthreads))
            for address, ws in dask_scheduler.workers.items()
            if address in workers
        ]

    rows = client.run_on_scheduler(capacity) or [(0, 1)]
    limits = [m for m, _ in rows if m > 0]
    return (min(limits) if limits else None), max(max(t for _, t in rows), 1)


COPY_SHARE_OF_MEMORY = 1 / 8
"""State kept on the workers is held twice (an in-memory checkpoint's copies, an iteration
submitted ahead while the previous one's blocks are kept) only when one more copy takes
at most this share of the smallest worker memory limit, per worker."""


def room_for_copy(client: Client, nbytes: int) -> bool:
    """Whether the workers can hold one more copy of ``nbytes`` of state spread over them.

    A second copy doubles what each worker holds for that state. When the state is most
    of a worker's memory (20M users at 64 factors on 2 workers of 6 GiB: 2.4 GiB each),
    the copy would take the workers past Dask's spill threshold; callers then keep one
    copy and give up what the second bought (a restart point in memory, overlap).
    """
    n_workers = len(worker_addresses(client))
    limit, _ = worker_capacity(client)
    if limit is None:
        return True
    return nbytes / max(1, n_workers) <= limit * COPY_SHARE_OF_MEMORY


def worker_addresses(client: Client) -> list[str]:
    """Addresses of the workers, sorted so block placement is deterministic.

    Asked of the scheduler each time (``Client.nthreads``): ``Client.scheduler_info``
    returns an identity that the client's periodic refresh may overwrite, between the
    fetch and the read, with one listing no workers. Inside :func:`worker_group`, only
    the group's live workers.
    """
    workers = live_workers(client)
    group = _WORKER_GROUP.get()
    if group is not None:
        workers = [w for w in workers if w in group]
        if not workers:
            raise ClusterError(
                f"none of the {len(group)} worker(s) of this worker group is alive: "
                "the group's workers left the cluster"
            )
    return workers


def wait_for(client: Client, futures: list) -> None:
    """Block until ``futures`` finish, on ``client`` even when it is not the default client."""
    from distributed import wait

    with client.as_current():
        wait(futures)
