"""The fold-in batch job (``mfdask recommend --history``) and ``mfdask train --init``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfdask import ALS, BPR, SVD
from mfdask.engine.foldin import recommend_history_all
from mfdask.engine.topk import read_manifest
from mfdask.models.base import UnknownIdError, load_model
from mfdask.models.foldin import fold_in_spec
from tests.test_als import clustered_ratings
from tests.test_jobs import _error, _read, _run


@pytest.fixture(scope="module")
def frames():
    frame, _ = clustered_ratings(n_users=180, n_items=80, seed=7)
    held = frame.user_id.isin(np.sort(frame.user_id.unique())[::6])
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


def _write_parts(frame: pd.DataFrame, path, parts: int = 3) -> str:
    path.mkdir()
    for j in range(parts):
        frame.iloc[j::parts].to_parquet(path / f"part-{j}.parquet", index=False)
    return str(path)


@pytest.mark.parametrize("make", [lambda: ALS(factors=5, iterations=3, random_state=0),
                                  lambda: BPR(factors=5, epochs=5, random_state=0)],
                         ids=["als", "bpr"])  # fmt: skip
def test_batch_fold_in_equals_recommend_with_history(client, frames, tmp_path, make):
    train, held = frames
    model = make().fit(train)
    history = _write_parts(held, tmp_path / "history")
    out = recommend_history_all(fold_in_spec(model), history, 7, tmp_path / "recs", n_blocks=4)
    got = _read(out.path).sort_values(["user_id", "rank"]).reset_index(drop=True)
    users = sorted(held.user_id.unique())
    want = model.recommend(users, n=7, history=held)
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_dtype=False, rtol=1e-5)
    m = read_manifest(out.path)
    assert (m["users"], m["empty_users"], m["skipped_rows"], m["n_blocks"]) == (
        len(users),
        0,
        0,
        4,
    )
    assert m["rows"] == len(want)


def test_batch_fold_in_counts_empty_users_and_skipped_items(client, frames, tmp_path):
    train, held = frames
    model = SVD(factors=4, epochs=3, early_stopping_rounds=None).fit(train)
    bad = pd.DataFrame({"user_id": [-1, held.user_id.iloc[0]], "item_id": [123456, 123456]})
    history = pd.concat([held, bad.assign(rating=np.float32(4))], ignore_index=True)
    path = _write_parts(history, tmp_path / "history", parts=2)
    spec = fold_in_spec(model)
    with pytest.raises(UnknownIdError, match="123456"):
        recommend_history_all(spec, path, 5, tmp_path / "recs")
    assert not (tmp_path / "recs").exists()
    out = recommend_history_all(spec, path, 5, tmp_path / "recs", unknown_items="skip")
    m = read_manifest(out.path)
    assert (m["skipped_rows"], m["empty_users"], m["users"]) == (2, 1, held.user_id.nunique())
    assert -1 not in set(_read(out.path).user_id)


def test_recommend_job_with_history(capsys, client, frames, tmp_path):
    train, held = frames
    model = ALS(factors=5, iterations=3, random_state=0).fit(train)
    model.save(tmp_path / "model")
    history = _write_parts(held, tmp_path / "history")
    code, stdout, _ = _run(
        capsys, "recommend", tmp_path / "model", tmp_path / "recs", "-n", "4", "--history", history
    )
    assert code == 0, stdout
    assert f"for {held.user_id.nunique()} folded-in users" in stdout
    got = _read(tmp_path / "recs").sort_values(["user_id", "rank"]).reset_index(drop=True)
    want = model.recommend(sorted(held.user_id.unique()), n=4, history=held)
    assert list(got.item_id) == list(want.item_id)
    bad = held.assign(item_id=held.item_id.where(held.index > 0, 424242))
    history = _write_parts(bad, tmp_path / "bad")
    code, _, err = _run(
        capsys, "recommend", tmp_path / "model", tmp_path / "r2", "--history", history
    )
    assert code == 2 and "424242" in _error(err)
    code, stdout, _ = _run(
        capsys, "recommend", tmp_path / "model", tmp_path / "r2", "--history", history,
        "--skip-unknown-items",
    )  # fmt: skip
    assert code == 0 and "1 rows with unknown items skipped" in stdout
    code, _, err = _run(
        capsys, "recommend", tmp_path / "model", tmp_path / "r3", "--history", history,
        "--users", "1,2",
    )  # fmt: skip
    assert code == 2 and "--users does not apply with --history" in _error(err)


def test_train_init_continues_a_saved_model(capsys, client, frames, tmp_path):
    train, held = frames
    updated = pd.concat([train, held], ignore_index=True)
    ALS(factors=5, iterations=3, random_state=0).fit(train).save(tmp_path / "old")
    path = _write_parts(updated, tmp_path / "updated")
    code, stdout, err = _run(
        capsys, "train", "--init", tmp_path / "old", "--train", path,
        "--output", tmp_path / "new", "--update-iterations", "2", "--param", "n_threads=1",
    )  # fmt: skip
    assert code == 0, err
    assert f"update 1 of {tmp_path / 'old'}: {held.user_id.nunique()} new users" in stdout
    model = load_model(tmp_path / "new")
    assert model.n_users == updated.user_id.nunique() and model.n_threads == 1
    assert [h.get("update") for h in model.history_] == [None] * 3 + [1, 1]
    code, _, err = _run(
        capsys, "train", "--init", tmp_path / "old", "--model", "bpr", "--train", path,
        "--output", tmp_path / "x",
    )  # fmt: skip
    assert code == 2 and "does not match the ALS" in _error(err)
    code, _, err = _run(
        capsys, "train", "--model", "als", "--train", path, "--output", tmp_path / "y",
        "--update-iterations", "2",
    )  # fmt: skip
    assert code == 2 and "--update-iterations needs --init" in _error(err)
