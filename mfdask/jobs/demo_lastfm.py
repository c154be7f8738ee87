"""``mfdask demo --dataset lastfm-2k``: play counts end to end with ALS, BPR and WARP.

  1. find HetRec 2011 Last.fm-2k: --data DIR, then $MFDASK_DATA/hetrec2011-lastfm-2k, then
     ~/.cache/mfdask/hetrec2011-lastfm-2k, then a download from GroupLens. Offline with no
     copy it stops and says where to put one (there is no synthetic stand-in: the point is
     real play counts).
  2. ingest ``user_artists.dat`` as an event log (``--weight-col weight``: the play count
     of each user and artist), so the dataset records ``feedback: "events"`` and the
     models take their event defaults; split it per user, holding out 20 % of each user's
     artists (``user_holdout``, every artist played is a positive) by --seed.
  3. train ALS, BPR and WARP with their defaults on the play counts as they are; evaluate
     each on the held-out artists (precision, recall, NDCG, MAP @k, AUC, coverage; every
     training artist filtered).
  4. print the metrics side by side and the artists most similar to a few well-known
     ones, by name (artists.dat).

Outputs (OUTPUT, default out/demo-lastfm): dataset/ split/{train,test}/ models/NAME/
metrics.json metrics.csv summary.txt.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mfdask.jobs._common import JobError

log = logging.getLogger("mfdask")

DATASET = "lastfm-2k"
MODEL_ORDER = ("als", "bpr", "warp")
QUERY_ARTISTS = (227, 89)
"""The Beatles and Lady Gaga in Last.fm-2k's artist ids."""


def locate_lastfm(data: str | None, download_url: str | None) -> tuple[Path, str]:
    """Last.fm-2k's directory (found or downloaded); a :class:`JobError` saying where to put a
    copy when it is nowhere and cannot be downloaded."""
    from mfdask.data.fetch import BASE_URL, FetchError, fetch, find_movielens

    found = find_movielens(DATASET, data)
    if found is not None:
        return found, f"HetRec 2011 Last.fm-2k from {found}"
    try:
        path = fetch(DATASET, data, base_url=download_url or BASE_URL)
    except (FetchError, OSError) as exc:
        raise JobError(f"Last.fm-2k is not available: {exc}") from exc
    return path, f"HetRec 2011 Last.fm-2k downloaded to {path}"


def artist_names(root: Path) -> pd.Series:
    """Artist id -> name from ``artists.dat`` (ids as strings where names are missing)."""
    path = root / "artists.dat"
    if not path.is_file():
        return pd.Series(dtype=str)
    frame = pd.read_csv(path, sep="\t", usecols=[0, 1], quoting=3, encoding="utf-8")
    frame.columns = ["item_id", "name"]
    return frame.set_index("item_id")["name"].astype(str)


def model_names(requested: str | None) -> list[str]:
    if not requested:
        return list(MODEL_ORDER)
    names = [m.strip().lower() for m in requested.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODEL_ORDER]
    if unknown:
        raise JobError(
            f"--dataset lastfm-2k runs the implicit models {list(MODEL_ORDER)}; "
            f"unknown or not applicable: {unknown}"
        )
    return [m for m in MODEL_ORDER if m in names]


def pipeline(
    args: argparse.Namespace,
    tmp: Path,
    output: Path,
    names: list[str],
    params: dict[str, dict[str, Any]],
    source: Path,
    why: str,
) -> dict[str, Any]:
    from mfdask.data.ingest import ingest
    from mfdask.data.split import split_dataset
    from mfdask.evaluate import evaluate
    from mfdask.jobfile import build_model
    from mfdask.jobs.demo import _read_rows, format_metrics, metrics_table, side_by_side

    t0 = time.perf_counter()
    dataset = ingest(
        source / "user_artists.dat",
        tmp / "dataset",
        format="tsv",
        user_col="userID",
        item_col="artistID",
        weight_col="weight",
    )
    log.info(
        "data: %s (user, artist) play counts, %s users, %s artists (%.1f s)",
        f"{dataset.n_ratings:,}",
        f"{dataset.n_users:,}",
        f"{dataset.n_items:,}",
        time.perf_counter() - t0,
    )
    train, test = split_dataset(
        dataset, tmp / "split", method="user_holdout", fraction=0.2, seed=args.seed
    )
    metrics: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names, 1):
        model = build_model(name, params[name])
        t = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t
        result = evaluate(model, test, k=args.k)
        result["fit_seconds"] = fit_s
        model.metrics_["test"] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        model.save(tmp / "models" / name)
        model.similar_items_all(args.n, tmp / "similar_items" / name)
        metrics[name] = result
        log.info("[%d/%d] %s: trained in %.1f s", i, len(names), type(model).__name__, fit_s)

    names_of = artist_names(source)
    table = metrics_table(metrics, args.k)
    header = (
        f"mfdask demo: {why}\n"
        f"{dataset.n_ratings:,} (user, artist) play counts, {dataset.n_users:,} users, "
        f"{dataset.n_items:,} artists, fitted as they are (user_id, item_id, weight); "
        f"per-user 20 % holdout of artists (seed {args.seed}): train {train.n_ratings:,}, "
        f"test {test.n_ratings:,}; relevant = every held-out artist"
    )
    blocks = [header, f"Metrics on the held-out artists (k = {args.k}):\n{format_metrics(table)}"]
    for artist in QUERY_ARTISTS:
        if artist not in names_of.index:
            continue
        lists = {}
        for name in names:
            rows = _read_rows(tmp / "similar_items" / name, "item_id", artist)
            lists[name] = [names_of.get(a, str(a)) for a in rows["similar_item_id"]]
        blocks.append(
            f"Artists most similar to {names_of[artist]} (artist {artist}):\n"
            f"{side_by_side(lists, width=24)}"
        )
    table.to_csv(tmp / "metrics.csv", float_format="%.6g")
    blocks.append(
        f"Outputs in {output}/: dataset/, split/, models/, similar_items/, metrics.json, "
        "metrics.csv, summary.txt"
    )
    payload = {
        "data": "HetRec 2011 Last.fm-2k (GroupLens)",
        "source": str(source),
        "split": {"method": "user_holdout", "fraction": 0.2, "seed": args.seed},
        "k": args.k,
        "params": params,
        "resolved_params": {n: build_model(n, params[n]).resolved_params("events") for n in names},
        "metrics": {n: {k: v for k, v in m.items() if v == v} for n, m in metrics.items()},
    }
    return {"text": "\n\n".join(blocks), "json": payload}
