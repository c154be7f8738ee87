"""Search a model's hyper-parameters on the cluster (Optuna) and write the best as a job file.

A validation part is carved from --train (per user, 20 % of the positives for the
ranking models; 20 % of the ratings at random for SVD) unless --validation is given;
every trial fits the rest and is scored on it after each iteration, and trials falling
below the median of earlier ones are stopped early (see :mod:`mfdask.tuning`). The
result is a TOML job file for `mfdask train --config`, which trains the winner on all
of --train:

  mfdask tune --model als --train out/prepared/split/train --trials 30 --output best.toml
  mfdask train --config best.toml

--param NAME=VALUE fixes a parameter for every trial (and goes into the job file);
the searched ones and their ranges are the model's `search_space` (for ALS:
regularization and alpha, log-uniform, and the count exponent regularization_exponent)
and the iteration budget is the model's `iterations` / `epochs` (the job file gets the
best trial's best iteration). Beside the
job file: OUTPUT-stem.trials.csv (every trial) and OUTPUT-stem.trials.png (the plot).
Needs Optuna: pip install 'mfdask[tune]'.
"""

from __future__ import annotations

import argparse
import logging
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

HELP = "search hyper-parameters (Optuna) on a validation part of the data; write a job file"

log = logging.getLogger("mfdask")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME", required=True, help="svd, als, bpr or warp")
    parser.add_argument("--train", metavar="DATASET", required=True, help="training dataset")
    parser.add_argument("--output", metavar="JOB.toml", required=True, help="the job file to write")
    parser.add_argument("--trials", type=int, default=30, help="trials to run (30)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds after which no trial starts"
    )
    parser.add_argument(
        "--validation",
        metavar="DATASET",
        help="held-out dataset to score trials on (default: carved from --train)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="ndcg, precision, recall, map, hit_rate or auc (ranking models; default ndcg), "
        "rmse (SVD; its default)",
    )
    parser.add_argument("--k", type=int, default=10, help="ranking cut-off (10)")
    parser.add_argument(
        "--param",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="fix a hyper-parameter for every trial (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler and validation seed (0)")
    parser.add_argument(
        "--workers-per-trial",
        type=int,
        default=None,
        help="workers one fit uses; trials run side by side on the rest (default: all)",
    )
    parser.add_argument(
        "--model-output",
        metavar="DIR",
        help="the `output` of the job file: where `mfdask train` saves the model "
        "(default: OUTPUT-stem-model beside the job file)",
    )
    parser.add_argument("--no-pruning", action="store_true", help="run every trial to the end")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mfdask.engine.cluster import session
    from mfdask.jobfile import build_model, coerce_params, dump_job_file, parse_param_flags
    from mfdask.models.registry import model_class
    from mfdask.tuning import _optuna, tune

    _optuna()  # the missing extra is named before any cluster starts
    cls = model_class(args.model)
    params = coerce_params(cls, parse_param_flags(args.param), "--param", text=True)
    estimator = build_model(args.model, params)
    output = Path(args.output)
    if output.suffix != ".toml":
        raise JobError(f"--output {output} should be a .toml job file (e.g. best.toml)")
    if output.exists() and not args.overwrite:
        raise JobError(f"{output} already exists: choose another --output or pass --overwrite")
    if args.trials < 1:
        raise JobError(f"--trials must be a positive integer, got {args.trials}")
    for key in ("train", "validation"):
        value = getattr(args, key)
        if value and not Path(value).exists():
            raise JobError(
                f"{key} data {value} does not exist: prepare it with `mfdask prepare` or "
                "`mfdask split`"
            )
    metric = args.metric or ("ndcg" if cls.implicit else "rmse")
    output.parent.mkdir(parents=True, exist_ok=True)
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        log.info("tuning %r on %s: %d trials", estimator, args.train, args.trials)
        result = tune(
            estimator,
            args.train,
            n_trials=args.trials,
            timeout=args.timeout,
            metric=metric,
            k=args.k,
            validation=args.validation,
            random_state=args.seed,
            workers_per_trial=args.workers_per_trial,
            pruning=not args.no_pruning,
            show_progress=True,
        )
    stem = output.with_suffix("")
    trials_csv = stem.with_name(stem.name + ".trials.csv")
    result.trials.to_csv(trials_csv, index=False)
    plot = result.plot(stem.with_name(stem.name + ".trials.png"))
    best = {**params, **result.best_params}
    if "random_state" not in best:
        best["random_state"] = estimator.random_state if estimator.random_state else args.seed
    model_output = args.model_output or str(stem.with_name(stem.name + "-model"))
    comment = (
        f"written by mfdask tune: {result.summary()}\n"
        f"validation {result.metric}"
        + (f"@{args.k}" if cls.implicit else "")
        + f" {result.best_score:.5f} ({result.validation.get('source', '')})\n"
        f"train the winner on all of the training data: mfdask train --config {output}"
    )
    dump_job_file(
        output,
        {"model": cls.model_name, "train": args.train, "output": model_output, "params": best},
        comment=comment,
    )
    print(result.summary())
    print(f"job file {output}; trials {trials_csv}" + (f", plot {plot}" if plot else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.tune``: the arguments of ``mfdask tune``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
