"""Fold-in of unseen users and incremental updates on ML-1M, each beside a full fit.

Fold-in (``--part foldin``). The implicit split of the project (``user_holdout``: 20 % of
each user's positives to test, seed 0). 10 % of the users with a test item (seed 1) are
*held out of the fit*: model A is fitted on the whole training part, model B on it minus
those users' rows. The held-out users are then folded into B from their training rows
(``recommend(users, history=their train rows)``, items B never saw skipped and counted)
and their NDCG@10 / P@10 on their test items is compared with A's for the same users
(A filters their training items the same way). SVD is scored by RMSE on a random 90/10
split instead (10 % of the users held out alike; A and B predict those users' test
ratings, B from folded-in factors and bias).

Update (``--part update``). From the same training part, 10 % of the ratings (seed 2)
are removed to make the "old" data; a model fitted on it is updated with
``partial_fit(old frame + those ratings appended, iterations=3)`` and compared, on the
test part, with a full refit on the same frame (default iterations / epochs) from
scratch: NDCG@10 ratio
and time ratio (SVD: RMSE on a random 90/10 split, ratio refit / update), each arm the
mean over ``--seeds`` random states (default 3).

All fits run on one 2-worker ``LocalCluster`` (processes, one thread each); fits and
fold-ins of one comparison run back to back in the same process.

Run: ``MFDASK_DATA=/work/shared/data python -m benchmarks foldin
[--part foldin|update] [--models als,bpr,warp,svd] [--update-models als,bpr] [--seeds 3]
[--compare-placement]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.common import print_table, require_movielens, write_results
from mfdask.data.split import assign_test
from mfdask.metrics.ranking import ranking_metrics

K = 10
HOLD_USERS = 0.10
ADD_RATINGS = 0.10
UPDATE_ITERATIONS = 3


def load(root) -> pd.DataFrame:
    ratings = pd.read_csv(
        root / "ratings.dat",
        sep="::",
        engine="python",
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    ratings["rating"] = ratings.rating.astype("float32")
    return ratings


def split(frame: pd.DataFrame, method: str, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    user = pd.factorize(frame.user_id, sort=True)[0]
    item = pd.factorize(frame.item_id, sort=True)[0]
    test = assign_test(
        user,
        item,
        frame.rating.to_numpy(),
        frame.timestamp.to_numpy(),
        method=method,
        fraction=fraction,
        seed=0,
    )
    return frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True)


def ndcg(recs: pd.DataFrame, test: pd.DataFrame, users: np.ndarray) -> dict[str, float]:
    """P@10 / NDCG@10 of ``recs`` (user_id, rank, item_id) on ``test`` for ``users``."""
    items = pd.Index(np.unique(np.concatenate([test.item_id, recs.item_id])))
    row = pd.Index(users)
    relevant = sp.csr_matrix(
        (np.ones(len(test)), (row.get_indexer(test.user_id), items.get_indexer(test.item_id))),
        shape=(len(users), len(items)),
    )
    ranked = np.full((len(users), K), -1, np.int64)
    ranked[row.get_indexer(recs.user_id), recs["rank"].to_numpy() - 1] = items.get_indexer(
        recs.item_id
    )
    out = ranking_metrics(ranked, relevant, k=K)
    return {"ndcg@10": out["ndcg"], "precision@10": out["precision"]}


def make(name: str):
    from mfdask import ALS, BPR, SVD, WARP

    return {
        "als": lambda: ALS(factors=64, iterations=15, random_state=0),
        "bpr": lambda: BPR(factors=64, random_state=0),
        "warp": lambda: WARP(factors=64, random_state=0),
        "svd": lambda: SVD(factors=64, random_state=0),
    }[name]()


def held_users(test: pd.DataFrame, seed: int = 1) -> np.ndarray:
    users = np.unique(test.user_id)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, round(HOLD_USERS * len(users)), replace=False))


def fold_in_ranking(name: str, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    users = held_users(test)
    in_fit = ~train.user_id.isin(users)
    history = train[~in_fit]
    mine = test[test.user_id.isin(users)]
    started = time.perf_counter()
    full = make(name).fit(train)
    full_s = time.perf_counter() - started
    started = time.perf_counter()
    part = make(name).fit(train[in_fit])
    part_s = time.perf_counter() - started
    seen = full.recommend(users, n=K)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folded = part.recommend(users, n=K, history=history, unknown_items="skip")
    fold_s = time.perf_counter() - started
    a, b = ndcg(seen, mine, users), ndcg(folded, mine, users)
    return {
        "model": name,
        "held_users": len(users),
        "ndcg@10 fit saw them": a["ndcg@10"],
        "ndcg@10 folded in": b["ndcg@10"],
        "ratio": b["ndcg@10"] / a["ndcg@10"],
        "p@10 fit saw them": a["precision@10"],
        "p@10 folded in": b["precision@10"],
        "history rows skipped": int(folded.attrs.get("skipped", 0)),
        "warnings": len(caught),
        "fit s (A)": full_s,
        "fit s (B)": part_s,
        "fold-in s": fold_s,
    }


def fold_in_rmse(frame: pd.DataFrame) -> dict[str, Any]:
    train, test = split(frame, "random", 0.1)
    users = held_users(test)
    in_fit = ~train.user_id.isin(users)
    mine = test[test.user_id.isin(users)]
    full = make("svd").fit(train)
    part = make("svd").fit(train[in_fit])
    started = time.perf_counter()
    folded = part.fold_in_users(train[~in_fit], unknown_items="skip")
    fold_s = time.perf_counter() - started
    vec = folded.set_index("user_id")
    known = mine[mine.item_id.isin(part.item_ids_)]
    i = part.item_index(known.item_id)
    p = np.stack(vec.factors.loc[known.user_id].to_numpy())
    pred = (
        part.global_mean_
        + vec.bias.loc[known.user_id].to_numpy()
        + part.item_bias_[i]
        + (p * part.item_factors_[i]).sum(1)
    )
    pred = np.clip(pred, *part.rating_range_)
    r = known.rating.to_numpy()
    rmse_b = float(np.sqrt(np.mean((pred - r) ** 2)))
    rmse_a = float(np.sqrt(np.mean((full.predict(known) - r) ** 2)))
    return {
        "model": "svd",
        "held_users": len(users),
        "rmse fit saw them": rmse_a,
        "rmse folded in": rmse_b,
        "ratio": rmse_b / rmse_a,
        "test ratings scored": len(known),
        "fold-in s": fold_s,
    }


def update(
    name: str, train: pd.DataFrame, test: pd.DataFrame, seeds: int = 1, compare: bool = False
) -> dict[str, Any]:
    """partial_fit on the training part from a fit on 90 % of it, against a refit.

    Ranking models are scored by NDCG@10 on ``test``, SVD by RMSE (where lower is better,
    so its quality ratio is refit / partial_fit: above 1 when the update is better).
    With ``seeds > 1`` both arms are repeated with ``random_state = 0 .. seeds - 1``
    (the refits differ by about as much as the margin asked of the update, 0.3 % for ALS)
    and the means compared; times are summed, and each seed's update / refit time ratio
    is reported with their median (the pair of a seed runs back to back, so it shares
    the machine's load). With ``compare`` each seed also times a ``partial_fit`` of a
    model fitted without keeping its placed blocks (Dask config
    ``mfdask.partial-fit.keep-blocks: false``), which places all the ratings again: the
    update as it was before the added ratings alone were placed, in the same run.
    """
    import dask

    rng = np.random.default_rng(2)
    new = rng.random(len(train)) < ADD_RATINGS
    old = train[~new].reset_index(drop=True)
    # The updated frame is the old one with the added ratings appended (as an update is
    # usually made); the row order changes neither the refit nor the update.
    train = pd.concat([old, train[new]], ignore_index=True)
    users = np.unique(test.user_id)

    def quality(model) -> float:
        if name == "svd":
            error = model.predict(test, unknown="baseline") - test.rating.to_numpy()
            return float(np.sqrt(np.mean(error**2)))
        return ndcg(model.recommend(users, n=K), test, users)["ndcg@10"]

    updated, fresh, update_times, refit_times, placed = [], [], [], [], []
    all_times: list[float] = []
    same: list[bool] = []
    for seed in range(seeds):
        model = make(name).set_params(random_state=seed).fit(old)
        started = time.perf_counter()
        model.partial_fit(train, iterations=UPDATE_ITERATIONS)
        update_times.append(time.perf_counter() - started)
        placed.append(model.metrics_["updates"][-1]["placed"])
        updated.append(quality(model))
        started = time.perf_counter()
        refit = make(name).set_params(random_state=seed).fit(train)
        refit_times.append(time.perf_counter() - started)
        fresh.append(quality(refit))
        del refit
        if compare:
            with dask.config.set({"mfdask.partial-fit.keep-blocks": False}):
                again = make(name).set_params(random_state=seed).fit(old)
            started = time.perf_counter()
            again.partial_fit(train, iterations=UPDATE_ITERATIONS)
            all_times.append(time.perf_counter() - started)
            same.append(bool(np.allclose(again.item_factors_, model.item_factors_, atol=1e-5)))
            del again
    update_s, refit_s = sum(update_times), sum(refit_times)
    metric = "rmse" if name == "svd" else "ndcg@10"
    a, b = float(np.mean(updated)), float(np.mean(fresh))
    placing_all: dict[str, Any] = {}
    if compare:
        ratios = np.array(all_times) / np.array(refit_times)
        placing_all = {
            "placing all: partial_fit s per seed": [round(t, 2) for t in all_times],
            "placing all: time ratio per seed": [round(float(r), 3) for r in ratios],
            "placing all: median time ratio": float(np.median(ratios)),
            "placing all: same item factors": all(same),
        }
    return {
        "model": name,
        "seeds": seeds,
        "added ratings": int(new.sum()),
        f"{metric} refit": b,
        f"{metric} partial_fit": a,
        "quality ratio": b / a if name == "svd" else a / b,
        "per seed": [
            round(y / x if name == "svd" else x / y, 4) for x, y in zip(updated, fresh, strict=True)
        ],
        "refit s": refit_s,
        "partial_fit s": update_s,
        "time ratio": update_s / refit_s,
        "time ratio per seed": [
            round(u / r, 3) for u, r in zip(update_times, refit_times, strict=True)
        ],
        "median time ratio": float(np.median(np.array(update_times) / np.array(refit_times))),
        "partial_fit s per seed": [round(u, 2) for u in update_times],
        "refit s per seed": [round(r, 2) for r in refit_times],
        "placed": ",".join(sorted(set(placed))),
        **placing_all,
        "load": round(os.getloadavg()[0], 1),
    }


def scale(train: pd.DataFrame, n_users: int, per_user: int) -> dict[str, Any]:
    """``recommend_history_all`` for ``n_users`` synthetic users from Parquet.

    Each user's history is ``per_user`` ML-1M items drawn by popularity, rated 4 or 5, in
    10 Parquet files of interleaved users (so the shuffle by user has work to do). Reports
    the wall time, users per second and the peak memory of this process and its workers.
    """
    import shutil
    import tempfile

    from benchmarks.common import peak_memory
    from mfdask.engine.foldin import recommend_history_all
    from mfdask.models.foldin import fold_in_spec

    model = make("als").fit(train)
    root = tempfile.mkdtemp(prefix="bench-foldin-")
    try:
        rng = np.random.default_rng(3)
        counts = train.item_id.value_counts()
        p = (counts / counts.sum()).to_numpy()
        hist = os.path.join(root, "history")
        os.mkdir(hist)
        n_files = 10
        for j in range(n_files):
            users = np.arange(j, n_users, n_files, dtype=np.int64) + 10_000_000
            items = counts.index.to_numpy()[rng.choice(len(p), (len(users), per_user), p=p)]
            pd.DataFrame(
                {
                    "user_id": np.repeat(users, per_user),
                    "item_id": items.ravel(),
                    "rating": rng.integers(4, 6, len(users) * per_user).astype("float32"),
                }
            ).sample(frac=1.0, random_state=j).to_parquet(f"{hist}/part-{j}.parquet")
        spec = fold_in_spec(model)
        with peak_memory() as mem:
            out = recommend_history_all(spec, hist, K, os.path.join(root, "recs"))
        m = out.manifest
        return {
            "users": m["users"],
            "history rows": n_users * per_user,
            "rows written": m["rows"],
            "files": m["n_blocks"],
            "seconds": out.seconds,
            "users/s": m["users"] / out.seconds,
            "peak RSS GiB (all processes)": mem.peak_gib,
            "client peak RSS GiB": mem.peak_by_pid.get(os.getpid(), 0) / 2**30,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["foldin", "update", "scale", "all"], default="all")
    parser.add_argument("--scale-users", type=int, default=1_000_000)
    parser.add_argument("--scale-items-per-user", type=int, default=10)
    parser.add_argument("--models", default="als,bpr,warp,svd", help="fold-in models")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per partial_fit arm")
    parser.add_argument("--update-models", default="als,bpr,warp,svd", help="partial_fit models")
    parser.add_argument(
        "--compare-placement",
        action="store_true",
        help="also time each partial_fit placing all the ratings again (no kept blocks)",
    )
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    root = require_movielens()
    frame = load(root)
    train, test = split(frame, "user_holdout", 0.2)
    test = test[test.rating >= 4]
    out: dict[str, Any] = {}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        if args.part in ("foldin", "all"):
            models = args.models.split(",")
            rows = [fold_in_ranking(m, train, test) for m in models if m != "svd"]
            print_table(rows, "fold-in of 10 % of the test users, against a fit that saw them")
            out["fold_in"] = rows
            if "svd" in models:
                svd = [fold_in_rmse(frame)]
                print_table(svd, "SVD fold-in (random 90/10 split), RMSE on the held users")
                out["fold_in_svd"] = svd
        if args.part in ("update", "all"):
            wanted = args.update_models.split(",")
            rows = [
                update(m, train, test, args.seeds, args.compare_placement)
                for m in wanted
                if m != "svd"
            ]
            title = "partial_fit (3 iterations) after 10 % more ratings vs a refit"
            if rows:
                print_table(rows, title)
            if "svd" in wanted:
                svd = update(
                    "svd", *split(frame, "random", 0.1), args.seeds, args.compare_placement
                )
                print_table([svd], title + " (SVD, RMSE on a random 90/10 split)")
                rows.append(svd)
            out["update"] = rows
        if args.part == "scale":
            out["scale"] = [scale(train, args.scale_users, args.scale_items_per_user)]
            print_table(out["scale"], "batch fold-in (recommend --history) of synthetic users")
    write_results("foldin", out)


if __name__ == "__main__":
    main()
