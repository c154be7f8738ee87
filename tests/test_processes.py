"""The real-process topology itself: scheduler + workers start, run work, and all stop."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client

from mfdask.engine.blocks import persist_partitions, place_row_blocks
from mfdask.engine.cluster import ClusterError, ClusterSpec, session
from tests.processes import free_port, process_cluster

pytestmark = pytest.mark.distributed


def test_blocks_on_real_worker_processes(tmp_path):
    with process_cluster(tmp_path / "logs", n_workers=2) as cluster:
        with Client(cluster.address, set_as_default=False) as client:
            frame = pd.DataFrame(
                {
                    "user_idx": np.arange(40, dtype="int32") % 10,
                    "item_idx": np.arange(40, dtype="int32") // 10,
                    "rating": np.ones(40, dtype="float32"),
                }
            )
            parts = persist_partitions(client, dd.from_pandas(frame, npartitions=4))
            blocks = place_row_blocks(client, parts, 2, 10, 4)
            where = client.who_has(blocks)
            owners = {next(iter(where[b.key])) for b in blocks}
            assert len(owners) == 2, "one block per worker"
            assert sum(client.gather(b).nnz for b in blocks) == 40
        procs = [cluster.scheduler, *cluster.workers]
    assert all(p.poll() is not None for p in procs), "every process stopped"


def test_unreachable_scheduler_fails_fast_naming_it():
    import time

    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {address}"):
        with session(ClusterSpec(scheduler=address, timeout=3)):
            pass
    assert time.monotonic() - start < 10
