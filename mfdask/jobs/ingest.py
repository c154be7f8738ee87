"""Ingest raw ratings into a canonical mfdask dataset (Parquet, dense ids, manifest).

SRC is a MovieLens directory (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest-small;
detected from its files) or a CSV/TSV/Parquet file or directory of them with a column
mapping (--user-col etc.: names for files with a header, 0-based positions for files
without). DEST becomes a dataset directory: ratings/user_block=K/*.parquet
(user_idx:int32, item_idx:int32, rating:float32, timestamp:int64), users.parquet,
items.parquet (original id, dense index, title and genres when known) and manifest.json
(rows, users, items, rating histogram, source checksums).

Bad rows stop the job with the file, line number and problem, and nothing is written;
with --on-bad-rows skip they go to DEST/quarantine.parquet with their line and reason.

An event log (plays, clicks, purchases) is read with --weight-col COL (each row's count
or strength, >= 0) or --events (no weight column: each row is one event of weight 1);
repeated (user, item) events are folded into one row by --duplicates sum (their total
weight, the default) or count (their number), keeping the latest timestamp. The manifest
records feedback "events" and models use their event defaults on it.

Examples:
    mfdask ingest ~/.cache/mfdask/ml-1m out/ml-1m
    mfdask ingest ratings.tsv out/ratings --format tsv --user-col user --item-col movie \
        --rating-col stars --duplicates mean --on-bad-rows skip
    mfdask ingest user_artists.dat out/lastfm --format tsv --user-col userID \
        --item-col artistID --weight-col weight
    mfdask ingest clicks.csv out/clicks --events --duplicates count
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mfdask.data.dataset import DEFAULT_USER_BLOCKS
from mfdask.data.readers import FORMAT_ALIASES, FORMATS
from mfdask.data.validate import BAD_ROW_POLICIES, DUPLICATE_POLICIES
from mfdask.jobs._common import (
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "raw ratings (MovieLens, CSV, TSV, Parquet) -> canonical Parquet dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="MovieLens directory, or ratings file(s)")
    parser.add_argument("dest", metavar="DEST", help="dataset directory to write")
    parser.add_argument(
        "--format",
        choices=list(FORMATS) + list(FORMAT_ALIASES),
        default=None,
        help="input format (default: detected from the files in SRC)",
    )
    g = parser.add_argument_group("columns (csv, tsv, parquet)")
    g.add_argument("--user-col", default=None, help="user id column (default user_id)")
    g.add_argument("--item-col", default=None, help="item id column (default item_id)")
    g.add_argument("--rating-col", default=None, help="rating column (default rating)")
    g.add_argument(
        "--weight-col",
        default=None,
        help="an event log: the column of each event's weight (a count or strength >= 0)",
    )
    g.add_argument(
        "--events",
        action="store_true",
        help="an event log without a weight column: each row is one event of weight 1",
    )
    g.add_argument(
        "--time-col",
        default=None,
        help="timestamp column, seconds (default timestamp if present, else 0)",
    )
    g.add_argument("--sep", default=None, help="field separator (default ',' / tab for tsv)")
    g.add_argument(
        "--id-type",
        choices=["auto", "int", "str"],
        default="auto",
        help="read ids as integers or strings (default: integers if they are)",
    )
    v = parser.add_argument_group("validation")
    v.add_argument(
        "--rating-min",
        type=float,
        default=None,
        help="lowest valid rating (default: MovieLens 1 or 0.5; others: no check)",
    )
    v.add_argument(
        "--rating-max",
        type=float,
        default=None,
        help="highest valid rating (default: MovieLens 5; others: no check)",
    )
    v.add_argument(
        "--duplicates",
        choices=DUPLICATE_POLICIES,
        default=None,
        help="several ratings of one (user, item): stop (default), keep the last, or "
        "average; several events: sum their weights (default) or count them",
    )
    v.add_argument(
        "--on-bad-rows",
        choices=BAD_ROW_POLICIES,
        default="error",
        help="stop at the first bad row, or quarantine bad rows and go on",
    )
    o = parser.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true", help="replace an existing dataset DEST")
    o.add_argument(
        "--user-blocks",
        type=int,
        default=DEFAULT_USER_BLOCKS,
        help=f"hive partitions of the ratings (default {DEFAULT_USER_BLOCKS})",
    )
    add_cluster_arguments(parser)


def _rating_range(args: argparse.Namespace):
    if args.rating_min is None and args.rating_max is None:
        return "auto"
    if args.rating_min is None or args.rating_max is None:
        raise ValueError("give both --rating-min and --rating-max (or neither)")
    return (args.rating_min, args.rating_max)


def run(args: argparse.Namespace) -> int:
    from mfdask.data.ingest import ingest
    from mfdask.engine.cluster import session

    rating_range = _rating_range(args)
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        ds = ingest(
            args.src,
            args.dest,
            format=args.format,
            user_col=args.user_col,
            item_col=args.item_col,
            rating_col=args.rating_col,
            time_col=args.time_col,
            sep=args.sep,
            id_type=args.id_type,
            rating_range=rating_range,
            duplicates=args.duplicates,
            on_bad_rows=args.on_bad_rows,
            n_user_blocks=args.user_blocks,
            overwrite=args.overwrite,
            weight_col=args.weight_col,
            events=args.events,
        )
    m = ds.manifest
    kind = "events (user, item pairs)" if ds.feedback == "events" else "ratings"
    print(
        f"{ds.path}: {m['rows']:,} {kind}, {ds.n_users:,} users, {ds.n_items:,} items "
        f"({m['rows_in']:,} rows read, {m['rows_quarantined']:,} quarantined, "
        f"{m['duplicates_merged']:,} duplicates merged; format {m['format']})"
    )
    if m["rows_quarantined"]:
        print(f"bad rows with their line numbers and reasons: {ds.path / 'quarantine.parquet'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.ingest``: the arguments of ``mfdask ingest``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
