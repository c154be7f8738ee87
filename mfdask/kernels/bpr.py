"""BPR: Bayesian personalised ranking by SGD over (user, positive, negative) triples.

Rendle, Freudenthaler, Gantner and Schmidt-Thieme, "BPR: Bayesian Personalized Ranking
from Implicit Feedback", UAI 2009. For a triple ``(u, i, j)`` with ``i`` a positive of
``u`` and ``j`` not, the model scores ``x_uij = x_ui - x_uj = p_u · (q_i - q_j)`` and
maximises BPR-Opt (eq. 8 there), ``Σ ln σ(x_uij) - λ‖Θ‖²``. Written as a loss to
minimise per triple, with one L2 weight per role,

    ℓ(u, i, j) = -ln σ(x_uij) + ½ (λ_u ‖p_u‖² + λ_i ‖q_i‖² + λ_j ‖q_j‖²),

whose gradients (LearnBPR, fig. 4 there, with ``z = σ(-x_uij) = 1 - σ(x_uij)``) are

    ∂ℓ/∂p_u = -z (q_i - q_j) + λ_u p_u
    ∂ℓ/∂q_i = -z p_u + λ_i q_i
    ∂ℓ/∂q_j =  z p_u + λ_j q_j.

Every gradient is taken at the values from *before* the step.

Item bias. With ``use_bias`` the last factor column is a bias: the user's entry is
fixed at 1 (never updated, never regularised) and the item's entry is ``b_i``, so
``x_ui = p_u · q_i + b_i`` comes out of the same dot product (as in ``implicit``).

Hogwild. Several threads run :func:`bpr_sgd` over disjoint slices of one cell's
positives and write the shared factor arrays without locks
(Niu, Recht, Ré and Wright, NIPS 2011). Two threads may update the same item row at
once and lose one of the two updates; with thousands of rows the collisions are rare
and SGD tolerates them. This is intentional, and the reason a multi-threaded fit is
reproducible only up to those races.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mfdask.kernels.sampling import NO_BITS, NO_NEGATIVE, draw_negatives, seed_state
from mfdask.kernels.sgd_common import (
    CHUNK,
    PREFETCH_DISTANCE,
    prefetch_row,
    shuffled_positives,
)

_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
"""LLVM fast-math flags that let the factor loops vectorise (reassociated sums) while
keeping IEEE infinities and NaN, which the overflow-safe log-sigmoid relies on."""

N_STATS = 4
"""Length of the ``stats`` array :func:`bpr_sgd` accumulates into."""

STAT_TRIPLES = 0
"""``stats[0]``: triples updated (positives that found a negative)."""
STAT_LOSS = 1
"""``stats[1]``: Σ -ln σ(x_uij), before each step."""
STAT_PENALTY = 2
"""``stats[2]``: Σ ½(λ_u‖p_u‖² + λ_i‖q_i‖² + λ_j‖q_j‖²), before each step."""
STAT_CORRECT = 3
"""``stats[3]``: triples already ranked right (x_ui > x_uj) before their step: a sampled AUC."""


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def log_sigmoid_loss(x: float) -> float:
    """``-ln σ(x) = ln(1 + e^{-x})``, computed without overflow for any ``x``."""
    if x > 0.0:
        return np.log1p(np.exp(-x))
    return -x + np.log1p(np.exp(x))


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def sigmoid_and_loss(x: float) -> tuple[float, float]:
    """``σ(-x)`` and ``-ln σ(x)`` from a single ``exp(-|x|)``, without overflow."""
    e = np.exp(-abs(x))
    if x >= 0.0:
        return e / (1.0 + e), np.log1p(e)
    return 1.0 / (1.0 + e), -x + np.log1p(e)


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def step_weight(value: float, step_scale: float) -> float:
    """The weight of a step on an event of weight ``value``: ``log(1 + value) · step_scale``.

    The log keeps a play count of 10,000 from taking 1,000 times the steps of one of 10;
    ``step_scale = 1 / mean(log(1 + w))`` over the positives keeps the mean step the
    unweighted one, so the learning rate keeps its meaning.
    """
    return np.log1p(np.float64(value)) * step_scale


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def bpr_update(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    u: int,
    i: int,
    j: int,
    user_dims: int,
    learning_rate: float,
    reg_user: float,
    reg_pos: float,
    reg_neg: float,
    sample_weight: float = 1.0,
) -> tuple[float, float, float]:
    """One BPR SGD step on rows ``u``, ``i``, ``j`` in place.

    Parameters
    ----------
    user_factors : (n_users, k) float32, C-contiguous
    item_factors : (n_items, k) float32, C-contiguous
        Row ``u`` of the first and rows ``i`` (positive), ``j`` (negative) of the
        second are updated. ``i != j`` is required.
    user_dims : int
        User columns that are trained: ``k`` or, with a bias column, ``k - 1`` (the
        user's bias entry stays at 1).
    sample_weight : float
        Scales the data term's gradient (``s · -ln σ(x_uij)``, the L2 terms unscaled):
        LightFM's ``sample_weight``. 1 is the unweighted step, exactly.

    Returns
    -------
    x_uij, loss, penalty : float
        ``x_ui - x_uj``, ``-ln σ(x_uij)`` and ``½ Σ λ‖·‖²``, all before the step.
    """
    k = item_factors.shape[1]
    p = user_factors[u]
    qi = item_factors[i]
    qj = item_factors[j]
    # x_uij = Σ_f p_uf (q_if - q_jf) and the squared norms, in the factors' float32.
    # Branch-free loops over contiguous rows, so that they vectorise.
    x = np.float32(0.0)
    qi2 = np.float32(0.0)
    qj2 = np.float32(0.0)
    for f in range(k):
        a = qi[f]
        b = qj[f]
        x += p[f] * (a - b)
        qi2 += a * a
        qj2 += b * b
    pu2 = np.float32(0.0)
    for f in range(user_dims):
        pu2 += p[f] * p[f]
    z64, loss = sigmoid_and_loss(np.float64(x))
    z = np.float32(z64) * np.float32(sample_weight)  # s · σ(-x_uij)
    lr = np.float32(learning_rate)
    ru = np.float32(reg_user)
    ri = np.float32(reg_pos)
    rj = np.float32(reg_neg)
    # Descend ℓ with the gradients of the module docstring, every factor read before
    # it is written. The user's trained columns first, then (with a bias column) the
    # item-only ones.
    for f in range(user_dims):
        pu = p[f]
        a = qi[f]
        b = qj[f]
        p[f] = pu + lr * (z * (a - b) - ru * pu)
        qi[f] = a + lr * (z * pu - ri * a)
        qj[f] = b - lr * (z * pu + rj * b)
    for f in range(user_dims, k):
        pu = p[f]
        a = qi[f]
        b = qj[f]
        qi[f] = a + lr * (z * pu - ri * a)
        qj[f] = b - lr * (z * pu + rj * b)
    penalty = 0.5 * (reg_user * pu2 + reg_pos * qi2 + reg_neg * qj2)
    return np.float64(x), loss, penalty


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def bpr_sgd(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    threshold: float,
    lo: int,
    hi: int,
    seed: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    item_block: int,
    n_blocks: int,
    n_block_items: int,
    user_dims: int,
    learning_rate: float,
    reg_user: float,
    reg_pos: float,
    reg_neg: float,
    stats: np.ndarray,
    member_bits: np.ndarray = NO_BITS,
    step_scale: float = 0.0,
    negative_samples: int = 1,
) -> None:
    """One BPR pass, in a random order and in place, over the positives among ratings ``lo:hi``.

    Parameters
    ----------
    users, items : (nnz,) int32
        The cell's ratings: local rows of ``user_factors`` / ``item_factors``.
    values : (nnz,) float32
        Their ratings; those ``>= threshold`` are the positives that get a step.
    threshold : float
        The positive threshold. Ratings below it are skipped but stay in the users'
        rows, so an item the user rated is never drawn as a negative: negatives are
        items the user has not interacted with at all.
    lo, hi : int
        The slice this call visits, each positive once, shuffled by ``seed``
        (:func:`~mfdask.kernels.sgd_common.shuffled_positives`).
    seed : int
        Seeds both the visiting order and the negative draws.
    indptr : (n_local_users + 1,) int64
    indices : (nnz_user_block,) int32
        The user block's whole CSR rows (global items, ascending): membership lists.
    user_factors : (n_local_users, k) float32
    item_factors : (n_block_items, k) float32
        The user block's and the held item block's factors (local rows).
    item_block, n_blocks, n_block_items : int
        Which items are held: global ``l * n_blocks + item_block``, ``l < n_block_items``;
        negatives are drawn among them.
    user_dims, learning_rate, reg_user, reg_pos, reg_neg
        See :func:`bpr_update`.
    stats : (N_STATS,) float64
        Accumulates this call's sums (see the ``STAT_*`` constants).
    member_bits : (n,) uint8, optional
        The cell's bitset of which held items each user rated (``Cell.member_bits``):
        the same negatives, drawn without binary searches. Empty searches ``indices``.
    step_scale : float
        0: every step unweighted. Else the step of rating ``r`` is weighted by
        ``log(1 + r) · step_scale`` (:func:`step_weight`; the caller's ``step_scale``
        makes the weights average 1 over the data).
    negative_samples : int
        Negatives drawn per positive; the one the user scores highest is stepped on
        (dynamic negative sampling, Zhang, Chen, Wang and Yu, "Optimizing Top-N
        Collaborative Filtering via Dynamic Negative Item Sampling", SIGIR 2013): most
        uniform negatives are already ranked far below the positive and teach little.
        1 is plain BPR, exactly (the same draws).
    """
    state = seed_state(seed)
    # Negatives first, in the ratings' own (user-ascending) order: the draws do not
    # depend on the factors, and each user's CSR row stays in cache across its draws.
    negatives = np.empty(max(hi - lo, 0), dtype=np.int32)
    state = draw_negatives(
        state, users, values, threshold, lo, hi, indptr, indices,
        item_block, n_blocks, n_block_items, negatives, member_bits,
    )  # fmt: skip
    extra = np.empty((max(negative_samples - 1, 0), max(hi - lo, 0)), dtype=np.int32)
    for s in range(negative_samples - 1):
        state = draw_negatives(
            state, users, values, threshold, lo, hi, indptr, indices,
            item_block, n_blocks, n_block_items, extra[s], member_bits,
        )  # fmt: skip
    k = item_factors.shape[1]
    state, order = shuffled_positives(state, values, threshold, lo, hi)
    n = order.shape[0]
    buf_u = np.empty(CHUNK, dtype=np.int64)
    buf_i = np.empty(CHUNK, dtype=np.int64)
    buf_j = np.empty(CHUNK, dtype=np.int64)
    buf_w = np.ones(CHUNK, dtype=np.float64)
    triples = 0
    loss = 0.0
    penalty = 0.0
    correct = 0
    # Each visited positive (u, i) with its negative j gets one step on
    # -ln σ(x_ui - x_uj) + ½(λ_u‖p_u‖² + λ_i‖q_i‖² + λ_j‖q_j‖²), in the shuffled order:
    # a chunk of triples is gathered into contiguous buffers, then stepped on with the
    # rows of the triple PREFETCH_DISTANCE ahead on their way into the cache.
    for start in range(0, n, CHUNK):
        filled = 0
        for t in range(start, min(start + CHUNK, n)):
            pos = order[t]
            j = negatives[pos - lo]
            if j == NO_NEGATIVE:
                continue  # the user owns the whole block: nothing to rank against
            if negative_samples > 1:
                # The candidate the user scores highest, with the factors as they are.
                u = users[pos]
                best = np.float32(0.0)
                for f in range(k):
                    best += user_factors[u, f] * item_factors[j, f]
                for s in range(negative_samples - 1):
                    c = extra[s, pos - lo]
                    x = np.float32(0.0)
                    for f in range(k):
                        x += user_factors[u, f] * item_factors[c, f]
                    if x > best:
                        best, j = x, c
            buf_u[filled] = users[pos]
            buf_i[filled] = items[pos]
            buf_j[filled] = j
            if step_scale > 0.0:
                buf_w[filled] = step_weight(values[pos], step_scale)
            filled += 1
        for t in range(filled):
            ahead = t + PREFETCH_DISTANCE
            if ahead < filled:
                prefetch_row(user_factors, buf_u[ahead])
                prefetch_row(item_factors, buf_i[ahead])
                prefetch_row(item_factors, buf_j[ahead])
            x, ell, pen = bpr_update(
                user_factors,
                item_factors,
                buf_u[t],
                buf_i[t],
                buf_j[t],
                user_dims,
                learning_rate,
                reg_user,
                reg_pos,
                reg_neg,
                buf_w[t],
            )
            loss += ell
            penalty += pen
            if x > 0.0:
                correct += 1
        triples += filled
    stats[STAT_TRIPLES] += triples
    stats[STAT_LOSS] += loss
    stats[STAT_PENALTY] += penalty
    stats[STAT_CORRECT] += correct
