"""Split a canonical dataset into DEST/train and DEST/test.

Methods (deterministic by --seed, whatever the partitioning or the cluster):
  random        each rating goes to test with probability --fraction (explicit evaluation)
  user_holdout  per user, --fraction of the user's positives (rating >= --positive-threshold)
                go to test; users with fewer than --min-positives positives stay in train
  last_n        per user, the --n-last latest ratings by timestamp go to test

Both halves keep the input's id maps, so a model trained on train scores test. Split
train again for a validation set:

  mfdask split data/ml-1m data/ml-1m-split --method user_holdout --fraction 0.2
  mfdask split data/ml-1m-split/train data/ml-1m-tune --method user_holdout --seed 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mfdask.data.schema import DEFAULT_POSITIVE_THRESHOLD
from mfdask.jobs._common import (
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "split a dataset into train and test (random, per-user holdout, leave-last-N-out)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mfdask.data.split import DEFAULT_MIN_POSITIVES, SPLIT_METHODS

    parser.add_argument("dataset", metavar="DATASET", help="canonical dataset directory")
    parser.add_argument("dest", metavar="DEST", help="output directory (gets train/ and test/)")
    parser.add_argument("--method", choices=SPLIT_METHODS, default="random", help="default: random")
    parser.add_argument(
        "--fraction", type=float, default=0.2, help="test share for random/user_holdout (0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--positive-threshold",
        type=float,
        default=DEFAULT_POSITIVE_THRESHOLD,
        help=f"user_holdout: smallest positive rating ({DEFAULT_POSITIVE_THRESHOLD:g})",
    )
    parser.add_argument(
        "--min-positives",
        type=int,
        default=DEFAULT_MIN_POSITIVES,
        help=f"user_holdout: users with fewer positives stay in train ({DEFAULT_MIN_POSITIVES})",
    )
    parser.add_argument(
        "--n-last", type=int, default=1, help="last_n: latest ratings per user held out (1)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mfdask.data.split import split_dataset
    from mfdask.engine.cluster import session

    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        train, test = split_dataset(
            args.dataset,
            args.dest,
            method=args.method,
            fraction=args.fraction,
            seed=args.seed,
            positive_threshold=args.positive_threshold,
            min_positives=args.min_positives,
            n_last=args.n_last,
            overwrite=args.overwrite,
        )
    total = train.n_ratings + test.n_ratings
    for name, ds in (("train", train), ("test", test)):
        print(
            f"{name}: {ds.path}  {ds.n_ratings:,} ratings ({ds.n_ratings / total:.1%}), "
            f"{ds.manifest['users_with_ratings']:,} users, "
            f"{ds.manifest['items_with_ratings']:,} items"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.split``: the arguments of ``mfdask split``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
