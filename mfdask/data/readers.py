"""Readers of rating files: MovieLens in all its layouts, and any CSV/TSV/Parquet.

Supported sources (``format``; detected from the files when not given):

======================  ==============================================================
``ml-100k``             ``u.data`` (tab: user, item, rating, timestamp) and ``u.item``
                        (``|``, latin-1: id, title, dates, URL, 19 genre flags)
``ml-dat``              ``ratings.dat`` / ``movies.dat`` separated by ``::``: ML-1M and
                        ML-10M (aliases ``ml-1m``, ``ml-10m``)
``ml-csv``              ``ratings.csv`` / ``movies.csv`` with a header: ML-20M, ML-25M,
                        ML-latest(-small) (aliases ``ml-20m``, ``ml-25m``, ``ml-latest``,
                        ``ml-latest-small``)
``csv`` / ``tsv``       any delimited file (or a directory of them) with a column mapping:
                        names when the file has a header, 0-based positions when not
``parquet``             any Parquet file (or a directory of them) with a column mapping
======================  ==============================================================

Text is read in line-aligned byte blocks (one Dask task each) and parsed by the numba
kernel :func:`mfdask.kernels.parse.parse_block`, which splits on multi-byte separators
such as ``::`` as fast as on ``,`` and reports, for every line, whether and why it is
bad. Row ``k`` of a block is line ``k`` of the block, so a block's bad rows carry their
line number relative to the block; the block's line count (returned with it) gives the
absolute numbers once all blocks are counted, without a second pass over the file.
Parquet is read a row group at a time; its "line" is the 1-based row number in the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mfdask.data import schema
from mfdask.data.validate import (
    DelimiterError,
    IngestError,
    describe_sep,
    guess_separator,
    quote_line,
)
from mfdask.kernels import parse as kparse

FORMATS = ("ml-100k", "ml-dat", "ml-csv", "csv", "tsv", "parquet")
FORMAT_ALIASES = {
    "ml-1m": "ml-dat",
    "ml-10m": "ml-dat",
    "ml-20m": "ml-csv",
    "ml-25m": "ml-csv",
    "ml-latest": "ml-csv",
    "ml-latest-small": "ml-csv",
}
MOVIELENS_FORMATS = ("ml-100k", "ml-dat", "ml-csv")

ML_100K_GENRES = (
    "unknown|Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|Fantasy|"
    "Film-Noir|Horror|Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western"
).split("|")
"""The 19 genre flags of ``u.item``, in order (as listed in ``u.genre``)."""

ROLES = ("user", "item", "rating", "time")
"""Column roles, in the order of the kernel's ``ROLE_*`` codes."""

DEFAULT_BLOCKSIZE = 32 * 2**20
"""Bytes of text per parsing task: ~1.3M MovieLens lines, ~60 MB of parsed arrays."""

_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class RatingSource:
    """Where the ratings are and how to read them (see :func:`resolve_source`).

    Attributes
    ----------
    format : str
        One of :data:`FORMATS`.
    files : tuple of Path
        The ratings files, read in this order ("last" duplicate = last in this order).
    sep : str or None
        Field separator of text files (None for Parquet).
    header : bool
        Whether each text file starts with a header line.
    field_names : tuple of str
        A name per field of a text line (header names or ``column 0`` ...), for messages.
    roles : tuple of int
        ``ROLE_*`` of each text field (see :mod:`mfdask.kernels.parse`).
    columns : dict
        Role (``user``, ``item``, ``rating``, ``time``) -> Parquet column name.
    id_types : tuple of str
        ``"int"`` or ``"str"`` for the user and the item ids.
    rating_range : tuple of float or None
        Ratings outside ``[low, high]`` are bad rows; None checks only finiteness.
    items_file : Path or None
        Item titles and genres (MovieLens ``u.item``, ``movies.dat``, ``movies.csv``).
    encoding : str
        Text encoding, for quoting bad lines and reading string ids.
    """

    format: str
    files: tuple[Path, ...]
    sep: str | None = None
    header: bool = False
    field_names: tuple[str, ...] = ()
    roles: tuple[int, ...] = ()
    columns: dict[str, str] = field(default_factory=dict)
    id_types: tuple[str, str] = ("int", "int")
    rating_range: tuple[float, float] | None = None
    items_file: Path | None = None
    encoding: str = "utf-8"
    feedback: str = "ratings"
    has_value: bool = True
    """False for an event list without a weight column: every row is weight 1."""

    @property
    def is_text(self) -> bool:
        return self.format != "parquet"

    @property
    def text_sep(self) -> str:
        """``sep`` of a delimited-text source; a Parquet source has none."""
        if self.sep is None:
            raise ValueError(f"a {self.format} source has no field separator")
        return self.sep

    @property
    def has_time(self) -> bool:
        if self.is_text:
            return kparse.ROLE_TIME in self.roles
        return "time" in self.columns

    def role_name(self, role: int) -> str:
        """The input's own name for the column with ``role`` (for messages)."""
        if self.is_text:
            return self.field_names[self.roles.index(role)]
        return self.columns[ROLES[role]]


# --------------------------------------------------------------------------- detection


def canonical_format(name: str) -> str:
    """``ml-1m`` -> ``ml-dat`` etc.; raise ``ValueError`` for an unknown format."""
    fmt = FORMAT_ALIASES.get(name, name)
    if fmt not in FORMATS:
        known = ", ".join(list(FORMATS) + list(FORMAT_ALIASES))
        raise ValueError(f"unknown format {name!r}: use one of {known}")
    return fmt


def detect_format(src: Path) -> str:
    """Guess the format of a file or directory from the names of the files in it."""
    if src.is_dir():
        for name, fmt in (
            ("u.data", "ml-100k"),
            ("ratings.dat", "ml-dat"),
            ("ratings.csv", "ml-csv"),
        ):
            if (src / name).is_file():
                return fmt
        for ext, fmt in ((".parquet", "parquet"), (".csv", "csv"), (".tsv", "tsv")):
            if any(src.glob(f"*{ext}")):
                return fmt
        raise IngestError(
            "no ratings file found: expected u.data (ML-100K), ratings.dat (ML-1M/10M), "
            "ratings.csv (ML-20M/25M/latest) or *.csv/*.tsv/*.parquet files; "
            "pass --format and a file",
            src,
        )
    name = src.name
    if name == "u.data":
        return "ml-100k"
    if name == "ratings.dat":
        return "ml-dat"
    suffix = src.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        if name == "ratings.csv" and _first_line(src).replace('"', "").startswith("userId,movieId"):
            return "ml-csv"
        return "csv"
    raise IngestError(
        "cannot tell the format from the file name: pass --format "
        "(ml-100k, ml-1m, ml-25m, csv, tsv or parquet)",
        src,
    )


def _first_line(path: Path, encoding: str = "utf-8") -> str:
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode(encoding, errors="replace")


def _head_lines(path: Path, encoding: str, n: int = 200) -> list[str]:
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    lines = head.split(b"\n")
    if len(head) == _SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut
    return [ln.rstrip(b"\r").decode(encoding, errors="replace") for ln in lines[:n]]


def _list_files(src: Path, exts: Sequence[str]) -> tuple[Path, ...]:
    if src.is_file():
        return (src,)
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise IngestError(f"no {'/'.join(exts)} files in this directory", src)
    return tuple(files)


def _check_nonempty(files: Sequence[Path]) -> None:
    for path in files:
        if not path.is_file():
            raise IngestError("file not found", path)
        if path.stat().st_size == 0:
            raise IngestError("the file is empty: there are no ratings to ingest", path)


def resolve_source(
    src: str | os.PathLike[str],
    *,
    format: str | None = None,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str | None = None,
    id_type: str = "auto",
    rating_range: tuple[float, float] | str | None = "auto",
    weight_col: str | int | None = None,
    events: bool = False,
) -> RatingSource:
    """Work out the format, files, columns and id types of ``src``.

    Reads at most the first 64 KiB of each file (to check headers and separators); the
    ratings themselves are read by the Dask tasks of :mod:`mfdask.data.ingest`.

    Parameters
    ----------
    src : path
        A MovieLens directory, a ratings file, or a directory of CSV/TSV/Parquet files.
    format : str, optional
        One of :data:`FORMATS` or :data:`FORMAT_ALIASES`; detected when None.
    user_col, item_col, rating_col, time_col : str or int, optional
        Generic formats only: column names (files with a header) or 0-based positions
        (files without one). Defaults ``user_id``, ``item_id``, ``rating``, and
        ``timestamp`` if present (no time column -> timestamp 0).
    sep : str, optional
        Separator of generic text files (default ``,`` for csv, tab for tsv).
    id_type : {"auto", "int", "str"}
        Generic formats: read ids as integers or as strings; ``auto`` reads them as
        integers when the first lines of the file hold only integer ids.
    rating_range : (low, high), None or "auto"
        ``auto``: MovieLens ``[1, 5]`` (ML-100K) or ``[0.5, 5]`` (half stars), no range
        for generic input.
    weight_col : str or int, optional
        An event log (generic formats): the column of each event's weight (a count or
        a strength, finite and ``>= 0``; a negative weight is a bad row).
    events : bool
        An event log without a weight column (``weight_col`` implies it): every row is
        one event of weight 1.

    Raises
    ------
    IngestError
        A missing or empty file, a header without the mapped columns, a file that does
        not split on the separator.
    """
    src = Path(src)
    if not src.exists():
        raise IngestError(
            "does not exist: give a MovieLens directory (e.g. ml-1m/ with ratings.dat), a "
            "ratings file, or a directory of CSV/Parquet files; `mfdask fetch ml-1m` "
            "downloads MovieLens",
            src,
        )
    fmt = canonical_format(format) if format else detect_format(src)
    events = events or weight_col is not None
    if events:
        _check_event_columns(fmt, rating_col, weight_col)
        rating_col = weight_col
        if rating_range not in ("auto", None):
            raise ValueError("an event log has no rating range: its weights need only be >= 0")
        rating_range = None
    if fmt in MOVIELENS_FORMATS:
        mapped = [c for c in (user_col, item_col, rating_col, time_col) if c is not None]
        if mapped or sep is not None:
            raise ValueError(
                f"format {fmt} has fixed columns: --user-col/--item-col/--rating-col/--time-col "
                "and --sep apply only to csv, tsv and parquet"
            )
        source = _movielens_source(src, fmt)
    elif fmt == "parquet":
        source = _parquet_source(src, user_col, item_col, rating_col, time_col, id_type, events)
    else:
        source = _generic_text_source(
            src, fmt, user_col, item_col, rating_col, time_col, sep, id_type, events
        )
    if events:
        source = _replace(source, feedback="events", has_value=rating_col is not None)
    if isinstance(rating_range, str):
        if rating_range != "auto":
            raise ValueError(
                f"rating_range must be (low, high), None or 'auto', not {rating_range!r}"
            )
        rating_range = {"ml-100k": (1.0, 5.0), "ml-dat": (0.5, 5.0), "ml-csv": (0.5, 5.0)}.get(fmt)
    elif rating_range is not None:
        rating_range = (float(rating_range[0]), float(rating_range[1]))
    return _replace(source, rating_range=rating_range)


def _check_event_columns(fmt: str, rating_col: str | int | None, weight_col: Any) -> None:
    """Refuse an event log whose columns say it holds ratings."""
    if fmt in MOVIELENS_FORMATS:
        raise ValueError(
            f"format {fmt} holds ratings, not an event log: ingest it without --weight-col "
            "and --events"
        )
    if rating_col is not None:
        raise ValueError(
            "an event log has a weight, not a rating: give --weight-col (events) or "
            "--rating-col (ratings), not both"
        )
    if isinstance(weight_col, str) and weight_col.strip().lower() == "rating":
        raise ValueError(
            f"--weight-col {weight_col!r} names a rating column: ratings are not event "
            "weights (a 1-star rating is not a weak positive); ingest the file as ratings "
            f"with --rating-col {weight_col} (positives are ratings >= --positive-threshold)"
        )


def _check_not_ratings(names: Sequence[str], weight_col: Any, where: Path) -> None:
    """An event list without a weight whose header has a ``rating`` column holds ratings."""
    if weight_col is None and "rating" in [n.lower() for n in names]:
        raise IngestError(
            f"the header {list(names)} has a rating column, so this is ratings, not an event "
            "list: drop --events to ingest the ratings (--rating-col), or give the column "
            "of the event weights with --weight-col",
            where,
            1,
        )


def _replace(source: RatingSource, **changes: Any) -> RatingSource:
    from dataclasses import replace

    return replace(source, **changes)


def _movielens_source(src: Path, fmt: str) -> RatingSource:
    base = src if src.is_dir() else src.parent
    roles = (kparse.ROLE_USER, kparse.ROLE_ITEM, kparse.ROLE_RATING, kparse.ROLE_TIME)
    if fmt == "ml-100k":
        ratings = src if src.is_file() else base / "u.data"
        items = base / "u.item"
        source = RatingSource(
            format=fmt,
            files=(ratings,),
            sep="\t",
            field_names=("user id", "item id", "rating", "timestamp"),
            roles=roles,
            items_file=items if items.is_file() else None,
            encoding="latin-1",
        )
    elif fmt == "ml-dat":
        ratings = src if src.is_file() else base / "ratings.dat"
        items = base / "movies.dat"
        source = RatingSource(
            format=fmt,
            files=(ratings,),
            sep="::",
            field_names=("UserID", "MovieID", "Rating", "Timestamp"),
            roles=roles,
            items_file=items if items.is_file() else None,
            encoding="latin-1",
        )
    else:
        ratings = src if src.is_file() else base / "ratings.csv"
        items = base / "movies.csv"
        source = RatingSource(
            format=fmt,
            files=(ratings,),
            sep=",",
            header=True,
            field_names=("userId", "movieId", "rating", "timestamp"),
            roles=roles,
            items_file=items if items.is_file() else None,
        )
    _check_nonempty(source.files)
    _check_text_layout(source)
    return source


def _generic_text_source(
    src: Path,
    fmt: str,
    user_col: str | int | None,
    item_col: str | int | None,
    rating_col: str | int | None,
    time_col: str | int | None,
    sep: str | None,
    id_type: str,
    events: bool = False,
) -> RatingSource:
    files = _list_files(src, (".csv", ".tsv", ".tab", ".txt", ".dat"))
    _check_nonempty(files)
    sep = sep if sep is not None else ("\t" if fmt == "tsv" else ",")
    if sep == "" or "\n" in sep or "\r" in sep or '"' in sep:
        raise ValueError(f"separator {sep!r} cannot split lines into fields")
    given = {"user": user_col, "item": item_col, "rating": rating_col, "time": time_col}
    positional = [v for v in given.values() if v is not None and _is_position(v)]
    named = [v for v in given.values() if v is not None and not _is_position(v)]
    if positional and named:
        raise ValueError(
            "give the columns either all by name (files with a header) or all by 0-based "
            f"position (files without one), not a mix: {given}"
        )
    first = files[0]
    if positional:
        # No header: fields by position; the first line gives the field count.
        header = False
        line1 = next((ln for ln in _head_lines(first, "utf-8") if ln.strip()), "")
        n_fields = len(_split_fields(line1, sep))
        field_names = tuple(f"column {k}" for k in range(n_fields))
        defaults = {"user": 0, "item": 1, "rating": None if events else 2, "time": None}
        index = {}
        for role, value in given.items():
            pos = int(value) if value is not None else defaults[role]
            if pos is None:
                continue
            if pos >= n_fields:
                raise DelimiterError(
                    f"column {pos} was asked for but line 1 has {n_fields} field(s) "
                    f"separated by {describe_sep(sep)}: {quote_line(line1)}",
                    first,
                    1,
                )
            index[role] = pos
    else:
        header = True
        line1 = _first_line(first).lstrip("\ufeff")
        names = [n.strip().strip('"') for n in _split_fields(line1, sep)]
        field_names = tuple(names)
        n_fields = len(names)
        wanted = {
            "user": user_col or "user_id",
            "item": item_col or "item_id",
            "rating": rating_col or (None if events else "rating"),
            "time": time_col or "timestamp",
        }
        if events:
            _check_not_ratings(names, rating_col, first)
        if n_fields == 1 and len([w for w in wanted.values() if w]) >= 3:
            _raise_delimiter(first, 1, line1, sep, 3)
        index = {}
        for role, name in wanted.items():
            if name is None:
                continue  # an event list without a weight column
            if name in names:
                index[role] = names.index(name)
            elif role == "time" and time_col is None:
                continue  # the default time column is optional
            else:
                flag = {
                    "user": "--user-col",
                    "item": "--item-col",
                    "rating": "--weight-col" if events else "--rating-col",
                }.get(role, "--time-col")
                raise IngestError(
                    f"no column {name!r} in the header {names}: pass {flag} with the name "
                    "of the column (or 0-based positions for a file without a header)",
                    first,
                    1,
                )
        for other in files[1:]:
            other_names = [n.strip().strip('"') for n in _split_fields(_first_line(other), sep)]
            if other_names != names:
                raise IngestError(
                    f"header {other_names} differs from {names} in {first}: all files of one "
                    "source must have the same columns",
                    other,
                    1,
                )
    if len(set(index.values())) != len(index):
        raise ValueError(f"two roles map to the same column: {index}")
    roles = [kparse.ROLE_IGNORE] * n_fields
    for role, pos in index.items():
        roles[pos] = ROLES.index(role)
    source = RatingSource(
        format=fmt,
        files=files,
        sep=sep,
        header=header,
        field_names=field_names,
        roles=tuple(roles),
    )
    _check_text_layout(source)
    return _replace(source, id_types=_sniff_id_types(source, id_type))


def _is_position(value: str | int) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


def _split_fields(line: str, sep: str) -> list[str]:
    return line.split(sep)


def _raise_delimiter(path: Path, line_no: int, line: str, sep: str, expected: int) -> None:
    guess = guess_separator(line, expected)
    hint = (
        f"; it looks {describe_sep(guess)}-separated: pass --sep {guess!r}"
        if guess and guess != sep
        else ""
    )
    raise DelimiterError(
        f"expected {expected} fields separated by {describe_sep(sep)} but the line does not "
        f"split on it: {quote_line(line)}{hint}",
        path,
        line_no,
    )


def _check_text_layout(source: RatingSource) -> None:
    """Fail early on a file that does not split on the separator (checked on line 1-2)."""
    n_fields = len(source.roles)
    for path in source.files:
        lines = _head_lines(path, source.encoding, n=3)
        start = 1 if source.header else 0
        for offset, line in enumerate(lines[start : start + 1], start=start + 1):
            if not line.strip():
                continue
            found = len(line.split(source.sep))
            if found == 1 and n_fields >= 3:
                _raise_delimiter(path, offset, line, source.text_sep, n_fields)
        if source.header and source.format == "ml-csv":
            names = [n.strip().strip('"') for n in lines[0].lstrip("\ufeff").split(",")]
            if names[:3] != ["userId", "movieId", "rating"]:
                raise IngestError(
                    f"expected the MovieLens header userId,movieId,rating,timestamp, found "
                    f"{quote_line(lines[0])}: pass --format csv with --user-col etc.",
                    path,
                    1,
                )


def _sniff_id_types(source: RatingSource, id_type: str) -> tuple[str, str]:
    if id_type in ("int", "str"):
        return (id_type, id_type)
    if id_type != "auto":
        raise ValueError(f"id_type must be 'auto', 'int' or 'str', not {id_type!r}")
    with open(source.files[0], "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if len(head) == _SNIFF_BYTES and b"\n" in head:
        head = head[: head.rindex(b"\n") + 1]
    parsed = parse_text(head, source, first_in_file=True)
    ok = parsed["status"] == kparse.STATUS_OK
    types = []
    for k in (0, 1):
        types.append("int" if bool(parsed["id_is_int"][ok, k].all()) else "str")
    return (types[0], types[1])


def _parquet_source(
    src: Path,
    user_col: str | int | None,
    item_col: str | int | None,
    rating_col: str | int | None,
    time_col: str | int | None,
    id_type: str,
    events: bool = False,
) -> RatingSource:
    files = _list_files(src, (".parquet", ".pq"))
    _check_nonempty(files)
    try:
        arrow_schema = pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestError(f"not a readable Parquet file ({exc})", files[0]) from exc
    names = arrow_schema.names
    wanted = {
        "user": user_col or "user_id",
        "item": item_col or "item_id",
        "rating": rating_col or (None if events else "rating"),
        "time": time_col or "timestamp",
    }
    if events:
        _check_not_ratings(names, rating_col, files[0])
    columns = {}
    for role, name in wanted.items():
        if name is None:
            continue  # an event list without a weight column
        name = names[int(name)] if _is_position(name) and int(name) < len(names) else name
        if name in names:
            columns[role] = str(name)
        elif not (role == "time" and time_col is None):
            flag = "--weight-col" if events and role == "rating" else f"--{role}-col"
            raise IngestError(f"no column {name!r}; the file has {names}: pass {flag}", files[0])
    types = []
    for role in ("user", "item"):
        t = arrow_schema.field(columns[role]).type
        if id_type in ("int", "str"):
            types.append(id_type)
        else:
            types.append("int" if pa.types.is_integer(t) else "str")
    return RatingSource(
        format="parquet", files=files, columns=columns, id_types=(types[0], types[1])
    )


def estimate_rows(source: RatingSource) -> int:
    """About how many rating lines (or Parquet rows) ``source`` holds, read cheaply.

    Parquet: the row counts in the file footers (exact). Text: the size of each file over
    the mean length of the lines in its first 64 KiB. Used only to size the ingest's
    tasks, never to count.
    """
    total = 0
    for path in source.files:
        if not source.is_text:
            total += pq.ParquetFile(path).metadata.num_rows
            continue
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
        n_lines = max(1, head.count(b"\n"))
        total += int(path.stat().st_size * n_lines / max(1, len(head))) + 1
    return total


# --------------------------------------------------------------------------- parsing


def parse_text(data: bytes, source: RatingSource, first_in_file: bool) -> dict[str, np.ndarray]:
    """Run the parsing kernel over one block of whole lines; row ``k`` = line ``k``.

    Returns the kernel's arrays (see :func:`mfdask.kernels.parse.parse_block`) plus
    ``buf``; the header line of a file, when the block starts one, has status
    ``STATUS_HEADER`` (-1).
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    n = kparse.count_lines(buf)
    want_spans = "str" in source.id_types
    out = {
        "user": np.empty(n, np.int64),
        "item": np.empty(n, np.int64),
        "rating": np.empty(n, np.float64),
        "timestamp": np.empty(n, np.int64),
        "id_is_int": np.empty((n, 2), np.bool_),
        "id_spans": np.empty((n if want_spans else 0, 4), np.int64),
        "status": np.empty(n, np.int8),
        "detail": np.empty(n, np.int32),
        "line_start": np.empty(n, np.int64),
    }
    sep = np.frombuffer(source.text_sep.encode(source.encoding), dtype=np.uint8)
    roles = np.asarray(source.roles, dtype=np.int8)
    done = kparse.parse_block(
        buf,
        sep,
        roles,
        out["user"],
        out["item"],
        out["rating"],
        out["timestamp"],
        out["id_is_int"],
        out["id_spans"],
        out["status"],
        out["detail"],
        out["line_start"],
    )
    assert done == n, (done, n)
    if first_in_file and source.header and n:
        out["status"][0] = STATUS_HEADER
    out["buf"] = buf
    return out


STATUS_HEADER = -1
"""Status of a file's header line (neither a rating nor a bad row)."""


def _line_text(buf: np.ndarray, line_start: np.ndarray, k: int, encoding: str) -> str:
    start = int(line_start[k])
    end = int(line_start[k + 1]) if k + 1 < len(line_start) else len(buf)
    raw = buf[start:end].tobytes().rstrip(b"\n").rstrip(b"\r")
    return raw.decode(encoding, errors="replace")


def _spans_to_strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, encoding: str):
    """Decode byte spans of ``buf`` to strings, vectorised through a fixed-width array."""
    if len(starts) == 0:
        return pd.array([], dtype="str")
    lengths = ends - starts
    width = max(int(lengths.max()), 1)
    cols = np.arange(width)
    idx = np.minimum(starts[:, None] + cols, len(buf) - 1)
    mat = np.where(cols < lengths[:, None], buf[idx], 0).astype(np.uint8)
    fixed = np.ascontiguousarray(mat).view(f"S{width}").ravel()
    return pd.array(np.char.decode(fixed, encoding), dtype="str")


@dataclass
class ParsedBlock:
    """The outcome of one block: its valid ratings, its bad rows, and its line counts.

    ``good`` has ``user_id, item_id, rating:float32, timestamp:int64, line:int64`` and
    ``bad`` has ``line:int64, reason, text``, with ``line`` 0-based within the block.
    """

    good: pd.DataFrame
    bad: pd.DataFrame
    n_lines: int
    n_header: int
    n_blank: int


def _bad_frame(lines: np.ndarray, reasons: list[str], texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line": np.asarray(lines, dtype=np.int64),
            "reason": pd.array(reasons, dtype="str"),
            "text": pd.array(texts, dtype="str"),
        }
    )


def parse_text_block(data: bytes, source: RatingSource, first_in_file: bool) -> ParsedBlock:
    """Parse and validate one line-aligned block of a text ratings file."""
    p = parse_text(data, source, first_in_file)
    status = p["status"]
    detail = p["detail"]
    n = len(status)
    ok = status == kparse.STATUS_OK
    reasons: dict[int, str] = {}  # block line -> reason, for the few bad lines
    n_fields = len(source.roles)

    for k in np.flatnonzero((status != kparse.STATUS_OK) & (status > kparse.STATUS_BLANK)).tolist():
        s, d = int(status[k]), int(detail[k])
        if s == kparse.STATUS_FIELD_COUNT:
            reasons[k] = (
                f"expected {n_fields} fields separated by "
                f"{describe_sep(source.text_sep)}, found {d}"
            )
        elif s == kparse.STATUS_EMPTY_FIELD:
            reasons[k] = f"{source.field_names[d]} is empty"
        elif s == kparse.STATUS_NOT_NUMBER:
            what = "a number" if source.roles[d] == kparse.ROLE_RATING else "an integer"
            reasons[k] = f"{source.field_names[d]} is not {what}"
        else:
            reasons[k] = f"{source.field_names[d]} has a misplaced or unclosed double quote"

    # Integer ids must be integers; string ids are read from their byte spans.
    ids = {}
    for k_role, role in ((0, kparse.ROLE_USER), (1, kparse.ROLE_ITEM)):
        if source.id_types[k_role] == "int":
            not_int = ok & ~p["id_is_int"][:, k_role]
            for k in np.flatnonzero(not_int):
                reasons[int(k)] = f"{source.role_name(role)} is not an integer"
            ok &= ~not_int
    rating = p["rating"]
    if not source.has_value:
        rating = np.ones(n, np.float64)  # an event list: each line is one event
    if source.feedback == "events" and source.has_value:
        negative = ok & (rating < 0)
        for k in np.flatnonzero(negative):
            reasons[int(k)] = (
                f"{source.role_name(kparse.ROLE_RATING)} {rating[k]:g} is negative: an event "
                "weight is a count or a strength >= 0"
            )
        ok &= ~negative
    if source.rating_range is not None:
        low, high = source.rating_range
        out_of_range = ok & ((rating < low) | (rating > high))
        for k in np.flatnonzero(out_of_range):
            reasons[int(k)] = (
                f"{source.role_name(kparse.ROLE_RATING)} {rating[k]:g} is outside the range "
                f"[{low:g}, {high:g}] (change it with --rating-min/--rating-max)"
            )
        ok &= ~out_of_range
    rows = np.flatnonzero(ok)
    for k_role, key in ((0, "user"), (1, "item")):
        if source.id_types[k_role] == "int":
            ids[key] = p[key][rows]
        else:
            spans = p["id_spans"]
            ids[key] = _spans_to_strings(
                p["buf"], spans[rows, 2 * k_role], spans[rows, 2 * k_role + 1], source.encoding
            )
    good = pd.DataFrame(
        {
            "user_id": ids["user"],
            "item_id": ids["item"],
            "rating": rating[rows].astype(np.float32),
            "timestamp": p["timestamp"][rows],
            "line": rows.astype(np.int64),
        }
    )
    bad_lines = np.array(sorted(reasons), dtype=np.int64)
    bad = _bad_frame(
        bad_lines,
        [reasons[int(k)] for k in bad_lines],
        [_line_text(p["buf"], p["line_start"], int(k), source.encoding) for k in bad_lines],
    )
    n_blank = int((status == kparse.STATUS_BLANK).sum())
    n_header = int((status == STATUS_HEADER).sum())
    if n_header + n_blank + len(good) + len(bad) != n:
        raise AssertionError("parse accounting: every line must be a header, blank, good or bad")
    return ParsedBlock(good=good, bad=bad, n_lines=n, n_header=n_header, n_blank=n_blank)


def parse_parquet_row_group(path: Path, row_group: int, source: RatingSource) -> ParsedBlock:
    """Read and validate one row group of a Parquet ratings file (``line`` = row in group)."""
    cols = source.columns
    table = pq.ParquetFile(path).read_row_group(
        row_group, columns=list(dict.fromkeys(cols.values()))
    )
    frame = table.to_pandas()
    n = len(frame)
    bad_reason = pd.Series(pd.NA, index=range(n), dtype="object")

    def flag(mask: np.ndarray, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool) & bad_reason.isna().to_numpy()
        bad_reason[mask] = reason

    ids = {}
    for role in ("user", "item"):
        col = frame[cols[role]]
        flag(col.isna().to_numpy(), f"{cols[role]} is missing")
        if source.id_types[ROLES.index(role)] == "int":
            values = pd.to_numeric(col, errors="coerce")
            integral = values.notna() & (values == np.floor(values.fillna(0)))
            flag(col.notna().to_numpy() & ~integral.to_numpy(), f"{cols[role]} is not an integer")
            ids[role] = values
        else:
            ids[role] = col.astype("str")
    if "rating" in cols:
        raw = frame[cols["rating"]]
        rating = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        flag(raw.isna().to_numpy(), f"{cols['rating']} is missing")
        flag(~np.isfinite(rating), f"{cols['rating']} is not a finite number")
        if source.feedback == "events":
            with np.errstate(invalid="ignore"):
                flag(
                    rating < 0,
                    f"{cols['rating']} is negative: an event weight is a count or a strength >= 0",
                )
    else:  # an event list: each row is one event
        rating = np.ones(n, np.float64)
    if source.rating_range is not None:
        low, high = source.rating_range
        with np.errstate(invalid="ignore"):
            outside = (rating < low) | (rating > high)
        flag(outside, f"{cols['rating']} is outside the range [{low:g}, {high:g}]")
    if "time" in cols:
        t = frame[cols["time"]]
        if pd.api.types.is_datetime64_any_dtype(t):
            ts = (t.astype("datetime64[ns]").astype("int64") // 10**9).where(t.notna())
        else:
            ts = pd.to_numeric(t, errors="coerce")
        flag(t.isna().to_numpy(), f"{cols['time']} is missing")
        flag(t.notna().to_numpy() & ts.isna().to_numpy(), f"{cols['time']} is not a number")
        timestamp = ts.fillna(0).to_numpy().astype(np.int64)
    else:
        timestamp = np.zeros(n, dtype=np.int64)
    is_bad = bad_reason.notna().to_numpy()
    rows = np.flatnonzero(~is_bad)
    good = pd.DataFrame(
        {
            "user_id": _as_ids(ids["user"], rows, source.id_types[0]),
            "item_id": _as_ids(ids["item"], rows, source.id_types[1]),
            "rating": rating[rows].astype(np.float32),
            "timestamp": timestamp[rows],
            "line": rows.astype(np.int64),
        }
    )
    bad_rows = np.flatnonzero(is_bad)
    # Only the bad rows are turned into text, for the quarantine.
    texts = [",".join(map(str, row)) for row in frame.iloc[bad_rows].itertuples(index=False)]
    bad = _bad_frame(bad_rows, list(bad_reason.iloc[bad_rows]), list(texts))
    return ParsedBlock(good=good, bad=bad, n_lines=n, n_header=0, n_blank=0)


def _as_ids(values: pd.Series, rows: np.ndarray, id_type: str):
    picked = values.iloc[rows]
    if id_type == "int":
        return picked.to_numpy().astype(np.int64)
    return pd.array(picked.to_numpy(), dtype="str")


# --------------------------------------------------------------------------- items


def read_items(source: RatingSource) -> pd.DataFrame | None:
    """Titles and genres of the source's items: ``item_id, title, genres`` (or None).

    Genres are joined with ``|`` as in ML-1M (``Animation|Children's|Comedy``); ML-100K's
    19 flag columns are turned into the same form.
    """
    path = source.items_file
    if path is None:
        return None
    if source.format == "ml-100k":
        genre_file = path.parent / "u.genre"
        names = ML_100K_GENRES
        if genre_file.is_file():
            listed = [ln.split("|")[0] for ln in genre_file.read_text("latin-1").splitlines() if ln]
            if len(listed) == 19:
                names = listed
        raw = pd.read_csv(path, sep="|", header=None, encoding="latin-1", dtype=str)
        if raw.shape[1] != 5 + len(names):
            raise IngestError(
                f"expected {5 + len(names)} '|'-separated fields (id, title, dates, URL and "
                f"{len(names)} genre flags), found {raw.shape[1]}",
                path,
            )
        flags = raw.iloc[:, 5:].fillna("0").astype(int).to_numpy()
        labels = np.array([n + "|" for n in names], dtype=object)
        genres = pd.Series((flags * labels).sum(axis=1), dtype="str").str.rstrip("|")
        return pd.DataFrame(
            {
                schema.ITEM_ID: pd.to_numeric(raw[0]).astype(np.int64),
                "title": pd.array(raw[1].to_numpy(), dtype="str"),
                "genres": genres.to_numpy(),
            }
        )
    if source.format == "ml-dat":
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")  # ML-1M's movies.dat is latin-1
        lines = pd.Series([ln for ln in text.splitlines() if ln], dtype="str")
        head = lines.str.split("::", n=1, expand=True)
        rest = head[1].str.rsplit("::", n=1, expand=True)
        return pd.DataFrame(
            {
                schema.ITEM_ID: pd.to_numeric(head[0]).astype(np.int64),
                "title": rest[0].to_numpy(),
                "genres": rest[1].to_numpy(),
            }
        )
    frame = pd.read_csv(path, usecols=["movieId", "title", "genres"], dtype={"movieId": "int64"})
    return pd.DataFrame(
        {
            schema.ITEM_ID: frame["movieId"].to_numpy(),
            "title": pd.array(frame["title"].to_numpy(), dtype="str"),
            "genres": pd.array(frame["genres"].to_numpy(), dtype="str"),
        }
    )
