"""The canonical rating schema and the on-disk layout of an mfdask dataset.

A dataset is a directory::

    DEST/
      ratings/user_block=0/part-0.parquet ...   hive-partitioned by user block
      users.parquet      user_id (original id), user_idx:int32
      items.parquet      item_id (original id), item_idx:int32, [title, genres]
      manifest.json      rows, users, items, rating range and histogram, sources, schema version

``ratings`` holds ``user_idx:int32, item_idx:int32, rating:float32, timestamp:int64``.
Dense indices run ``0..n-1``; the original ids live only in the id maps, so every
dataset produced from the same ingest (a train/test split, say) shares them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
RATING = "rating"
TIMESTAMP = "timestamp"
USER_ID = "user_id"
ITEM_ID = "item_id"
USER_BLOCK = "user_block"

RATINGS_DIR = "ratings"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
MANIFEST_FILE = "manifest.json"
QUARANTINE_FILE = "quarantine.parquet"

RATING_DTYPES: dict[str, np.dtype] = {
    USER_IDX: np.dtype("int32"),
    ITEM_IDX: np.dtype("int32"),
    RATING: np.dtype("float32"),
    TIMESTAMP: np.dtype("int64"),
}

RATINGS_ARROW_SCHEMA = pa.schema(
    [
        pa.field(USER_IDX, pa.int32(), nullable=False),
        pa.field(ITEM_IDX, pa.int32(), nullable=False),
        pa.field(RATING, pa.float32(), nullable=False),
        pa.field(TIMESTAMP, pa.int64(), nullable=False),
    ]
)

DEFAULT_POSITIVE_THRESHOLD = 4.0
"""Ratings at or above this value count as positives in the implicit view."""

WEIGHT = "weight"
"""Column of an event log's strength (a play count, a duration...): any scale, >= 0."""

FEEDBACK_RATINGS = "ratings"
FEEDBACK_EVENTS = "events"
FEEDBACK_KINDS = (FEEDBACK_RATINGS, FEEDBACK_EVENTS)
"""What a dataset holds (manifest ``feedback``): ratings on a scale, or events with a
weight. An event dataset keeps the weight in the ``rating`` column of the canonical
schema (one layout for both); the manifest says how to read it."""

EVENT_POSITIVE_CUT = float(np.nextafter(np.float32(0), np.float32(1)))
"""The smallest positive float32: ``weight >= EVENT_POSITIVE_CUT`` is ``weight > 0``
for float32 weights, so every event with a positive weight is a positive wherever a
threshold is compared with ``>=`` (the ``positive_threshold`` of ratings does not apply
to events)."""
