"""Shared fixtures: an in-process Dask client, real-data paths, small planted data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster


@pytest.fixture(scope="session")
def client():
    """An in-process scheduler with two single-threaded workers (the default for tests)."""
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    c = Client(cluster, set_as_default=True)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def own_cluster():
    """``(cluster, client)``: two in-process workers of one test's own, for a test that
    closes a worker or counts the scheduler's tasks (the shared ``client`` must not see it)."""
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    client = Client(cluster, set_as_default=False)
    yield cluster, client
    client.close()
    cluster.close()


def data_root() -> Path | None:
    """``$MFDASK_DATA`` when set and present (the MovieLens files), else None."""
    root = os.environ.get("MFDASK_DATA")
    return Path(root) if root and Path(root).is_dir() else None


@pytest.fixture(scope="session")
def ml_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("MFDASK_DATA is not set or missing: real-data tests skipped")
    return root


@pytest.fixture(scope="session")
def ml100k_dir(ml_data: Path) -> Path:
    path = ml_data / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"{path}/u.data is missing")
    return path


@pytest.fixture(scope="session")
def ml1m_dir(ml_data: Path) -> Path:
    path = ml_data / "ml-1m"
    if not (path / "ratings.dat").exists():
        pytest.skip(f"{path}/ratings.dat is missing")
    return path


def planted_ratings(
    n_users: int = 300,
    n_items: int = 200,
    rank: int = 4,
    density: float = 0.1,
    noise: float = 0.1,
    seed: int = 0,
) -> pd.DataFrame:
    """Ratings from a known rank-``rank`` model plus Gaussian noise (original ids offset)."""
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1 / np.sqrt(rank), (n_users, rank))
    q = rng.normal(0, 1, (n_items, rank))
    mask = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(mask)
    r = 3.0 + (p[u] * q[i]).sum(1) + rng.normal(0, noise, len(u))
    return pd.DataFrame({"user_id": u + 1000, "item_id": i + 5000, "rating": r.astype("float32")})


@pytest.fixture
def planted():
    return planted_ratings()
