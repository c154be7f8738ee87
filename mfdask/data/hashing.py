"""Counter-based random numbers: the value for key ``k`` is a pure function of ``(seed, k)``.

Splits and the synthetic generator draw their randomness from a hash of *what* the
number is for (a user, a ``(user, item)`` pair, the ``j``-th draw of a user) rather than
from a generator advanced in whatever order a partition happens to be processed. The
result therefore does not depend on how the data is partitioned, on the number of
workers or on the order tasks run in, which a per-partition ``numpy.random.Generator``
cannot give.

The mixing function is the finaliser of SplitMix64 (Steele, Lea and Flood, "Fast
splittable pseudorandom number generators", OOPSLA 2014), a bijection on 64-bit words
with full avalanche; chaining it over the words of a key gives a well-distributed hash.
Everything is vectorised NumPy on ``uint64`` arrays, whose arithmetic wraps modulo
``2**64`` by definition.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TWO_POW_53 = float(2**53)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of a ``uint64`` array (a new array; the input is untouched)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> _S30)) * _M1
        x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def hash_keys(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of ``(seed, stream, *keys)``, element-wise over broadcast ``keys``.

    Parameters
    ----------
    seed : int
        The user's seed (any non-negative integer below ``2**64``).
    stream : int
        A constant naming what the numbers are for, so that two uses of the same keys
        (say the rating noise and the timestamp of one draw) are independent.
    *keys : int arrays
        Non-negative integers (user index, item index, draw counter, ...).

    Returns
    -------
    (n,) uint64
    """
    if seed < 0 or stream < 0:
        raise ValueError(f"seed and stream must be non-negative, got seed={seed}, stream={stream}")
    h = mix64(np.array([seed], dtype=np.uint64) ^ mix64(np.array([stream], dtype=np.uint64)))
    for k in keys:
        with np.errstate(over="ignore"):
            h = mix64(h ^ np.asarray(k).astype(np.uint64))
    return h


def hash_uniform(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform float64 numbers in the open interval (0, 1), one per broadcast key.

    The top 53 bits of :func:`hash_keys` plus one half ulp, so neither 0 nor 1 occurs
    and ``log`` of the result is always finite.
    """
    h = hash_keys(seed, stream, *keys)
    return ((h >> _S11).astype(np.float64) + 0.5) / _TWO_POW_53


def hash_normal(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """Standard normal float64 numbers, one per broadcast key (Box-Muller transform)."""
    u1 = hash_uniform(seed, stream, *keys, 0)
    u2 = hash_uniform(seed, stream, *keys, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
