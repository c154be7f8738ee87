"""The numba kernels loaded on every worker before the first iteration needs them.

Every kernel is ``@njit(cache=True)``: its machine code is compiled once per machine and
written next to the module (``mfdask/kernels/__pycache__``, or numba's user cache when
the package is not writable, or ``NUMBA_CACHE_DIR`` when set: a directory every worker
process of a machine reads). Loading that code still costs a fresh process about a
second the first time (numba sets up LLVM), then milliseconds per kernel; left to the
first iteration, a fit on a new cluster paid it inside iteration 1 (2.7 s against 0.05 s
for the others on a small ALS fit).

:func:`warm_workers` registers :class:`KernelWarmupPlugin` once per client: on every
worker, now and joining later, a daemon thread imports the kernel modules and loads every
signature their on-disk cache holds (:func:`mfdask.kernels.load_cached`), while the
fit reads and places its ratings. A task calling a kernel that is still loading simply
waits for numba's compiler lock; nothing is compiled that the cache does not hold.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import dask
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

EXTENSION = "mfdask-kernel-warmup"

_started = threading.Event()
_done = threading.Event()
_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _load() -> None:
    from mfdask.kernels import load_cached

    try:
        load_cached()
    except Exception:  # best effort: the first call of a kernel loads it as before
        pass
    finally:
        _done.set()


def start_loading() -> bool:
    """Start loading the cached kernels in a daemon thread of this process (once).

    Returns False when an earlier call already started it.
    """
    if _started.is_set():
        return False
    _started.set()
    threading.Thread(target=_load, name="mfdask-kernel-warmup", daemon=True).start()
    return True


def wait_loaded(timeout: float | None = None) -> bool:
    """Wait for this process's loading (started by :func:`start_loading`) to finish."""
    return _done.wait(timeout)


class KernelWarmupPlugin(WorkerPlugin):
    """Starts :func:`start_loading` on each worker as it is set up."""

    idempotent = True
    name = EXTENSION

    def setup(self, worker: Any) -> None:
        start_loading()


def warm_workers(client: Client) -> None:
    """Have every worker of ``client``'s cluster load the cached kernels (once a client).

    Off with the Dask config value ``mfdask.kernels.warm-up: false`` (kernels then load
    at their first call, inside the first iteration), and for an in-process
    ``LocalCluster`` (``processes=False``, as in tests): its workers share the caller's
    process, whose kernels are loaded as the caller uses them.
    """
    if client in _clients or not dask.config.get("mfdask.kernels.warm-up", True):
        return
    if getattr(client.cluster, "processes", True) is False:
        return
    client.register_plugin(KernelWarmupPlugin(), name=EXTENSION)
    _clients.add(client)


def warm_current_client() -> None:
    """:func:`warm_workers` on the caller's default client, if there is one (a fit calls it
    first, so the kernels load while the ids are read, too)."""
    from mfdask.engine.cluster import _current_client

    client = _current_client()
    if client is not None:
        warm_workers(client)
