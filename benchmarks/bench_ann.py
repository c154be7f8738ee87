"""Approximate top-k (``method="ann"``) against the exact path: recall@10, NDCG@10, time.

``python -m benchmarks ann`` (``MFDASK_DATA`` for ML-1M). Options: ``--parts
ml1m,crossover,scale`` (default all), ``--iterations 8`` (ALS on the large set),
``--sample 50000`` (users in the large set's trade-off curve), ``--keep DIR`` (keep the
large set's data and model there and reuse them on the next run).

1. ML-1M (per-user 80/20 holdout of positives, seed 0; ALS, 64 factors, 15 iterations):
   ``recommend_all`` on 2 local workers, exact and with a range of index settings;
   recall@10 of each against the exact lists and NDCG@10 on the test positives.
2. Crossover, in one process and one thread (the per-block scorer alone, no cluster):
   20,000 users of the large model against its first ``N`` items, ``N`` from 2,000 to
   100,000: exact scoring against index build + search with the defaults.
3. Scale: synthetic 1M users x 100k items, 20M ratings (``mfdask.data.synth``), ALS with
   64 factors fitted on 2 local workers (``--iterations``, 8 by default: the training
   loss moves by less than 0.1% after that). A trade-off curve (IVF ``nprobe``, ``nlist``,
   HNSW ``ef_search``) on a sample of users, then every user's top-10 written by the
   exact path and by the defaults, side by side in one run: wall time and recall@10 of
   the ANN lists against the exact ones over all users.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import data_root, print_table, write_results
from mfdask.engine import ann
from mfdask.engine.cluster import ClusterSpec, start_local
from mfdask.metrics.ranking import ndcg_at_k
from mfdask.models import ALS
from mfdask.models.base import load_model
from mfdask.recommend import top_k_of_scores


def _lists(path: Path, model, n: int = 10) -> np.ndarray:
    """``(n_users, n)`` dense item indices of a recommendations output (``-1`` padding)."""
    frame = pd.read_parquet(path, columns=["user_id", "rank", "item_id"])
    u = model.user_index(frame["user_id"].to_numpy())
    i = model.item_index(frame["item_id"].to_numpy())
    out = np.full((model.n_users, n), -1, np.int64)
    out[u, frame["rank"].to_numpy() - 1] = i
    return out


def recall_against(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| (rows with an empty exact list skipped)."""
    # Padding gets a distinct negative value per slot and side, so it never matches.
    slots = np.arange(exact.shape[1])
    ex = np.where(exact >= 0, exact, -1 - slots)
    ap = np.where(approx >= 0, approx, -1 - exact.shape[1] - np.arange(approx.shape[1]))
    # Row-wise membership through a sort: both lists hold distinct items.
    both = np.concatenate([ex, ap], axis=1)
    both.sort(axis=1)
    hits = (both[:, 1:] == both[:, :-1]).sum(axis=1)
    size = (exact >= 0).sum(axis=1)
    ok = size > 0
    return float(np.mean(hits[ok] / size[ok]))


def _settings(n_items: int) -> list[dict[str, Any]]:
    """The defaults first, then IVF ``nprobe`` and ``nlist`` around them, then HNSW."""
    d = ann.ann_params(n_items)
    rows: list[dict[str, Any]] = [{"index": "ivf", "nlist": d.nlist, "nprobe": d.nprobe}]
    probes = sorted({round(d.nprobe * f) for f in (0.25, 0.5, 0.75, 1.25, 1.5, 2)})
    for p in probes:
        if 1 <= p < d.nlist and p != d.nprobe:
            rows.append({"index": "ivf", "nlist": d.nlist, "nprobe": p})
    for nlist in (d.nlist // 4, d.nlist * 2):
        if 8 <= nlist <= n_items // 39:
            rows.append(
                {"index": "ivf", "nlist": nlist, "nprobe": ann.default_nprobe(nlist, n_items)}
            )
    for ef in (32, 64, 128):
        rows.append({"index": "hnsw", "ef_search": ef})
    return rows


def _label(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items())


def ml1m_part(root: Path, tmp: Path, results: dict[str, Any]) -> None:
    from mfdask.data.ingest import ingest
    from mfdask.data.split import split_dataset

    ds = ingest(root / "ml-1m", tmp / "ml1m-ds")
    split = split_dataset(ds, tmp / "ml1m-split", method="user_holdout", fraction=0.2, seed=0)
    train, test = split
    model = ALS(factors=64, iterations=15, random_state=0).fit(train)
    test_frame = pd.read_parquet(test.ratings_path, columns=["user_idx", "item_idx", "rating"])
    pos = test_frame[test_frame["rating"] >= model.positive_threshold]
    import scipy.sparse as sp

    relevant = sp.csr_matrix(
        (np.ones(len(pos), np.int8), (pos["user_idx"], pos["item_idx"])),
        shape=(model.n_users, model.n_items),
    )
    has = np.diff(relevant.indptr) > 0
    model.recommend_all(10, tmp / "ml1m-warm", seen=train, users=model.user_ids_[:100])
    start = time.perf_counter()
    model.recommend_all(10, tmp / "ml1m-exact", seen=train)
    exact_s = time.perf_counter() - start
    exact = _lists(tmp / "ml1m-exact", model)
    ndcg_exact = float(np.nanmean(ndcg_at_k(exact[has], relevant[has], 10)))
    rows = [
        {"method": "exact", "seconds": exact_s, "recall@10": 1.0, "ndcg@10": ndcg_exact,
         "ndcg vs exact": 0.0}
    ]  # fmt: skip
    for options in [*_settings(model.n_items), {"index": "flat"}]:
        out = tmp / f"ml1m-{len(rows)}"
        start = time.perf_counter()
        model.recommend_all(10, out, seen=train, method="ann", **options)
        seconds = time.perf_counter() - start
        approx = _lists(out, model)
        nd = float(np.nanmean(ndcg_at_k(approx[has], relevant[has], 10)))
        rows.append(
            {
                "method": "ann " + _label(options),
                "seconds": seconds,
                "recall@10": recall_against(exact, approx),
                "ndcg@10": nd,
                "ndcg vs exact": nd / ndcg_exact - 1,
            }
        )
        shutil.rmtree(out)
    print_table(rows, "ML-1M, ALS 64 factors, recommend_all n=10 on 2 workers (first: defaults)")
    results["ml1m"] = rows


def _scale_model(client, keep: Path, iterations: int) -> Any:
    from mfdask.data.synth import synthesize

    data = keep / "synth-1m-100k"
    model_dir = keep / f"als-64-{iterations}it"
    if (model_dir / "model.json").exists():
        return load_model(model_dir), data
    if not (data / "_manifest.json").exists() and not data.exists():
        synthesize(data, n_ratings=20_000_000, n_users=1_000_000, n_items=100_000, seed=0)
    start = time.perf_counter()
    model = ALS(factors=64, iterations=iterations, random_state=0).fit(str(data))
    print(f"ALS fit on 20M ratings, {iterations} iterations: {time.perf_counter() - start:.0f} s")
    model.save(model_dir)
    return model, data


def crossover_part(model, results: dict[str, Any], n_users: int = 20_000) -> None:
    uvec, ivec = model._score_vectors()
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(model.n_users, n_users, replace=False))
    q = np.ascontiguousarray(uvec[users], dtype=np.float32)
    seen_all = model.seen_items_.tocsr()[users]
    rows = []
    for n_items in (2_000, 5_000, 10_000, 20_000, 50_000, 100_000):
        items = np.ascontiguousarray(ivec[:n_items], dtype=np.float32)
        seen = seen_all[:, :n_items]
        start = time.perf_counter()
        ex_idx, _ = top_k_of_scores(np.asarray(q @ items.T, dtype=np.float32), 10, seen)
        exact_s = time.perf_counter() - start
        params = ann.ann_params(n_items)
        start = time.perf_counter()
        blob = ann.build_index(items, params)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        idx, _ = ann.ann_top_k(q, items, seen, 10, ann.load_index(blob), params)
        search_s = time.perf_counter() - start
        rows.append(
            {
                "items": n_items,
                "exact s": exact_s,
                "ann build s": build_s,
                "ann search s": search_s,
                "speed-up": exact_s / (build_s + search_s),
                "speed-up (search)": exact_s / search_s,
                "recall@10": recall_against(ex_idx, idx),
                "nlist": params.nlist,
                "nprobe": params.nprobe,
            }
        )
    print_table(rows, f"Crossover: {n_users:,} users, one thread, defaults (ALS factors)")
    results["crossover"] = rows


def scale_part(client, model, data: Path, tmp: Path, sample: int, results: dict) -> None:
    rng = np.random.default_rng(1)
    users = model.user_ids_[np.sort(rng.choice(model.n_users, sample, replace=False))]
    seen = None  # the model's own training items
    start = time.perf_counter()
    model.recommend_all(10, tmp / "s-exact", users=users, seen=seen)
    exact_s = time.perf_counter() - start
    exact = _lists(tmp / "s-exact", model)[model.user_index(users)]
    rows = [{"method": "exact", "seconds": exact_s, "speed-up": 1.0, "recall@10": 1.0}]
    for options in _settings(model.n_items):
        out = tmp / f"s-{len(rows)}"
        start = time.perf_counter()
        model.recommend_all(10, out, users=users, method="ann", **options)
        seconds = time.perf_counter() - start
        approx = _lists(out, model)[model.user_index(users)]
        rows.append(
            {
                "method": "ann " + _label(options),
                "seconds": seconds,
                "speed-up": exact_s / seconds,
                "recall@10": recall_against(exact, approx),
            }
        )
        shutil.rmtree(out)
    print_table(rows, f"Synthetic 1M x 100k, {sample:,} sampled users, 2 workers (first: defaults)")
    results["scale_curve"] = rows

    start = time.perf_counter()
    out_e = model.recommend_all(10, tmp / "all-exact")
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    out_a = model.recommend_all(10, tmp / "all-ann", method="ann")
    ann_s = time.perf_counter() - start
    recall = recall_against(_lists(out_e.path, model), _lists(out_a.path, model))
    full = [
        {"method": "exact", "seconds": exact_s, "rows": out_e.rows, "speed-up": 1.0,
         "recall@10": 1.0},
        {"method": "ann (defaults: " + _label(out_a.manifest["ann"]) + ")", "seconds": ann_s,
         "rows": out_a.rows, "speed-up": exact_s / ann_s, "recall@10": recall},
    ]  # fmt: skip
    print_table(full, "Synthetic 1M x 100k: every user's top-10 written, 2 workers")
    results["scale_full"] = full


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ann")
    parser.add_argument("--parts", default="ml1m,crossover,scale")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--sample", type=int, default=50_000)
    parser.add_argument("--keep", default=None)
    args, _ = parser.parse_known_args()
    parts = set(args.parts.split(","))
    ann.import_faiss()
    results: dict[str, Any] = {"iterations": args.iterations, "sample": args.sample}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ann-"))
    keep = Path(args.keep) if args.keep else tmp
    keep.mkdir(parents=True, exist_ok=True)
    client = start_local(ClusterSpec(n_workers=2, threads_per_worker=1, memory_limit="5GiB"))
    try:
        root = data_root()
        if "ml1m" in parts:
            if root is not None and (root / "ml-1m" / "ratings.dat").exists():
                ml1m_part(root, tmp, results)
            else:
                print("ML-1M part skipped: set MFDASK_DATA to a folder holding ml-1m/")
        if parts & {"crossover", "scale"}:
            model, data = _scale_model(client, keep, args.iterations)
            if "crossover" in parts:
                crossover_part(model, results)
            if "scale" in parts:
                scale_part(client, model, data, tmp, args.sample, results)
        results["load_average"] = os.getloadavg()
        write_results("ann", results)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
