"""Checkpoints are atomic, pruned, and read back exactly."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mfdask.engine.checkpoint import CheckpointError, CheckpointStore


def test_round_trip_and_latest(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    assert store.latest() is None
    rng = np.random.default_rng(0)
    for it in (5, 10, 15):
        arrays = {"user_factors": rng.random((4, 3), dtype=np.float32), "bias": np.arange(it)}
        store.save(it, arrays, {"learning_rate": 0.01 * it})
    latest = store.latest()
    assert latest.iteration == 15
    np.testing.assert_array_equal(latest.arrays["user_factors"], arrays["user_factors"])
    np.testing.assert_array_equal(latest.arrays["bias"], np.arange(15))
    assert latest.state == {"learning_rate": pytest.approx(0.15)}
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*"))
    assert kept == ["ckpt-000010", "ckpt-000015"]


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1, {"x": np.ones(3)}, {})

    bad = {"x": np.ones(3), "y": np.array([object()], dtype=object)}  # np.save refuses objects
    with pytest.raises(ValueError):
        store.save(2, bad, {})
    assert store.latest().iteration == 1
    assert not list((tmp_path / "ckpt").glob(".ckpt-*")), "temporary directory removed"


def test_corrupt_checkpoint_is_named(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    path = store.save(3, {"x": np.ones(2)}, {})
    (path / "x.npy").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="ckpt-000003 is incomplete or corrupt"):
        store.latest()


def _lose_worker(cluster, address):
    """Close the worker at ``address`` without handing its keys over (as if it died)."""
    worker = next(w for w in cluster.workers.values() if w.address == address)
    cluster.sync(worker.close)


def _blocks_on_workers(client, n_rows=40, k=4):
    """A (n_rows, k) side as 2 residue blocks, one per worker."""
    from mfdask.engine.state import FactorBlocks

    workers = sorted(client.nthreads())
    full = np.arange(n_rows * k, dtype=np.float32).reshape(n_rows, k)
    # Computed, pinned blocks, as a fit's are: lost with their worker, they wait for it.
    blocks = [
        client.submit(np.array, full[b::2], workers=[workers[b]], allow_other_workers=False)
        for b in range(2)
    ]
    client.gather(blocks)
    return FactorBlocks(blocks, workers[:2], n_rows, k), full


def test_in_memory_checkpoint_copies_blocks_under_keys_of_their_own(own_cluster):
    """A copy survives the loss of a block's only holder, and is what a restore reads."""
    from mfdask.engine.checkpoint import FitCheckpoints

    local, client = own_cluster
    side, full = _blocks_on_workers(client)
    checkpoints = FitCheckpoints(None, every=1)
    point = checkpoints.save(1, {"user_factors": side}, {"finished": False})
    assert len(side.backups) == 2
    assert {f.key for f in side.backups}.isdisjoint(f.key for f in side.blocks)
    who = client.who_has(side.backups)
    assert all(set(who[c.key]) != {w} for c, w in zip(side.backups, side.where, strict=True))
    time.sleep(3)  # the memory manager's replica pruning runs every 2 s: copies stay
    _lose_worker(local, side.where[0])
    assert side.alive() and checkpoints.recovery_point() is point
    kept = side.surviving()
    assert kept[0].key == side.backups[0].key and kept[1].key == side.blocks[1].key
    np.testing.assert_array_equal(kept[0].result(), full[0::2])


def test_checkpoint_without_room_for_copies_restarts_from_the_start(own_cluster, monkeypatch):
    """State too large to copy is neither copied nor held (holding it would keep every
    block of the iteration alive next to the next iteration's): recovery starts over
    instead of waiting for blocks no worker holds."""
    import mfdask.engine.checkpoint as checkpoint
    import mfdask.engine.cluster

    _, client = own_cluster
    side, _ = _blocks_on_workers(client)
    monkeypatch.setattr(mfdask.engine.cluster, "COPY_SHARE_OF_MEMORY", 1e-12)
    checkpoints = checkpoint.FitCheckpoints(None, every=1)
    point = checkpoints.save(1, {"user_factors": side}, {"finished": False})
    assert side.backups == [] and point.arrays["user_factors"] is side  # for the lineage cut
    assert checkpoints.last is None and checkpoints.recovery_point() is None
    # The end of the fit is always kept: it is the fit's result.
    final = checkpoints.save(2, {"user_factors": side}, {"finished": True})
    assert checkpoints.last is final


def test_recovery_reads_the_disk_when_the_memory_point_is_lost(own_cluster, tmp_path):
    from mfdask.engine.checkpoint import FitCheckpoints

    local, client = own_cluster
    side, _ = _blocks_on_workers(client)
    checkpoints = FitCheckpoints(tmp_path / "ckpt", every=1)
    checkpoints.begin({"model": "test"})
    checkpoints.save(1, {"user_factors": side}, {"finished": False})
    assert side.backups == []  # the disk holds this point: no copies in memory
    _lose_worker(local, side.where[0])
    point = checkpoints.recovery_point()
    assert point is not None and point.iteration == 1
    assert "iteration 1" in checkpoints.describe_resume()


def test_room_for_copy_follows_the_worker_memory_limit(client, monkeypatch):
    import mfdask.engine.cluster as cluster

    limit, _ = cluster.worker_capacity(client)
    n = len(client.nthreads())
    if limit is None:
        assert cluster.room_for_copy(client, 2**40)
        return
    share = int(limit * cluster.COPY_SHARE_OF_MEMORY) * n
    assert cluster.room_for_copy(client, share)
    assert not cluster.room_for_copy(client, share + 1024 * n)
    monkeypatch.setattr(cluster, "COPY_SHARE_OF_MEMORY", 1e-12)
    assert not cluster.room_for_copy(client, 10_000)
