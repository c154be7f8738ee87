"""Evaluation of all ML-1M users on a 2-worker LocalCluster, and agreement with implicit.

``python -m benchmarks evaluate`` (needs ``MFDASK_DATA`` with ``ml-1m/``).

1. Speed: a random 64-factor model over 6,040 users x 3,706 items, ratings split 80/20
   at random (seed 0), relevant = test ratings >= 4, training items filtered, k = 10:
   :func:`mfdask.evaluate.evaluate_ranking` on the cluster (test ratings stay partitioned;
   exact AUC over the full score rows included) against the same metrics computed in one
   process on the client with :func:`mfdask.metrics.ranking_metrics`.
2. Agreement: implicit's ALS is fitted on the training positives, its factors are put in
   an mfdask model, and implicit's ``ranking_metrics_at_k`` is compared with ours on the
   same factors: implicit's ``precision``/``map``/``ndcg``/``auc`` must equal our
   ``implicit_precision``/``map``/``ndcg``/``implicit_auc`` (same conventions), and the
   textbook P@k and the exact AUC are shown beside them.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.common import print_table, require_movielens, write_results
from mfdask.engine.cluster import ClusterSpec, start_local
from mfdask.evaluate import evaluate_ranking
from mfdask.metrics import RankingSums, auc, ranking_sums
from mfdask.models.base import FactorModel
from mfdask.recommend import chunk_rows, top_k_of_scores


class GivenFactors(FactorModel):
    """A model whose factors are given (random, or another library's)."""

    model_name = "given"

    def __init__(self, factors: int = 64) -> None:
        self.factors = factors


def _model(users, items, uf, vf, seen) -> GivenFactors:
    m = GivenFactors(factors=uf.shape[1])
    m.user_ids_ = pd.Index(users, name="user_id")
    m.item_ids_ = pd.Index(items, name="item_id")
    m.user_factors_ = np.ascontiguousarray(uf, dtype=np.float32)
    m.item_factors_ = np.ascontiguousarray(vf, dtype=np.float32)
    m.seen_items_ = seen
    m.items_, m.history_, m.metrics_, m.fingerprint_ = None, [], {}, "given"
    return m


def _client_only(model: GivenFactors, test_pos: sp.csr_matrix, k: int) -> dict[str, float]:
    """The same metrics in one process: every user with a positive, chunk by chunk."""
    users = np.flatnonzero(np.diff(test_pos.indptr) > 0)
    step = chunk_rows(model.n_items, 2_000_000)
    total = RankingSums(k=k, n_items=model.n_items)
    for start in range(0, len(users), step):
        rows = users[start : start + step]
        s = model.user_factors_[rows] @ model.item_factors_.T
        a = auc(s, test_pos[rows], model.seen_items_[rows])
        r, _ = top_k_of_scores(s, k, model.seen_items_[rows])
        total = total + ranking_sums(r, test_pos[rows], k=k, auc_values=a)
    return total.means()


def main() -> None:
    root = require_movielens("ml-1m")
    ratings = pd.read_csv(
        root / "ratings.dat",
        sep="::",
        engine="python",
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    users = np.sort(ratings.user_id.unique())
    items = np.sort(ratings.item_id.unique())
    u = np.searchsorted(users, ratings.user_id.to_numpy())
    i = np.searchsorted(items, ratings.item_id.to_numpy())
    is_test = np.random.default_rng(0).random(len(ratings)) < 0.2
    shape = (len(users), len(items))
    seen = sp.csr_matrix((np.ones((~is_test).sum(), bool), (u[~is_test], i[~is_test])), shape)
    pos = is_test & (ratings.rating.to_numpy() >= 4)
    test_pos = sp.csr_matrix((np.ones(pos.sum(), np.float32), (u[pos], i[pos])), shape)
    test = ratings.loc[is_test, ["user_id", "item_id", "rating"]].reset_index(drop=True)
    k = 10
    results: dict = {"k": k, "test_ratings": len(test), "test_positives": int(pos.sum())}
    rows = []

    client = start_local(ClusterSpec(n_workers=2, threads_per_worker=1, memory_limit="3GiB"))
    try:
        rng = np.random.default_rng(1)
        rand = _model(
            users,
            items,
            rng.standard_normal((len(users), 64), dtype=np.float32),
            rng.standard_normal((len(items), 64), dtype=np.float32),
            seen,
        )
        evaluate_ranking(rand, test.iloc[:1000], k=k)  # warm-up: worker imports
        start = time.perf_counter()
        dist = evaluate_ranking(rand, test, k=k)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        local = _client_only(rand, test_pos, k)
        local_seconds = time.perf_counter() - start
        for key in ("precision", "ndcg", "map", "auc", "implicit_precision", "coverage"):
            assert abs(dist[key] - local[key]) < 1e-9, (key, dist[key], local[key])
        rows.append(
            {
                "case": "random 64 factors, ML-1M 80/20",
                "users": dist["users"],
                "cluster s": seconds,
                "client-only s": local_seconds,
                "precision@10": dist["precision"],
                "auc": dist["auc"],
            }
        )
        results["random"] = {**dist, "cluster_seconds": seconds, "client_seconds": local_seconds}

        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.evaluation import ranking_metrics_at_k

        tp = ~is_test & (ratings.rating.to_numpy() >= 4)
        train_pos = sp.csr_matrix((np.ones(tp.sum(), np.float32), (u[tp], i[tp])), shape)
        als = AlternatingLeastSquares(
            factors=64, regularization=0.05, iterations=15, random_state=0, num_threads=1
        )
        start = time.perf_counter()
        als.fit(train_pos, show_progress=False)
        fit_seconds = time.perf_counter() - start
        # implicit filters what is in train_user_items: give it every training rating,
        # as our model's seen items.
        start = time.perf_counter()
        theirs = ranking_metrics_at_k(
            als, seen.astype(np.float32), test_pos, K=k, show_progress=False
        )
        implicit_seconds = time.perf_counter() - start
        ours_model = _model(users, items, als.user_factors, als.item_factors, seen)
        start = time.perf_counter()
        ours = evaluate_ranking(ours_model, test, k=k)
        ours_seconds = time.perf_counter() - start
        compare = [
            ("precision", "implicit_precision"),
            ("map", "map"),
            ("ndcg", "ndcg"),
            ("auc", "implicit_auc"),
        ]
        agreement = [
            {
                "implicit metric": a,
                "implicit": float(theirs[a]),
                "mfdask key": b,
                "mfdask": ours[b],
                "abs diff": abs(float(theirs[a]) - ours[b]),
            }
            for a, b in compare
        ]
        print_table(rows, "evaluate_ranking on a 2-worker LocalCluster (k=10)")
        print_table(agreement, f"implicit ALS (fit {fit_seconds:.1f} s) evaluated by both")
        print(
            f"textbook precision@10 {ours['precision']:.4f}, exact AUC {ours['auc']:.4f}; "
            f"implicit {implicit_seconds:.2f} s, mfdask {ours_seconds:.2f} s"
        )
        results["implicit_agreement"] = agreement
        results["implicit_als"] = {
            "mfdask": ours,
            "implicit": {a: float(v) for a, v in theirs.items()},
            "implicit_seconds": implicit_seconds,
            "mfdask_seconds": ours_seconds,
        }
        results["cpus"] = os.cpu_count()
        write_results("evaluate", results)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
