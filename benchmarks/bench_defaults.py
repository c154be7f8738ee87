"""A candidate set of defaults against today's, side by side on three MovieLens sets.

For ML-100K, ML-latest-small and ML-1M: the ``user_holdout`` split (20 % of each
user's positives, seed 0), then one fit per parameter set (seed 0, 64 factors unless
given) and its test NDCG@10 / precision@10 (bench_als's metric code); for ``--model svd``
the random 90/10 split of bench_svd (seed 0) and the test RMSE (test pairs with a user or
item unknown to training get the baseline ``mu + b_u + b_i``). A default may change only
if the candidate, chosen on a validation split of ML-1M's training part (by
``mfdask.tune``, see bench_tune), is not worse on the other two sets.

Values are parsed as int, float, ``true``/``false`` or ``none``, else kept as text.
``--candidate`` may be repeated: a grid on one cluster, the "today" row fitted once per
seed and the candidates numbered in the order given. ``--today`` sets the parameters of
the "today" row (default: the defaults), so old defaults can be set against new ones
after the change. ``--validation`` scores on a
validation split carved from each training part (the same split of it again, seed 1)
instead of the test part: the figures to choose a candidate by.

Run: ``MFDASK_DATA=/work/shared/data python -m benchmarks.bench_defaults --model als
--candidate regularization=0.2,alpha=5``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.bench_als import Problem, holdout
from benchmarks.bench_svd import random_split, rmse
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
        words = {"true": True, "false": False, "none": None}
        if value.lower() in words:
            out[key] = words[value.lower()]
            continue
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def ranking_run(problem: Problem, model: Any) -> dict[str, float]:
    return run_model(problem, model)[1]


def rating_run(ratings: pd.DataFrame, validation: bool) -> Callable[[Any], dict[str, float]]:
    """Fit on bench_svd's random 90/10 split (seed 0); the test RMSE, or with
    ``validation`` the RMSE on the same split of the training part (seed 1)."""
    import dask.dataframe as dd

    train, test = random_split(ratings[["user_id", "item_id", "rating"]], seed=0)
    if validation:
        train, test = random_split(train, seed=1)

    def run(model: Any) -> dict[str, float]:
        model.fit(dd.from_pandas(train, npartitions=4))
        pred = model.predict(test, unknown="baseline")
        return {"rmse": rmse(pred, test.rating.to_numpy())}

    return run


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    from mfdask.models.registry import model_class

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="als")
    parser.add_argument(
        "--candidate",
        required=True,
        action="append",
        help="NAME=VALUE,... the new defaults; repeat it for a grid (today runs once per seed)",
    )
    parser.add_argument("--today", default="", help="NAME=VALUE,... of the 'today' row")
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small,ml-1m")
    parser.add_argument("--seeds", default="0", help="random_state of the fits: 0,1,...")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="score on a validation split carved from the training part, not the test part",
    )
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    root = data_root()
    if root is None:
        raise SystemExit("skipped: set MFDASK_DATA")
    cls = model_class(args.model)
    candidates, today = [parse(text) for text in args.candidate], parse(args.today)
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
        for name in args.datasets.split(","):
            ratings = load(name, root)
            if args.model == "svd":
                run = rating_run(ratings, args.validation)
            else:
                shape = (int(ratings.user_idx.max()) + 1, int(ratings.item_idx.max()) + 1)
                train, test = holdout(ratings, seed=0)
                if args.validation:
                    train, test = holdout(train, seed=1)
                problem = Problem(train, test, shape)
                run = partial(ranking_run, problem)
            for seed in map(int, args.seeds.split(",")):
                runs = [("today", today)]
                runs += [
                    ("candidate" if len(candidates) == 1 else f"candidate {n}", params)
                    for n, params in enumerate(candidates)
                ]
                for label, params in runs:
                    started = time.perf_counter()
                    metrics = run(cls(**{"random_state": seed, **params}))
                    rows.append(
                        {
                            "data": name,
                            "part": "validation" if args.validation else "test",
                            "seed": seed,
                            "params": label,
                            **metrics,
                            "seconds": time.perf_counter() - started,
                        }
                    )
                    print(rows[-1], flush=True)
    names = "; ".join(
        f"{n}: {params}" if len(candidates) > 1 else str(params)
        for n, params in enumerate(candidates)
    )
    title = f"{cls.__name__} {today or 'today'} vs {names}"
    table = print_table(rows, f"{title}; load {load_before} -> {os.getloadavg()}")
    write_results(
        f"defaults_{args.model}",
        {
            "today": today,
            "candidate": candidates[0] if len(candidates) == 1 else candidates,
            "rows": rows,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
