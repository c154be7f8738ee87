"""Where the state of an SVD, BPR or WARP fit starts and ends (shared by the three).

A side whose factor matrix is larger than the gather threshold
(:mod:`mfdask.engine.state`) starts drawn on the workers, block by block, by global row,
and - when the cluster outlives the fit - stays there after the last epoch as
:class:`~mfdask.engine.state.FactorBlocks`: the model saves, recommends and evaluates
from the blocks as ALS does. Small models keep the client-side draw and gather.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mfdask.data.training import TrainingData
from mfdask.engine.dsgd import Drawn, Overlaid
from mfdask.engine.state import FactorBlocks, gather_below_bytes, keeps_on_workers


def columns(state: Any, start: int, stop: int) -> Any:
    """Columns ``start:stop`` of a state array: a matrix, or blocks cut on the workers."""
    if isinstance(state, FactorBlocks):
        return state.columns(start, stop)
    return np.ascontiguousarray(state[:, start:stop])


def column_vector(state: Any, column: int) -> np.ndarray:
    """``(n,) float32`` column of a state array on the client (a bias: ``1 / k`` of the
    factors, so gathered even from blocks, without a gather warning)."""
    if not isinstance(state, FactorBlocks):
        return np.ascontiguousarray(state[:, column])
    part = state.columns(column, column + 1)
    out = np.empty(part.n_rows, dtype=np.float32)
    for b, values in enumerate(part._gather(part.blocks)):
        out[b :: part.n_blocks] = values[:, 0]
    return out


def dsgd_placement(client: Any, data: TrainingData, factors: int) -> tuple[bool, bool]:
    """Whether a DSGD fit leaves its user (resp. item) state on the workers: the rule of
    every model (:func:`mfdask.engine.state.keeps_on_workers` on the ``(n, factors)
    float32`` factor matrix of the side), so SVD, BPR and WARP decide as ALS does."""
    return (
        keeps_on_workers(client, data.n_users * factors * 4),
        keeps_on_workers(client, data.n_items * factors * 4),
    )


def initial_dsgd_state(
    model: Any, data: TrainingData, rng: np.random.Generator, n_blocks: int
) -> tuple[Any, Any]:
    """The start of an SVD, BPR or WARP fit.

    When both sides are at most the gather threshold
    (:func:`mfdask.engine.state.gather_below_bytes`) it is ``model._initial_state`` drawn
    on the client from ``rng``, as it always was (the same floats). When a side is larger
    it is drawn by global row (``model._drawn_state``, keyed by one seed from ``rng``):
    a large side block by block on the workers, a small one on the client by the same
    function. The draw depends on the sizes only, not on whether the state stays on the
    workers at the end, so a model fitted on a ``LocalCluster`` started for the call is
    the model fitted on a running cluster.

    A warm start (``partial_fit``, :mod:`mfdask.models.incremental`) of small sides goes
    through the client (the instance's wrapped ``_initial_state``). A large side whose
    fitted factors are held on the workers in ``n_blocks`` blocks is composed there: each
    block draws its rows and lays the fitted rows over them
    (:class:`~mfdask.engine.dsgd.Overlaid`), so the update never gathers the side.
    """
    k = int(model.factors)
    large = [n * k * 4 > gather_below_bytes() for n in (data.n_users, data.n_items)]
    warm = model.__dict__.get("_warm_sides")
    if not any(large) or ("_initial_state" in model.__dict__ and warm is None):
        return model._initial_state(data, rng)
    specs = model._drawn_state(int(rng.integers(0, 2**62)))
    sides = []
    for side, (spec, n) in enumerate(zip(specs, (data.n_users, data.n_items), strict=True)):
        if warm is not None:
            sides.append(_warm_side(spec, n, warm[side], large[side], n_blocks))
        else:
            sides.append(spec if large[side] else {name: d.full(n) for name, d in spec.items()})
    return sides[0], sides[1]


def _warm_side(
    spec: dict[str, Drawn], n: int, fitted: dict[str, Any], large: bool, n_blocks: int
) -> dict[str, Any]:
    """One side's ``partial_fit`` start: fresh draws by global row, the fitted rows (and
    biases) laid over them, on the workers when the fitted factors are blocks there."""
    from mfdask.models.incremental import _overlay

    factors, bias = fitted["factors"], fitted.get("bias")
    if not (large and isinstance(factors, FactorBlocks) and factors.n_blocks == n_blocks):
        fresh = {name: d.full(n) for name, d in spec.items()}
        return _overlay(fresh, {**fitted, "factors": np.asarray(factors, np.float32)})
    state: dict[str, Any] = {}
    for name, d in spec.items():
        if name == "factors":
            column = bias if bias is not None and "bias" not in spec else None
            state[name] = Overlaid(d, factors, None if d.columns <= factors.k else column)
        elif name == "bias" and bias is not None:
            full = d.full(n)
            full[: len(bias)] = bias
            state[name] = full
        else:
            state[name] = d
    return state
