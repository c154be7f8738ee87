"""Item blocks passed worker to worker inside a DSGD epoch (mfdask.engine.exchange)."""

from __future__ import annotations

import threading
import time

import dask
import dask.dataframe as dd
import numpy as np
import pytest
from distributed import Client, LocalCluster, wait

from mfdask import BPR, SVD, WARP
from mfdask.engine.dsgd import DSGD, check_plan, stratum_plan, worker_routes
from mfdask.engine.exchange import (
    NOT_YET,
    BlockExchangeError,
    BlockMailbox,
    Exchange,
    install,
)
from tests.test_bpr import planted_implicit
from tests.test_dsgd import CountingKernel, _frame


# ---------------------------------------------------------------------- the mailbox
def test_a_block_is_taken_once_by_its_token_and_key():
    box = BlockMailbox()
    assert box.put("run/0/0", (1, 2), "block")
    assert box.take("run/0/0", (1, 2), "peer", patience=0.0) == "block"
    assert box.take("run/0/0", (1, 2), "peer", patience=0.01) is NOT_YET
    assert len(box) == 0


def test_a_waiting_taker_wakes_when_the_block_arrives():
    box = BlockMailbox()
    threading.Timer(0.05, box.put, ("run/0/0", (1, 0), "late")).start()
    started = time.monotonic()
    assert box.take("run/0/0", (1, 0), "peer", timeout=5) == "late"
    assert time.monotonic() - started < 2


def test_abort_wakes_takers_drops_held_blocks_and_refuses_late_ones():
    box = BlockMailbox()
    box.put("run/3/7", (1, 0), "held")
    box.put("other/3/7", (1, 0), "kept")
    errors = []

    def taker():
        try:
            box.take("run/4/8", (1, 1), "tcp://peer:1", timeout=30)
        except BlockExchangeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=taker)
    thread.start()
    time.sleep(0.05)
    assert box.abort("run") == 1  # every epoch of run "run"
    thread.join(5)
    assert not thread.is_alive()
    assert errors and "aborted" in errors[0] and "tcp://peer:1" in errors[0]
    assert not box.put("run/5/9", (1, 0), "late")
    assert box.take("other/3/7", (1, 0), "peer", patience=0) == "kept"


def test_a_silent_peer_is_named_after_the_timeout():
    box = BlockMailbox()
    with pytest.raises(BlockExchangeError, match=r"tcp://10\.0\.0\.9:4000 within 0\.05 s"):
        box.take("run/0/0", (1, 0), "tcp://10.0.0.9:4000", timeout=0.05)


def test_closing_the_worker_wakes_takers():
    box = BlockMailbox()
    threading.Timer(0.05, box.close).start()
    with pytest.raises(BlockExchangeError, match="closing"):
        box.take("run/0/0", (1, 0), "peer", timeout=30)


# ---------------------------------------------------------------------- routes
@pytest.mark.parametrize(
    ("n_blocks", "workers"),
    [(2, "ab"), (3, "abc"), (5, "abcde"), (4, "abab"), (8, "aabbabab"), (3, "aaa"), (6, "abcabc")],
)
def test_worker_routes_hand_each_block_to_its_next_trainer(n_blocks, workers):
    plan = stratum_plan(n_blocks, np.random.default_rng(n_blocks))
    plan = plan + stratum_plan(n_blocks, np.random.default_rng(n_blocks + 1))  # fused
    check_plan(plan[:n_blocks], n_blocks)
    routes = {r.address: r for r in worker_routes(plan, list(workers))}
    assert sorted(routes) == sorted(set(workers))
    trained = set()
    for address, route in routes.items():
        assert route.user_blocks == tuple(w for w in range(n_blocks) if workers[w] == address)
        assert route.first_items == tuple(j for w, j in plan[0] if workers[w] == address)
        for s, cells in enumerate(route.steps):
            assert sorted((w, j) for w, j, _, _ in cells) == sorted(
                c for c in plan[s] if workers[c[0]] == address
            )
            # blocks already held come first, so the worker trains while others travel
            waits = [sender is not None for _, _, sender, _ in cells]
            assert waits == sorted(waits)
            for w, j, sender, receiver in cells:
                trained.add((s, w, j))
                if s == 0:
                    assert sender is None
                if receiver is None:  # stays in the task: next cell here, or an output
                    nxt = [u for u, i in plan[s + 1] if i == j] if s + 1 < len(plan) else []
                    assert not nxt or workers[nxt[0]] == address
                else:
                    assert receiver != address
                    (u,) = [u for u, i in plan[s + 1] if i == j]
                    assert workers[u] == receiver
                    # the receiver expects it from here
                    got = [c for c in routes[receiver].steps[s + 1] if c[1] == j]
                    assert got and got[0][2] == address
    assert len(trained) == 2 * n_blocks * n_blocks


# ---------------------------------------------------------------------- on a cluster
def _block_on_same_worker(token):
    """Wait for a block that only a task queued behind this one on its worker sends."""
    return Exchange(token, timeout=30).receive((1, 0), "the same worker")


def _send_to_self(token):
    from distributed import get_worker

    Exchange(token).send(get_worker().address, (1, 0), "hello")
    return "sent"


@pytest.fixture
def one_thread():
    """A client of one in-process worker with a single thread, mailbox installed."""
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        install(client)
        yield client


def test_a_long_wait_gives_the_thread_back_so_the_sender_can_run(one_thread):
    """One worker, one thread: the sender can only run if the waiting task secedes."""
    waiting = one_thread.submit(_block_on_same_worker, "t/0/0", pure=False)
    time.sleep(0.05)
    sender = one_thread.submit(_send_to_self, "t/0/0", pure=False)
    assert waiting.result(timeout=30) == "hello"
    assert sender.result(timeout=30) == "sent"


def _send_to_nowhere(token):
    Exchange(token, timeout=60).send("tcp://127.0.0.1:9", (1, 0), np.zeros(4))


def test_a_send_to_a_gone_worker_frees_its_thread_and_stops_when_aborted(one_thread):
    """Connecting to a dead worker retries for the connect timeout: the sender must not
    hold the worker's only thread meanwhile, and an abort must end it at once."""
    from mfdask.engine.exchange import abort_exchanges

    sending = one_thread.submit(_send_to_nowhere, "gone/0/0", pure=False)
    probe = one_thread.submit(time.monotonic, pure=False)
    assert probe.result(timeout=10) > 0  # ran while the send was still retrying
    assert sending.status == "pending"
    started = time.monotonic()
    abort_exchanges(one_thread, "gone")
    with pytest.raises(BlockExchangeError, match="aborted while handing block"):
        sending.result(timeout=10)
    assert time.monotonic() - started < 5


def test_direct_exchange_is_used_with_several_user_blocks_per_worker_too(client):
    frame, matrix = _frame()
    ratings = dd.from_pandas(frame, npartitions=2)
    n_users, n_items = matrix.shape
    assert DSGD(client, ratings, n_users, n_items).exchanges_directly
    assert DSGD(client, ratings, n_users, n_items, n_blocks=4).exchanges_directly
    assert not DSGD(client, ratings, n_users, n_items, n_blocks=1).exchanges_directly
    assert not DSGD(client, ratings, n_users, n_items, direct_exchange=False).exchanges_directly
    with dask.config.set({"mfdask.dsgd.direct-exchange": False}):
        assert not DSGD(client, ratings, n_users, n_items).exchanges_directly


def test_a_discarded_epoch_leaves_no_worker_waiting(client):
    frame, matrix = _frame(seed=4)
    n_users, n_items = matrix.shape
    engine = DSGD(client, dd.from_pandas(frame, npartitions=2), n_users, n_items)
    engine.set_state(
        {"visits": np.zeros(n_users, np.float32)}, {"visits": np.zeros(n_items, np.float32)}
    )
    for epoch in range(5):
        engine.discard(engine.submit_epoch(CountingKernel(), epoch, seed=1))
    # the workers' single threads are free: a plain task runs on each at once
    probes = [client.submit(time.monotonic, workers=[w], pure=False) for w in engine._workers]
    wait(probes, timeout=10)
    assert all(p.status == "finished" for p in probes)
    report = engine.run_epoch(CountingKernel(), 0, seed=1)
    assert report.stats["ratings"] == matrix.nnz
    user, _ = engine.gather_state()
    np.testing.assert_array_equal(user["visits"], np.diff(matrix.indptr))


@pytest.mark.parametrize(
    ("make", "loss"),
    [
        (lambda: BPR(factors=8, epochs=6, random_state=0, n_threads=1), "objective"),
        (lambda: WARP(factors=8, epochs=4, random_state=0, n_threads=1), "objective"),
        (lambda: SVD(factors=8, epochs=6, random_state=0, n_threads=1), "train_rmse"),
    ],
    ids=["bpr", "warp", "svd"],
)
@pytest.mark.parametrize("n_blocks", [None, 4, 6])
def test_direct_and_scheduled_hand_overs_train_the_same_floats(client, make, loss, n_blocks):
    frame, _, _ = planted_implicit(seed=5)
    fits = []
    for direct in (True, False):
        with dask.config.set({"mfdask.dsgd.direct-exchange": direct}):
            fits.append(make().set_params(n_blocks=n_blocks).fit(frame))
    direct, scheduled = fits
    np.testing.assert_array_equal(direct.user_factors_, scheduled.user_factors_)
    np.testing.assert_array_equal(direct.item_factors_, scheduled.item_factors_)
    # statistics are summed in another order (per worker first): equal up to rounding
    assert [h[loss] for h in direct.history_] == pytest.approx(
        [h[loss] for h in scheduled.history_], rel=1e-12
    )


# ---------------------------------------------------------------------- fused epochs
def test_fused_epochs_train_what_epochs_one_by_one_train(client):
    frame, matrix = _frame(seed=6)
    n_users, n_items = matrix.shape
    ratings = dd.from_pandas(frame, npartitions=2)
    zeros = ({"visits": np.zeros(n_users, np.float32)}, {"visits": np.zeros(n_items, np.float32)})
    engine = DSGD(client, ratings, n_users, n_items)
    engine.set_state(*zeros)
    group = engine.submit_epochs([CountingKernel()] * 3, 0, seed=2)
    assert [p.epoch for p in group] == [0, 1, 2]
    assert group[0].before is not None and group[1].before is None
    with pytest.raises(RuntimeError, match="fused group"):
        engine.discard(group[1])
    reports = [engine.collect(p) for p in group]
    assert [r.stats["ratings"] for r in reports] == [matrix.nnz] * 3
    assert reports[0].plan == stratum_plan(2, np.random.default_rng([2, 0]))
    user, item = engine.gather_state()
    np.testing.assert_array_equal(user["visits"], 3 * np.diff(matrix.indptr))
    np.testing.assert_array_equal(
        item["visits"], 3 * np.bincount(matrix.indices, minlength=n_items)
    )
    # a whole group discarded from its first epoch: back to the state before it
    engine.discard(engine.submit_epochs([CountingKernel()] * 4, 3, seed=2)[0])
    user, _ = engine.gather_state()
    np.testing.assert_array_equal(user["visits"], 3 * np.diff(matrix.indptr))


class _Report:
    def __init__(self, epoch, seconds):
        self.epoch, self.seconds = epoch, seconds


class _Pending:
    def __init__(self, epoch, group, row):
        self.epoch, self.group, self.row = epoch, group, row
        self.before = object() if row == 0 else None


class _Group:
    def __init__(self, size):
        self.size = size


class _FakeEngine:
    """Records the submissions an EpochPipeline makes; every epoch takes 0.1 s."""

    def __init__(self):
        self.groups: list[range] = []
        self.discarded: list[int] = []

    def submit(self, epochs):
        self.groups.append(epochs)
        group = _Group(len(epochs))
        return [_Pending(e, group, r) for r, e in enumerate(epochs)]

    def collect(self, pending):
        return _Report(pending.epoch, 0.1)

    def discard(self, pending):
        self.discarded.append(pending.epoch)


def test_the_pipeline_fuses_short_epochs_up_to_a_checkpoint_and_keeps_one_group_ahead():
    from mfdask.engine.pipeline import EpochPipeline

    engine = _FakeEngine()
    n_epochs, checkpoint_after = 20, 10
    ok = lambda e: e < n_epochs and e != checkpoint_after  # noqa: E731
    pipeline = EpochPipeline(engine, engine.submit, ok, fuse=True, group_seconds=0.5)
    for epoch in range(n_epochs):
        if epoch == checkpoint_after:
            pipeline.forget()  # what a checkpoint's re-seed does
        assert pipeline.run(epoch).epoch == epoch
    # nothing timed yet: single epochs; then groups of 0.5 s / 0.1 s = 5, cut at the
    # checkpoint and at the end; the group after the current one is always submitted
    assert [(g.start, g.stop) for g in engine.groups] == [
        (0, 1), (1, 2), (2, 7), (7, 10), (10, 15), (15, 20),
    ]  # fmt: skip


def test_a_pipeline_without_fusion_submits_one_epoch_ahead_and_stop_undoes_it():
    from mfdask.engine.pipeline import EpochPipeline

    engine = _FakeEngine()
    pipeline = EpochPipeline(engine, engine.submit, lambda e: e < 5)
    pipeline.run(0)
    pipeline.run(1)
    assert [(g.start, g.stop) for g in engine.groups] == [(0, 1), (1, 2), (2, 3)]
    pipeline.stop()
    assert engine.discarded == [2]
    fused = EpochPipeline(engine, engine.submit, lambda e: e < 50, fuse=True)
    for epoch in range(3):
        fused.run(epoch)
    with pytest.raises(RuntimeError, match="inside a fused group"):
        fused.stop()
