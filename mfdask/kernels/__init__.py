"""Numba kernels: every hot loop of mfdask, arrays in and arrays out.

Kernels are ``@njit(nogil=True, cache=True)``: they release the GIL so a worker's
threads can run them side by side, and they are compiled once per machine and loaded
from the on-disk cache by every process after that. Nothing here imports Dask, pandas
or the engine, validates input or logs.
"""

from __future__ import annotations

import importlib
import pkgutil

_SKIP = frozenset({"synth", "parse"})
"""Kernel modules no fit runs (data generation and ingest): not loaded ahead."""


def load_cached() -> int:
    """Import the kernel modules and load every signature their on-disk cache holds.

    What a fit would do on its first call of each kernel, done ahead of time (by
    :mod:`mfdask.engine.warmup`, in a worker thread while the ratings are placed).
    Signatures that are not in the cache are left to the first call; nothing is
    compiled here. Best effort: numba's cache index is read through its internals, and
    anything unexpected just ends the loading. Returns the signatures loaded.
    """
    from numba.core.registry import CPUDispatcher

    loaded = 0
    for info in pkgutil.iter_modules(__path__):
        if info.name in _SKIP:
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception:  # left to the fit that imports it, with its own error
            continue
        for value in list(vars(module).values()):
            if not isinstance(value, CPUDispatcher) or value.__module__ != module.__name__:
                continue
            try:
                index = value._cache._cache_file._load_index()  # type: ignore[attr-defined]
                for key in index:
                    value.compile(key[0])
                    loaded += 1
            except Exception:  # a cache we cannot read: the first call loads it
                continue
    return loaded
