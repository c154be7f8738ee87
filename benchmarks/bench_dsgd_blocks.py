"""DSGD with more blocks than workers against one block per worker, side by side.

With ``n_blocks`` a multiple of the workers (set by a user, or left by a recovery onto
fewer workers) every worker holds several user blocks. This measures what that costs:
BPR (and SVD) on MovieLens on one 2-worker ``LocalCluster`` (processes, one thread
each), ``n_blocks`` = 2, 4 and 8, the same epochs, runs interleaved and repeated
(``--repeats``) so that the load of the machine falls on every setting alike. Reported
per setting: the median fit time and time per epoch (``history_[e]["seconds"]``), their
ratio to ``n_blocks=2``, the objective of the last epoch, and which path ran
(``exchanges_directly``: item blocks handed worker to worker; else one scheduler task per
cell).

Run: ``MFDASK_DATA=/work/shared/data python -m benchmarks.bench_dsgd_blocks
[--data ml-1m] [--blocks 2,4,8] [--epochs 10] [--repeats 3] [--models bpr,svd]``;
``--scheduled`` also runs the per-cell scheduler path (the Dask config
``mfdask.dsgd.direct-exchange: False``) for comparison.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MFDASK_NO_PROGRESS", "1")

import argparse
import statistics
import sys
import time
from typing import Any

import dask
import pandas as pd

from benchmarks.common import print_table, require_movielens, write_results


def load(name: str) -> pd.DataFrame:
    root = require_movielens(name)
    if name == "ml-100k":
        return pd.read_csv(
            root / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
        )[["user_id", "item_id", "rating"]]
    from benchmarks.bench_als import load_ml1m

    return load_ml1m(root)[0][["user_id", "item_id", "rating"]]


def make(model: str, blocks: int, epochs: int):
    from mfdask import BPR, SVD, WARP

    cls = {"bpr": BPR, "warp": WARP, "svd": SVD}[model]
    kw: dict[str, Any] = {"factors": 64, "epochs": epochs, "random_state": 0, "n_blocks": blocks}
    if model == "svd":
        kw["early_stopping_rounds"] = None
    return cls(**kw)


def fit_once(frame: pd.DataFrame, model: str, blocks: int, epochs: int, scheduled: bool):
    m = make(model, blocks, epochs)
    with dask.config.set({"mfdask.dsgd.direct-exchange": not scheduled}):
        started = time.perf_counter()
        m.fit(frame)
        seconds = time.perf_counter() - started
    per_epoch = [r["seconds"] for r in m.history_]
    last = m.history_[-1]
    return {
        "fit s": seconds,
        "epoch s": statistics.median(per_epoch),
        "objective": last.get("objective", last.get("train_rmse", float("nan"))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-1m", choices=["ml-1m", "ml-100k"])
    parser.add_argument("--blocks", default="2,4,8")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="bpr")
    parser.add_argument("--scheduled", action="store_true")
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    frame = load(args.data)
    blocks = [int(b) for b in args.blocks.split(",")]
    settings = [(m, b, False) for m in args.models.split(",") for b in blocks]
    if args.scheduled:
        settings += [(m, b, True) for m in args.models.split(",") for b in blocks if b > 2]
    load_before = os.getloadavg()
    runs: dict[tuple, list[dict[str, float]]] = {s: [] for s in settings}
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster):
            for model in args.models.split(","):  # numba loads its cache on each worker
                fit_once(frame, model, 2, 1, False)
            for _ in range(args.repeats):
                for s in settings:
                    runs[s].append(fit_once(frame, s[0], s[1], args.epochs, s[2]))
    load_after = os.getloadavg()
    rows = []
    for (model, b, scheduled), got in runs.items():
        fit_s = statistics.median(r["fit s"] for r in got)
        epoch_s = statistics.median(r["epoch s"] for r in got)
        base = runs[(model, 2, False)]
        rows.append(
            {
                "model": model,
                "n_blocks": b,
                "direct-exchange": "off" if scheduled else "on",
                "fit s": round(fit_s, 2),
                "epoch s": round(epoch_s, 3),
                "fit / n_blocks=2": round(fit_s / statistics.median(r["fit s"] for r in base), 2),
                "epoch / n_blocks=2": round(
                    epoch_s / statistics.median(r["epoch s"] for r in base), 2
                ),
                "objective": round(got[-1]["objective"], 4),
            }
        )
    title = (
        f"DSGD blocks on 2 workers: {args.data}, {args.epochs} epochs, 64 factors, "
        f"median of {args.repeats}; load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print_table(rows, title)
    write_results(
        "dsgd_blocks", {"args": vars(args), "load": [load_before, load_after], "rows": rows}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
