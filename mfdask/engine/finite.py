"""Whether a factor array is all finite, without a boolean copy of it.

``np.isfinite(a).all()`` allocates one byte per entry: 128 MB for a 512 MB float32 factor
block, at the moment a worker holds the block's old and new copies. The sum of the
entries in float64 is finite exactly when every entry is: a NaN or an infinity makes it
NaN or infinite, and finite float32 values (below 3.5e38) cannot add up to a float64
overflow in fewer than 5e269 terms. NumPy sums a float32 array into a float64
accumulator in buffered chunks, so nothing of the array's size is allocated.
"""

from __future__ import annotations

import numpy as np


def all_finite(array: np.ndarray) -> bool:
    """True when no entry of the float32 or float64 ``array`` is NaN or infinite."""
    if array.dtype == np.float64:  # a float64 sum of float64 entries can overflow
        return bool(np.isfinite(array).all())
    return bool(np.isfinite(np.sum(array, dtype=np.float64)))
