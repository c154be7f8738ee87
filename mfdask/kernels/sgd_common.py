"""Helpers shared by the stochastic-gradient kernels (SVD, BPR, WARP).

Visiting order
    Every SGD kernel visits its slice ``[lo, hi)`` of a block's ratings in a fresh random
    order each time it runs: a Fisher-Yates shuffle (Durstenfeld's variant) driven by the
    SplitMix64 generator of :mod:`mfdask.kernels.sampling`, a few nanoseconds per
    element. :func:`shuffled_range` takes its seed from numba's per-thread generator
    (:func:`seed_thread`), so Hogwild threads that each seed themselves draw
    independent, reproducible orders; :func:`shuffled_positives` threads an explicit
    generator state instead.

Gathered chunks
    Reading ``users[order[n]]``, ``items[order[n]]`` and ``ratings[order[n]]`` inside
    the update loop costs a cache miss per array per rating once a block outgrows the
    cache, and the update's long body keeps the processor from overlapping those misses.
    The kernels therefore copy the shuffled ratings, :data:`CHUNK` at a time, into small
    contiguous buffers first (a tight loop of independent loads that the processor
    overlaps), then run their updates over the buffers. The visiting order is unchanged.

Prefetching
    The factor rows of a rating are read at random. While the update of rating ``n``
    runs, :func:`prefetch_row` asks for the rows of rating ``n + PREFETCH_DISTANCE``
    (LLVM's ``llvm.prefetch``: a hint, never a fault), so that the rows are in cache when
    their turn comes. This matters once the factor matrices outgrow the caches (a
    20M-rating problem's ``200,000 x 64`` user factors are 51 MB).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from mfdask.kernels.sampling import randbelow, seed_state, splitmix64

CHUNK = 4096
"""Ratings gathered into contiguous buffers at a time (about 50 kB of buffers)."""

PREFETCH_DISTANCE = 8
"""How many ratings ahead of the current one the factor rows are prefetched."""

_CACHE_LINE = 64
_MAX_PREFETCH_LINES = 16
"""At most the first 1 kB of a row is prefetched (256 float32 factors)."""


@intrinsic
def _prefetch_row(typingctx, arr, row):
    """Hint the processor to bring row ``row`` of the 2-d C-contiguous ``arr`` into cache.

    Issues one ``llvm.prefetch`` (read, high locality) per 64-byte line of the row, up to
    :data:`_MAX_PREFETCH_LINES` lines. A prefetch never faults, but callers pass a valid
    row anyway.
    """
    if not isinstance(arr, types.Array) or arr.ndim != 2 or not isinstance(row, types.Integer):
        return None
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):
        aryty, rowty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        index = context.cast(builder, args[1], rowty, types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(
            context, builder, aryty, ary, [index, zero], wraparound=False
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        base = builder.bitcast(ptr, i8p)
        n_cols = cgutils.unpack_tuple(builder, ary.shape, 2)[1]
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(ary.data.type.pointee))
        row_bytes = builder.mul(n_cols, itemsize)
        for line in range(_MAX_PREFETCH_LINES):
            offset = context.get_constant(types.intp, line * _CACHE_LINE)
            with builder.if_then(builder.icmp_signed("<", offset, row_bytes), likely=True):
                address = builder.gep(base, [offset])
                # rw = 0 (read), locality = 3 (keep in all levels), cache type = 1 (data)
                builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# Jitted code calls the intrinsic as ``prefetch_row(arr, row)``: numba supplies the typing
# context when it compiles the call. Typed as that call for mypy (the object is the same).
prefetch_row = cast("Callable[[np.ndarray, int], None]", _prefetch_row)


@njit(nogil=True, cache=True)
def seed_thread(seed: int) -> None:
    """Seed numba's generator of the calling thread (``np.random`` inside kernels)."""
    np.random.seed(seed)  # noqa: NPY002 - numba keeps this legacy state per thread


@njit(nogil=True, cache=True)
def shuffle_in_place(state: np.uint64, a: np.ndarray) -> np.uint64:
    """Fisher-Yates (Durstenfeld) shuffle of ``a`` with the SplitMix64 ``state``.

    Uniform over permutations up to the bias of :func:`~mfdask.kernels.sampling.randbelow`
    (below ``len(a) / 2**32``). Returns the advanced state.
    """
    for k in range(a.shape[0] - 1, 0, -1):
        state, r = randbelow(state, k + 1)
        tmp = a[k]
        a[k] = a[r]
        a[r] = tmp
    return state


@njit(nogil=True, cache=True)
def shuffled_range(lo: int, hi: int) -> np.ndarray:
    """``lo, ..., hi - 1`` in a uniformly random order (Fisher-Yates), as int64.

    Seeded by one draw from the calling thread's numba generator: call
    :func:`seed_thread` first for a reproducible order.
    """
    n = max(hi - lo, 0)
    order = np.empty(n, dtype=np.int64)
    for k in range(n):
        order[k] = lo + k
    state = seed_state(np.random.randint(0, 2**62))  # noqa: NPY002 - per-thread numba state
    shuffle_in_place(state, order)
    return order


@njit(nogil=True, cache=True)
def shuffled_positives(
    state: np.uint64, values: np.ndarray, threshold: float, lo: int, hi: int
) -> tuple[np.uint64, np.ndarray]:
    """The positions ``p`` in ``[lo, hi)`` with ``values[p] >= threshold``, shuffled.

    The pairwise kernels visit only positives; listing them first keeps the shuffle and
    the visit free of the ratings they would skip. Returns the advanced state and the
    int64 positions.
    """
    count = 0
    for p in range(lo, hi):
        if values[p] >= threshold:
            count += 1
    order = np.empty(count, dtype=np.int64)
    count = 0
    for p in range(lo, hi):
        if values[p] >= threshold:
            order[count] = p
            count += 1
    state = shuffle_in_place(state, order)
    return state, order


@njit(nogil=True, cache=True)
def weighted_positives(
    state: np.uint64, values: np.ndarray, threshold: float, lo: int, hi: int, scale: float
) -> tuple[np.uint64, np.ndarray]:
    """The positives of ``[lo, hi)``, each listed ``log(1 + w) · scale`` times, shuffled.

    The count is rounded stochastically (its floor, plus one with the probability of its
    fractional part), so a positive is visited ``log(1 + w) · scale`` times an epoch on
    average: with ``scale = 1 / mean(log(1 + w))`` an epoch makes as many visits as
    :func:`shuffled_positives` would, spread over the positives in proportion to their
    log-weight (weighted sampling of positives, one shuffle per pass, no per-visit
    table). Returns the advanced state and the int64 positions.
    """
    repeats = np.zeros(max(hi - lo, 0), dtype=np.int64)
    count = 0
    for p in range(lo, hi):
        if values[p] >= threshold:
            mean = np.log1p(np.float64(values[p])) * scale
            whole = np.int64(np.floor(mean))
            state, bits = splitmix64(state)
            if np.float64(bits >> np.uint64(11)) * 2.0**-53 < mean - whole:
                whole += 1
            repeats[p - lo] = whole
            count += whole
    order = np.empty(count, dtype=np.int64)
    count = 0
    for p in range(lo, hi):
        for _ in range(repeats[p - lo]):
            order[count] = p
            count += 1
    state = shuffle_in_place(state, order)
    return state, order


@njit(nogil=True, cache=True)
def row_contains(indptr: np.ndarray, indices: np.ndarray, row: int, col: int) -> bool:
    """Whether sorted CSR row ``row`` holds column ``col`` (binary search).

    BPR and WARP use it to reject a sampled negative that is in fact a positive.
    """
    lo = indptr[row]
    hi = indptr[row + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        v = indices[mid]
        if v < col:
            lo = mid + 1
        elif v > col:
            hi = mid
        else:
            return True
    return False
