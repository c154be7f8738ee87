"""Fit every model in fixed settings and save its factors and metrics, to compare two checkouts.

Run it once per checkout (``PYTHONPATH=<checkout>``) with a different output file, then
``--compare a.npz b.npz``: factors must be ``np.array_equal`` (one thread per worker, a
fixed ``random_state``; ALS and SGD are reproducible there) and metrics equal.

Scenarios cover what the fit loop does: plain epochs (look-ahead and fused epochs),
validation with early stopping, frequent checkpoints (lineage cuts), SVD's bold driver,
WARP with Adagrad and SGD, ALS with CG and Cholesky. ``--ml1m`` fits the defaults on a
90/10 random split of MovieLens 1M (``$MFDASK_DATA/ml-1m``) and reports test metrics.

    PYTHONPATH=/tmp/base python benchmarks/compare_fits.py --out /tmp/base.npz [--ml1m]
    python benchmarks/compare_fits.py --out /tmp/new.npz [--ml1m]
    python benchmarks/compare_fits.py --compare /tmp/base.npz /tmp/new.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("MFDASK_NO_PROGRESS", "1")


def planted(n_users=400, n_items=300, rank=4, density=0.08, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1 / np.sqrt(rank), (n_users, rank))
    q = rng.normal(0, 1, (n_items, rank))
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    r = np.clip(3.0 + (p[u] * q[i]).sum(1) + rng.normal(0, 0.3, len(u)), 1, 5)
    return pd.DataFrame({"user_id": u + 1000, "item_id": i + 5000, "rating": r.astype("f4")})


def split(frame: pd.DataFrame, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    test = np.random.default_rng(seed).random(len(frame)) < 0.1
    return frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True)


def scenarios():
    from mfdask import ALS, BPR, SVD, WARP

    one = {"random_state": 0, "n_threads": 1}
    return {
        "svd": (SVD, {"factors": 8, "epochs": 8, **one}, False),
        "svd_bold_val": (
            SVD,
            {"factors": 8, "epochs": 12, "learning_rate_schedule": "bold_driver", **one},
            True,
        ),
        "svd_ckpt_val": (
            SVD,
            {
                "factors": 8,
                "epochs": 30,
                "checkpoint_every": 2,
                "learning_rate_schedule": "constant",
                "early_stopping_rounds": 2,
                **one,
            },
            True,
        ),
        "bpr": (BPR, {"factors": 8, "epochs": 8, **one}, False),
        "bpr_val_ckpt": (
            BPR,
            {"factors": 8, "epochs": 8, "checkpoint_every": 3, "early_stopping_rounds": 2, **one},
            True,
        ),
        "warp": (WARP, {"factors": 8, "epochs": 6, **one}, False),
        "warp_sgd_val": (
            WARP,
            {
                "factors": 8,
                "epochs": 6,
                "optimizer": "sgd",
                "learning_rate": 0.05,
                "learning_rate_decay": 0.5,
                **one,
            },
            True,
        ),
        "als": (ALS, {"factors": 8, "iterations": 5, **one}, False),
        "als_chol_val": (
            ALS,
            {
                "factors": 8,
                "iterations": 6,
                "solver": "cholesky",
                "checkpoint_every": 2,
                "early_stopping_rounds": 2,
                **one,
            },
            True,
        ),
    }


def metrics(model, test) -> dict[str, float]:
    from mfdask.evaluate import evaluate

    out = evaluate(model, test, k=10)
    keys = ("rmse", "mae") if not model.implicit else ("precision", "ndcg", "map", "auc")
    return {k: float(out[k]) for k in keys if k in out}


def run(out: Path, ml1m: bool, only: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    from mfdask import ALS, BPR, SVD, WARP

    warnings.simplefilter("ignore")
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    )
    client = Client(cluster, set_as_default=True)
    arrays: dict[str, np.ndarray] = {}
    report: dict[str, dict] = {}
    try:
        train, test = split(planted())
        jobs = [
            (name, cls, params, train, test if val else None, test)
            for name, (cls, params, val) in scenarios().items()
        ]
        if ml1m:
            root = Path(os.environ.get("MFDASK_DATA", "/work/shared/data")) / "ml-1m"
            frame = pd.read_csv(
                root / "ratings.dat",
                sep="::",
                engine="python",
                names=["user_id", "item_id", "rating", "timestamp"],
            )
            frame["rating"] = frame["rating"].astype("f4")
            mtrain, mtest = split(frame[["user_id", "item_id", "rating"]], seed=42)
            for cls in (SVD, ALS, BPR, WARP):
                jobs.append(
                    (
                        f"ml1m_{cls.__name__.lower()}",
                        cls,
                        {"random_state": 0, "n_threads": 1},
                        mtrain,
                        None,
                        mtest,
                    )
                )
        for name, cls, params, tr, val, te in jobs:
            if only and name not in only:
                continue
            started = time.perf_counter()
            model = cls(**params).fit(tr, validation=val)
            seconds = time.perf_counter() - started
            for attr in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
                value = getattr(model, attr, None)
                if value is not None:
                    arrays[f"{name}/{attr}"] = np.asarray(value)
            report[name] = {
                "metrics": metrics(model, te),
                "runs": len(model.history_),
                "seconds": round(seconds, 2),
            }
            print(name, json.dumps(report[name]), flush=True)
    finally:
        client.close()
        cluster.close()
    np.savez(out, **arrays, _report=np.array(json.dumps(report)))


def compare(a: Path, b: Path) -> int:
    x, y = np.load(a), np.load(b)
    bad = 0
    for key in sorted(set(x.files) | set(y.files)):
        if key == "_report":
            continue
        same = key in x.files and key in y.files and np.array_equal(x[key], y[key])
        bad += not same
        print(f"{'equal' if same else 'DIFFERENT':9s} {key}")
    ra, rb = json.loads(str(x["_report"])), json.loads(str(y["_report"]))
    for name in sorted(set(ra) | set(rb)):
        ma, mb = ra.get(name, {}).get("metrics"), rb.get(name, {}).get("metrics")
        same = ma == mb and ra.get(name, {}).get("runs") == rb.get(name, {}).get("runs")
        bad += not same
        a, b = ra.get(name, {}), rb.get(name, {})
        print(
            f"{'equal' if same else 'DIFFERENT':9s} {name}: {ma} runs {a.get('runs')} "
            f"({a.get('seconds')} s) vs {mb} runs {b.get('runs')} ({b.get('seconds')} s)"
        )
    print("all equal" if not bad else f"{bad} difference(s)")
    return int(bad > 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ml1m", action="store_true")
    parser.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    run(args.out, args.ml1m, args.only)
