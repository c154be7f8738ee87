"""mfdask.tune on ML-1M against fixed defaults and implicit's ALS, side by side.

Protocol (bench_als's): ML-1M, positives are ratings >= 4, per user 20 % of the
positives held out as the test part (``user_holdout``, seed 0), 64 factors; NDCG@10 and
precision@10 over the users with a held-out item, every training rating filtered, all
models scored by the same metric code. ``tune`` sees the training part only: it carves
its own validation part from it (20 % of each user's positives again, other keys) and
scores every trial there; the winner is then refitted on the whole training part and
scored once on the test part. The peers run in the same process on the same split:
implicit's ALS with its defaults and with the settings bench_als's validation grid
found (λ = 50, α = 5), Spark MLlib's ALS defaults in mfdask's Spark form
(``SPARK_DEFAULTS``: the same model, pyspark is not a dependency), and mfdask's ALS with
its defaults.

It prints each row's NDCG@10 as a ratio to the best peer's (``vs_best_peer``; with
``--no-peers``, to ``BEST_PEER_NDCG``) and writes every trial's per-iteration validation
curve next to the trials.

Run: ``MFDASK_DATA=/work/shared/data python -m benchmarks.bench_tune [--trials 24] [--seed S]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_als import (
    DEFAULT_IMPLICIT,
    FACTORS,
    K,
    Problem,
    holdout,
    load_ml1m,
    run_implicit,
    score,
)
from benchmarks.common import print_table, require_movielens, write_results

BEST_PEER_NDCG = 0.3875
"""implicit's tuned ALS (``DEFAULT_IMPLICIT``) on this split, the best peer when the
peers run: the reference of ``--no-peers`` runs."""

SPARK_DEFAULTS: dict[str, Any] = {
    "regularization": 0.1,
    "alpha": 1.0,
    "iterations": 10,
    "solver": "cholesky",
    "confidence": "paper",
    "regularization_scaling": "count",
    "regularization_exponent": 1.0,
    "preference": "rating",
    "random_state": 0,
}


def run_model(problem: Problem, model: Any) -> tuple[Any, dict[str, float], float]:
    """Fit an mfdask model on the training part; its test metrics and fit seconds."""
    started = time.perf_counter()
    model.fit(problem.parquet())
    seconds = time.perf_counter() - started
    users = problem.user_of_idx.loc[problem.users].to_numpy()
    recs = model.recommend(users, n=K)
    idx_of_item = pd.Series(problem.item_of_idx.index, index=problem.item_of_idx.to_numpy())
    ranked = np.full((len(users), K), -1, np.int64)
    row = pd.Series(np.arange(len(users)), index=users).loc[recs.user_id].to_numpy()
    ranked[row, recs["rank"].to_numpy() - 1] = idx_of_item.loc[recs.item_id].to_numpy()
    return model, score(ranked, problem.relevant, problem.users), seconds


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    import mfdask
    from mfdask import ALS, BPR, SVD, WARP

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--model", default="als", choices=["als", "bpr", "warp"])
    parser.add_argument("--iterations", type=int, default=None, help="the budget per trial")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workers-per-trial", type=int, default=None)
    parser.add_argument("--no-peers", action="store_true", help="skip implicit's runs")
    parser.add_argument(
        "--seed", type=int, default=0, help="tune's random_state (sampler and validation carve)"
    )
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    root = require_movielens("ml-1m")
    ratings, _ = load_ml1m(root)
    shape = (int(ratings.user_idx.max()) + 1, int(ratings.item_idx.max()) + 1)
    train, test = holdout(ratings, seed=0)
    problem = Problem(train, test, shape)
    cls = {"als": ALS, "bpr": BPR, "warp": WARP, "svd": SVD}[args.model]
    budget = (
        {}
        if args.iterations is None
        else {"iterations" if args.model == "als" else "epochs": args.iterations}
    )
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    cluster = LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster, set_as_default=True)
    try:
        if not args.no_peers and args.model == "als":
            for name, params in (
                ("implicit ALS, defaults", {"regularization": 0.01, "alpha": 1.0}),
                ("implicit ALS, tuned (bench_als grid)", DEFAULT_IMPLICIT),
            ):
                _, metrics, seconds = run_implicit(problem, **params)
                rows.append({"model": name, **metrics, "seconds": seconds, "params": params})
            # Spark MLlib's ALS(implicitPrefs=True) at its defaults, as mfdask's Spark form
            # (pyspark is not a dependency): regParam 0.1 scaled by the row's count,
            # alpha 1 on the raw ratings >= 4, maxIter 10, exact solves.
            _, metrics, seconds = run_model(problem, ALS(factors=FACTORS, **SPARK_DEFAULTS))
            rows.append(
                {
                    "model": "Spark MLlib ALS defaults (mfdask's Spark form)",
                    **metrics,
                    "seconds": seconds,
                    "params": SPARK_DEFAULTS,
                }
            )
        _, metrics, seconds = run_model(problem, cls(factors=FACTORS, random_state=0))
        rows.append({"model": f"mfdask {args.model}, defaults", **metrics, "seconds": seconds})
        started = time.perf_counter()
        result = mfdask.tune(
            cls(factors=FACTORS, random_state=0, **budget),
            problem.parquet(),
            n_trials=args.trials,
            workers_per_trial=args.workers_per_trial,
            random_state=args.seed,
            show_progress=True,
        )
        tune_seconds = time.perf_counter() - started
        print(result.summary())
        print(result.trials.drop(columns=["error"]).to_string())
        curves = {
            t.number: [t.intermediate_values[i] for i in sorted(t.intermediate_values)]
            for t in result.study.trials
        }
        best = cls(factors=FACTORS, random_state=0, **{**budget, **result.best_params})
        _, metrics, seconds = run_model(problem, best)
        rows.append(
            {
                "model": f"mfdask {args.model}, tuned ({args.trials} trials)",
                **metrics,
                "seconds": seconds,
                "params": result.best_params,
            }
        )
    finally:
        client.close()
        cluster.close()
    load_after = os.getloadavg()
    trials = result.trials
    peers = [r for r in rows if not str(r["model"]).startswith("mfdask")]
    if peers:
        best_peer = max(peers, key=lambda r: r["ndcg@10"])
        peer_name, peer_ndcg = str(best_peer["model"]), float(best_peer["ndcg@10"])
    else:
        peer_name, peer_ndcg = "implicit ALS, tuned (earlier run)", BEST_PEER_NDCG
    for r in rows:
        r["vs_best_peer"] = float(r["ndcg@10"]) / peer_ndcg
    summary = {
        "tune_seconds": tune_seconds,
        "validation_ndcg": result.best_score,
        "trial_seconds_median": float(trials["seconds"].median()),
        "states": trials["state"].value_counts().to_dict(),
        "concurrency": result.concurrency,
        "seed": args.seed,
        "best_peer": peer_name,
        "best_peer_ndcg": peer_ndcg,
        "tuned_vs_best_peer": rows[-1]["vs_best_peer"],
        "defaults_vs_best_peer": next(
            r["vs_best_peer"]
            for r in rows
            if str(r["model"]).endswith("defaults") and str(r["model"]).startswith("mfdask")
        ),
        "load_before": load_before,
        "load_after": load_after,
    }
    table = print_table(
        [{k: v for k, v in r.items() if k != "params"} for r in rows],
        f"ML-1M user_holdout 0.2 seed 0, {FACTORS} factors; load {load_before} -> {load_after}",
    )
    print(summary)
    print(
        f"tuned / best peer ({peer_name}, NDCG@10 {peer_ndcg:.4f}): "
        f"{summary['tuned_vs_best_peer']:.3f}x; defaults: {summary['defaults_vs_best_peer']:.3f}x"
    )
    out = write_results(
        f"tune_{args.model}" + (f"_seed{args.seed}" if args.seed else ""),
        {
            "rows": rows,
            "summary": summary,
            "trials": trials.to_dict("records"),
            "curves": curves,
            "table": table,
        },
    )
    result.plot(out.with_suffix(".png"))
    print("wrote", out)


if __name__ == "__main__":
    main()
