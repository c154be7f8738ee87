"""Download a MovieLens dataset from GroupLens into the local data cache.

The archive is checked against the MD5 GroupLens publishes and unpacked to
DIR/NAME/ (DIR: --data, else $MFDASK_DATA, else ~/.cache/mfdask). A dataset that is
already there is not downloaded again. Without a network the command fails within
seconds and says how to point at a local copy instead.

MovieLens data (c) GroupLens Research; see the README in each archive for its license.

Example:
    mfdask fetch ml-1m
    mfdask ingest ~/.cache/mfdask/ml-1m out/ml-1m
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mfdask.data.fetch import ARCHIVES, BASE_URL, DEFAULT_TIMEOUT, fetch
from mfdask.jobs._common import standalone_main

HELP = "download a MovieLens dataset (ml-100k, ml-1m, ...) or lastfm-2k into the data cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", choices=list(ARCHIVES), metavar="NAME", help=f"dataset: {', '.join(ARCHIVES)}"
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="data root (default: $MFDASK_DATA, else ~/.cache/mfdask)",
    )
    parser.add_argument(
        "--base-url",
        default=BASE_URL,
        help="where the archives are (a mirror of the GroupLens site)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="socket timeout in seconds"
    )


def run(args: argparse.Namespace) -> int:
    path = fetch(args.name, args.data, base_url=args.base_url, timeout=args.timeout)
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.fetch``: the arguments of ``mfdask fetch``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
