"""Fetch, ingest and split in one go: from a MovieLens name or raw files to train/test.

SOURCE is a MovieLens release (ml-100k, ml-1m, ml-latest-small, ...: looked up in
--data, $MFDASK_DATA and ~/.cache/mfdask, downloaded if absent), a path to raw rating
files (MovieLens .dat/.csv, CSV, TSV, Parquet), or a canonical dataset (then only the
split runs). DEST receives (each part written atomically; --overwrite replaces them):

  DEST/dataset/        the canonical dataset (unless SOURCE already is one)
  DEST/split/train/    the training split   } same id maps: a model trained on train
  DEST/split/test/     the test split       } scores test

  mfdask prepare ml-1m out/prepared --method random --fraction 0.2 --seed 0
  mfdask train --model als --train out/prepared/split/train --output out/models/als
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mfdask.data.schema import DEFAULT_POSITIVE_THRESHOLD
from mfdask.jobs._common import (
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "fetch + ingest + split in one go (MovieLens name, raw files or a dataset)"

log = logging.getLogger("mfdask")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mfdask.data.split import SPLIT_METHODS

    parser.add_argument("source", metavar="SOURCE", help="ml-1m (etc.), raw files, or a dataset")
    parser.add_argument("dest", metavar="DEST", help="output directory (dataset/, split/)")
    parser.add_argument("--data", metavar="DIR", help="where MovieLens copies live / go")
    parser.add_argument("--method", choices=SPLIT_METHODS, default="random", help="(random)")
    parser.add_argument("--fraction", type=float, default=0.2, help="test share (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (0)")
    parser.add_argument(
        "--positive-threshold",
        type=float,
        default=DEFAULT_POSITIVE_THRESHOLD,
        help=f"user_holdout: smallest positive rating ({DEFAULT_POSITIVE_THRESHOLD:g})",
    )
    parser.add_argument(
        "--duplicates",
        choices=("error", "last", "mean"),
        default="error",
        help="repeated (user, item) ratings: stop, keep the last, or average (error)",
    )
    parser.add_argument(
        "--on-bad-rows",
        choices=("error", "skip"),
        default="error",
        help="stop at a bad row, or quarantine it and go on (error)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    add_cluster_arguments(parser)


def locate(source: str, data: str | None) -> Path:
    """A MovieLens name -> its local directory (fetched if needed); a path -> itself."""
    from mfdask.data.fetch import ARCHIVES, fetch, find_movielens

    if source in ARCHIVES and not Path(source).exists():
        found = find_movielens(source, data)
        if found is not None:
            return found
        log.info("%s is not available locally: downloading it", source)
        return fetch(source, data)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"source {source} does not exist: give a path to rating files or one of "
            f"{', '.join(ARCHIVES)}"
        )
    return path


def run(args: argparse.Namespace) -> int:
    from mfdask.data.dataset import is_dataset, open_dataset
    from mfdask.data.ingest import ingest
    from mfdask.data.split import split_dataset
    from mfdask.engine.cluster import session
    from mfdask.engine.topk import check_output_dir

    dest = check_output_dir(args.dest, "the prepared data", args.overwrite)
    source = locate(args.source, args.data)
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        dest.mkdir(parents=True, exist_ok=True)
        if is_dataset(source):
            dataset = open_dataset(source)
            log.info("%s is already a canonical dataset: splitting it", source)
        else:
            log.info("ingesting %s", source)
            dataset = ingest(
                source,
                dest / "dataset",
                duplicates=args.duplicates,
                on_bad_rows=args.on_bad_rows,
                overwrite=args.overwrite,
            )
        train, test = split_dataset(
            dataset,
            dest / "split",
            method=args.method,
            fraction=args.fraction,
            seed=args.seed,
            positive_threshold=args.positive_threshold,
            overwrite=args.overwrite,
        )
        counts = (dataset.n_ratings, train.n_ratings, test.n_ratings)
    print(
        f"{counts[0]:,} ratings, {dataset.n_users:,} users, {dataset.n_items:,} items from "
        f"{source}; {args.method} split (fraction {args.fraction:g}, seed {args.seed}): "
        f"train {counts[1]:,}, test {counts[2]:,}"
    )
    for name in ("dataset", "split/train", "split/test"):
        if (dest / name).exists():
            print(f"  {dest / name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.prepare``: the arguments of ``mfdask prepare``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
