"""Fold-in on arrays, and at scale: users' factors from their histories, items fixed.

This module takes a :class:`FoldIn` (the item arrays and settings a model hands over; the
models build it) and histories, never a model. :class:`History` holds histories as CSR
rows in dense item indices (:func:`build_history`), :meth:`FoldIn.solve` runs the
fold-in kernels over them, and :func:`top_k_block` scores and keeps each user's top
``n``: the worker side of the batch job below and the client side of
``model.recommend(users, history=frame)`` alike, so both answers agree.

:func:`recommend_history_all` is the batch job, for millions of users from their
histories in Parquet; the history never comes to the client.

1. The workers read the history Parquet (``user_id, item_id[, rating or weight]``, in
   original ids, any partitioning) and shuffle it by ``user_id`` into ``R`` partitions,
   so that each user's whole history lands in one partition.
2. The client scatters the model's fold-in state (a ``FoldIn``: the item factors and
   settings, never a user factor) once, broadcast to every worker.
3. Each partition is folded in and scored on its worker in one task: the users' CSR,
   the fold-in kernels over it, block-wise scores, the history items filtered, the top
   ``n`` kept (the same routine as ``recommend``, so the batch and the single-user
   answers agree), and written as ``user_block=b/part-0.parquet`` into a temporary
   directory that the client renames into place once every partition succeeded, with a
   ``_manifest.json`` of counts.

An unknown item fails the job with its id (or, with ``unknown_items="skip"``, its rows
are dropped and counted); a user without a usable interaction is left out and counted
in the manifest (``empty_users``), since one such user must not fail a job over
millions. The output must be on storage the workers share (see :mod:`mfdask.engine.topk`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from mfdask.data import schema
from mfdask.data.dataset import atomic_directory, write_json_atomic
from mfdask.data.hashing import hash_keys
from mfdask.data.training import as_id_type
from mfdask.engine.cluster import session, wait_for, worker_addresses
from mfdask.engine.sizes import sized
from mfdask.engine.topk import MANIFEST, OUTPUT_VERSION, TopKOutput, check_output_dir
from mfdask.errors import ALSNumericalError, InputError, UnknownIdError
from mfdask.kernels.als import solve_rows_cholesky
from mfdask.kernels.foldin import bpr_fold_in, svd_fold_in, svd_member_fold_in, warp_fold_in
from mfdask.kernels.warp import MAX_RANK_WEIGHT
from mfdask.recommend import DEFAULT_CHUNK_CELLS, chunk_rows, top_k_of_scores

VALUE_COLUMNS = (schema.RATING, "weight")

WEIGHT = "weight"
"""Column of event counts in a history frame (events-trained models)."""

UNKNOWN_ITEM_POLICIES = ("error", "skip")

_STREAM_FOLD_IN = 0x464F4C44  # "FOLD": the hash stream of the per-user seeds


# --------------------------------------------------------------------------- histories


@sized
@dataclass
class History:
    """Histories as CSR rows, one row per user, items in the model's dense indices.

    Attributes
    ----------
    user_ids : (n_rows,) array
        Original user ids, ascending.
    indptr : (n_rows + 1,) int64
    indices : (nnz,) int32
        Dense item indices, ascending within a row.
    values : (nnz,) float32
        Rating or weight of each interaction.
    positive : (nnz,) bool
        Whether it is a positive for an implicit model.
    skipped : int
        Rows dropped because their item is unknown (``unknown_items="skip"``).
    """

    user_ids: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    positive: np.ndarray
    skipped: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.user_ids)

    def seen(self, n_items: int) -> sp.csr_matrix:
        """Every history item per row (positive or not), as a CSR of ones."""
        return sp.csr_matrix(
            (np.ones(len(self.indices), np.int8), self.indices, self.indptr),
            shape=(self.n_rows, n_items),
        )

    def positives(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``indptr, indices, values`` of the positives only."""
        before = np.concatenate([[0], np.cumsum(self.positive, dtype=np.int64)])
        return (
            before[self.indptr],
            np.ascontiguousarray(self.indices[self.positive]),
            np.ascontiguousarray(self.values[self.positive]),
        )

    def select(self, rows: np.ndarray) -> History:
        """The histories of the rows where the boolean mask ``rows`` is set."""
        lengths = np.diff(self.indptr)
        keep = np.repeat(rows, lengths)
        indptr = np.zeros(int(rows.sum()) + 1, np.int64)
        np.cumsum(lengths[rows], out=indptr[1:])
        return History(
            user_ids=self.user_ids[rows],
            indptr=indptr,
            indices=self.indices[keep],
            values=self.values[keep],
            positive=self.positive[keep],
            skipped=self.skipped,
        )

    def n_positives(self) -> np.ndarray:
        before = np.concatenate([[0], np.cumsum(self.positive, dtype=np.int64)])
        return np.diff(before[self.indptr])


def _history_values(
    frame: pd.DataFrame, spec: FoldIn, where: str
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(values, positive, summed)`` of a history frame under the model's data rules."""
    n = len(frame)
    if schema.RATING in frame.columns:
        values = pd.to_numeric(frame[schema.RATING], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{where}: rating is missing or not a number in row {row} "
                f"(user_id={frame[schema.USER_ID].iloc[row]!r}, "
                f"item_id={frame[schema.ITEM_ID].iloc[row]!r})"
            )
        threshold = spec.threshold
        positive = values >= threshold if threshold is not None else np.ones(n, bool)
        return values.astype(np.float32), positive, False
    if spec.threshold is None:
        raise InputError(
            f"{where} has no {schema.RATING!r} column: {spec.model_name} folds users in "
            "from their ratings"
        )
    if WEIGHT in frame.columns:
        values = pd.to_numeric(frame[WEIGHT], errors="coerce").to_numpy(np.float64)
        if (~np.isfinite(values)).any() or (values < 0).any():
            row = int(np.flatnonzero(~(np.isfinite(values) & (values >= 0)))[0])
            raise InputError(f"{where}: weight must be a finite number >= 0 (row {row})")
        return values.astype(np.float32), values > 0, True
    return np.ones(n, np.float32), np.ones(n, bool), False


def build_history(
    frame: pd.DataFrame,
    spec: FoldIn,
    *,
    unknown_items: str = "error",
    where: str = "history",
) -> History:
    """The histories in ``frame`` as :class:`History` rows (vectorised, no per-user loop).

    Raises
    ------
    InputError
        Missing columns or a non-numeric rating/weight.
    UnknownIdError
        An item the model does not know, named (``unknown_items="error"``).
    """
    if unknown_items not in UNKNOWN_ITEM_POLICIES:
        raise ValueError(
            f"unknown_items must be one of {list(UNKNOWN_ITEM_POLICIES)}, got {unknown_items!r}"
        )
    if not isinstance(frame, pd.DataFrame):
        raise InputError(
            f"{where} must be a pandas DataFrame with user_id, item_id[, rating] "
            f"(got a {type(frame).__name__}); for Parquet at scale use the batch job "
            "(`mfdask recommend MODEL OUTPUT --history PATH`)"
        )
    missing = [c for c in (schema.USER_ID, schema.ITEM_ID) if c not in frame.columns]
    if missing:
        raise InputError(
            f"{where} is missing column(s) {missing}; it has {list(frame.columns)} "
            "(expected user_id, item_id[, rating or weight] in original ids)"
        )
    if frame[schema.USER_ID].isna().any():
        raise InputError(f"{where} has missing user ids (NaN/None)")
    values, positive, summed = _history_values(frame, spec, where)
    model_items = spec.item_index
    items = as_id_type(pd.Index(frame[schema.ITEM_ID]), model_items, f"{where}: item ids")
    item = model_items.get_indexer(items)
    unknown = item < 0
    skipped = int(unknown.sum())
    if skipped and unknown_items == "error":
        names = list(pd.unique(items[unknown]))
        raise UnknownIdError(
            f"{where} has {skipped} row(s) with item id(s) the model does not know: "
            f"{names[:10]}"
            + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            + "; pass unknown_items='skip' to drop them (they are counted)"
        )
    keep = ~unknown
    # Users are listed before unknown rows go, so that a user left with nothing is an
    # empty row (reported), not silently absent.
    user_codes, user_ids = pd.factorize(frame[schema.USER_ID].to_numpy(), sort=True)
    user_codes = user_codes[keep]
    item = item[keep]
    values, positive = values[keep], positive[keep]
    # Sort by (user, item); duplicates of a pair keep the last row, or sum weights.
    order = np.lexsort((np.arange(len(item)), item, user_codes))
    u, i, v, p = user_codes[order], item[order], values[order], positive[order]
    last = np.ones(len(u), bool)
    if len(u):
        last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    if summed and not last.all():
        group = np.concatenate([[0], np.cumsum(last[:-1])])
        v = np.bincount(group, weights=v).astype(np.float32)
        p = v > 0
        u, i = u[last], i[last]
    else:
        u, i, v, p = u[last], i[last], v[last], p[last]
    indptr = np.zeros(len(user_ids) + 1, np.int64)
    np.cumsum(np.bincount(u, minlength=len(user_ids)), out=indptr[1:])
    return History(
        user_ids=np.asarray(user_ids),
        indptr=indptr,
        indices=np.ascontiguousarray(i, dtype=np.int32),
        values=np.ascontiguousarray(v, dtype=np.float32),
        positive=np.ascontiguousarray(p, dtype=bool),
        skipped=skipped,
    )


def user_seeds(random_state: Any, user_ids: np.ndarray) -> np.ndarray:
    """``(n,) uint64`` seeds of the SGD fold-ins: a hash of (random_state, user id)."""
    seed = 0 if random_state is None else int(random_state)
    keys = pd.util.hash_array(np.asarray(user_ids, dtype=object))
    return hash_keys(seed, _STREAM_FOLD_IN, keys)


# --------------------------------------------------------------------------- solvers


@dataclass(frozen=True)
class FoldIn:
    """Everything a worker needs to fold users into one model: item arrays, settings.

    Built once on the client by the model (``fold_in_spec``) and shipped (broadcast) whole:
    it holds the item side only, never a user factor.

    Attributes
    ----------
    kind : {"als", "svd", "bpr", "warp"}
    model_name : str
        The model's class name (for messages).
    threshold : float or None
        ``positive_threshold`` of an implicit model; None for SVD.
    item_ids : (n_items,) array
        Original item ids (position = dense index).
    item_vectors : (n_items, d) float32
        The items' score vectors (as the model's ``_score_vectors()[1]``).
    settings : dict
        The model's hyper-parameters that the kernel needs.
    arrays : dict
        Extra item arrays (SVD: factors and biases apart; ALS: the Gram matrix).
    """

    kind: str
    item_ids: np.ndarray
    item_vectors: np.ndarray
    settings: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    model_name: str = ""
    threshold: float | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_index(self) -> pd.Index:
        return pd.Index(self.item_ids, name=schema.ITEM_ID)

    def needs_positive(self) -> bool:
        return self.threshold is not None

    def usable(self, hist: History) -> np.ndarray:
        """Rows with an interaction to fold in from (implicit models: a positive)."""
        counts = hist.n_positives() if self.needs_positive() else np.diff(hist.indptr)
        return counts > 0

    def solve(self, hist: History) -> tuple[np.ndarray, np.ndarray | None]:
        """``(factors (n_rows, k) float32, user bias (n_rows,) float32 or None)``."""
        s = self.settings
        n = hist.n_rows
        if self.kind == "als":
            indptr, indices, values = hist.positives()
            if s["binary"]:
                values = np.ones(len(indices), np.float32)
            elif s.get("log_epsilon") is not None:  # as the fit's weighting="log"
                values = np.log1p(values.astype(np.float64) / s["log_epsilon"]).astype(np.float32)
            y = self.item_vectors
            out = np.zeros((n, y.shape[1]), np.float32)
            failed = solve_rows_cholesky(
                indptr, indices, values, y, self.arrays["gram"], out,
                s["regularization"], s["count_power"], s["alpha"], s["offset"], 0, n,
            )  # fmt: skip
            if failed >= 0:
                raise ALSNumericalError(
                    f"folding in user {hist.user_ids[failed]!r} failed: the normal equations "
                    "are not positive definite (the history's weights make them indefinite); "
                    "raise the model's regularization or use confidence='paper'"
                )
            return out, None
        seeds = user_seeds(s["random_state"], hist.user_ids)
        rates = np.asarray(s["rates"], np.float64)
        if self.kind == "svd":
            q, b = self.arrays["factors"], self.arrays["bias"]
            out = np.empty((n, q.shape[1]), np.float32)
            bias = np.empty(n, np.float32)
            args = (
                hist.indptr, hist.indices, hist.values, q, b, s["global_mean"], rates,
                rates * s["bias_rate_ratio"], s["regularization"], s["bias_regularization"],
                s["init_scale"], seeds, out, bias,
            )  # fmt: skip
            members = int(s.get("members", 1))
            if members > 1:
                svd_member_fold_in(*args, members)
            else:
                svd_fold_in(*args)
            return out, bias
        y = self.item_vectors
        out = np.empty((n, y.shape[1]), np.float32)
        values = np.where(hist.positive, 1.0, 0.0).astype(np.float32)
        if self.kind == "bpr":
            bpr_fold_in(
                hist.indptr, hist.indices, values, 0.5, y, s["user_dims"], rates,
                s["regularization"], s["init_scale"], seeds, out,
            )  # fmt: skip
        else:
            warp_fold_in(
                hist.indptr, hist.indices, values, 0.5, y, s["user_dims"], rates,
                s["regularization"], s["max_sampled"], s["adagrad"], s["init_scale"],
                seeds, out, s.get("max_rank_weight", MAX_RANK_WEIGHT),
            )  # fmt: skip
        return out, None

    def user_vectors(self, factors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """Score vectors of folded users, the counterpart of :attr:`item_vectors`."""
        if self.kind == "svd":
            mu = self.settings["global_mean"]
            ones = np.ones((len(factors), 1), np.float32)
            return np.hstack([factors, ones, (mu + bias)[:, None]]).astype(np.float32)
        return factors

    def model_factors(
        self, factors: np.ndarray, bias: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's ``user_factors_`` layout (no bias column) and its user bias."""
        k = int(self.settings["factors"])
        return np.ascontiguousarray(factors[:, :k]), bias


def score_top_k(
    uvec: np.ndarray,
    ivec: np.ndarray,
    exclude: sp.csr_matrix | None,
    n: int,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` columns of ``uvec @ ivec.T`` per row, minus ``exclude``, chunk by chunk."""
    k = min(n, ivec.shape[0])
    idx = np.empty((len(uvec), k), np.int64)
    val = np.empty((len(uvec), k), np.float32)
    step = chunk_rows(ivec.shape[0], chunk_cells)
    for start in range(0, len(uvec), step):
        stop = min(start + step, len(uvec))
        scores = np.asarray(uvec[start:stop] @ ivec.T, dtype=np.float32)
        mask = exclude[start:stop] if exclude is not None else None
        idx[start:stop], val[start:stop] = top_k_of_scores(scores, n, mask)
    return idx, val


def top_k_block(
    spec: FoldIn,
    frame: pd.DataFrame,
    n: int,
    *,
    unknown_items: str = "error",
    filter_seen: bool = True,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
    where: str = "history",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fold in every user of ``frame`` (whole histories) and keep their top ``n`` items.

    The worker side of the batch job (:func:`mfdask.engine.foldin.recommend_history_all`):
    users without a usable interaction are left out and counted rather than raised.

    Returns
    -------
    DataFrame
        ``user_id, rank, item_id, score`` (original ids).
    dict
        ``users`` folded in, ``empty_users`` left out, ``skipped_rows`` (unknown items).
    """
    hist = build_history(frame, spec, unknown_items=unknown_items, where=where)
    usable = spec.usable(hist)
    empty = int((~usable).sum())
    if empty:
        hist = hist.select(usable)
    factors, bias = spec.solve(hist)
    uvec = spec.user_vectors(factors, bias)
    exclude = hist.seen(spec.n_items) if filter_seen else None
    idx, val = score_top_k(uvec, spec.item_vectors, exclude, n, chunk_cells)
    keep = idx >= 0
    ranks = np.broadcast_to(np.arange(1, idx.shape[1] + 1, dtype=np.int32), idx.shape)
    out = pd.DataFrame(
        {
            schema.USER_ID: np.repeat(hist.user_ids, keep.sum(axis=1)),
            "rank": ranks[keep],
            schema.ITEM_ID: spec.item_ids[idx[keep]],
            "score": val[keep],
        }
    )
    return out, {"users": hist.n_rows, "empty_users": empty, "skipped_rows": hist.skipped}


# --------------------------------------------------------------------------- batch job


@dataclass(frozen=True)
class _FoldJob:
    block: int
    n: int
    out_dir: str
    unknown_items: str
    filter_seen: bool
    chunk_cells: int


def _fold_block(part: Any, spec: Any, job: _FoldJob) -> dict[str, int]:
    """Fold in and score one partition of whole histories; write its Parquet file."""
    recs, counts = top_k_block(
        spec,
        part,
        job.n,
        unknown_items=job.unknown_items,
        filter_seen=job.filter_seen,
        chunk_cells=job.chunk_cells,
        where=f"history partition {job.block}",
    )
    out = Path(job.out_dir)
    if not out.is_dir():
        raise FileNotFoundError(
            f"output directory {out} is not visible on this worker: the output must be on "
            "storage the workers share with the client"
        )
    part_dir = out / f"user_block={job.block}"
    part_dir.mkdir()
    table = pa.Table.from_pandas(recs, preserve_index=False)
    table = table.cast(
        pa.schema(
            [
                table.schema.field(schema.USER_ID),
                pa.field("rank", pa.int32()),
                table.schema.field(schema.ITEM_ID),
                pa.field("score", pa.float32()),
            ]
        )
    )
    pq.write_table(table, part_dir / "part-0.parquet")
    return {**counts, "rows": len(recs)}


def recommend_history_all(
    spec: FoldIn,
    history: str | os.PathLike[str] | dd.DataFrame,
    n: int,
    path: str | os.PathLike[str],
    *,
    unknown_items: str = "error",
    filter_seen: bool = True,
    overwrite: bool = False,
    n_blocks: int | None = None,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
    metadata: dict[str, Any] | None = None,
) -> TopKOutput:
    """Top-``n`` items for every user of ``history``, folded in on the workers.

    Parameters
    ----------
    spec : FoldIn
        The model's fold-in state (the item arrays and settings, built by the model).
    history : path or dask DataFrame
        Parquet (a file or a directory) or a Dask DataFrame with ``user_id, item_id`` and
        ``rating`` or ``weight``, in original ids.
    n : int
        Items per user.
    path : path
        Output directory (must not exist unless ``overwrite``).
    unknown_items : {"error", "skip"}
    filter_seen : bool
        Drop each user's history items from the list.
    n_blocks : int, optional
        Partitions after the shuffle (output files); default: the input's partition
        count, at least one per worker.
    chunk_cells, metadata
        As for :func:`mfdask.engine.topk.write_top_k`.

    Returns
    -------
    TopKOutput
        The manifest counts ``users``, ``empty_users`` and ``skipped_rows`` too.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if unknown_items not in ("error", "skip"):
        raise ValueError(f"unknown_items must be 'error' or 'skip', got {unknown_items!r}")
    path = check_output_dir(path, "recommendations", overwrite)
    if isinstance(history, dd.DataFrame):
        frame, source = history, "DataFrame"
    else:
        if not Path(history).exists():
            raise FileNotFoundError(f"history {os.fspath(history)!r} does not exist")
        frame, source = dd.read_parquet(os.fspath(history)), os.fspath(history)
    missing = [c for c in (schema.USER_ID, schema.ITEM_ID) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"history {source} is missing column(s) {missing}; it has {list(frame.columns)} "
            "(expected user_id, item_id[, rating or weight] in original ids)"
        )
    columns = [schema.USER_ID, schema.ITEM_ID] + [c for c in VALUE_COLUMNS if c in frame.columns]
    frame = frame[columns]
    started = time.perf_counter()
    with session() as client:
        workers = worker_addresses(client)
        r = int(n_blocks) if n_blocks else max(len(workers), frame.npartitions)
        parts = frame.shuffle(on=schema.USER_ID, npartitions=r).to_delayed()
        [spec_f] = client.scatter([spec], broadcast=True, hash=False)
        try:
            with atomic_directory(path, overwrite=overwrite) as tmp:
                tasks = [
                    dask.delayed(_fold_block, pure=False)(
                        part,
                        spec_f,
                        _FoldJob(b, n, str(tmp), unknown_items, filter_seen, int(chunk_cells)),
                    )
                    for b, part in enumerate(parts)
                ]
                futures = client.compute(tasks)
                wait_for(client, futures)
                counts = client.gather(futures)
                seconds = time.perf_counter() - started
                total = {
                    key: int(sum(c[key] for c in counts))
                    for key in ("rows", "users", "empty_users", "skipped_rows")
                }
                manifest = {
                    "output_version": OUTPUT_VERSION,
                    "kind": "recommendations",
                    "columns": [schema.USER_ID, "rank", schema.ITEM_ID, "score"],
                    "partitioning": "user_block = hash of user_id % n_blocks (a Dask shuffle)",
                    "n": int(n),
                    **total,
                    "queries": total["users"],
                    "n_blocks": len(tasks),
                    "rows_per_block": [int(c["rows"]) for c in counts],
                    "candidates": int(spec.n_items),
                    "model": spec.model_name,
                    "fold_in": True,
                    "history_source": source,
                    "unknown_items": unknown_items,
                    "filter_seen": bool(filter_seen),
                    "seconds": round(seconds, 3),
                    **(metadata or {}),
                }
                write_json_atomic(tmp / MANIFEST, manifest)
        finally:
            client.cancel([spec_f])
    return TopKOutput(
        path=path,
        rows=manifest["rows"],
        n_blocks=len(tasks),
        seconds=time.perf_counter() - started,
        manifest=manifest,
    )
