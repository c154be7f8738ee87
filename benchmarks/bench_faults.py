"""Faults on a real 2-worker cluster: time lost to a killed worker, time to resume, peak RSS.

Protocol: a synthetic dataset (``mfdask synth``, ``--ratings``), split 90/10 at random;
a ``dask scheduler`` and two ``dask worker`` processes (one thread, ``--memory-limit``
each) on 127.0.0.1. For ALS (``--iterations``) and SVD (as many epochs), checkpointing
every 2 iterations, each on a fresh cluster after a warm-up fit (numba loads its cache):

- ``clean``: an undisturbed fit; peak RSS of each worker process while it runs.
- ``worker killed``: worker 1 (nanny and worker) SIGKILLed after iteration 5; the fit
  reads the lost blocks again onto the surviving worker, restores the checkpoint after
  iteration 4 and replays. Reported: fit time, time lost against the clean fit, the
  recovery itself (rebuild + restore), and the held-out metric of both.
- ``resume``: a fit that crashes after iteration 7 (checkpoint after 6), then the same fit
  with ``resume=True`` on a new cluster: time of the resumed fit and its part before the
  first replayed iteration (data placement and restoring the checkpoint).

Run: ``python -m benchmarks.bench_faults [--ratings 2000000] [--memory-limit 3GiB]``.
The issue's target is 100M ratings; on a 2-core machine shared with other jobs, run the
largest size that finishes and say which it was.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import peak_memory, print_table, write_results
from mfdask import ALS, SVD
from mfdask.data.split import split_dataset
from mfdask.data.synth import synthesize
from mfdask.evaluate import evaluate_ranking, evaluate_rating

KILL_AFTER = 5
CRASH_AFTER = 7


class _Crash(Exception):
    pass


def _make(name: str, iterations: int, factors: int, **kw: Any):
    if name == "als":
        return ALS(factors=factors, iterations=iterations, random_state=0, checkpoint_every=2, **kw)
    return SVD(
        factors=factors,
        epochs=iterations,
        early_stopping_rounds=None,
        random_state=0,
        checkpoint_every=2,
        **kw,
    )


def _metric(model, test: Path) -> tuple[str, float]:
    if model.implicit:
        return "ndcg@10", float(evaluate_ranking(model, str(test), k=10)["ndcg"])
    return "rmse", float(evaluate_rating(model, str(test))["rmse"])


def _worker_pids(cluster) -> list[list[int]]:
    import psutil

    out = []
    for proc in cluster.workers:
        try:
            p = psutil.Process(proc.pid)
            out.append([p.pid, *(c.pid for c in p.children(recursive=True))])
        except psutil.Error:
            out.append([proc.pid])
    return out


def _fit(model, train: Path, **kw: Any) -> float:
    started = time.perf_counter()
    model.fit(str(train), **kw)
    return time.perf_counter() - started


def run_model(name: str, args, train: Path, test: Path, work: Path) -> list[dict[str, Any]]:
    from distributed import Client

    from tests.processes import process_cluster

    rows = []
    it, k = args.iterations, args.factors
    spec = {"n_workers": 2, "memory_limit": args.memory_limit}

    def warm(client_model_train):
        _make(name, 1, k).fit(str(client_model_train))

    # clean and killed fit on one cluster (the kill shrinks it to one worker)
    with process_cluster(work / f"logs-{name}-1", **spec) as cluster:
        with Client(cluster.address):
            warm(test)
            pids = _worker_pids(cluster)
            clean = _make(name, it, k)
            with peak_memory() as mem:
                clean_s = _fit(clean, train)
            rss = [max(mem.peak_by_pid.get(p, 0) for p in group) / 2**30 for group in pids]
            metric, clean_score = _metric(clean, test)

            def kill(record):
                if record["iteration"] == KILL_AFTER and not kill.done:
                    kill.done = True
                    cluster.kill_worker(1)

            kill.done = False
            hit = _make(name, it, k)
            hit_s = _fit(hit, train, callback=kill)
            _, hit_score = _metric(hit, test)
    event = hit.metrics_.get("recoveries", [{}])[0]
    rows.append(
        {
            "model": name,
            "run": "clean",
            "fit s": round(clean_s, 1),
            "s/iteration": round(clean_s / it, 2),
            metric: round(clean_score, 4),
            "peak RSS w0 GiB": round(rss[0], 2),
            "peak RSS w1 GiB": round(rss[1], 2),
        }
    )
    rows.append(
        {
            "model": name,
            "run": f"worker killed after it. {KILL_AFTER}",
            "fit s": round(hit_s, 1),
            "lost s": round(hit_s - clean_s, 1),
            "recovery s": round(event.get("seconds", float("nan")), 1),
            metric: round(hit_score, 4),
            "restarted from": event.get("restarted_from"),
        }
    )
    # crash, then resume on a new cluster
    ckpt = str(work / f"ckpt-{name}")
    with process_cluster(work / f"logs-{name}-2", **spec) as cluster:
        with Client(cluster.address):
            warm(test)

            def crash(record):
                if record["iteration"] == CRASH_AFTER:
                    raise _Crash

            try:
                _fit(_make(name, it, k, checkpoint_dir=ckpt), train, callback=crash)
            except _Crash:
                pass
    with process_cluster(work / f"logs-{name}-3", **spec) as cluster:
        with Client(cluster.address):
            warm(test)
            first: dict[str, float] = {}
            started = time.perf_counter()

            def mark(record):
                first.setdefault("at", time.perf_counter() - started - record["seconds"])

            resumed = _make(name, it, k, checkpoint_dir=ckpt)
            resume_s = _fit(resumed, train, resume=True, callback=mark)
            _, resumed_score = _metric(resumed, test)
    rows.append(
        {
            "model": name,
            "run": f"resumed from it. {resumed.metrics_['resumed_from']}",
            "fit s": round(resume_s, 1),
            "to first iteration s": round(first.get("at", float("nan")), 1),
            metric: round(resumed_score, 4),
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=2_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--memory-limit", default="3GiB")
    parser.add_argument("--models", default="als,svd")
    args = parser.parse_args(argv)
    if args.iterations <= CRASH_AFTER:
        parser.error(f"--iterations must exceed {CRASH_AFTER}")
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        ds = synthesize(work / "dataset", n_ratings=args.ratings, seed=0)
        train, test = split_dataset(ds, work / "split", method="random", fraction=0.1, seed=0)
        print(f"synthetic data: {args.ratings:,} ratings in {time.perf_counter() - started:.0f} s")
        rows = []
        for name in args.models.split(","):
            rows += run_model(name, args, train.path, test.path, work)
    title = (
        f"faults: {args.ratings:,} ratings, {args.factors} factors, {args.iterations} "
        f"iterations, 2 workers x {args.memory_limit}"
    )
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print_table([{c: row.get(c, "") for c in columns} for row in rows], title)
    write_results("faults", {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
