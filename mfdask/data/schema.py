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
