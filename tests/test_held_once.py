"""Large state kept on the workers is held once: one generation of factor blocks.

A fit whose state has no room for a second copy (``engine.cluster.room_for_copy``) keeps
no in-memory checkpoint of it and submits no iteration ahead, and nothing on the client
(a poll's timeout, a cache, a checkpoint's arrays) keeps an earlier iteration's blocks
alive: after each iteration the scheduler holds exactly the current blocks.
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
from dask.utils import key_split

import mfdask.engine.cluster as cluster_module
from mfdask import ALS
from mfdask.engine import resilience


def _ratings(n: int = 60_000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 20_000, n),
            "item_id": rng.integers(0, 800, n),
            "rating": 5.0,
        }
    )
    return frame.drop_duplicates(["user_id", "item_id"])


# A half-step solves in solve_block tasks, or in solve_broadcast tasks when its broadcast
# source is cheap enough to assemble in the solving task itself (mfdask.engine.als).
SOLVE_TASKS = {"solve_block", "solve_broadcast"}


def test_an_als_fit_without_room_for_copies_holds_one_generation(own_cluster, monkeypatch):
    local, client = own_cluster
    monkeypatch.setattr(cluster_module, "COPY_SHARE_OF_MEMORY", 1e-12)  # large, as it were
    monkeypatch.setattr(resilience, "POLL_SECONDS", 0.001)  # many timed-out polls
    counts: list[int] = []

    def record(_: dict) -> None:
        tasks = local.scheduler.tasks
        counts.append(
            sum(
                1
                for key, ts in tasks.items()
                if key_split(key) in SOLVE_TASKS and ts.state == "memory"
            )
        )

    with dask.config.set({"mfdask.state.keep": "workers"}), client.as_current():
        model = ALS(factors=4, iterations=5, n_blocks=4, calculate_training_loss=False)
        model.fit(_ratings(), callback=record)
    assert model.distributed
    assert counts == [8] * 5, counts  # 4 user + 4 item blocks, never an older one
