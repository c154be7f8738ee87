"""Many users with few events each: ALS on a 2-worker cluster against implicit, with memory.

``python -m benchmarks wide`` (options: ``--ratings 20000000 --users 10000000 --items 100000
--iterations 3 --phases gen,mfdask,implicit --scratch DIR --recommend-all --workers 2
--model als``; ``--phases recommend`` runs ``recommend_all`` of the model the ``mfdask``
phase saved in ``DIR``, on a new cluster, as a batch job would, with ``--recommend-method``
and ``--ann-index``).

The shape of e-commerce data, where per-user state dominates: by default 20M ratings over
10M users and 100k items, half of them positives (rating >= 4), user activity and item
popularity both power laws. The generator (:func:`generate`) writes Parquet files of
``user_id, item_id, rating`` in original ids, chunk by chunk, without duplicate pairs.
Then, each in a fresh process so that peak memory is its own:

- ``mfdask``: a 2-worker, 1-thread ``LocalCluster`` (worker processes), ``dd.read_parquet``
  and ``ALS(confidence="implicit", regularization_scaling="none", preference="binary",
  regularization=100, alpha=10)`` - implicit's parametrisation - then ``save`` (and
  ``recommend_all`` with ``--recommend-all``). Sampled every 0.1 s: the client process's
  RSS and each worker's.
- ``implicit``: the CSR of the positives built from the same files (timed apart), then
  ``AlternatingLeastSquares`` with the same parameters and 2 threads.

Printed side by side: seconds per iteration, the fit, the time outside the iterations,
and peak RSS. The machine is shared: only ratios within one run count.

``--model bpr`` fits ``BPR(factors=64, epochs=--iterations, random_state=0)`` instead of
ALS in the mfdask phase (the DSGD engine at the same shape; use ``--phases gen,mfdask``:
implicit's phase is its ALS, no comparison for BPR).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import print_table, write_results

CHUNK = 2_000_000


def power_law_ranks(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``size`` draws of ranks ``0..n-1`` with ``P(r) ~ (r + 1)^-exponent`` (0 < exponent < 1).

    Inverse CDF of the continuous power law on ``[1, n + 1)``.
    """
    a = 1.0 - exponent
    u = rng.random(size)
    x = ((n + 1) ** a - 1.0) * u + 1.0
    return np.minimum((x ** (1.0 / a)).astype(np.int64) - 1, n - 1)


def generate(
    dest: Path, n_ratings: int, n_users: int, n_items: int, seed: int = 0
) -> dict[str, Any]:
    """Write ``dest/part-K.parquet`` chunk by chunk; return counts.

    Chunk ``c`` of ``C`` holds the users with ``rank % C == c``, so that duplicates are
    removed within a chunk and no pair repeats across chunks. Ids are scrambled (an affine
    map) so that original ids carry no order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    n_chunks = max(1, -(-n_ratings // CHUNK))
    rng = np.random.default_rng(seed)
    total = positives = 0
    for c in range(n_chunks):
        want = min(CHUNK, n_ratings - c * CHUNK)
        # Users of this chunk: power-law ranks mapped onto the chunk's residue class.
        per_chunk = -(-n_users // n_chunks)
        ranks = power_law_ranks(rng, per_chunk, int(want * 1.05), 0.6) * n_chunks + c
        ranks = ranks[ranks < n_users]
        items = power_law_ranks(rng, n_items, len(ranks), 0.9)
        key = np.unique(ranks * n_items + items)[:want]
        users, items = key // n_items, key % n_items
        positive = rng.random(len(key)) < 0.5
        rating = np.where(
            positive, rng.integers(4, 6, len(key)), rng.integers(1, 4, len(key))
        ).astype(np.float32)
        table = pa.table(
            {
                "user_id": pa.array(users * 7919 + 13),
                "item_id": pa.array(items * 31 + 5),
                "rating": pa.array(rating),
            }
        )
        pq.write_table(table, dest / f"part-{c:04d}.parquet")
        total += len(key)
        positives += int((rating >= 4).sum())
    return {"ratings": total, "positives": positives, "files": n_chunks}


class RSSMonitor:
    """Peak RSS of this process and of the Dask worker processes, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.client_peak = 0
        self.worker_peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                self.client_peak = max(self.client_peak, me.memory_info().rss)
                for child in me.children(recursive=True):
                    try:
                        rss = child.memory_info().rss
                    except psutil.Error:
                        continue
                    self.worker_peaks[child.pid] = max(self.worker_peaks.get(child.pid, 0), rss)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSMonitor:
        self._cpu_start = process_tree_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_seconds = process_tree_cpu() - self._cpu_start


def process_tree_cpu() -> float:
    """User + system CPU seconds of this process and its live children (the workers).

    CPU time is what the comparison needs on a shared machine: wall time grows with
    the other processes' load, CPU time much less.
    """
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


PARAMS = {
    "factors": 64,
    "regularization": 100.0,
    "alpha": 10.0,
    "confidence": "implicit",
    "regularization_scaling": "none",
    "preference": "binary",
}


def run_mfdask(
    data: Path,
    scratch: Path,
    iterations: int,
    memory_limit: str,
    recommend: bool,
    n_workers: int = 2,
    n_blocks: int | None = None,
    model_name: str = "als",
    recommend_method: str = "exact",
) -> dict[str, Any]:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    from mfdask import ALS, BPR

    out: dict[str, Any] = {}
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        memory_limit=memory_limit,
        dashboard_address=":0",
    )
    client = Client(cluster)
    try:
        # Compile the kernels in the workers outside the timings (a warm cluster).
        import pandas as pd

        warm = pd.DataFrame({"user_id": [1, 2, 2], "item_id": [1, 1, 2], "rating": [5.0] * 3})
        model: Any
        if model_name == "bpr":  # a user needs an unseen item to draw as a negative
            users = np.repeat(np.arange(20), 3)
            warm = pd.DataFrame(
                {"user_id": users, "item_id": (users + np.tile([0, 1, 2], 20)) % 10}
            ).assign(rating=5.0)
            BPR(factors=4, epochs=1).fit(warm)
        else:
            ALS(factors=4, iterations=1).fit(warm)
        pids_before = set(client.run(os.getpid).values())
        phase_spill: dict[str, float] = {}
        with RSSMonitor() as mon, ManagedMonitor(client) as managed:
            started = time.perf_counter()
            cpu_started = process_tree_cpu()
            if model_name == "bpr":
                model = BPR(
                    factors=PARAMS["factors"], epochs=iterations, random_state=0, n_blocks=n_blocks
                )
            else:
                model = ALS(
                    iterations=iterations,
                    random_state=0,
                    calculate_training_loss=False,
                    n_blocks=n_blocks,
                    **PARAMS,
                )
            model.fit(dd.read_parquet(str(data)))
            out["fit s"] = time.perf_counter() - started
            out["fit cpu s"] = process_tree_cpu() - cpu_started
            seconds = [h["seconds"] for h in model.history_]
            out["s/iter"] = float(np.median(seconds))
            out["outside iterations s"] = out["fit s"] - sum(seconds)
            out["distributed"] = model.distributed
            out["traffic"] = model.metrics_.get("traffic")
            phase_spill["fit"] = _spilled_gib(client)
            started = time.perf_counter()
            model.save(scratch / "model", overwrite=True)
            out["save s"] = time.perf_counter() - started
            phase_spill["save"] = _spilled_gib(client) - sum(phase_spill.values())
            if recommend:
                started = time.perf_counter()
                recs = model.recommend_all(
                    n=10, path=scratch / "recs", overwrite=True, method=recommend_method
                )
                out["recommend method"] = recommend_method
                out["recommend_all s"] = time.perf_counter() - started
                out["recommendations"] = recs.rows
                phase_spill["recommend_all"] = _spilled_gib(client) - sum(phase_spill.values())
        out.update(_memory_summary(client, mon, managed, pids_before))
        out["spilled GiB by phase"] = {k: round(v, 3) for k, v in phase_spill.items()}
    finally:
        client.close()
        cluster.close()
    return out


def run_recommend(
    scratch: Path, memory_limit: str, n_workers: int, method: str, ann_index: str | None
) -> dict[str, Any]:
    """``recommend_all`` of the model the ``mfdask`` phase saved, as a batch job runs it:
    a new cluster, ``load_model`` (each worker reads its factor and seen blocks), every
    user's top 10 written as Parquet; memory sampled as in the ``mfdask`` phase."""
    from distributed import Client, LocalCluster

    from mfdask import load_model

    out: dict[str, Any] = {}
    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=":0"
    )
    client = Client(cluster)
    try:
        pids_before = set(client.run(os.getpid).values())
        with RSSMonitor() as mon, ManagedMonitor(client) as managed:
            started = time.perf_counter()
            model = load_model(scratch / "model")
            out["load s"] = time.perf_counter() - started
            out["distributed"] = model.distributed
            options = {} if ann_index is None else {"index": ann_index}
            started = time.perf_counter()
            recs = model.recommend_all(
                n=10, path=scratch / "recs", overwrite=True, method=method, **options
            )
            out["recommend method"] = method if ann_index is None else f"{method} ({ann_index})"
            out["recommend_all s"] = time.perf_counter() - started
            out["recommendations"] = recs.rows
            out["popularity fallback users"] = recs.manifest.get("popularity_fallback")
        out.update(_memory_summary(client, mon, managed, pids_before))
    finally:
        client.close()
        cluster.close()
    return out


def _memory_summary(
    client: Any, mon: RSSMonitor, managed: ManagedMonitor, pids_before: set[int]
) -> dict[str, Any]:
    """What a phase's memory came to: spill, each worker's peak, restarts, the client."""
    return {
        "spilled GiB": round(_spilled_gib(client), 3),
        "managed peak GiB": managed.peaks(),
        # A worker restarted by its nanny (memory limit) is a new process.
        "worker restarts": len(set(client.run(os.getpid).values()) - pids_before),
        "client peak GiB": mon.client_peak / 2**30,
        "worker peak GiB": sorted(round(v / 2**30, 2) for v in mon.worker_peaks.values())[-2:],
    }


def _spilled_gib(client: Any) -> float:
    """GiB the workers ever wrote to their spill directories (0 when nothing spilled)."""
    return sum(client.run(_bytes_spilled).values()) / 2**30


class ManagedMonitor:
    """Each worker's memory as Dask sees it, polled, at that worker's highest process RSS.

    Dask spills when a worker's process memory passes ``spill`` (0.7 of its limit) or its
    managed memory passes ``target`` (0.6). Polled every ``interval`` seconds with
    ``client.run``; at each worker's highest RSS it keeps the managed bytes in memory and
    on disk by key prefix (the task name before its token), the unmanaged rest and the
    tasks executing, so that a spill can be traced to what caused it.
    """

    def __init__(self, client: Any, interval: float = 1.0) -> None:
        self.client = client
        self.interval = interval
        self._started = time.perf_counter()
        self._peaks: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                seen = self.client.run(_memory_by_prefix)
            except Exception:  # a worker restarting: try again at the next poll
                seen = {}
            for address, sample in seen.items():
                if sample["rss GiB"] > self._peaks.get(address, {"rss GiB": -1.0})["rss GiB"]:
                    sample["at s"] = round(time.perf_counter() - self._started, 1)
                    self._peaks[address] = sample
            self._stop.wait(self.interval)

    def __enter__(self) -> ManagedMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self) -> list[dict[str, Any]]:
        """Per worker, at its RSS peak: GiB in all, managed in memory, spilled, top keys."""
        return list(self._peaks.values())


def _memory_by_prefix(dask_worker: Any) -> dict[str, Any]:
    """This worker's RSS and managed memory (GiB), the largest key prefixes, what runs."""
    from dask.utils import key_split

    data = dask_worker.data
    fast = getattr(data, "fast", data)
    slow = getattr(data, "slow", None)
    weights = getattr(fast, "weights", {})
    spilled = getattr(slow, "weight_by_key", {}) if slow is not None else {}
    in_memory: dict[str, float] = {}
    on_disk: dict[str, float] = {}
    for key in list(fast.keys()):
        name = key_split(key)
        in_memory[name] = in_memory.get(name, 0.0) + float(weights.get(key, 0)) / 2**30
    for key, size in list(spilled.items()):
        name = key_split(key)
        on_disk[name] = on_disk.get(name, 0.0) + float(size.disk) / 2**30

    def top(sizes: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 3) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:4]}

    rss = dask_worker.monitor.get_process_memory() / 2**30
    managed = sum(in_memory.values())
    return {
        "rss GiB": round(rss, 3),
        "managed GiB": round(managed, 3),
        "unmanaged GiB": round(rss - managed, 3),
        "in memory": top(in_memory),
        "spilled": top(on_disk),
        "executing": sorted({key_split(ts.key) for ts in dask_worker.state.executing}),
    }


def _bytes_spilled(dask_worker: Any) -> float:
    """Bytes this worker ever wrote to its spill directory (0 when nothing spilled)."""
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    return float(metrics.get(("disk-write", "bytes"), 0.0))


def run_implicit(data: Path, iterations: int) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    out: dict[str, Any] = {}
    started = time.perf_counter()
    table = pq.read_table(data)
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    keep = table.column("rating").to_numpy() >= 4
    uniq_u, u = np.unique(users, return_inverse=True)
    uniq_i, i = np.unique(items, return_inverse=True)
    del table, users, items
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (u[keep], i[keep])),
        shape=(len(uniq_u), len(uniq_i)),
    )
    out["csr s"] = time.perf_counter() - started
    model = AlternatingLeastSquares(
        factors=PARAMS["factors"],
        regularization=PARAMS["regularization"],
        alpha=PARAMS["alpha"],
        iterations=iterations,
        use_cg=True,
        num_threads=2,
        random_state=0,
    )
    import psutil

    started = time.perf_counter()
    cpu_started = process_tree_cpu()
    model.fit(matrix, show_progress=False)
    out["fit s"] = time.perf_counter() - started
    out["fit cpu s"] = process_tree_cpu() - cpu_started
    out["s/iter"] = out["fit s"] / iterations
    out["peak GiB"] = psutil.Process().memory_info().rss / 2**30
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks wide", description=__doc__)
    parser.add_argument("--ratings", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--memory-limit", default="8GiB")
    parser.add_argument("--workers", type=int, default=2, help="mfdask's worker processes")
    parser.add_argument("--n-blocks", type=int, default=None, help="ALS blocks per side")
    parser.add_argument(
        "--model", choices=("als", "bpr"), default="als", help="the model of the mfdask phase"
    )
    parser.add_argument("--phases", default="gen,mfdask,implicit")
    parser.add_argument(
        "--recommend-all",
        action="store_true",
        help="also time the exact recommend_all of every user's top 10 (users x items work)",
    )
    parser.add_argument(
        "--recommend-method",
        default="exact",
        choices=("exact", "ann", "auto"),
        help="recommend_all's method (ann needs mfdask[ann])",
    )
    parser.add_argument(
        "--ann-index",
        default=None,
        choices=("ivf", "hnsw", "flat"),
        help="the ANN index of recommend_all (default: mfdask's, ivf)",
    )
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--phase-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="mfdask-bench-wide-"))
    data = scratch / f"ratings-{args.ratings}-{args.users}-{args.items}"
    if args.phase_only:  # a child process: one phase, JSON on stdout
        if args.phase_only == "mfdask":
            result = run_mfdask(
                data,
                scratch,
                args.iterations,
                args.memory_limit,
                args.recommend_all,
                args.workers,
                args.n_blocks,
                args.model,
                args.recommend_method,
            )
        elif args.phase_only == "recommend":
            result = run_recommend(
                scratch, args.memory_limit, args.workers, args.recommend_method, args.ann_index
            )
        else:
            result = run_implicit(data, args.iterations)
        print("RESULT " + json.dumps(result))
        return
    phases = args.phases.split(",")
    shape: dict[str, Any] = {}
    if "gen" in phases or not data.exists():
        started = time.perf_counter()
        shape = generate(data, args.ratings, args.users, args.items)
        shape["generate s"] = time.perf_counter() - started
        print(f"generated {shape}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for phase in ("mfdask", "recommend", "implicit"):
        if phase not in phases:
            continue
        cmd = [sys.executable, "-m", "benchmarks.bench_wide", *sys.argv[1:]]
        cmd += ["--scratch", str(scratch), "--phase-only", phase]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"phase {phase} failed")
        results[phase] = json.loads(line[0][len("RESULT ") :])
        results[phase]["load after"] = round(os.getloadavg()[0], 1)
        print(phase, results[phase], flush=True)
    rows = [
        {"": name, **{k: v for k, v in r.items() if k != "traffic"}} for name, r in results.items()
    ]
    if "mfdask" in results and "implicit" in results:
        m, i = results["mfdask"], results["implicit"]
        rows.append(
            {
                "": "mfdask / implicit",
                "s/iter": m["s/iter"] / i["s/iter"],
                "fit s": m["fit s"] / i["fit s"],
                "csr s": m["fit s"] / (i["fit s"] + i["csr s"]),
                "fit cpu s": m["fit cpu s"] / i["fit cpu s"],
            }
        )
    title = f"{args.ratings:,} ratings, {args.users:,} users, {args.items:,} items"
    print_table(rows, f"{args.model.upper()}, {title}")
    write_results("wide", {"args": vars(args), "shape": shape, "results": results})


if __name__ == "__main__":
    main()
