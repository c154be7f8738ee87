"""Time outside the iterations of a large fit: ALS and BPR on synthetic ratings.

Protocol: ``--ratings`` (default 20M) MovieLens-shaped synthetic ratings
(:func:`mfdask.data.synth.synthesize`, seed 0, 500k users x 50k items at 20M) written as a
canonical dataset; on one 2-worker ``LocalCluster`` (processes, one thread each), after a
1-iteration fit of each model on a small dataset (numba loaded, the cluster has run a fit):
ALS (64 factors, ``--iterations`` 8, no training loss) and BPR (64 factors, ``--epochs`` 5)
fitted from the dataset path. Reported per model: the fit's wall time, the sum of its
iterations (``history_[i]["seconds"]``) and the difference, the time outside the
iterations: reading the ids, placing the ratings, drawing the start, the finish.

Run: ``python -m benchmarks.bench_setup_scale [--ratings 20000000] [--memory-limit 8GiB]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MFDASK_NO_PROGRESS", "1")

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import print_table, write_results


def _fit(model: Any, path: str) -> dict[str, Any]:
    started = time.perf_counter()
    model.fit(path)
    seconds = time.perf_counter() - started
    its = [h["seconds"] for h in model.history_]
    return {
        "fit s": round(seconds, 1),
        "iterations s": round(sum(its), 1),
        "per iteration s": round(sum(its) / len(its), 2),
        "outside iterations s": round(seconds - sum(its), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=20_000_000)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--memory-limit", default="8GiB")
    parser.add_argument("--models", default="als,bpr")
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    from mfdask import ALS, BPR
    from mfdask.data.synth import synthesize

    make = {
        "als": lambda it: ALS(
            factors=64, iterations=it, random_state=0, calculate_training_loss=False
        ),
        "bpr": lambda it: BPR(factors=64, epochs=it, random_state=0),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-setup-") as tmp:
        started = time.perf_counter()
        big = synthesize(Path(tmp) / "big", n_ratings=args.ratings, seed=0)
        small = synthesize(Path(tmp) / "small", n_ratings=100_000, seed=1)
        made = time.perf_counter() - started
        print(f"synthetic data: {args.ratings:,} ratings in {made:.0f} s", flush=True)
        load_before = os.getloadavg()
        with LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit=args.memory_limit,
            dashboard_address=":0",
        ) as cluster:
            with Client(cluster, set_as_default=True):
                for name in args.models.split(","):
                    make[name](1).fit(str(small.path))
                for name in args.models.split(","):
                    n = args.iterations if name == "als" else args.epochs
                    row = {"model": name, "iterations": n, **_fit(make[name](n), str(big.path))}
                    rows.append(row)
                    print(row, flush=True)
        load_after = os.getloadavg()
    title = (
        f"{args.ratings:,} synthetic ratings, 64 factors, 2 workers x {args.memory_limit}; "
        f"load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print_table(rows, title)
    write_results("setup_scale", {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
