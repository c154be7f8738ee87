"""Ingest raw ratings into a canonical mfdask dataset (:mod:`mfdask.data.schema`).

The work is done by Dask, block by block, and the client never holds the ratings:

1. **Parse.** One task per line-aligned block of text (or Parquet row group) parses and
   validates its lines (:mod:`mfdask.data.readers`), writes the valid ratings, still with
   their original ids, and the bad rows to a staging directory beside the destination,
   and returns only counts, the first bad row, and the block's distinct ids.
2. **Ids.** The distinct ids are merged by a tree of small tasks and come to the client
   (users plus items: small next to the ratings). Dense indices follow the ascending
   order of the original ids, so the same input always gives the same id maps. Each
   block's line count gives the absolute line number at which it starts, so bad rows
   and duplicates are named by their line in the file.
3. **Bad rows.** With ``on_bad_rows="error"`` the first bad row (in file order) stops the
   ingest with its file, line and problem, before anything is written. With ``"skip"``
   bad rows go, with their line and reason, to ``quarantine.parquet`` in the dataset.
4. **Duplicates.** Ratings are mapped to dense ids and shuffled by user (Dask's
   disk-backed shuffle), so every (user, item) pair meets its duplicates in one
   partition; each partition then applies the policy (error / keep last / mean).
5. **Write.** :func:`mfdask.data.dataset.write_dataset` writes the dataset atomically;
   before it is renamed into place the rows are accounted for: rows read = rows written
   + rows quarantined + duplicates merged, each counted from what was actually written,
   or nothing is written at all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
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
    write_dataset,
)
from mfdask.data.readers import (
    DEFAULT_BLOCKSIZE,
    ROLES,
    ParsedBlock,
    RatingSource,
    parse_parquet_row_group,
    parse_text_block,
    read_items,
    resolve_source,
)
from mfdask.data.validate import (
    Accounting,
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
_MERGED = "merged"
_UNION_FAN_IN = 16


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
    duplicates: str = "error",
    on_bad_rows: str = "error",
    n_user_blocks: int = DEFAULT_USER_BLOCKS,
    overwrite: bool = False,
    blocksize: int = DEFAULT_BLOCKSIZE,
) -> Dataset:
    """Read ratings from ``source`` and write the canonical dataset ``dest``.

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
    duplicates : {"error", "last", "mean"}
        Several ratings of one (user, item) pair: stop, keep the last one (file and line
        order), or keep their mean rating with the last timestamp.
    on_bad_rows : {"error", "skip"}
        Stop at the first bad row (naming file, line and problem; nothing is written),
        or write bad rows with their line and reason to ``quarantine.parquet`` in the
        dataset and go on.
    n_user_blocks : int
        Hive partitions of the ratings (``user_block = user_idx % n_user_blocks``).
    blocksize : int
        Bytes of text per parsing task.

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
    validate_policy(on_bad_rows, duplicates)
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


def _stage(parsed: ParsedBlock, block: int, staging: str) -> dict[str, Any]:
    """Write one block's valid and bad rows to the staging directory; return its counts."""
    good = parsed.good
    good["block"] = np.int32(block)
    good.to_parquet(Path(staging) / _GOOD / f"part-{block:06d}.parquet", index=False)
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
        "users": _distinct(good["user_id"]),
        "items": _distinct(good["item_id"]),
    }


def _distinct(ids: pd.Series) -> np.ndarray:
    values = ids.to_numpy()
    if values.dtype.kind in "iu":
        return np.unique(values)
    return np.unique(values.astype(object))


def _stage_text(
    data: bytes, source: RatingSource, first_in_file: bool, block: int, staging: str
) -> dict[str, Any]:
    return _stage(parse_text_block(data, source, first_in_file), block, staging)


def _stage_parquet(
    path: str, row_group: int, source: RatingSource, block: int, staging: str
) -> dict[str, Any]:
    return _stage(parse_parquet_row_group(Path(path), row_group, source), block, staging)


def _counts_only(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k not in ("users", "items")}


def _union(*arrays: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate(arrays))


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
    src: RatingSource, staging: Path, blocksize: int
) -> tuple[list[Delayed], list[int]]:
    """One staging task per block; also the file index of each block."""
    tasks: list[Delayed] = []
    file_of_block: list[int] = []
    stage_dir = str(staging)
    for f_idx, path in enumerate(src.files):
        if src.is_text:
            _, per_file = read_bytes(str(path), delimiter=b"\n", blocksize=blocksize, sample=False)
            for j, data in enumerate(per_file[0]):
                block = len(tasks)
                tasks.append(
                    dask.delayed(_stage_text, pure=False)(data, src, j == 0, block, stage_dir)
                )
                file_of_block.append(f_idx)
        else:
            n_groups = pq.ParquetFile(path).num_row_groups
            for rg in range(n_groups):
                block = len(tasks)
                tasks.append(
                    dask.delayed(_stage_parquet, pure=False)(str(path), rg, src, block, stage_dir)
                )
                file_of_block.append(f_idx)
    return tasks, file_of_block


# --------------------------------------------------------------------------- stage 2


def _lookup(sorted_ids: np.ndarray, values: pd.Series) -> np.ndarray:
    """Dense index of each value in the sorted distinct ids (all values are present)."""
    v = values.to_numpy()
    if sorted_ids.dtype.kind in "iu":
        return np.searchsorted(sorted_ids, v).astype(np.int32)
    return pd.Index(sorted_ids).get_indexer(v.astype(object)).astype(np.int32)


_INDEXED_META = pd.DataFrame(
    {
        schema.USER_IDX: pd.Series([], dtype="int32"),
        schema.ITEM_IDX: pd.Series([], dtype="int32"),
        schema.RATING: pd.Series([], dtype="float32"),
        schema.TIMESTAMP: pd.Series([], dtype="int64"),
        "file": pd.Series([], dtype="int32"),
        "line": pd.Series([], dtype="int64"),
    }
)


def _index_partition(
    part: pd.DataFrame,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    first_line: np.ndarray,
    file_of_block: np.ndarray,
) -> pd.DataFrame:
    """Original ids -> dense indices; block-relative -> absolute line numbers."""
    block = part["block"].to_numpy()
    return pd.DataFrame(
        {
            schema.USER_IDX: _lookup(user_ids, part["user_id"]),
            schema.ITEM_IDX: _lookup(item_ids, part["item_id"]),
            schema.RATING: part["rating"].to_numpy(dtype=np.float32),
            schema.TIMESTAMP: part["timestamp"].to_numpy(dtype=np.int64),
            "file": file_of_block[block].astype(np.int32),
            "line": first_line[block] + part["line"].to_numpy(dtype=np.int64),
        }
    )


_RESOLVED_META = pd.DataFrame(
    {
        **{c: pd.Series([], dtype=t) for c, t in schema.RATING_DTYPES.items()},
        _MERGED: pd.Series([], dtype="int32"),
    }
)


def _resolve_duplicates(
    part: pd.DataFrame,
    policy: str,
    files: Sequence[str],
    user_ids: np.ndarray,
    item_ids: np.ndarray,
) -> pd.DataFrame:
    """Apply the duplicate policy to a partition that holds all ratings of its users.

    Rows are sorted by (user, item, file, line), so a pair's ratings are adjacent and in
    input order; ``merged`` counts the ratings folded into each output row.
    """
    u = part[schema.USER_IDX].to_numpy()
    i = part[schema.ITEM_IDX].to_numpy()
    f = part["file"].to_numpy()
    ln = part["line"].to_numpy()
    order = np.lexsort((ln, f, i, u))
    u, i, f, ln = u[order], i[order], f[order], ln[order]
    r = part[schema.RATING].to_numpy()[order]
    t = part[schema.TIMESTAMP].to_numpy()[order]
    n = len(u)
    repeat = (u[1:] == u[:-1]) & (i[1:] == i[:-1])
    starts = np.flatnonzero(np.concatenate(([True], ~repeat))) if n else np.zeros(0, np.int64)
    if len(starts) < n and policy == "error":
        later = int(np.flatnonzero(repeat)[0]) + 1
        first = later - 1
        where = f"line {ln[first]}" + ("" if f[first] == f[later] else f" of {files[f[first]]}")
        raise DuplicateRatingError(
            f"duplicate rating: user {user_ids[u[later]]} already rated item "
            f"{item_ids[i[later]]} at {where}; pass --duplicates last (keep the last rating) "
            "or --duplicates mean to merge duplicates",
            files[f[later]],
            ln[later],
        )
    last = np.concatenate((starts[1:], [n])) - 1 if n else starts
    sizes = last - starts + 1
    if policy == "mean" and len(starts) < n:
        rating = (np.add.reduceat(r.astype(np.float64), starts) / sizes).astype(np.float32)
    else:
        rating = r[last]
    return pd.DataFrame(
        {
            schema.USER_IDX: u[last],
            schema.ITEM_IDX: i[last],
            schema.RATING: rating,
            schema.TIMESTAMP: t[last],
            _MERGED: (sizes - 1).astype(np.int32),
        }
    )


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
    tasks, file_of_block = _plan_blocks(src, staging, blocksize)
    counts = [dask.delayed(_counts_only, pure=True)(t) for t in tasks]
    users = _tree_union([t["users"] for t in tasks])
    items = _tree_union([t["items"] for t in tasks])
    checked = list(src.files) + ([src.items_file] if src.items_file else [])
    sums = [dask.delayed(sha256_file, pure=True)(str(p)) for p in checked]
    counts, user_ids, item_ids, sums = dask.compute(counts, users, items, sums)

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

    # Dense ids, duplicates resolved per user, staged once more to count what merged.
    good = dd.read_parquet(str(staging / _GOOD), engine="pyarrow", split_row_groups=False)
    uid = dask.delayed(user_ids, pure=True)
    iid = dask.delayed(item_ids, pure=True)
    indexed = good.map_partitions(
        _index_partition, uid, iid, first_line, fob, meta=_INDEXED_META, align_dataframes=False
    )
    n_parts = max(1, good.npartitions)
    shuffled = indexed.shuffle(on=schema.USER_IDX, npartitions=n_parts) if n_parts > 1 else indexed
    resolved = shuffled.map_partitions(
        _resolve_duplicates,
        duplicates,
        files,
        uid,
        iid,
        meta=_RESOLVED_META,
        align_dataframes=False,
    )
    resolved_dir = staging / "resolved"
    resolved.to_parquet(str(resolved_dir), write_index=False, write_metadata_file=False)
    merged = int(dd.read_parquet(str(resolved_dir), columns=[_MERGED])[_MERGED].sum().compute())
    ratings = dd.read_parquet(
        str(resolved_dir), columns=list(schema.RATING_DTYPES), split_row_groups=False
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

    manifest_extra = {
        "format": src.format,
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
        },
        "rows_in": rows_in,
        "duplicates_merged": merged,
    }

    def before_commit(tmp: Path, manifest: dict[str, Any]) -> None:
        quarantined = _write_quarantine(
            staging / _BAD, tmp / schema.QUARANTINE_FILE, files, file_of_block, first_line
        )
        acc = Accounting(
            rows_in=rows_in,
            rows_out=int(manifest["rows"]),
            quarantined=quarantined,
            duplicates_merged=merged,
        )
        check_accounting(acc)
        manifest.update(acc.as_dict())

    ds = write_dataset(
        ratings,
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
