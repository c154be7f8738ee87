"""A candidate set of defaults against today's, side by side on three MovieLens sets.

For ML-100K, ML-latest-small and ML-1M: the ``user_holdout`` split (20 % of each
user's positives, seed 0), then one fit per parameter set (seed 0, 64 factors unless
given) and its test NDCG@10 / precision@10 (bench_als's metric code). A default may
change only if the candidate, chosen on a validation split of ML-1M's training part (by
``mfdask.tune``, see bench_tune), is not worse on the other two sets.

Run: ``MFDASK_DATA=/work/shared/data python -m benchmarks.bench_defaults --model als
--candidate regularization=0.2,alpha=5``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.bench_als import Problem, holdout
from benchmarks.bench_tune import run_model
from benchmarks.common import data_root, print_table, write_results


def load(name: str, root: Path) -> pd.DataFrame:
    path = root / name
    if name == "ml-100k":
        frame = pd.read_csv(
            path / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
        )
    elif name == "ml-latest-small":
        frame = pd.read_csv(path / "ratings.csv").rename(
            columns={"userId": "user_id", "movieId": "item_id"}
        )
    else:
        frame = pd.read_csv(
            path / "ratings.dat",
            sep="::",
            engine="python",
            names=["user_id", "item_id", "rating", "timestamp"],
        )
    frame["user_idx"] = pd.factorize(frame.user_id, sort=True)[0].astype("int32")
    frame["item_idx"] = pd.factorize(frame.item_id, sort=True)[0].astype("int32")
    frame["rating"] = frame.rating.astype("float32")
    return frame


def parse(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    from mfdask.models.registry import model_class

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="als")
    parser.add_argument("--candidate", required=True, help="NAME=VALUE,... the new defaults")
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small,ml-1m")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    root = data_root()
    if root is None:
        raise SystemExit("skipped: set MFDASK_DATA")
    cls = model_class(args.model)
    candidate = parse(args.candidate)
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
        for name in args.datasets.split(","):
            ratings = load(name, root)
            shape = (int(ratings.user_idx.max()) + 1, int(ratings.item_idx.max()) + 1)
            train, test = holdout(ratings, seed=0)
            problem = Problem(train, test, shape)
            for label, params in (("today", {}), ("candidate", candidate)):
                started = time.perf_counter()
                _, metrics, _ = run_model(problem, cls(random_state=0, **params))
                rows.append(
                    {
                        "data": name,
                        "params": label,
                        **metrics,
                        "seconds": time.perf_counter() - started,
                    }
                )
    table = print_table(
        rows, f"{cls.__name__} today vs {candidate}; load {load_before} -> {os.getloadavg()}"
    )
    write_results(f"defaults_{args.model}", {"candidate": candidate, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
