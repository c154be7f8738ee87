"""Random numbers and negative sampling for the pairwise kernels (BPR, WARP).

Everything here is a numba function that the SGD kernels inline into their loops.

Random numbers
    Each Hogwild thread owns a 64-bit generator state, made by :func:`seed_state`
    from the seed the engine gives each (random_state, epoch, cell, thread), so the
    draws of a fit depend only on the seed and the cluster shape, never on which worker
    ran a cell or when. The generator is SplitMix64 (Steele, Lea and Flood, "Fast splittable
    pseudorandom number generators", OOPSLA 2014): one add and three xor-shift-multiply
    rounds per draw, statistically strong enough for sampling and carried in a plain
    ``uint64`` that the kernels thread through their loops (a pure function returning
    ``(state, value)``, so no shared array is written per draw). Bounded integers use
    Lemire's multiply-shift ("Fast random integer generation in an interval", ACM TOMACS
    2019) without the rejection step: for ``n < 2**32`` its bias is below ``n / 2**32``.

Negatives
    Inside the DSGD engine a worker holds one item block: under residue blocking (see
    :mod:`mfdask.engine.blocks`) block ``b`` of ``W`` is the global items
    ``g = l * W + b`` for local ``l = 0 .. n_block_items - 1``. The user's whole CSR row
    (global indices, ascending) is the membership list. :func:`sample_negative` draws a
    block item uniformly among those *not* in the row: rejection sampling with a
    binary-search membership test, then, if the user owns most of the block and several
    draws were rejected, an exact fallback that picks the ``r``-th non-member by walking
    the row. Both paths are uniform over the non-members,
    so their mixture is too. A user who owns every item of the block gets ``-1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK32 = np.uint64(0xFFFFFFFF)

NO_NEGATIVE = -1
"""Returned by :func:`sample_negative` when the user has no negative in the block."""

REJECTION_TRIES = 8
"""Rejected draws before :func:`sample_negative` switches to its exact fallback."""

NO_BITS = np.zeros(0, dtype=np.uint8)
"""An empty bitset: membership is searched in the CSR row."""


@njit(nogil=True, cache=True, inline="always")
def splitmix64(state: np.uint64) -> tuple[np.uint64, np.uint64]:
    """Advance a SplitMix64 ``state``; return ``(new_state, 64 random bits)``."""
    state = uint64(uint64(state) + _GOLDEN)
    z = state
    z = uint64((z ^ (z >> uint64(30))) * _MIX1)
    z = uint64((z ^ (z >> uint64(27))) * _MIX2)
    return state, uint64(z ^ (z >> uint64(31)))


@njit(nogil=True, cache=True, inline="always")
def randbelow(state: np.uint64, n: int) -> tuple[np.uint64, int]:
    """A uniform integer in ``[0, n)`` for ``0 < n < 2**32`` (Lemire's multiply-shift)."""
    state, bits = splitmix64(state)
    hi = bits >> uint64(32)
    return state, np.int64((hi * uint64(n)) >> uint64(32))


@njit(nogil=True, cache=True)
def seed_state(seed: int) -> np.uint64:
    """A generator state from an integer seed (one SplitMix64 round, so that nearby
    seeds give unrelated streams)."""
    _, z = splitmix64(uint64(seed))
    return z


@njit(nogil=True, cache=True, inline="always")
def contains_sorted(indices: np.ndarray, lo: int, hi: int, value: int) -> bool:
    """Whether ``value`` is in the ascending run ``indices[lo:hi]`` (binary search).

    Branch-free: each halving step is a conditional move, so the search costs the same
    few cycles per step whatever the data, instead of a mispredicted branch per step.
    """
    n = hi - lo
    if n <= 0:
        return False
    base = lo
    while n > 1:
        half = n >> 1
        base = base + half if indices[base + half] <= value else base
        n -= half
    return indices[base] == value


@njit(nogil=True, cache=True)
def nth_non_member(indices: np.ndarray, lo: int, hi: int, n: int, block: int, n_blocks: int) -> int:
    """The ``n``-th (0-based) local item of block ``block`` not in ``indices[lo:hi]``.

    ``indices[lo:hi]`` is an ascending run of global items (of any block); the ones in
    ``block`` have ascending local indices ``g // n_blocks``. Walking them, every member
    at or below the candidate pushes it one further.
    """
    local = n
    for p in range(lo, hi):
        g = indices[p]
        if g % n_blocks != block:
            continue
        member = g // n_blocks
        if member <= local:
            local += 1
        else:
            break
    return local


@njit(nogil=True, cache=True)
def count_in_block(indices: np.ndarray, lo: int, hi: int, block: int, n_blocks: int) -> int:
    """How many of the global items ``indices[lo:hi]`` lie in item block ``block``."""
    c = 0
    for p in range(lo, hi):
        if indices[p] % n_blocks == block:
            c += 1
    return c


@njit(nogil=True, cache=True, inline="always")
def sample_negative(
    state: np.uint64,
    indices: np.ndarray,
    lo: int,
    hi: int,
    block: int,
    n_blocks: int,
    n_block_items: int,
    member_bits: np.ndarray = NO_BITS,
    bits_row: int = 0,
) -> tuple[np.uint64, int]:
    """A uniform item of the held block that is not in the user's row ``indices[lo:hi]``.

    Parameters
    ----------
    state : uint64
        Generator state (see :func:`splitmix64`).
    indices : (nnz,) int32
        Global item indices; ``indices[lo:hi]`` is the user's whole ascending CSR row.
    block, n_blocks, n_block_items : int
        The held item block: global items ``l * n_blocks + block``, ``l < n_block_items``.
    member_bits : (n,) uint8, optional
        The user's row as a bitset of local items (bit ``l & 7`` of byte
        ``bits_row + (l >> 3)``, see :func:`member_bitset`): one load per draw instead of
        a binary search. Same answers, so the same draws; empty (the default) searches
        ``indices``.
    bits_row : int
        Offset of the user's bytes in ``member_bits``.

    Returns
    -------
    state : uint64
    item : int
        The negative's *local* index ``l`` in the block, or :data:`NO_NEGATIVE` if the
        user owns every item of the block.
    """
    if n_block_items <= 0:
        return state, NO_NEGATIVE
    use_bits = member_bits.shape[0] > 0
    for _ in range(REJECTION_TRIES):
        state, local = randbelow(state, n_block_items)
        if use_bits:
            member = (member_bits[bits_row + (local >> 3)] >> (local & 7)) & 1
        else:
            member = contains_sorted(indices, lo, hi, local * n_blocks + block)
        if not member:
            return state, local
    n_free = n_block_items - count_in_block(indices, lo, hi, block, n_blocks)
    if n_free <= 0:
        return state, NO_NEGATIVE
    state, r = randbelow(state, n_free)
    return state, nth_non_member(indices, lo, hi, r, block, n_blocks)


@njit(nogil=True, cache=True)
def draw_negatives(
    state: np.uint64,
    users: np.ndarray,
    values: np.ndarray,
    threshold: float,
    lo: int,
    hi: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    block: int,
    n_blocks: int,
    n_block_items: int,
    out: np.ndarray,
    member_bits: np.ndarray = NO_BITS,
) -> np.uint64:
    """One :func:`sample_negative` for every positive among ratings ``lo:hi``, in place.

    ``out[p - lo]`` gets the local negative of rating ``p`` (``values[p] >= threshold``
    and user ``users[p]``), or :data:`NO_NEGATIVE` for a non-positive or a user who owns
    the whole block. The draws do not depend on any factor, so they can be made in the
    ratings' own order (users ascending) rather than in the order a kernel then visits
    them: consecutive draws of one user search the same CSR row, which stays in the
    L1 cache. With ``member_bits`` (the held block's bitset of the users' rows, row
    ``users[p]``, see :func:`member_bitset`) membership is one load per draw.
    Returns the advanced state.
    """
    stride = (n_block_items + 7) >> 3
    for p in range(lo, hi):
        if values[p] < threshold:
            out[p - lo] = NO_NEGATIVE
            continue
        u = users[p]
        row = u * stride
        state, j = sample_negative(
            state, indices, indptr[u], indptr[u + 1], block, n_blocks, n_block_items,
            member_bits, row,
        )  # fmt: skip
        out[p - lo] = j
    return state


@njit(nogil=True, cache=True)
def member_bitset(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """The ``(users[p], items[p])`` pairs as a bitset: ``n_users`` rows of
    ``⌈n_items / 8⌉`` bytes, bit ``i & 7`` of byte ``i >> 3`` of row ``u`` set for each pair."""
    stride = (n_items + 7) >> 3
    bits = np.zeros(n_users * stride, dtype=np.uint8)
    for p in range(users.shape[0]):
        i = items[p]
        bits[users[p] * stride + (i >> 3)] |= np.uint8(1 << (i & 7))
    return bits
