"""Fold-in at scale: recommendations for millions of users from their histories in Parquet.

The batch twin of ``model.recommend(users, history=frame)``
(:mod:`mfdask.models.foldin`): the history never comes to the client.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import pyarrow as pa
import pyarrow.parquet as pq

from mfdask.data import schema
from mfdask.data.dataset import atomic_directory, write_json_atomic
from mfdask.engine.cluster import session, wait_for, worker_addresses
from mfdask.engine.topk import MANIFEST, OUTPUT_VERSION, TopKOutput, check_output_dir
from mfdask.recommend import DEFAULT_CHUNK_CELLS

VALUE_COLUMNS = (schema.RATING, "weight")


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
    from mfdask.models.foldin import top_k_block

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
    spec: Any,
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
    spec : mfdask.models.foldin.FoldIn
        The model's fold-in state (:func:`mfdask.models.foldin.fold_in_spec`).
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
        As for :func:`mfdask.engine.topk.recommend_all`.

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
