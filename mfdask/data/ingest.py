"""Ingest raw ratings into a canonical mfdask dataset (:mod:`mfdask.data.schema`).

The work is done by Dask in two rounds of tasks, and the client never holds the ratings:

1. **Parse** (one task per line-aligned block of text, or Parquet row group). Each task
   parses and validates its lines (:mod:`mfdask.data.readers`) and stages its valid
   ratings, still with their original ids, in one Arrow IPC file whose record batch
   ``b`` holds the rows of user bucket ``b`` (a hash of the original user id), in line
   order; bad rows go to a staging Parquet file. It returns only counts, the first bad
   row, the rows per bucket, and the block's distinct ids. The same round merges the
   distinct ids by a tree of small tasks and checksums the source files.
2. **Ids and bad rows** (on the client: small). Dense indices follow the ascending order
   of the original ids, so the same input always gives the same id maps. Each block's
   line count gives the absolute line at which it starts, so bad rows and duplicates
   are named by their line in the file. With ``on_bad_rows="error"`` the first bad row
   (in file order) stops the ingest before anything is written.
3. **Buckets** (one task per user bucket). Every rating of a user is in one bucket, so
   duplicate (user, item) pairs meet inside one task: no shuffle. A task reads its batch
   of every block (only those bytes) and of the user map that the client staged the
   same way, maps the ids to dense indices, resolves duplicates by the policy, and
   writes its rows straight into the dataset's ``user_block=k`` directories (one file
   per user block it touches); it returns the rows written (read back from the Parquet
   footers), the rating histogram and the distinct users and items, from which the
   manifest's summary is built without re-reading anything.
4. **Commit.** :func:`mfdask.data.dataset.write_dataset_from` writes into a temporary
   directory renamed into place at the end; before that the bad rows are written to
   ``quarantine.parquet`` and the rows are accounted for: rows read = rows written +
   rows quarantined + duplicates merged, each counted from what was actually written,
   or nothing is written at all.

Memory is bounded by the block size (round 1) and the bucket size (round 3): the number
of buckets grows with the input (about :data:`ROWS_PER_BUCKET` ratings each). The
staging directory, beside the destination and removed at the end, holds about 24 bytes
per rating with integer ids; each rating is parsed once, staged once and written once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.bytes import read_bytes
from dask.delayed import Delayed

from mfdask.data import schema
from mfdask.data.dataset import (
    DEFAULT_USER_BLOCKS,
    Dataset,
    is_dataset,
    open_dataset,
    ratings_summary,
    write_dataset_from,
)
from mfdask.data.readers import (
    DEFAULT_BLOCKSIZE,
    ROLES,
    ParsedBlock,
    RatingSource,
    estimate_rows,
    parse_parquet_row_group,
    parse_text_block,
    read_items,
    resolve_source,
)
from mfdask.data.validate import (
    Accounting,
    AccountingError,
    BadRowsError,
    DuplicateRatingError,
    IngestError,
    check_accounting,
    quote_line,
    validate_policy,
    validate_rating_range,
)

log = logging.getLogger("mfdask")

_GOOD = "good"
_BAD = "bad"
_USER_MAP = "users.arrow"
_UNION_FAN_IN = 16
MIN_BLOCKSIZE = 2**20

ROWS_PER_BUCKET = 2_000_000
"""Ratings per user bucket (one task of the last round), as estimated from the input.

A bucket task holds about 120 bytes per rating at its peak (the staged columns, dense
indices, the sort order and the output), so ~250 MB per worker at this size.
"""
MIN_ROWS_PER_BUCKET = 250_000
"""Small inputs are not cut into buckets smaller than this (see :func:`n_buckets_for`)."""
MAX_BUCKETS = 4096
"""At most this many buckets (so bucket numbers fit 16 bits)."""


def ingest(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    format: str | None = None,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str | None = None,
    id_type: str = "auto",
    rating_range: tuple[float, float] | str | None = "auto",
    duplicates: str | None = None,
    on_bad_rows: str = "error",
    n_user_blocks: int = DEFAULT_USER_BLOCKS,
    overwrite: bool = False,
    blocksize: int = DEFAULT_BLOCKSIZE,
    weight_col: str | int | None = None,
    events: bool = False,
) -> Dataset:
    """Read ratings (or an event log) from ``source`` and write the canonical dataset ``dest``.

    Runs on the current Dask scheduler (a ``distributed.Client`` when one is registered;
    :func:`mfdask.engine.cluster.session` sets one up).

    Parameters
    ----------
    source : path
        A MovieLens directory or file, or CSV/TSV/Parquet file(s); see
        :func:`mfdask.data.readers.resolve_source` for ``format``, the ``*_col`` column
        mapping, ``sep``, ``id_type`` and ``rating_range`` (``"auto"``: MovieLens ranges,
        none for generic input).
    dest : path
        The dataset directory to write; it must not exist unless ``overwrite`` (and then
        must hold an mfdask dataset, which is replaced only once the new one is complete).
    duplicates : {"error", "last", "mean", "sum", "count"}, optional
        Several ratings of one (user, item) pair: stop, keep the last one (file and line
        order), or keep their mean rating with the last timestamp. Several events of one
        pair (an event log): ``sum`` (the default for events) folds them into one row with
        their total weight, ``count`` with their number, both with the latest timestamp
        (``error`` and ``last`` apply too). Default: ``error`` for ratings.
    weight_col, events
        Read an event log instead of ratings: ``weight_col`` names its weight column
        (counts or strengths, ``>= 0``), ``events`` alone reads every row as one event
        of weight 1 (see :func:`mfdask.data.readers.resolve_source`). The manifest
        records ``feedback: "events"`` (the weight is stored in the ``rating`` column), so
        models pick their event defaults.
    on_bad_rows : {"error", "skip"}
        Stop at the first bad row (naming file, line and problem; nothing is written),
        or write bad rows with their line and reason to ``quarantine.parquet`` in the
        dataset and go on.
    n_user_blocks : int
        Hive partitions of the ratings (``user_block = user_idx % n_user_blocks``).
    blocksize : int
        Bytes of text per parsing task, at most (a file under 4 blocks is parsed in 4
        tasks of at least 1 MiB).

    Returns
    -------
    Dataset
        The written dataset; its manifest holds ``rows_in``, ``rows`` (out),
        ``rows_quarantined``, ``duplicates_merged`` and the source checksums.

    Raises
    ------
    IngestError
        Bad input (with its file and line), a missing or empty file, a wrong delimiter.
    FileExistsError
        ``dest`` exists and ``overwrite`` is false.
    """
    events = events or weight_col is not None
    if duplicates is None:
        duplicates = "sum" if events else "error"
    validate_policy(on_bad_rows, duplicates, events)
    if rating_range != "auto":
        validate_rating_range(rating_range)  # type: ignore[arg-type]
    if n_user_blocks < 1:
        raise ValueError(f"n_user_blocks must be at least 1, not {n_user_blocks}")
    if blocksize < 1024:
        raise ValueError(f"blocksize must be at least 1 KiB, not {blocksize}")
    dest = Path(dest)
    _check_destination(dest, overwrite)
    src = resolve_source(
        source,
        format=format,
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        time_col=time_col,
        sep=sep,
        id_type=id_type,
        rating_range=rating_range,
        weight_col=weight_col,
        events=events,
    )
    items_meta = read_items(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
    (staging / _GOOD).mkdir(parents=True)
    (staging / _BAD).mkdir()
    try:
        return _ingest(
            src,
            dest,
            staging,
            items_meta,
            duplicates,
            on_bad_rows,
            n_user_blocks,
            overwrite,
            blocksize,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_destination(dest: Path, overwrite: bool) -> None:
    if not dest.exists():
        return
    if is_dataset(dest):
        if overwrite:
            return
        rows = open_dataset(dest).n_ratings
        raise FileExistsError(
            f"{dest} already holds an mfdask dataset ({rows:,} ratings): pass --overwrite "
            "to replace it, or choose another destination"
        )
    if dest.is_dir() and not any(dest.iterdir()):
        if overwrite:
            return
        raise FileExistsError(f"{dest} already exists (empty): pass --overwrite to use it")
    raise FileExistsError(
        f"{dest} exists and is not an mfdask dataset: refusing to write over it; "
        "choose another destination"
    )


# --------------------------------------------------------------------------- stage 1


def n_buckets_for(rows: int) -> int:
    """User buckets for about ``rows`` ratings: ~:data:`ROWS_PER_BUCKET` each.

    A small count is rounded up to a multiple of 4 (while buckets keep at least
    :data:`MIN_ROWS_PER_BUCKET` ratings), so that 2 or 4 workers get equal shares: ML-1M
    gets 4 buckets, 10M ratings 8.
    """
    rows = int(rows)
    n = -(-rows // ROWS_PER_BUCKET)
    if n < 16:
        n = max(n, min(-(-n // 4) * 4, rows // MIN_ROWS_PER_BUCKET))
    return int(min(MAX_BUCKETS, max(1, n)))


def bucket_of(ids: pd.Series | np.ndarray, n_buckets: int) -> np.ndarray:
    """The user bucket of each original id: a fixed hash of the id modulo ``n_buckets``.

    The hash (pandas' ``hash_array``, SipHash with a fixed key) depends only on the id's
    value, so every block of every file sends a user's ratings to the same bucket.
    """
    values = ids.to_numpy() if isinstance(ids, pd.Series) else np.asarray(ids)
    if n_buckets == 1 or len(values) == 0:
        return np.zeros(len(values), dtype=np.uint16)
    if values.dtype.kind in "iu":
        h = pd.util.hash_array(values.astype(np.int64, copy=False))
    else:
        h = pd.util.hash_array(values.astype(object, copy=False))
    # uint16 (MAX_BUCKETS fits): numpy's stable sort of 16-bit keys is a radix sort.
    return (h % np.uint64(n_buckets)).astype(np.uint16)


def _arrow_ids(values: pd.Series, order: np.ndarray | None) -> pa.Array:
    """Staged ids: integers in the narrowest of int32/int64 that holds them, or strings."""
    v = values.to_numpy()
    if v.dtype.kind in "iu":
        v = _take(v, order)
        if len(v) and np.iinfo(np.int32).min <= v.min() and v.max() <= np.iinfo(np.int32).max:
            v = v.astype(np.int32)
        return pa.array(v)
    v = v.astype(object, copy=False)
    return pa.array(_take(v, order), type=pa.string())


def _take(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    return values if order is None else values[order]


def _block_file(staging: str | Path, block: int) -> Path:
    return Path(staging) / _GOOD / f"block-{block:06d}.arrow"


def _stage(parsed: ParsedBlock, block: int, staging: str, n_buckets: int) -> dict[str, Any]:
    """Stage one block's valid rows (one IPC record batch per user bucket) and bad rows."""
    good = parsed.good
    bucket = bucket_of(good["user_id"], n_buckets)
    counts = np.bincount(bucket, minlength=n_buckets).astype(np.int64)
    if len(good):
        order = None if n_buckets == 1 else np.argsort(bucket, kind="stable")
        line = good["line"].to_numpy()
        line = line.astype(np.int32 if parsed.n_lines < 2**31 else np.int64)
        batch = pa.record_batch(
            [
                _arrow_ids(good["user_id"], order),
                _arrow_ids(good["item_id"], order),
                pa.array(_take(good["rating"].to_numpy(dtype=np.float32), order)),
                pa.array(_take(good["timestamp"].to_numpy(dtype=np.int64), order)),
                pa.array(_take(line, order)),
            ],
            names=["user_id", "item_id", "rating", "timestamp", "line"],
        )
        offsets = np.concatenate(([0], np.cumsum(counts)))
        with pa.OSFile(str(_block_file(staging, block)), "wb") as sink:
            with pa.ipc.new_file(sink, batch.schema) as writer:
                for b in range(n_buckets):
                    writer.write_batch(batch.slice(int(offsets[b]), int(counts[b])))
    bad = parsed.bad
    first_bad = None
    if len(bad):
        first_bad = (int(bad["line"].iloc[0]), str(bad["reason"].iloc[0]), str(bad["text"].iloc[0]))
        bad = bad.assign(block=np.int32(block))
        bad.to_parquet(Path(staging) / _BAD / f"part-{block:06d}.parquet", index=False)
    return {
        "block": block,
        "n_lines": parsed.n_lines,
        "n_header": parsed.n_header,
        "n_blank": parsed.n_blank,
        "n_good": len(good),
        "n_bad": len(bad),
        "first_bad": first_bad,
        "bucket_rows": counts,
        "users": _distinct(good["user_id"]),
        "items": _distinct(good["item_id"]),
    }


def _distinct(ids: pd.Series) -> np.ndarray:
    values = ids.to_numpy()
    return _sorted_unique(values if values.dtype.kind in "iu" else values.astype(object))


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)``, by hashing first and sorting only the distinct values."""
    return np.sort(pd.unique(values))


def _stage_text(
    data: bytes,
    source: RatingSource,
    first_in_file: bool,
    block: int,
    staging: str,
    n_buckets: int,
) -> dict[str, Any]:
    return _stage(parse_text_block(data, source, first_in_file), block, staging, n_buckets)


def _stage_parquet(
    path: str, row_group: int, source: RatingSource, block: int, staging: str, n_buckets: int
) -> dict[str, Any]:
    parsed = parse_parquet_row_group(Path(path), row_group, source)
    return _stage(parsed, block, staging, n_buckets)


def _counts_only(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k not in ("users", "items")}


def _union(*arrays: np.ndarray) -> np.ndarray:
    return _sorted_unique(np.concatenate(arrays))


def _tree_union(parts: list[Delayed]) -> Delayed:
    """Merge sorted distinct-id arrays by a tree of tasks (fan-in 16)."""
    while len(parts) > 1:
        parts = [
            dask.delayed(_union, pure=True)(*parts[k : k + _UNION_FAN_IN])
            for k in range(0, len(parts), _UNION_FAN_IN)
        ]
    return dask.delayed(_union, pure=True)(parts[0])


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plan_blocks(
    src: RatingSource, staging: Path, blocksize: int, n_buckets: int
) -> tuple[list[Any], list[int]]:
    """One staging task per block (a ``Delayed`` dict); also the file index of each block."""
    # Any, not Delayed: Dask adds ``Delayed.__getitem__`` at run time, unseen by mypy.
    tasks: list[Any] = []
    file_of_block: list[int] = []
    stage_dir = str(staging)
    for f_idx, path in enumerate(src.files):
        if src.is_text:
            # A file smaller than 4 blocks is cut into 4 (of at least 1 MiB) so that
            # several workers parse it.
            size = Path(path).stat().st_size
            bs = min(blocksize, max(MIN_BLOCKSIZE, -(-size // 4)))
            _, per_file = read_bytes(str(path), delimiter=b"\n", blocksize=bs, sample=False)
            for j, data in enumerate(per_file[0]):
                block = len(tasks)
                tasks.append(
                    dask.delayed(_stage_text, pure=False)(
                        data, src, j == 0, block, stage_dir, n_buckets
                    )
                )
                file_of_block.append(f_idx)
        else:
            n_groups = pq.ParquetFile(path).num_row_groups
            for rg in range(n_groups):
                block = len(tasks)
                tasks.append(
                    dask.delayed(_stage_parquet, pure=False)(
                        str(path), rg, src, block, stage_dir, n_buckets
                    )
                )
                file_of_block.append(f_idx)
    return tasks, file_of_block


# --------------------------------------------------------------------------- stage 3


_MAX_TABLE = 1 << 25
"""Largest id span (entries of int32) looked up through a table rather than a search."""


def _lookup(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Dense index of each value in the sorted distinct ids (all values are present).

    Integer ids that span a range not much wider than their number (MovieLens ids, say)
    are looked up in a table indexed by ``id - min``: one gather, where a binary search
    of a million ids costs twenty cache misses a value.
    """
    if sorted_ids.dtype.kind in "iu":
        if len(sorted_ids) and len(values):
            low = int(sorted_ids[0])
            span = int(sorted_ids[-1]) - low + 1
            if span <= min(_MAX_TABLE, max(8 * len(sorted_ids), 1 << 20)):
                table = np.full(span, -1, dtype=np.int32)
                table[sorted_ids - low] = np.arange(len(sorted_ids), dtype=np.int32)
                return table[values - low]
        return np.searchsorted(sorted_ids, values).astype(np.int32)
    return pd.Index(sorted_ids).get_indexer(values.astype(object)).astype(np.int32)


def _read_bucket(
    bucket: int, blocks: Sequence[int], n_rows: int, staging: str, id_kinds: tuple[str, str]
) -> dict[str, np.ndarray]:
    """Bucket ``bucket``'s rows of the given blocks, in block order, as numpy columns.

    Only that record batch of each block's IPC file is read. ``block`` says which block
    each row came from (for its file and absolute line).
    """
    cols: dict[str, Any] = {
        "rating": np.empty(n_rows, np.float32),
        "timestamp": np.empty(n_rows, np.int64),
        "line": np.empty(n_rows, np.int64),
        "block": np.empty(n_rows, np.int32),
    }
    for key, kind in zip(("user_id", "item_id"), id_kinds, strict=True):
        cols[key] = np.empty(n_rows, np.int64) if kind == "int" else []
    pos = 0
    for block in blocks:
        with pa.OSFile(str(_block_file(staging, block)), "rb") as f:
            batch = pa.ipc.open_file(f).get_batch(bucket)
        n = batch.num_rows
        for key in ("rating", "timestamp", "line"):
            cols[key][pos : pos + n] = batch.column(key).to_numpy()
        cols["block"][pos : pos + n] = block
        for key, kind in zip(("user_id", "item_id"), id_kinds, strict=True):
            values = batch.column(key).to_numpy(zero_copy_only=False)
            if kind == "int":
                cols[key][pos : pos + n] = values
            else:
                cols[key].append(values)
        pos += n
    if pos != n_rows:
        raise AccountingError(f"bucket {bucket}: staged {pos} rows, the blocks counted {n_rows}")
    for key, kind in zip(("user_id", "item_id"), id_kinds, strict=True):
        if kind != "int":
            parts = cols[key]
            cols[key] = np.concatenate(parts) if parts else np.empty(0, dtype=object)
    return cols


def _stage_user_map(user_ids: np.ndarray, n_buckets: int, staging: Path) -> None:
    """Write the user map for the bucket tasks: record batch ``b`` holds bucket ``b``'s
    original ids (ascending) and dense indices.

    Each task reads only its own batch, so the map is neither sent with the task graph
    nor held whole by any worker.
    """
    user_bucket = bucket_of(user_ids, n_buckets)
    order = np.argsort(user_bucket, kind="stable")  # ascending ids within each bucket
    counts = np.bincount(user_bucket, minlength=n_buckets)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    ids = user_ids[order]
    batch = pa.record_batch(
        [
            pa.array(ids) if ids.dtype.kind in "iu" else pa.array(ids, type=pa.string()),
            pa.array(order.astype(np.int32)),
        ],
        names=[schema.USER_ID, schema.USER_IDX],
    )
    with pa.OSFile(str(staging / _USER_MAP), "wb") as sink:
        with pa.ipc.new_file(sink, batch.schema) as writer:
            for b in range(n_buckets):
                writer.write_batch(batch.slice(int(offsets[b]), int(counts[b])))


def _read_bucket_users(staging: str, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    with pa.OSFile(str(Path(staging) / _USER_MAP), "rb") as f:
        batch = pa.ipc.open_file(f).get_batch(bucket)
    ids = batch.column(schema.USER_ID).to_numpy(zero_copy_only=False)
    return ids, batch.column(schema.USER_IDX).to_numpy()


def _finish_bucket(
    bucket: int,
    blocks: Sequence[int],
    n_rows: int,
    staging: str,
    out_dir: str,
    item_ids: np.ndarray,
    first_line: np.ndarray,
    file_of_block: np.ndarray,
    policy: str,
    n_user_blocks: int,
) -> dict[str, Any]:
    """Dense ids, duplicates resolved, and the bucket written into the dataset.

    Only the bucket's own users are read from the staged user map (their original ids,
    ascending, and dense indices), so a task never holds the whole user map.

    The rows arrive in input order (block, then line); a stable sort by (user, item)
    keeps a pair's ratings in input order, so "last" is the last line of the input.
    With ``policy="error"`` a duplicate is returned (the earliest repeated rating in
    input order, with the line it repeats), not raised, so that the driver can name the
    first one of the whole input; nothing of the bucket is written then.
    """
    user_ids, user_idx = _read_bucket_users(staging, bucket)
    kinds = (
        "int" if user_ids.dtype.kind in "iu" else "str",
        "int" if item_ids.dtype.kind in "iu" else "str",
    )
    c = _read_bucket(bucket, blocks, n_rows, staging, kinds)
    local = _lookup(user_ids, c.pop("user_id"))
    u = user_idx[local]
    i = _lookup(item_ids, c.pop("item_id"))
    key = u.astype(np.int64) * max(1, len(item_ids)) + i
    order = np.argsort(key, kind="stable")
    key = key[order]
    n = len(key)
    repeat = key[1:] == key[:-1]
    starts = np.flatnonzero(np.concatenate(([True], ~repeat))) if n else np.zeros(0, np.int64)
    block = c["block"]
    if len(starts) < n and policy == "error":
        later = order[np.flatnonzero(repeat) + 1]
        earlier = order[np.flatnonzero(repeat)]
        f_later = file_of_block[block[later]]
        ln_later = first_line[block[later]] + c["line"][later]
        k = int(np.lexsort((ln_later, f_later))[0])
        j = int(earlier[k])
        return {
            "bucket": bucket,
            "duplicate": {
                "file": int(f_later[k]),
                "line": int(ln_later[k]),
                "first_file": int(file_of_block[block[j]]),
                "first_line": int(first_line[block[j]] + c["line"][j]),
                "user": user_ids[local[j]].item() if kinds[0] == "int" else str(user_ids[local[j]]),
                "item": item_ids[i[j]].item() if kinds[1] == "int" else str(item_ids[i[j]]),
            },
        }
    last = (np.concatenate((starts[1:], [n])) - 1) if n else starts
    keep = order[last]
    rating_in = c["rating"]
    out_t = c["timestamp"][keep]
    if policy == "mean" and len(starts) < n:
        sizes = last - starts + 1
        rating = np.add.reduceat(rating_in[order].astype(np.float64), starts) / sizes
        rating = rating.astype(np.float32)
    elif policy in ("sum", "count"):
        # Events folded: the total weight (or the number of events) of each pair, and
        # the latest of its timestamps.
        if policy == "count":
            rating = (last - starts + 1).astype(np.float32)
        else:
            rating = (
                np.add.reduceat(rating_in[order].astype(np.float64), starts) if n else (np.zeros(0))
            )
            rating = rating.astype(np.float32)
        if n:
            out_t = np.maximum.reduceat(c["timestamp"][order], starts)
    else:
        rating = rating_in[keep]
    out_u, out_i = u[keep], i[keep]
    del c, order, key, u, i, local

    written = 0
    out = Path(out_dir)
    user_block = out_u % n_user_blocks
    if n_user_blocks <= 2**16:
        user_block = user_block.astype(np.uint16)  # a radix sort below
    by_block = np.argsort(user_block, kind="stable") if n_user_blocks > 1 else None
    counts = np.bincount(user_block, minlength=n_user_blocks)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for k in np.flatnonzero(counts).tolist():
        sel = (
            slice(offsets[k], offsets[k + 1])
            if by_block is None
            else by_block[offsets[k] : offsets[k + 1]]
        )
        table = pa.Table.from_arrays(
            [
                pa.array(out_u[sel]),
                pa.array(out_i[sel]),
                pa.array(rating[sel]),
                pa.array(out_t[sel]),
            ],
            schema=schema.RATINGS_ARROW_SCHEMA,
        )
        path = out / f"{schema.USER_BLOCK}={k}" / f"part-{bucket:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Dictionary pages pay off for the few rating values; for sorted ids, distinct
        # items and timestamps they cost twice the write time for a few percent of size.
        pq.write_table(table, path, use_dictionary=[schema.RATING])
        written += pq.read_metadata(path).num_rows
    hist = pd.Series(rating).value_counts(sort=False)
    rated_items = np.bincount(out_i, minlength=len(item_ids))
    return {
        "bucket": bucket,
        "rows_read": n,
        "rows_written": written,
        "merged": n - len(starts),
        "hist_values": hist.index.to_numpy(dtype=np.float64),
        "hist_counts": hist.to_numpy(dtype=np.int64),
        "users": int(np.count_nonzero(np.diff(out_u)) + 1) if len(out_u) else 0,
        "items": np.flatnonzero(rated_items).astype(np.int32),
    }


# --------------------------------------------------------------------------- driver


def _ingest(
    src: RatingSource,
    dest: Path,
    staging: Path,
    items_meta: pd.DataFrame | None,
    duplicates: str,
    on_bad_rows: str,
    n_user_blocks: int,
    overwrite: bool,
    blocksize: int,
) -> Dataset:
    n_buckets = n_buckets_for(estimate_rows(src))
    tasks, file_of_block = _plan_blocks(src, staging, blocksize, n_buckets)
    counts = [dask.delayed(_counts_only, pure=True)(t) for t in tasks]
    users = _tree_union([t["users"] for t in tasks])
    items = _tree_union([t["items"] for t in tasks])
    checked = list(src.files) + ([src.items_file] if src.items_file else [])
    sums = [dask.delayed(sha256_file, pure=True)(str(p)) for p in checked]
    started = time.perf_counter()
    counts, user_ids, item_ids, sums = dask.compute(counts, users, items, sums)
    log.info(
        "ingest: parsed %d block(s) into %d user bucket(s) in %.1f s",
        len(tasks),
        n_buckets,
        time.perf_counter() - started,
    )

    # Absolute first line of each block: 1 + the lines of the file's earlier blocks.
    n_lines = np.array([c["n_lines"] for c in counts], dtype=np.int64)
    fob = np.asarray(file_of_block, dtype=np.int64)
    first_line = np.ones(len(counts), dtype=np.int64)
    for f_idx in range(len(src.files)):
        sel = np.flatnonzero(fob == f_idx)
        first_line[sel] = 1 + np.concatenate(([0], np.cumsum(n_lines[sel])[:-1]))
    n_bad = sum(c["n_bad"] for c in counts)
    n_good = sum(c["n_good"] for c in counts)
    rows_in = n_good + n_bad
    n_header = sum(c["n_header"] for c in counts)
    n_blank = sum(c["n_blank"] for c in counts)
    files = [str(p) for p in src.files]

    if n_bad and on_bad_rows == "error":
        c = next(c for c in counts if c["n_bad"])
        line, reason, text = c["first_bad"]
        more = f" ({n_bad - 1:,} more bad rows after it)" if n_bad > 1 else ""
        raise BadRowsError(
            f"{reason}: {quote_line(text)}{more}. Fix the input, or pass --on-bad-rows skip "
            "to write bad rows to a quarantine file and go on",
            files[file_of_block[c["block"]]],
            int(first_line[c["block"]] + line),
        )
    if rows_in == 0:
        raise IngestError(
            "holds no ratings (only a header or blank lines)",
            files[0] if len(files) == 1 else Path(os.path.commonpath(files)),
        )
    if n_good == 0:
        c = next(c for c in counts if c["n_bad"])
        line, reason, text = c["first_bad"]
        raise BadRowsError(
            f"all {n_bad:,} rows are bad, e.g. {reason}: {quote_line(text)}; "
            "check --format, --sep and the column mapping",
            files[file_of_block[c["block"]]],
            int(first_line[c["block"]] + line),
        )

    users_map = pd.DataFrame(
        {schema.USER_ID: user_ids, schema.USER_IDX: np.arange(len(user_ids), dtype=np.int32)}
    )
    items_map = pd.DataFrame(
        {schema.ITEM_ID: item_ids, schema.ITEM_IDX: np.arange(len(item_ids), dtype=np.int32)}
    )
    for frame, key in ((users_map, schema.USER_ID), (items_map, schema.ITEM_ID)):
        if frame[key].dtype == object:
            frame[key] = frame[key].astype("str")
    if items_meta is not None:
        items_map = items_map.merge(items_meta, on=schema.ITEM_ID, how="left", validate="1:1")

    bucket_rows = np.stack([c["bucket_rows"] for c in counts])  # (blocks, buckets)
    outcome: dict[str, int] = {}

    def write_ratings(ratings_dir: Path) -> dict[str, Any]:
        """Round 3: one task per non-empty user bucket writes its rows into the dataset."""
        iid = dask.delayed(item_ids, pure=True)
        _stage_user_map(user_ids, n_buckets, staging)
        work = []
        for b in np.flatnonzero(bucket_rows.sum(axis=0)):
            blocks = [int(k) for k in np.flatnonzero(bucket_rows[:, b])]
            work.append(
                dask.delayed(_finish_bucket, pure=False)(
                    int(b),
                    blocks,
                    int(bucket_rows[:, b].sum()),
                    str(staging),
                    str(ratings_dir),
                    iid,
                    first_line,
                    fob,
                    duplicates,
                    n_user_blocks,
                )
            )
        started = time.perf_counter()
        stats = dask.compute(*work)
        log.info("ingest: wrote %d bucket(s) in %.1f s", len(work), time.perf_counter() - started)
        dups = [s["duplicate"] for s in stats if "duplicate" in s]
        if dups:
            d = min(dups, key=lambda d: (d["file"], d["line"]))
            where = f"line {d['first_line']}" + (
                "" if d["first_file"] == d["file"] else f" of {files[d['first_file']]}"
            )
            hint = (
                "pass --duplicates sum (total weight) or --duplicates count to fold repeated events"
                if src.feedback == "events"
                else "pass --duplicates last (keep the last rating) or --duplicates mean "
                "to merge duplicates"
            )
            raise DuplicateRatingError(
                f"duplicate rating: user {d['user']} already rated item {d['item']} at "
                f"{where}; {hint}",
                files[d["file"]],
                d["line"],
            )
        staged = sum(s["rows_read"] for s in stats)
        if staged != n_good:
            raise AccountingError(f"{n_good} valid rows were parsed but {staged} were staged")
        outcome["rows_written"] = sum(s["rows_written"] for s in stats)
        outcome["merged"] = sum(s["merged"] for s in stats)
        users_rated = sum(s["users"] for s in stats)
        items_rated = len(_union(*[s["items"] for s in stats]))
        if (users_rated, items_rated) != (len(user_ids), len(item_ids)):
            raise AccountingError(
                f"{users_rated} users and {items_rated} items have ratings written, but the "
                f"id maps hold {len(user_ids)} users and {len(item_ids)} items"
            )
        return ratings_summary(
            np.concatenate([s["hist_values"] for s in stats]),
            np.concatenate([s["hist_counts"] for s in stats]),
            users_rated,
            items_rated,
        )

    manifest_extra = {
        "format": src.format,
        "feedback": src.feedback,
        "source": {
            "path": os.path.commonpath(files),
            "files": [
                {"path": str(p), "bytes": Path(p).stat().st_size, "sha256": s}
                for p, s in zip(checked, sums, strict=True)
            ],
        },
        "ingest": {
            "duplicates": duplicates,
            "on_bad_rows": on_bad_rows,
            "declared_rating_range": list(src.rating_range) if src.rating_range else None,
            "id_types": {"user": src.id_types[0], "item": src.id_types[1]},
            "columns": _column_names(src),
            "header_lines": n_header,
            "blank_lines": n_blank,
            "user_buckets": n_buckets,
        },
        "rows_in": rows_in,
    }

    def before_commit(tmp: Path, manifest: dict[str, Any]) -> None:
        quarantined = _write_quarantine(
            staging / _BAD, tmp / schema.QUARANTINE_FILE, files, file_of_block, first_line
        )
        acc = Accounting(
            rows_in=rows_in,
            rows_out=outcome["rows_written"],
            quarantined=quarantined,
            duplicates_merged=outcome["merged"],
        )
        if acc.rows_out != int(manifest["rows"]):
            raise AccountingError(
                f"{acc.rows_out} rows written but the histogram counts {manifest['rows']}"
            )
        check_accounting(acc)
        manifest["duplicates_merged"] = outcome["merged"]
        manifest.update(acc.as_dict())

    ds = write_dataset_from(
        write_ratings,
        users_map,
        items_map,
        dest,
        n_user_blocks=n_user_blocks,
        manifest_extra=manifest_extra,
        overwrite=overwrite,
        before_commit=before_commit,
    )
    m = ds.manifest
    if m["rows_quarantined"]:
        log.warning(
            "%s: %d bad row(s) quarantined in %s",
            dest,
            m["rows_quarantined"],
            dest / schema.QUARANTINE_FILE,
        )
    return ds


def _column_names(src: RatingSource) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for k, role in enumerate(ROLES):
        try:
            out[role] = src.role_name(k)
        except (ValueError, KeyError):
            out[role] = None
    return out


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("text", pa.string()),
    ]
)
"""``quarantine.parquet``: the bad rows, each with its file, 1-based line and reason."""


def _write_quarantine(
    bad_dir: Path,
    out: Path,
    files: Sequence[str],
    file_of_block: Sequence[int],
    first_line: np.ndarray,
) -> int:
    """Stream the staged bad rows, one block at a time, into one Parquet file."""
    parts = sorted(bad_dir.glob("part-*.parquet"))
    if not parts:
        return 0
    written = 0
    with pq.ParquetWriter(out, QUARANTINE_SCHEMA) as writer:
        for part in parts:
            bad = pd.read_parquet(part)
            block = int(bad["block"].iloc[0])
            frame = pd.DataFrame(
                {
                    "file": files[file_of_block[block]],
                    "line": first_line[block] + bad["line"].to_numpy(dtype=np.int64),
                    "reason": bad["reason"].astype(str),
                    "text": bad["text"].astype(str),
                }
            )
            writer.write_table(
                pa.Table.from_pandas(frame, schema=QUARANTINE_SCHEMA, preserve_index=False)
            )
            written += len(frame)
    return written
