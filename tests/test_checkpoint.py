"""Checkpoints are atomic, pruned, and read back exactly."""

from __future__ import annotations

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
