"""WARP: weighted approximate-rank pairwise loss by SGD or Adagrad, with an optional k-OS positive.

Weston, Bengio and Usunier, "WSABIE: Scaling Up To Large Vocabulary Image Annotation",
IJCAI 2011, sec. 3 (WARP); k-OS from Weston, Yee and Weiss, "Learning to Rank
Recommendations with the k-Order Statistic Loss", RecSys 2013. As in LightFM:

1. For a positive ``(u, i)`` draw items ``j`` until one that ``u`` has not interacted
   with violates the margin, ``x_uj > x_ui - 1``, or ``max_sampled`` draws are spent
   (then nothing is updated). Only a violator is looked up in the user's row (a binary
   search), so the draws that do not violate, most of them, cost one dot product; a
   draw of an item the user rated counts as a draw, as in LightFM.
2. If the violator came at draw ``N``, the rank of ``i`` among the ``n_items - 1``
   others is estimated as ``⌊(n_items - 1) / N⌋`` (eq. 6 of WSABIE: the number of
   draws until a violator is geometric with mean ``(n_items - 1) / rank``).
3. Descend ``L(rank) · (1 - x_ui + x_uj) + ½(λ_u‖p_u‖² + λ_i‖q_i‖² + λ_j‖q_j‖²)`` with
   ``L(r) = ln r`` (the ``Σ_{k≤r} 1/k`` of WSABIE's eq. 3, up to a constant; LightFM's
   choice, floored at ``ln 1 = 0`` and, as in LightFM, clipped at ``max_weight``,
   default 10: :func:`warp_weight`). Gradients, all at the values from *before* the step:

       ∂/∂p_u = -L (q_i - q_j) + λ_u p_u
       ∂/∂q_i = -L p_u + λ_i q_i
       ∂/∂q_j =  L p_u + λ_j q_j.

Step. Plain SGD moves every coordinate by ``-learning_rate · g`` (:func:`warp_update`).
Adagrad (Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online Learning and
Stochastic Optimization", JMLR 12, 2011; LightFM's default ``learning_schedule``) keeps
per coordinate the sum ``G`` of its squared gradients, starting at 1, and moves it by
``-learning_rate · g / √G`` (:func:`warp_update_adagrad`): the coordinates of popular
items and heavy users, stepped on at every few draws, settle quickly, while those of the
long tail keep steps near ``learning_rate``. Its L2 term is part of ``g`` (LightFM
instead shrinks every row lazily after each step).

Rank estimate from an item block. Inside the DSGD engine negatives come from the item
block the worker holds, ``n_block_items`` of the catalogue's ``n_items``. A draw ``N``
then estimates the violators *in the block* as ``⌊(n_block_items - 1) / N⌋``; since the
residue blocking spreads items over blocks regardless of their scores, the block is a
uniform sample of the catalogue and the catalogue-wide rank is that count scaled by
``n_items / n_block_items`` (:func:`warp_rank`). With one block this is exactly
LightFM's ``⌊(n_items - 1) / N⌋``. Without the rescale, a fit with ``W`` blocks would
under-weight every violation by ``ln W`` and push the weights of well-ranked
positives to zero.

k-OS. With ``kos_n > 0`` the positive is not the visited rating itself: ``kos_n``
positives of the same user are drawn (with replacement) from the cell's row, and the
one with the ``kos_k``-th largest score is used, which focuses the updates on a user's
worse-ranked positives (LightFM's ``warp-kos`` with ``k`` and ``n``). Each visited
rating still gives one update attempt, so an epoch costs the same number of steps.

Hogwild races between threads on shared item rows are intentional (see
:mod:`mfdask.kernels.bpr`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mfdask.kernels.bpr import _FASTMATH, step_weight
from mfdask.kernels.sampling import contains_sorted, randbelow, seed_state
from mfdask.kernels.sgd_common import (
    PREFETCH_DISTANCE,
    prefetch_row,
    shuffled_positives,
    weighted_positives,
)

N_STATS = 5
"""Length of the ``stats`` array :func:`warp_sgd` accumulates into."""

STAT_POSITIVES = 0
"""``stats[0]``: positives visited that had a negative in the block."""
STAT_LOSS = 1
"""``stats[1]``: Σ L(rank)·(1 - x_ui + x_uj) over updates, before each step."""
STAT_PENALTY = 2
"""``stats[2]``: Σ ½(λ_u‖p_u‖² + λ_i‖q_i‖² + λ_j‖q_j‖²) over updates, before each step."""
STAT_CORRECT = 3
"""``stats[3]``: positives scored above their first sampled negative: a sampled AUC."""
STAT_SAMPLED = 4
"""``stats[4]``: negatives drawn in total (the cost of the epoch)."""


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def warp_rank(tries: int, n_block_items: int, n_items: int) -> float:
    """Estimated rank of a positive whose first violator in the block came at draw ``tries``.

    ``⌊(n_block_items - 1) / tries⌋ · n_items / n_block_items``: the violators in the
    block, scaled from the block to the catalogue (see the module docstring).
    """
    in_block = np.floor((n_block_items - 1) / tries)
    return in_block * (n_items / n_block_items)


MAX_RANK_WEIGHT = 10.0
"""LightFM's clip of the rank weight (``MAX_LOSS`` in ``_lightfm_fast.pyx``)."""


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def warp_weight(tries: int, n_block_items: int, n_items: int, max_weight: float) -> float:
    """``L(rank) = min(max_weight, ln max(1, rank))`` for :func:`warp_rank`.

    The clip is LightFM's (``MAX_LOSS = 10`` "for numerical stability"): ``ln rank``
    exceeds 10 only for ranks above ``e^10 ≈ 22,026``, so it matters for catalogues
    larger than that, where a positive whose first draw violates would otherwise step
    with a weight up to ``ln(n_items - 1)``.
    """
    return min(max_weight, np.log(max(1.0, warp_rank(tries, n_block_items, n_items))))


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def dot(a: np.ndarray, ra: int, b: np.ndarray, rb: int) -> float:
    """``a[ra] · b[rb]``."""
    s = np.float32(0.0)
    for f in range(a.shape[1]):
        s += a[ra, f] * b[rb, f]
    return np.float64(s)


@njit(nogil=True, cache=True, fastmath=_FASTMATH, inline="always")
def warp_update(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    u: int,
    i: int,
    j: int,
    weight: float,
    user_dims: int,
    learning_rate: float,
    reg_user: float,
    reg_pos: float,
    reg_neg: float,
) -> float:
    """One WARP SGD step with rank weight ``weight`` on rows ``u``, ``i``, ``j`` in place.

    Returns ``½ Σ λ‖·‖²`` before the step. Factors are read before they are written, so
    the user moves along the item vectors from before the step (and vice versa).
    """
    k = item_factors.shape[1]
    w = np.float32(weight)
    lr = np.float32(learning_rate)
    ru = np.float32(reg_user)
    ri = np.float32(reg_pos)
    rj = np.float32(reg_neg)
    pu2 = np.float32(0.0)
    qi2 = np.float32(0.0)
    qj2 = np.float32(0.0)
    for f in range(k):
        pu = user_factors[u, f]
        qi = item_factors[i, f]
        qj = item_factors[j, f]
        if f < user_dims:
            pu2 += pu * pu
            user_factors[u, f] = pu + lr * (w * (qi - qj) - ru * pu)
        qi2 += qi * qi
        qj2 += qj * qj
        item_factors[i, f] = qi + lr * (w * pu - ri * qi)
        item_factors[j, f] = qj - lr * (w * pu + rj * qj)
    return 0.5 * (reg_user * pu2 + reg_pos * qi2 + reg_neg * qj2)


@njit(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy", inline="always")
def adagrad_step(
    x: np.ndarray, sq_grad: np.ndarray, grad: np.ndarray, n: int, lr: float, decay: float = 1.0
) -> None:
    """``G ← ρ G + g²; x ← x - lr · g / √G`` on the first ``n`` entries of a row, in place.

    ``decay`` is ρ: 1 is Adagrad (the sum grows with every step of the row); below 1 the
    sum forgets, so that a row's step stops shrinking once it has had about
    ``1 / (1 - ρ)`` steps (RMSprop's running mean, without its ``1 - ρ`` on ``g²``, so
    that the first steps are Adagrad's). One row and its accumulator per call (two
    pointers the vectoriser can check against each other cheaply, where a loop over
    three rows and their three accumulators makes it give up and leave every square
    root scalar).
    """
    rate = np.float32(lr)
    if decay >= 1.0:
        for f in range(n):
            g = grad[f]
            acc = sq_grad[f] + g * g
            sq_grad[f] = acc
            x[f] = x[f] - rate * g / np.sqrt(acc)
    else:
        rho = np.float32(decay)
        for f in range(n):
            g = grad[f]
            acc = rho * sq_grad[f] + g * g
            sq_grad[f] = acc
            x[f] = x[f] - rate * g / np.sqrt(acc)


@njit(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy", inline="always")
def warp_update_adagrad(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_sq_grad: np.ndarray,
    item_sq_grad: np.ndarray,
    u: int,
    i: int,
    j: int,
    weight: float,
    user_dims: int,
    learning_rate: float,
    reg_user: float,
    reg_pos: float,
    reg_neg: float,
    grads: np.ndarray,
    decay: float = 1.0,
) -> float:
    """One WARP Adagrad step with rank weight ``weight`` on rows ``u``, ``i``, ``j`` in place.

    Per coordinate ``x`` with gradient ``g`` (the module docstring's, L2 term included)
    and accumulator ``G`` (same shape as the factors, initialised to 1):
    ``G ← G + g²``, then ``x ← x - learning_rate · g / √G`` (Duchi, Hazan and Singer,
    JMLR 2011, eq. 1 with a diagonal matrix; the initial 1 plays the part of their δ and
    caps the first step of a coordinate at ``learning_rate``). Rarely updated rows and
    coordinates keep large steps while frequent ones (popular items, heavy users) settle.
    ``grads`` is ``(3, k) float32`` scratch: the three gradients are computed there
    first from the values before the step, then applied row by row
    (:func:`adagrad_step`, whose ``decay`` ρ < 1 makes the sums forget: ``G ← ρ G + g²``).
    Returns ``½ Σ λ‖·‖²`` before the step.
    """
    k = item_factors.shape[1]
    w = np.float32(weight)
    ru = np.float32(reg_user)
    ri = np.float32(reg_pos)
    rj = np.float32(reg_neg)
    p = user_factors[u]
    qi = item_factors[i]
    qj = item_factors[j]
    gu = grads[0]
    gi = grads[1]
    gj = grads[2]
    pu2 = np.float32(0.0)
    qi2 = np.float32(0.0)
    qj2 = np.float32(0.0)
    for f in range(k):
        pf = p[f]
        a = qi[f]
        b = qj[f]
        qi2 += a * a
        qj2 += b * b
        gu[f] = ru * pf - w * (a - b)
        gi[f] = ri * a - w * pf
        gj[f] = rj * b + w * pf
    for f in range(user_dims):  # a user's bias entry (1) is neither trained nor penalised
        pu2 += p[f] * p[f]
    adagrad_step(p, user_sq_grad[u], gu, user_dims, learning_rate, decay)
    adagrad_step(qi, item_sq_grad[i], gi, k, learning_rate, decay)
    adagrad_step(qj, item_sq_grad[j], gj, k, learning_rate, decay)
    return 0.5 * (reg_user * pu2 + reg_pos * qi2 + reg_neg * qj2)


@njit(nogil=True, cache=True)
def user_run(users: np.ndarray, u: int) -> tuple[int, int]:
    """``lo, hi`` with ``users[lo:hi] == u`` in the ascending array ``users``."""
    lo = 0
    hi = users.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if users[mid] < u:
            lo = mid + 1
        else:
            hi = mid
    start = lo
    hi = users.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if users[mid] <= u:
            lo = mid + 1
        else:
            hi = mid
    return start, lo


@njit(nogil=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def warp_sgd(
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
    user_sq_grad: np.ndarray,
    item_sq_grad: np.ndarray,
    adagrad: bool,
    item_block: int,
    n_blocks: int,
    n_block_items: int,
    n_items: int,
    user_dims: int,
    learning_rate: float,
    reg_user: float,
    reg_pos: float,
    reg_neg: float,
    max_sampled: int,
    kos_k: int,
    kos_n: int,
    stats: np.ndarray,
    max_weight: float = MAX_RANK_WEIGHT,
    step_scale: float = 0.0,
    weighted_visits: bool = False,
    accumulator_decay: float = 1.0,
    popular_negatives: float = 0.0,
) -> None:
    """One WARP pass, in a random order and in place, over the positives among ratings ``lo:hi``.

    Arguments as for :func:`mfdask.kernels.bpr.bpr_sgd`, plus ``user_sq_grad`` and
    ``item_sq_grad`` (Adagrad's sums, shaped like the factors; read only when
    ``adagrad``, else any array), ``adagrad`` (:func:`warp_update_adagrad` rather than
    :func:`warp_update`), ``n_items`` (the whole
    catalogue, for :func:`warp_rank`), ``max_sampled`` (draws per positive),
    ``kos_k``/``kos_n`` (k-OS; ``kos_n = 0`` for plain WARP) and ``max_weight`` (the
    clip of the rank weight, :func:`warp_weight`). ``stats`` is ``(N_STATS,) float64``
    (see the ``STAT_*`` constants). ``step_scale > 0`` multiplies the rank weight of the
    visited rating's step by :func:`mfdask.kernels.bpr.step_weight` of its value
    (LightFM's ``sample_weight``); 0 leaves every step unweighted. With
    ``weighted_visits`` the scale weights the visits instead: each positive is visited
    :func:`~mfdask.kernels.sgd_common.weighted_positives` times (``log(1 + w) ·
    step_scale`` on average) with unweighted steps. ``accumulator_decay`` is Adagrad's
    ρ (:func:`adagrad_step`; 1: plain Adagrad).
    """
    if n_block_items <= 0:
        return  # no item in the held block: nothing to rank against
    state = seed_state(seed)
    if weighted_visits and step_scale > 0.0:
        state, order = weighted_positives(state, values, threshold, lo, hi, step_scale)
        step_scale = 0.0  # the weight is in how often a positive comes, not in its step
    else:
        state, order = shuffled_positives(state, values, threshold, lo, hi)
    scores = np.empty(max(kos_n, 1), dtype=np.float64)
    picks = np.empty(max(kos_n, 1), dtype=np.int64)
    grads = np.empty((3, item_factors.shape[1]), dtype=np.float32)
    visited = 0
    loss = 0.0
    penalty = 0.0
    correct = 0
    sampled = 0
    n = order.shape[0]
    for t in range(n):
        if t + PREFETCH_DISTANCE < n:
            ahead = order[t + PREFETCH_DISTANCE]
            prefetch_row(user_factors, users[ahead])
            prefetch_row(item_factors, items[ahead])
        pos = order[t]
        u = users[pos]  # local user row: of the factors and of the shard's CSR alike
        start = indptr[u]
        stop = indptr[u + 1]
        i = items[pos]
        if kos_n > 0:
            # k-OS: the kos_k-th best of kos_n positives of u drawn from this cell.
            # (A draw that lands on a non-positive rating keeps the visited positive.)
            run_lo, run_hi = user_run(users, u)
            for s in range(kos_n):
                state, r = randbelow(state, run_hi - run_lo)
                picks[s] = items[run_lo + r] if values[run_lo + r] >= threshold else i
                scores[s] = dot(user_factors, u, item_factors, picks[s])
            chosen = np.argsort(-scores[:kos_n])[min(kos_k, kos_n) - 1]
            i = picks[chosen]
            x_ui = scores[chosen]
        else:
            x_ui = dot(user_factors, u, item_factors, i)
        # Draw items of the held block until a non-positive violates the margin
        # (x_uj > x_ui - 1); step on L(rank) (1 - x_ui + x_uj) with the rank estimated
        # from the draws it took. As in LightFM, the user's row is searched only for a
        # violator (and, for the sampled AUC, for the first draws until a non-positive
        # turns up): most draws do not violate, so most skip the binary search. A draw
        # of a positive counts as a try, like any item ranked below the positive.
        first_negative = False
        for tries in range(1, max_sampled + 1):
            if popular_negatives > 0.0:
                state, r = randbelow(state, 1 << 30)
                if r < popular_negatives * (1 << 30):
                    state, r = randbelow(state, items.shape[0])
                    j = items[r]
                else:
                    state, j = randbelow(state, n_block_items)
            else:
                state, j = randbelow(state, n_block_items)
            sampled += 1
            x_uj = dot(user_factors, u, item_factors, j)
            violates = x_uj > x_ui - 1.0
            if violates or not first_negative:
                if contains_sorted(indices, start, stop, j * n_blocks + item_block):
                    continue
                if not first_negative:
                    first_negative = True
                    visited += 1
                    if x_ui > x_uj:
                        correct += 1
            if violates:
                weight = warp_weight(tries, n_block_items, n_items, max_weight)
                if step_scale > 0.0:
                    weight *= step_weight(values[pos], step_scale)
                loss += weight * (1.0 - x_ui + x_uj)
                if adagrad:
                    penalty += warp_update_adagrad(
                        user_factors,
                        item_factors,
                        user_sq_grad,
                        item_sq_grad,
                        u,
                        i,
                        j,
                        weight,
                        user_dims,
                        learning_rate,
                        reg_user,
                        reg_pos,
                        reg_neg,
                        grads,
                        accumulator_decay,
                    )
                else:
                    penalty += warp_update(
                        user_factors,
                        item_factors,
                        u,
                        i,
                        j,
                        weight,
                        user_dims,
                        learning_rate,
                        reg_user,
                        reg_pos,
                        reg_neg,
                    )
                break
    stats[STAT_POSITIVES] += visited
    stats[STAT_LOSS] += loss
    stats[STAT_PENALTY] += penalty
    stats[STAT_CORRECT] += correct
    stats[STAT_SAMPLED] += sampled
