"""A lost result whose task is pinned to the departed worker raises instead of hanging."""

from __future__ import annotations

import os
import signal
import time

import pytest
from distributed import Client, LocalCluster

from mfdask.engine.resilience import WorkerLostError, collect


def _plus_one(x: int) -> int:
    return x + 1


@pytest.mark.distributed
def test_a_dependency_pinned_to_a_departed_worker_is_reported_not_waited_for():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        a, b = sorted(client.nthreads())
        first = client.submit(_plus_one, 1, workers=[a], allow_other_workers=False, pure=False)
        collect(client, [first], [a])
        pid = client.run(os.getpid, workers=[a])[a]
        os.kill(pid, signal.SIGKILL)  # the worker dies, its data with it
        deadline = time.monotonic() + 120
        while a in client.nthreads() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert a not in client.nthreads()
        second = client.submit(_plus_one, first, workers=[b], pure=False)
        started = time.monotonic()
        # Only b is watched: the stranded dependency, not a watched departure, is found.
        with pytest.raises(WorkerLostError, match="pinned"):
            collect(client, [second], [b])
        assert time.monotonic() - started < 60
