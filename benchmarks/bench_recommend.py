"""Top-k for every user on a 2-worker LocalCluster: ML-1M speed, 1M x 50k memory.

``python -m benchmarks recommend`` (``MFDASK_DATA`` for the ML-1M part;
``MFDASK_BENCH_USERS`` / ``MFDASK_BENCH_ITEMS`` to change the large case, default
1,000,000 x 50,000).

1. ML-1M: all 6,040 users at n=10, seen items filtered, 64 factors, against the same
   call on the client alone (``model.recommend`` for every user) as a reference.
   The factors are random: top-k costs the same whatever their values.
2. Scale: 1M synthetic users x 50k items, 64 factors, 10 seen items per user, n=10,
   with the peak resident memory of each worker process sampled throughout. Memory per
   worker is one chunk of scores (``chunk_cells``) plus one block's results, so it stays
   flat as users grow; the client holds the model (the user factors and seen items).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.common import data_root, peak_memory, print_table, write_results
from mfdask.engine.cluster import ClusterSpec, start_local
from mfdask.models.base import FactorModel


class RandomFactors(FactorModel):
    """A fitted-looking model with random factors: top-k cost does not depend on values."""

    model_name = "random"

    def __init__(self, factors: int = 64, random_state: int = 0) -> None:
        self.factors = factors
        self.random_state = random_state

    @classmethod
    def build(
        cls, user_ids: np.ndarray, item_ids: np.ndarray, seen: sp.csr_matrix, factors: int = 64
    ) -> RandomFactors:
        model = cls(factors=factors)
        rng = np.random.default_rng(0)
        model.user_ids_ = pd.Index(user_ids, name="user_id")
        model.item_ids_ = pd.Index(item_ids, name="item_id")
        model.user_factors_ = rng.standard_normal((len(user_ids), factors), dtype=np.float32)
        model.item_factors_ = rng.standard_normal((len(item_ids), factors), dtype=np.float32)
        model.seen_items_ = seen
        model.items_ = None
        model.fingerprint_ = "random"
        model.history_ = []
        model.metrics_ = {}
        return model


def _ml1m_model(root: Path) -> RandomFactors:
    ratings = pd.read_csv(
        root / "ratings.dat",
        sep="::",
        engine="python",
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    users = np.sort(ratings["user_id"].unique())
    items = np.sort(ratings["item_id"].unique())
    u = np.searchsorted(users, ratings["user_id"].to_numpy())
    i = np.searchsorted(items, ratings["item_id"].to_numpy())
    seen = sp.csr_matrix((np.ones(len(u), bool), (u, i)), shape=(len(users), len(items)))
    return RandomFactors.build(users, items, seen)


def _synthetic_model(n_users: int, n_items: int, per_user: int = 10) -> RandomFactors:
    rng = np.random.default_rng(1)
    indptr = np.arange(0, (n_users + 1) * per_user, per_user, dtype=np.int64)
    indices = rng.integers(0, n_items, n_users * per_user).astype(np.int32)
    seen = sp.csr_matrix((np.ones(len(indices), bool), indices, indptr), shape=(n_users, n_items))
    seen.sum_duplicates()
    return RandomFactors.build(
        np.arange(1, n_users + 1, dtype=np.int64), np.arange(1, n_items + 1, dtype=np.int64), seen
    )


def main() -> None:
    results: dict = {}
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-recommend-"))
    client = start_local(ClusterSpec(n_workers=2, threads_per_worker=1, memory_limit="3GiB"))
    try:
        root = data_root()
        if root is not None and (root / "ml-1m" / "ratings.dat").exists():
            model = _ml1m_model(root / "ml-1m")
            model.recommend_all(n=10, path=tmp / "warmup", users=model.user_ids_[:50])
            start = time.perf_counter()
            out = model.recommend_all(n=10, path=tmp / "ml1m")
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            single = model.recommend(model.user_ids_, n=10)
            client_seconds = time.perf_counter() - start
            assert out.rows == len(single)
            rows.append(
                {
                    "case": "ML-1M 6,040 users x 3,706 items, n=10",
                    "workers": 2,
                    "seconds": seconds,
                    "client-only seconds": client_seconds,
                    "rows": out.rows,
                    "blocks": out.n_blocks,
                }
            )
            results["ml1m"] = rows[-1]
        else:
            print("ML-1M part skipped: set MFDASK_DATA to a folder holding ml-1m/")

        n_users = int(os.environ.get("MFDASK_BENCH_USERS", 1_000_000))
        n_items = int(os.environ.get("MFDASK_BENCH_ITEMS", 50_000))
        model = _synthetic_model(n_users, n_items)
        worker_pids = set(client.run(os.getpid).values())
        with peak_memory(interval=0.1) as mem:
            start = time.perf_counter()
            out = model.recommend_all(n=10, path=tmp / "scale")
            seconds = time.perf_counter() - start
        per_worker = [mem.peak_by_pid.get(pid, 0) / 2**20 for pid in sorted(worker_pids)]
        check = pd.read_parquet(
            tmp / "scale", filters=[("user_block", "==", 0)], columns=["user_id", "rank"]
        )
        rows.append(
            {
                "case": f"synthetic {n_users:,} users x {n_items:,} items, n=10",
                "workers": 2,
                "seconds": seconds,
                "client-only seconds": None,
                "rows": out.rows,
                "blocks": out.n_blocks,
            }
        )
        results["scale"] = {
            **rows[-1],
            "peak_rss_mib_per_worker": per_worker,
            "users_per_second": n_users / seconds,
            "block0_rows_read_back": len(check),
        }
        print_table(rows, "recommend_all on a 2-worker LocalCluster (64 factors)")
        print(
            "peak RSS per worker (MiB) during the scale run: "
            + ", ".join(f"{m:,.0f}" for m in per_worker)
        )
        write_results("recommend", results)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
