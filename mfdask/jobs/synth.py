"""Generate a MovieLens-shaped synthetic dataset of any size (1e4 to 1e9 ratings).

Power-law user activity and item popularity, a planted low-rank preference whose items
fall into clusters (items.parquet has a `cluster` column and titles such as
"Cluster 07 item 123", so similar-item quality can be checked), ratings 1-5 with noise,
timestamps. Written partition by partition with bounded memory; the same --seed and
sizes give the same data on any cluster.

  mfdask synth data/synth-10m --ratings 10000000
  mfdask synth data/synth-1m --ratings 1e6 --users 6040 --items 3706 --clusters 18
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mfdask.jobs._common import (
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "generate a synthetic MovieLens-shaped dataset with planted item clusters"


def _count(text: str) -> int:
    """An integer count; accepts 1e6 and 1_000_000 as well as 1000000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", metavar="DEST", help="output dataset directory")
    parser.add_argument(
        "--ratings", type=_count, required=True, metavar="N", help="number of ratings (e.g. 1e7)"
    )
    parser.add_argument("--users", type=_count, default=None, help="default: MovieLens-like")
    parser.add_argument("--items", type=_count, default=None, help="default: MovieLens-like")
    parser.add_argument("--factors", type=int, default=8, help="rank of the planted model (8)")
    parser.add_argument("--clusters", type=int, default=20, help="item clusters (20)")
    parser.add_argument(
        "--noise", type=float, default=0.75, help="rating noise in stars, before rounding (0.75)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="tasks and user blocks (default: one per 2M ratings, at least 8)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DEST")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mfdask.data.synth import synthesize
    from mfdask.engine.cluster import session

    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        ds = synthesize(
            args.dest,
            n_ratings=args.ratings,
            n_users=args.users,
            n_items=args.items,
            factors=args.factors,
            n_clusters=args.clusters,
            noise=args.noise,
            seed=args.seed,
            n_partitions=args.partitions,
            overwrite=args.overwrite,
        )
    m = ds.manifest
    print(
        f"{ds.path}: {ds.n_ratings:,} ratings, {ds.n_users:,} users, {ds.n_items:,} items, "
        f"mean rating {m['rating_mean']:.2f}, {m['n_user_blocks']} user blocks"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.synth``: the arguments of ``mfdask synth``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
