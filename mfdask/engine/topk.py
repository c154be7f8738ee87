"""Top-k for every user (or item) at scale: score blocks on workers, write Parquet.

A model's ``recommend`` scores a handful of users on the client. A batch job wants the
top ``n`` for *every* user, which for a large catalogue is far more work and far more
output than a client should hold, so here the work is cut into user blocks and each
block is scored, filtered and written by a worker. This module takes arrays, ids and
settings (:func:`write_top_k`); a model's ``recommend_all`` and ``similar_items_all``
read the model and call it.

1. The client scatters the candidate vectors (item factors, plus bias columns for SVD)
   once, broadcast to every worker, and each block's user vectors to the worker that will
   score that block. Nothing else about the model moves.
2. Users are blocked by residue, as everywhere in the engine (:mod:`mfdask.engine.blocks`):
   block ``b`` of ``R`` holds global rows ``g`` with ``g % R == b``. A canonical dataset is
   hive-partitioned by ``user_idx % D`` (``D`` = its ``n_user_blocks``); with ``R`` a
   multiple of ``D`` every user of block ``b`` lives in the single partition ``b % D``,
   so when the seen items come from a dataset the worker reads just that partition,
   batch by batch, and keeps the rows of its own users.
3. On the worker, the block is scored in chunks of rows whose score matrix holds at most
   ``chunk_cells`` cells (:func:`mfdask.recommend.chunk_rows`), seen items are masked and
   the ``n`` best kept with :func:`mfdask.recommend.top_k_of_scores` - the same routine
   ``recommend`` uses, so the batch and the single-user answers agree. A worker's memory is
   one chunk's scores plus one block's results, whatever the number of users.
4. Each block is written by its worker as ``<key>_block=b/part-0.parquet`` inside a
   temporary directory that the client renames into place once every block succeeded,
   with a ``_manifest.json`` of row counts (the leading underscore keeps it out of what
   pyarrow, pandas, Dask and DuckDB read as data).

The output path must therefore be on storage that the workers see under the same name
(a local disk for a ``LocalCluster``, a shared file system for a real cluster), as for a
Spark job writing to HDFS.

Outputs:

- ``recommendations``: ``user_id, rank:int32 (1..n), item_id, score:float32``, original ids;
  fewer than ``n`` rows for a user only when fewer unseen items exist. A user without a
  training positive (implicit models) gets the most popular unseen items, scored by their
  share of the training positives, as in ``recommend``; the manifest counts them
  (``popularity_fallback``).
- ``similar_items``: ``item_id, rank, similar_item_id, score`` (cosine of item factors,
  the item itself excluded).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from distributed import get_worker

from mfdask.data import schema
from mfdask.data.dataset import Dataset, atomic_directory, write_json_atomic
from mfdask.engine import ann
from mfdask.engine.cluster import session, wait_for, worker_addresses
from mfdask.engine.state import FactorBlocks, SeenBlocks
from mfdask.errors import ModelMismatchError
from mfdask.recommend import chunk_rows, popular_top_k, top_k_of_scores

MANIFEST = "_manifest.json"
"""Row counts and parameters of a top-k output (ignored by Parquet readers: leading ``_``)."""

BLOCK_ROWS = 65_536
"""Target rows (users or items) per output block: bounds a worker's result buffer."""

ROW_GROUP_ROWS = 1_000_000
"""Rows buffered on a worker before they are flushed as one Parquet row group."""

OUTPUT_VERSION = 1


@dataclass(frozen=True)
class TopKOutput:
    """What :func:`recommend_all` / :func:`similar_items_all` wrote.

    Attributes
    ----------
    path : Path
        The output directory (Parquet files partitioned by block, plus ``_manifest.json``).
    rows : int
        Rows written in total.
    n_blocks : int
        Output partitions (one Parquet file each).
    seconds : float
        Wall time from scattering the factors to the rename of the output.
    manifest : dict
        The parsed ``_manifest.json``.
    """

    path: Path
    rows: int
    n_blocks: int
    seconds: float
    manifest: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class _DatasetSeen:
    """Where a worker reads a block's seen items: a dataset's ratings directory."""

    ratings_path: str
    n_user_blocks: int | None


@dataclass(frozen=True)
class _BlockJob:
    """Everything about one output block that is not a large array (cheap to ship)."""

    block: int
    n_blocks: int
    n: int
    chunk_cells: int
    out_dir: str
    key: str
    query_column: str
    result_column: str
    query_type: pa.DataType
    result_type: pa.DataType
    ann: ann.AnnParams | None = None


# --------------------------------------------------------------------------- worker side


def _seen_from_dataset(src: _DatasetSeen, job: _BlockJob, rows: np.ndarray, n_cols: int):
    """``(len(rows), n_cols)`` CSR of the items ``rows`` (global, ascending) rated in ``src``.

    Reads only the hive partition that holds the block's users when the block count is a
    multiple of the dataset's, every partition otherwise; always batch by batch, keeping
    only the block's rows, so memory is bounded by the block, not the dataset.
    """
    root = Path(src.ratings_path)
    d = src.n_user_blocks
    if d and job.n_blocks % d == 0:
        files = sorted((root / f"{schema.USER_BLOCK}={job.block % d}").glob("*.parquet"))
    else:
        files = sorted(root.rglob("*.parquet"))
    found_r: list[np.ndarray] = []
    found_c: list[np.ndarray] = []
    for f in files:
        parquet = pq.ParquetFile(f)
        for batch in parquet.iter_batches(
            batch_size=ROW_GROUP_ROWS, columns=[schema.USER_IDX, schema.ITEM_IDX]
        ):
            u = batch.column(0).to_numpy().astype(np.int64, copy=False)
            i = batch.column(1).to_numpy().astype(np.int64, copy=False)
            mine = u % job.n_blocks == job.block
            u, i = u[mine], i[mine]
            pos = np.searchsorted(rows, u)
            pos_ok = np.minimum(pos, max(len(rows) - 1, 0))
            hit = (pos < len(rows)) & (rows[pos_ok] == u) if len(rows) else np.zeros(0, bool)
            if np.any(i[hit] >= n_cols) or np.any(i[hit] < 0):
                raise ModelMismatchError(
                    f"{f} has item_idx outside 0..{n_cols - 1}: the dataset's id maps are "
                    "not the model's (it was ingested separately); pass seen= a split of "
                    "the dataset the model was trained on, or retrain on this one"
                )
            found_r.append(pos[hit])
            found_c.append(i[hit])
    r = np.concatenate(found_r) if found_r else np.empty(0, np.int64)
    c = np.concatenate(found_c) if found_c else np.empty(0, np.int64)
    seen = sp.csr_matrix(
        (np.ones(len(r), dtype=np.int8), (r, c)), shape=(len(rows), n_cols), dtype=np.int8
    )
    seen.sum_duplicates()
    return seen


def _flush(writer: pq.ParquetWriter, job: _BlockJob, buf: list[tuple]) -> None:
    q = np.concatenate([b[0] for b in buf])
    rank = np.concatenate([b[1] for b in buf])
    r = np.concatenate([b[2] for b in buf])
    s = np.concatenate([b[3] for b in buf])
    table = pa.table(
        {
            job.query_column: pa.array(q, type=job.query_type),
            "rank": pa.array(rank, type=pa.int32()),
            job.result_column: pa.array(r, type=job.result_type),
            "score": pa.array(s, type=pa.float32()),
        }
    )
    writer.write_table(table)
    buf.clear()


def _top_k(
    job: _BlockJob, q: np.ndarray, candidates: np.ndarray, mask: Any, index: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The ``job.n`` best candidates of each row of ``q``: every one scored, or searched."""
    if job.ann is None:
        scores = np.asarray(q @ candidates.T, dtype=np.float32)
        return top_k_of_scores(scores, job.n, mask)
    return ann.ann_top_k(q, candidates, mask, job.n, index, job.ann, job.chunk_cells)


def _score_block(
    job: _BlockJob,
    rows: np.ndarray,
    query_vectors: np.ndarray | None,
    candidates: np.ndarray,
    query_ids: np.ndarray,
    candidate_ids: np.ndarray,
    exclude: Any,
    index: Any = None,
    cold: np.ndarray | None = None,
    popular: np.ndarray | None = None,
) -> int:
    """Score one block of rows against every candidate, keep the top ``n``, write Parquet.

    Runs on a worker. ``rows`` are the block's global row indices (ascending);
    ``query_vectors`` their vectors, or None to take them from ``candidates`` (similar
    items: queries and candidates are the same unit vectors); ``exclude`` is a CSR over
    the block's rows, a :class:`_DatasetSeen` to read one, ``"self"`` to drop each row's
    own index, or None; ``index`` the serialized ANN index when ``job.ann`` is set (the
    candidates are then searched, not all scored: :func:`mfdask.engine.ann.ann_top_k`);
    ``cold`` marks the rows without a training positive, whose lists are ``popular``
    (each candidate's share of the positives) ranked instead, seen items still masked
    (they are neither scored nor searched). Returns the number of rows written.
    """
    out_dir = Path(job.out_dir)
    if not out_dir.is_dir():
        try:
            where = get_worker().address
        except ValueError:
            where = "this process"
        raise FileNotFoundError(
            f"output directory {out_dir} is not visible on worker {where}: top-k files are "
            "written by the workers, so the output must be on storage they share with the "
            "client (a shared file system for a remote cluster)"
        )
    n_cols = candidates.shape[0]
    if isinstance(exclude, _DatasetSeen):
        exclude = _seen_from_dataset(exclude, job, rows, n_cols)
    elif isinstance(exclude, tuple):  # a SeenBlocks block: (block, n_blocks, indptr, indices)
        _, _, indptr, indices = exclude
        exclude = sp.csr_matrix(
            (np.ones(len(indices), np.int8), indices, indptr), shape=(len(indptr) - 1, n_cols)
        )
    k = min(job.n, n_cols)
    part_dir = out_dir / f"{job.key}_block={job.block}"
    part_dir.mkdir()
    schema_ = pa.schema(
        [
            pa.field(job.query_column, job.query_type),
            pa.field("rank", pa.int32()),
            pa.field(job.result_column, job.result_type),
            pa.field("score", pa.float32()),
        ]
    )
    step = chunk_rows(n_cols, job.chunk_cells) if job.ann is None else ann.ANN_ROWS
    if job.ann is not None:
        index = ann.load_index(index)
    ranks = np.arange(1, k + 1, dtype=np.int32)
    written = 0
    buffered = 0
    buf: list[tuple] = []
    with pq.ParquetWriter(part_dir / "part-0.parquet", schema_) as writer:
        for start in range(0, len(rows), step):
            stop = min(start + step, len(rows))
            chunk = rows[start:stop]
            q = query_vectors[start:stop] if query_vectors is not None else candidates[chunk]
            if isinstance(exclude, str):  # "self": drop the query row's own column
                mask = sp.csr_matrix(
                    (np.ones(len(chunk), np.int8), (np.arange(len(chunk)), chunk)),
                    shape=(len(chunk), n_cols),
                )
            elif exclude is not None:
                mask = exclude[start:stop]
            else:
                mask = None
            # Rows without a training positive are ranked by popularity, not scored.
            fall = None
            if cold is not None and popular is not None and cold[start:stop].any():
                fall = cold[start:stop]
            if fall is None or popular is None:
                idx, val = _top_k(job, q, candidates, mask, index)
            else:
                idx = np.full((len(chunk), k), -1, dtype=np.int64)
                val = np.full((len(chunk), k), -np.inf, dtype=np.float32)
                live = np.flatnonzero(~fall)
                if len(live):
                    idx[live], val[live] = _top_k(
                        job, q[live], candidates, None if mask is None else mask[live], index
                    )
                at = np.flatnonzero(fall)
                idx[at], val[at] = popular_top_k(
                    popular, job.n, None if mask is None else mask[at], n_rows=len(at)
                )
            keep = idx >= 0
            per_row = keep.sum(axis=1)
            # Survivors are a prefix of each row (best first), so ranks are 1..per_row.
            buf.append(
                (
                    np.repeat(query_ids[start:stop], per_row),
                    np.broadcast_to(ranks, idx.shape)[keep],
                    candidate_ids[idx[keep]],
                    val[keep],
                )
            )
            buffered += int(per_row.sum())
            if buffered >= ROW_GROUP_ROWS:
                _flush(writer, job, buf)
                written += buffered
                buffered = 0
        if buf:
            _flush(writer, job, buf)
            written += buffered
    return written


# --------------------------------------------------------------------------- client side


def _output_error(path: Path, what: str, exc: OSError) -> PermissionError:
    return PermissionError(
        f"cannot write {what} to {path}: {exc.strerror or exc}; choose a writable --output"
    )


def check_output_dir(path: str | os.PathLike[str], what: str, overwrite: bool = False) -> Path:
    """Fail before any work when ``path`` exists (without ``overwrite``) or cannot be made.

    Jobs call it before they start a cluster or a fit, so that a typo in ``--output``
    costs a second, not a training run.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    PermissionError
        The nearest existing ancestor of ``path`` is a file or is not writable.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists: choose another destination or pass --overwrite"
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise PermissionError(
            f"cannot write {what} to {path}: {parent} is a file, not a directory; "
            "choose a writable --output"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write {what} to {path}: {parent} is not writable; choose a writable --output"
        )
    return path


def _n_blocks(n_rows: int, n_workers: int, multiple_of: int, requested: int | None) -> int:
    if requested is not None:
        if isinstance(requested, bool) or int(requested) != requested or requested < 1:
            raise ValueError(f"n_blocks must be a positive integer, got {requested!r}")
        return int(requested)
    wanted = max(n_workers, math.ceil(n_rows / BLOCK_ROWS), 1)
    return multiple_of * math.ceil(wanted / multiple_of)


def arrow_type(ids: pd.Index) -> pa.DataType:
    """The Arrow type of an id column (from its first id; the id map's own type)."""
    return pa.array(ids.to_numpy()[:1] if len(ids) else ids.to_numpy()).type


def write_top_k(
    *,
    path: Path,
    what: str,
    key: str,
    query_column: str,
    result_column: str,
    rows: np.ndarray,
    query_ids: np.ndarray,
    query_vectors: np.ndarray | None,  # row j: the vector of rows[j]
    candidates: np.ndarray,
    candidate_ids: pd.Index,
    query_type: pa.DataType,
    exclude_for: Any,
    n: int,
    n_blocks: int | None,
    block_multiple: int,
    chunk_cells: int,
    overwrite: bool,
    manifest_extra: dict[str, Any],
    source: dict[str, Any] | None = None,
    ann_params: ann.AnnParams | None = None,
    query_blocks: FactorBlocks | None = None,
    seen_blocks: SeenBlocks | None = None,
    fallback: tuple[np.ndarray, np.ndarray] | None = None,
) -> TopKOutput:
    """Score blocks of query rows against every candidate on the workers, write Parquet.

    The driver behind a model's ``recommend_all`` and ``similar_items_all``: it takes
    arrays, ids and settings, never a model. ``rows`` are the queried global rows
    (ascending), ``query_ids`` their original ids, ``query_vectors`` their score vectors
    (row ``j`` for ``rows[j]``; None: the candidates' own rows, similar items),
    ``candidates`` ``(n_candidates, d) float32`` with original ids ``candidate_ids``.
    ``exclude_for`` maps a block's rows to what to filter (:func:`no_exclusion`,
    :func:`self_exclusion`, :func:`dataset_exclusion`, :func:`rows_exclusion`).
    ``source`` (the model's name, parameters and id-map fingerprint) and
    ``manifest_extra`` go into the manifest.

    With ``query_blocks`` (a user side held on the workers, every user queried) each
    output block is one factor block, scored on the worker that holds it against its own
    :class:`~mfdask.engine.state.SeenBlocks` block: only the ids travel. ``fallback``
    is ``(cold, popular)``: which of ``rows`` have no training positive (``(len(rows),)
    bool``) and the candidates' popularity scores (broadcast once, like the candidates).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(chunk_cells, bool) or int(chunk_cells) < 1:
        raise ValueError(f"chunk_cells must be a positive integer, got {chunk_cells!r}")
    path = check_output_dir(path, what, overwrite)
    started = time.perf_counter()
    with session() as client:
        workers = worker_addresses(client)
        if query_blocks is not None:
            r = query_blocks.n_blocks
        else:
            r = _n_blocks(len(rows), len(workers), block_multiple, n_blocks)
        candidates = np.ascontiguousarray(candidates, dtype=np.float32)
        cand_ids = candidate_ids.to_numpy()
        # Broadcast once: every block on every worker scores against all candidates.
        cand_f, cand_ids_f = client.scatter([candidates, cand_ids], broadcast=True, hash=False)
        popular_f = None
        if fallback is not None:
            popular_f = client.scatter(
                np.ascontiguousarray(fallback[1], dtype=np.float32), broadcast=True, hash=False
            )
        # ANN: one task builds the index over the candidates; its bytes reach each worker
        # once, like the candidates, and every block task searches them.
        index_f = (
            None
            if ann_params is None
            else client.submit(ann.build_index, cand_f, ann_params, pure=False)
        )
        try:
            with atomic_directory(path, overwrite=overwrite) as tmp:
                futures = []
                for b in range(r):
                    sel = np.flatnonzero(rows % r == b)
                    block_rows = rows[sel]
                    cold_b = None
                    if fallback is not None and fallback[0][sel].any():
                        cold_b = fallback[0][sel]  # a bool per row: small, inside the task
                    job = _BlockJob(
                        block=b,
                        n_blocks=r,
                        n=int(n),
                        chunk_cells=int(chunk_cells),
                        out_dir=str(tmp),
                        key=key,
                        query_column=query_column,
                        result_column=result_column,
                        query_type=query_type,
                        result_type=arrow_type(candidate_ids),
                        ann=ann_params,
                    )
                    qv_f: Any
                    if query_blocks is not None:
                        target = query_blocks.where[b]
                        rows_f, ids_f = client.scatter(
                            [block_rows, query_ids[sel]], workers=[target], hash=False
                        )
                        qv_f = query_blocks.blocks[b]
                        ex_f = (
                            seen_blocks.blocks[b]
                            if seen_blocks is not None
                            else exclude_for(block_rows)
                        )
                    else:
                        target = workers[b % len(workers)]
                        payload = [block_rows, query_ids[sel]]
                        if query_vectors is not None:
                            payload.append(np.ascontiguousarray(query_vectors[sel]))
                        ex = exclude_for(block_rows)
                        if sp.issparse(ex):
                            payload.append(ex)
                        scattered = client.scatter(payload, workers=[target], hash=False)
                        rows_f, ids_f = scattered[0], scattered[1]
                        qv_f = scattered[2] if query_vectors is not None else None
                        ex_f = scattered[-1] if sp.issparse(ex) else ex
                    futures.append(
                        client.submit(
                            _score_block,
                            job,
                            rows_f,
                            qv_f,
                            cand_f,
                            ids_f,
                            cand_ids_f,
                            ex_f,
                            index_f,
                            cold_b,
                            None if cold_b is None else popular_f,
                            workers=[target],
                            allow_other_workers=True,
                            pure=False,
                        )
                    )
                wait_for(client, futures)
                counts = [int(c) for c in client.gather(futures)]
                seconds = time.perf_counter() - started
                manifest = {
                    "output_version": OUTPUT_VERSION,
                    "kind": what,
                    "columns": [query_column, "rank", result_column, "score"],
                    "partitioning": f"{key}_block = dense {key} index % n_blocks",
                    "n": int(n),
                    "rows": int(sum(counts)),
                    "n_blocks": r,
                    "rows_per_block": counts,
                    "queries": len(rows),
                    "candidates": len(cand_ids),
                    **(source or {}),
                    "seconds": round(seconds, 3),
                    "method": "exact" if ann_params is None else "ann",
                    "popularity_fallback": 0 if fallback is None else int(fallback[0].sum()),
                    "ann": None if ann_params is None else ann_params.as_dict(),
                    **manifest_extra,
                }
                write_json_atomic(tmp / MANIFEST, manifest)
        except PermissionError as exc:
            raise _output_error(path, what, exc) from exc
        finally:
            client.cancel(
                [cand_f, cand_ids_f]
                + ([] if index_f is None else [index_f])
                + ([] if popular_f is None else [popular_f])
            )
    seconds = time.perf_counter() - started
    return TopKOutput(
        path=path, rows=manifest["rows"], n_blocks=r, seconds=seconds, manifest=manifest
    )


def _none(rows: np.ndarray) -> None:
    return None


def no_exclusion() -> Any:
    """Filter nothing."""
    return _none


def self_exclusion() -> Any:
    """Drop each query row's own column (similar items)."""
    return _Const("self")


def dataset_exclusion(ds: Dataset) -> tuple[Any, int]:
    """Filter the items each user rated in the canonical dataset ``ds``, read on the
    workers partition by partition; also the block multiple that lets a worker read just
    its users' partition (the dataset's ``n_user_blocks``)."""
    d = ds.manifest.get("n_user_blocks")
    d = int(d) if d else None
    return _Const(_DatasetSeen(str(ds.ratings_path.resolve()), d)), d or 1


def rows_exclusion(seen: SeenBlocks | sp.spmatrix) -> Any:
    """Filter each row's entries of ``seen`` (a ``(n_rows, n_cols)`` pattern)."""
    return _RowsOf(seen if isinstance(seen, SeenBlocks) else seen.tocsr())


@dataclass(frozen=True)
class _Const:
    value: Any

    def __call__(self, rows: np.ndarray) -> Any:
        return self.value


@dataclass(frozen=True)
class _RowsOf:
    matrix: sp.csr_matrix

    def __call__(self, rows: np.ndarray) -> sp.csr_matrix:
        return self.matrix[rows]


def recommend_all(model: Any, n: int, path: str | os.PathLike[str], **options: Any) -> TopKOutput:
    """Deprecated: call ``model.recommend_all(n, path, ...)`` (the engine takes arrays now,
    :func:`write_top_k`). Forwards there, with a ``DeprecationWarning``."""
    warnings.warn(
        "mfdask.engine.topk.recommend_all(model, ...) is deprecated and will be removed in "
        "the next release: call model.recommend_all(n, path, ...)",
        DeprecationWarning,
        stacklevel=2,
    )
    return model.recommend_all(n, path, **options)


def similar_items_all(
    model: Any, n: int, path: str | os.PathLike[str], **options: Any
) -> TopKOutput:
    """Deprecated: call ``model.similar_items_all(n, path, ...)``. Forwards there, with a
    ``DeprecationWarning``."""
    warnings.warn(
        "mfdask.engine.topk.similar_items_all(model, ...) is deprecated and will be removed "
        "in the next release: call model.similar_items_all(n, path, ...)",
        DeprecationWarning,
        stacklevel=2,
    )
    return model.similar_items_all(n, path, **options)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``_manifest.json`` of a top-k output directory."""
    import json

    p = Path(path) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"{path} is not a top-k output: {MANIFEST} is missing")
    return json.loads(p.read_text())


def _block_column_counts(block: Any, n_cols: int) -> np.ndarray:
    """Entries per column of one :class:`~mfdask.engine.state.SeenBlocks` block."""
    return np.bincount(np.asarray(block[3], dtype=np.int64), minlength=n_cols)


def column_counts(seen: Any) -> np.ndarray:
    """``(n_cols,) int64``: entries per column of a seen-items pattern (items' training
    ratings): a CSR on the client, or :class:`~mfdask.engine.state.SeenBlocks` counted
    where each block lives (only the counts travel)."""
    if isinstance(seen, SeenBlocks):
        client = seen.blocks[0].client
        futures = [
            client.submit(
                _block_column_counts,
                b,
                seen.n_cols,
                workers=[w],
                allow_other_workers=True,
                pure=False,
            )
            for b, w in zip(seen.blocks, seen.where, strict=True)
        ]
        return np.sum(client.gather(futures), axis=0).astype(np.int64)
    csr = sp.csr_matrix(seen)
    return np.bincount(csr.indices, minlength=csr.shape[1]).astype(np.int64)
