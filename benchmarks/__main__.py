"""Run every benchmark (``python -m benchmarks``), or those named (``python -m benchmarks als``).

Options after the names go to the benchmarks (``python -m benchmarks ingest --rows 1000000``).

Each ``benchmarks/bench_NAME.py`` has a ``main()`` that prints its side-by-side table and
writes ``bench-out/NAME.json``. Real-data benchmarks need ``MFDASK_DATA``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )
    # Names come first; options after them (``ingest --rows 100000000``) are passed on to
    # the benchmarks' own argument parsers through sys.argv.
    n_names = next((k for k, a in enumerate(argv) if a.startswith("-")), len(argv))
    sys.argv = [sys.argv[0], *argv[n_names:]]
    wanted = argv[:n_names] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {names}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"benchmarks.bench_{name}").main()
        except SystemExit as exc:
            if exc.code not in (None, 0):
                print(exc.code)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"--- {name}: {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
