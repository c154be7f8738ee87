"""Event data (plays, clicks: ``user_id, item_id[, weight]``) as input to ingest, fit, split
and evaluation; the bad cases each named; the weightings of ALS, BPR and WARP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, BPR, WARP, load_model
from mfdask.cli import main as cli_main
from mfdask.data import schema
from mfdask.data.ingest import ingest
from mfdask.data.split import split_dataset
from mfdask.data.training import InputError, as_training_data
from mfdask.data.validate import BadRowsError, IngestError
from mfdask.evaluate import evaluate_ranking


def play_counts(n_users: int = 120, n_items: int = 80, seed: int = 0) -> pd.DataFrame:
    """Two taste groups of users (by the parity of the user); group g plays the items of
    half g of the catalogue (not by parity: the engines block items by residue) with
    heavy-tailed play counts, and two items of the other half once."""
    rng = np.random.default_rng(seed)
    rows = []
    half = n_items // 2
    for u in range(n_users):
        group = u % 2
        liked = rng.choice(np.arange(group * half, (group + 1) * half), size=12, replace=False)
        other = rng.choice(np.arange((1 - group) * half, (2 - group) * half), size=2, replace=False)
        for i in liked:
            rows.append((u + 1, int(i) + 100, float(rng.pareto(1.2) * 50 + 1)))
        for i in other:
            rows.append((u + 1, int(i) + 100, 1.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "weight"])


def in_group(recs: pd.DataFrame, n_items: int = 80) -> float:
    """Share of recommendations from the user's own half of the catalogue."""
    group = (recs.user_id - 1) % 2
    return float(((recs.item_id - 100) // (n_items // 2) == group).mean())


# ---------------------------------------------------------------------- fit input
def test_a_weight_frame_is_events_and_repeats_are_summed():
    frame = pd.DataFrame(
        {"user_id": [1, 1, 2, 1], "item_id": [10, 11, 10, 10], "weight": [2.0, 1.0, 5.0, 3.0]}
    )
    data = as_training_data(frame)
    assert data.feedback == schema.FEEDBACK_EVENTS
    got = data.ratings.frame.sort_values([schema.USER_IDX, schema.ITEM_IDX])
    assert got[schema.RATING].tolist() == [5.0, 1.0, 5.0]  # (1,10) = 2 + 3


def test_an_event_list_counts_its_rows():
    frame = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [10, 10, 11, 10]})
    data = as_training_data(frame)
    assert data.feedback == schema.FEEDBACK_EVENTS
    got = data.ratings.frame.sort_values([schema.USER_IDX, schema.ITEM_IDX])
    assert got[schema.RATING].tolist() == [2.0, 1.0, 1.0]


def test_a_dask_event_frame_is_folded_on_the_workers(client):
    import dask.dataframe as dd

    frame = pd.DataFrame(
        {"user_id": [1, 2, 1, 1], "item_id": [10, 10, 10, 11], "weight": [2.0, 5.0, 3.0, 1.0]}
    )
    data = as_training_data(dd.from_pandas(frame, npartitions=2))
    got = data.ratings.compute().sort_values([schema.USER_IDX, schema.ITEM_IDX])
    assert got[schema.RATING].tolist() == [5.0, 1.0, 5.0]


def test_ratings_are_unchanged():
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 10], "rating": [4.0, 2.0]})
    data = as_training_data(frame)
    assert data.feedback == schema.FEEDBACK_RATINGS
    assert data.ratings.frame[schema.RATING].tolist() == [4.0, 2.0]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (-3.0, "weight is -3.0, negative"),
        (np.nan, "weight is missing (NaN/None)"),
        (np.inf, "weight is inf, not a finite number"),
    ],
)
def test_a_bad_weight_is_refused_naming_the_row(value, problem):
    frame = play_counts()
    frame.loc[7, "weight"] = value
    user, item = int(frame.user_id[7]), int(frame.item_id[7])
    with pytest.raises(InputError, match=rf"row 7 \(user_id={user}, item_id={item}\)") as exc:
        ALS().fit(frame)
    assert problem in str(exc.value)


def test_a_frame_without_ids_names_the_missing_column():
    with pytest.raises(InputError, match=r"missing column\(s\) \['item_id'\]"):
        as_training_data(pd.DataFrame({"user_id": [1], "weight": [1.0]}))


# ---------------------------------------------------------------------- ingest
def test_ingest_sums_repeated_events_and_accounts_for_every_row(client, tmp_path):
    src = tmp_path / "plays.csv"
    src.write_text(
        "user,artist,plays,ts\n1,10,5,100\n1,11,1,200\n1,10,2,300\n2,10,7,50\n1,10,1,150\n"
    )
    ds = ingest(
        src, tmp_path / "ds", user_col="user", item_col="artist", weight_col="plays", time_col="ts"
    )
    assert ds.feedback == schema.FEEDBACK_EVENTS
    m = ds.manifest
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"], m["duplicates_merged"]) == (
        5,
        3,
        0,
        2,
    )
    r = ds.ratings().compute().sort_values([schema.USER_IDX, schema.ITEM_IDX])
    assert r[schema.RATING].tolist() == [8.0, 1.0, 7.0]  # (1, 10): 5 + 2 + 1
    assert r[schema.TIMESTAMP].tolist() == [300, 200, 50]  # the latest of each pair
    counted = ingest(
        src,
        tmp_path / "counted",
        user_col="user",
        item_col="artist",
        weight_col="plays",
        duplicates="count",
    )
    r = counted.ratings().compute().sort_values([schema.USER_IDX, schema.ITEM_IDX])
    assert r[schema.RATING].tolist() == [3.0, 1.0, 1.0]


def test_ingest_of_an_event_list_without_weights(client, tmp_path):
    src = tmp_path / "clicks.csv"
    src.write_text("user_id,item_id\n1,10\n1,10\n2,11\n")
    ds = ingest(src, tmp_path / "ds", events=True)
    r = ds.ratings().compute().sort_values([schema.USER_IDX, schema.ITEM_IDX])
    assert r[schema.RATING].tolist() == [2.0, 1.0]
    assert ds.manifest["duplicates_merged"] == 1


def test_ingest_quarantines_negative_and_nan_weights(client, tmp_path):
    src = tmp_path / "plays.csv"
    src.write_text("user_id,item_id,plays\n1,10,5\n1,11,-2\n2,10,nan\n2,12,3\n")
    with pytest.raises(BadRowsError, match=r"line 3.*plays -2 is negative"):
        ingest(src, tmp_path / "ds", weight_col="plays")
    ds = ingest(src, tmp_path / "ds", weight_col="plays", on_bad_rows="skip")
    m = ds.manifest
    assert (m["rows_in"], m["rows_out"], m["rows_quarantined"]) == (4, 2, 2)
    bad = pd.read_parquet(ds.path / schema.QUARANTINE_FILE).sort_values("line")
    assert bad.line.tolist() == [3, 4]
    assert "negative" in bad.reason.iloc[0] and "not a number" in bad.reason.iloc[1]


def test_ingest_refuses_a_rating_column_as_weight(tmp_path):
    src = tmp_path / "ratings.csv"
    src.write_text("user_id,item_id,rating\n1,10,4\n")
    with pytest.raises(ValueError, match="names a rating column"):
        ingest(src, tmp_path / "ds", weight_col="rating")
    with pytest.raises(IngestError, match="has a rating column, so this is ratings"):
        ingest(src, tmp_path / "ds", events=True)
    with pytest.raises(ValueError, match="not both"):
        ingest(src, tmp_path / "ds", weight_col="x", rating_col="rating")


def test_ingest_names_a_missing_weight_column(tmp_path):
    src = tmp_path / "plays.csv"
    src.write_text("user_id,item_id,count\n1,10,4\n")
    with pytest.raises(IngestError, match=r"no column 'plays' in the header.*--weight-col"):
        ingest(src, tmp_path / "ds", weight_col="plays")


def test_ingest_policies_by_kind(tmp_path):
    src = tmp_path / "ratings.csv"
    src.write_text("user_id,item_id,rating\n1,10,4\n")
    with pytest.raises(ValueError, match="does not apply to ratings"):
        ingest(src, tmp_path / "ds", duplicates="sum")


def test_cli_ingest_of_an_event_log(client, tmp_path, capsys):
    src = tmp_path / "plays.tsv"
    src.write_text("userID\tartistID\tweight\n1\t10\t5\n1\t10\t2\n2\t10\t7\n")
    code = cli_main(
        [
            "ingest",
            str(src),
            str(tmp_path / "ds"),
            "--format",
            "tsv",
            "--user-col",
            "userID",
            "--item-col",
            "artistID",
            "--weight-col",
            "weight",
            "--scheduler",
            client.scheduler.address,
        ]
    )
    assert code == 0
    assert "2 events" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "ds" / schema.MANIFEST_FILE).read_text())
    assert manifest["feedback"] == "events" and manifest["duplicates_merged"] == 1


# ---------------------------------------------------------------------- models
def test_weightings_turn_counts_into_confidences():
    from mfdask.models.als import _weigh_partition

    part = pd.DataFrame(
        {
            schema.USER_IDX: np.array([0, 0, 1], np.int32),
            schema.ITEM_IDX: np.array([0, 1, 1], np.int32),
            schema.RATING: np.array([0.0, 9.0, 99.0], np.float32),
        }
    )
    out = _weigh_partition(part, "log", 1.0, schema.EVENT_POSITIVE_CUT, None)
    np.testing.assert_allclose(out[schema.RATING], [0.0, np.log(10), np.log(100)], rtol=1e-6)
    idf, norm = np.array([0.5, 2.0]), np.array([1.0, 1.0])
    out = _weigh_partition(part, "bm25", 1.0, schema.EVENT_POSITIVE_CUT, (idf, norm))
    want = [0.0, 9 * 101 / (100 + 9) * 0.5, 99 * 101 / (100 + 99) * 2.0]
    np.testing.assert_allclose(out[schema.RATING], want, rtol=1e-6)


def test_event_defaults_and_rating_defaults():
    als = ALS()
    assert als.resolved_params("ratings")["alpha"] == ALS.RATING_DEFAULTS["alpha"] == 4.0
    assert als.resolved_params("ratings")["weighting"] == "binary"
    assert ALS(preference="rating").resolved_params("ratings")["weighting"] == "linear"
    assert als.resolved_params("events")["weighting"] == ALS.EVENT_DEFAULTS["weighting"]
    assert ALS(alpha=7.0).resolved_params("events")["alpha"] == 7.0
    assert als.resolved_params("ratings")["regularization_exponent"] == 0.75
    assert als.resolved_params("events")["regularization_exponent"] == 1.0
    assert BPR().resolved_params("ratings")["epochs"] == 60
    assert BPR().resolved_params("events")["weighting"] == "log"
    assert WARP().resolved_params("events")["weighting"] == "binary"
    # use_bias and learning_rate_decay resolve by feedback too, ratings as before.
    assert BPR().resolved_params("ratings")["learning_rate_decay"] == 0.0
    assert BPR().resolved_params("events")["learning_rate_decay"] == 0.01
    assert WARP().resolved_params("ratings")["use_bias"] is True
    assert WARP().resolved_params("events")["use_bias"] is False
    assert WARP(use_bias=True).resolved_params("events")["use_bias"] is True


@pytest.mark.parametrize("weighting", ["binary", "linear", "log", "bm25"])
def test_als_ranks_a_users_group_first_on_play_counts(client, weighting):
    frame = play_counts()
    model = ALS(factors=8, iterations=6, weighting=weighting, random_state=0).fit(frame)
    assert model.feedback_ == "events"
    recs = model.recommend(frame.user_id.unique()[:20], n=5)
    assert in_group(recs) > 0.9


@pytest.mark.parametrize(("cls", "weighting"), [(BPR, "log"), (WARP, "log"), (WARP, "log_sampled")])
def test_pairwise_models_fit_play_counts_with_weighted_steps(client, cls, weighting):
    frame = play_counts()
    model = cls(factors=8, epochs=15, random_state=0, weighting=weighting).fit(frame)
    assert model.params_["weighting"] == weighting
    recs = model.recommend(frame.user_id.unique()[:20], n=5)
    assert in_group(recs) > 0.9


def test_bpr_dynamic_negatives_learn_and_one_sample_is_plain_bpr(client):
    frame = play_counts()
    ratings = frame.drop(columns="weight").assign(rating=5.0)
    plain = BPR(factors=8, epochs=5, random_state=0).fit(ratings)  # ratings: 1 negative
    assert plain.params_["negative_samples"] == 1
    one = BPR(factors=8, epochs=5, random_state=0, negative_samples=1).fit(ratings)
    np.testing.assert_array_equal(one.item_factors_, plain.item_factors_)
    dns = BPR(factors=8, epochs=15, random_state=0, negative_samples=5).fit(frame)
    assert in_group(dns.recommend(frame.user_id.unique()[:20], n=5)) > 0.9
    with pytest.raises(ValueError, match="negative_samples"):
        BPR(negative_samples=0).fit(frame)


def test_step_scale_makes_the_weights_average_one():
    from mfdask.data.training import LocalRatings
    from mfdask.kernels.bpr import step_weight
    from mfdask.models.pairwise import step_scale

    values = np.array([0.0, 1.0, 10.0, 1000.0], np.float32)
    frame = pd.DataFrame({schema.RATING: values})
    scale = step_scale(LocalRatings(frame), schema.EVENT_POSITIVE_CUT)
    weights = [step_weight(v, scale) for v in values[1:]]
    assert np.mean(weights) == pytest.approx(1.0)


def test_split_evaluate_save_and_fold_in_on_events(client, tmp_path):
    src = tmp_path / "plays.csv"
    play_counts().to_csv(src, index=False)
    ds = ingest(src, tmp_path / "ds", weight_col="weight")
    split_dataset(ds, tmp_path / "split", method="user_holdout", fraction=0.2, seed=0)
    train, test = tmp_path / "split" / "train", tmp_path / "split" / "test"
    manifest = json.loads((test / schema.MANIFEST_FILE).read_text())
    assert manifest["feedback"] == "events" and manifest["rows"] > 0
    model = ALS(factors=8, iterations=6, random_state=0).fit(train)
    assert model.feedback_ == "events"
    on_dataset = evaluate_ranking(model, test)
    assert on_dataset["ndcg"] > 0.1 and on_dataset["test_in_train"] == 0
    # the same test set as a frame with a weight column: the same figures
    test_frame = pd.read_parquet(test / "ratings")
    users = pd.read_parquet(test / "users.parquet").set_index("user_idx").user_id
    items = pd.read_parquet(test / "items.parquet").set_index("item_idx").item_id
    frame = pd.DataFrame(
        {
            "user_id": users.loc[test_frame.user_idx].to_numpy(),
            "item_id": items.loc[test_frame.item_idx].to_numpy(),
            "weight": test_frame.rating.to_numpy(),
        }
    )
    assert evaluate_ranking(model, frame)["ndcg"] == pytest.approx(on_dataset["ndcg"])
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert (
        loaded.feedback_ == "events" and loaded.params_["weighting"] == model.params_["weighting"]
    )
    history = pd.DataFrame({"user_id": [9999, 9999], "item_id": [100, 102], "weight": [50.0, 3.0]})
    recs = loaded.recommend([9999], n=5, history=history)
    assert ((recs.item_id - 100) < 40).mean() >= 0.8  # the items of group 0


# ---------------------------------------------------------------------- the demo
@pytest.fixture(scope="module")
def lastfm_dir():
    from tests.conftest import data_root

    root = data_root()
    path = None if root is None else root / "hetrec2011-lastfm-2k"
    if path is None or not (path / "user_artists.dat").is_file():
        pytest.skip("MFDASK_DATA has no hetrec2011-lastfm-2k/user_artists.dat: skipped")
    return path


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_lastfm_offline_without_a_copy_says_where_to_put_one(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MFDASK_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code = cli_main(
        [
            "demo",
            "--dataset",
            "lastfm-2k",
            "--output",
            str(tmp_path / "demo"),
            "--download-url",
            f"http://127.0.0.1:{_closed_port()}",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "Last.fm-2k is not available: cannot download" in err
    assert "hetrec2011-lastfm-2k/user_artists.dat" in err
    assert not (tmp_path / "demo").exists()


@pytest.mark.data
def test_demo_lastfm_on_the_real_play_counts(capsys, lastfm_dir, tmp_path):
    code = cli_main(
        [
            "demo",
            "--dataset",
            "lastfm-2k",
            "--data",
            str(lastfm_dir),
            "--output",
            str(tmp_path / "demo"),
            "--param",
            "als.iterations=5",
            "--param",
            "bpr.epochs=5",
            "--param",
            "warp.epochs=3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "92,834 (user, artist) play counts" in out
    beatles = out.split("Artists most similar to The Beatles (artist 227)")[1].split("\n\n")[0]
    assert "The Rolling Stones" in beatles or "John Lennon" in beatles or "Led Zeppelin" in beatles
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["metrics"]["als"]["ndcg"] > 0.15
