"""The batch jobs end to end: prepare, train, recommend, similar, demo, and their errors.

Jobs run in-process through ``mfdask.cli.main`` on the test client (``session`` reuses
the default client), except where the standalone ``python -m jobs.NAME`` form is the
point. Errors are checked on their exact message, as printed for the user.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mfdask.models.registry as registry
from mfdask.cli import main
from mfdask.data.split import split_dataset
from mfdask.data.synth import synthesize
from mfdask.engine.topk import read_manifest
from mfdask.models import ALS
from mfdask.models.base import load_model
from tests.conftest import planted_ratings
from tests.fixed_model import FixedModel


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(err: str) -> str:
    """The one error line a failed job prints (logging output aside)."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def _read(path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    return frame.drop(columns=[c for c in frame.columns if c.endswith("_block")])


@pytest.fixture(scope="module")
def prepared(client, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    ds = synthesize(root / "dataset", n_ratings=4000, seed=0)
    split_dataset(ds, root / "split", method="random", fraction=0.2, seed=0)
    return root


@pytest.fixture(scope="module")
def other_dataset(client, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("other")
    return synthesize(root / "dataset", n_ratings=3000, n_users=90, seed=1).path


@pytest.fixture
def fixed_registered(monkeypatch):
    """Make ``FixedModel`` loadable by name, as a model that lands later would be."""
    original = registry.model_classes
    monkeypatch.setattr(registry, "model_classes", lambda: {**original(), "fixedmodel": FixedModel})


@pytest.fixture(scope="module")
def fixed_dir(client, prepared, tmp_path_factory) -> tuple[Path, FixedModel]:
    path = tmp_path_factory.mktemp("fixed") / "model"
    model = FixedModel(factors=5, biased=True, random_state=2).fit(prepared / "split" / "train")
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def als_dir(client, prepared, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("als") / "model"
    ALS(factors=4, iterations=2, random_state=0).fit(prepared / "split" / "train").save(path)
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- train


def test_train_from_flags(capsys, prepared, tmp_path):
    out = tmp_path / "als"
    code, stdout, _ = _run(
        capsys,
        "train",
        "--model", "ALS",
        "--train", prepared / "split" / "train",
        "--output", out,
        "--param", "factors=6",
        "--param", "iterations=2",
        "--param", "random_state=3",
        "--param", "solver=cholesky",
    )  # fmt: skip
    assert code == 0
    model = load_model(out, dataset=prepared / "split" / "test")
    assert type(model) is ALS
    assert (model.factors, model.iterations, model.random_state, model.solver) == (
        6,
        2,
        3,
        "cholesky",
    )
    assert model.user_factors_.shape[1] == 6 and len(model.history_) == 2
    assert stdout.startswith("ALS: 2 epochs in ") and stdout.rstrip().endswith(f"saved to {out}")


def test_train_from_a_job_file_with_flag_override(capsys, prepared, tmp_path):
    job = tmp_path / "svd.toml"
    job.write_text(
        f'model = "svd"\ntrain = "{prepared / "split" / "train"}"\n'
        f'output = "{tmp_path / "svd"}"\n\n[params]\nfactors = 3\nepochs = 5\n'
        "learning_rate = 0.01\nrandom_state = 1\n"
    )
    code, _, _ = _run(capsys, "train", "--config", job, "--param", "epochs=2")
    assert code == 0
    model = load_model(tmp_path / "svd")
    assert (model.factors, model.epochs, model.learning_rate) == (3, 2, 0.01)


def test_train_refuses_an_existing_output_before_training(capsys, prepared, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    args = ["train", "--model", "als", "--train", prepared / "split" / "train", "--output", out]
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert _error(err) == (
        f"mfdask train: error: {out} already exists: choose another destination or pass --overwrite"
    )
    code, _, _ = _run(capsys, *args, "--overwrite", "--param", "iterations=1")
    assert code == 0 and (out / "model.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "alx"], "unknown model 'alx'; choose one of {models}"),
        (
            ["--model", "als", "--param", "factor=8"],
            "--param: ALS has no hyper-parameter 'factor' (did you mean 'factors'?); "
            "valid: {als_params}",
        ),
        (
            ["--model", "als", "--param", "factors=0"],
            "ALS: factors must be a positive integer, got 0",
        ),
        (
            ["--model", "als", "--param", "regularization=-1"],
            "ALS: regularization must be a finite number >= 0, got -1.0",
        ),
        (
            ["--model", "als", "--param", "factors=many"],
            "--param: ALS factors must be an integer (default 64), got 'many'",
        ),
        (
            ["--model", "als", "--param", "factors"],
            "--param 'factors' is not NAME=VALUE (e.g. --param factors=64)",
        ),
        (
            ["--model", "svd", "--param", "lr_schedule=cosine"],
            "SVD: lr_schedule must be one of {svd_schedules}, got 'cosine'",
        ),
    ],
)
def test_train_rejects_bad_names_and_values(capsys, prepared, tmp_path, argv, message):
    from mfdask.models.svd import LR_SCHEDULES

    expected = message.format(
        models=sorted(registry.model_classes()),
        als_params=", ".join(ALS._param_names()),
        svd_schedules=list(LR_SCHEDULES),
    )
    started = time.perf_counter()
    code, _, err = _run(
        capsys, "train", "--train", prepared / "split" / "train", "--output", tmp_path / "m", *argv
    )
    assert code == 2
    assert _error(err) == f"mfdask train: error: {expected}"
    assert not (tmp_path / "m").exists()
    assert time.perf_counter() - started < 5, "validated before any work"


def test_train_job_file_errors(capsys, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('model = "als"\nouptut = "x"\n')
    _, _, err = _run(capsys, "train", "--config", job)
    assert _error(err) == (
        f"mfdask train: error: job file {job} has unknown key(s) ['ouptut']; allowed: "
        "['model', 'train', 'validation', 'output', 'params']"
    )
    job.write_text('model = "als"\ntrain = "t"\noutput = "o"\n[params]\nfactors = 2.5\n')
    _, _, err = _run(capsys, "train", "--config", job)
    assert _error(err) == (
        f"mfdask train: error: job file {job} [params]: ALS factors must be an integer "
        "(default 64), got 2.5"
    )
    _, _, err = _run(capsys, "train", "--model", "als")
    assert _error(err) == (
        "mfdask train: error: no train given: pass --train or set `train` in the --config job file"
    )


# --------------------------------------------------------------------------- recommend


@pytest.mark.parametrize("blocks", [1, 5])
def test_recommend_job_equals_model_recommend(
    capsys, fixed_registered, fixed_dir, prepared, tmp_path, blocks
):
    path, model = fixed_dir
    out = tmp_path / "recs"
    code, stdout, _ = _run(
        capsys,
        "recommend", path, out,
        "-n", "7",
        "--seen", prepared / "split" / "train",
        "--blocks", str(blocks),
    )  # fmt: skip
    assert code == 0, stdout
    batch = _read(out).sort_values(["user_id", "rank"]).reset_index(drop=True)
    single = model.recommend(model.user_ids_, n=7).sort_values(["user_id", "rank"])
    np.testing.assert_array_equal(batch["item_id"], single["item_id"])
    np.testing.assert_allclose(batch["score"], single["score"], rtol=1e-5)
    manifest = read_manifest(out)
    assert manifest["n_blocks"] == blocks and manifest["rows"] == len(batch)
    assert stdout.startswith(f"{len(batch):,} recommendations for {model.n_users:,} users")


def test_recommend_job_for_some_users(capsys, fixed_registered, fixed_dir, tmp_path):
    path, model = fixed_dir
    wanted = [str(u) for u in model.user_ids_[[0, 3, 9]]]
    code, _, _ = _run(capsys, "recommend", path, tmp_path / "r", "--users", ",".join(wanted))
    assert code == 0
    got = _read(tmp_path / "r")
    assert sorted(got["user_id"].unique()) == sorted(model.user_ids_[[0, 3, 9]])


def test_similar_job_equals_model_similar_items(capsys, fixed_registered, fixed_dir, tmp_path):
    path, model = fixed_dir
    out = tmp_path / "sim"
    code, _, _ = _run(capsys, "similar", path, out, "-n", "4", "--blocks", "3")
    assert code == 0
    batch = _read(out).sort_values(["item_id", "rank"]).reset_index(drop=True)
    single = model.similar_items(model.item_ids_, n=4).sort_values(["item_id", "rank"])
    np.testing.assert_array_equal(batch["similar_item_id"], single["similar_item_id"])
    np.testing.assert_allclose(batch["score"], single["score"], rtol=1e-5, atol=1e-6)


def test_missing_model_directory(capsys, tmp_path):
    code, _, err = _run(capsys, "recommend", tmp_path / "nope", tmp_path / "out")
    assert code == 2
    assert _error(err) == (
        f"mfdask recommend: error: model directory {tmp_path / 'nope'} does not exist: "
        "train one with `mfdask train`"
    )
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "similar", tmp_path / "empty", tmp_path / "out")
    assert _error(err) == (
        f"mfdask similar: error: {tmp_path / 'empty'} is not a saved mfdask model: "
        "model.json is missing"
    )


def test_corrupt_model_directory(capsys, als_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(als_dir, broken)
    (broken / "item_factors.parquet").write_bytes(b"PAR1 truncated")
    code, _, err = _run(capsys, "recommend", broken, tmp_path / "out")
    assert code == 2
    assert _error(err).startswith(
        f"mfdask recommend: error: saved model {broken} is incomplete or corrupt: "
    )
    (broken / "model.json").write_text("{ not json")
    code, _, err = _run(capsys, "recommend", broken, tmp_path / "out")
    assert _error(err).startswith(
        f"mfdask recommend: error: saved model {broken} is incomplete or corrupt: JSONDecodeError"
    )
    assert not (tmp_path / "out").exists()


def test_model_applied_to_a_dataset_with_other_id_maps(capsys, als_dir, other_dataset, tmp_path):
    model = load_model(als_dir)
    from mfdask.data.dataset import open_dataset

    other = open_dataset(other_dataset)
    code, _, err = _run(capsys, "recommend", als_dir, tmp_path / "out", "--seen", other_dataset)
    assert code == 2
    assert _error(err) == (
        "mfdask recommend: error: the model was trained on a dataset with id-map fingerprint "
        f"{model.fingerprint_}, but {other_dataset} has {other.fingerprint()}: apply it to a "
        "split of the dataset it was trained on, or retrain"
    )


def test_existing_and_unwritable_outputs(capsys, als_dir, tmp_path):
    existing = tmp_path / "recs"
    existing.mkdir()
    code, _, err = _run(capsys, "recommend", als_dir, existing)
    assert _error(err) == (
        f"mfdask recommend: error: {existing} already exists: choose another destination or "
        "pass --overwrite"
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = _run(capsys, "similar", als_dir, blocker / "sim")
    assert code == 2
    assert _error(err) == (
        f"mfdask similar: error: cannot write similar items to {blocker / 'sim'}: {blocker} is "
        "a file, not a directory; choose a writable --output"
    )


def test_unknown_user_is_named(capsys, als_dir, tmp_path):
    _, _, err = _run(capsys, "recommend", als_dir, tmp_path / "r", "--users", "1,99999999")
    assert _error(err) == (
        "mfdask recommend: error: unknown user id(s) [99999999]: the model knows "
        f"{load_model(als_dir).n_users} users"
    )


def test_unreachable_scheduler_fails_fast_naming_it(capsys, als_dir, tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    code, _, err = _run(
        capsys, "recommend", als_dir, tmp_path / "r", "--scheduler", address,
        "--scheduler-timeout", "3",
    )  # fmt: skip
    assert code == 2
    assert time.perf_counter() - started < 10
    assert _error(err).startswith(
        f"mfdask recommend: error: cannot reach the Dask scheduler at {address} within 3 s: "
    )
    assert not (tmp_path / "r").exists()


def test_standalone_job_module_names_the_scheduler(als_dir, tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    proc = subprocess.run(
        [
            sys.executable, "-m", "jobs.similar", str(als_dir), str(tmp_path / "s"),
            "--scheduler", address, "--scheduler-timeout", "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr).startswith(
        f"mfdask similar: error: cannot reach the Dask scheduler at {address} within 2 s: "
    )


# --------------------------------------------------------------------------- prepare, demo


def test_prepare_from_raw_files(capsys, tmp_path):
    raw = planted_ratings(n_users=40, n_items=30, density=0.3, seed=4)
    raw["rating"] = np.clip(np.round(raw["rating"]), 1, 5)
    raw["timestamp"] = np.arange(len(raw))
    raw.to_csv(tmp_path / "ratings.csv", index=False)
    dest = tmp_path / "prepared"
    code, stdout, _ = _run(
        capsys, "prepare", tmp_path / "ratings.csv", dest, "--method", "user_holdout"
    )
    assert code == 0, stdout
    from mfdask.data.dataset import open_dataset

    full, train, test = (open_dataset(dest / p) for p in ("dataset", "split/train", "split/test"))
    assert full.n_ratings == len(raw) == train.n_ratings + test.n_ratings
    assert train.fingerprint() == test.fingerprint() == full.fingerprint()
    assert f"{len(raw):,} ratings, 40 users, 30 items" in stdout
    code, _, err = _run(capsys, "prepare", tmp_path / "ratings.csv", dest)
    assert _error(err) == (
        f"mfdask prepare: error: {dest} already exists: choose another destination or pass "
        "--overwrite"
    )


def test_demo_offline_runs_on_labelled_synthetic_data(capsys, monkeypatch, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("MFDASK_DATA", str(empty))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    code, stdout, _ = _run(
        capsys,
        "demo",
        "--output", out,
        "--models", "svd,als",
        "--synthetic-ratings", "20000",
        "--param", "svd.epochs=3",
        "--param", "als.iterations=3",
        "--download-url", f"http://127.0.0.1:{_closed_port()}",
    )  # fmt: skip
    assert code == 0, stdout
    first = stdout.splitlines()[0]
    assert first.startswith("MovieLens-1M is not available (cannot download http://127.0.0.1:")
    assert first.endswith("running on synthetic MovieLens-shaped data instead; every output is "
                          "labelled SYNTHETIC.")  # fmt: skip
    # Every printed section carries the label.
    sections = [s for s in stdout.split("\n\n")[1:] if s.strip()]
    assert sections and all(s.startswith("[SYNTHETIC DATA") for s in sections)
    for heading in ("Metrics on the test split", "most similar to", "User 4 liked", "Top-10"):
        assert heading in stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["synthetic"] is True and set(summary["metrics"]) == {"svd", "als"}
    assert summary["metrics"]["svd"]["rmse"] > 0
    assert "SYNTHETIC DATA" in (out / "report.html").read_text()
    for name in ("svd", "als"):
        recs = _read(out / "recommendations" / name)
        assert read_manifest(out / "recommendations" / name)["data"].startswith("SYNTHETIC")
        assert len(recs) == read_manifest(out / "recommendations" / name)["rows"] > 0
        assert len(_read(out / "similar_items" / name)) > 0
        assert load_model(out / "models" / name).metrics_["data"].startswith("SYNTHETIC")
    assert (out / "loss.png").exists() and (out / "metrics.png").exists()
    assert (out / "summary.txt").read_text().startswith("[SYNTHETIC DATA")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_demo_rejects_unknown_models_and_params(capsys, tmp_path):
    _, _, err = _run(capsys, "demo", "--output", tmp_path / "d", "--models", "als,foo")
    assert _error(err) == (
        "mfdask demo: error: unknown model(s) ['foo'] in --models; choose from "
        f"{[m for m in ('svd', 'als', 'bpr', 'warp') if m in registry.model_classes()]}"
    )
    _, _, err = _run(
        capsys, "demo", "--output", tmp_path / "d", "--models", "als", "--param", "als.factors=-2"
    )
    assert _error(err) == "mfdask demo: error: ALS: factors must be a positive integer, got -2"
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_on_movielens_1m(capsys, ml1m_dir, tmp_path):
    """The README's first command on the real data (minutes: see the demo timing figures)."""
    code, stdout, _ = _run(capsys, "demo", "--data", ml1m_dir, "--output", tmp_path / "demo")
    assert code == 0
    toy_story = stdout.split("Movies most similar to Toy Story (1995)")[1].split("\n\n")[0]
    assert "Toy Story 2 (1999)" in toy_story


@pytest.mark.distributed
def test_jobs_on_separate_scheduler_and_workers_match_local(capsys, als_dir, tmp_path):
    """`dask scheduler` + two `dask worker` processes give the LocalCluster's outputs."""
    from tests.processes import process_cluster

    local = tmp_path / "local"
    for job in ("recommend", "similar"):
        code, _, _ = _run(capsys, job, als_dir, local / job, "--blocks", "4")
        assert code == 0
    remote = tmp_path / "remote"
    with process_cluster(tmp_path / "logs", n_workers=2) as cluster:
        for job in ("recommend", "similar"):
            code, _, err = _run(
                capsys, job, als_dir, remote / job, "--blocks", "4", "--scheduler", cluster.address
            )
            assert code == 0, err
    for job in ("recommend", "similar"):
        pd.testing.assert_frame_equal(_read(local / job), _read(remote / job))
        assert (
            read_manifest(local / job)["rows_per_block"]
            == read_manifest(remote / job)["rows_per_block"]
        )
