"""Faults on a real cluster: worker processes killed mid-fit, the scheduler killed mid-job.

Every test runs ``dask scheduler`` and ``dask worker`` processes (tests/processes.py) and
fits from a Parquet dataset, as a job on a cluster does. A killed worker takes its rating
blocks and factor blocks with it; the fit notices (instead of waiting forever on tasks
pinned to it), reads the lost blocks again from the Parquet input onto the surviving
workers, restores the last checkpoint and replays. The block count is kept, so the model
is the one a clean fit computes: the tests require equal factors, and the held-out metric
within 1 % of the clean run as the issue states it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from distributed import Client

from mfdask import ALS, BPR, SVD, load_model
from mfdask.data.split import split_dataset
from mfdask.data.synth import synthesize
from mfdask.engine.checkpoint import CheckpointStore
from mfdask.engine.resilience import SchedulerLostError
from mfdask.engine.state import StateLostError
from mfdask.evaluate import evaluate_ranking, evaluate_rating
from tests.processes import process_cluster

pytestmark = pytest.mark.distributed

MODELS = {
    "als": lambda **kw: ALS(factors=8, iterations=8, random_state=0, checkpoint_every=2, **kw),
    "svd": lambda **kw: SVD(
        factors=8, epochs=8, early_stopping_rounds=None, random_state=0, checkpoint_every=2, **kw
    ),
    "bpr": lambda **kw: BPR(factors=8, epochs=8, random_state=0, checkpoint_every=2, **kw),
}


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("faults")
    ds = synthesize(root / "dataset", n_ratings=20000, seed=0)
    train, test = split_dataset(ds, root / "split", method="random", fraction=0.2, seed=0)
    return train.path, test.path


def _metric(model, test: Path) -> float:
    if model.implicit:
        return float(evaluate_ranking(model, str(test), k=10)["ndcg"])
    return float(evaluate_rating(model, str(test))["rmse"])


def kill_after(cluster, iteration: int, how: str = "group"):
    """A callback that kills worker 1 when ``iteration`` is done (mid-fit)."""

    def callback(record):
        if record.get("iteration", record.get("epoch")) == iteration and not callback.done:
            callback.done = True
            if how == "group":  # nanny and worker: a lost machine, the cluster shrinks
                cluster.kill_worker(1)
            else:  # the worker only: its nanny starts a new one (a new address)
                for child in psutil.Process(cluster.workers[1].pid).children(recursive=True):
                    child.send_signal(signal.SIGKILL)

    callback.done = False
    return callback


def _fault_run(tmp_path, split, name: str, how: str):
    train, test = split
    with process_cluster(tmp_path / "logs", n_workers=2) as cluster:
        with Client(cluster.address):
            started = time.perf_counter()
            clean = MODELS[name]().fit(str(train))
            clean_seconds = time.perf_counter() - started
            started = time.perf_counter()
            hit = MODELS[name]().fit(str(train), callback=kill_after(cluster, 3, how))
            hit_seconds = time.perf_counter() - started
            scores = _metric(clean, test), _metric(hit, test)
    recoveries = hit.metrics_.get("recoveries", [])
    assert len(recoveries) == 1, recoveries
    assert recoveries[0]["restarted_from"] == 2, "restarted from the checkpoint after iteration 2"
    assert len(hit.history_) == len(clean.history_)
    # Float-level agreement: after a recovery onto fewer workers an ALS fit on worker
    # processes has been seen 1.1e-6 to 1.8e-6 away from the clean fit on a loaded machine
    # (the cause is not yet found); a wrong restart point is off by orders more.
    np.testing.assert_allclose(hit.user_factors_, clean.user_factors_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(hit.item_factors_, clean.item_factors_, rtol=0, atol=1e-5)
    assert abs(scores[1] - scores[0]) <= 0.01 * abs(scores[0])
    print(f"{name} ({how}): clean {clean_seconds:.1f} s, with a worker killed {hit_seconds:.1f} s")
    return recoveries[0]


def test_als_survives_a_killed_worker(tmp_path, split):
    event = _fault_run(tmp_path, split, "als", "group")
    assert event["workers"] == 1, "carried on with the surviving worker"


@pytest.mark.slow
def test_svd_survives_a_killed_worker(tmp_path, split):
    _fault_run(tmp_path, split, "svd", "group")


@pytest.mark.slow
def test_bpr_survives_a_worker_its_nanny_restarts(tmp_path, split):
    _fault_run(tmp_path, split, "bpr", "worker")


def test_lost_scheduler_fails_fast_and_the_fit_resumes_on_a_new_cluster(tmp_path, split):
    train, test = split
    ckpt = str(tmp_path / "ckpt")
    with process_cluster(tmp_path / "logs1", n_workers=2) as cluster:
        with Client(cluster.address):
            clean = MODELS["svd"]().fit(str(train))

            def kill_scheduler(record):
                if record["epoch"] == 5:
                    kill_scheduler.at = time.perf_counter()
                    cluster.kill_scheduler()

            with pytest.raises(SchedulerLostError, match="resume=True") as info:
                MODELS["svd"](checkpoint_dir=ckpt).fit(str(train), callback=kill_scheduler)
            failed_after = time.perf_counter() - kill_scheduler.at
            print(f"scheduler lost: error after {failed_after:.2f} s")
            assert failed_after < 5, "an error within seconds"
            assert "after iteration 4" in str(info.value)
            t0 = time.perf_counter()
        print(f"client closed {time.perf_counter() - t0:.2f} s")
        _drop_orphaned_workers(cluster)
    assert CheckpointStore(ckpt).latest().iteration == 4
    with process_cluster(tmp_path / "logs2", n_workers=2) as cluster:
        with Client(cluster.address):
            resumed = MODELS["svd"](checkpoint_dir=ckpt).fit(str(train), resume=True)
            assert abs(_metric(resumed, test) - _metric(clean, test)) <= 0.01 * _metric(clean, test)
    assert resumed.metrics_["resumed_from"] == 4
    np.testing.assert_array_equal(resumed.user_factors_, clean.user_factors_)


def _drop_orphaned_workers(cluster) -> None:
    """Workers whose scheduler died wait for it for a long time on SIGTERM: end them now."""
    for index in range(len(cluster.workers)):
        if cluster.workers[index].poll() is None:
            cluster.kill_worker(index)


def _train_cmd(address: str, train: Path, output: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).with_name("mfdask")),
        "train",
        "--model=als",
        f"--train={train}",
        f"--output={output}",
        f"--scheduler={address}",
        f"--checkpoint-dir={ckpt}",
        "--checkpoint-every=1",
        "--param=factors=8",
        "--param=iterations=60",
        "--param=random_state=0",
        *extra,
    ]


@pytest.mark.slow
def test_train_job_killed_scheduler_then_resume(tmp_path, split):
    """`mfdask train` against a cluster whose scheduler dies; `--resume` finishes the job."""
    train, _ = split
    output, ckpt = tmp_path / "model", tmp_path / "ckpt"
    env = dict(os.environ, MFDASK_NO_PROGRESS="1")
    with process_cluster(tmp_path / "logs1", n_workers=2) as cluster:
        job = subprocess.Popen(
            _train_cmd(cluster.address, train, output, ckpt),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while CheckpointStore(ckpt).latest() is None or (
                CheckpointStore(ckpt).latest().iteration < 3
            ):
                assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()
                time.sleep(0.05)
            cluster.kill_scheduler()
            killed = time.monotonic()
            _, err = job.communicate(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
        _drop_orphaned_workers(cluster)
    assert time.monotonic() - killed < 15, "a clear error within seconds, not a hang"
    assert job.returncode == 2, err
    assert "lost the connection to the Dask scheduler" in err and "--resume" in err, err
    assert not output.exists(), "no model written"
    assert not list(tmp_path.glob(".model*")), "no temporary output left"
    done = CheckpointStore(ckpt).latest().iteration
    with process_cluster(tmp_path / "logs2", n_workers=2) as cluster:
        resumed = subprocess.run(
            _train_cmd(cluster.address, train, output, ckpt, "--resume"),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr
        with Client(cluster.address):
            clean = ALS(factors=8, iterations=60, random_state=0).fit(str(train))
    assert f"resumed after iteration {done}" in resumed.stdout
    np.testing.assert_array_equal(load_model(output).item_factors_, clean.item_factors_)


def test_distributed_als_state_survives_a_killed_worker(tmp_path, split):
    """Factors kept on the workers: the lost worker's blocks come back from the in-memory
    checkpoint's replicas and the ratings read again; the same model as a clean fit."""
    import dask

    train, _ = split
    with process_cluster(tmp_path / "logs", n_workers=2) as cluster:
        with Client(cluster.address), dask.config.set({"mfdask.state.keep": "workers"}):
            clean = MODELS["als"]().fit(str(train))
            assert clean.distributed
            clean_users, clean_items = clean.user_factors_, clean.item_factors_
            hit = MODELS["als"]().fit(str(train), callback=kill_after(cluster, 3))
            assert hit.distributed
            hit_users, hit_items = hit.user_factors_, hit.item_factors_
            assert len(hit.recommend(hit.user_ids_[:3], n=5)) == 15
            # The clean model's blocks on the killed worker are gone, and it says so.
            with pytest.raises(StateLostError, match="lost"):
                clean.recommend(clean.user_ids_[:4], n=5)
    recoveries = hit.metrics_["recoveries"]
    assert len(recoveries) == 1 and recoveries[0]["restarted_from"] == 2, recoveries
    assert recoveries[0]["workers"] == 1
    # Float-level agreement (a few entries differ by ~3e-6 after the recovery).
    np.testing.assert_allclose(hit_users, clean_users, rtol=0, atol=1e-5)
    np.testing.assert_allclose(hit_items, clean_items, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["bpr", "svd"])
def test_distributed_dsgd_state_survives_a_killed_worker(tmp_path, split, name):
    """SVD / BPR state kept on the workers: drawn there, checkpointed in memory as
    replicated blocks, the lost worker's blocks put back from the replicas and the
    ratings read again; the same model as a clean fit."""
    import dask

    train, _ = split
    settings = {"mfdask.state.keep": "workers", "mfdask.state.gather-below-bytes": 1024}
    with process_cluster(tmp_path / "logs", n_workers=2) as cluster:
        with Client(cluster.address), dask.config.set(settings):
            clean = MODELS[name](n_threads=1).fit(str(train))
            assert clean.distributed
            with dask.config.set({"mfdask.state.gather-below-bytes": 2**30}):
                clean_users, clean_items = clean.user_factors_, clean.item_factors_
            kill = kill_after(cluster, 3)

            def callback(record):
                if record["iteration"] == 2:  # the checkpoint's copies outlive Dask's replica
                    time.sleep(5)  # pruning (the memory manager runs every 2 s)
                kill(record)

            hit = MODELS[name](n_threads=1).fit(str(train), callback=callback)
            assert hit.distributed
            with dask.config.set({"mfdask.state.gather-below-bytes": 2**30}):
                assert len(hit.recommend(hit.user_ids_[:3], n=5)) == 15
                hit_users, hit_items = hit.user_factors_, hit.item_factors_
    recoveries = hit.metrics_["recoveries"]
    assert len(recoveries) == 1 and recoveries[0]["restarted_from"] == 2, recoveries
    assert recoveries[0]["workers"] == 1
    np.testing.assert_allclose(hit_users, clean_users, rtol=0, atol=1e-5)
    np.testing.assert_allclose(hit_items, clean_items, rtol=0, atol=1e-5)
