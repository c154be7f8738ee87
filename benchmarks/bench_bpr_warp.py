"""BPR and WARP on ML-1M against ``implicit`` and LightFM, side by side; throughput.

Protocol (the same as ``bench_als``): ML-1M, positives are ratings >= 4; per user 20 % of
the positives held out (``user_holdout``, seed 0); 64 factors; precision@10 and NDCG@10
over users with a held-out item, recommendations filtered of every training rating,
every model scored by the same metric code (:func:`mfdask.metrics.ranking.ranking_metrics`).

- mfdask ``BPR()`` and ``WARP()`` with their default settings (64 factors), on a 2-worker
  ``LocalCluster`` (processes, one thread each); throughput is the median of
  ``history_[e]["positives_per_second"]`` (the whole epoch inside the engine).
- ``implicit``'s ``BayesianPersonalizedRanking`` (2 threads, 100 iterations) and LightFM
  1.17 ``loss="bpr"`` / ``loss="warp"`` (2 threads, 100 epochs; build it with
  ``/work/shared/tools/install-lightfm.sh``), with the learning rate and regularisation
  chosen on a validation split (train minus a second 20 % holdout, seed 1) when
  ``--tune`` is given, else at the libraries' defaults.
- Negatives from the held item block against negatives from the whole catalogue: the
  same model on a 1-worker cluster with ``n_blocks=4`` (each cell sees a quarter of
  the items) and ``n_blocks=1`` (every draw from all items).
- ``similar_items`` of Toy Story (item 1): rank of Toy Story 2 (item 3114).
- Throughput side by side: the engine with item blocks handed worker to worker (the
  default) and handed over by the scheduler (``mfdask.dsgd.direct-exchange: False``),
  against the models' block kernel alone in one thread of this process over the same
  training ratings as a single cell.

Run: ``MFDASK_DATA=/work/shared/data python -m benchmarks.bench_bpr_warp [--tune]``;
``--peer-params bench-out/bpr_warp.json`` reuses an earlier run's tuned peer settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MFDASK_NO_PROGRESS", "1")

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd

from benchmarks.bench_als import Problem, holdout, load_ml1m, score
from benchmarks.common import print_table, require_movielens, write_results
from mfdask.recommend import top_k_of_scores

FACTORS = 64
PEER_EPOCHS = 100
K = 10
TOY_STORY, TOY_STORY_2 = 1, 3114

# The peers' own defaults, replaced by the validation grid's choice with ``--tune``;
# mfdask runs its defaults (chosen on the same validation split).
IMPLICIT_BPR = {"learning_rate": 0.01, "regularization": 0.01}
LIGHTFM_BPR = {"learning_rate": 0.05, "item_alpha": 0.0, "user_alpha": 0.0}
LIGHTFM_WARP = {"learning_rate": 0.05, "item_alpha": 0.0, "user_alpha": 0.0}


def _top_k(problem: Problem, users_vec: np.ndarray, items_vec: np.ndarray) -> np.ndarray:
    """Top-``K`` unseen items of the test users, best first, by ``users_vec @ items_vecᵀ``."""
    out = []
    step = 1024
    for start in range(0, len(problem.users), step):
        chunk = problem.users[start : start + step]
        scores = np.asarray(users_vec[chunk] @ items_vec.T, dtype=np.float32)
        idx, _ = top_k_of_scores(scores, K, problem.seen[chunk])
        out.append(idx)
    return np.vstack(out)


def run_implicit(problem: Problem, learning_rate: float, regularization: float, seed: int = 0):
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(
        factors=FACTORS,
        learning_rate=learning_rate,
        regularization=regularization,
        iterations=PEER_EPOCHS,
        num_threads=2,
        random_state=seed,
    )
    started = time.perf_counter()
    model.fit(problem.positives, show_progress=False)
    seconds = time.perf_counter() - started
    ranked = _top_k(problem, model.user_factors, model.item_factors)
    return score(ranked, problem.relevant, problem.users), seconds


def run_lightfm(problem: Problem, loss: str, seed: int = 0, **params):
    from lightfm import LightFM

    model = LightFM(no_components=FACTORS, loss=loss, random_state=seed, **params)
    started = time.perf_counter()
    model.fit(problem.positives.tocoo(), epochs=PEER_EPOCHS, num_threads=2)
    seconds = time.perf_counter() - started
    n_users = problem.shape[0]
    users = np.hstack([model.user_embeddings, np.ones((n_users, 1), np.float32)])
    items = np.hstack([model.item_embeddings, model.item_biases[:, None]])
    ranked = _top_k(problem, users, items)
    return score(ranked, problem.relevant, problem.users), seconds


def run_mfdask(problem: Problem, cls, **params):
    frame = problem.train[["user_id", "item_id", "rating"]]
    model = cls(random_state=0, **params)
    started = time.perf_counter()
    model.fit(frame)
    seconds = time.perf_counter() - started
    users = problem.user_of_idx.loc[problem.users].to_numpy()
    recs = model.recommend(users, n=K)
    idx_of_item = pd.Series(problem.item_of_idx.index, index=problem.item_of_idx.to_numpy())
    ranked = np.full((len(users), K), -1, np.int64)
    row = pd.Series(np.arange(len(users)), index=users).loc[recs.user_id].to_numpy()
    ranked[row, recs["rank"].to_numpy() - 1] = idx_of_item.loc[recs.item_id].to_numpy()
    return model, score(ranked, problem.relevant, problem.users), seconds


def _throughput(model) -> float:
    # Epoch 1 can include loading the compiled kernels on the workers: leave it out.
    rates = [h["positives_per_second"] for h in model.history_[1:]] or [0.0]
    return float(np.median(rates))


def kernel_alone(problem: Problem, cls, repeats: int = 3) -> float:
    """Median positives/s of ``cls()``'s block kernel run alone in one thread.

    The whole training set is one cell (one user block, one item block), so negatives
    come from the whole catalogue; the first pass (compilation or cache load) is left out.
    """
    from types import SimpleNamespace

    from mfdask.engine.blocks import build_row_block, split_partition
    from mfdask.engine.dsgd import build_shard

    frame = pd.DataFrame(
        {
            "user_idx": problem.train.user_idx.to_numpy("int32"),
            "item_idx": problem.train.item_idx.to_numpy("int32"),
            "rating": problem.train.rating.to_numpy("float32"),
        }
    )
    pieces = [split_partition(frame, 1, "user_idx", "item_idx", "rating")]
    shard = build_shard(build_row_block(0, 1, *problem.shape, [p[0] for p in pieces]))
    cell = shard.cells[0]
    model = cls(random_state=0)
    model._threshold = model.positive_threshold
    user, item = model._initial_state(
        SimpleNamespace(n_users=problem.shape[0], n_items=problem.shape[1])
    )
    kernel = model._make_kernel(0, model.epoch_learning_rate(0))
    rates = []
    for seed in range(repeats + 1):
        started = time.perf_counter()
        stats = kernel.train(cell, shard, user, item, 0, cell.nnz, seed)
        rates.append(stats[0] / (time.perf_counter() - started))
    return float(np.median(rates[1:]))


def hand_over_table(problem: Problem, direct: dict[str, float]) -> list[dict[str, Any]]:
    """Positives/s with item blocks handed over directly vs by the scheduler vs the kernel.

    ``direct`` holds the default (direct) figures already measured per model name.
    """
    from mfdask import BPR, WARP

    rows = []
    for cls in (BPR, WARP):
        with dask.config.set({"mfdask.dsgd.direct-exchange": False}):
            model, _, _ = run_mfdask(problem, cls)
        scheduled = _throughput(model)
        alone = kernel_alone(problem, cls)
        fast = direct[cls.__name__]
        rows.append(
            {
                "model": cls.__name__,
                "direct Mpos/s": fast / 1e6,
                "scheduled Mpos/s": scheduled / 1e6,
                "kernel alone Mpos/s": alone / 1e6,
                "direct / scheduled": fast / scheduled,
                "direct / kernel": fast / alone,
            }
        )
    return rows


def toy_story_rank(model) -> int | None:
    sim = model.similar_items([TOY_STORY], n=10)
    hit = sim.loc[sim.similar_item_id == TOY_STORY_2, "rank"]
    return int(hit.iloc[0]) if len(hit) else None


def tune(problem: Problem) -> dict[str, Any]:
    """Grid over the peers' learning rate and L2 on the validation problem."""
    rows = []
    for lr, reg in itertools.product([0.01, 0.05, 0.1], [0.001, 0.01]):
        m, s = run_implicit(problem, lr, reg)
        rows.append({"model": "implicit BPR", "learning_rate": lr, "l2": reg, **m, "seconds": s})
    for loss in ("bpr", "warp"):
        for lr, alpha in itertools.product([0.02, 0.05], [0.0, 1e-5]):
            m, s = run_lightfm(problem, loss, learning_rate=lr, item_alpha=alpha, user_alpha=alpha)
            rows.append(
                {"model": f"LightFM {loss}", "learning_rate": lr, "l2": alpha, **m, "seconds": s}
            )
    print_table(rows, "validation grid (train minus a second 20 % holdout)")
    chosen = {}
    for name in ("implicit BPR", "LightFM bpr", "LightFM warp"):
        best = max((r for r in rows if r["model"] == name), key=lambda r: r["ndcg@10"])
        chosen[name] = best
    return {"rows": rows, "chosen": chosen}


def block_vs_catalogue(problem: Problem) -> list[dict[str, Any]]:
    """The same models on one worker, negatives from a quarter of the items or from all."""
    from distributed import Client, LocalCluster

    from mfdask import BPR, WARP

    rows = []
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster, set_as_default=True)
    try:
        for cls in (BPR, WARP):
            for n_blocks, source in ((4, "held block (1/4 of items)"), (1, "all items")):
                _, m, s = run_mfdask(problem, cls, n_blocks=n_blocks)
                rows.append(
                    {
                        "model": cls.__name__,
                        "n_blocks": n_blocks,
                        "negatives from": source,
                        **m,
                        "fit s": s,
                    }
                )
    finally:
        client.close()
        cluster.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="tune the peers on a validation split")
    parser.add_argument("--skip-peers", action="store_true", help="mfdask only")
    parser.add_argument(
        "--peer-params",
        type=Path,
        help="take the peers' settings from the peer_params of an earlier run's JSON "
        "(a --tune run), to time them again without the grid",
    )
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    from distributed import Client, LocalCluster

    from mfdask import BPR, WARP

    root = require_movielens("ml-1m")
    ratings, _ = load_ml1m(root)
    shape = (int(ratings.user_idx.max()) + 1, int(ratings.item_idx.max()) + 1)
    train, test = holdout(ratings, seed=0)
    problem = Problem(train, test, shape)
    results: dict[str, Any] = {
        "protocol": "ML-1M, rating>=4 positives, user_holdout 0.2 seed 0, 64 factors",
        "train_ratings": len(train),
        "train_positives": int(problem.positives.nnz),
        "test_positives": len(test),
    }
    peers = {
        "implicit BPR": dict(IMPLICIT_BPR),
        "LightFM bpr": dict(LIGHTFM_BPR),
        "LightFM warp": dict(LIGHTFM_WARP),
    }
    if args.peer_params is not None:
        peers.update(json.loads(args.peer_params.read_text())["peer_params"])
    elif args.tune and not args.skip_peers:
        tuned = tune(Problem(*holdout(train, seed=1), shape))
        results["validation_grid"] = tuned["rows"]
        for name, best in tuned["chosen"].items():
            if name == "implicit BPR":
                peers[name] = {"learning_rate": best["learning_rate"], "regularization": best["l2"]}
            else:
                peers[name] = {
                    "learning_rate": best["learning_rate"],
                    "item_alpha": best["l2"],
                    "user_alpha": best["l2"],
                }
    results["peer_params"] = peers

    table: list[dict[str, Any]] = []
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster, set_as_default=True)
    try:
        # Warm up: compile (or load) the kernels on the workers once.
        small = Problem(*holdout(ratings[ratings.user_idx < 200], 0), shape)
        run_mfdask(small, BPR, epochs=2)
        run_mfdask(small, WARP, epochs=2)
        for cls in (BPR, WARP):
            model, m, s = run_mfdask(problem, cls)
            table.append(
                {
                    "model": f"mfdask {cls.__name__} (defaults)",
                    **m,
                    "fit s": s,
                    "epochs": len(model.history_),
                    "positives/s": _throughput(model),
                    "toy story 2 rank": toy_story_rank(model),
                }
            )
            results[f"mfdask_{cls.__name__}_params"] = model.get_params()
            results[f"mfdask_{cls.__name__}_history"] = model.history_
        direct = {
            row["model"].split()[1]: row["positives/s"]
            for row in table
            if row["model"].startswith("mfdask")
        }
        speed = hand_over_table(problem, direct)
    finally:
        client.close()
        cluster.close()

    if not args.skip_peers:
        m, s = run_implicit(problem, **peers["implicit BPR"])
        table.append({"model": "implicit BPR", **m, "fit s": s, "epochs": PEER_EPOCHS})
        for loss in ("bpr", "warp"):
            m, s = run_lightfm(problem, loss, **peers[f"LightFM {loss}"])
            table.append({"model": f"LightFM {loss}", **m, "fit s": s, "epochs": PEER_EPOCHS})
    print_table(table, "ML-1M test (per-user 20 % holdout of positives), 64 factors")
    results["test"] = table
    print_table(
        speed,
        "Epoch throughput, 2 workers: item blocks handed over directly / by the scheduler, "
        "and the block kernel alone in one thread",
    )
    results["throughput"] = speed

    rows = block_vs_catalogue(problem)
    print_table(rows, "1 worker: negatives from the held item block vs from all items")
    results["block_vs_catalogue"] = rows
    results["load_average_at_end"] = os.getloadavg()
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print("wrote", write_results("bpr_warp", results))


if __name__ == "__main__":
    main()
