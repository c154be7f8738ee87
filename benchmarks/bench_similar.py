"""Similar items on ML-1M with and without shrinkage by support, all four models.

``similar_items(..., shrinkage=β)`` multiplies the cosine of candidate ``j`` by
``n_j / (n_j + β)``, ``n_j`` its training ratings. For each model (defaults, seed 0, fit
once) and each β this prints:

- the fewest training ratings among the top-10 neighbours of Toy Story (1) and of
  Star Wars (260), and how many of those 20 neighbours have fewer than 50 ratings;
- the mean genre overlap (Jaccard over movies.dat genres) between every item with at
  least 20 training ratings and its top-10 neighbours;
- the mean overlap (Jaccard of the top-10 sets) with an item-item reference computed
  from the data alone: the cosine of the items' binary columns of the training matrix
  (co-occurrence, classic item-kNN), over the same items.

Split: the demo's, a random 80/20 split of ML-1M's ratings (seed 0, ``assign_test``
``method="random"``); every model fits the same train part.

Run: ``MFDASK_DATA=/work/shared/data python -m benchmarks.bench_similar [--betas 0,10]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.bench_als import load_ml1m
from benchmarks.common import print_table, require_movielens, write_results
from mfdask.data.split import assign_test

QUERIES = {"Toy Story": 1, "Star Wars": 260}
K = 10
MIN_SUPPORT = 20
RARE = 50


def split(ratings: pd.DataFrame) -> pd.DataFrame:
    test = assign_test(
        ratings.user_idx.to_numpy(),
        ratings.item_idx.to_numpy(),
        ratings.rating.to_numpy(),
        ratings.timestamp.to_numpy(),
        method="random",
        fraction=0.2,
        seed=0,
    )
    return ratings[~test].reset_index(drop=True)


def genre_sets(movies: pd.DataFrame) -> dict[int, frozenset[str]]:
    return {
        int(i): frozenset(g.split("|")) for i, g in zip(movies.item_id, movies.genres, strict=True)
    }


def cooccurrence_top(train: pd.DataFrame, items: np.ndarray, k: int) -> dict[int, set[int]]:
    """Top-``k`` items by cosine of binary user columns, for each of ``items`` (ids)."""
    ids = np.sort(train.item_id.unique())
    col = pd.Index(ids).get_indexer(train.item_id)
    users = pd.factorize(train.user_id)[0]
    m = sp.csr_matrix((np.ones(len(train), np.float32), (users, col)))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=0)).ravel())
    mt = (m @ sp.diags(1 / np.maximum(norms, 1e-12))).T.tocsr()
    rows = pd.Index(ids).get_indexer(items)
    sims = (mt[rows] @ mt.T).toarray()
    sims[np.arange(len(rows)), rows] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return {int(items[r]): set(ids[top[r]].tolist()) for r in range(len(rows))}


def jaccard(a: set | frozenset, b: set | frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def measure(
    model: Any,
    beta: float,
    counts: pd.Series,
    genres: dict[int, frozenset[str]],
    reference: dict[int, set[int]],
) -> dict[str, Any]:
    supported = np.array(sorted(reference))
    sim = model.similar_items(supported, n=K, shrinkage=beta)
    lists = sim.groupby("item_id")["similar_item_id"].apply(set)
    row: dict[str, Any] = {"beta": beta}
    rare = 0
    for name, item in QUERIES.items():
        top = model.similar_items([item], n=K, shrinkage=beta)["similar_item_id"]
        support = counts.reindex(top).fillna(0).astype(int)
        row[f"min n {name}"] = int(support.min())
        rare += int((support < RARE).sum())
    row[f"neighbours < {RARE}"] = rare
    row["genre jaccard"] = float(
        np.mean(
            [
                np.mean([jaccard(genres[i], genres.get(j, frozenset())) for j in lists[i]])
                for i in supported
            ]
        )
    )
    row["co-occurrence jaccard"] = float(
        np.mean([jaccard(lists[i], reference[i]) for i in supported])
    )
    return row


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    from mfdask import ALS, BPR, SVD, WARP

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", default="0,10", help="comma-separated shrinkage values")
    parser.add_argument("--models", default="svd,als,bpr,warp")
    args = parser.parse_args(argv)
    betas = [float(b) for b in args.betas.split(",")]
    root = require_movielens("ml-1m")
    ratings, movies = load_ml1m(root)
    train = split(ratings)
    frame = train[["user_id", "item_id", "rating"]]
    counts = train.groupby("item_id").size()
    genres = genre_sets(movies)
    supported = counts[counts >= MIN_SUPPORT].index.to_numpy()
    reference = cooccurrence_top(train, supported, K)
    classes = {"svd": SVD, "als": ALS, "bpr": BPR, "warp": WARP}
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
        for name in args.models.split(","):
            started = time.perf_counter()
            model = classes[name](random_state=0).fit(frame)
            seconds = time.perf_counter() - started
            for beta in betas:
                rows.append(
                    {
                        "model": name,
                        "fit s": seconds,
                        **measure(model, beta, counts, genres, reference),
                    }
                )
    table = print_table(rows, f"similar items on ML-1M (random 80/20 seed 0); load {load}")
    write_results("similar", {"rows": rows, "load": load, "table": table})


if __name__ == "__main__":
    main()
