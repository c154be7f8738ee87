"""Fold-in kernels: one user's factors from a history, with the item side held fixed.

A fitted model can score a user it never saw once that user's factors are known. With
the item factors ``Y`` (and item biases) fixed, the user side of every model is a small
problem per user, independent of every other user:

- ALS: the normal equations of one half-step, solved exactly. There is no kernel here
  for it: :func:`mfdask.kernels.als.solve_rows_cholesky` *is* that solve, over the CSR
  rows of the histories instead of a training block.
- SVD: ``min Σ_i (r_ui - mu - b_u - b_i - p_u · q_i)² + λ|p_u|² + λ_b b_u²`` by the
  training SGD steps restricted to ``p_u`` and ``b_u`` (:func:`svd_fold_in`).
- BPR: ``Σ -ln σ(p_u · (q_i - q_j)) + ½ λ_u |p_u|²`` over sampled triples by SGD on
  ``p_u`` alone (:func:`bpr_fold_in`).
- WARP: the rank-weighted hinge by SGD or Adagrad on ``p_u`` alone (:func:`warp_fold_in`).

Every kernel loops over the rows of a CSR of histories (``indptr``, ``indices`` =
dense item indices ascending per row, ``values`` = the rating or weight), so a batch of
a million users is one call. Each row draws its starting factors and its visiting order
from its own generator state ``seeds[row]`` (:func:`mfdask.kernels.sampling.seed_state`),
derived by the caller from the user's id: a user's factors do not depend on which other
users are folded in with it, nor on how the batch is cut into partitions.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mfdask.kernels.bpr import _FASTMATH, sigmoid_and_loss
from mfdask.kernels.sampling import (
    NO_NEGATIVE,
    contains_sorted,
    randbelow,
    sample_negative,
    seed_state,
    splitmix64,
)
from mfdask.kernels.sgd_common import shuffle_in_place
from mfdask.kernels.warp import MAX_RANK_WEIGHT

_TWO_POW_53 = float(2**53)


@njit(nogil=True, cache=True, inline="always")
def _uniform(state: np.uint64) -> tuple[np.uint64, float]:
    """A uniform float64 in the open interval (0, 1) (top 53 bits plus half an ulp)."""
    state, bits = splitmix64(state)
    return state, ((bits >> np.uint64(11)) + 0.5) / _TWO_POW_53


@njit(nogil=True, cache=True)
def gaussian(state: np.uint64) -> tuple[np.uint64, float]:
    """A standard normal number (Box-Muller on two uniforms); returns the advanced state."""
    state, u1 = _uniform(state)
    state, u2 = _uniform(state)
    return state, np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@njit(nogil=True, cache=True)
def _start_row(state: np.uint64, out: np.ndarray, row: int, dims: int, scale: float) -> np.uint64:
    """``out[row, :dims] ~ N(0, scale²)``, the model's initial distribution."""
    for f in range(dims):
        state, z = gaussian(state)
        out[row, f] = np.float32(z * scale)
    return state


@njit(nogil=True, cache=True)
def _row_order(lo: int, hi: int) -> np.ndarray:
    order = np.empty(hi - lo, dtype=np.int64)
    for t in range(hi - lo):
        order[t] = lo + t
    return order


@njit(nogil=True, cache=True, fastmath=True)
def svd_fold_in(
    indptr: np.ndarray,
    indices: np.ndarray,
    ratings: np.ndarray,
    item_factors: np.ndarray,
    item_bias: np.ndarray,
    mu: float,
    rates: np.ndarray,
    bias_rates: np.ndarray,
    regularization: float,
    bias_regularization: float,
    init_scale: float,
    seeds: np.ndarray,
    user_factors: np.ndarray,
    user_bias: np.ndarray,
) -> None:
    """SVD user factors and biases of every CSR row by SGD with the items fixed.

    Per row ``u``: ``p_u ~ N(0, init_scale²)``, ``b_u = 0`` (as ``fit`` starts), then for
    each epoch ``e`` (``len(rates)`` of them) a pass over the row's ratings in a fresh
    random order with the training step (:mod:`mfdask.kernels.sgd`) on the user side only::

        e_ui = r_ui - (mu + b_u + b_i + p_u · q_i)
        b_u <- b_u + rates_b[e] (e_ui - λ_b b_u)
        p_u <- p_u + rates[e] (e_ui q_i - λ p_u)

    Parameters
    ----------
    indptr : (n_rows + 1,) int64
    indices : (nnz,) int32 or int64
        Dense item indices.
    ratings : (nnz,) float32
    item_factors : (n_items, k) float32
    item_bias : (n_items,) float32
    mu : float
        The model's global mean.
    rates, bias_rates : (epochs,) float64
        γ and γ_b of each epoch (the fit's schedule).
    regularization, bias_regularization : float
        λ and λ_b.
    init_scale : float
        Standard deviation of the starting factors.
    seeds : (n_rows,) uint64
        One generator seed per row.
    user_factors : (n_rows, k) float32
    user_bias : (n_rows,) float32
        Outputs, overwritten.
    """
    k = item_factors.shape[1]
    reg = np.float32(regularization)
    reg_b = np.float32(bias_regularization)
    m = np.float32(mu)
    for row in range(indptr.shape[0] - 1):
        state = seed_state(seeds[row])
        state = _start_row(state, user_factors, row, k, init_scale)
        user_bias[row] = 0.0
        lo = indptr[row]
        hi = indptr[row + 1]
        order = _row_order(lo, hi)
        p = user_factors[row]
        for e in range(rates.shape[0]):
            lr = np.float32(rates[e])
            lr_b = np.float32(bias_rates[e])
            state = shuffle_in_place(state, order)
            for t in range(hi - lo):
                j = order[t]
                q = item_factors[indices[j]]
                dot = np.float32(0.0)
                for f in range(k):
                    dot += p[f] * q[f]
                err = ratings[j] - (m + user_bias[row] + item_bias[indices[j]] + dot)
                user_bias[row] += lr_b * (err - reg_b * user_bias[row])
                for f in range(k):
                    p[f] += lr * (err * q[f] - reg * p[f])


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def svd_member_fold_in(
    indptr: np.ndarray,
    indices: np.ndarray,
    ratings: np.ndarray,
    item_factors: np.ndarray,
    item_bias: np.ndarray,
    mu: float,
    rates: np.ndarray,
    bias_rates: np.ndarray,
    regularization: float,
    bias_regularization: float,
    init_scale: float,
    seeds: np.ndarray,
    user_factors: np.ndarray,
    user_bias: np.ndarray,
    members: int,
) -> None:
    """:func:`svd_fold_in` of an SVD fitted with ``members > 1``: each member's columns
    step on the member's own error and the bias on the mean error, as in training
    (:func:`mfdask.kernels.sgd._member_steps`); ``init_scale`` is the stored factors'."""
    k = item_factors.shape[1]
    w = k // members
    scale = np.float32(members)
    inv = np.float32(1.0 / members)
    reg = np.float32(regularization)
    reg_b = np.float32(bias_regularization)
    m = np.float32(mu)
    for row in range(indptr.shape[0] - 1):
        state = seed_state(seeds[row])
        state = _start_row(state, user_factors, row, k, init_scale)
        user_bias[row] = 0.0
        lo = indptr[row]
        hi = indptr[row + 1]
        order = _row_order(lo, hi)
        p = user_factors[row]
        for e in range(rates.shape[0]):
            lr = np.float32(rates[e])
            lr_b = np.float32(bias_rates[e])
            state = shuffle_in_place(state, order)
            for t in range(hi - lo):
                j = order[t]
                q = item_factors[indices[j]]
                base = ratings[j] - (m + user_bias[row] + item_bias[indices[j]])
                mean_err = np.float32(0.0)
                for s in range(members):
                    dot = np.float32(0.0)
                    for f in range(s * w, (s + 1) * w):
                        dot += p[f] * q[f]
                    err = base - scale * dot
                    mean_err += err
                    for f in range(s * w, (s + 1) * w):
                        p[f] += lr * (err * q[f] - reg * p[f])
                user_bias[row] += lr_b * (mean_err * inv - reg_b * user_bias[row])


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def bpr_fold_in(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    threshold: float,
    item_factors: np.ndarray,
    user_dims: int,
    rates: np.ndarray,
    reg_user: float,
    init_scale: float,
    seeds: np.ndarray,
    user_factors: np.ndarray,
) -> None:
    """BPR user factors of every CSR row by SGD on ``p_u`` with the items fixed.

    Per row: ``p_u ~ N(0, init_scale²)`` on the first ``user_dims`` columns (with an item
    bias column the user's last entry is fixed at 1, as in training), then each epoch
    visits the row's positives (``values >= threshold``) in a fresh random order; each
    gets a negative ``j`` drawn uniformly from the items *not* in the row (every item of
    the history counts as seen, positive or not, as in training) and one step::

        z = σ(-p_u · (q_i - q_j))
        p_u <- p_u + rates[e] (z (q_i - q_j) - λ_u p_u)

    ``item_factors`` is ``(n_items, k)`` float32 including the bias column; ``rates``
    ``(epochs,)`` the fit's per-epoch learning rates; ``user_factors`` ``(n_rows, k)``
    the output. A row without a positive keeps its starting factors.
    """
    k = item_factors.shape[1]
    n_items = item_factors.shape[0]
    ru = np.float32(reg_user)
    diff = np.empty(k, dtype=np.float32)
    for row in range(indptr.shape[0] - 1):
        state = seed_state(seeds[row])
        state = _start_row(state, user_factors, row, user_dims, init_scale)
        for f in range(user_dims, k):
            user_factors[row, f] = 1.0
        lo = indptr[row]
        hi = indptr[row + 1]
        order = _positives(values, threshold, lo, hi)
        p = user_factors[row]
        for e in range(rates.shape[0]):
            lr = np.float32(rates[e])
            state = shuffle_in_place(state, order)
            for t in range(order.shape[0]):
                i = indices[order[t]]
                state, j = sample_negative(state, indices, lo, hi, 0, 1, n_items)
                if j == NO_NEGATIVE:
                    break  # the user has every item: nothing to rank against
                x = np.float32(0.0)
                for f in range(k):
                    diff[f] = item_factors[i, f] - item_factors[j, f]
                    x += p[f] * diff[f]
                z64, _ = sigmoid_and_loss(np.float64(x))
                z = np.float32(z64)
                for f in range(user_dims):
                    p[f] += lr * (z * diff[f] - ru * p[f])


@njit(nogil=True, cache=True)
def _positives(values: np.ndarray, threshold: float, lo: int, hi: int) -> np.ndarray:
    count = 0
    for p in range(lo, hi):
        if values[p] >= threshold:
            count += 1
    out = np.empty(count, dtype=np.int64)
    count = 0
    for p in range(lo, hi):
        if values[p] >= threshold:
            out[count] = p
            count += 1
    return out


@njit(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def warp_fold_in(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    threshold: float,
    item_factors: np.ndarray,
    user_dims: int,
    rates: np.ndarray,
    reg_user: float,
    max_sampled: int,
    adagrad: bool,
    init_scale: float,
    seeds: np.ndarray,
    user_factors: np.ndarray,
    max_weight: float = MAX_RANK_WEIGHT,
) -> None:
    """WARP user factors of every CSR row by SGD or Adagrad on ``p_u``, items fixed.

    Per row: the start of :func:`bpr_fold_in`, then each epoch visits the positives in a
    fresh random order; for each, items are drawn uniformly from the whole catalogue
    until one not in the row violates the margin (``x_uj > x_ui - 1``) or
    ``max_sampled`` draws are spent; a violator at draw ``N`` weighs
    ``L = min(max_weight, ln max(1, ⌊(n_items - 1) / N⌋))`` (:mod:`mfdask.kernels.warp`,
    one block) and
    the user moves along ``g = λ_u p_u - L (q_i - q_j)``: by ``-rates[e] g`` (SGD), or with
    Adagrad by ``-rates[e] g / √G`` with ``G`` the row's running sum of ``g²`` per
    coordinate, starting at 1 as in training. k-OS is not used here: every positive of
    the history is stepped on as itself.
    """
    k = item_factors.shape[1]
    n_items = item_factors.shape[0]
    ru = np.float32(reg_user)
    sq = np.empty(k, dtype=np.float32)
    for row in range(indptr.shape[0] - 1):
        state = seed_state(seeds[row])
        state = _start_row(state, user_factors, row, user_dims, init_scale)
        for f in range(user_dims, k):
            user_factors[row, f] = 1.0
        for f in range(k):
            sq[f] = 1.0
        lo = indptr[row]
        hi = indptr[row + 1]
        order = _positives(values, threshold, lo, hi)
        p = user_factors[row]
        for e in range(rates.shape[0]):
            lr = np.float32(rates[e])
            state = shuffle_in_place(state, order)
            for t in range(order.shape[0]):
                i = indices[order[t]]
                x_ui = np.float32(0.0)
                for f in range(k):
                    x_ui += p[f] * item_factors[i, f]
                for tries in range(1, max_sampled + 1):
                    state, j = randbelow(state, n_items)
                    x_uj = np.float32(0.0)
                    for f in range(k):
                        x_uj += p[f] * item_factors[j, f]
                    if x_uj <= x_ui - 1.0 or contains_sorted(indices, lo, hi, j):
                        continue
                    w = np.float32(
                        min(max_weight, np.log(max(1.0, np.floor((n_items - 1) / tries))))
                    )
                    for f in range(user_dims):
                        g = ru * p[f] - w * (item_factors[i, f] - item_factors[j, f])
                        if adagrad:
                            sq[f] += g * g
                            p[f] -= lr * g / np.sqrt(sq[f])
                        else:
                            p[f] -= lr * g
                    break
