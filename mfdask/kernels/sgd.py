"""SGD kernels for biased matrix factorisation (the explicit ``SVD`` model).

The model (Koren, Bell & Volinsky, "Matrix factorization techniques for recommender
systems", IEEE Computer 2009, eq. 5) predicts

    r̂_ui = mu + b_u + b_i + p_uᵀ q_i

and minimises the squared error with separate L2 penalties on factors and biases,

    sum_(u,i) (r_ui - r̂_ui)² + λ (|p_u|² + |q_i|²) + λ_b (b_u² + b_i²),

by stochastic gradient descent, one rating at a time (Funk 2006; Koren 2008, section 2.1).
With e_ui = r_ui - r̂_ui, learning rates γ (factors) and γ_b (biases), one step is

    b_u ← b_u + γ_b (e_ui - λ_b b_u)        b_i ← b_i + γ_b (e_ui - λ_b b_i)
    p_u ← p_u + γ (e_ui q_i - λ p_u)        q_i ← q_i + γ (e_ui p_u - λ q_i)

where both factor updates use the values from before the step.

The kernels take local row indices and block arrays; they know nothing of blocks,
workers or threads. They run without the GIL so that several threads can train the
same arrays at once (Hogwild: concurrent updates of one row may overwrite each other;
that is accepted, see :mod:`mfdask.engine.dsgd`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mfdask.kernels.sgd_common import (
    CHUNK,
    PREFETCH_DISTANCE,
    prefetch_row,
    seed_thread,
    shuffled_range,
)


@njit(nogil=True, cache=True, fastmath=True)
def svd_steps(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n: int,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    mu: np.float32,
    lr: np.float32,
    lr_b: np.float32,
    reg: np.float32,
    reg_b: np.float32,
    members: int,
) -> float:
    """SGD steps on ratings ``0 .. n - 1`` of contiguous buffers, in that order.

    The inner loop of :func:`svd_sgd`; returns the sum of the pre-step squared errors.
    """
    if members > 1:
        return _member_steps(
            users,
            items,
            ratings,
            n,
            user_factors,
            item_factors,
            user_bias,
            item_bias,
            mu,
            lr,
            lr_b,
            reg,
            reg_b,
            members,
        )
    k = user_factors.shape[1]
    sse = 0.0
    for m in range(n):
        if m + PREFETCH_DISTANCE < n:
            prefetch_row(user_factors, users[m + PREFETCH_DISTANCE])
            prefetch_row(item_factors, items[m + PREFETCH_DISTANCE])
        u = users[m]
        i = items[m]
        p = user_factors[u]
        q = item_factors[i]
        # e_ui = r_ui - (mu + b_u + b_i + p_u . q_i)
        dot = np.float32(0.0)
        for f in range(k):
            dot += p[f] * q[f]
        err = ratings[m] - (mu + user_bias[u] + item_bias[i] + dot)
        sse += err * err
        user_bias[u] += lr_b * (err - reg_b * user_bias[u])
        item_bias[i] += lr_b * (err - reg_b * item_bias[i])
        # Simultaneous step on p_u and q_i, both from their pre-step values.
        for f in range(k):
            pf = p[f]
            qf = q[f]
            p[f] = pf + lr * (err * qf - reg * pf)
            q[f] = qf + lr * (err * pf - reg * qf)
    return sse


@njit(nogil=True, cache=True, fastmath=True)
def _member_steps(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n: int,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    mu: np.float32,
    lr: np.float32,
    lr_b: np.float32,
    reg: np.float32,
    reg_b: np.float32,
    members: int,
) -> float:
    """:func:`svd_steps` for ``members`` factor models sharing the biases.

    Columns ``m·w .. (m + 1)·w - 1`` (``w = k / members``) hold member ``m`` scaled by
    ``1 / sqrt(members)``, so that the stored ``p_u · q_i`` is the mean of the members'
    dot products. Member ``m`` steps on its own error
    ``e_m = r - (mu + b_u + b_i + members · p_um · q_im)`` (in unscaled terms exactly
    the step of a model of its own); the biases step on the mean error, which is also
    the error returned (that of the stored model).
    """
    k = user_factors.shape[1]
    w = k // members
    scale = np.float32(members)
    inv = np.float32(1.0 / members)
    sse = 0.0
    for m in range(n):
        if m + PREFETCH_DISTANCE < n:
            prefetch_row(user_factors, users[m + PREFETCH_DISTANCE])
            prefetch_row(item_factors, items[m + PREFETCH_DISTANCE])
        u = users[m]
        i = items[m]
        p = user_factors[u]
        q = item_factors[i]
        base = ratings[m] - (mu + user_bias[u] + item_bias[i])
        mean_err = np.float32(0.0)
        for s in range(members):
            dot = np.float32(0.0)
            for f in range(s * w, (s + 1) * w):
                dot += p[f] * q[f]
            err = base - scale * dot
            mean_err += err
            for f in range(s * w, (s + 1) * w):
                pf = p[f]
                qf = q[f]
                p[f] = pf + lr * (err * qf - reg * pf)
                q[f] = qf + lr * (err * pf - reg * qf)
        mean_err *= inv
        sse += mean_err * mean_err
        user_bias[u] += lr_b * (mean_err - reg_b * user_bias[u])
        item_bias[i] += lr_b * (mean_err - reg_b * item_bias[i])
    return sse


@njit(nogil=True, cache=True, fastmath=True)
def svd_sgd(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    lo: int,
    hi: int,
    seed: int,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    mu: float,
    learning_rate: float,
    bias_learning_rate: float,
    regularization: float,
    bias_regularization: float,
    members: int = 1,
) -> float:
    """One SGD pass over ratings ``lo:hi`` in a random order, updating in place.

    The order is ``shuffled_range(lo, hi)`` after ``seed_thread(seed)``
    (:mod:`mfdask.kernels.sgd_common`); the shuffled ratings are gathered into small
    contiguous buffers a chunk at a time and the factor rows prefetched a few ratings
    ahead, so the pass runs at the speed of the arithmetic, not of the cache misses.

    Parameters
    ----------
    users, items : (nnz,) int32
        Row of each rating in ``user_factors`` / ``item_factors``.
    ratings : (nnz,) float32
    lo, hi : int
        The slice this call visits (each once, shuffled by ``seed``).
    user_factors : (n_u, k) float32, C-contiguous
    item_factors : (n_i, k) float32, C-contiguous
    user_bias : (n_u,) float32
    item_bias : (n_i,) float32
    mu : float
        Global mean rating.
    learning_rate, bias_learning_rate : float
        γ and γ_b.
    regularization, bias_regularization : float
        λ and λ_b.

    Returns
    -------
    float
        Sum of squared errors e_ui² measured just before each step (the running training
        loss of the pass, as LIBMF and Surprise report it).
    """
    seed_thread(seed)
    order = shuffled_range(lo, hi)
    n = order.shape[0]
    buf_u = np.empty(CHUNK, dtype=users.dtype)
    buf_i = np.empty(CHUNK, dtype=items.dtype)
    buf_r = np.empty(CHUNK, dtype=np.float32)
    sse = 0.0
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        for t in range(m):
            idx = order[start + t]
            buf_u[t] = users[idx]
            buf_i[t] = items[idx]
            buf_r[t] = ratings[idx]
        sse += svd_steps(
            buf_u,
            buf_i,
            buf_r,
            m,
            user_factors,
            item_factors,
            user_bias,
            item_bias,
            np.float32(mu),
            np.float32(learning_rate),
            np.float32(bias_learning_rate),
            np.float32(regularization),
            np.float32(bias_regularization),
            members,
        )
    return sse


@njit(nogil=True, cache=True, fastmath=True)
def svd_predict(
    users: np.ndarray,
    items: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    mu: float,
    min_rating: float,
    max_rating: float,
) -> np.ndarray:
    """``mu + b_u + b_i + p_u . q_i`` for each ``(users[n], items[n])``, clipped.

    Returns
    -------
    (n,) float32
        Predictions clipped to ``[min_rating, max_rating]``.
    """
    n = users.shape[0]
    k = user_factors.shape[1]
    out = np.empty(n, dtype=np.float32)
    for m in range(n):
        u = users[m]
        i = items[m]
        dot = np.float32(0.0)
        for f in range(k):
            dot += user_factors[u, f] * item_factors[i, f]
        r = np.float32(mu) + user_bias[u] + item_bias[i] + dot
        out[m] = min(max(r, np.float32(min_rating)), np.float32(max_rating))
    return out


@njit(nogil=True, cache=True, fastmath=True)
def svd_squared_error(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_bias: np.ndarray,
    item_bias: np.ndarray,
    mu: float,
    min_rating: float,
    max_rating: float,
) -> float:
    """Sum over ratings of (r_ui - clipped prediction)², in float64."""
    n = users.shape[0]
    k = user_factors.shape[1]
    sse = 0.0
    for m in range(n):
        u = users[m]
        i = items[m]
        dot = np.float32(0.0)
        for f in range(k):
            dot += user_factors[u, f] * item_factors[i, f]
        r = np.float32(mu) + user_bias[u] + item_bias[i] + dot
        r = min(max(r, np.float32(min_rating)), np.float32(max_rating))
        err = ratings[m] - r
        sse += err * err
    return sse
