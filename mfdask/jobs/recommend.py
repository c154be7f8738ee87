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

With --history, the users are those of a Parquet history (user_id, item_id and rating or
weight, in original ids; users the model was not fitted on too): the workers shuffle it by
user, fold each user in from their rows with the item factors fixed (as
model.recommend(..., history=frame) does) and filter the history's items. The history never
comes to the client; users without a usable interaction are left out and counted in
_manifest.json, and an item the model does not know fails the job unless
--skip-unknown-items (then its rows are dropped and counted).

  mfdask recommend out/models/als out/recs/new-users --history data/new-users.parquet

With --method ann each worker searches an index over the item vectors (faiss, installed
by `pip install 'mfdask[ann]'`) instead of scoring every item: many times faster on a
large catalogue, recall@10 >= 0.95 against the exact lists by default; --ann NAME=VALUE
sets the index (index=ivf|hnsw|flat, nlist, nprobe, ef_search, ...).

  mfdask recommend out/models/als out/recs/als --method ann --ann nprobe=64

Read it back with pandas (pd.read_parquet("out/recs/als")), pyarrow or DuckDB
(SELECT * FROM read_parquet('out/recs/als/**/*.parquet', hive_partitioning=true)).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mfdask.jobs._common import (
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
    parser.add_argument(
        "--history",
        metavar="PATH",
        help="Parquet of user_id, item_id[, rating]: fold these users in from it (see above)",
    )
    parser.add_argument(
        "--skip-unknown-items",
        action="store_true",
        help="with --history: drop rows whose item the model does not know (counted)",
    )
    parser.add_argument("--blocks", type=int, default=None, help="output partitions (auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    add_method_arguments(parser)
    add_cluster_arguments(parser)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        choices=["exact", "ann", "auto"],
        default="exact",
        help="exact scores every item (default); ann searches an index (needs mfdask[ann]); "
        "auto: ann for large catalogues when faiss is installed",
    )
    parser.add_argument(
        "--ann",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="an index setting for --method ann/auto (repeatable): index=ivf|hnsw|flat, "
        "nlist, nprobe, hnsw_m, ef_construction, ef_search, max_fetch, threads",
    )


def ann_options(args: argparse.Namespace) -> dict[str, object]:
    """``--ann NAME=VALUE`` flags as keyword arguments (integers, except ``index``)."""
    options: dict[str, object] = {}
    for flag in args.ann:
        name, sep, value = flag.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise JobError(f"--ann {flag!r}: expected NAME=VALUE, e.g. --ann nprobe=64")
        if name == "index":
            options[name] = value
            continue
        try:
            options[name] = int(value)
        except ValueError:
            raise JobError(f"--ann {flag!r}: {name} must be an integer") from None
    if options and args.method == "exact":
        raise JobError("--ann settings need --method ann (or auto)")
    if args.method == "ann":
        from mfdask.engine.ann import import_faiss

        try:
            import_faiss()
        except ImportError as exc:
            raise JobError(str(exc)) from None
    return options


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
    options = ann_options(args)
    output = check_output_dir(args.output, "recommendations", args.overwrite)
    if getattr(args, "history", None):
        if args.method != "exact":
            raise JobError("--method ann/auto is not available with --history yet: drop one")
        return _run_history(args, output)
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
            method=args.method,
            **options,
        )
    print(
        f"{out.rows:,} recommendations for {out.manifest['queries']:,} users "
        f"({type(model).__name__}, n={args.n}, {out.manifest['method']}) in {out.n_blocks} files, "
        f"{out.seconds:.1f} s: {out.path}"
    )
    return 0


def _run_history(args: argparse.Namespace, output: Path) -> int:
    """``--history``: fold the history's users in on the workers and write their top N."""
    from mfdask.engine.cluster import session
    from mfdask.engine.foldin import recommend_history_all
    from mfdask.models.foldin import fold_in_spec

    for flag in ("users", "seen"):
        if getattr(args, flag, None):
            raise JobError(
                f"--{flag} does not apply with --history: the users and the items to filter "
                "are the history's"
            )
    if not Path(args.history).exists():
        raise JobError(f"history {args.history} does not exist")
    model = load_checked(args.model)
    spec = fold_in_spec(model)
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        out = recommend_history_all(
            spec,
            args.history,
            args.n,
            output,
            unknown_items="skip" if args.skip_unknown_items else "error",
            filter_seen=args.filter_seen,
            overwrite=args.overwrite,
            n_blocks=args.blocks,
        )
    m = out.manifest
    print(
        f"{out.rows:,} recommendations for {m['users']:,} folded-in users "
        f"({type(model).__name__}, n={args.n}) in {out.n_blocks} files, {out.seconds:.1f} s"
        + (
            f"; {m['empty_users']:,} users without a usable interaction left out"
            if m["empty_users"]
            else ""
        )
        + (f"; {m['skipped_rows']:,} rows with unknown items skipped" if m["skipped_rows"] else "")
        + f": {out.path}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.recommend``: the arguments of ``mfdask recommend``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
