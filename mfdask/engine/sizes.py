"""How Dask weighs the engine's task results: the bytes of their arrays.

A worker decides what to spill, and when, from ``dask.sizeof`` of each result it holds.
For an object it does not know, ``sizeof`` falls back to ``sys.getsizeof``: a
:class:`~mfdask.engine.blocks.RowBlock` holding hundreds of megabytes of CSR arrays
weighs about a hundred bytes. The worker then counts those arrays as unmanaged memory,
reports the wrong figures, and when its process memory passes the ``spill`` threshold
it evicts the results it can see (factor blocks) while the ones that fill it stay.

:func:`sized` registers a dataclass with ``sizeof`` as the sum of its fields' sizes
(arrays, nested dataclasses, lists of them), so that managed memory is the memory the
blocks hold.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TypeVar

from dask.sizeof import sizeof

T = TypeVar("T", bound=type)


def sized(cls: T) -> T:
    """Class decorator: Dask weighs an instance of dataclass ``cls`` by its fields.

    Registered per class (``sizeof`` dispatches on the type's MRO, so subclasses are
    weighed the same way unless they register their own).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"sized() takes a dataclass, not {cls!r}")
    names = tuple(f.name for f in dataclasses.fields(cls))

    @sizeof.register(cls)
    def _sizeof(obj: object) -> int:
        return sys.getsizeof(obj) + sum(int(sizeof(getattr(obj, name))) for name in names)

    return cls
