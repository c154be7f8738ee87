"""Checks of rating input: what is a bad row, and how it is reported.

Every problem found in input data is named by file, line and what is wrong, with a hint
at what to change. The checks that are applied row by row live with the readers (they
run inside the Dask tasks, vectorised); this module holds the vocabulary they share and
the accounting check of :func:`check_accounting` that makes sure no row is ever dropped
silently. The errors (:class:`IngestError` and its subclasses) are defined in
:mod:`mfdask.errors` and importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mfdask.errors import AccountingError
from mfdask.errors import BadRowsError as BadRowsError
from mfdask.errors import DelimiterError as DelimiterError
from mfdask.errors import DuplicateRatingError as DuplicateRatingError
from mfdask.errors import IngestError as IngestError

BAD_ROW_POLICIES = ("error", "skip")
"""``on_bad_rows``: stop at the first bad row, or quarantine bad rows and go on."""

DUPLICATE_POLICIES = ("error", "last", "mean", "sum", "count")
"""``duplicates``: what to do with several ratings of one (user, item) pair.

``error`` stops; ``last`` keeps the rating (and timestamp) that comes last in the
input (file order, then line order); ``mean`` keeps the mean rating with the last
timestamp.
"""

MAX_QUOTED_CHARS = 120
"""Bad lines are quoted up to this many characters in messages and the quarantine."""


def quote_line(text: str) -> str:
    """A bad line as shown in messages: repr-quoted, cut at :data:`MAX_QUOTED_CHARS`."""
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "..."
    return repr(text)


def describe_sep(sep: str) -> str:
    """A separator as a user would name it on the command line."""
    names = {
        ",": "','",
        "\t": "a tab ('\\t')",
        "::": "'::'",
        "|": "'|'",
        ";": "';'",
        " ": "a space",
    }
    return names.get(sep, repr(sep))


def guess_separator(line: str, expected_fields: int) -> str | None:
    """The separator that splits ``line`` into ``expected_fields`` fields, if one does."""
    for sep in ("::", "\t", ",", ";", "|", " "):
        if len(line.split(sep)) == expected_fields:
            return sep
    for sep in ("::", "\t", ",", ";", "|", " "):
        if len(line.split(sep)) >= 3:
            return sep
    return None


EVENT_DUPLICATE_POLICIES = ("error", "last", "sum", "count")
"""The policies that apply to an event log: ``sum`` folds repeated (user, item) events
into one row with their total weight, ``count`` with their number (the weight column, if
any, ignored); both keep the latest timestamp. ``mean`` is for ratings only."""
RATING_DUPLICATE_POLICIES = ("error", "last", "mean")


def validate_policy(on_bad_rows: str, duplicates: str, events: bool = False) -> None:
    """Raise ``ValueError`` for an unknown ``on_bad_rows`` or ``duplicates`` policy (or
    one that does not apply to the kind of data: ratings or an event log)."""
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_rows must be one of {BAD_ROW_POLICIES}, not {on_bad_rows!r}")
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, not {duplicates!r}")
    allowed = EVENT_DUPLICATE_POLICIES if events else RATING_DUPLICATE_POLICIES
    if duplicates not in allowed:
        what = "an event log" if events else "ratings"
        hint = (
            ""
            if events
            else " (sum and count fold the events of an event log: pass --weight-col "
            "COL or --events)"
        )
        raise ValueError(
            f"duplicates={duplicates!r} does not apply to {what}; choose one of {allowed}{hint}"
        )


def validate_rating_range(rating_range: tuple[float, float] | None) -> None:
    """Raise ``ValueError`` unless ``rating_range`` is None or finite ``(low, high)``."""
    if rating_range is None:
        return
    low, high = rating_range
    if not (float(low) <= float(high)) or float("inf") in (abs(low), abs(high)):
        raise ValueError(f"rating range must be finite with min <= max, got [{low}, {high}]")


@dataclass(frozen=True)
class Accounting:
    """Where every input row went; ``rows_in`` must equal the sum of the other three.

    Attributes
    ----------
    rows_in : int
        Data lines read (header and blank lines excluded), counted from the input.
    rows_out : int
        Ratings in the written dataset, counted from the written Parquet files.
    quarantined : int
        Bad rows, counted from the written quarantine file.
    duplicates_merged : int
        Ratings folded into another rating of the same (user, item) pair.
    """

    rows_in: int
    rows_out: int
    quarantined: int
    duplicates_merged: int

    def as_dict(self) -> dict[str, int]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_quarantined": self.quarantined,
            "duplicates_merged": self.duplicates_merged,
        }


def check_accounting(acc: Accounting) -> None:
    """Raise :class:`AccountingError` unless rows in = out + quarantined + merged."""
    if acc.rows_in != acc.rows_out + acc.quarantined + acc.duplicates_merged:
        raise AccountingError(
            f"rows do not add up: {acc.rows_in} read != {acc.rows_out} written + "
            f"{acc.quarantined} quarantined + {acc.duplicates_merged} duplicates merged; "
            "nothing was written. This is a bug in mfdask: please report it with the input"
        )
