"""Evaluate a saved model on a test split: a printed table and a JSON file of metrics.

Implicit models (ALS, BPR, WARP) get the ranking metrics at --k; explicit ones (SVD) also
RMSE and MAE. Test ratings at or above --positive-threshold are the relevant items; the
model's training items are filtered from its lists (and left out of the AUC's negatives)
unless --no-filter-seen; --train reads them from a dataset instead of the model's record.
Users without a positive test rating are left out of the means (their number is printed);
test pairs whose user or item the model does not know are counted, never dropped silently.

  mfdask evaluate out/als data/ml-1m-split/test --k 10 --output out/als-metrics.json

precision is hits/k (Spark, LensKit); implicit_precision is implicit's "precision"
(hits over min(k, |relevant|), summed over users); auc is exact over the full score row,
implicit_auc implicit's top-k estimate. See mfdask.metrics.ranking for every definition.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mfdask.data.schema import DEFAULT_POSITIVE_THRESHOLD
from mfdask.jobs._common import (
    JobError,
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "metrics of a saved model on a test split (ranking; RMSE/MAE for SVD) -> JSON + table"

DEFAULT_OUTPUT = "metrics.json"

_AT_K = ("precision", "recall", "ndcg", "map", "hit_rate", "implicit_precision", "implicit_auc")
_COUNTS = frozenset(
    {
        "count",
        "users",
        "users_without_positives",
        "test_ratings",
        "skipped_unknown",
        "test_in_train",
    }
)
_ROWS = (
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("count", "ratings predicted"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("ndcg", "NDCG"),
    ("map", "MAP"),
    ("hit_rate", "hit rate"),
    ("auc", "AUC (exact)"),
    ("coverage", "catalogue coverage"),
    ("implicit_precision", "implicit's precision"),
    ("implicit_auc", "implicit's AUC"),
    ("users", "users evaluated"),
    ("users_without_positives", "users without positives"),
    ("test_ratings", "test ratings read"),
    ("skipped_unknown", "skipped (unknown id)"),
    ("test_in_train", "test pairs seen in train"),
    ("seconds", "seconds"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="a model saved by `mfdask train`")
    parser.add_argument(
        "test",
        metavar="TEST_DATASET",
        help="test split (canonical dataset sharing the model's id maps, or Parquet with "
        "user_id, item_id, rating)",
    )
    parser.add_argument("--k", type=int, default=10, help="cut-off of the ranking metrics (10)")
    parser.add_argument(
        "--output",
        metavar="PATH",
        default=DEFAULT_OUTPUT,
        help=f"JSON file to write ({DEFAULT_OUTPUT})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--train",
        metavar="DATASET",
        default=None,
        help="training split whose items are filtered (default: the model's own record)",
    )
    parser.add_argument(
        "--positive-threshold",
        type=float,
        default=DEFAULT_POSITIVE_THRESHOLD,
        help=f"smallest test rating that counts as relevant ({DEFAULT_POSITIVE_THRESHOLD:g})",
    )
    parser.add_argument(
        "--no-filter-seen",
        dest="filter_seen",
        action="store_false",
        help="keep training items in the lists and among the AUC's negatives",
    )
    add_cluster_arguments(parser)


def _check_output(path: Path, overwrite: bool) -> None:
    """Fail before any work if the JSON could not be written."""
    if path.exists() and not overwrite:
        raise JobError(f"{path} already exists: choose another --output or pass --overwrite")
    if path.is_dir():
        raise JobError(f"--output {path} is a directory: give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise JobError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JobError(f"cannot write {path}: {parent} is not writable; choose another --output")


def _json_number(value: Any) -> Any:
    """NaN/inf become null: the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_table(metrics: dict[str, Any], k: int) -> str:
    """The metrics as an aligned two-column table (``@k`` on the cut-off metrics)."""
    lines = []
    for key, label in _ROWS:
        if key not in metrics:
            continue
        value = metrics[key]
        name = f"{label}@{k}" if key in _AT_K else label
        if key in _COUNTS:
            text = f"{int(value):,}"
        elif not math.isfinite(value):
            text = "n/a"
        else:
            text = f"{value:.2f}" if key == "seconds" else f"{value:.4f}"
        lines.append(f"{name:<28}{text:>12}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mfdask import __version__
    from mfdask.data.dataset import is_dataset, write_json_atomic
    from mfdask.engine.cluster import session
    from mfdask.evaluate import evaluate
    from mfdask.models.base import load_model

    output = Path(args.output)
    _check_output(output, args.overwrite)
    if args.k < 1:
        raise JobError(f"--k must be a positive integer, got {args.k}")
    test_is_dataset = is_dataset(args.test)
    if not test_is_dataset and not Path(args.test).exists():
        raise JobError(f"test data {args.test} does not exist: give a split from `mfdask split`")
    model = load_model(args.model, dataset=args.test if test_is_dataset else None)
    if args.train is not None and is_dataset(args.train):
        model.check_dataset(args.train)
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        metrics = evaluate(
            model,
            args.test,
            k=args.k,
            train=args.train,
            positive_threshold=args.positive_threshold,
            filter_seen=args.filter_seen,
            ranking=True,
            rating=not model.implicit,
        )
    kind = "implicit" if model.implicit else "explicit"
    print(f"{type(model).__name__} ({kind}) from {args.model} on {args.test}")
    print(format_table(metrics, args.k))
    payload = {
        "model": str(args.model),
        "model_class": type(model).__name__,
        "test": str(args.test),
        "train": None if args.train is None else str(args.train),
        "k": args.k,
        "positive_threshold": args.positive_threshold,
        "filter_seen": args.filter_seen,
        "metrics": {key: _json_number(v) for key, v in metrics.items()},
        "mfdask_version": __version__,
    }
    write_json_atomic(output, payload)
    print(f"metrics written to {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.evaluate``: the arguments of ``mfdask evaluate``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
