"""A model's top-k for every user or item: what it hands :mod:`mfdask.engine.topk`.

:meth:`FactorModel.recommend_all <mfdask.models.base.FactorModel.recommend_all>` and
:meth:`~mfdask.models.base.FactorModel.similar_items_all` call these. They read the
model (its ids, score vectors or factor blocks, seen items, popularity fallback,
similar-items shrinkage) and pass arrays, ids and settings to
:func:`mfdask.engine.topk.write_top_k`, which schedules the blocks on the workers and
writes the Parquet output; see :mod:`mfdask.engine.topk` for the layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mfdask.data import schema
from mfdask.data.dataset import Dataset, open_dataset
from mfdask.engine import topk
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.engine.topk import TopKOutput
from mfdask.recommend import DEFAULT_CHUNK_CELLS

if TYPE_CHECKING:
    from mfdask.models.base import FactorModel


def _source(model: FactorModel) -> dict[str, Any]:
    """What the manifest says about the model that wrote it."""
    return {
        "model": type(model).__name__,
        "model_params": model.get_params(),
        "fingerprint": getattr(model, "fingerprint_", None),
    }


def recommend_all(
    model: FactorModel,
    n: int,
    path: str | os.PathLike[str],
    *,
    seen: Dataset | str | os.PathLike[str] | None = None,
    users: Any = None,
    overwrite: bool = False,
    filter_seen: bool = True,
    n_blocks: int | None = None,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
    metadata: dict[str, Any] | None = None,
    method: str = "exact",
    **ann_options: Any,
) -> TopKOutput:
    """Top-``n`` items for every user, scored on the workers, written as Parquet.

    Parameters
    ----------
    model : FactorModel
        A fitted (or loaded) model; its ``_score_vectors()`` give the scores, so biases
        (SVD) count exactly as in :meth:`~mfdask.models.base.FactorModel.recommend`.
    n : int
        Items per user.
    path : path
        Output directory; must not exist unless ``overwrite``. Must be visible to the
        workers under the same name (see :mod:`mfdask.engine.topk`).
    seen : Dataset or path, optional
        A canonical dataset (usually the training split) whose items are filtered out for
        each user; its id maps must be the model's. Workers read it partition by
        partition. Default: the model's own ``seen_items_``.
    users : sequence of original user ids, optional
        Recommend for these users only (default: every user the model knows).
    overwrite : bool
        Replace an existing ``path`` (only once the new output is complete).
    filter_seen : bool
        False keeps already-seen items (and ignores ``seen``).
    n_blocks : int, optional
        Output partitions; default: a multiple of the dataset's ``n_user_blocks`` with at
        most :data:`mfdask.engine.topk.BLOCK_ROWS` users each and at least one block per worker.
    chunk_cells : int
        Score-matrix cells per chunk on a worker (one float32 matrix: 4 bytes a cell).
    metadata : dict, optional
        Extra JSON-serialisable fields for the manifest (provenance, a data label...).
    method : {"exact", "ann", "auto"}
        ``"exact"`` scores every candidate; ``"ann"`` searches an index over the item
        score vectors on the workers (:mod:`mfdask.engine.ann`; needs ``mfdask[ann]``);
        ``"auto"`` takes ``"ann"`` from :data:`mfdask.engine.ann.AUTO_MIN_ITEMS` items on
        when faiss is installed. The manifest records the method and index parameters.
    **ann_options
        Index settings (:class:`mfdask.engine.ann.AnnParams`: ``index``, ``nlist``,
        ``nprobe``, ``ef_search``, ...); the defaults give recall@10 >= 0.95 against
        the exact lists.

    Returns
    -------
    TopKOutput

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    PermissionError
        ``path`` cannot be created.
    ModelMismatchError
        ``seen`` is a dataset with other id maps than the model's.
    """
    model._check_fitted()
    if users is None:
        rows = np.arange(model.n_users, dtype=np.int64)
    else:
        rows = np.unique(model.user_index(users))
    held = model.__dict__.get("_user_factors")
    query_blocks = held if isinstance(held, FactorBlocks) and users is None else None
    if query_blocks is not None and n_blocks is not None:
        query_blocks = None  # other output blocks asked for: score from fetched rows
    if query_blocks is not None:  # the score vectors (biases appended) on the same workers
        query_blocks = model._user_score_blocks()
    uvec: np.ndarray | None
    if query_blocks is not None:
        uvec, ivec = None, model._item_vectors()
    elif isinstance(held, FactorBlocks):  # a subset of users: fetch just their rows
        uvec, ivec = model._user_rows(rows), model._item_vectors()
    else:
        uvec, ivec = model._score_vectors()
        uvec = uvec if users is None else uvec[rows]
    params = topk.ann.resolve_method(method, int(ivec.shape[0]), ann_options)
    block_multiple = 1
    source = None
    exclude_for: Any
    if not filter_seen:
        exclude_for = topk.no_exclusion()
    elif seen is not None:
        ds = seen if isinstance(seen, Dataset) else open_dataset(seen)
        model.check_dataset(ds)
        exclude_for, block_multiple = topk.dataset_exclusion(ds)
        source = str(ds.path)
    elif getattr(model, "seen_items_", None) is not None:
        exclude_for = topk.rows_exclusion(model.seen_items_)
        source = "model.seen_items_"
    else:
        exclude_for = topk.no_exclusion()
    fallback = model._popularity_fallback()
    if fallback is not None and fallback[0][rows].any():
        fallback = (fallback[0][rows], fallback[1])
    else:
        fallback = None
    seen_blocks = None
    if query_blocks is not None and filter_seen and isinstance(model.seen_items_, SeenBlocks):
        seen_blocks = model.seen_items_
        if seen_blocks.n_blocks != query_blocks.n_blocks:
            seen_blocks = None
    return topk.write_top_k(
        path=Path(path),
        what="recommendations",
        key="user",
        query_column=schema.USER_ID,
        result_column=schema.ITEM_ID,
        rows=rows,
        query_ids=model.user_ids_.to_numpy()[rows],
        query_vectors=None if uvec is None else np.asarray(uvec, dtype=np.float32),
        candidates=ivec,
        candidate_ids=model.item_ids_,
        query_type=topk.arrow_type(model.user_ids_),
        exclude_for=exclude_for,
        n=n,
        n_blocks=n_blocks,
        block_multiple=block_multiple,
        chunk_cells=chunk_cells,
        overwrite=overwrite,
        manifest_extra={
            "filter_seen": bool(filter_seen),
            "seen_source": source,
            "from_worker_blocks": query_blocks is not None,
            **(metadata or {}),
        },
        source=_source(model),
        ann_params=params,
        query_blocks=query_blocks,
        seen_blocks=seen_blocks,
        fallback=fallback,
    )


def similar_items_all(
    model: FactorModel,
    n: int,
    path: str | os.PathLike[str],
    *,
    items: Any = None,
    overwrite: bool = False,
    n_blocks: int | None = None,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
    metadata: dict[str, Any] | None = None,
    method: str = "exact",
    shrinkage: float | None = None,
    **ann_options: Any,
) -> TopKOutput:
    """The ``n`` most similar items to every item (cosine of item factors) as Parquet.

    The same scores as :meth:`~mfdask.models.base.FactorModel.similar_items`: item
    embeddings are normalised to unit length once on the client and broadcast; each
    worker scores a block of items against all of them and drops the item itself. The
    ``shrinkage`` β (default the model's) multiplies each candidate's cosine by
    ``n_j / (n_j + β)``, ``n_j`` its training ratings: the candidates are the weighted
    unit vectors and the queries the plain ones (an inner-product index over the
    weighted vectors then ranks exactly so too).

    Parameters
    ----------
    model : FactorModel
        A fitted or loaded model.
    n : int
        Similar items per item.
    path : path
        Output directory (see :func:`recommend_all`).
    items : sequence of original item ids, optional
        Query items (default: all); candidates are always every item.
    overwrite, n_blocks, chunk_cells, metadata, method, ann_options
        As for :func:`recommend_all` (the index is over the unit item vectors).
    shrinkage : float, optional
        As for :meth:`~mfdask.models.base.FactorModel.similar_items`.
    """
    model._check_fitted()
    if items is None:
        rows = np.arange(model.n_items, dtype=np.int64)
    else:
        rows = np.unique(model.item_index(items))
    vectors = np.asarray(model._item_embeddings(), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    unit = (vectors / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    params = topk.ann.resolve_method(method, len(unit), ann_options)
    weights = model._support_weights(shrinkage)
    candidates = unit
    queries = None
    if weights is not None:
        candidates = (unit * np.asarray(weights, dtype=np.float32)[:, None]).astype(np.float32)
        queries = unit[rows]
    return topk.write_top_k(
        path=Path(path),
        what="similar items",
        key="item",
        query_column=schema.ITEM_ID,
        result_column="similar_item_id",
        rows=rows,
        query_ids=model.item_ids_.to_numpy()[rows],
        query_vectors=queries,
        candidates=candidates,
        candidate_ids=model.item_ids_,
        query_type=topk.arrow_type(model.item_ids_),
        exclude_for=topk.self_exclusion(),
        n=n,
        n_blocks=n_blocks,
        block_multiple=1,
        chunk_cells=chunk_cells,
        overwrite=overwrite,
        manifest_extra={
            "shrinkage": None
            if weights is None
            else float(model.similar_items_shrinkage if shrinkage is None else shrinkage),
            **(metadata or {}),
        },
        source=_source(model),
        ann_params=params,
    )
