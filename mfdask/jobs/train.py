"""Train one model (svd, als, bpr or warp) on a dataset and save it.

Hyper-parameters come from --param NAME=VALUE flags and/or a TOML job file (--config);
flags win. Everything is checked before the cluster starts: an unknown model or
parameter name is rejected with the valid ones, a bad value with its type or range.
The model is written atomically and an existing --output is kept unless --overwrite.

  mfdask train --model als --train out/prepared/split/train --output out/models/als \\
      --param factors=64 --param iterations=15 --param random_state=0

  # checkpoints every 5 iterations; after a crash, the same command with --resume
  # continues from the newest one and ends with the model an uninterrupted run gives
  mfdask train --model als --train ... --output out/models/als \\
      --checkpoint-dir out/checkpoints/als --checkpoint-every 5 [--resume]

  # als.toml                            mfdask train --config als.toml
  model = "als"
  train = "out/prepared/split/train"
  output = "out/models/als"
  [params]
  factors = 64
  iterations = 15

  # continue a saved model on the updated training set (the old ratings plus the new):
  # new users and items are appended, the rest start from their fitted factors
  mfdask train --init out/models/als --train out/prepared/split/train-v2 \
      --output out/models/als-v2 --update-iterations 3

Parameter names are the constructors' (`python -c "import mfdask; help(mfdask.ALS)"`):
factors, regularization, learning_rate, epochs / iterations, alpha, random_state, ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mfdask.jobs._common import (
    JobError,
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "train a model (svd, als, bpr, warp) from flags or a TOML job file; save it"

log = logging.getLogger("mfdask")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="JOB.toml", help="TOML job file (see above)")
    parser.add_argument("--model", metavar="NAME", help="svd, als, bpr or warp")
    parser.add_argument("--train", metavar="DATASET", help="training dataset (a split's train/)")
    parser.add_argument(
        "--validation",
        metavar="DATASET",
        help="held-out dataset for per-epoch metrics and early stopping (optional)",
    )
    parser.add_argument("--output", metavar="DIR", help="where to save the model")
    parser.add_argument(
        "--param",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a hyper-parameter (repeatable); `none` for an optional one",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    up = parser.add_argument_group("updating a saved model")
    up.add_argument(
        "--init",
        metavar="MODEL_DIR",
        help="start from this saved model and continue it on --train, the full updated "
        "training set (partial_fit); --model may be left out, --param changes its settings",
    )
    up.add_argument(
        "--update-iterations",
        type=int,
        metavar="K",
        default=None,
        help="iterations/epochs of the update with --init (default 3)",
    )
    ck = parser.add_argument_group("checkpoints")
    ck.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="write checkpoints here (the checkpoint_dir parameter); default: none on disk",
    )
    ck.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="K",
        help="iterations/epochs between checkpoints (the checkpoint_every parameter; default 5)",
    )
    ck.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in the checkpoint directory "
        "(refused if it belongs to other parameters or data; a fresh fit if there is none)",
    )
    add_cluster_arguments(parser)


def resolve(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The unfitted, validated model and the job settings (train, validation, output).

    Raises ``ValueError`` (unknown model / parameter, bad value) or ``JobError``
    (a required setting missing) before any cluster is started.
    """
    from mfdask.jobfile import build_model, coerce_params, load_job_file, parse_param_flags
    from mfdask.models.registry import model_class

    job: dict[str, Any] = load_job_file(args.config) if args.config else {}
    settings = {
        key: getattr(args, key) if getattr(args, key) is not None else job.get(key)
        for key in ("model", "train", "validation", "output", "init")
    }
    if settings["init"]:
        return _resolve_init(args, job, settings), settings
    if getattr(args, "update_iterations", None) is not None:
        raise JobError("--update-iterations needs --init MODEL_DIR (the model to update)")
    for key in ("model", "train", "output"):
        if not settings[key]:
            raise JobError(f"no {key} given: pass --{key} or set `{key}` in the --config job file")
    cls = model_class(str(settings["model"]))
    params = coerce_params(
        cls, job.get("params", {}), f"job file {args.config} [params]", text=False
    )
    params.update(coerce_params(cls, parse_param_flags(args.param), "--param", text=True))
    for flag, name in (
        ("checkpoint_dir", "checkpoint_dir"),
        ("checkpoint_every", "checkpoint_every"),
    ):
        if getattr(args, flag, None) is not None:
            params[name] = getattr(args, flag)
    model = build_model(str(settings["model"]), params)
    if getattr(args, "resume", False) and getattr(model, "checkpoint_dir", None) is None:
        raise JobError(
            "--resume needs the checkpoint directory of the interrupted run: "
            "pass --checkpoint-dir (or set checkpoint_dir in [params])"
        )
    return model, settings


def _resolve_init(args: argparse.Namespace, job: dict[str, Any], settings: dict[str, Any]) -> Any:
    """The saved model of ``--init``, with ``--param`` / ``[params]`` applied to it."""
    from mfdask.jobfile import coerce_params, parse_param_flags
    from mfdask.jobs.recommend import load_checked

    for key in ("train", "output"):
        if not settings[key]:
            raise JobError(f"no {key} given: pass --{key} or set `{key}` in the --config job file")
    if getattr(args, "resume", False):
        raise JobError("--resume does not apply to --init: an update starts from the saved model")
    n = getattr(args, "update_iterations", None)
    if n is not None and n < 1:
        raise JobError(f"--update-iterations must be a positive integer, got {n}")
    model = load_checked(str(settings["init"]))
    name = settings["model"]
    if name and str(name).lower() != type(model).model_name:
        raise JobError(
            f"--model {name} does not match the {type(model).__name__} saved in {settings['init']}"
        )
    cls = type(model)
    params = coerce_params(
        cls, job.get("params", {}), f"job file {args.config} [params]", text=False
    )
    params.update(coerce_params(cls, parse_param_flags(args.param), "--param", text=True))
    for name in ("checkpoint_dir", "checkpoint_every"):
        if getattr(args, name, None) is not None:
            params[name] = getattr(args, name)
    model.set_params(**params)
    model._validate_params()
    return model


def _progress(total: int | None):
    def report(record: dict[str, Any]) -> None:
        epoch = record.get("iteration", "?")
        parts = [f"epoch {epoch}" + (f"/{total}" if total else "")]
        for key in ("loss", "train_rmse", "validation_rmse", "auc", "validation"):
            value = record.get(key)
            if isinstance(value, (int, float)):
                parts.append(f"{key} {value:.5g}")
        if isinstance(record.get("seconds"), (int, float)):
            parts.append(f"{record['seconds']:.2f} s")
        log.info("  ".join(parts))

    return report


def run(args: argparse.Namespace) -> int:
    from mfdask.engine.cluster import session
    from mfdask.engine.topk import check_output_dir

    model, settings = resolve(args)
    output = check_output_dir(settings["output"], "the model", args.overwrite)
    for key in ("train", "validation"):
        if settings[key] and not Path(settings[key]).exists():
            raise JobError(
                f"{key} data {settings[key]} does not exist: prepare it with "
                "`mfdask prepare` or `mfdask split`"
            )
    total = getattr(model, "iterations", None) or getattr(model, "epochs", None)
    updating = bool(settings.get("init"))
    if updating:
        total = getattr(args, "update_iterations", None) or 3
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        if updating:
            log.info("updating %s (%r) on %s", settings["init"], model, settings["train"])
            model.partial_fit(
                settings["train"],
                iterations=getattr(args, "update_iterations", None),
                validation=settings["validation"],
                callback=_progress(total),
            )
        else:
            log.info("training %r on %s", model, settings["train"])
            model.fit(
                settings["train"],
                validation=settings["validation"],
                callback=_progress(total),
                resume=bool(getattr(args, "resume", False)),
            )
    model.save(output, overwrite=args.overwrite)
    for event in model.metrics_.get("recoveries", []):
        log.warning(
            "recovered from a lost worker at iteration %s: restarted from %s on %s worker(s) "
            "in %.1f s",
            event.get("failed_at"),
            event.get("restarted_from"),
            event.get("workers", "?"),
            event.get("seconds", float("nan")),
        )
    last = model.history_[-1] if model.history_ else {}
    loss = f", final loss {last['loss']:.5g}" if isinstance(last.get("loss"), (int, float)) else ""
    resumed = model.metrics_.get("resumed_from")
    loss += f"; resumed after iteration {resumed}" if resumed is not None else ""
    if updating:
        update = model.metrics_["updates"][-1]
        loss += (
            f"; update {update['update']} of {settings['init']}: {update['new_users']:,} new "
            f"users, {update['new_items']:,} new items"
        )
    epochs = len(model.history_) if not updating else model.metrics_["updates"][-1]["iterations"]
    print(
        f"{type(model).__name__}: {epochs} epochs in "
        f"{model.metrics_.get('fit_seconds', 0.0):.1f} s{loss}; "
        f"{model.n_users:,} users x {model.n_items:,} items; saved to {output}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.train``: the arguments of ``mfdask train``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
