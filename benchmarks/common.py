"""What every benchmark shares: data paths, a peak-memory monitor, result tables and JSON.

Figures are reported as ratios side by side (against the kernel alone, against peers,
across sizes) because the machine they run on is shared and noisy.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(os.environ.get("MFDASK_BENCH_OUT", "bench-out"))


def data_root() -> Path | None:
    """``$MFDASK_DATA`` if it holds the MovieLens files, else None (benchmark is skipped)."""
    root = os.environ.get("MFDASK_DATA")
    return Path(root) if root and Path(root).is_dir() else None


def require_movielens(name: str = "ml-1m") -> Path:
    root = data_root()
    if root is None or not (root / name).is_dir():
        raise SystemExit(f"skipped: set MFDASK_DATA to a folder holding {name}/")
    return root / name


@dataclass
class PeakMemory:
    """Peak resident memory (bytes) of this process and all its children, sampled."""

    interval: float = 0.05
    peak_bytes: int = 0
    peak_by_pid: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            try:
                procs = [me, *me.children(recursive=True)]
            except psutil.Error:
                procs = [me]
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peak_by_pid[p.pid] = max(self.peak_by_pid.get(p.pid, 0), rss)
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


@contextmanager
def peak_memory(interval: float = 0.05) -> Iterator[PeakMemory]:
    """Sample the RSS of the whole process tree in a thread while the block runs."""
    monitor = PeakMemory(interval=interval)
    thread = threading.Thread(target=monitor._sample, daemon=True)
    thread.start()
    try:
        yield monitor
    finally:
        monitor._stop.set()
        thread.join()


@contextmanager
def timed(results: dict[str, Any], key: str) -> Iterator[None]:
    """Store the wall seconds of the block under ``results[key]``."""
    start = time.perf_counter()
    yield
    results[key] = time.perf_counter() - start


def print_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """Print rows (dicts with the same keys) as an aligned text table and return it."""
    if not rows:
        return ""
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return "" if value is None else str(value)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench-out/NAME.json`` (with the machine's CPU count and the time)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    payload = {"benchmark": name, "cpus": os.cpu_count(), "when": time.strftime("%F %T"), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
