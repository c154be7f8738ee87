"""Top-N recommendations for every user of a saved model, written as Parquet.

Each user block is scored on a worker (item factors are broadcast once), seen items are
filtered, and the worker writes its block: OUTPUT/user_block=K/part-0.parquet with
columns user_id, rank (1..N), item_id, score, in the original ids, plus
OUTPUT/_manifest.json with the row counts. The output appears atomically and an
existing one is kept unless --overwrite. It must be on storage the workers share.

Seen items come from the model's own record of its training data, or, with --seen, from
a dataset (usually the training split), read by the workers partition by partition; the
dataset's id maps must be the model's.

  mfdask recommend out/models/als out/recs/als -n 10 --seen out/prepared/split/train

Read it back with pandas (pd.read_parquet("out/recs/als")), pyarrow or DuckDB
(SELECT * FROM read_parquet('out/recs/als/**/*.parquet', hive_partitioning=true)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs._common import (
    JobError,
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "top-N items for every user of a saved model -> Parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model directory from `mfdask train`")
    parser.add_argument("output", metavar="OUTPUT", help="output directory (Parquet)")
    parser.add_argument("-n", "--n", type=int, default=10, help="items per user (10)")
    parser.add_argument(
        "--seen",
        metavar="DATASET",
        help="filter the items each user has in this dataset (default: the model's training items)",
    )
    parser.add_argument(
        "--no-filter-seen",
        dest="filter_seen",
        action="store_false",
        help="keep items the user has already seen",
    )
    parser.add_argument(
        "--users", metavar="ID,ID,...", help="only these users (original ids, comma-separated)"
    )
    parser.add_argument("--blocks", type=int, default=None, help="output partitions (auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    add_cluster_arguments(parser)


def load_checked(path: str, dataset: str | None = None):
    """``load_model`` with a clear message for a missing directory."""
    from mfdask.models.base import load_model

    if not Path(path).exists():
        raise JobError(f"model directory {path} does not exist: train one with `mfdask train`")
    return load_model(path, dataset=dataset)


def split_ids(text: str | None) -> list[str] | None:
    if text is None:
        return None
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids:
        raise JobError("--users/--items is empty: give comma-separated original ids")
    return ids


def run(args: argparse.Namespace) -> int:
    from mfdask.engine.cluster import session
    from mfdask.engine.topk import check_output_dir

    if args.n < 1:
        raise JobError(f"-n must be a positive integer, got {args.n}")
    output = check_output_dir(args.output, "recommendations", args.overwrite)
    model = load_checked(args.model, args.seen if args.filter_seen else None)
    users = split_ids(args.users)
    if users is not None:
        model.user_index(users)  # unknown ids fail here, before the cluster starts
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        out = model.recommend_all(
            args.n,
            output,
            seen=args.seen if args.filter_seen else None,
            users=users,
            overwrite=args.overwrite,
            filter_seen=args.filter_seen,
            n_blocks=args.blocks,
        )
    print(
        f"{out.rows:,} recommendations for {out.manifest['queries']:,} users "
        f"({type(model).__name__}, n={args.n}) in {out.n_blocks} files, "
        f"{out.seconds:.1f} s: {out.path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(standalone_main(sys.modules[__name__]))
