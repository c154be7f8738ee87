"""The main job: MovieLens-1M end to end with all four models, on a local Dask cluster.

  1. find ML-1M: --data DIR, then $MFDASK_DATA/ml-1m, then ~/.cache/mfdask/ml-1m, then a
     download from GroupLens. Offline with no copy, it says so in one line and runs on
     synthetic MovieLens-shaped data instead (same size; every output labelled synthetic).
  2. ingest it into a canonical Parquet dataset and split it once, randomly, 80/20 by
     --seed: one split serves all four models, so their metrics are comparable pair for
     pair. A random split is the standard protocol for SVD's RMSE (a per-user holdout of
     positives would leave only ratings >= 4 in test and bias it), and with at least 20
     ratings per ML-1M user every user keeps about 80% of them in train, so per-user
     ranking metrics are well defined too. Test ratings >= 4 are the relevant items.
  3. train SVD, ALS, BPR and WARP (those installed) with their defaults (random_state =
     --seed), evaluate each on the test split (precision, recall, NDCG, MAP @k, AUC,
     coverage; RMSE and MAE for SVD), write each one's top-N for every user and top-N
     similar items for every item as Parquet, computed on the workers.
  4. print the metrics side by side, the movies most similar to Toy Story (1995) and
     Star Wars (1977), and user 4's liked movies and top-10 by title for each model;
     write a report (report.html with loss.png and metrics.png inlined).

Outputs (OUTPUT, default out/demo, written atomically; --overwrite replaces it):
  dataset/  split/{train,test}/  models/NAME/  recommendations/NAME/  similar_items/NAME/
  metrics.json  metrics.csv  summary.txt  report.html  loss.png  metrics.png

  mfdask demo                                   # ML-1M, all four models
  mfdask demo --models als,svd --output out/quick
  mfdask demo --dataset lastfm-2k               # play counts: ALS, BPR, WARP (see
                                                # mfdask.jobs.demo_lastfm)
  mfdask demo --synthetic --synthetic-ratings 100000 --param warp.epochs=10
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mfdask.jobs._common import (
    JobError,
    add_cluster_arguments,
    cluster_spec,
    print_dashboard,
    standalone_main,
)

HELP = "the main job: ML-1M -> split -> SVD/ALS/BPR/WARP -> metrics, top-N, similar, report"

log = logging.getLogger("mfdask")

DATASET = "ml-1m"
MODEL_ORDER = ("svd", "als", "bpr", "warp")
QUERY_ITEMS = (1, 260)
"""Toy Story (1995) and Star Wars: Episode IV (1977) in MovieLens ids."""
QUERY_USER = 4
ML1M_SHAPE = {"n_ratings": 1_000_209, "n_users": 6_040, "n_items": 3_706}
SYNTHETIC_LABEL = "SYNTHETIC DATA (MovieLens-shaped, mfdask.data.synth)"
SUMMARY_ROWS = (
    ("precision", "precision@{k}"),
    ("recall", "recall@{k}"),
    ("ndcg", "NDCG@{k}"),
    ("map", "MAP@{k}"),
    ("hit_rate", "hit rate@{k}"),
    ("auc", "AUC"),
    ("coverage", "coverage"),
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("fit_seconds", "train seconds"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=["ml-1m", "lastfm-2k"],
        default="ml-1m",
        help="ml-1m (ratings, all four models) or lastfm-2k (play counts: ALS, BPR, WARP)",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a folder holding ml-1m/ or hetrec2011-lastfm-2k/ (or the dataset itself)",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="output directory (out/demo; out/demo-lastfm for lastfm-2k)",
    )
    parser.add_argument(
        "--models",
        metavar="NAME,...",
        help=f"models to run (default: all installed of {', '.join(MODEL_ORDER)})",
    )
    parser.add_argument(
        "--param",
        metavar="MODEL.NAME=VALUE",
        action="append",
        default=[],
        help="override a model default, e.g. als.iterations=10 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split and model seed (0)")
    parser.add_argument("-k", "--k", type=int, default=10, help="metric cut-off (10)")
    parser.add_argument("-n", "--n", type=int, default=10, help="recommendations per user (10)")
    parser.add_argument(
        "--synthetic", action="store_true", help="use synthetic data even if ML-1M is present"
    )
    parser.add_argument(
        "--synthetic-ratings",
        type=int,
        default=ML1M_SHAPE["n_ratings"],
        help="ratings of the synthetic stand-in (ML-1M's count)",
    )
    parser.add_argument(
        "--download-url",
        metavar="URL",
        default=None,
        help="where to download MovieLens from (default: GroupLens)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_cluster_arguments(parser)


# --------------------------------------------------------------------------- settings


def model_names(requested: str | None) -> list[str]:
    """The models to run, in the demo's order; unknown names raise with the options."""
    from mfdask.models.registry import model_classes

    available = model_classes()
    ordered = [m for m in MODEL_ORDER if m in available] + sorted(
        m for m in available if m not in MODEL_ORDER
    )
    if not requested:
        if not ordered:
            raise JobError("no model is installed: mfdask.models exports none of SVD/ALS/BPR/WARP")
        return ordered
    names = [m.strip().lower() for m in requested.split(",") if m.strip()]
    unknown = [m for m in names if m not in available]
    if unknown:
        raise JobError(f"unknown model(s) {unknown} in --models; choose from {ordered}")
    return [m for m in ordered if m in names]


def model_params(names: list[str], flags: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """Defaults plus ``random_state=seed`` plus ``--param model.name=value``, validated."""
    from mfdask.jobfile import JobFileError, build_model, coerce_params, parse_param_flags
    from mfdask.models.registry import model_class

    raw = parse_param_flags(flags)
    per_model: dict[str, dict[str, str]] = {m: {} for m in names}
    for key, value in raw.items():
        model, dot, name = key.partition(".")
        if not dot or not name:
            raise JobFileError(
                f"--param {key}={value}: write MODEL.NAME=VALUE, e.g. als.factors=32"
            )
        if model.lower() not in per_model:
            raise JobFileError(f"--param {key}: model {model!r} is not run; --models is {names}")
        per_model[model.lower()][name] = value
    out = {}
    for m in names:
        cls = model_class(m)
        params: dict[str, Any] = {}
        if "random_state" in cls._param_names():
            params["random_state"] = seed
        params.update(coerce_params(cls, per_model[m], f"--param {m}.*"))
        build_model(m, params)  # validate now, before any data work
        out[m] = params
    return out


def locate_movielens(data: str | None, download_url: str | None) -> tuple[Path | None, str]:
    """ML-1M's directory (found or downloaded), or None and why it is unavailable."""
    from mfdask.data.fetch import BASE_URL, FetchError, fetch, find_movielens

    found = find_movielens(DATASET, data)
    if found is not None:
        return found, f"MovieLens-1M from {found}"
    try:
        path = fetch(DATASET, data, base_url=download_url or BASE_URL)
    except (FetchError, OSError) as exc:
        return None, str(exc)
    return path, f"MovieLens-1M downloaded to {path}"


# --------------------------------------------------------------------------- printing


def _titles(items: pd.DataFrame) -> pd.Series:
    if "title" in items.columns:
        return items.set_index("item_id")["title"].astype(str)
    return pd.Series(items["item_id"].astype(str).to_numpy(), index=items["item_id"])


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def side_by_side(lists: dict[str, list[str]], width: int = 30) -> str:
    """Ranked lists of titles, one column per model."""
    names = list(lists)
    depth = max((len(v) for v in lists.values()), default=0)
    lines = ["rank  " + "".join(f"{n.upper():<{width + 2}}" for n in names).rstrip()]
    for r in range(depth):
        row = f"{r + 1:>4}  "
        for n in names:
            cell = lists[n][r] if r < len(lists[n]) else ""
            row += f"{_cut(cell, width):<{width + 2}}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def metrics_table(metrics: dict[str, dict[str, Any]], k: int) -> pd.DataFrame:
    """Metric rows x model columns (NaN where a metric does not apply)."""
    rows = {}
    for key, label in SUMMARY_ROWS:
        if any(key in m for m in metrics.values()):
            rows[label.format(k=k)] = {
                name.upper(): float(m[key]) if isinstance(m.get(key), (int, float)) else math.nan
                for name, m in metrics.items()
            }
    return pd.DataFrame(rows).T


def format_metrics(table: pd.DataFrame) -> str:
    """The metrics table as text: 4 decimals, seconds with 1, ``-`` where not applicable."""
    text = table.copy().astype(object)
    for label, row in table.iterrows():
        digits = 1 if "seconds" in str(label) else 4
        text.loc[label] = [f"{v:.{digits}f}" if math.isfinite(v) else "-" for v in row]
    return text.to_string()


def _read_rows(path: Path, column: str, value: Any) -> pd.DataFrame:
    """Rows of a top-k output for one id, read back from Parquet (filter pushed down)."""
    frame = pd.read_parquet(path, filters=[(column, "==", value)])
    return frame.sort_values("rank")


# --------------------------------------------------------------------------- the job


def run(args: argparse.Namespace) -> int:
    from mfdask.data.dataset import atomic_directory, write_json_atomic
    from mfdask.engine.cluster import session
    from mfdask.engine.topk import check_output_dir

    started = time.perf_counter()
    if args.k < 1 or args.n < 1:
        raise JobError(f"-k and -n must be positive integers, got {args.k} and {args.n}")
    if getattr(args, "dataset", "ml-1m") == "lastfm-2k":
        return _run_lastfm(args, started)
    if args.output is None:
        args.output = "out/demo"
    names = model_names(args.models)
    params = model_params(names, args.param, args.seed)
    output = check_output_dir(args.output, "the demo outputs", args.overwrite)

    source, why = (
        (None, "--synthetic") if args.synthetic else locate_movielens(args.data, args.download_url)
    )
    synthetic = source is None
    if synthetic and not args.synthetic:
        print(
            f"MovieLens-1M is not available ({why}): running on synthetic MovieLens-shaped "
            "data instead; every output is labelled SYNTHETIC."
        )
    tag = f"[{SYNTHETIC_LABEL}] " if synthetic else ""

    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        with atomic_directory(output, overwrite=args.overwrite) as tmp:
            summary = _pipeline(args, tmp, output, names, params, source, synthetic, why, tag)
            write_json_atomic(tmp / "metrics.json", summary["json"])
            (tmp / "summary.txt").write_text(summary["text"] + "\n", encoding="utf-8")
    print(summary["text"])
    print(f"\n{tag}demo finished in {time.perf_counter() - started:.0f} s: {output}/")
    return 0


def _run_lastfm(args: argparse.Namespace, started: float) -> int:
    from mfdask.data.dataset import atomic_directory, write_json_atomic
    from mfdask.engine.cluster import session
    from mfdask.engine.topk import check_output_dir
    from mfdask.jobs import demo_lastfm

    if args.synthetic:
        raise JobError("--synthetic applies to ml-1m only: the lastfm-2k demo needs the data")
    names = demo_lastfm.model_names(args.models)
    params = model_params(names, args.param, args.seed)
    output = check_output_dir(args.output or "out/demo-lastfm", "the demo outputs", args.overwrite)
    source, why = demo_lastfm.locate_lastfm(args.data, args.download_url)
    with session(cluster_spec(args)) as client:
        print_dashboard(client)
        with atomic_directory(output, overwrite=args.overwrite) as tmp:
            summary = demo_lastfm.pipeline(args, tmp, output, names, params, source, why)
            write_json_atomic(tmp / "metrics.json", summary["json"])
            (tmp / "summary.txt").write_text(summary["text"] + "\n", encoding="utf-8")
    print(summary["text"])
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s: {output}/")
    return 0


def _pipeline(
    args: argparse.Namespace,
    tmp: Path,
    output: Path,
    names: list[str],
    params: dict[str, dict[str, Any]],
    source: Path | None,
    synthetic: bool,
    why: str,
    tag: str,
) -> dict[str, Any]:
    from mfdask.data.ingest import ingest
    from mfdask.data.split import split_dataset
    from mfdask.data.synth import synthesize
    from mfdask.evaluate import evaluate
    from mfdask.jobfile import build_model
    from mfdask.report import write_report

    t0 = time.perf_counter()
    if synthetic:
        shape = dict(ML1M_SHAPE)
        scale = args.synthetic_ratings / shape["n_ratings"]
        n_users = max(10, round(shape["n_users"] * math.sqrt(scale)))
        n_items = max(QUERY_ITEMS[-1] + 1, round(shape["n_items"] * math.sqrt(scale)))
        dataset = synthesize(
            tmp / "dataset",
            n_ratings=args.synthetic_ratings,
            n_users=min(n_users, args.synthetic_ratings),
            n_items=n_items,
            seed=args.seed,
        )
        described = f"{SYNTHETIC_LABEL}"
    else:
        assert source is not None  # not synthetic: MovieLens was found
        dataset = ingest(source, tmp / "dataset")
        described = why
    log.info(
        "%sdata: %s ratings, %s users, %s items (%.1f s)",
        tag,
        f"{dataset.n_ratings:,}",
        f"{dataset.n_users:,}",
        f"{dataset.n_items:,}",
        time.perf_counter() - t0,
    )
    train, test = split_dataset(
        dataset, tmp / "split", method="random", fraction=0.2, seed=args.seed
    )
    log.info(
        "%ssplit: train %s, test %s ratings", tag, f"{train.n_ratings:,}", f"{test.n_ratings:,}"
    )

    label = {"data": SYNTHETIC_LABEL if synthetic else "MovieLens-1M (GroupLens)"}
    metrics: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    for i, name in enumerate(names, 1):
        model = build_model(name, params[name])
        t = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t
        model.metrics_.update(label)
        result = evaluate(model, test, k=args.k)
        result["fit_seconds"] = fit_s
        model.metrics_["test"] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        model.save(tmp / "models" / name)
        model.recommend_all(args.n, tmp / "recommendations" / name, seen=train, metadata=label)
        model.similar_items_all(args.n, tmp / "similar_items" / name, metadata=label)
        metrics[name] = result
        histories[name.upper()] = list(model.history_)
        log.info(
            "%s[%d/%d] %s: trained in %.1f s, evaluated, top-%d and similar items written "
            "(%.1f s in all)",
            tag,
            i,
            len(names),
            type(model).__name__,
            fit_s,
            args.n,
            time.perf_counter() - t,
        )

    # ---------------------------------------------------------------- what to print
    items = dataset.items()
    titles = _titles(items)
    table = metrics_table(metrics, args.k)
    header = (
        f"{tag}mfdask demo: {described}\n"
        f"{tag}{dataset.n_ratings:,} ratings, {dataset.n_users:,} users, {dataset.n_items:,} "
        f"items; random 80/20 split (seed {args.seed}): train {train.n_ratings:,}, "
        f"test {test.n_ratings:,}; relevant = test ratings >= 4"
    )
    blocks = [header, f"{tag}Metrics on the test split (k = {args.k}):\n{format_metrics(table)}"]
    sections: list[tuple[str, pd.DataFrame | str]] = []

    for item in QUERY_ITEMS:
        if item not in titles.index:
            continue
        lists = {}
        for name in names:
            rows = _read_rows(tmp / "similar_items" / name, "item_id", item)
            lists[name] = [titles.get(i, str(i)) for i in rows["similar_item_id"]]
        heading = f"Movies most similar to {titles[item]} (item {item})"
        blocks.append(f"{tag}{heading}:\n{side_by_side(lists)}")
        sections.append((tag + heading, pd.DataFrame(_pad(lists))))

    if QUERY_USER in set(dataset.users()["user_id"]):
        liked = _liked(train, dataset, QUERY_USER, titles)
        heading = f"User {QUERY_USER} liked (train ratings >= 4, best first; {len(liked)} movies)"
        shown = "\n".join(f"  {r:.0f}  {t}" for t, r in liked[:15])
        more = f"\n  ... and {len(liked) - 15} more" if len(liked) > 15 else ""
        blocks.append(f"{tag}{heading}:\n{shown}{more}")
        sections.append((tag + heading, pd.DataFrame(liked, columns=["title", "rating"])))
        lists = {}
        for name in names:
            rows = _read_rows(tmp / "recommendations" / name, "user_id", QUERY_USER)
            lists[name] = [titles.get(i, str(i)) for i in rows["item_id"]]
        heading = f"Top-{args.n} for user {QUERY_USER} (seen items removed)"
        blocks.append(f"{tag}{heading}:\n{side_by_side(lists)}")
        sections.append((tag + heading, pd.DataFrame(_pad(lists))))

    table.to_csv(tmp / "metrics.csv", float_format="%.6g")
    report = write_report(
        tmp,
        title=f"mfdask demo: {'synthetic data' if synthetic else 'MovieLens-1M'}",
        subtitle=header.replace(tag, ""),
        banner=f"{SYNTHETIC_LABEL}: not MovieLens; {why}" if synthetic else None,
        histories=histories,
        metrics={n.upper(): m for n, m in metrics.items()},
        k=args.k,
        sections=sections,
    )
    blocks.append(
        f"{tag}Outputs in {output}/: dataset/, split/, models/, recommendations/, "
        f"similar_items/, metrics.json, metrics.csv, {report.name} (loss.png, metrics.png)"
    )
    payload = {
        "data": label["data"],
        "synthetic": synthetic,
        "source": why if synthetic else str(source),
        "split": {"method": "random", "fraction": 0.2, "seed": args.seed},
        "k": args.k,
        "n": args.n,
        "params": params,
        "metrics": {n: {k: _plain(v) for k, v in m.items()} for n, m in metrics.items()},
    }
    return {"text": "\n\n".join(blocks), "json": payload}


def _pad(lists: dict[str, list[str]]) -> dict[str, list[str]]:
    depth = max((len(v) for v in lists.values()), default=0)
    return {n.upper(): v + [""] * (depth - len(v)) for n, v in lists.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _liked(train, dataset, user_id: int, titles: pd.Series) -> list[tuple[str, float]]:
    """The user's training ratings >= 4 by title, best first (one user: read by filter)."""
    users = dataset.users()
    idx = int(users.loc[users["user_id"] == user_id, "user_idx"].iloc[0])
    rows = pd.read_parquet(
        train.ratings_path, columns=["item_idx", "rating"], filters=[("user_idx", "==", idx)]
    )
    rows = rows[rows["rating"] >= 4]
    items = dataset.items().set_index("item_idx")["item_id"]
    rows = rows.assign(item_id=items.reindex(rows["item_idx"]).to_numpy())
    rows = rows.sort_values(["rating", "item_id"], ascending=[False, True])
    return [
        (titles.get(i, str(i)), float(r))
        for i, r in zip(rows["item_id"], rows["rating"], strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.demo``: the arguments of ``mfdask demo``."""
    return standalone_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
