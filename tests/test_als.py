"""ALS on the cluster: monotone loss, exact vs CG, block invariance, planted clusters."""

from __future__ import annotations

import itertools

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from mfdask import ALS
from mfdask.engine.als import BlockALS, SolveSpec, row_ranges


def clustered_ratings(
    n_users=240, n_items=120, n_clusters=4, p_in=0.35, p_out=0.02, seed=0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Users and items in planted clusters: a user rates its own cluster's items highly.

    Returns the ratings (original ids offset from the dense ones) and each item's cluster.
    """
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = rng.integers(0, n_clusters, n_items)
    same = user_cluster[:, None] == item_cluster[None, :]
    rated = rng.random((n_users, n_items)) < np.where(same, p_in, p_out)
    u, i = np.nonzero(rated)
    liked = same[u, i] & (rng.random(len(u)) < 0.9)
    rating = np.where(liked, rng.integers(4, 6, len(u)), rng.integers(1, 4, len(u)))
    frame = pd.DataFrame(
        {"user_id": u + 10, "item_id": i + 100, "rating": rating.astype("float32")}
    )
    return frame, item_cluster


@pytest.fixture(scope="module")
def clustered():
    return clustered_ratings()


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
@pytest.mark.parametrize("scaling", ["none", "count"])
def test_loss_never_increases(client, clustered, solver, scaling):
    frame, _ = clustered
    model = ALS(
        factors=8,
        iterations=8,
        solver=solver,
        regularization_scaling=scaling,
        regularization=0.05 if scaling == "none" else 0.01,
        random_state=0,
    ).fit(dd.from_pandas(frame, npartitions=3))
    losses = np.array([h["loss"] for h in model.history_])
    assert len(losses) == 8
    assert np.all(np.diff(losses) <= 1e-6 * losses[:-1]), losses


def test_cg_reaches_the_exact_objective(client, clustered):
    frame, _ = clustered
    final = {}
    for solver in ("cholesky", "cg"):
        model = ALS(factors=8, iterations=10, solver=solver, random_state=1).fit(frame)
        final[solver] = model.history_[-1]["loss"]
    assert final["cg"] == pytest.approx(final["cholesky"], rel=0.01)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_one_block_and_four_blocks_give_the_same_model(client, clustered, solver):
    frame, _ = clustered
    fits = [
        ALS(factors=6, iterations=4, solver=solver, n_blocks=b, random_state=3).fit(
            dd.from_pandas(frame, npartitions=p)
        )
        for b, p in ((1, 1), (4, 3))
    ]
    np.testing.assert_allclose(fits[0].user_factors_, fits[1].user_factors_, atol=2e-5)
    np.testing.assert_allclose(fits[0].item_factors_, fits[1].item_factors_, atol=2e-5)
    assert fits[0].history_[-1]["loss"] == pytest.approx(fits[1].history_[-1]["loss"], rel=1e-5)


def test_similar_items_recover_planted_clusters(client, clustered):
    frame, item_cluster = clustered
    model = ALS(factors=8, iterations=10, random_state=0).fit(frame)
    items = np.arange(len(item_cluster)) + 100
    similar = model.similar_items(items, n=5)
    query = item_cluster[similar["item_id"].to_numpy() - 100]
    found = item_cluster[similar["similar_item_id"].to_numpy() - 100]
    assert (query == found).mean() > 0.9


def test_recommendations_prefer_the_users_cluster(client, clustered):
    frame, item_cluster = clustered
    model = ALS(factors=8, iterations=10, random_state=0).fit(frame)
    recs = model.recommend(frame["user_id"].unique()[:50], n=5)
    positives = frame[frame.rating >= 4]
    home = positives.groupby("user_id")["item_id"].agg(
        lambda s: np.bincount(item_cluster[s.to_numpy() - 100]).argmax()
    )
    rec_cluster = item_cluster[recs["item_id"].to_numpy() - 100]
    assert (rec_cluster == home.loc[recs["user_id"]].to_numpy()).mean() > 0.8
    seen = set(zip(frame.user_id, frame.item_id, strict=True))
    assert not any((u, i) in seen for u, i in zip(recs.user_id, recs.item_id, strict=True))


def test_low_ratings_are_seen_but_not_positive(client):
    frame = pd.DataFrame(
        {"user_id": [1, 1, 2, 2], "item_id": [7, 8, 7, 9], "rating": [5.0, 2.0, 4.0, 1.0]}
    )
    model = ALS(factors=2, iterations=2, random_state=0).fit(frame)
    assert model.metrics_["n_positives"] == 2
    assert model.seen_items_.nnz == 4
    assert set(model.recommend([1], n=5)["item_id"]) == {9}


def test_no_positives_is_a_clear_error(client):
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [7, 8], "rating": [1.0, 0.5]})
    with pytest.raises(ValueError, match=r"positive_threshold=4\.0"):
        ALS(factors=2, iterations=1).fit(frame)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "lu"}, "solver must be one of"),
        ({"confidence": "hkv"}, "confidence must be one of"),
        ({"regularization_scaling": "n"}, "regularization_scaling"),
        ({"preference": "count"}, "preference"),
        ({"factors": 0}, "factors must be a positive integer"),
        ({"regularization": -1.0}, "regularization must be a finite number"),
        ({"alpha": 0.0, "confidence": "implicit"}, "alpha > 0"),
        ({"regularization_offset": -1.0}, "regularization_offset must be a finite number"),
        (
            {"regularization_offset": 5.0, "regularization_scaling": "none"},
            "needs regularization_scaling='count'",
        ),
        ({"regularization_exponent": -0.5}, "regularization_exponent must be a finite number"),
        (
            {"regularization_exponent": 0.5, "regularization_scaling": "none"},
            "needs regularization_scaling='count'",
        ),
    ],
)
def test_bad_hyper_parameters_are_named(client, params, match):
    frame, _ = clustered_ratings(n_users=20, n_items=10)
    with pytest.raises(ValueError, match=match):
        ALS(**params).fit(frame)


def test_callback_sees_each_iteration_and_can_stop(client, clustered):
    frame, _ = clustered
    seen = []
    model = ALS(factors=4, iterations=10, random_state=0)
    model.fit(frame, callback=lambda rec: seen.append(rec["iteration"]) or len(seen) < 3)
    assert seen == [1, 2, 3]
    assert [h["iteration"] for h in model.history_] == [1, 2, 3]
    assert all(h["seconds"] > 0 for h in model.history_)


def test_rating_blocks_never_move_after_placement(client, clustered):
    """Only factors travel between workers once the blocks are placed (transfer log)."""
    frame, _ = clustered
    dense = pd.DataFrame(
        {
            "user_idx": (frame.user_id - 10).astype("int32"),
            "item_idx": (frame.item_id - 100).astype("int32"),
            "rating": frame.rating,
        }
    )
    client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())
    run = BlockALS(
        client,
        dd.from_pandas(dense, npartitions=4),
        240,
        120,
        SolveSpec(),
        positive_threshold=4.0,
        binary=True,
        n_blocks=4,
    )
    run.initialize(np.zeros((240, 8), np.float32), np.full((120, 8), 0.1, np.float32))
    for _ in range(3):
        run.iterate()
    run.loss()
    blocks = set(run.rating_block_keys)
    moved = client.run(
        lambda dask_worker: [k for e in dask_worker.transfer_incoming_log for k in e["keys"]]
    )
    moved_keys = {k for keys in moved.values() for k in keys}
    assert moved_keys, "factors must have travelled between the two workers"
    assert not moved_keys & blocks
    run.close()


def test_row_ranges_cover_rows_with_balanced_work():
    indptr = np.concatenate([[0], np.cumsum(np.r_[np.full(10, 100), np.ones(90)])]).astype(int)
    ranges = row_ranges(indptr, 8, 2)
    assert ranges[0][0] == 0 and ranges[-1][1] == 100
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert 5 <= ranges[0][1] <= 30


def test_similar_items_on_synthetic_clusters(client, tmp_path):
    """The generator's planted item clusters come back as nearest neighbours."""
    from mfdask.data.synth import synthesize

    dataset = synthesize(tmp_path / "synth", n_ratings=60_000, n_clusters=8, seed=0)
    items = dataset.items()
    model = ALS(factors=16, iterations=8, regularization=0.1, alpha=2.0, random_state=0)
    model.fit(dataset)
    popular = model.seen_items_.sum(axis=0).A1.argsort()[::-1][:100]
    query = model.item_ids_[popular]
    similar = model.similar_items(query, n=5)
    cluster = items.set_index("item_id")["cluster"]
    same = (
        cluster.loc[similar.item_id].to_numpy() == cluster.loc[similar.similar_item_id].to_numpy()
    )
    assert same.mean() > 0.7


@pytest.mark.distributed
def test_real_scheduler_processes_give_the_in_process_model(client, clustered, tmp_path):
    from distributed import Client

    from tests.processes import process_cluster

    frame, _ = clustered
    params = {"factors": 6, "iterations": 3, "n_blocks": 2, "random_state": 0}
    local = ALS(**params).fit(frame)
    with process_cluster(tmp_path / "logs", n_workers=2) as cluster, Client(cluster.address):
        remote = ALS(**params).fit(frame)
    np.testing.assert_allclose(remote.item_factors_, local.item_factors_, atol=1e-5)
    assert remote.history_[-1]["loss"] == pytest.approx(local.history_[-1]["loss"], rel=1e-5)


def test_validation_metric_and_early_stopping(client, clustered):
    frame, _ = clustered
    rng = np.random.default_rng(0)
    positives = frame.index[frame.rating >= 4].to_numpy()
    held = rng.choice(positives, size=len(positives) // 5, replace=False)
    train, valid = frame.drop(index=held), frame.loc[held]
    model = ALS(factors=8, iterations=8, alpha=5.0, random_state=0, early_stopping_rounds=2).fit(
        train, validation=valid
    )
    scores = [h["ndcg"] for h in model.history_]
    best = int(np.argmax(scores))
    assert model.metrics_["best_iteration"] == best + 1
    assert model.metrics_["ndcg"] == pytest.approx(max(scores))
    assert len(scores) == 8 or len(scores) - 1 - best == 2
    assert max(scores) > 0.2, "planted clusters make held-out positives easy to rank"


def _docstring_block():
    """One destination row of route_block's docstring: R = 2, columns {1, 2, 4, 5}."""
    from mfdask.engine.blocks import RowBlock

    return RowBlock(
        block=0,
        n_blocks=2,
        n_rows=2,
        n_cols=6,
        indptr=np.array([0, 4]),
        indices=np.array([1, 2, 4, 5], np.int32),
        data=np.ones(4, np.float32),
    )


def test_route_block_renumbers_into_the_compact_source():
    """The docstring's example: R = 2, columns {1, 2, 4, 5} of one destination row."""
    from mfdask.engine.als import route_block

    block = _docstring_block()
    routed, needed = route_block(block, 2)
    assert [list(r) for r in needed] == [[1, 2], [0, 2]]
    assert list(routed.indices) == [2, 0, 1, 3]
    full = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    compact = np.concatenate([full[s::2][rows] for s, rows in enumerate(needed)])
    np.testing.assert_array_equal(compact[routed.indices], full[block.indices])


def test_route_block_reads_the_source_block_on_its_worker_in_place():
    """Block 0 in place: its columns index its local rows, block 1's rows follow."""
    from mfdask.engine.als import Source, route_block, routed_source

    block = _docstring_block()
    routed, needed = route_block(block, 2, in_place=0)
    assert [list(r) for r in needed] == [[], [0, 2]]
    assert list(routed.indices) == [3, 1, 2, 4]
    full = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    source = routed_source(np.eye(3), full[0::2], full[1::2][needed[1]])
    assert isinstance(source, Source)
    stacked = np.concatenate(source.parts())
    np.testing.assert_array_equal(stacked[routed.indices], full[block.indices])


@pytest.mark.parametrize("n_blocks", [2, 9])
def test_a_fused_broadcast_half_step_gives_the_floats_of_the_chain_of_tasks(
    client, clustered, n_blocks
):
    """One task per destination block (source assembled and its Gram summed there)
    computes what the chain of partial Grams, their tree sum, the assembled source and
    the solves does; 9 blocks take the Gram tree past one level (fan-in 8)."""
    import dask
    from distributed import get_task_stream

    frame, _ = clustered
    params = {"factors": 6, "iterations": 3, "n_blocks": n_blocks, "calculate_training_loss": False}
    fits, names = {}, {}
    for fuse in (False, True):
        with dask.config.set({"mfdask.als.fuse-broadcast": fuse}):
            with get_task_stream(client) as stream:
                fits[fuse] = ALS(random_state=0, **params).fit(dd.from_pandas(frame, 4))
        names[fuse] = {str(t["key"]).split("-")[0].strip("('") for t in stream.data}
    np.testing.assert_array_equal(fits[False].user_factors_, fits[True].user_factors_)
    np.testing.assert_array_equal(fits[False].item_factors_, fits[True].item_factors_)
    assert {"solve_broadcast"} <= names[True] and "solve_broadcast" not in names[False]
    assert "assemble_source" in names[False] and "assemble_source" not in names[True]


def test_a_broadcast_half_step_fuses_only_while_its_gram_is_cheap():
    from mfdask.engine.als import FUSE_GRAM_MULTIPLY_ADDS, fuses_broadcast

    rows = FUSE_GRAM_MULTIPLY_ADDS // 64**2
    assert fuses_broadcast(rows, 64, ["a", "b"])
    assert not fuses_broadcast(rows + 1, 64, ["a", "b"])
    # Two destination blocks on each worker: each recomputes the Gram.
    assert not fuses_broadcast(rows, 64, ["a", "b", "a", "b"])
    assert fuses_broadcast(rows // 2, 64, ["a", "b", "a", "b"])


@pytest.mark.parametrize("n_blocks", [1, 3])
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_routed_half_steps_give_the_broadcast_floats(client, clustered, n_blocks, solver):
    """Routing the source rows (forced on small data) computes exactly what broadcasting
    does: the same rows meet the same ratings in the same order."""
    import dask

    frame, _ = clustered
    params = {"factors": 6, "iterations": 4, "solver": solver, "n_blocks": n_blocks}
    fits = {}
    for routing in ("broadcast", "route"):
        with dask.config.set({"mfdask.als.routing": routing}):
            fits[routing] = ALS(random_state=0, **params).fit(dd.from_pandas(frame, 4))
    a, b = fits["broadcast"], fits["route"]
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]


@pytest.mark.parametrize("n_blocks", [1, 3])
@pytest.mark.parametrize(
    "params",
    [
        {"regularization_scaling": "count", "regularization_offset": 5.0},
        {"regularization_exponent": 0.5, "regularization_offset": 5.0},
        {"confidence": "implicit", "regularization_scaling": "none", "alpha": 20.0},
    ],
)
def test_reduced_item_half_solves_the_per_row_cg(client, clustered, n_blocks, params):
    """The item half by reduced products (forced on small data) runs each item's CG as
    the per-row kernel does; only the order of the float32 sums differs. An item with no
    positive (only low ratings) stays at zero, as in the kernel."""
    import dask

    frame, _ = clustered
    unrated = pd.DataFrame({"user_id": frame.user_id.unique()[:5], "item_id": 999, "rating": 1.0})
    frame = pd.concat([frame, unrated], ignore_index=True)
    fits = {}
    for routing in ("broadcast", "reduce"):
        with dask.config.set({"mfdask.als.routing": routing}):
            fits[routing] = ALS(
                factors=6, iterations=4, n_blocks=n_blocks, random_state=0, **params
            ).fit(dd.from_pandas(frame, 4))
    a, b = fits["broadcast"], fits["reduce"]
    assert b.metrics_["traffic"]["item_half"]["reduced"]
    assert not a.metrics_["traffic"]["item_half"]["reduced"]
    scale = np.abs(a.item_factors_).max()
    np.testing.assert_allclose(b.item_factors_, a.item_factors_, atol=1e-4 * scale)
    np.testing.assert_allclose(b.user_factors_, a.user_factors_, atol=1e-4 * scale)
    assert not b.item_factors_[b.item_index([999])[0]].any()
    # The loss without item rating blocks (the reduced fit places none) takes the item
    # penalty from the reduction's counts.
    np.testing.assert_allclose(
        [h["loss"] for h in b.history_], [h["loss"] for h in a.history_], rtol=1e-4
    )
    pd.testing.assert_frame_equal(
        a.recommend(frame.user_id.unique()[:20], n=5)[["user_id", "item_id"]],
        b.recommend(frame.user_id.unique()[:20], n=5)[["user_id", "item_id"]],
    )


def test_auto_routing_routes_only_the_large_side(client, clustered):
    frame, _ = clustered
    dense = pd.DataFrame(
        {
            "user_idx": (frame.user_id - 10).astype("int32"),
            "item_idx": (frame.item_id - 100).astype("int32"),
            "rating": frame.rating,
        }
    )
    # 240 users x 8 factors x 4 bytes = 7,680 bytes; 120 items = 3,840 bytes.
    run = BlockALS(
        client,
        dd.from_pandas(dense, npartitions=2),
        240,
        120,
        SolveSpec(),
        positive_threshold=4.0,
        binary=True,
        n_blocks=2,
        route_above_bytes=5_000,
    )
    run.initialize(np.zeros((240, 8), np.float32), np.full((120, 8), 0.1, np.float32))
    assert run.routed == (False, True)  # the item half's source (users) is routed
    run.iterate()
    assert np.isfinite(run.loss())
    run.close()
    with pytest.raises(ValueError, match="routing must be one of"):
        BlockALS(client, dense, 240, 120, SolveSpec(), 4.0, True, routing="sometimes")


def test_traffic_counts_the_routed_rows_between_workers(client, clustered):
    import dask

    frame, _ = clustered
    with dask.config.set({"mfdask.als.routing": "route"}):
        model = ALS(factors=4, iterations=1, n_blocks=2, random_state=0).fit(frame)
    t = model.metrics_["traffic"]
    # Every user with a positive is needed by the item blocks holding its positives.
    positives = frame[frame.rating >= 4]
    per_block = positives.assign(block=(positives.item_id - 100) % 2)
    expected = per_block.groupby("block").user_id.nunique().sum()
    # Each item block reads the user block on its own worker in place: only the other
    # worker's needed users are taken and sent (one block per worker here).
    assert t["item_half"]["routed"]
    assert 0 < t["item_half"]["rows_between_workers"] < expected
    assert t["item_half"]["rows"] == t["item_half"]["rows_between_workers"]
    assert t["item_half"]["bytes_between_workers"] == t["item_half"]["rows_between_workers"] * 16


def test_default_blocks_bound_the_largest_factor_block():
    from mfdask.engine.als import BLOCK_BYTES, default_blocks

    assert default_blocks(2, 6040, 64) == 2  # ML-1M: one block per worker
    # 20M users x 64 factors = 5.1 GB: 2.6 GB per worker, 5 blocks of <= 512 MiB each.
    blocks = default_blocks(2, 20_000_000, 64)
    assert blocks == 10 and blocks % 2 == 0
    assert 20_000_000 * 64 * 4 / blocks <= BLOCK_BYTES
    assert default_blocks(3, 10, 8) == 3
    # Workers of 6 GiB: blocks of at most 1/24 of that (256 MiB), 20 in all; with 2
    # threads a worker solves two at once, so half that size.
    gib = 2**30
    assert default_blocks(2, 20_000_000, 64, memory_limit=6 * gib) == 20
    assert default_blocks(2, 20_000_000, 64, memory_limit=6 * gib, threads=2) == 40
    assert default_blocks(2, 20_000_000, 64, memory_limit=64 * gib) == 10  # 512 MiB cap
    assert default_blocks(2, 6040, 64, memory_limit=gib) == 2
    with dask.config.set({"mfdask.als.block-bytes": 2**30}):  # a set size wins
        assert default_blocks(2, 20_000_000, 64, memory_limit=6 * gib) == 6


def test_worker_capacity_reads_the_smallest_limit_and_most_threads(client):
    from mfdask.engine.cluster import worker_capacity

    limit, threads = worker_capacity(client)
    info = client.scheduler_info()["workers"].values()
    limits = [w["memory_limit"] for w in info if w["memory_limit"]]
    assert limit == (min(limits) if limits else None)
    assert threads == max(w["nthreads"] for w in info)
