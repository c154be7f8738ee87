"""Ingest time and peak memory of the whole process tree (client + Dask workers).

Runs ``mfdask.data.ingest.ingest`` on a ``LocalCluster`` of worker processes (the way
``mfdask ingest`` runs) for ML-1M when ``$MFDASK_DATA`` has it, and for a generated CSV
of ``--rows`` ratings (``user,item,rating,timestamp``; 100 ratings per user, distinct
pairs, written in chunks with numpy/pandas). Memory is the summed RSS of this process
and all its descendants, sampled every 50 ms by a thread.

    .venv/bin/python benchmarks/bench_ingest.py --rows 10000000 --workdir /tmp/bench
    .venv/bin/python benchmarks/bench_ingest.py --rows 100000000 --skip-ml1m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil


class PeakRSS:
    """Sample the RSS of this process tree in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def write_csv(path: Path, n_rows: int, n_items: int = 50_000, chunk: int = 2_000_000) -> None:
    """``n_rows`` distinct (user, item) ratings, 100 per user, as CSV with a header."""
    with open(path, "w") as f:
        f.write("user_id,item_id,rating,timestamp\n")
        for start in range(0, n_rows, chunk):
            k = np.arange(start, min(start + chunk, n_rows), dtype=np.int64)
            user = k // 100
            # 7919 is prime and |a - b| < 100 never divides n_items: items distinct per user
            item = ((k % 100) * 7919 + user * 31) % n_items
            rating = 1 + (user * 7 + item) % 5
            ts = 9 * 10**8 + k
            pd.DataFrame({"u": user, "i": item, "r": rating, "t": ts}).to_csv(
                f, header=False, index=False
            )


def run(name: str, src: Path, dest: Path, workers: int, **kwargs) -> dict:
    from mfdask.data.ingest import ingest
    from mfdask.engine.cluster import ClusterSpec, session

    shutil.rmtree(dest, ignore_errors=True)
    with PeakRSS() as mem:
        with session(ClusterSpec(n_workers=workers, threads_per_worker=1)):
            base = mem._sample()
            t0 = time.perf_counter()
            ds = ingest(src, dest, **kwargs)
            seconds = time.perf_counter() - t0
    result = {
        "name": name,
        "rows": ds.n_ratings,
        "users": ds.n_users,
        "items": ds.n_items,
        "source_bytes": sum(f["bytes"] for f in ds.manifest["source"]["files"]),
        "seconds": round(seconds, 2),
        "rows_per_second": round(ds.n_ratings / seconds),
        "peak_rss_tree_mib": round(mem.peak / 2**20),
        "rss_tree_after_cluster_start_mib": round(base / 2**20),
        "workers": workers,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workdir", default="/tmp/mfdask-bench-ingest")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-ml1m", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated CSV")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    data = os.environ.get("MFDASK_DATA")
    if not args.skip_ml1m and data and (Path(data) / "ml-1m" / "ratings.dat").is_file():
        results.append(run("ml-1m", Path(data) / "ml-1m", work / "ml1m", args.workers))
    if args.rows:
        csv = work / f"synthetic-{args.rows}.csv"
        if not csv.exists():
            t0 = time.perf_counter()
            write_csv(csv, args.rows)
            print(
                f"wrote {csv} ({csv.stat().st_size / 2**20:.0f} MiB) in "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        results.append(run(f"csv-{args.rows}", csv, work / "csv", args.workers))
        shutil.rmtree(work / "csv", ignore_errors=True)
        if not args.keep:
            csv.unlink()
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
