"""SVD on ML-1M against Surprise, and DSGD epoch throughput against the kernel alone.

``python -m benchmarks svd`` (``MFDASK_DATA`` for ML-1M; ``MFDASK_BENCH_SVD_SYNTH`` sets
the synthetic size, default 20,000,000 ratings; 0 skips it).

1. Quality: ML-1M, random 90/10 split (seed 0), ``SVD(factors=64)`` (one model of 64
   factors) and ``SVD()`` (the defaults: members of 64 factors side by side) with every
   other hyper-parameter at mfdask's default, fitted on a 2-worker ``LocalCluster`` (one
   thread each); test RMSE, wall time and its ratio to the 64-factor fit in the same
   run, next to Surprise's ``SVD`` at the same 64 factors, tuned as in its
   best known ML-1M setting (64 factors, 50 epochs, lr 0.005, reg 0.05) when
   ``scikit-surprise`` is installed. Test pairs whose user or item is not in the training
   split get the baseline ``mu + b_u + b_i`` in both libraries.
2. Throughput: ratings per second of one whole epoch inside the engine (all ``B``
   sub-epochs, scheduling and item-block transfers included; median of several epochs,
   each submitted before the previous one is collected and short ones fused, as the
   models run them; the epoch run one at a time is shown next to it) at 64 factors on
   the same cluster, next to the same numba kernel run alone in one thread of the
   client over the same ratings, and to the engine with item blocks handed over by the
   scheduler instead of worker to worker (``direct_exchange=False``). On ML-1M and on
   synthetic data.
"""

from __future__ import annotations

import os
import time

import dask.dataframe as dd
import numpy as np
import pandas as pd

from benchmarks.common import print_table, require_movielens, write_results
from mfdask import SVD
from mfdask.engine.cluster import ClusterSpec, start_local
from mfdask.engine.dsgd import DSGD
from mfdask.engine.pipeline import EpochPipeline
from mfdask.kernels.sgd import svd_sgd
from mfdask.models.svd import SVDStep

FACTORS = 64
EPOCHS = 5
"""Epochs timed inside the engine (the median of all but the first)."""


def load_ml1m() -> pd.DataFrame:
    path = require_movielens("ml-1m") / "ratings.dat"
    frame = pd.read_csv(
        path, sep="::", engine="python", names=["user_id", "item_id", "rating", "timestamp"]
    )
    frame["rating"] = frame["rating"].astype("float32")
    return frame[["user_id", "item_id", "rating"]]


def random_split(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    perm = np.random.default_rng(seed).permutation(len(frame))
    cut = int(0.9 * len(frame))
    return frame.iloc[perm[:cut]].reset_index(drop=True), frame.iloc[perm[cut:]]


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - truth) ** 2)))


def run_mfdask(train: pd.DataFrame, test: pd.DataFrame, factors: int | None = None) -> dict:
    """``SVD()`` (``factors=None``) or ``SVD(factors=factors)``, the rest at the defaults."""
    start = time.perf_counter()
    model = SVD() if factors is None else SVD(factors=factors)
    model.fit(dd.from_pandas(train, npartitions=4))
    seconds = time.perf_counter() - start
    pred = model.predict(test, unknown="baseline")
    k, members = int(model.factors), model._members
    shape = f"k={k}" if members == 1 else f"k={k} = {members} x {k // members}"
    return {
        "library": f"mfdask SVD ({'defaults, ' if factors is None else ''}{shape})",
        "test_rmse": rmse(pred, test.rating.to_numpy()),
        "fit_seconds": seconds,
        "epochs": model.metrics_["epochs_run"],
        "params": model.get_params(),
    }


def run_surprise(train: pd.DataFrame, test: pd.DataFrame) -> dict | None:
    try:
        from surprise import SVD as SurpriseSVD
        from surprise import Dataset, Reader
    except ImportError:
        print("scikit-surprise is not installed: `pip install scikit-surprise` to compare")
        return None
    data = Dataset.load_from_df(train, Reader(rating_scale=(1, 5)))
    start = time.perf_counter()
    trainset = data.build_full_trainset()
    algo = SurpriseSVD(n_factors=FACTORS, n_epochs=50, lr_all=0.005, reg_all=0.05, random_state=0)
    algo.fit(trainset)
    seconds = time.perf_counter() - start
    pred = np.array(
        [algo.predict(u, i).est for u, i in zip(test.user_id, test.item_id, strict=True)]
    )
    return {
        "library": "Surprise SVD (k=64, 50 ep, lr .005, reg .05)",
        "test_rmse": rmse(pred, test.rating.to_numpy()),
        "fit_seconds": seconds,
        "epochs": 50,
    }


def dense(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Dense ``user_idx, item_idx, rating`` (factorize ids) for driving the engine directly."""
    u, users = pd.factorize(frame.user_id)
    i, items = pd.factorize(frame.item_id)
    out = pd.DataFrame(
        {
            "user_idx": u.astype("int32"),
            "item_idx": i.astype("int32"),
            "rating": frame.rating.to_numpy("float32"),
        }
    )
    return out, len(users), len(items)


def synthetic(n_ratings: int, seed: int = 0) -> tuple[pd.DataFrame, int, int]:
    """Distinct (user, item) pairs with ratings 1..5, about 100 ratings per user."""
    rng = np.random.default_rng(seed)
    n_users = max(1000, n_ratings // 100)
    n_items = max(1000, min(100_000, n_ratings // 400))
    pairs = np.unique(rng.integers(0, n_users * n_items, int(n_ratings * 1.02), dtype=np.int64))
    pairs = rng.permutation(pairs)[:n_ratings]
    frame = pd.DataFrame(
        {
            "user_idx": (pairs // n_items).astype("int32"),
            "item_idx": (pairs % n_items).astype("int32"),
            "rating": rng.integers(1, 6, len(pairs)).astype("float32"),
        }
    )
    return frame, n_users, n_items


def throughput(client, name: str, frame: pd.DataFrame, n_users: int, n_items: int) -> dict:
    """Median epoch ratings/s inside the engine vs the kernel alone in one thread."""
    rng = np.random.default_rng(0)
    user = {
        "factors": rng.standard_normal((n_users, FACTORS), dtype=np.float32) * np.float32(0.1),
        "bias": np.zeros(n_users, np.float32),
    }
    item = {
        "factors": rng.standard_normal((n_items, FACTORS), dtype=np.float32) * np.float32(0.1),
        "bias": np.zeros(n_items, np.float32),
    }
    mu = float(frame.rating.mean())
    step = SVDStep(mu, 0.005, 0.005, 0.05, 0.05, 1.0, 5.0)
    nparts = max(2, len(frame) // 2_000_000)
    ratings = dd.from_pandas(frame, npartitions=nparts)
    seconds = {}
    for direct in (True, False):
        engine = DSGD(client, ratings, n_users, n_items, direct_exchange=direct)
        engine.set_state(user, item)
        # As the models run it: each epoch submitted before the last one is collected,
        # short epochs fused, so an epoch's wall time runs from one collect to the next
        # (a fused group's time shared among its epochs).
        pipeline = EpochPipeline(
            engine,
            lambda epochs, engine=engine: engine.submit_epochs(
                [step] * len(epochs), epochs.start, seed=0
            ),
            lambda e: e < EPOCHS,
            fuse=True,
        )
        epochs = [pipeline.run(e).seconds for e in range(EPOCHS)]
        # the first epoch includes loading compiled kernels: medians leave it out
        seconds[direct] = float(np.median(epochs[1:]))
        if direct:  # one at a time (submit, wait, collect): plus the client's round trip
            single = [engine.run_epoch(step, EPOCHS + e, seed=0).seconds for e in range(EPOCHS)]
            single_s = float(np.median(single[1:]))
        engine.close()
    engine_s = seconds[True]

    users = frame.user_idx.to_numpy()
    items = frame.item_idx.to_numpy()
    values = frame.rating.to_numpy()
    alone = []
    for e in range(3):
        p, q = user["factors"].copy(), item["factors"].copy()
        bu, bi = user["bias"].copy(), item["bias"].copy()
        start = time.perf_counter()
        svd_sgd(users, items, values, 0, len(values), e, p, q, bu, bi, mu, 0.005, 0.005, 0.05, 0.05)
        alone.append(time.perf_counter() - start)
    kernel_s = float(np.median(alone))
    n = len(frame)
    return {
        "data": name,
        "ratings": n,
        "engine_epoch_s": engine_s,
        "engine_Mratings_s": n / engine_s / 1e6,
        "one_at_a_time_epoch_s": single_s,
        "scheduled_hand_over_epoch_s": seconds[False],
        "direct_over_scheduled": seconds[False] / engine_s,
        "kernel_alone_s": kernel_s,
        "kernel_Mratings_s": n / kernel_s / 1e6,
        "engine_over_kernel": engine_s / kernel_s,
    }


def main() -> None:
    frame = load_ml1m()
    train, test = random_split(frame)
    client = start_local(ClusterSpec(n_workers=2, threads_per_worker=1))
    try:
        quality = [run_mfdask(train, test, FACTORS), run_mfdask(train, test)]
        for row in quality:
            row["fit_time_vs_k64"] = row["fit_seconds"] / quality[0]["fit_seconds"]
        peer = run_surprise(train, test)
        if peer:
            quality.append(peer)
        print_table(
            [{k: v for k, v in r.items() if k != "params"} for r in quality],
            "ML-1M explicit, random 90/10 split; Surprise at 64 factors",
        )
        speed = [throughput(client, "ML-1M train", *dense(train))]
        n_synth = int(os.environ.get("MFDASK_BENCH_SVD_SYNTH", 20_000_000))
        if n_synth:
            speed.append(throughput(client, f"synthetic {n_synth:,}", *synthetic(n_synth)))
        print_table(speed, "One epoch at 64 factors: 2-worker LocalCluster vs the kernel alone")
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    load = os.getloadavg()
    print(f"load average (1, 5, 15 min) at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    path = write_results(
        "svd", {"quality": quality, "throughput": speed, "load_average_at_end": load}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
