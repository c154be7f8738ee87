"""Synthetic-data kernel: per-user weighted sampling of distinct items.

Each user ``u`` with ``k_u`` ratings needs ``k_u`` *distinct* items drawn with
probability proportional to a user-specific weight (Wong and Easton 1980's successive
sampling, i.e. sampling without replacement)::

    w_ui = (1 - a) p_i + a p_i / m_c [c_i = f_u]

a mixture of global popularity ``p`` (Zipf-like) and popularity within the user's
favourite cluster ``f_u`` (``m_c`` is cluster ``c``'s popularity mass, ``a`` the
affinity). Drawing i.i.d. from ``w_u`` and skipping items already taken is exactly
successive sampling, and it is cheap while few draws repeat; for the rare heavy user
whose draws keep repeating, the remaining items are completed by the Gumbel-top-k trick
(Vieira 2014; Kool, van Hoof and Welling 2019, eq. 4): the ``m`` largest of
``log w_ui + G_i`` over the items not yet taken, ``G_i`` i.i.d. Gumbel, are a successive
sample of size ``m`` from the remaining items, so the two phases compose exactly.

Randomness is counter-based: draw ``j`` of user ``u`` uses SplitMix64 hashes of
``(seed, stream, u, j)``, bit-identical to :func:`mfdask.data.hashing.hash_uniform`, so
a user's items do not depend on which partition or process generates them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV_2_53 = 1.0 / float(2**53)


@njit(nogil=True, cache=True)
def mix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser of one word (same as :func:`mfdask.data.hashing.mix64`)."""
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(nogil=True, cache=True)
def uniform(h: np.uint64, key: np.uint64) -> float:
    """Uniform in (0, 1) from hash prefix ``h`` extended by ``key``."""
    x = mix64(h ^ key)
    return (float(x >> _S11) + 0.5) * _INV_2_53


@njit(nogil=True, cache=True)
def _search_right(a: np.ndarray, v: float) -> int:
    """Smallest ``i`` with ``a[i] > v``, ``len(a)`` if none (``searchsorted`` side right)."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def sample_distinct_items(
    users: np.ndarray,
    counts: np.ndarray,
    favourite: np.ndarray,
    prefix_mix: np.uint64,
    prefix_pick: np.uint64,
    prefix_gumbel: np.uint64,
    affinity: float,
    popularity: np.ndarray,
    global_cdf: np.ndarray,
    cluster: np.ndarray,
    cluster_mass: np.ndarray,
    cluster_keys: np.ndarray,
    cluster_items: np.ndarray,
    max_draws_factor: float,
) -> np.ndarray:
    """Distinct items for each user by successive sampling (see the module docstring).

    Parameters
    ----------
    users : (n,) int64
        Global user indices (hash keys).
    counts : (n,) int64
        Items wanted per user; each at most ``len(popularity)``.
    favourite : (n,) int64
        Favourite cluster of each user.
    prefix_mix, prefix_pick, prefix_gumbel : uint64
        ``hash_keys(seed, stream)`` of the three streams (mixture choice, item pick,
        Gumbel noise).
    affinity : float
        Probability that a draw comes from the favourite cluster.
    popularity : (n_items,) float64
        Normalised global popularity ``p``.
    global_cdf : (n_items,) float64
        ``cumsum(p)``.
    cluster : (n_items,) int64
        Cluster of each item.
    cluster_mass : (n_clusters,) float64
        Sum of ``p`` over each cluster.
    cluster_keys : (n_items,) float64
        For items sorted by cluster: ``c + cumsum within c of p / m_c``, increasing, so
        that ``searchsorted(cluster_keys, c + x)`` inverts cluster ``c``'s CDF.
    cluster_items : (n_items,) int64
        Item index of each entry of ``cluster_keys``.
    max_draws_factor : float
        Successive draws allowed per wanted item before the Gumbel completion.

    Returns
    -------
    (sum(counts),) int32
        User ``r``'s items at ``[cumsum(counts)[r-1], cumsum(counts)[r])``, in draw order.
    """
    n_items = popularity.shape[0]
    total = 0
    for r in range(users.shape[0]):
        total += counts[r]
    out = np.empty(total, dtype=np.int32)
    # stamp[i] == r  <=>  item i is already taken by user row r.
    stamp = np.full(n_items, -1, dtype=np.int64)
    pos = 0
    for r in range(users.shape[0]):
        k = counts[r]
        u = np.uint64(users[r])
        h_mix = mix64(prefix_mix ^ u)
        h_pick = mix64(prefix_pick ^ u)
        fav = favourite[r]
        taken = 0
        budget = int(max_draws_factor * k) + 16
        j = 0
        # Successive sampling: i.i.d. draws from w_u, repeats skipped.
        while taken < k and j < budget:
            x = uniform(h_pick, np.uint64(j))
            if uniform(h_mix, np.uint64(j)) < affinity:
                e = _search_right(cluster_keys, fav + x)
                e = min(e, n_items - 1)
                item = cluster_items[e]
                if cluster[item] != fav:  # float round-off at a cluster's edge
                    item = cluster_items[e - 1]
            else:
                item = min(_search_right(global_cdf, x * global_cdf[n_items - 1]), n_items - 1)
            j += 1
            if stamp[item] != r:
                stamp[item] = r
                out[pos + taken] = item
                taken += 1
        if taken < k:
            # Gumbel-top-m over the items not yet taken, key = log w_ui + G_i.
            h_g = mix64(prefix_gumbel ^ u)
            keys = np.empty(n_items, dtype=np.float64)
            for i in range(n_items):
                if stamp[i] == r:
                    keys[i] = -np.inf
                    continue
                w = (1.0 - affinity) * popularity[i]
                if cluster[i] == fav:
                    w += affinity * popularity[i] / cluster_mass[fav]
                g = -np.log(-np.log(uniform(h_g, np.uint64(i))))
                keys[i] = np.log(w) + g if w > 0.0 else -np.inf
            order = np.argsort(-keys)
            for t in range(k - taken):
                out[pos + taken + t] = order[t]
            taken = k
        pos += k
    return out
