"""Incremental updates: continue a fitted model on the updated training data.

``model.partial_fit(train, iterations=3)`` takes the *full updated* training set (the
old data plus the new ratings, as a refit would) and runs a few iterations of the
model's own fit starting from its fitted factors instead of a random start:

1. The id maps grow: users and items of ``train`` that the model does not know are
   appended after the known ones (in ascending id order), so every known user and item
   keeps its dense index and factors. Known ids absent from ``train`` keep their rows
   (an ALS half-step gives a row without ratings a zero factor; SGD leaves it as is).
2. The starting state is what ``fit`` would draw for the grown maps (the model's
   initial-state hook: ``_initial_factors`` for ALS, ``_initial_state`` for the SGD
   models), with the rows of known users and items overwritten by their fitted factors
   and biases. New rows therefore start exactly as in a fresh fit.
3. ``iterations`` (default 3) iterations or epochs of the ordinary fit run from there,
   with the model's hyper-parameters (the learning-rate schedule restarts at its first
   epoch; WARP's Adagrad sums, which a fitted model does not keep, restart at 1).

Everything a fit derives from the data (seen items, SVD's global mean and rating
range, the number of positives) is recomputed from ``train``.

Placing the ratings follows what changed. A fit on ratings held by the client (a pandas
DataFrame) keeps its placed rating blocks on the cluster with the model
(:class:`~mfdask.engine.blocks.KeptBlocks`, released by the next fit, not saved; the
Dask config value ``mfdask.partial-fit.keep-blocks: false`` keeps none). When the
update's ratings are again a frame on the client that holds every rating of that fit
with the same value, only the ratings it adds are shuffled, each block merged with its
new entries on its worker (:func:`~mfdask.engine.blocks.extend_row_blocks`): the same
blocks, so the same factors, as placing everything, which is what happens otherwise (a
loaded model, blocks lost with their worker or cluster, a rating changed or removed,
another block count, ratings from a dataset or a Dask DataFrame, ALS's ``bm25``
weighting, whose weights depend on all the data). ``metrics_["updates"][-1]
["placed"]`` says which: ``"added"`` or ``"all"``. The update is recorded:
``history_`` keeps the earlier records and appends the new ones with ``"update": n``
(the n-th update), ``metrics_["updates"]`` lists each update (iterations, new users and
items, seconds), and the checkpoint identity of the run carries ``updated_from`` (the
fingerprint of the id maps and the iteration count it started from), so a checkpoint
of an update is never taken for one of a fresh fit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mfdask._warnings import HistoryRecord
from mfdask.data import schema
from mfdask.data.dataset import id_map_fingerprint
from mfdask.data.training import LocalRatings, TrainingData, as_training_data, map_ratings
from mfdask.engine.blocks import BlockExtension, KeptBlocks
from mfdask.models.base import NotFittedError, _check_positive_int

if TYPE_CHECKING:
    from mfdask.models.base import EpochCallback, FactorModel

DEFAULT_ITERATIONS = 3

START_HOOKS = ("_initial_factors", "_initial_state")
"""Names of the models' initial-state hooks (one per model class)."""


def _remap(part: pd.DataFrame, user_map: np.ndarray, item_map: np.ndarray) -> pd.DataFrame:
    """Dense indices of ``train``'s own id maps -> the grown maps (module level: picklable)."""
    return pd.DataFrame(
        {
            schema.USER_IDX: user_map[part[schema.USER_IDX].to_numpy()].astype("int32"),
            schema.ITEM_IDX: item_map[part[schema.ITEM_IDX].to_numpy()].astype("int32"),
            schema.RATING: part[schema.RATING].to_numpy(),
        }
    )


def _grow(old: pd.Index, new: pd.Index) -> pd.Index:
    """``old`` followed by the ids of ``new`` it lacks, ascending."""
    if len(new) and len(old) and new.dtype != old.dtype:
        try:
            new = new.astype(old.dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"the update's {old.name}s are of type {new.dtype}, the model's of {old.dtype}"
            ) from exc
    extra = new.difference(old)
    return pd.Index(np.concatenate([old.to_numpy(), extra.to_numpy()]), name=old.name)


KEPT = ("_kept_blocks", "_kept_ratings")
"""The model attributes of the kept placement: blocks on the cluster and the ratings
(``user_idx, item_idx, rating`` frame on the client) they hold. Never saved or pickled."""


def keeps_blocks(data: TrainingData) -> bool:
    """Whether a fit on ``data`` keeps its placed blocks for an update (module doc)."""
    import dask

    return isinstance(data.ratings, LocalRatings) and bool(
        dask.config.get("mfdask.partial-fit.keep-blocks", True)
    )


def keep_blocks(model: FactorModel, data: TrainingData, engine: Any, values: str) -> None:
    """At the end of a fit: keep the engine's placed blocks (``engine.placed``, a
    :class:`~mfdask.engine.blocks.KeptBlocks` or None) with the model, their values
    described by ``values``, and the client-side ratings they hold; note whether the
    engine extended kept blocks (``engine.extended``) for the update's record."""
    for name in KEPT:
        model.__dict__.pop(name, None)
    model.__dict__["_placed_added"] = bool(getattr(engine, "extended", False))
    placed = getattr(engine, "placed", None)
    if isinstance(placed, KeptBlocks) and isinstance(data.ratings, LocalRatings):
        placed.values = values
        model.__dict__["_kept_blocks"] = placed
        model.__dict__["_kept_ratings"] = data.ratings.frame


def block_extension(model: FactorModel, values: str) -> BlockExtension | None:
    """The extension a ``partial_fit`` prepared for this fit (None in a plain fit, or
    when the kept blocks hold other values)."""
    extension = model.__dict__.get("_block_extension")
    if isinstance(extension, BlockExtension) and extension.kept.values == values:
        return extension
    return None


def _keys(frame: pd.DataFrame) -> np.ndarray:
    """``(user_idx << 32) | item_idx`` as int64, one per rating."""
    users = frame[schema.USER_IDX].to_numpy().astype(np.int64)
    return (users << 32) | frame[schema.ITEM_IDX].to_numpy().astype(np.int64)


def added_rows(old: pd.DataFrame, new: pd.DataFrame) -> np.ndarray | None:
    """Positions of the ratings of ``new`` not in ``old`` (both indexed by the same, grown,
    id maps), or None unless every rating of ``old`` is in ``new`` exactly once with the
    same value (a rating changed or removed, or repeated: place everything again)."""
    n = len(old)
    if len(new) >= n and all(
        np.array_equal(old[c].to_numpy(), new[c].to_numpy()[:n])
        for c in (schema.USER_IDX, schema.ITEM_IDX, schema.RATING)
    ):  # the old frame with rows appended (concat): nothing to search
        return np.arange(n, len(new), dtype=np.int64)
    # Both sides sorted by (user, item): the search then walks both in order, several
    # times faster than looking up unsorted keys at random (and NumPy only: a kernel
    # would cost the client numba's start-up, seconds, on its first update).
    old_keys, new_keys = _keys(old), _keys(new)
    old_order, new_order = np.argsort(old_keys), np.argsort(new_keys)
    old_keys, new_keys = old_keys[old_order], new_keys[new_order]
    if not len(old_keys):
        return np.arange(len(new_keys), dtype=np.int64)
    pos = np.searchsorted(old_keys, new_keys)
    np.minimum(pos, len(old_keys) - 1, out=pos)
    found = old_keys[pos] == new_keys
    if int(found.sum()) != len(old_keys) or (len(old_keys) > 1 and not np.all(np.diff(pos[found]))):
        return None  # a rating removed or repeated (every old one matched once, or not)
    old_values = old[schema.RATING].to_numpy()[old_order[pos[found]]]
    if not np.array_equal(old_values, new[schema.RATING].to_numpy()[new_order[found]]):
        return None
    return np.sort(new_order[~found])


def _extension(model: FactorModel, data: TrainingData) -> BlockExtension | None:
    """What the update may place by extending the model's kept blocks (module doc)."""
    kept = model.__dict__.get("_kept_blocks")
    old = model.__dict__.get("_kept_ratings")
    if not isinstance(kept, KeptBlocks) or old is None:
        return None
    if not isinstance(data.ratings, LocalRatings):
        return None
    rows = added_rows(old, data.ratings.frame)
    return None if rows is None else BlockExtension(kept, rows)


def grown_training_data(model: FactorModel, train: Any) -> TrainingData:
    """``train`` indexed by the model's id maps grown with its new ids (see module doc)."""
    data = as_training_data(train)
    users = _grow(model.user_ids_, data.user_ids)
    items = _grow(model.item_ids_, data.item_ids)
    user_map = users.get_indexer(data.user_ids).astype(np.int64)
    item_map = items.get_indexer(data.item_ids).astype(np.int64)
    meta = model.items_
    if data.items is not None and schema.ITEM_IDX in data.items.columns:
        fresh = data.items.assign(
            **{schema.ITEM_IDX: item_map[data.items[schema.ITEM_IDX].to_numpy()]}
        )
        parts = [fresh] if meta is None else [fresh, meta]
        meta = (
            pd.concat(parts, ignore_index=True)
            .drop_duplicates(schema.ITEM_ID, keep="first")
            .sort_values(schema.ITEM_IDX)
            .reset_index(drop=True)
        )
    return TrainingData(
        ratings=map_ratings(data.ratings, _remap, user_map, item_map),
        user_ids=users,
        item_ids=items,
        items=meta,
        fingerprint=id_map_fingerprint(users, items),
        source=f"{data.source} (update of a fitted model)",
        feedback=data.feedback,
    )


def _fitted_sides(model: FactorModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fitted factors (and biases) to start from; a side held on the workers stays
    there as :class:`~mfdask.engine.state.FactorBlocks` (laid over the fresh start block
    by block when the update keeps the state there, gathered where it is used otherwise)."""
    from mfdask.engine.state import FactorBlocks

    sides = []
    for name in ("_user_factors", "_item_factors"):
        held = model.__dict__.get(name)
        sides.append(held if isinstance(held, FactorBlocks) else np.asarray(held, np.float32))
    user: dict[str, Any] = {"factors": sides[0]}
    item: dict[str, Any] = {"factors": sides[1]}
    for side, name in ((user, "user_bias_"), (item, "item_bias_")):
        bias = getattr(model, name, None)
        if bias is not None:
            side["bias"] = np.asarray(bias, np.float32)
    return user, item


def _overlay(fresh: Any, fitted: dict[str, np.ndarray]) -> Any:
    """Rows of the known ids in ``fresh`` (an array or a dict of state arrays) replaced
    by ``fitted``; a factor matrix wider than the fitted one (a bias column) takes the
    fitted bias in its next column."""
    factors = fitted["factors"]
    n, k = factors.shape
    if isinstance(fresh, np.ndarray):
        out = np.array(fresh, dtype=np.float32, copy=True)
        out[:n, :k] = factors
        return out
    state = {name: np.array(a, copy=True) for name, a in fresh.items()}
    f = state["factors"]
    f[:n, :k] = factors
    bias = fitted.get("bias")
    if bias is not None and "bias" in state:
        state["bias"][:n] = bias
    elif bias is not None and f.shape[1] > k:
        f[:n, k] = bias
    return state


def _start_hook(model: FactorModel) -> str:
    for name in START_HOOKS:
        if callable(getattr(type(model), name, None)):
            return name
    raise TypeError(f"{type(model).__name__} has no initial-state hook ({', '.join(START_HOOKS)})")


@contextmanager
def warm_start(
    model: FactorModel,
    iterations: int,
    identity: dict[str, Any],
    extension: BlockExtension | None = None,
) -> Iterator[None]:
    """For the duration of one fit: start from the fitted factors, run ``iterations``.

    The model's initial-state hook is wrapped on the instance so that its fresh draws
    (for the grown id maps) get the fitted rows laid over them; the iteration count
    (``iterations`` or ``epochs``) is set and then restored, as is the hook. With
    ``extension`` the fit's engine may extend the kept blocks (:func:`block_extension`).
    """
    hook = _start_hook(model)
    original = getattr(model, hook)
    user, item = _fitted_sides(model)
    count = "iterations" if "iterations" in model._param_names() else "epochs"
    saved_count = getattr(model, count)

    def start(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        fresh_users, fresh_items = original(*args, **kwargs)
        return _overlay(fresh_users, user), _overlay(fresh_items, item)

    setattr(model, hook, start)
    setattr(model, count, iterations)
    model._update_of = identity
    model.__dict__["_warm_sides"] = (user, item)  # for a start composed on the workers
    if extension is not None:
        model.__dict__["_block_extension"] = extension
    try:
        yield
    finally:
        model.__dict__.pop("_block_extension", None)
        model.__dict__.pop("_warm_sides", None)
        model.__dict__.pop(hook, None)
        setattr(model, count, saved_count)
        model.__dict__.pop("_update_of", None)


def partial_fit(
    model: FactorModel,
    train: Any,
    iterations: int | None = None,
    validation: Any = None,
    callback: EpochCallback | None = None,
) -> FactorModel:
    """See :meth:`mfdask.models.base.FactorModel.partial_fit` and the module docstring."""
    if "_item_factors" not in model.__dict__:  # (without gathering a distributed side)
        raise NotFittedError(
            f"partial_fit continues a fitted {type(model).__name__}: call fit() (or "
            "load_model()) first"
        )
    n_iter = (
        DEFAULT_ITERATIONS if iterations is None else _check_positive_int("iterations", iterations)
    )
    started = time.perf_counter()
    data = grown_training_data(model, train)
    extension = _extension(model, data)
    old_history = list(getattr(model, "history_", []) or [])
    old_metrics = dict(getattr(model, "metrics_", {}) or {})
    updates = list(old_metrics.get("updates", []))
    number = len(updates) + 1
    n_users, n_items = model.n_users, model.n_items
    identity = {
        "fingerprint": model.fingerprint_,
        "n_users": n_users,
        "n_items": n_items,
        "update": number,
        "iterations_before": len(old_history),
    }
    with warm_start(model, n_iter, identity, extension):
        model.fit(data, validation=validation, callback=callback)
    del extension  # (the old blocks go unless the fit placed everything and kept them)
    model.history_ = old_history + [HistoryRecord({**r, "update": number}) for r in model.history_]
    updates.append(
        {
            "update": number,
            "iterations": len(model.history_) - len(old_history),
            "new_users": model.n_users - n_users,
            "new_items": model.n_items - n_items,
            "updated_from": identity["fingerprint"],
            "placed": "added" if model.__dict__.pop("_placed_added", False) else "all",
            "seconds": time.perf_counter() - started,
        }
    )
    model.metrics_["updates"] = updates
    if "fit_seconds" in old_metrics:
        model.metrics_["initial_fit_seconds"] = old_metrics.get(
            "initial_fit_seconds", old_metrics["fit_seconds"]
        )
    return model
