"""Ingest time and peak memory of the whole process tree (client, scheduler, workers).

``python -m benchmarks ingest [--rows N] [--ml1m-repeats K] [--workdir DIR] [--keep]``

Runs :func:`mfdask.data.ingest.ingest` on a ``LocalCluster`` of 2 worker processes with
one thread each (the way ``mfdask ingest`` runs) for:

- ML-1M (``ratings.dat``, ``::``-separated) when ``$MFDASK_DATA`` has it, ``K`` times
  (the machine is shared: each time is listed, the best and the median are compared);
- a generated CSV of ``N`` ratings (``user_id,item_id,rating,timestamp`` with a header;
  default 10M, ``--rows 100000000`` for the 100M figure, ``--rows 0`` to skip). Users
  have 100 distinct items each; within each chunk of 1M lines the rows are shuffled, so
  a user's ratings are spread over the file as in a log ordered by time, not grouped.
  The text is built with numpy as fixed-width digit columns (27 bytes a line) and
  written chunk by chunk, before the measurement starts; it is kept with ``--keep``
  and reused when it exists.

Memory is the summed resident set of this process and all its descendants, sampled every
50 ms (:func:`benchmarks.common.peak_memory`), from before the cluster starts to after it
stops. Kernels are compiled (or loaded from numba's cache) by a tiny warm-up ingest
first, as they would be once per worker in any long-running cluster. The 1-, 5- and
15-minute load averages are printed with each run: other jobs share the two cores.
Results go to ``bench-out/ingest.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import data_root, peak_memory, print_table, write_results
from mfdask.data.ingest import ingest
from mfdask.engine.cluster import ClusterSpec, session

_CHUNK = 1_000_000
_USER0 = 1_000_000  # user ids have 7 digits
_ITEM0 = 10_000  # item ids have 5 digits
_N_ITEMS = 50_000
_TS0 = 1_000_000_000  # timestamps have 10 digits
_LINE = 27  # "uuuuuuu,iiiii,r,tttttttttt\n"


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """``(n, width)`` ASCII digits of non-negative integers of exactly ``width`` digits."""
    pow10 = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // pow10) % 10 + 48).astype(np.uint8)


def write_csv(path: Path, n_rows: int) -> None:
    """``n_rows`` distinct (user, item) ratings, 100 per user, as a CSV with a header.

    Line ``k`` (0-based, before shuffling within its chunk) is user ``k // 100``'s
    ``k % 100``-th rating, of item ``((k % 100) * 7919 + user * 31) % 50000``: 7919 is
    prime and no difference below 100 is a multiple of 50,000, so a user's items are
    distinct. Ratings are 1-5; timestamps increase down the file.
    """
    if n_rows > 100 * (10_000_000 - _USER0):
        raise ValueError(f"at most {100 * (10_000_000 - _USER0):,} rows (7-digit user ids)")
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(b"user_id,item_id,rating,timestamp\n")
        for chunk, start in enumerate(range(0, n_rows, _CHUNK)):
            k = np.arange(start, min(start + _CHUNK, n_rows), dtype=np.int64)
            k = k[np.random.default_rng(chunk).permutation(len(k))]
            user = k // 100
            item = ((k % 100) * 7919 + user * 31) % _N_ITEMS
            rating = 1 + (user * 7 + item) % 5
            line = np.empty((len(k), _LINE), dtype=np.uint8)
            line[:, 0:7] = _digits(_USER0 + user, 7)
            line[:, 7] = ord(",")
            line[:, 8:13] = _digits(_ITEM0 + item, 5)
            line[:, 13] = ord(",")
            line[:, 14] = 48 + rating
            line[:, 15] = ord(",")
            line[:, 16:26] = _digits(_TS0 + start + np.arange(len(k), dtype=np.int64), 10)
            line[:, 26] = ord("\n")
            line.tofile(f)
    os.replace(tmp, path)


def _warm_up(workdir: Path) -> None:
    src = workdir / "warm-up.csv"
    write_csv(src, 1_000)
    ingest(src, workdir / "warm-up", overwrite=True)
    shutil.rmtree(workdir / "warm-up", ignore_errors=True)
    src.unlink()


def run(name: str, src: Path, dest: Path, repeats: int = 1) -> list[dict[str, Any]]:
    """Ingest ``src`` ``repeats`` times on a fresh 2-worker cluster; one row per run."""
    rows = []
    shutil.rmtree(dest, ignore_errors=True)
    with peak_memory() as mem:
        with session(ClusterSpec(n_workers=2, threads_per_worker=1)):
            _warm_up(dest.parent)
            for k in range(repeats):
                load = os.getloadavg()
                start = time.perf_counter()
                ds = ingest(src, dest, overwrite=True)
                seconds = time.perf_counter() - start
                m = ds.manifest
                rows.append(
                    {
                        "input": name,
                        "run": k + 1,
                        "ratings": ds.n_ratings,
                        "users": ds.n_users,
                        "items": ds.n_items,
                        "source_MiB": sum(f["bytes"] for f in m["source"]["files"]) / 2**20,
                        "seconds": seconds,
                        "Mratings/s": ds.n_ratings / seconds / 1e6,
                        "buckets": m["ingest"]["user_buckets"],
                        "load_before": " ".join(f"{x:.1f}" for x in load),
                    }
                )
                print_table(rows[-1:])
    shutil.rmtree(dest, ignore_errors=True)
    peak = mem.peak_bytes / 2**30
    for row in rows:
        row["peak_tree_GiB"] = peak  # one monitor over all runs and the cluster's life
        row["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="generated CSV ratings")
    parser.add_argument("--ml1m-repeats", type=int, default=3, help="ML-1M runs (0: none)")
    parser.add_argument(
        "--workdir",
        default=os.environ.get("MFDASK_BENCH_TMP") or tempfile.gettempdir(),
        help="scratch directory for the CSV and the datasets",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated CSV")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    work = Path(args.workdir) / "mfdask-bench-ingest"
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    root = data_root()
    if args.ml1m_repeats and root is not None and (root / "ml-1m" / "ratings.dat").is_file():
        results += run("ml-1m", root / "ml-1m", work / "ml1m", args.ml1m_repeats)
        times = sorted(r["seconds"] for r in results)
        print(f"ML-1M: best {times[0]:.2f} s, median {times[len(times) // 2]:.2f} s")
    if args.rows:
        csv = work / f"synthetic-{args.rows}.csv"
        if not csv.exists():
            start = time.perf_counter()
            write_csv(csv, args.rows)
            print(
                f"wrote {csv} ({csv.stat().st_size / 2**30:.2f} GiB) in "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
        try:
            results += run(f"csv-{args.rows:,}", csv, work / "csv")
        finally:
            if not args.keep:
                csv.unlink()
    print_table(results, "ingest on a 2-worker LocalCluster (processes, 1 thread each)")
    write_results("ingest", {"runs": results})


if __name__ == "__main__":
    main()
