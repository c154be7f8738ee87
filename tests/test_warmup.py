"""Kernels loaded from numba's cache on the workers before the first iteration needs them."""

from __future__ import annotations

import subprocess
import sys

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster

from mfdask.engine import warmup
from mfdask.kernels.topk import top_k_rows

FRESH_PROCESS = """
import json
from mfdask.engine import warmup
from mfdask.kernels import load_cached
from mfdask.kernels.topk import top_k_rows
assert warmup.start_loading() and not warmup.start_loading()
assert warmup.wait_loaded(timeout=300)
print(json.dumps({"loaded": load_cached(), "signatures": len(top_k_rows.signatures),
                  "misses": sum(top_k_rows.stats.cache_misses.values())}))
"""


def test_a_fresh_process_loads_what_the_cache_holds_without_compiling():
    scores = np.zeros((2, 3), np.float32)
    idx, val = np.empty((2, 1), np.int64), np.empty((2, 1), np.float32)
    top_k_rows(scores, 1, np.zeros(3, np.int64), np.empty(0, np.int64), idx, val)  # cached now
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, check=True
    )
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] > 0 and got["signatures"] >= 1 and got["misses"] == 0


def _has_plugin(dask_worker=None):
    return warmup.EXTENSION in dask_worker.plugins


@pytest.fixture
def fresh_client():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as c,
        Client(c, set_as_default=False) as client,
    ):
        yield client


def test_in_process_workers_are_left_alone(fresh_client):
    warmup.warm_workers(fresh_client)  # they share this process
    assert not any(fresh_client.run(_has_plugin).values())


def test_the_plugin_is_registered_once_a_client_and_can_be_turned_off(fresh_client, monkeypatch):
    monkeypatch.setattr(fresh_client.cluster, "processes", True)  # as if worker processes
    started = []
    # not loading here: this process's kernels stay as the other tests left them
    monkeypatch.setattr(warmup, "start_loading", lambda: started.append(1) or True)
    with dask.config.set({"mfdask.kernels.warm-up": False}):
        warmup.warm_workers(fresh_client)
    assert not any(fresh_client.run(_has_plugin).values())
    warmup.warm_workers(fresh_client)
    assert all(fresh_client.run(_has_plugin).values()) and started == [1]
    warmup.warm_workers(fresh_client)  # a no-op the second time
    assert started == [1]
