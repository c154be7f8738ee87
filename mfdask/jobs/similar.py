"""The N most similar items to every item of a saved model, written as Parquet.

Similarity is the cosine of the item factors (biases left out), multiplied by
n/(n + BETA) for a candidate with n training ratings (--shrinkage BETA, default 10; 0 for
the plain cosine), so that items rated by a handful of users do not crowd the lists.
Each block of items is scored on a worker against all items (broadcast once, unit
length); the item itself is excluded. Output: OUTPUT/item_block=K/part-0.parquet with
item_id, rank (1..N), similar_item_id, score, and OUTPUT/_manifest.json; atomic, kept
unless --overwrite.

  mfdask similar out/models/als out/similar/als -n 10

--method ann searches an index over the unit item vectors instead (needs mfdask[ann]);
--ann NAME=VALUE sets it, as for `mfdask recommend`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mfdask.jobs._common import (
    JobError,
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)
from mfdask.jobs.recommend import add_method_arguments, ann_options, load_checked, split_ids

HELP = "top-N similar items for every item of a saved model -> Parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model directory from `mfdask train`")
    parser.add_argument("output", metavar="OUTPUT", help="output directory (Parquet)")
    parser.add_argument("-n", "--n", type=int, default=10, help="similar items per item (10)")
    parser.add_argument(
        "--items", metavar="ID,ID,...", help="only these items (original ids, comma-separated)"
    )
    parser.add_argument("--blocks", type=int, default=None, help="output partitions (auto)")
    parser.add_argument(
        "--shrinkage",
        type=float,
        default=None,
        metavar="BETA",
        help="multiply a candidate's cosine by n/(n+BETA), n its training ratings "
        "(default: the model's, 10; 0: plain cosine)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    add_method_arguments(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mfdask.engine.cluster import session
    from mfdask.engine.topk import check_output_dir

    if args.n < 1:
        raise JobError(f"-n must be a positive integer, got {args.n}")
    options = ann_options(args)
    output = check_output_dir(args.output, "similar items", args.overwrite)
    model = load_checked(args.model)
    items = split_ids(args.items)
    if items is not None:
        model.item_index(items)
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        out = model.similar_items_all(
            args.n,
            output,
            items=items,
            overwrite=args.overwrite,
            n_blocks=args.blocks,
            method=args.method,
            shrinkage=args.shrinkage,
            **options,
        )
    print(
        f"{out.rows:,} similar items for {out.manifest['queries']:,} items "
        f"({type(model).__name__}, n={args.n}, {out.manifest['method']}) in {out.n_blocks} files, "
        f"{out.seconds:.1f} s: {out.path}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.similar``: the arguments of ``mfdask similar``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
