"""Ingest end to end: real MovieLens row for row, generic CSV/TSV/Parquet, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfdask.cli import main as cli_main
from mfdask.data import ingest as ingest_module
from mfdask.data import schema
from mfdask.data.dataset import open_dataset
from mfdask.data.ingest import bucket_of, ingest, n_buckets_for


def original_rows(ds) -> np.ndarray:
    """The dataset's ratings back in original ids, sorted: (user, item, rating, timestamp)."""
    r = ds.ratings().compute()
    users = ds.users().sort_values(schema.USER_IDX)[schema.USER_ID].to_numpy()
    items = ds.items().sort_values(schema.ITEM_IDX)[schema.ITEM_ID].to_numpy()
    out = np.column_stack(
        [
            users[r[schema.USER_IDX].to_numpy()],
            items[r[schema.ITEM_IDX].to_numpy()],
            r[schema.RATING].to_numpy(dtype=np.float64),
            r[schema.TIMESTAMP].to_numpy(),
        ]
    )
    return out[np.lexsort(out.T[::-1])]


def sorted_source(frame: pd.DataFrame) -> np.ndarray:
    a = frame.to_numpy(dtype=np.float64)
    return a[np.lexsort(a.T[::-1])]


def check_id_maps(ds) -> None:
    users, items = ds.users(), ds.items()
    assert users[schema.USER_IDX].tolist() == list(range(len(users)))
    assert items[schema.ITEM_IDX].tolist() == list(range(len(items)))
    assert users[schema.USER_ID].is_monotonic_increasing
    assert items[schema.ITEM_ID].is_monotonic_increasing


@pytest.mark.data
def test_ml1m_row_for_row(client, ml1m_dir, tmp_path):
    ds = ingest(ml1m_dir, tmp_path / "ml1m")
    assert (ds.n_ratings, ds.n_users, ds.n_items) == (1_000_209, 6_040, 3_706)
    m = ds.manifest
    assert m["rows_in"] == m["rows_out"] == 1_000_209
    assert m["rows_quarantined"] == m["duplicates_merged"] == 0
    assert m["rating_histogram"] == {"1": 56174, "2": 107557, "3": 261197, "4": 348971, "5": 226310}
    sums = {Path(f["path"]).name: f["sha256"] for f in m["source"]["files"]}
    assert sums["ratings.dat"] == "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f"
    check_id_maps(ds)
    # '::' read with the C parser as ':' with empty columns in between
    source = pd.read_csv(ml1m_dir / "ratings.dat", sep=":", header=None, usecols=[0, 2, 4, 6])
    np.testing.assert_array_equal(original_rows(ds), sorted_source(source))
    items = ds.items()
    toy = items[items.item_id == 1].iloc[0]
    assert (toy.title, toy.genres) == ("Toy Story (1995)", "Animation|Children's|Comedy")
    # hive-partitioned by user block, readable as is
    blocks = sorted(p.name for p in ds.ratings_path.iterdir())
    assert blocks == [f"user_block={k}" for k in range(8)]


@pytest.mark.data
def test_ml100k_row_for_row(client, ml100k_dir, tmp_path):
    ds = ingest(ml100k_dir, tmp_path / "ml100k", n_user_blocks=3)
    assert (ds.n_ratings, ds.n_users, ds.n_items) == (100_000, 943, 1_682)
    assert ds.manifest["format"] == "ml-100k"
    check_id_maps(ds)
    source = pd.read_csv(ml100k_dir / "u.data", sep="\t", header=None)
    np.testing.assert_array_equal(original_rows(ds), sorted_source(source))
    items = ds.items().set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story (1995)"
    assert items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[2, "genres"] == "Action|Adventure|Thriller"


@pytest.mark.data
def test_ml_latest_small(client, ml_data, tmp_path):
    src = ml_data / "ml-latest-small"
    if not (src / "ratings.csv").exists():
        pytest.skip("ml-latest-small is missing")
    ds = ingest(src, tmp_path / "small")
    assert (ds.n_ratings, ds.n_users, ds.n_items) == (100_836, 610, 9_724)
    assert ds.manifest["format"] == "ml-csv"
    assert ds.manifest["rating_min"] == 0.5
    source = pd.read_csv(src / "ratings.csv")
    np.testing.assert_array_equal(original_rows(ds), sorted_source(source))
    # movies listed but never rated are not in the id map
    assert len(ds.items()) == 9_724
    assert ds.items()["title"].notna().all()


def test_many_blocks_equal_one_block(client, tmp_path, planted):
    frame = planted.assign(timestamp=np.arange(len(planted)) + 10**9)
    src = tmp_path / "r.csv"
    frame.to_csv(src, index=False)
    one = ingest(src, tmp_path / "one")
    many = ingest(src, tmp_path / "many", blocksize=48 * 1024, n_user_blocks=5)
    np.testing.assert_array_equal(original_rows(one), original_rows(many))
    np.testing.assert_allclose(original_rows(one)[:, 2], sorted_source(frame)[:, 2], rtol=1e-6)
    assert one.manifest["id_map_fingerprint"] == many.manifest["id_map_fingerprint"]
    assert many.manifest["n_user_blocks"] == 5


def test_many_user_buckets_equal_one_bucket(client, tmp_path, planted, monkeypatch):
    # Duplicates spread over blocks and buckets; string ids; the result must not depend
    # on how the users are bucketed.
    rng = np.random.default_rng(3)
    frame = planted.assign(timestamp=np.arange(len(planted)) + 10**9)
    again = frame.sample(400, random_state=1).assign(rating=lambda f: 6 - f["rating"])
    frame = pd.concat([frame, again]).iloc[rng.permutation(len(frame) + len(again))]
    frame["user_id"] = "u" + frame["user_id"].astype(str)
    src = tmp_path / "r.csv"
    frame.to_csv(src, index=False)
    one = {p: ingest(src, tmp_path / f"one-{p}", duplicates=p) for p in ("last", "mean")}
    monkeypatch.setattr(ingest_module, "ROWS_PER_BUCKET", 500)
    for policy in ("last", "mean"):
        many = ingest(src, tmp_path / policy, blocksize=16 * 1024, duplicates=policy)
        assert many.manifest["ingest"]["user_buckets"] > 8
        assert one[policy].manifest["ingest"]["user_buckets"] == 1
        assert many.ratings().npartitions > 8
        a, b = original_rows(one[policy]), original_rows(many)
        np.testing.assert_array_equal(a[:, [0, 1, 3]], b[:, [0, 1, 3]])
        np.testing.assert_allclose(a[:, 2].astype(float), b[:, 2].astype(float), rtol=1e-6)
        for key in ("rows", "rows_in", "duplicates_merged", "rating_histogram", "users"):
            assert many.manifest[key] == one[policy].manifest[key], key
        assert many.manifest["duplicates_merged"] == 400
        assert many.manifest["rows"] == len(planted)


def test_user_blocks_hold_their_users_sorted(client, tmp_path, planted, monkeypatch):
    monkeypatch.setattr(ingest_module, "ROWS_PER_BUCKET", 1000)
    src = tmp_path / "r.csv"
    planted.sample(frac=1, random_state=0).to_csv(src, index=False)
    ds = ingest(src, tmp_path / "out", n_user_blocks=3, blocksize=8 * 1024)
    files = sorted(ds.ratings_path.glob("user_block=*/*.parquet"))
    assert len(files) > 3
    total = 0
    for path in files:
        part = pd.read_parquet(path)
        block = int(path.parent.name.split("=")[1])
        assert (part[schema.USER_IDX] % 3 == block).all()
        key = part[schema.USER_IDX].to_numpy(np.int64) * ds.n_items + part[schema.ITEM_IDX]
        assert (np.diff(key) > 0).all()  # sorted by (user, item), no pair twice
        assert dict(part.dtypes) == dict(schema.RATING_DTYPES)
        total += len(part)
    assert total == ds.n_ratings == len(planted)


def test_user_bucket_depends_only_on_the_id():
    ids = np.array([5, 17, 10**12, -3, 17], dtype=np.int64)
    b = bucket_of(ids, 7)
    assert b[1] == b[4]
    np.testing.assert_array_equal(b, bucket_of(ids.astype(np.int64)[::-1], 7)[::-1])
    np.testing.assert_array_equal(b[:2], bucket_of(pd.Series(ids[:2].astype(np.int32)), 7))
    assert set(bucket_of(np.arange(10_000), 7)) == set(range(7))
    words = bucket_of(np.array(["a", "b", "a"], dtype=object), 5)
    assert words[0] == words[2]
    np.testing.assert_array_equal(words, bucket_of(pd.Series(["a", "b", "a"], dtype="str"), 5))
    assert n_buckets_for(0) == n_buckets_for(1) == 1
    assert n_buckets_for(10**8) == 10**8 // ingest_module.ROWS_PER_BUCKET


def test_rated_items_missing_from_movies_get_a_row(client, tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("1::10::5::100\n2::20::3::100\n2::30::4::100\n")
    (d / "movies.dat").write_bytes(
        "10::Caf\xe9 (1999)::Drama\n99::Unrated (2000)::Comedy\n".encode("latin-1")
    )
    ds = ingest(d, tmp_path / "out")
    items = ds.items()
    assert items["item_id"].tolist() == [10, 20, 30]
    assert items["title"].iloc[0] == "Café (1999)"
    assert items["title"].iloc[1:].isna().all()


def test_headerless_positions_and_string_ids(client, tmp_path):
    src = tmp_path / "plays.tsv"
    src.write_text('x\tu2\tartist b\t3\nx\tu1\tartist a\t10\nx\tu2\t"artist a"\t1\n')
    ds = ingest(src, tmp_path / "out", user_col=1, item_col=2, rating_col=3)
    assert ds.manifest["ingest"]["id_types"] == {"user": "str", "item": "str"}
    assert ds.users()["user_id"].tolist() == ["u1", "u2"]
    assert ds.items()["item_id"].tolist() == ["artist a", "artist b"]
    r = ds.ratings().compute().sort_values(["user_idx", "item_idx"])
    assert r[["user_idx", "item_idx", "rating"]].to_numpy().tolist() == [
        [0, 0, 10.0],
        [1, 0, 1.0],
        [1, 1, 3.0],
    ]


def test_parquet_source(client, tmp_path, planted):
    frame = planted.rename(columns={"user_id": "u", "item_id": "i", "rating": "stars"})
    frame["when"] = pd.to_datetime(np.arange(len(frame)) + 10**9, unit="s")
    frame.loc[5, "stars"] = np.nan
    frame.loc[7, "stars"] = np.inf
    path = tmp_path / "r.parquet"
    frame.to_parquet(path, row_group_size=1000)
    ds = ingest(
        path,
        tmp_path / "out",
        user_col="u",
        item_col="i",
        rating_col="stars",
        time_col="when",
        on_bad_rows="skip",
    )
    assert ds.manifest["rows"] == len(frame) - 2
    q = pd.read_parquet(ds.path / schema.QUARANTINE_FILE)
    assert q[["line", "reason"]].to_numpy().tolist() == [
        [6, "stars is missing"],
        [8, "stars is not a finite number"],
    ]
    r = ds.ratings().compute()
    assert r["timestamp"].min() == 10**9


def test_cli_ingest_summary_and_manifest(client, tmp_path, capsys):
    src = tmp_path / "r.csv"
    src.write_text("user_id,item_id,rating\n1,2,3\n1,2,4\n2,3,x\n3,3,5\n")
    dest = tmp_path / "out"
    code = cli_main(
        [
            "ingest",
            str(src),
            str(dest),
            "--duplicates",
            "mean",
            "--on-bad-rows",
            "skip",
            "--rating-min",
            "1",
            "--rating-max",
            "5",
            "--user-blocks",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "2 ratings, 2 users, 2 items (4 rows read, 1 quarantined, 1 duplicates merged" in out
    m = json.loads((dest / schema.MANIFEST_FILE).read_text())
    assert m["ingest"]["declared_rating_range"] == [1.0, 5.0]
    assert open_dataset(dest).n_ratings == 2
    assert cli_main(["ingest", str(src), str(dest)]) == 2
    assert "already holds an mfdask dataset" in capsys.readouterr().err
